//! The `tokend` binary: `serve` runs the broker (optionally with an
//! in-process sandbox provider), `sandbox` runs the sandbox provider alone,
//! `keys` manages encryption keys, and the client subcommands talk to a
//! running broker.

mod backup;
mod cli;
mod exit;
mod settings;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokend_sandbox::{Dialect, Rotation, Sandbox, SandboxConfig};
use tokend_server::{ServerConfig, config::sandbox_provider};
use tokend_store::{
    SledStore,
    crypto::{KeyFile, Keyring, load_or_create_key_file},
};
use tracing_subscriber::EnvFilter;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TOKEND_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "tokend", version = VERSION, about = "OAuth2 token broker: one place that owns every connection's tokens")]
struct Cli {
    /// Log lines as JSON instead of text (filter with RUST_LOG).
    #[arg(long, global = true, env = "TOKEND_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. With no flags: 127.0.0.1:50051, data in ./tokend-data.
    Serve(ServeArgs),
    /// Check a configuration without serving: every problem `serve` would
    /// stop at is listed (exit 2), or "configuration OK".
    CheckConfig(CheckConfigArgs),
    /// Run only the sandbox OAuth2 provider (for tests and demos).
    Sandbox(SandboxArgs),
    /// Manage the keys that encrypt tokens at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Get or refresh a connection's access token.
    Token {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::TokenCommand,
    },
    /// List, show or delete connections.
    Connections {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::ConnectionsCommand,
    },
    /// Install a connection (code exchange or token import).
    Install {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(flatten)]
        install: cli::InstallArgs,
    },
    /// Write a snapshot of every connection (tokens sealed) from a running
    /// server to a file.
    Backup(backup::BackupArgs),
    /// Write a backup into a stopped server's data dir.
    Restore(backup::RestoreArgs),
    /// Stream a connection's state changes.
    Watch {
        #[command(flatten)]
        client: cli::ClientArgs,
        connection_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new key and make it the one new writes use. A running tokend
    /// notices within seconds and re-encrypts every record online; old keys
    /// keep decrypting until it has.
    Rotate(KeyFileArgs),
    /// Remove an old key from the key file. Refused while any record is
    /// still sealed with it (a running tokend reports that after each
    /// re-encryption pass in DATA_DIR/tokend.keys.usage).
    Retire {
        /// The key id to remove.
        key_id: u32,
        #[command(flatten)]
        file: KeyFileArgs,
    },
}

#[derive(clap::Args)]
struct KeyFileArgs {
    /// The key file [default: DATA_DIR/tokend.keys]
    #[arg(long, env = "TOKEND_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Data directory whose key file to use.
    #[arg(long, env = "TOKEND_DATA_DIR", default_value = settings::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

impl KeyFileArgs {
    fn path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(KEY_FILE_NAME))
    }
}

/// The key file's name inside the data dir.
const KEY_FILE_NAME: &str = "tokend.keys";
/// Where a running server records how many records each key seals.
const KEY_USAGE_FILE_NAME: &str = "tokend.keys.usage";

/// What `DATA_DIR/tokend.keys.usage` holds, written after each
/// re-encryption pass. Counts on old keys can only fall after a keyring
/// swap: the store seals every write landing after it with the new key.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyUsage {
    active: u32,
    /// Records per key id.
    records: std::collections::BTreeMap<u32, usize>,
    at_unix_ms: i64,
}
/// How often a running server looks for a rotated key file.
const KEY_FILE_POLL: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:50051, or `listen` in the config file]
    #[arg(long, env = "TOKEND_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of the embedded database [default: ./tokend-data, or `data_dir` in the config file]
    #[arg(long, env = "TOKEND_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML file with providers and settings (see README).
    #[arg(long, env = "TOKEND_CONFIG")]
    config: Option<PathBuf>,
    /// File of the keys that encrypt tokens at rest; created (0600) on
    /// first start [default: DATA_DIR/tokend.keys]. The env var TOKEND_KEYS
    /// may hold the same JSON instead.
    #[arg(long, env = "TOKEND_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Also run the sandbox provider in-process and configure it as
    /// provider `sandbox` (development mode).
    #[arg(long)]
    sandbox: bool,
    #[command(flatten)]
    sandbox_opts: SandboxOpts,
}

