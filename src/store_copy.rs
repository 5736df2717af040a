//! `tokend store copy --from SPEC --to SPEC`: moves every connection record
//! between the embedded sled store and a PostgreSQL database (either way),
//! tokens still sealed, then proves the copy by count and by reading every
//! record back from both sides with the keys.
//!
//! A SPEC is `sled:DIR`, a `postgres://` URL, or `env:VAR` (a URL in an
//! environment variable, which keeps a password out of process lists). Both
//! sides must be quiet: a data dir is locked by a running server, and
//! replicas writing to the database while it is copied are not stopped for
//! you. The target starts a new event log: cursors of the old one answer
//! `CURSOR_EXPIRED`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use secrecy::{ExposeSecret as _, SecretString};
use tokend_postgres::{PgOptions, PostgresStore};
use tokend_store::{
    SledStore, Store,
    crypto::{KeyFile, Keyring, keys::KEY_FILE_NAME},
};

use crate::{exit::UsageError, private_fs::NewDir};

#[derive(clap::Args)]
pub(crate) struct CopyArgs {
    /// Where the records are: `sled:DIR`, `postgres://…`, or `env:VAR`.
    #[arg(long)]
    from: String,
    /// Where they go (must hold no connection yet): same forms.
    #[arg(long)]
    to: String,
    /// The key file that sealed the records [default: DIR/tokend.keys of
    /// the sled side]. TOKEND_KEYS may hold the keys instead.
    #[arg(long, env = "TOKEND_KEY_FILE")]
    key_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy every connection between sled and PostgreSQL, then verify.
    Copy(CopyArgs),
}

/// One side of a copy.
enum Spec {
    Sled(PathBuf),
    Postgres(SecretString),
}

impl Spec {
    fn parse(text: &str) -> anyhow::Result<Spec> {
        if let Some(dir) = text.strip_prefix("sled:") {
            anyhow::ensure!(
                !dir.is_empty(),
                UsageError("sled: needs a directory".into())
            );
            return Ok(Spec::Sled(dir.into()));
        }
        if let Some(var) = text.strip_prefix("env:") {
            let url = std::env::var(var)
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    UsageError(format!(
                        "the environment variable {var} holds no database URL"
                    ))
                })?;
            return Ok(Spec::Postgres(SecretString::from(url)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Spec::Postgres(SecretString::from(text.to_owned())));
        }
        bail!(UsageError(
            "a store is sled:DIR, a postgres:// URL, or env:VAR".into()
        ))
    }

    /// How to name it in messages: never the URL (it may hold a password).
    fn describe(&self) -> String {
        match self {
            Spec::Sled(dir) => format!("sled:{}", dir.display()),
            Spec::Postgres(_) => "the PostgreSQL database".into(),
        }
    }
}

/// An open side.
enum Side {
    Sled(SledStore),
    Postgres(PostgresStore),
}

impl Side {
    fn store(&self) -> &dyn Store {
        match self {
            Side::Sled(s) => s,
            Side::Postgres(s) => s,
        }
    }

    async fn count(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Side::Postgres(s) => s.count().await?,
            Side::Sled(s) => {
                let mut n = 0;
                let mut after: Option<String> = None;
                loop {
                    let page = s.export_sealed(after.as_deref(), 1000).await?;
                    let Some((last, _)) = page.records.last() else {
                        break;
                    };
                    after = Some(last.clone());
                    n += page.records.len() as u64;
                }
                n
            }
        })
    }

    async fn import(&self, records: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        match self {
            Side::Sled(s) => {
                let s = s.clone();
                let records = records.to_vec();
                tokio::task::spawn_blocking(move || s.import_sealed(&records)).await??;
            }
            Side::Postgres(s) => {
                s.import_sealed(records).await?;
            }
        }
        Ok(())
    }
}

fn pg_options(url: &SecretString) -> PgOptions {
    let mut options = PgOptions::new(url.clone());
    options.statement_timeout = std::time::Duration::from_secs(60);
    options
}

/// Opens one side; a sled target that does not exist yet is opened where
/// it is being built (`building`).
async fn open(
    spec: &Spec,
    keys: Keyring,
    target: bool,
    building: Option<&Path>,
) -> anyhow::Result<Side> {
    match spec {
        Spec::Sled(dir) => {
            if !target && !dir.exists() {
                bail!(UsageError(format!("{} does not exist", dir.display())));
            }
            let store = SledStore::open(building.unwrap_or(dir), keys)
                .with_context(|| format!("cannot open the database in {}", dir.display()))?;
            Ok(Side::Sled(store))
        }
        Spec::Postgres(url) => {
            let options = pg_options(url);
            if target {
                for v in PostgresStore::migrate(&options).await? {
                    println!("applied migration {v} to the target database");
                }
            }
            Ok(Side::Postgres(
                PostgresStore::connect(&options, keys)
                    .await
                    .context("cannot open the PostgreSQL store")?,
            ))
        }
    }
}

