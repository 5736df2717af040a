//! `tokend backup` and `tokend restore`. A backup is a snapshot of every
//! stored record taken from a running server (`ExportConnections`), tokens
//! still sealed with the server's key file: the file is useless without
//! that key file, which must be kept (elsewhere) with it. Restore writes
//! the records into a stopped server's data dir after checking that the key
//! file opens every one of them, never over a newer revision, each with its
//! events.

use std::{
    io::{BufRead, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokend_proto::v1 as pb;

use crate::exit::UsageError;

/// The first line of a backup file.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// Always `"tokend backup"`.
    kind: String,
    /// The backup file's layout.
    version: u32,
    /// The store format the records are encoded in.
    format_version: u32,
    records: usize,
    created_at: String,
}

/// One record per line after the header.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    connection_id: String,
    /// The stored bytes, base64: tokens sealed.
    sealed: String,
}

const KIND: &str = "tokend backup";
const VERSION: u32 = 1;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The file to write (created 0600; replaced atomically).
    #[arg(long)]
    to: PathBuf,
    #[command(flatten)]
    pub client: crate::cli::ClientArgs,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The data dir to restore into; the server must be stopped.
    #[arg(long, env = "TOKEND_DATA_DIR")]
    data_dir: PathBuf,
    /// The key file the backed-up server used [default: DATA_DIR/tokend.keys].
    #[arg(long, env = "TOKEND_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Write into a data dir that already holds connections. A record
    /// newer in the backup than in the dir replaces the dir's as a new
    /// revision (with its event); one older in the backup (refreshed or
    /// re-created since) is never written: the restore refuses, or with
    /// --skip-older keeps the dir's.
    #[arg(long)]
    force: bool,
    /// With --force: restore the other records and keep, as they are, the
    /// connections the dir holds newer than the backup (or cannot read),
    /// instead of refusing. Their backed-up refresh tokens may be dead at
    /// the provider (rotated since): they are never written.
    #[arg(long, requires = "force")]
    skip_older: bool,
    /// Restore a backup taken before on-disk format 4, whose records do not
    /// bind their provider, account and params to their tokens (anyone who
    /// could edit the file could have repointed a refresh token): only a
    /// file kept where no one could change it. Its records are re-sealed
    /// with the binding on the way in.
    #[arg(long)]
    trust_unbound_backup: bool,
}

/// `tokend backup --to FILE`: streams every record from the running server
/// into FILE.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let url = tokend_client::endpoint_url(&args.client.endpoint, false);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| UsageError(format!("invalid endpoint {url}: {e}")))?
        .connect()
        .await
        .map_err(|e| tokend_client::Error::Transport {
            message: format!("{url}: {e}"),
        })?;
    let key = args
        .client
        .api_key
        .as_deref()
        .map(str::parse::<tonic::metadata::AsciiMetadataValue>)
        .transpose()
        .map_err(|_| UsageError("the api key is not valid in a header".into()))?;
    let mut client = pb::token_service_client::TokenServiceClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            if let Some(key) = &key {
                request.metadata_mut().insert("x-api-key", key.clone());
            }
            Ok(request)
        },
    );
    let mut stream = client
        .export_connections(pb::ExportConnectionsRequest {})
        .await
        .map_err(|s| tokend_client::Error::from_status(&s))?
        .into_inner();
    let mut lines = Vec::new();
    let mut format_version = 0;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| tokend_client::Error::from_status(&s))?
    {
        format_version = message.format_version;
        for r in message.records {
            lines.push(Line {
                connection_id: r.connection_id,
                sealed: base64::engine::general_purpose::STANDARD.encode(&r.sealed),
            });
        }
    }
    let header = Header {
        kind: KIND.into(),
        version: VERSION,
        format_version,
        records: lines.len(),
        created_at: tokend_server::audit::format_rfc3339(tokend_core::Clock::system().now()),
    };
    write_atomically(&args.to, &header, &lines)
        .with_context(|| format!("cannot write {}", args.to.display()))?;
    let summary = serde_json::json!({"file": args.to, "records": lines.len(), "format_version": format_version});
    if args.client.json {
        println!("{summary}");
    } else {
        println!(
            "backed up {} connections to {} (tokens sealed: keep the key file with it, stored elsewhere)",
            lines.len(),
            args.to.display()
        );
    }
    Ok(())
}

