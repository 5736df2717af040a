//! The client subcommands of the `tokend` binary (`token`, `connections`,
//! `install`, `watch`), built on `tokend-client`. Human-readable by
//! default, `--json` for scripts; only `token get` ever prints a secret.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt as _;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokend_client::{Client, Rejected, WatchEventKind};
use tokend_proto::v1 as pb;

use crate::render::{connection_json, connection_text, proto_json, status_name, token_json};

/// Where the broker is and who we are.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// tokend's gRPC endpoint.
    #[arg(
        long,
        env = "TOKEND_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub endpoint: String,
    /// API key sent as x-api-key.
    #[arg(long, env = "TOKEND_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a valid access token (the only command that prints a secret).
    Get {
        connection_id: String,
        /// Least validity needed, in seconds.
        #[arg(long, default_value_t = 0)]
        min_ttl: u64,
    },
    /// Replace a token the upstream API rejected; prints metadata only.
    Refresh {
        connection_id: String,
        /// The version that was rejected (refresh only if still current).
        #[arg(long)]
        rejected_version: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// List connections.
    List {
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
    },
    /// Show one connection's metadata.
    Show { connection_id: String },
    /// Delete a connection and its tokens.
    Delete {
        connection_id: String,
        /// Delete it even if tokend cannot read its record (sealed with a
        /// key this server lacks, or damaged): it may hold the only copy of
        /// a live grant.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Active,
    ReconnectRequired,
}

/// Install a connection from an authorization code or an existing token set.
#[derive(Args)]
pub struct InstallArgs {
    #[arg(long)]
    provider: String,
    #[arg(long)]
    connection_id: Option<String>,
    #[arg(long)]
    account_id: Option<String>,
    /// Authorization code to exchange.
    #[arg(long, conflicts_with = "access_token")]
    code: Option<String>,
    #[arg(long, requires = "code")]
    redirect_uri: Option<String>,
    #[arg(
        long,
        requires = "code",
        env = "TOKEND_CODE_VERIFIER",
        hide_env_values = true
    )]
    code_verifier: Option<String>,
    /// Access token to import (prefer the env var: command lines are visible to other users).
    #[arg(long, env = "TOKEND_IMPORT_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    #[arg(long, env = "TOKEND_IMPORT_REFRESH_TOKEN", hide_env_values = true)]
    refresh_token: Option<String>,
    /// Seconds of validity left on the imported access token (required
    /// without --refresh-token: tokend could never renew it).
    #[arg(long)]
    expires_in: Option<i64>,
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// A parameter of the provider's per-connection endpoint, NAME=VALUE
    /// (e.g. --param subdomain=acme); repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// For a provider with grant = "client_credentials": install with no
    /// code and no token; tokend asks for the first one itself.
    #[arg(long, conflicts_with_all = ["code", "access_token"])]
    client_credentials: bool,
    /// Replace the stored record even if tokend cannot read it (sealed with
    /// a key this server lacks, or damaged): it may hold the only copy of a
    /// live grant.
    #[arg(long)]
    force: bool,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

pub(crate) async fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let mut builder = Client::builder(args.endpoint.clone());
    if let Some(key) = &args.api_key {
        builder = builder.api_key(key.clone());
    }
    Ok(builder.connect().await?)
}

pub(crate) fn print(args: &ClientArgs, json: Value, text: String) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(out, "{json}")
    } else {
        write!(out, "{text}")
    }
    .and_then(|()| out.flush());
    // A closed pipe (`tokend events --follow | head`) ends the command
    // quietly, as it would a Unix tool.
    if let Err(e) = written
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

pub async fn token(args: &ClientArgs, command: TokenCommand) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    match command {
        TokenCommand::Get {
            connection_id,
            min_ttl,
        } => {
            let t = tokend
                .get_token(&connection_id, Duration::from_secs(min_ttl))
                .await?;
            print(
                args,
                token_json(&t, Some(t.access_token.expose_secret())),
                format!("{}\n", t.access_token.expose_secret()),
            );
        }
        TokenCommand::Refresh {
            connection_id,
            rejected_version,
        } => {
            let rejected = rejected_version.map_or(Rejected::Unconditional, Rejected::Version);
            let (t, refreshed) = tokend.force_refresh(&connection_id, rejected).await?;
            print(
                args,
                {
                    let mut j = token_json(&t, None);
                    j["refreshed"] = Value::Bool(refreshed);
                    j
                },
                format!(
                    "{}: {} version {}, expires in {} s\n",
                    t.connection_id,
                    if refreshed {
                        "refreshed to"
                    } else {
                        "already newer:"
                    },
                    t.version,
                    t.ttl().as_secs()
                ),
            );
        }
    }
    Ok(())
}

