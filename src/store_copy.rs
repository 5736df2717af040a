//! `tokend store copy --from SPEC --to SPEC`: moves every connection record
//! between the embedded sled store and a PostgreSQL database (either way),
//! tokens still sealed, then proves the copy by count and by reading every
//! record back from both sides with the keys.
//!
//! A SPEC is `sled:DIR`, a `postgres://` URL, or `env:VAR` (a URL in an
//! environment variable, which keeps a password out of process lists). The
//! target starts a new event log: cursors of the old one answer
//! `CURSOR_EXPIRED`.
//!
//! Invariant: a live store is never copied. A copy taken while a replica
//! writes misses what it writes meanwhile, and serving the copy would bring
//! back refresh tokens rotated since. A data dir is locked by its running
//! server (opening it is refused); a database with another tokend connected,
//! or a refresh lease held, is refused before anything is read; and a source
//! whose event log moved during the copy fails it, the target emptied again.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use secrecy::{ExposeSecret as _, SecretString};
use tokend_postgres::{PgOptions, PostgresStore};
use tokend_store::{
    SledStore, Store,
    crypto::{KeyFile, KeyOrigin, Keyring, keys::KEY_FILE_NAME},
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
    let (json, origin) = match std::env::var("TOKEND_KEYS").ok() {
        Some(json) => (json, KeyOrigin::Env),
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
            let json = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the key file {}", path.display()))?;
            (json, KeyOrigin::File(path))
        }
    };
    // Checked once here, so a bad key file fails before anything opens.
    KeyFile::parse(json.as_bytes())?.keyring()?;
    Ok(move || {
        Ok(KeyFile::parse(json.as_bytes())?
            .keyring()?
            .with_origin(origin.clone()))
    })
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

/// Refuses a source database another tokend uses now: connected, or
/// holding a refresh lease (a refresh in progress).
async fn refuse_live(spec: &Spec) -> anyhow::Result<()> {
    let Spec::Postgres(url) = spec else {
        return Ok(());
    };
    let activity = PostgresStore::activity(&pg_options(url))
        .await
        .with_context(|| format!("cannot reach {}", spec.describe()))?;
    if activity.sessions > 0 || activity.live_leases > 0 {
        bail!(UsageError(format!(
            "the source, {}, is in use: {} other tokend connection(s) open, {} refresh lease(s) held. Stop every replica (and wait for their leases to run out) before copying: a copy taken while replicas write misses their writes, and serving it would bring back refresh tokens they rotated",
            spec.describe(),
            activity.sessions,
            activity.live_leases
        )));
    }
    Ok(())
}

pub(crate) async fn run(command: StoreCommand) -> anyhow::Result<()> {
    let StoreCommand::Copy(args) = command;
    let from = Spec::parse(&args.from)?;
    let to = Spec::parse(&args.to)?;
    refuse_live(&from).await?;
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
    // Where the source's log ends now: it must end there after the copy.
    let source_end = source.store().event_bounds().await?.last;
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

    let verified = match verify(&source, &target, &copied, source_end).await {
        Ok(()) => no_refresh_started(&from).await,
        failed => failed,
    };
    if let Err(e) = verified {
        // The target held nothing before: empty it again (a new data dir
        // is simply never moved into place).
        if let Side::Postgres(pg) = &target
            && let Err(undo) = pg.remove_imported(&copied).await
        {
            return Err(e.context(format!(
                "and the copied records could not be removed from {} ({undo}): empty it before copying again",
                to.describe()
            )));
        }
        return Err(e);
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

/// Fails when a refresh lease was taken on a database source during the
/// copy: its refresh may write after the copy was verified.
async fn no_refresh_started(spec: &Spec) -> anyhow::Result<()> {
    let Spec::Postgres(url) = spec else {
        return Ok(());
    };
    let leases = PostgresStore::activity(&pg_options(url)).await?.live_leases;
    anyhow::ensure!(
        leases == 0,
        "a replica took {leases} refresh lease(s) on the source during the copy: stop every replica, then copy again"
    );
    Ok(())
}

/// The proof of a copy: the source unchanged since it began (its event
/// log where it was, no refresh lease taken), the same count on both
/// sides, and every record read back from each with the keys, equal in
/// everything that matters.
async fn verify(
    source: &Side,
    target: &Side,
    copied: &[String],
    source_end: u64,
) -> anyhow::Result<()> {
    let (in_source, in_target) = (source.count().await?, target.count().await?);
    anyhow::ensure!(
        in_source == copied.len() as u64 && in_target == copied.len() as u64,
        "count mismatch after the copy: source {in_source}, copied {}, target {in_target}",
        copied.len()
    );
    for id in copied {
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
    let end = source.store().event_bounds().await?.last;
    anyhow::ensure!(
        end == source_end,
        "the source changed during the copy (its event log moved from {source_end} to {end}): a replica is writing to it. Stop every replica, then copy again"
    );
    Ok(())
}