fn write_atomically(path: &Path, header: &Header, lines: &[Line]) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    // A fresh file, never one left behind (whose mode, or a symlink in
    // its place, would be kept): 0600 whatever the umask.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut out, header)?;
    out.write_all(b"\n")?;
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The shortest record line a backup can hold:
/// `{"connection_id":"","sealed":""}` and its newline.
const MIN_RECORD_LINE: u64 = 33;

/// `tokend restore --from FILE --data-dir DIR`. Everything is checked
/// before anything is written: the header against the file's size, every
/// record against the key file, every record against the dir's
/// (`tokend_store::restore`: never a lower revision). A new data dir is
/// built aside and renamed into place, so a refused or failed restore
/// leaves none behind. Records are written by compare-and-swap with their
/// events, as any change.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    crate::private_fs::private_umask();
    let (header, mut records) = read_backup(&args.from)?;
    let unbound = header.format_version < tokend_store::BOUND_FORMAT;
    if unbound && !args.trust_unbound_backup {
        anyhow::bail!(UsageError(format!(
            "{} holds on-disk format {}, from before records bound their provider, account and params to their tokens: an edited copy could send a refresh token to another host. If the file was kept where no one could change it, restore it with --trust-unbound-backup (its records are re-sealed with the binding)",
            args.from.display(),
            header.format_version
        )));
    }
    let key_path = args.key_file.clone().unwrap_or_else(|| {
        args.data_dir
            .join(tokend_store::crypto::keys::KEY_FILE_NAME)
    });
    let keys = tokend_store::crypto::KeyFile::load(&key_path)
        .and_then(|f| f.keyring())
        .map(|k| k.with_origin(tokend_store::crypto::KeyOrigin::File(key_path.clone())))
        .with_context(|| {
            format!(
                "no usable key file at {} (restore needs the key file the backed-up server used)",
                key_path.display()
            )
        })?;
    let does_not_open = || {
        format!(
            "the backup does not open with {}: is it the key file the backed-up server used, and the file as it was written?",
            key_path.display()
        )
    };
    if unbound {
        for (id, sealed) in &mut records {
            if let Some(bound) = tokend_store::backend::upgrade(id.as_bytes(), sealed, &keys)
                .with_context(does_not_open)?
            {
                *sealed = bound;
            }
        }
    }
    // Checked here, before the data dir is opened (opening may migrate an
    // existing one), although `import_sealed` checks again before it
    // writes: a refused restore touches nothing. Decoding also checks that
    // each record is the connection it is filed under.
    let mut decoded = Vec::with_capacity(records.len());
    for (id, sealed) in &records {
        decoded.push(
            tokend_store::backend::decode(id.as_bytes(), sealed, &keys)
                .with_context(does_not_open)?,
        );
    }
    drop(records);
    let new_dir = if args.data_dir.exists() {
        None
    } else {
        Some(
            crate::private_fs::NewDir::create(&args.data_dir)
                .with_context(|| format!("cannot create {}", args.data_dir.display()))?,
        )
    };
    let dir = new_dir
        .as_ref()
        .map_or(args.data_dir.as_path(), |d| d.path());
    let store = tokend_store::SledStore::open(dir, keys)
        .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?;
    if !store.is_empty() && !args.force {
        anyhow::bail!(UsageError(format!(
            "{} already holds connections; pass --force to write the backup's records over them (never over newer ones)",
            args.data_dir.display()
        )));
    }
    let plan = tokend_store::restore::plan(&store, decoded)
        .await
        .context("cannot compare the backup with the data dir")?;
    let held_back = held_back(&plan);
    if plan.held_back() > 0 && !args.skip_older {
        anyhow::bail!(UsageError(format!(
            "{held_back}: restoring them would bring back refresh tokens the provider may have rotated since. Nothing was written. Pass --skip-older to restore the other records and keep these as they are",
        )));
    }
    let written = tokend_store::restore::apply(&store, &plan)
        .await
        .context("restore failed")?;
    drop(store);
    if let Some(new_dir) = new_dir {
        new_dir
            .commit()
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    }
    let kept = if plan.held_back() > 0 {
        format!("; kept as they are: {held_back}")
    } else {
        String::new()
    };
    println!(
        "restored {written} connections into {} ({} added, {} advanced, {} already as backed up){kept}",
        args.data_dir.display(),
        plan.add.len(),
        plan.advance.len(),
        plan.same,
    );
    Ok(())
}

