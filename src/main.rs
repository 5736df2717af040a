//! The `tokend` binary: `serve` runs the broker (optionally with an
//! in-process sandbox provider), `sandbox` runs the sandbox provider alone.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokend_sandbox::{Dialect, Rotation, Sandbox, SandboxConfig};
use tokend_server::{
    ServerConfig,
    config::{FileConfig, sandbox_provider},
};
use tokend_store::SledStore;
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
    /// Run only the sandbox OAuth2 provider (for tests and demos).
    Sandbox(SandboxArgs),
}

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
    /// Also run the sandbox provider in-process and configure it as
    /// provider `sandbox` (development mode).
    #[arg(long)]
    sandbox: bool,
    #[command(flatten)]
    sandbox_opts: SandboxOpts,
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
    /// Error dialect of the sandbox.
    #[arg(long, value_enum, default_value_t = DialectArg::Rfc6749)]
    sandbox_dialect: DialectArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum RotationArg {
    Strict,
    Reuse,
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
            },
            dialect: match self.sandbox_dialect {
                DialectArg::Rfc6749 => Dialect::Rfc6749,
                DialectArg::Hubspot => Dialect::Hubspot,
            },
            ..SandboxConfig::default()
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Sandbox(args) => sandbox(args).await,
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
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./tokend-data"));
    let mut providers = file.providers(|var| std::env::var(var).ok())?;

    let sandbox = if args.sandbox {
        let listener = tokio::net::TcpListener::bind(args.sandbox_opts.sandbox_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the sandbox",
                    args.sandbox_opts.sandbox_listen
                )
            })?;
        let config = args.sandbox_opts.config();
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

    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let store = SledStore::open(&data_dir)
        .with_context(|| format!("cannot open the database in {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(version = VERSION, data_dir = %data_dir.display(), "starting tokend");
    tokend_server::run(
        listener,
        Arc::new(store),
        ServerConfig {
            providers,
            http: file.http_settings(),
            ..Default::default()
        },
        shutdown_signal(),
    )
    .await?;
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    Ok(())
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