impl ServeArgs {
    fn flags(&self) -> settings::Flags<'_> {
        settings::Flags {
            listen: self.listen,
            data_dir: self.data_dir.as_deref(),
            config: self.config.as_deref(),
        }
    }
}

/// `tokend check-config`: the flags `serve` would use.
#[derive(clap::Args)]
struct CheckConfigArgs {
    /// The listen address to check [default: `listen` in the file, or 127.0.0.1:50051]
    #[arg(long, env = "TOKEND_LISTEN")]
    listen: Option<SocketAddr>,
    /// The config file to check.
    #[arg(long, env = "TOKEND_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SandboxArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    #[command(flatten)]
    opts: SandboxOpts,
}

#[derive(clap::Args)]
struct SandboxOpts {
    /// Where the sandbox provider listens (HTTP).
    #[arg(long, default_value = "127.0.0.1:50052")]
    sandbox_listen: SocketAddr,
    /// Lifetime of the sandbox's access tokens, in seconds.
    #[arg(long, default_value_t = 1800)]
    sandbox_token_lifetime_secs: u64,
    /// Refresh token rotation of the sandbox.
    #[arg(long, value_enum, default_value_t = RotationArg::Strict)]
    sandbox_rotation: RotationArg,
    /// With `--sandbox-rotation grace`: seconds a rotated-out refresh token
    /// keeps working.
    #[arg(long, default_value_t = 30)]
    sandbox_rotation_grace_secs: u64,
    /// Error dialect of the sandbox.
    #[arg(long, value_enum, default_value_t = DialectArg::Rfc6749)]
    sandbox_dialect: DialectArg,
    /// Where the sandbox keeps its grants across restarts [default with
    /// `serve --sandbox`: DATA_DIR/sandbox-state.json; `tokend sandbox`:
    /// memory only].
    #[arg(long)]
    sandbox_state: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RotationArg {
    Strict,
    Reuse,
    Grace,
}

#[derive(Clone, Copy, ValueEnum)]
enum DialectArg {
    Rfc6749,
    Hubspot,
}

impl SandboxOpts {
    fn config(&self) -> SandboxConfig {
        SandboxConfig {
            access_token_lifetime: Duration::from_secs(self.sandbox_token_lifetime_secs),
            rotation: match self.sandbox_rotation {
                RotationArg::Strict => Rotation::Strict,
                RotationArg::Reuse => Rotation::Reuse,
                RotationArg::Grace => Rotation::Grace(self.sandbox_rotation_grace_secs),
            },
            dialect: match self.sandbox_dialect {
                DialectArg::Rfc6749 => Dialect::Rfc6749,
                DialectArg::Hubspot => Dialect::Hubspot,
            },
            state_file: self.sandbox_state.clone(),
            ..SandboxConfig::default()
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Token { client, .. }
        | Command::Connections { client, .. }
        | Command::Install { client, .. }
        | Command::Watch { client, .. }
        | Command::Backup(backup::BackupArgs { client, .. }) => client.json,
        _ => cli.log_json,
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(&e, json),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, so stdout carries only what a command prints (a
    // token, JSON); colours only when a person is looking.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        use std::io::IsTerminal as _;
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::CheckConfig(args) => check_config(&args),
            Command::Sandbox(args) => sandbox(args).await,
            Command::Keys(KeysCommand::Rotate(args)) => rotate_keys(&args),
            Command::Keys(KeysCommand::Retire { key_id, file }) => retire_key(key_id, &file).await,
            Command::Token { client, command } => cli::token(&client, command).await,
            Command::Connections { client, command } => cli::connections(&client, command).await,
            Command::Install { client, install } => cli::install(&client, install).await,
            Command::Watch {
                client,
                connection_id,
            } => cli::watch(&client, connection_id).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args),
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings::Settings {
        listen,
        data_dir,
        file,
    } = settings::Settings::resolve(args.flags())?;
    let mut providers = file.providers(|var| std::env::var(var).ok())?;
    let limits = file.limits()?;

    // SAFETY: umask only swaps the process's file-creation mask. Set before
    // the data dir or any file in it is created: everything tokend writes
    // there is private (0700 dirs, 0600 files).
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    private_data_dir(&data_dir)?;
    let (keyring, key_path) = load_keys(args.key_file.clone(), &data_dir)?;
    let store = SledStore::open(&data_dir, keyring)
        .with_context(|| format!("cannot open the database in {}", data_dir.display()))?;
    // Finish a rotation that happened while the server was down.
    reencrypt(&store, key_path.as_deref(), &data_dir).await;
    let sandbox = if args.sandbox {
        let listener = tokio::net::TcpListener::bind(args.sandbox_opts.sandbox_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the sandbox",
                    args.sandbox_opts.sandbox_listen
                )
            })?;
        let mut config = args.sandbox_opts.config();
        config
            .state_file
            .get_or_insert_with(|| data_dir.join("sandbox-state.json"));
        let sandbox = Sandbox::start_on(listener, config.clone()).await?;
        providers.retain(|p| p.name.as_str() != "sandbox");
        providers.push(sandbox_provider(
            "sandbox",
            &sandbox.token_url(),
            &config.client_id,
            &config.client_secret,
        )?);
        tracing::info!(url = %sandbox.base_url(), "sandbox provider running in-process as provider \"sandbox\"");
        Some(sandbox)
    } else {
        None
    };
    if providers.is_empty() {
        tracing::warn!(
            "no providers configured: pass --config FILE, or --sandbox to try tokend out"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(version = VERSION, data_dir = %data_dir.display(), "starting tokend");
    let watched = store.clone();
    tokend_server::run_with_tasks(
        listener,
        Arc::new(store),
        ServerConfig {
            providers,
            http: file.http_settings(),
            identities: file.identities.clone(),
            audit_log: Some(
                file.audit_log
                    .clone()
                    .unwrap_or_else(|| data_dir.join("audit.log")),
            ),
            tls: file.tls.clone(),
            limits,
            allow_plaintext: file.allow_plaintext,
            ..Default::default()
        },
        shutdown_signal(),
        |tasks, cancel| {
            if let Some(path) = key_path {
                tasks.spawn(watch_key_file(
                    path,
                    data_dir.clone(),
                    watched,
                    cancel.clone(),
                ));
            }
        },
    )
    .await?;
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    Ok(())
}

fn check_config(args: &CheckConfigArgs) -> anyhow::Result<()> {
    let settings = settings::Settings::resolve(settings::Flags {
        listen: args.listen,
        data_dir: None,
        config: args.config.as_deref(),
    })?;
    let problems = settings
        .file
        .problems(settings.listen, |var| std::env::var(var).ok());
    if problems.is_empty() {
        println!("configuration OK");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    Err(exit::UsageError(format!(
        "{} problem(s) in the configuration",
        problems.len()
    ))
    .into())
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let sandbox = Sandbox::start_on(listener, args.opts.config()).await?;
    tracing::info!(url = %sandbox.base_url(), token_url = %sandbox.token_url(), "sandbox provider running");
    shutdown_signal().await;
    sandbox.shutdown().await;
    Ok(())
}

/// Checks that the data dir is private: the database holds account ids
/// and scopes in the clear (tokens are sealed). A dir or file that an older
/// version, or an operator, left open to others is made private (0700 or
/// 0600) with a warning.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let private = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "readable by others; making it private");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private))
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The keyring from `TOKEND_KEYS`, or from the key file (created on first
/// start). Returns the file's path when keys come from a file, so rotations
/// can be picked up.
fn load_keys(
    key_file: Option<PathBuf>,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Keyring, Option<PathBuf>)> {
    if let Ok(json) = std::env::var("TOKEND_KEYS") {
        let keys = KeyFile::parse(json.as_bytes())?.keyring()?;
        tracing::info!(
            active_key = keys.active_key_id(),
            "encryption keys from TOKEND_KEYS"
        );
        return Ok((keys, None));
    }
    let path = key_file.unwrap_or_else(|| data_dir.join(KEY_FILE_NAME));
    let (file, created) = load_or_create_key_file(&path)?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "created a new encryption key file (mode 0600); back it up: without it the stored tokens cannot be read"
        );
    }
    let keys = file.keyring()?;
    tracing::info!(path = %path.display(), active_key = keys.active_key_id(), "encryption keys loaded");
    Ok((keys, Some(path)))
}

/// Re-seals records still on an old key (one pass: records already on the
/// active key are skipped inside), logs whether old keys can go, and writes
/// the usage file `keys retire` reads while the server runs.
async fn reencrypt(
    store: &SledStore,
    key_file: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) {
    match store.reencrypt().await {
        Ok(n) if n > 0 => tracing::info!(records = n, "re-encryption pass finished"),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "re-encryption failed; old keys are still needed");
            return;
        }
    }
    match store.records_on_old_keys().await {
        Ok(0) => tracing::info!(
            "no record uses an old key; old keys can be retired (tokend keys retire KEY_ID)"
        ),
        Ok(n) => tracing::warn!(
            records = n,
            "records still use an old key; do not retire old keys yet"
        ),
        Err(e) => tracing::error!(error = %e, "cannot count records on old keys"),
    }
    let Some(path) = key_file else { return };
    let Ok(file) = KeyFile::load(path) else {
        return;
    };
    let mut records = std::collections::BTreeMap::new();
    for key in &file.keys {
        match store.records_on_key(key.id).await {
            Ok(n) => {
                records.insert(key.id, n);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot count records per key");
                return;
            }
        }
    }
    let usage = KeyUsage {
        active: file.active,
        records,
        at_unix_ms: tokend_core::Clock::system().now().unix_millis(),
    };
    let target = data_dir.join(KEY_USAGE_FILE_NAME);
    let tmp = data_dir.join(format!("{KEY_USAGE_FILE_NAME}.tmp"));
    let written = serde_json::to_vec_pretty(&usage)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = written {
        tracing::error!(error = %e, path = %target.display(), "cannot write the key usage file");
    }
}

/// Polls the key file and applies a rotation online, until `cancel` fires.
async fn watch_key_file(
    path: PathBuf,
    data_dir: PathBuf,
    store: SledStore,
    cancel: tokio_util::sync::CancellationToken,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEY_FILE_POLL) => {}
            _ = cancel.cancelled() => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match KeyFile::load(&path).and_then(|f| f.keyring()) {
            Ok(keys) => {
                tracing::info!(
                    active_key = keys.active_key_id(),
                    "key file changed; switching keys"
                );
                store.set_keyring(keys);
                reencrypt(&store, Some(&path), &data_dir).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "key file changed but cannot be used; keeping the current keys")
            }
        }
    }
}