/// The records a restore holds back, in words: how many, a few ids.
fn held_back(plan: &tokend_store::restore::Plan) -> String {
    let few = |ids: &[tokend_core::ConnectionId]| {
        let mut shown: Vec<String> = ids.iter().take(5).map(|i| i.to_string()).collect();
        if ids.len() > 5 {
            shown.push(format!("and {} more", ids.len() - 5));
        }
        shown.join(", ")
    };
    let mut parts = Vec::new();
    if !plan.older.is_empty() {
        parts.push(format!(
            "{} connection(s) are older in the backup than in the data dir (refreshed or re-created since: {})",
            plan.older.len(),
            few(&plan.older)
        ));
    }
    if !plan.unreadable.is_empty() {
        parts.push(format!(
            "{} connection(s) in the data dir cannot be read to compare ({})",
            plan.unreadable.len(),
            few(&plan.unreadable)
        ));
    }
    parts.join("; ")
}

/// A backup's records: each connection id with its record as stored.
type SealedRecords = Vec<(String, Vec<u8>)>;

/// A backup's header and records, the header checked against the file
/// before anything is allocated from it.
fn read_backup(path: &Path) -> anyhow::Result<(Header, SealedRecords)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let mut reader = std::io::BufReader::new(file).lines();
    let header: Header = reader
        .next()
        .transpose()?
        .and_then(|l| serde_json::from_str(&l).ok())
        .filter(|h: &Header| h.kind == KIND)
        .ok_or_else(|| UsageError(format!("{} is not a tokend backup", path.display())))?;
    if header.version != VERSION {
        anyhow::bail!(UsageError(format!(
            "backup layout {} is not supported by this tokend (it reads {VERSION})",
            header.version
        )));
    }
    if header.format_version > tokend_store::FORMAT_VERSION {
        anyhow::bail!(UsageError(format!(
            "the backup holds on-disk format {}, newer than this tokend's {}: restore it with a newer tokend",
            header.format_version,
            tokend_store::FORMAT_VERSION
        )));
    }
    // The header is the file's word, not a fact: a count the file cannot
    // hold is refused before it sizes anything.
    let room = size / MIN_RECORD_LINE;
    if !u64::try_from(header.records).is_ok_and(|n| n <= room) {
        anyhow::bail!(UsageError(format!(
            "{}: the header claims {} records, but {size} bytes hold at most {room}: the file is damaged or not a tokend backup",
            path.display(),
            header.records
        )));
    }
    let mut records = Vec::with_capacity(header.records);
    for (n, line) in reader.enumerate() {
        let line = line?;
        if n == header.records {
            anyhow::bail!(UsageError(format!(
                "{} holds more records than its header's {}",
                path.display(),
                header.records
            )));
        }
        let unreadable = || format!("{}: record {} is unreadable", path.display(), n + 1);
        let parsed: Line = serde_json::from_str(&line).with_context(unreadable)?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(parsed.sealed)
            .with_context(unreadable)?;
        records.push((parsed.connection_id, sealed));
    }
    if records.len() != header.records {
        anyhow::bail!(
            "{} is truncated: {} of {} records",
            path.display(),
            records.len(),
            header.records
        );
    }
    Ok((header, records))
}
