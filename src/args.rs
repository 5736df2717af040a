//! The command line as clap parses it: every subcommand, flag and
//! environment variable, with its help text. Resolution into settings
//! happens in `settings.rs`; what each command does, in `main.rs` and the
//! modules it calls.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use tokend_sandbox::{Dialect, Rotation, SandboxConfig};
use tokend_store::crypto::keys;

use crate::{backup, cli, events_cli, settings};

pub(crate) const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("TOKEND_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "tokend", version = VERSION, about = "OAuth2 token broker: one place that owns every connection's tokens")]
pub(crate) struct Cli {
    /// Log lines as JSON instead of text (filter with RUST_LOG).
    #[arg(long, global = true, env = "TOKEND_LOG_JSON")]
    pub(crate) log_json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the broker. With no flags: 127.0.0.1:50051, data in ./tokend-data.
    Serve(ServeArgs),
    /// Check a configuration without serving: every problem `serve` would
    /// stop at is listed (exit 2), or "configuration OK".
    CheckConfig(CheckConfigArgs),
    /// Run only the sandbox OAuth2 provider (for tests and demos).
    ///
    /// Its OAuth client is `client_id = "sandbox-client"`, client secret
    /// `sandbox-secret`; the token endpoint is `http://LISTEN/oauth/token`.
    #[command(after_help = SANDBOX_AFTER_HELP)]
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
    /// List the event log of every connection, or follow it (--follow).
    Events {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(flatten)]
        events: events_cli::EventsArgs,
    },
    /// Webhook endpoints' delivery state.
    Webhooks {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: events_cli::WebhooksCommand,
    },
    /// Apply the PostgreSQL schema migrations this build needs (`[store]
    /// kind = "postgres"`); safe to run from several replicas at once.
    Migrate(MigrateArgs),
    /// Register tokend at an authorization server that asks clients to
    /// register themselves (RFC 7591, as MCP servers do), and print the
    /// provider section for the config file.
    RegisterClient(crate::register::RegisterArgs),
    /// Move connections between stores (sled and PostgreSQL).
    #[command(subcommand)]
    Store(crate::store_copy::StoreCommand),
    /// Stream a connection's state changes.
    Watch {
        #[command(flatten)]
        client: cli::ClientArgs,
        connection_id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a new key file (0600) for a fleet of replicas to share before
    /// any of them starts; refused if the file exists. A single server makes
    /// its own at first start.
    Init(KeyFileArgs),
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
pub(crate) struct KeyFileArgs {
    /// The key file [default: DATA_DIR/tokend.keys]
    #[arg(long, env = "TOKEND_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Data directory whose key file to use.
    #[arg(long, env = "TOKEND_DATA_DIR", default_value = settings::DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
}

impl KeyFileArgs {
    pub(crate) fn path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(keys::KEY_FILE_NAME))
    }
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:50051, or `listen` in the config file]
    #[arg(long, env = "TOKEND_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Directory of the embedded database [default: ./tokend-data, or `data_dir` in the config file]
    #[arg(long, env = "TOKEND_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Admin HTTP listen address: /metrics, /healthz, /readyz [default:
    /// 127.0.0.1:9464, or `admin_listen` in the config file; "off" for none]
    #[arg(long, env = "TOKEND_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<String>,
    /// TOML file with providers and settings (see docs/configuration.md).
    #[arg(long, env = "TOKEND_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// File of the keys that encrypt tokens at rest; created (0600) on
    /// first start [default: DATA_DIR/tokend.keys]. The env var TOKEND_KEYS
    /// may hold the same JSON instead.
    #[arg(long, env = "TOKEND_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Also run the sandbox provider in-process and configure it as
    /// provider `sandbox` (development mode).
    #[arg(long)]
    pub(crate) sandbox: bool,
    /// With --sandbox: where the in-process sandbox provider listens (HTTP).
    #[arg(long, default_value = SANDBOX_LISTEN)]
    pub(crate) sandbox_listen: SocketAddr,
    #[command(flatten)]
    pub(crate) sandbox_opts: SandboxOpts,
}

