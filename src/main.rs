//! The `tokend` binary: `serve` runs the broker (optionally with an
//! in-process sandbox provider), `sandbox` runs the sandbox provider alone,
//! `keys` manages encryption keys, and the client subcommands talk to a
//! running broker.

mod args;
mod backup;
mod cli;
mod events_cli;
mod exit;
mod private_fs;
mod register;
mod render;
mod settings;
mod store;
mod store_copy;
mod telemetry;

use anyhow::Context as _;
use clap::Parser;
use tokend_sandbox::Sandbox;
use tokend_server::{ServerConfig, config::sandbox_provider};
use tokend_store::crypto::keys;

use args::{
    CheckConfigArgs, Cli, Command, KeyFileArgs, KeysCommand, SandboxArgs, ServeArgs, VERSION,
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Token { client, .. }
        | Command::Connections { client, .. }
        | Command::Install { client, .. }
        | Command::Watch { client, .. }
        | Command::Events { client, .. }
        | Command::Webhooks { client, .. }
        | Command::Backup(backup::BackupArgs { client, .. }) => client.json,
        _ => cli.log_json,
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(&e, json),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    // Traces are exported by the server only: a client command would wait
    // at exit for a collector it does not need.
    let export = match cli.command {
        Command::Serve(_) => telemetry::Export::from_env(|name| std::env::var(name).ok())?,
        _ => telemetry::Export::Off,
    };
    // Inside the runtime: the OTLP exporter's channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::Telemetry::init(cli.log_json, export)?
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::CheckConfig(args) => check_config(&args),
            Command::Sandbox(args) => sandbox(args).await,
            Command::Keys(KeysCommand::Init(args)) => init_keys(&args),
            Command::Keys(KeysCommand::Rotate(args)) => rotate_keys(&args),
            Command::Keys(KeysCommand::Retire { key_id, file }) => retire_key(key_id, &file).await,
            Command::Token { client, command } => cli::token(&client, command).await,
            Command::Connections { client, command } => cli::connections(&client, command).await,
            Command::Install { client, install } => cli::install(&client, install).await,
            Command::Watch {
                client,
                connection_id,
            } => cli::watch(&client, connection_id).await,
            Command::Events { client, events } => events_cli::events(&client, events).await,
            Command::Webhooks { client, command } => events_cli::webhooks(&client, command).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Store(command) => store_copy::run(command).await,
            Command::RegisterClient(args) => register::register(args).await,
            Command::Migrate(args) => {
                let settings = settings::Settings::resolve(settings::Flags {
                    config: args.config.as_deref(),
                    ..Default::default()
                })?;
                store::migrate(&settings.file.store).await
            }
        }
    });
    // The runtime is still up: the exporter's channel can send the rest.
    telemetry.shutdown();
    // A blocking call stuck on a hung disk must not hold the exit: the
    // server has already flushed what it could within its deadlines.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
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
    let settings = settings::Settings::resolve(args.flags())?;
    // Every problem stops serve here, as check-config refuses it (the same
    // resolution), before anything is bound or created.
    let (resolved, webhooks) = resolve_config(&settings);
    let resolved = resolved.map_err(|problems| {
        let messages: Vec<String> = problems.into_iter().map(|p| p.message).collect();
        tokend_server::config::ConfigError::Invalid(messages.join("; "))
    })?;
    let settings::Settings {
        listen,
        data_dir,
        admin,
        file,
    } = settings;
    let admin = match admin {
        settings::Admin::Off => None,
        settings::Admin::At(addr) => Some(
            tokend_server::admin::AdminListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for the admin listener"))?
                .0,
        ),
        settings::Admin::Default(addr) => match tokend_server::admin::AdminListener::bind(addr) {
            Ok((l, _)) => Some(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the default admin address is taken (another tokend here?); no /metrics: set --admin-listen");
                None
            }
        },
    };
    let tokend_server::config::resolve::Resolved {
        mut providers,
        limits,
        audit,
        cache_capacity,
        refresh_concurrency,
        events,
    } = resolved;
    let refresh_concurrency = refresh_concurrency
        .unwrap_or(tokend_server::EngineSettings::default().background_concurrency);

    // SAFETY: umask only swaps the process's file-creation mask. Set before
    // the data dir or any file in it is created: everything tokend writes
    // there is private (0700 dirs, 0600 files).
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    private_data_dir(&data_dir)?;
    let env_keys = std::env::var("TOKEND_KEYS").ok();
    let keys::LoadedKeys {
        keyring,
        path: key_path,
        unsaved,
    } = keys::load_keyring(env_keys.as_deref(), args.key_file.clone(), &data_dir)?;
    let key_rotation = tokend_server::metrics::KeyRotationMetrics::default();
    key_rotation.set_active(keyring.active_key_id());
    // The store refuses keys that lack one its records use (naming the key
    // file), before a key made just now is written anywhere.
    let opened = store::open(&file.store, &data_dir, keyring).await?;
    if let Some(unsaved) = unsaved {
        unsaved.save()?;
    }
    let node = file
        .node
        .clone()
        .unwrap_or_else(|| store::default_node(file.store.kind, listen.port()));
    let lease_ttl = file.store.refresh_lease_secs.map_or(
        tokend_server::EngineSettings::default().lease_ttl,
        std::time::Duration::from_secs,
    );
    let sandbox = if args.sandbox {
        let listener = tokio::net::TcpListener::bind(args.sandbox_listen)
            .await
            .with_context(|| format!("cannot listen on {} for the sandbox", args.sandbox_listen))?;
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
    tracing::info!(version = VERSION, data_dir = %data_dir.display(), store = ?file.store.kind, node = %node, "starting tokend");
    tokend_server::run_with_tasks(
        listener,
        opened.shared(),
        ServerConfig {
            engine: tokend_server::EngineSettings {
                node,
                lease_ttl,
                background_concurrency: refresh_concurrency,
                cache_capacity,
                ..Default::default()
            },
            providers,
            http: file.http_settings(),
            identities: file.identities.clone(),
            audit,
            audit_log: Some(
                file.audit_log
                    .clone()
                    .unwrap_or_else(|| data_dir.join("audit.log")),
            ),
            tls: file.tls.clone(),
            limits,
            allow_plaintext: file.allow_plaintext,
            events,
            webhooks,
            admin,
            key_rotation: Some(key_rotation.clone()),
            without_call_observability: false,
            system_clock: None,
        },
        shutdown_signal(),
        |tasks, cancel| {
            if let store::Opened::Sled(sled) = opened.clone() {
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    // Finish a rotation that happened while the server was
                    // down, while serving (the pass is online-safe): with
                    // a million records, a pass takes seconds.
                    tokio::select! {
                        pass = keys::reencrypt(&sled, key_path.as_deref(), &data_dir) => {
                            if let Some(pass) = pass {
                                key_rotation.record(&pass);
                            }
                        }
                        _ = cancel.cancelled() => return,
                    }
                    if let Some(path) = key_path {
                        keys::watch_key_file(
                            path,
                            data_dir,
                            sled,
                            move |pass| key_rotation.record(pass),
                            cancel.cancelled_owned(),
                        )
                        .await;
                    }
                });
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
    use tokend_server::config_check;
    // Every schema error of the file in one run (a syntax error stops the
    // parse), each with file:line:col.
    let text = match args.config.as_deref() {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| {
                tokend_server::config::ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
            if let Err(problems) = config_check::parse_all(&text, path) {
                return report_problems(&problems);
            }
            Some((path, text))
        }
        None => None,
    };
    let settings = settings::Settings::resolve(settings::Flags {
        listen: args.listen,
        data_dir: None,
        config: args.config.as_deref(),
        admin_listen: None,
    })?;
    let file = &settings.file;
    let problems = resolve_config(&settings).0.err().unwrap_or_default();
    // One problem a line, each at the key it is about.
    let place = |p: &tokend_server::config::Problem| match &text {
        Some((path, text)) => config_check::locate(text, path, p),
        None => p.message.clone(),
    };
    for warning in file.warnings() {
        eprintln!("warning: {}", place(&warning));
    }
    if problems.is_empty() {
        println!("configuration OK");
        return Ok(());
    }
    let problems: Vec<String> = problems.iter().map(place).collect();
    report_problems(&problems)
}

/// The one resolution of the configuration, for serve and check-config
/// alike (`tokend_config::resolve::resolve`), with the sections resolved
/// above tokend-config: `[[webhooks]]` (returned resolved, for serve) and
/// PostgreSQL's `[store]` options.
fn resolve_config(
    settings: &settings::Settings,
) -> (
    Result<tokend_server::config::resolve::Resolved, Vec<tokend_server::config::Problem>>,
    Vec<std::sync::Arc<tokend_server::webhooks::WebhookConfig>>,
) {
    let env = |var: &str| std::env::var(var).ok();
    let file = &settings.file;
    let (webhooks, webhook_problems) =
        tokend_server::webhooks::config::check_all(&file.webhooks, &env);
    let mut store = Vec::new();
    if file.store.kind == tokend_server::config::StoreKind::Postgres
        && let Err(e) = store::pg_options(&file.store, env)
    {
        let message = format!("{e:#}");
        let key = if message.starts_with("[store] tls") {
            "tls"
        } else {
            "url_env"
        };
        store.push(tokend_server::config::Problem {
            key: vec!["store".into(), key.into()],
            message,
        });
    }
    let outside = tokend_server::config::resolve::Outside {
        webhooks: webhook_problems,
        store,
    };
    let resolved = tokend_server::config::resolve::resolve(file, settings.listen, env, outside);
    (resolved, webhooks)
}

fn report_problems(problems: &[String]) -> anyhow::Result<()> {
    for problem in problems {
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
    let config = args.opts.config();
    let sandbox = Sandbox::start_on(listener, config.clone()).await?;
    tracing::info!(url = %sandbox.base_url(), token_url = %sandbox.token_url(), client_id = %config.client_id, "sandbox provider running (its client secret: see `tokend sandbox --help`)");
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

/// `tokend keys retire KEY_ID`.
async fn retire_key(key_id: u32, args: &KeyFileArgs) -> anyhow::Result<()> {
    let path = args.path();
    keys::retire(key_id, &path, &args.data_dir).await?;
    println!("key {key_id} retired from {}", path.display());
    Ok(())
}

/// `tokend keys rotate`.
fn init_keys(args: &KeyFileArgs) -> anyhow::Result<()> {
    let path = args.path();
    if path.exists() {
        anyhow::bail!(
            "{} exists: a key file is never replaced (its keys may seal records); `tokend keys rotate` adds a key",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (_, created) = tokend_store::crypto::load_or_create_key_file(&path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    anyhow::ensure!(
        created,
        "{} appeared meanwhile; left as it is",
        path.display()
    );
    println!(
        "created {} (0600): give every replica this file (--key-file / TOKEND_KEY_FILE), and back it up apart from the database",
        path.display()
    );
    Ok(())
}

fn rotate_keys(args: &KeyFileArgs) -> anyhow::Result<()> {
    let path = args.path();
    let id = keys::rotate(&path).with_context(|| {
        format!(
            "no usable key file at {} (it is created by the first `tokend serve`)",
            path.display()
        )
    })?;
    println!(
        "key {id} is now active in {}; a running tokend re-encrypts every record within {} s, otherwise it does so at its next start",
        path.display(),
        keys::KEY_FILE_POLL.as_secs()
    );
    Ok(())
}