/// The keys, from TOKEND_KEYS, --key-file, or a sled side's key file.
fn load_keys(
    args: &CopyArgs,
    specs: [&Spec; 2],
) -> anyhow::Result<impl Fn() -> anyhow::Result<Keyring>> {
    let json = match std::env::var("TOKEND_KEYS").ok() {
        Some(json) => json,
        None => {
            let path = args
                .key_file
                .clone()
                .or_else(|| {
                    specs.iter().find_map(|s| match s {
                        Spec::Sled(dir) if dir.join(KEY_FILE_NAME).exists() => {
                            Some(dir.join(KEY_FILE_NAME))
                        }
                        _ => None,
                    })
                })
                .ok_or_else(|| {
                    UsageError(
                        "no keys: give --key-file (the key file that sealed the records) or TOKEND_KEYS".into(),
                    )
                })?;
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the key file {}", path.display()))?
        }
    };
    // Checked once here, so a bad key file fails before anything opens.
    KeyFile::parse(json.as_bytes())?.keyring()?;
    Ok(move || Ok(KeyFile::parse(json.as_bytes())?.keyring()?))
}

/// Checks that every source record opens with the keys before the target
/// is touched, so wrong keys refuse the copy with nothing written.
async fn check_every_record_opens(source: &Side, keys: &Keyring) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = source.store().export_sealed(after.as_deref(), 500).await?;
        let Some((last, _)) = page.records.last() else {
            return Ok(());
        };
        for (id, sealed) in &page.records {
            tokend_store::backend::decode(id.as_bytes(), sealed, keys).with_context(|| {
                format!(
                    "{id} does not open with the keys given: are they the keys that sealed the records?"
                )
            })?;
        }
        after = Some(last.clone());
    }
}

pub(crate) async fn run(command: StoreCommand) -> anyhow::Result<()> {
    let StoreCommand::Copy(args) = command;
    let from = Spec::parse(&args.from)?;
    let to = Spec::parse(&args.to)?;
    if let (Spec::Sled(a), Spec::Sled(b)) = (&from, &to) {
        anyhow::ensure!(
            a != b,
            UsageError("--from and --to are the same data dir".into())
        );
    }
    // Everything created from here on is private (0700 dirs, 0600 files),
    // whatever the umask.
    crate::private_fs::private_umask();
    let keys = load_keys(&args, [&from, &to])?;
    let source = open(&from, keys()?, false, None).await?;
    check_every_record_opens(&source, &keys()?).await?;
    // A new sled target is built aside and renamed into place once
    // verified: a copy that fails leaves no data dir behind.
    let new_dir = match &to {
        Spec::Sled(dir) if !dir.exists() => {
            Some(NewDir::create(dir).with_context(|| format!("cannot create {}", dir.display()))?)
        }
        _ => None,
    };
    let target = open(&to, keys()?, true, new_dir.as_ref().map(NewDir::path)).await?;
    let already = target.count().await?;
    if already > 0 {
        bail!(UsageError(format!(
            "{} already holds {already} connection(s): copy into an empty store",
            to.describe()
        )));
    }

    let mut copied = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = source.store().export_sealed(after.as_deref(), 500).await?;
        let Some((last, _)) = page.records.last() else {
            break;
        };
        after = Some(last.clone());
        target.import(&page.records).await?;
        copied.extend(page.records.into_iter().map(|(id, _)| id));
    }

    // The proof: the same count on both sides, and every record read back
    // from each with the keys, equal in everything that matters.
    let (in_source, in_target) = (source.count().await?, target.count().await?);
    anyhow::ensure!(
        in_source == copied.len() as u64 && in_target == copied.len() as u64,
        "count mismatch after the copy: source {in_source}, copied {}, target {in_target}",
        copied.len()
    );
    for id in &copied {
        let id = tokend_core::ConnectionId::new(id.as_str())?;
        let a = source
            .store()
            .get(&id)
            .await?
            .with_context(|| format!("{id} vanished from the source"))?;
        let b = target
            .store()
            .get(&id)
            .await?
            .with_context(|| format!("{id} is missing from the target"))?;
        let same = a.provider == b.provider
            && a.account_id == b.account_id
            && (a.incarnation, a.revision, a.version) == (b.incarnation, b.revision, b.version)
            && a.status == b.status
            && a.tokens.access_token.expose_secret() == b.tokens.access_token.expose_secret()
            && a.tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                == b.tokens
                    .refresh_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_owned())
            && a.tokens.expires_at == b.tokens.expires_at;
        anyhow::ensure!(
            same,
            "{id} differs between source and target after the copy"
        );
    }
    if let Some(new_dir) = new_dir {
        drop(target);
        new_dir
            .commit()
            .context("cannot move the copy into place")?;
    }
    println!(
        "copied {} connection(s) from {} to {}; verified: {} on each side, every record read back and equal",
        copied.len(),
        from.describe(),
        to.describe(),
        copied.len()
    );
    if let Spec::Sled(dir) = &to
        && !dir.join(KEY_FILE_NAME).exists()
    {
        println!(
            "serve {} with the same keys (--key-file or TOKEND_KEYS): its records are sealed with them",
            dir.display()
        );
    }
    Ok(())
}