/// `tokend keys retire KEY_ID`: removes a key no record uses any more.
async fn retire_key(key_id: u32, args: &KeyFileArgs) -> anyhow::Result<()> {
    let path = args.path();
    let mut file = KeyFile::load(&path)
        .with_context(|| format!("no usable key file at {}", path.display()))?;
    if file.active == key_id {
        anyhow::bail!("key {key_id} is the active key; rotate first (tokend keys rotate)");
    }
    if !file.keys.iter().any(|k| k.id == key_id) {
        anyhow::bail!("key {key_id} is not in {}", path.display());
    }
    let in_use = match SledStore::open(&args.data_dir, file.keyring()?) {
        // The server is stopped: count directly.
        Ok(store) => store.records_on_key(key_id).await?,
        // Locked by a running server: trust its last report, which only
        // ever overstates old keys' use.
        Err(_) => {
            let usage_path = args.data_dir.join(KEY_USAGE_FILE_NAME);
            let usage: KeyUsage = std::fs::read(&usage_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .with_context(|| {
                    format!(
                        "the database is in use and {} is missing or unreadable; wait for the server's re-encryption pass",
                        usage_path.display()
                    )
                })?;
            if usage.active != file.active {
                anyhow::bail!(
                    "the running server has not switched to key {} yet; try again in a few seconds",
                    file.active
                );
            }
            usage.records.get(&key_id).copied().unwrap_or(usize::MAX)
        }
    };
    if in_use > 0 {
        anyhow::bail!(
            "refusing to retire key {key_id}: records still use it{}",
            if in_use == usize::MAX {
                String::new()
            } else {
                format!(" ({in_use})")
            }
        );
    }
    file.keys.retain(|k| k.id != key_id);
    file.keyring()?;
    file.save(&path)?;
    println!("key {key_id} retired from {}", path.display());
    Ok(())
}

fn rotate_keys(args: &KeyFileArgs) -> anyhow::Result<()> {
    let path = args.path();
    let mut file = KeyFile::load(&path).with_context(|| {
        format!(
            "no usable key file at {} (it is created by the first `tokend serve`)",
            path.display()
        )
    })?;
    let id = file.rotate();
    file.keyring()?;
    file.save(&path)?;
    println!(
        "key {id} is now active in {}; a running tokend re-encrypts every record within {} s, otherwise it does so at its next start",
        path.display(),
        KEY_FILE_POLL.as_secs()
    );
    Ok(())
}
