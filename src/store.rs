//! Opens the store `[store]` names: the embedded sled store in the data
//! dir (the default), or a PostgreSQL database shared by several replicas,
//! whose URL comes from an environment variable, never from the file.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::SecretString;
use tokend_postgres::{PgOptions, PostgresStore, Tls};
use tokend_server::config::{StoreKind, StoreSection};
use tokend_store::{SledStore, Store, crypto::Keyring};

/// The environment variable holding the database URL when `url_env` is not
/// set.
pub(crate) const DEFAULT_URL_ENV: &str = "TOKEND_DATABASE_URL";

/// An open store, by kind: some operations (re-encryption after a key
/// rotation, backups into a data dir) exist only for one.
#[derive(Clone)]
pub(crate) enum Opened {
    Sled(SledStore),
    Postgres(PostgresStore),
}

impl Opened {
    pub(crate) fn shared(&self) -> Arc<dyn Store> {
        match self {
            Opened::Sled(s) => Arc::new(s.clone()),
            Opened::Postgres(s) => Arc::new(s.clone()),
        }
    }
}

/// `[store]` for PostgreSQL, resolved: the URL from its variable, defaults
/// filled in.
pub(crate) fn pg_options(
    section: &StoreSection,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<PgOptions> {
    let var = section.url_env.as_deref().unwrap_or(DEFAULT_URL_ENV);
    let url = env(var).filter(|u| !u.is_empty()).with_context(|| {
        format!(
            "[store] kind = \"postgres\" needs the database URL in the environment variable {var}"
        )
    })?;
    use tokend_server::ranges as r;
    let mut options = PgOptions::new(SecretString::from(url));
    let usage = crate::exit::UsageError;
    if let Some(n) = r::STORE_POOL_SIZE
        .check_opt(section.pool_size)
        .map_err(usage)?
    {
        options.pool_size = n;
    }
    if let Some(ms) = r::STORE_STATEMENT_TIMEOUT_MS
        .check_opt(section.statement_timeout_ms)
        .map_err(usage)?
    {
        options.statement_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = r::STORE_CONNECT_TIMEOUT_MS
        .check_opt(section.connect_timeout_ms)
        .map_err(usage)?
    {
        options.connect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = r::STORE_TCP_USER_TIMEOUT_MS
        .check_opt(section.tcp_user_timeout_ms)
        .map_err(usage)?
    {
        options.tcp_user_timeout = Duration::from_millis(ms);
    }
    if let Some(secs) = r::STORE_KEEPALIVE_IDLE_SECS
        .check_opt(section.keepalive_idle_secs)
        .map_err(usage)?
    {
        options.keepalive_idle = Duration::from_secs(secs);
    }
    if let Some(ms) = r::STORE_POLL_INTERVAL_MS
        .check_opt(section.poll_interval_ms)
        .map_err(usage)?
    {
        options.poll_interval = Duration::from_millis(ms);
    }
    options.tls = match section.tls.as_deref() {
        Some("verify-full") => Tls::VerifyFull {
            ca_file: section.ca_file.clone(),
        },
        Some("disable") => Tls::Disable,
        Some(other) => {
            anyhow::bail!("[store] tls = {other:?}: expected \"verify-full\" or \"disable\"")
        }
        None if options.loopback_only()? && !options.url_requires_tls()? => Tls::Disable,
        None => Tls::VerifyFull {
            ca_file: section.ca_file.clone(),
        },
    };
    Ok(options)
}

/// Opens the configured store.
pub(crate) async fn open(
    section: &StoreSection,
    data_dir: &Path,
    keyring: Keyring,
) -> anyhow::Result<Opened> {
    match section.kind {
        StoreKind::Sled => Ok(Opened::Sled(
            SledStore::open(data_dir, keyring)
                .with_context(|| format!("cannot open the database in {}", data_dir.display()))?,
        )),
        StoreKind::Postgres => {
            let options = pg_options(section, |v| std::env::var(v).ok())?;
            let store = PostgresStore::connect(&options, keyring)
                .await
                .context("cannot open the PostgreSQL store")?;
            Ok(Opened::Postgres(store))
        }
    }
}

/// This replica's default name in lease holders: "local" for the embedded
/// store (one process owns the data dir), "HOSTNAME:PORT" for a shared
/// database, so replicas on different hosts, or on different ports of one
/// host, never take each other's leases for their own at start.
pub(crate) fn default_node(kind: StoreKind, port: u16) -> String {
    match kind {
        StoreKind::Sled => "local".into(),
        StoreKind::Postgres => format!("{}:{port}", hostname()),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `tokend migrate`: applies the schema migrations the configured
/// PostgreSQL database lacks.
pub(crate) async fn migrate(section: &StoreSection) -> anyhow::Result<()> {
    anyhow::ensure!(
        section.kind == StoreKind::Postgres,
        "tokend migrate applies to [store] kind = \"postgres\"; the embedded store needs no migration"
    );
    let options = pg_options(section, |v| std::env::var(v).ok())?;
    let applied = PostgresStore::migrate(&options)
        .await
        .context("migration failed")?;
    if applied.is_empty() {
        println!(
            "schema already at version {}",
            tokend_postgres::SCHEMA_VERSION
        );
    } else {
        for v in &applied {
            let name = tokend_postgres::MIGRATIONS
                .iter()
                .find(|m| m.version == *v)
                .map_or("", |m| m.name);
            println!("applied migration {v}: {name}");
        }
        println!("schema at version {}", tokend_postgres::SCHEMA_VERSION);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replica config docs/replicas.md shows, as a user would copy it.
    fn readme_replica_config() -> tokend_server::config::FileConfig {
        let readme = include_str!("../docs/replicas.md");
        let section = readme
            .split("## Running several replicas")
            .nth(1)
            .expect("docs/replicas.md has the section");
        // The first ```toml block (its info string may carry the snippet
        // test's mark, e.g. "```toml check-config").
        let block = section
            .split("```toml")
            .nth(1)
            .and_then(|b| b.split_once('\n'))
            .and_then(|(_, b)| b.split("```").next())
            .expect("a toml block");
        tokend_server::config::FileConfig::parse(block, Path::new("docs/replicas.md"))
            .expect("docs/replicas.md's replica config parses")
    }

    #[test]
    fn the_readme_replica_config_resolves_with_tls_on() {
        let file = readme_replica_config();
        assert_eq!(file.store.kind, StoreKind::Postgres);
        let options = pg_options(&file.store, |var| {
            (var == "TOKEND_DATABASE_URL")
                .then(|| "postgres://tokend:pw@db.internal:5432/tokend".to_owned())
        })
        .expect("resolves");
        assert_eq!(options.tls, Tls::VerifyFull { ca_file: None });
        assert_eq!(options.pool_size, 16);
        assert!(
            !format!("{options:?}").contains("pw@"),
            "the URL never shows"
        );
    }

    #[test]
    fn a_missing_url_or_a_bad_tls_mode_is_a_clear_error() {
        let file = readme_replica_config();
        let missing = pg_options(&file.store, |_| None).expect_err("no URL");
        assert!(format!("{missing:#}").contains("TOKEND_DATABASE_URL"));
        let mut section = file.store.clone();
        section.tls = Some("prefer".into());
        let bad = pg_options(&section, |_| Some("postgres://h/db".into())).expect_err("bad tls");
        assert!(format!("{bad:#}").contains("verify-full"));
    }

    #[test]
    fn a_loopback_database_defaults_to_plaintext_and_others_to_tls() {
        let section = StoreSection {
            kind: StoreKind::Postgres,
            ..Default::default()
        };
        for (url, tls) in [
            ("postgres://u@127.0.0.1:5432/d", Tls::Disable),
            ("postgres://u@localhost/d", Tls::Disable),
            ("postgres://u@[::1]:5432/d", Tls::Disable),
            ("postgres://u@10.0.0.5/d", Tls::VerifyFull { ca_file: None }),
            (
                "postgres://u@db.example.com/d",
                Tls::VerifyFull { ca_file: None },
            ),
        ] {
            let options = pg_options(&section, |_| Some(url.into())).expect("resolves");
            assert_eq!(options.tls, tls, "{url}");
        }
    }

    #[test]
    fn replicas_get_distinct_default_node_names() {
        assert_eq!(default_node(StoreKind::Sled, 50051), "local");
        let a = default_node(StoreKind::Postgres, 50051);
        let b = default_node(StoreKind::Postgres, 50052);
        assert_ne!(a, b);
        assert!(a.ends_with(":50051"));
    }
}