pub async fn connections(args: &ClientArgs, command: ConnectionsCommand) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    match command {
        ConnectionsCommand::List { provider, status } => {
            let status = match status {
                None => pb::ConnectionStatus::Unspecified,
                Some(StatusArg::Active) => pb::ConnectionStatus::Active,
                Some(StatusArg::ReconnectRequired) => pb::ConnectionStatus::ReconnectRequired,
            };
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = tokend
                    .list_connections(pb::ListConnectionsRequest {
                        page_size: 500,
                        page_token: page_token.clone(),
                        provider: provider.clone().unwrap_or_default(),
                        status: status as i32,
                    })
                    .await?;
                all.extend(page.connections);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let mut text = format!(
                "{:<40} {:<12} {:<20} {:<20} {:>7}\n",
                "CONNECTION", "PROVIDER", "ACCOUNT", "STATUS", "VERSION"
            );
            for c in &all {
                text.push_str(&format!(
                    "{:<40} {:<12} {:<20} {:<20} {:>7}\n",
                    c.connection_id,
                    c.provider,
                    c.account_id,
                    status_name(c.status),
                    c.version
                ));
            }
            print(
                args,
                Value::Array(all.iter().map(connection_json).collect()),
                text,
            );
        }
        ConnectionsCommand::Show { connection_id } => {
            let c = tokend.get_connection(&connection_id).await?;
            print(args, connection_json(&c), connection_text(&c));
        }
        ConnectionsCommand::Delete {
            connection_id,
            force,
        } => {
            tokend
                .delete_connection_with(pb::DeleteConnectionRequest {
                    connection_id: connection_id.clone(),
                    force,
                })
                .await?;
            print(
                args,
                json!({"connectionId": connection_id, "deleted": true}),
                format!("deleted {connection_id}\n"),
            );
        }
    }
    Ok(())
}

pub async fn install(args: &ClientArgs, install: InstallArgs) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    let grant = match (install.code, install.access_token) {
        _ if install.client_credentials => None,
        (Some(code), None) => Some(pb::install_request::Grant::AuthorizationCode(
            pb::AuthorizationCode {
                code,
                redirect_uri: install.redirect_uri.unwrap_or_default(),
                code_verifier: install.code_verifier.unwrap_or_default(),
            },
        )),
        (None, Some(access_token)) => {
            Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                access_token,
                refresh_token: install.refresh_token.unwrap_or_default(),
                expires_in_seconds: install.expires_in.unwrap_or(0),
                scopes: install.scopes,
                token_type: String::new(),
            }))
        }
        _ => {
            return Err(crate::exit::UsageError(
                "give --code, --access-token or --client-credentials".into(),
            )
            .into());
        }
    };
    let r = tokend
        .install_raw(pb::InstallRequest {
            provider: install.provider,
            connection_id: install.connection_id.unwrap_or_default(),
            account_id: install.account_id.unwrap_or_default(),
            grant,
            replace: false,
            params: install.params.into_iter().collect(),
            force: install.force,
        })
        .await?;
    let c = r.connection.context("reply without a connection")?;
    let verb = if r.replayed {
        "already installed"
    } else if r.created {
        "created"
    } else {
        "replaced"
    };
    print(
        args,
        proto_json(&pb::InstallResponse {
            connection: Some(c.clone()),
            created: r.created,
            replayed: r.replayed,
        }),
        format!("{verb}: {}", connection_text(&c)),
    );
    Ok(())
}

pub async fn watch(args: &ClientArgs, connection_id: String) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    let mut events = tokend.watch(&connection_id);
    while let Some(event) = events.next().await {
        let event = event?;
        let (kind, event_type) = match event.kind {
            WatchEventKind::Snapshot => ("snapshot", pb::WatchEventType::Snapshot),
            WatchEventKind::TokenRotated => ("token_rotated", pb::WatchEventType::TokenRotated),
            WatchEventKind::StatusChanged => ("status_changed", pb::WatchEventType::StatusChanged),
            WatchEventKind::RefreshFailed => ("refresh_failed", pb::WatchEventType::RefreshFailed),
            WatchEventKind::Deleted => ("deleted", pb::WatchEventType::Deleted),
        };
        let c = &event.connection;
        print(
            args,
            proto_json(&pb::WatchConnectionResponse {
                event_type: event_type as i32,
                connection: Some(c.clone()),
                event_time: None,
            }),
            format!(
                "{kind}: {} status={} version={}{}{}\n",
                c.connection_id,
                status_name(c.status),
                c.version,
                crate::render::cause_name(c.reconnect_cause)
                    .map(|cause| format!(" cause={cause}"))
                    .unwrap_or_default(),
                c.last_error
                    .as_ref()
                    .map(|e| format!(" last_error={}", e.code))
                    .unwrap_or_default()
            ),
        );
    }
    Ok(())
}