impl ServeArgs {
    pub(crate) fn flags(&self) -> settings::Flags<'_> {
        settings::Flags {
            listen: self.listen,
            data_dir: self.data_dir.as_deref(),
            config: self.config.as_deref(),
            admin_listen: self.admin_listen.as_deref(),
        }
    }
}

/// `tokend migrate`.
#[derive(clap::Args)]
pub(crate) struct MigrateArgs {
    /// The config file whose `[store]` to migrate; the URL comes from the
    /// variable it names (default TOKEND_DATABASE_URL).
    #[arg(long, env = "TOKEND_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// `tokend check-config`: the flags `serve` would use.
#[derive(clap::Args)]
pub(crate) struct CheckConfigArgs {
    /// The listen address to check [default: `listen` in the file, or 127.0.0.1:50051]
    #[arg(long, env = "TOKEND_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// The config file to check.
    #[arg(long, env = "TOKEND_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// What `tokend sandbox --help` ends with: how to point a tokend at it.
const SANDBOX_AFTER_HELP: &str = "\
The sandbox's OAuth client (fixed; a demo, never a real secret):
  client_id      sandbox-client
  client secret  sandbox-secret
A tokend config that uses it (the secret read from an environment variable):
  [providers.sandbox]
  preset = \"sandbox\"
  token_url = \"http://127.0.0.1:50052/oauth/token\"
  client_id = \"sandbox-client\"
  client_secret_env = \"SANDBOX_CLIENT_SECRET\"   # export SANDBOX_CLIENT_SECRET=sandbox-secret
Mint an authorization code: POST /sandbox/codes {\"account_id\":\"portal-123\"}";

#[derive(clap::Args)]
pub(crate) struct SandboxArgs {
    /// Where the sandbox provider listens (HTTP). `--sandbox-listen` is
    /// accepted as another spelling.
    #[arg(long, alias = "sandbox-listen", default_value = SANDBOX_LISTEN)]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) opts: SandboxOpts,
}

/// Where the sandbox provider listens unless told otherwise.
pub(crate) const SANDBOX_LISTEN: &str = "127.0.0.1:50052";

/// How the sandbox provider behaves, for `serve --sandbox` and `tokend
/// sandbox` alike (where it listens is each command's own flag).
#[derive(clap::Args)]
pub(crate) struct SandboxOpts {
    /// Lifetime of the sandbox's access tokens, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub(crate) sandbox_token_lifetime_secs: u64,
    /// Refresh token rotation of the sandbox.
    #[arg(long, value_enum, default_value_t = RotationArg::Strict)]
    pub(crate) sandbox_rotation: RotationArg,
    /// With `--sandbox-rotation grace`: seconds a rotated-out refresh token
    /// keeps working.
    #[arg(long, default_value_t = 30)]
    pub(crate) sandbox_rotation_grace_secs: u64,
    /// Error dialect of the sandbox.
    #[arg(long, value_enum, default_value_t = DialectArg::Rfc6749)]
    pub(crate) sandbox_dialect: DialectArg,
    /// Where the sandbox keeps its grants across restarts [default with
    /// `serve --sandbox`: DATA_DIR/sandbox-state.json; `tokend sandbox`:
    /// memory only].
    #[arg(long)]
    pub(crate) sandbox_state: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RotationArg {
    Strict,
    Reuse,
    Grace,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DialectArg {
    Rfc6749,
    Hubspot,
    Slack,
    Github,
    Notion,
    Microsoft,
    Zoho,
    Salesforce,
    Facebook,
}

impl SandboxOpts {
    pub(crate) fn config(&self) -> SandboxConfig {
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
                DialectArg::Slack => Dialect::Slack,
                DialectArg::Github => Dialect::Github,
                DialectArg::Notion => Dialect::Notion,
                DialectArg::Microsoft => Dialect::Microsoft,
                DialectArg::Zoho => Dialect::Zoho,
                DialectArg::Salesforce => Dialect::Salesforce,
                DialectArg::Facebook => Dialect::Facebook,
            },
            state_file: self.sandbox_state.clone(),
            ..SandboxConfig::default()
        }
    }
}
