//! The TOML configuration file: listen address, data dir, HTTP limits and
//! providers (with a HubSpot preset). Client secrets come from an env var or
//! a file, never from the file itself.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use serde::Deserialize;
use tokend_core::{ProviderName, RefreshPolicy};
use tokend_provider::{ClientAuth, Dialect, HttpSettings, ProviderConfig};

/// Why a configuration could not be loaded. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` starts with `LINE:COLUMN:` when the parser knows where.
    #[error("invalid config file {}:{message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("provider {name}: {reason}")]
    Provider { name: String, reason: String },
    #[error("{0}")]
    Limits(String),
    #[error("{0}")]
    Invalid(String),
}

/// The most background refreshes allowed at once.
pub const MAX_REFRESH_CONCURRENCY: usize = crate::ranges::REFRESH_CONCURRENCY.max as usize;

/// The smallest connection cache accepted.
pub const MIN_CACHE_CAPACITY: usize = crate::ranges::CACHE_CAPACITY.min as usize;

/// The smallest audit file size accepted before rotation.
pub const MIN_AUDIT_BYTES: u64 = crate::ranges::AUDIT_MAX_BYTES.min;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`):
    /// an address, or "off".
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    /// Who may call, with what grants. None: loopback only, anyone local.
    #[serde(default)]
    pub identities: Vec<crate::auth::IdentityConfig>,
    /// Background refreshes running at once [default: 8]. The refresher
    /// keeps up with `refresh_concurrency / provider latency` refreshes a
    /// second: 8 at 50 ms is 160/s; a million 30-minute tokens need 560/s.
    pub refresh_concurrency: Option<usize>,
    /// Connections kept decrypted in memory at most [default: 100,000],
    /// about 2.5 KiB each; the others are read from the store when used.
    pub cache_capacity: Option<usize>,
    /// Audit log path [default: DATA_DIR/audit.log].
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log at this size [default: 100 MiB].
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit logs kept [default: 5].
    pub audit_keep: Option<usize>,
    /// Also write audit lines to stdout, for log shippers [default: false].
    #[serde(default)]
    pub audit_stdout: bool,
    /// Server-side TLS (and client certificates for mutual TLS).
    pub tls: Option<TlsSection>,
    /// Serve plaintext on a non-loopback address (only behind a
    /// TLS-terminating proxy on the same host).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Transport bounds; see [`crate::limits`].
    #[serde(default)]
    pub limits: crate::limits::LimitsSection,
    /// Event log retention; see [`crate::feed`].
    #[serde(default)]
    pub events: crate::feed::EventsSection,
    /// Endpoints that receive events; see [`crate::webhooks`].
    #[serde(default)]
    pub webhooks: Vec<crate::webhooks::config::WebhookSection>,
    /// Where records live: the embedded sled store (default) or a
    /// PostgreSQL database shared by several replicas.
    #[serde(default)]
    pub store: StoreSection,
    /// This replica's name in refresh-lease holders; replicas sharing a
    /// database need distinct names [default: "local" with sled,
    /// "HOSTNAME:PORT" with PostgreSQL].
    pub node: Option<String>,
}

/// `[store]` as written. The binary resolves it (the server itself only
/// sees a `Store`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default)]
    pub kind: StoreKind,
    /// The environment variable that holds the database URL [default:
    /// TOKEND_DATABASE_URL]. The URL may carry a password, so it is never
    /// written in this file.
    pub url_env: Option<String>,
    /// Database connections per replica [default: 16].
    pub pool_size: Option<usize>,
    /// Longest a statement may run, in milliseconds [default: 5000]. The
    /// server cancels it; tokend itself gives up on a store call after
    /// this plus `connect_timeout_ms` (a connection gone silent answers
    /// nothing) and closes that connection.
    pub statement_timeout_ms: Option<u64>,
    /// Longest to wait for a database connection, in milliseconds
    /// [default: 5000].
    pub connect_timeout_ms: Option<u64>,
    /// TLS to the database: "verify-full" or "disable" [default:
    /// "disable" for a loopback host, "verify-full" otherwise].
    pub tls: Option<String>,
    /// PEM file of the CA that signed the database's certificate [default:
    /// the system's roots].
    pub ca_file: Option<PathBuf>,
    /// How long a refresh lease lasts, in seconds [default: 30]. The refresh
    /// holding it renews it every third of this while it runs, however slow
    /// the provider. A process that dies mid-refresh holds up that
    /// connection's next refresh (on another replica, or after its restart)
    /// about this long: replicas sweep leases that ran out every third of it
    /// and take the refresh over.
    pub refresh_lease_secs: Option<u64>,
    /// Longest data sent to the database may go unacknowledged before the
    /// connection is dropped (TCP user timeout), in milliseconds [default:
    /// 10000].
    pub tcp_user_timeout_ms: Option<u64>,
    /// Idle seconds before TCP keepalive probes start on a database
    /// connection; three unanswered probes, half this apart, drop it
    /// [default: 5].
    pub keepalive_idle_secs: Option<u64>,
    /// How often each replica reads the event log's end through the pool
    /// and checks its `LISTEN` connection, in milliseconds: the most
    /// another replica's change can take to show here when notifications
    /// stop [default: 1000].
    pub poll_interval_ms: Option<u64>,
}

/// `[store] kind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sled,
    Postgres,
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that signs client certificates; enables mutual TLS.
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub connect_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub max_response_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Hubspot,
    /// tokend's own sandbox provider (`tokend sandbox`).
    Sandbox,
    /// Slack's `oauth.v2.access`: refusals in HTTP 200 bodies, the
    /// workspace as `team.id`. For user tokens add `token_path = "authed_user"`.
    Slack,
    /// GitHub Apps' user tokens: refusals in HTTP 200 bodies, 8-hour tokens.
    Github,
    /// Notion: a JSON body with HTTP Basic, the workspace as `workspace_id`.
    Notion,
    /// Google: refresh tokens die after six months unused (keepalive 150 days).
    Google,
    /// Xero: rotating refresh tokens with a 30-minute reuse grace, dead after
    /// 60 days unused (keepalive 45 days).
    Xero,
    /// Intuit QuickBooks: a rolling 100-day refresh token that changes on
    /// every refresh (keepalive 60 days).
    Intuit,
    /// Atlassian: rotating refresh tokens, dead after 90 days unused
    /// (keepalive 60 days).
    Atlassian,
    /// Zendesk: one endpoint per subdomain (`params.subdomain`).
    Zendesk,
    /// Shopify: one endpoint per shop (`params.shop`), expiring offline tokens.
    Shopify,
    /// Microsoft identity platform (Entra ID), multi-tenant endpoint:
    /// AADSTS codes; consent and interaction required are their own
    /// RECONNECT_REQUIRED causes; refresh tokens die after 90 days unused
    /// (keepalive 60 days).
    Microsoft,
    /// Zoho: one accounts host per data centre (`params.dc`: `com`, `eu`,
    /// `in`, `com.au`, ...); `invalid_code` in HTTP 200; "Access Denied"
    /// means throttled.
    Zoho,
    /// Salesforce: no `expires_in` (sessions last 2 hours by default), no
    /// rotation, and `instance_url` kept as connection metadata.
    Salesforce,
    /// Facebook (and Instagram through it): 60-day tokens renewed by
    /// exchanging the current one (`fb_exchange_token`), monthly
    /// (keepalive 30 days).
    Facebook,
}

/// What a preset fills in where a `[providers.NAME]` table is silent.
struct PresetDefaults {
    token_url: Option<&'static str>,
    /// Renew by exchanging the access token: (grant_type, parameter).
    exchange: Option<(&'static str, &'static str)>,
    metadata_fields: &'static [&'static str],
    rotation_grace_secs: u64,
    keepalive_days: Option<u64>,
    client_auth: ClientAuth,
    dialect: Dialect,
    default_lifetime_secs: u64,
    account_id_field: Option<&'static str>,
    body: tokend_provider::RequestBody,
    /// The values each listed connection parameter may take.
    param_values: &'static [(&'static str, &'static [&'static str])],
}

/// Zoho's data centres, each an accounts host `accounts.zoho.{dc}`
/// (Zoho's "Multi DC" page). Canada's is `accounts.zohocloud.ca`, which
/// this template cannot name: configure it as a provider of its own.
pub const ZOHO_DATA_CENTRES: &[&str] = &["com", "eu", "in", "com.au", "jp", "com.cn", "sa"];

impl PresetDefaults {
    fn of(preset: Option<Preset>) -> Self {
        use tokend_provider::RequestBody;
        let generic = PresetDefaults {
            token_url: None,
            exchange: None,
            metadata_fields: &[],
            rotation_grace_secs: 0,
            keepalive_days: None,
            client_auth: ClientAuth::ClientSecretBasic,
            dialect: Dialect::Rfc6749,
            default_lifetime_secs: 3600,
            account_id_field: None,
            body: RequestBody::Form,
            param_values: &[],
        };
        match preset {
            None => generic,
            Some(Preset::Sandbox) => PresetDefaults {
                account_id_field: Some("account_id"),
                ..generic
            },
            Some(Preset::Hubspot) => PresetDefaults {
                token_url: Some(HUBSPOT_TOKEN_URL),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Hubspot,
                default_lifetime_secs: 1800,
                // The portal id, where the token endpoint sends it: Install
                // then needs no account_id.
                account_id_field: Some("hub_id"),
                ..generic
            },
            Some(Preset::Slack) => PresetDefaults {
                token_url: Some("https://slack.com/api/oauth.v2.access"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Slack,
                default_lifetime_secs: 43_200,
                account_id_field: Some("team.id"),
                ..generic
            },
            Some(Preset::Github) => PresetDefaults {
                token_url: Some("https://github.com/login/oauth/access_token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Github,
                default_lifetime_secs: 28_800,
                ..generic
            },
            Some(Preset::Notion) => PresetDefaults {
                token_url: Some("https://api.notion.com/v1/oauth/token"),
                account_id_field: Some("workspace_id"),
                body: RequestBody::Json,
                ..generic
            },
            Some(Preset::Google) => PresetDefaults {
                token_url: Some("https://oauth2.googleapis.com/token"),
                client_auth: ClientAuth::ClientSecretPost,
                keepalive_days: Some(150),
                ..generic
            },
            Some(Preset::Xero) => PresetDefaults {
                token_url: Some("https://identity.xero.com/connect/token"),
                default_lifetime_secs: 1800,
                rotation_grace_secs: 1800,
                keepalive_days: Some(45),
                ..generic
            },
            Some(Preset::Intuit) => PresetDefaults {
                token_url: Some("https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"),
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Atlassian) => PresetDefaults {
                token_url: Some("https://auth.atlassian.com/oauth/token"),
                client_auth: ClientAuth::ClientSecretPost,
                // Rotating refresh tokens with a 10-minute reuse leeway
                // (Atlassian's rotating refresh token announcement).
                rotation_grace_secs: 600,
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Zendesk) => PresetDefaults {
                token_url: Some("https://{subdomain}.zendesk.com/oauth/tokens"),
                client_auth: ClientAuth::ClientSecretPost,
                ..generic
            },
            Some(Preset::Microsoft) => PresetDefaults {
                token_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Microsoft,
                // "The Microsoft identity platform doesn't revoke old
                // refresh tokens when used": a rotated-out one lives on for
                // its lifetime, 24 hours at the least (single-page apps).
                rotation_grace_secs: 86_400,
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Zoho) => PresetDefaults {
                token_url: Some("https://accounts.zoho.{dc}/oauth/v2/token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Zoho,
                param_values: &[("dc", ZOHO_DATA_CENTRES)],
                ..generic
            },
            Some(Preset::Facebook) => PresetDefaults {
                token_url: Some("https://graph.facebook.com/v19.0/oauth/access_token"),
                exchange: Some(("fb_exchange_token", "fb_exchange_token")),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Facebook,
                default_lifetime_secs: 5_184_000,
                keepalive_days: Some(30),
                ..generic
            },
            Some(Preset::Salesforce) => PresetDefaults {
                token_url: Some("https://login.salesforce.com/services/oauth2/token"),
                client_auth: ClientAuth::ClientSecretPost,
                default_lifetime_secs: 7200,
                metadata_fields: &["instance_url"],
                ..generic
            },
            Some(Preset::Shopify) => PresetDefaults {
                token_url: Some("https://{shop}.myshopify.com/admin/oauth/access_token"),
                client_auth: ClientAuth::ClientSecretPost,
                ..generic
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshWith {
    RefreshToken,
    AccessToken,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantName {
    AuthorizationCode,
    ClientCredentials,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyName {
    Form,
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthName {
    ClientSecretPost,
    ClientSecretBasic,
    /// A public client: no secret.
    None,
    /// HTTP Basic and the body fields both.
    Both,
    /// A JWT signed with the client's private key (RFC 7523).
    PrivateKeyJwt,
    /// Mutual TLS with the client certificate (RFC 8705).
    TlsClientAuth,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DialectName {
    Rfc6749,
    Hubspot,
    Slack,
    Github,
    Microsoft,
    Zoho,
    Facebook,
}

/// One `[providers.NAME]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub preset: Option<Preset>,
    pub token_url: Option<String>,
    /// Refresh requests go here instead of `token_url`.
    pub refresh_url: Option<String>,
    /// `form` (RFC 6749) or `json` [default: the preset's, else form].
    pub body: Option<BodyName>,
    /// Dotted path of the object holding the token fields in an answer
    /// (`authed_user` for Slack user tokens) [default: the top level].
    pub token_path: Option<String>,
    /// `authorization_code` (users authorise; tokend refreshes) or
    /// `client_credentials` (no user, no refresh token) [default:
    /// authorization_code].
    pub grant: Option<GrantName>,
    /// Dotted fields of a token answer kept as connection metadata
    /// (`instance_url` for Salesforce) [default: the preset's].
    pub metadata_fields: Option<Vec<String>>,
    /// Scopes asked for with the client_credentials grant.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub client_id: String,
    /// Name of the environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Path of a file holding the client secret (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    pub client_auth: Option<ClientAuthName>,
    /// `private_key_jwt`: the PEM private key that signs client assertions,
    /// from an environment variable or a 0600 file.
    pub private_key_env: Option<String>,
    pub private_key_file: Option<PathBuf>,
    /// The assertion's JOSE algorithm [default: RS256].
    pub jwt_algorithm: Option<String>,
    /// The assertion header's `kid`, when the provider holds several keys.
    pub jwt_key_id: Option<String>,
    /// The assertion's `aud` [default: the URL the request goes to].
    pub jwt_audience: Option<String>,
    /// Mutual TLS: the client certificate chain (PEM) and its private key
    /// (a 0600 PEM file), presented to this provider's endpoints.
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    /// Roots (PEM) that sign this provider's endpoints, trusted instead of
    /// the system's.
    pub tls_ca_file: Option<PathBuf>,
    pub dialect: Option<DialectName>,
    /// Sent with every token request (HubSpot requires it on refresh too).
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// Sent with refreshes only (e.g. a `scope` some providers want again).
    #[serde(default)]
    pub refresh_params: BTreeMap<String, String>,
    /// Sent with code exchanges only.
    #[serde(default)]
    pub exchange_params: BTreeMap<String, String>,
    /// Added to the token URL's query string.
    #[serde(default)]
    pub query_params: BTreeMap<String, String>,
    /// Extra request headers (not Authorization, Content-Type, Host or
    /// Content-Length). Values of these four tables may name
    /// `{placeholders}` filled per connection, as URLs may.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The values a connection parameter may take (`dc = ["com", "eu"]`),
    /// added to the preset's. A placeholder whose values are listed may
    /// stand anywhere in a host (`https://accounts.zoho.{dc}/...`); one
    /// not listed only as one DNS label left of a fixed registrable domain
    /// (`https://{subdomain}.zendesk.com/...`).
    #[serde(default)]
    pub param_values: BTreeMap<String, Vec<String>>,
    pub default_lifetime_secs: Option<u64>,
    pub refresh_buffer_secs: Option<u64>,
    /// `refresh_token` (the usual) or `access_token`: renew by presenting the
    /// current access token (Facebook's long-lived tokens).
    pub refresh_with: Option<RefreshWith>,
    /// The refresh request's `grant_type` [default: refresh_token, or the
    /// preset's].
    pub refresh_grant_type: Option<String>,
    /// The parameter carrying the presented token [default: refresh_token,
    /// or the preset's].
    pub refresh_token_param: Option<String>,
    /// RFC 7009 revocation endpoint.
    pub revocation_url: Option<String>,
    /// Revoke a connection's grant at `revocation_url` when it is deleted
    /// [default: false].
    #[serde(default)]
    pub revoke_on_delete: bool,
    /// HubSpot's dated token endpoints: `api_version = "v3"` makes the
    /// preset's URL `https://api.hubapi.com/oauth/v3/token` [default: v1].
    pub api_version: Option<String>,
    /// Refresh at least every this many days, for providers whose refresh
    /// tokens die when unused (Google 180, Intuit 100, Xero 60).
    pub keepalive_days: Option<u64>,
    pub account_id_field: Option<String>,
    /// Seconds the provider keeps accepting a rotated-out refresh token
    /// (0, the default: strict rotation).
    pub rotation_grace_secs: Option<u64>,
    /// Least seconds between two `ForceRefresh` calls that name no rejected
    /// token or version [default: 5].
    pub min_refresh_interval_secs: Option<u64>,
    /// Accept a `client_secret_file` that group or others can read.
    #[serde(default)]
    pub allow_readable_secret_file: bool,
}

/// HubSpot's token endpoint.
pub const HUBSPOT_TOKEN_URL: &str = "https://api.hubapi.com/oauth/v1/token";

impl FileConfig {
    /// Background refreshes at once, checked: 1 to 1,024.
    pub fn refresh_concurrency(&self) -> Result<Option<usize>, ConfigError> {
        crate::ranges::REFRESH_CONCURRENCY
            .check_opt(self.refresh_concurrency)
            .map_err(ConfigError::Invalid)
    }

    /// Connections kept in memory at most, checked: at least 1,000 (a
    /// smaller cache would re-read the store on almost every call).
    pub fn cache_capacity(&self) -> Result<usize, ConfigError> {
        Ok(crate::ranges::CACHE_CAPACITY
            .check_opt(self.cache_capacity)
            .map_err(ConfigError::Invalid)?
            .unwrap_or(crate::engine::DEFAULT_CACHE_CAPACITY))
    }

    /// The audit log's rotation and stdout copy, defaults filled in.
    pub fn audit_options(&self) -> Result<crate::audit::AuditOptions, ConfigError> {
        use crate::ranges as r;
        let defaults = crate::audit::AuditOptions::default();
        let max_bytes = r::AUDIT_MAX_BYTES.check_opt(self.audit_max_bytes);
        let keep = r::AUDIT_KEEP.check_opt(self.audit_keep);
        let (max_bytes, keep) = match (max_bytes, keep) {
            (Ok(max_bytes), Ok(keep)) => (max_bytes, keep),
            (a, b) => {
                let problems: Vec<String> = [a.err(), b.err()].into_iter().flatten().collect();
                return Err(ConfigError::Invalid(problems.join("; ")));
            }
        };
        Ok(crate::audit::AuditOptions {
            max_bytes: max_bytes.unwrap_or(defaults.max_bytes),
            keep: keep.unwrap_or(defaults.keep),
            stdout: self.audit_stdout,
        })
    }

    /// The ranges of the numeric keys that no section resolver reads:
    /// `[http]`, `[store]` and `[[identities]]`. `serve` stops at these as
    /// `check-config` does.
    pub fn check_ranges(&self) -> Result<(), ConfigError> {
        use crate::ranges as r;
        let (http, store) = (&self.http, &self.store);
        let wide = |v: Option<usize>| v.map(|v| v as u64);
        let checks = [
            (r::HTTP_CONNECT_TIMEOUT_SECS, http.connect_timeout_secs),
            (r::HTTP_REQUEST_TIMEOUT_SECS, http.request_timeout_secs),
            (r::HTTP_MAX_RESPONSE_BYTES, wide(http.max_response_bytes)),
            (r::STORE_POOL_SIZE, wide(store.pool_size)),
            (r::STORE_STATEMENT_TIMEOUT_MS, store.statement_timeout_ms),
            (r::STORE_CONNECT_TIMEOUT_MS, store.connect_timeout_ms),
            (r::STORE_REFRESH_LEASE_SECS, store.refresh_lease_secs),
            (r::STORE_TCP_USER_TIMEOUT_MS, store.tcp_user_timeout_ms),
            (r::STORE_KEEPALIVE_IDLE_SECS, store.keepalive_idle_secs),
            (r::STORE_POLL_INTERVAL_MS, store.poll_interval_ms),
        ];
        let mut problems: Vec<String> = checks
            .into_iter()
            .filter_map(|(range, v)| range.check_opt(v).err())
            .collect();
        for identity in &self.identities {
            for e in [
                r::IDENTITY_REQUESTS_PER_SECOND
                    .check(identity.requests_per_second)
                    .err(),
                r::IDENTITY_MAX_WATCH_STREAMS
                    .check(identity.max_watch_streams)
                    .err(),
            ]
            .into_iter()
            .flatten()
            {
                problems.push(format!("identity {}: {e}", identity.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: locate(text, &e),
        })
    }

    pub fn http_settings(&self) -> HttpSettings {
        let d = HttpSettings::default();
        HttpSettings {
            connect_timeout: self
                .http
                .connect_timeout_secs
                .map_or(d.connect_timeout, Duration::from_secs),
            request_timeout: self
                .http
                .request_timeout_secs
                .map_or(d.request_timeout, Duration::from_secs),
            max_response_bytes: self.http.max_response_bytes.unwrap_or(d.max_response_bytes),
        }
    }

    /// Every problem `tokend serve` would stop at, and some it would only
    /// warn about, without serving: each provider (secret resolvable,
    /// secret file private, URL), the limits, the identities, the TLS
    /// files, and whether the listen address is safe. Empty: all good.
    pub fn problems(
        &self,
        listen: SocketAddr,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        self.located_problems(listen, env)
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    /// [`FileConfig::problems`], one a problem (every problem of every
    /// table, not the first of each), each with the key path it is about.
    pub fn located_problems(
        &self,
        listen: SocketAddr,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<Problem> {
        let mut located = Vec::new();
        for (name, section) in &self.providers {
            if let Err(faults) = section.resolve_all(name, &env) {
                for fault in faults {
                    let mut key = vec!["providers".to_owned(), name.clone()];
                    key.extend(fault.key);
                    let message = format!("provider {name}: {}", fault.reason);
                    located.push(Problem { key, message });
                }
            }
        }
        for problem in self.other_problems(listen, &env) {
            located.extend(crate::config_check::split_joined(&problem).into_iter().map(
                |message| Problem {
                    key: self.key_named(&message),
                    message,
                },
            ));
        }
        located
    }

    /// What `check-config` warns about without refusing: `serve` only
    /// warns about these too.
    pub fn warnings(&self) -> Vec<Problem> {
        self.providers
            .iter()
            .filter_map(|(name, section)| {
                let fault = section.plain_http_warning()?;
                let mut key = vec!["providers".to_owned(), name.clone()];
                key.extend(fault.key);
                let message = format!("provider {name}: {}", fault.reason);
                Some(Problem { key, message })
            })
            .collect()
    }

    /// The key path a problem of a section without its own keyed checks
    /// is about, from the prefix its resolver writes: `identity NAME: `
    /// or `webhook "NAME": ` (the table's entry), then `KEY = VALUE` as
    /// [`crate::ranges::Range::check`] writes it.
    fn key_named(&self, message: &str) -> Vec<String> {
        let mut key = Vec::new();
        let mut rest = message;
        for (prefix, table) in [("identity ", "identities"), ("webhook ", "webhooks")] {
            let Some((name, tail)) = message
                .strip_prefix(prefix)
                .and_then(|m| m.split_once(": "))
            else {
                continue;
            };
            let name = name.trim_matches('"');
            let index = if table == "identities" {
                self.identities.iter().position(|i| i.name == name)
            } else {
                self.webhooks.iter().position(|w| w.name == name)
            };
            if let Some(index) = index {
                key = vec![table.to_owned(), index.to_string()];
                rest = tail;
            }
        }
        // `KEY = VALUE ...` or `KEY: ...`.
        let end = [rest.find(" = "), rest.find(": ")]
            .into_iter()
            .flatten()
            .min();
        if let Some(path) = end.map(|i| &rest[..i])
            && !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
        {
            key.extend(path.split('.').map(str::to_owned));
        }
        key
    }

    /// The problems of every section but the providers'.
    fn other_problems(
        &self,
        listen: SocketAddr,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.limits() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.check_ranges() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.events.resolve() {
            problems.push(e);
        }
        if let Err(e) = self.audit_options() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.refresh_concurrency() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.cache_capacity() {
            problems.push(e.to_string());
        }
        problems.extend(crate::webhooks::config::check_all(&self.webhooks, env).1);
        problems.extend(
            crate::auth::check_identities(&self.identities)
                .iter()
                .map(ToString::to_string),
        );
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert_file", Some(&tls.cert_file)),
                ("tls.key_file", Some(&tls.key_file)),
                ("tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path
                    && let Err(e) = std::fs::read(path)
                {
                    problems.push(format!("{key}: cannot read {}: {e}", path.display()));
                }
            }
        }
        if !listen.ip().is_loopback() {
            if self.identities.is_empty() {
                problems.push(format!(
                    "listen = {listen} with no [[identities]]: an open server only listens on loopback; configure identities or listen on 127.0.0.1"
                ));
            } else if self.tls.is_none() && !self.allow_plaintext {
                problems.push(format!(
                    "listen = {listen} without [tls]: API keys and tokens would cross the network in the clear; configure [tls] or set allow_plaintext = true"
                ));
            }
        }
        problems
    }

    /// The webhook endpoints, secrets read through `env`.
    pub fn webhooks(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<std::sync::Arc<crate::webhooks::WebhookConfig>>, String> {
        crate::webhooks::config::resolve(&self.webhooks, env)
    }

    /// The transport bounds, defaults filled in.
    pub fn limits(&self) -> Result<crate::limits::Limits, ConfigError> {
        self.limits.resolve().map_err(ConfigError::Limits)
    }

    /// Resolves every provider, reading secrets through `env`.
    pub fn providers(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<ProviderConfig>, ConfigError> {
        self.providers
            .iter()
            .map(|(name, section)| section.resolve(name, &env))
            .collect()
    }
}

/// One problem of a config file: the key path it is about (`providers`,
/// `hub`, `token_url`; an array's entry by its index; empty: the file as a
/// whole), and the message `check-config` prints. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: Vec<String>,
    pub message: String,
}

/// A secret from `<key>_env` (an environment variable's name) or
/// `<key>_file` (a file readable by its owner only, unless
/// `allow_readable`), never from the config file itself. The error names
/// the key and never holds the secret.
pub(crate) fn read_secret(
    key: &str,
    env_var: Option<&str>,
    file: Option<&Path>,
    allow_readable: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match (env_var, file) {
        (Some(var), None) => match env(var) {
            None => Err(format!("{key}_env: environment variable {var} is not set")),
            Some(v) if v.is_empty() => Err(format!(
                "{key}_env: environment variable {var} is set but empty"
            )),
            Some(v) => Ok(v),
        },
        (None, Some(path)) => {
            #[cfg(unix)]
            if !allow_readable {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    return Err(format!(
                        "{key}_file {} is readable by group or others (mode {:o}); chmod 600 it, or set allow_readable_secret_file = true",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {key}_file {}: {e}", path.display()))?;
            Ok(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (Some(_), Some(_)) => Err(format!("set only one of {key}_env and {key}_file")),
        (None, None) => Err(format!(
            "set {key}_env or {key}_file (secrets are never written in the config file)"
        )),
    }
}

/// A parse error as `LINE:COLUMN: in [TABLE]: what, and how to fix it`.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_owned();
    if message.starts_with("unknown field `client_secret`") {
        message = "client_secret is not allowed: secrets never go in the config file; use client_secret_env (an environment variable's name) or client_secret_file (a 0600 file)".into();
    }
    let Some(span) = e.span() else {
        return format!(" {message}");
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // The table the error is in: the last header above it.
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|header| format!(" in {header}:"))
        .unwrap_or_default();
    format!("{line}:{column}:{table} {message}")
}

/// A problem of one table: the key it is about, in the table (empty: the
/// table itself), and what is wrong. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub key: Vec<String>,
    pub reason: String,
}

/// An error naming the key (in its table) it is about.
type KeyedError = (Vec<String>, String);

/// The problems of one table, collected instead of stopping at the first.
#[derive(Default)]
struct Faults {
    list: Vec<Fault>,
}

impl Faults {
    fn add(&mut self, key: &[&str], reason: String) {
        let key = key.iter().map(|k| (*k).to_owned()).collect();
        self.list.push(Fault { key, reason });
    }

    /// `r`'s value, or `None` with its error recorded at `key`.
    fn take<T>(&mut self, key: &[&str], r: Result<T, String>) -> Option<T> {
        r.map_err(|reason| self.add(key, reason)).ok()
    }

    /// [`Faults::take`] for an error that names its own key.
    fn take_keyed<T>(&mut self, r: Result<T, (Vec<String>, String)>) -> Option<T> {
        r.map_err(|(key, reason)| self.list.push(Fault { key, reason }))
            .ok()
    }
}

impl ProviderSection {
    /// The `private_key_jwt` signer: a key is required by that method and
    /// refused by every other.
    fn client_assertion(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<tokend_provider::AssertionSigner>, String> {
        let wanted = matches!(self.client_auth, Some(ClientAuthName::PrivateKeyJwt));
        let given = self.private_key_env.is_some() || self.private_key_file.is_some();
        if !wanted {
            if given
                || self.jwt_algorithm.is_some()
                || self.jwt_key_id.is_some()
                || self.jwt_audience.is_some()
            {
                return Err(
                    "private_key_* and jwt_* are for client_auth = \"private_key_jwt\"".into(),
                );
            }
            return Ok(None);
        }
        let pem = read_secret(
            "private_key",
            self.private_key_env.as_deref(),
            self.private_key_file.as_deref(),
            self.allow_readable_secret_file,
            env,
        )?;
        // A per-connection audience is filled in for each connection.
        let audience = self
            .jwt_audience
            .clone()
            .filter(|a| !matches!(tokend_provider::UrlTemplate::parse(a), Ok(Some(_))));
        tokend_provider::AssertionSigner::from_pem(
            pem.as_bytes(),
            self.jwt_algorithm.as_deref().unwrap_or("RS256"),
            self.jwt_key_id.clone(),
            audience,
        )
        .map(Some)
    }

    /// The provider's TLS settings: a client certificate (required by
    /// `tls_client_auth`, allowed with any method) and private roots.
    fn tls(&self) -> Result<Option<tokend_provider::ClientTls>, (Vec<String>, String)> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                (
                    vec![key.to_owned()],
                    format!("cannot read {key} {}: {e}", path.display()),
                )
            })
        };
        let identity = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(cert), Some(key)) => {
                let key = read_secret(
                    "tls_client_key",
                    None,
                    Some(key),
                    self.allow_readable_secret_file,
                    &|_| None,
                )
                .map_err(|e| (vec!["tls_client_key_file".to_owned()], e))?;
                Some((read("tls_client_cert_file", cert)?, key.into_bytes()))
            }
            (None, None) => None,
            (cert, _) => {
                let key = if cert.is_some() {
                    "tls_client_cert_file"
                } else {
                    "tls_client_key_file"
                };
                return Err((
                    vec![key.to_owned()],
                    "set both tls_client_cert_file and tls_client_key_file, or neither".into(),
                ));
            }
        };
        if matches!(self.client_auth, Some(ClientAuthName::TlsClientAuth)) && identity.is_none() {
            return Err((vec!["client_auth".to_owned()], "client_auth = \"tls_client_auth\" needs tls_client_cert_file and tls_client_key_file".into()));
        }
        let roots = match &self.tls_ca_file {
            Some(path) => Some(read("tls_ca_file", path)?),
            None => None,
        };
        if identity.is_none() && roots.is_none() {
            return Ok(None);
        }
        tokend_provider::ClientTls::from_pem(
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            roots.as_deref(),
        )
        .map(Some)
        .map_err(|e| {
            let key = if identity.is_some() {
                "tls_client_cert_file"
            } else {
                "tls_ca_file"
            };
            (vec![key.to_owned()], e)
        })
    }

    /// A table of parameters, each value's placeholders checked.
    fn checked_params(
        &self,
        key: &str,
        table: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, KeyedError> {
        for (name, value) in table {
            if name.is_empty() {
                return Err((vec![key.to_owned()], format!("{key} has an empty name")));
            }
            tokend_provider::UrlTemplate::parse(value).map_err(|e| {
                (
                    vec![key.to_owned(), name.clone()],
                    format!("{key}.{name}: {e}"),
                )
            })?;
        }
        Ok(table.clone().into_iter().collect())
    }

    /// The extra headers, names and values checked, the ones tokend sets
    /// itself refused.
    fn checked_headers(&self) -> Result<Vec<(String, String)>, KeyedError> {
        for (name, value) in &self.headers {
            let at = || vec!["headers".to_owned(), name.clone()];
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "authorization" | "content-type" | "content-length" | "host" | "transfer-encoding"
            ) {
                return Err((
                    at(),
                    format!("headers.{name}: tokend sets this header itself"),
                ));
            }
            if !tokend_provider::valid_header(name, value) {
                return Err((at(), format!("headers.{name}: not a valid HTTP header")));
            }
        }
        self.checked_params("headers", &self.headers)
    }

    fn resolve(
        &self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<ProviderConfig, ConfigError> {
        // `check-config` lists it with the other problems instead.
        if let Some(warning) = self.plain_http_warning() {
            tracing::warn!(provider = name, "{}", warning.reason);
        }
        self.resolve_all(name, env)
            .map_err(|faults| ConfigError::Provider {
                name: name.to_owned(),
                reason: faults
                    .into_iter()
                    .map(|f| f.reason)
                    .collect::<Vec<_>>()
                    .join("; "),
            })
    }

    /// The provider, or every problem of its table (not only the first),
    /// each with the key it is about.
    fn resolve_all(
        &self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<ProviderConfig, Vec<Fault>> {
        let mut f = Faults::default();
        let provider_name = f.take(
            &[],
            ProviderName::new(name).map_err(|e| format!("invalid name: {e}")),
        );
        let defaults = PresetDefaults::of(self.preset);
        let versioned;
        let token_url: Option<(&str, &str)> =
            match (&self.token_url, defaults.token_url, &self.api_version) {
                (Some(_), _, Some(_)) => {
                    f.add(
                    &["api_version"],
                    "set token_url or api_version, not both (api_version picks the preset's URL)"
                        .into(),
                );
                    None
                }
                (None, _, Some(v)) if matches!(self.preset, Some(Preset::Hubspot)) => {
                    if v.is_empty() || v.len() > 8 || !v.bytes().all(|b| b.is_ascii_alphanumeric())
                    {
                        f.add(
                            &["api_version"],
                            format!("api_version {v:?} must be letters and digits, like v1 or v3"),
                        );
                        None
                    } else {
                        versioned = format!("https://api.hubapi.com/oauth/{v}/token");
                        Some(("api_version", versioned.as_str()))
                    }
                }
                (_, _, Some(_)) => {
                    f.add(
                        &["api_version"],
                        "api_version is a key of the hubspot preset only".into(),
                    );
                    None
                }
                (Some(url), _, None) => Some(("token_url", url.as_str())),
                (None, Some(url), None) => Some(("preset", url)),
                (None, None, None) => {
                    f.add(&["token_url"], "token_url is required".into());
                    None
                }
            };
        // A URL with `{name}` placeholders is a per-connection template:
        // checked by filling every placeholder with a sample value.
        let parse_url = |key: &str,
                         url: &str|
         -> Result<
            (tokend_provider::Url, Option<tokend_provider::UrlTemplate>),
            String,
        > {
            let template = tokend_provider::UrlTemplate::parse(url)
                .map_err(|e| format!("invalid {key}: {e}"))?;
            let sample = match &template {
                Some(t) => {
                    t.places().map_err(|e| format!("invalid {key}: {e}"))?;
                    let params = t
                        .names()
                        .iter()
                        .map(|n| (n.clone(), "sample".to_owned()))
                        .collect();
                    t.render(&params)
                        .map_err(|e| format!("invalid {key}: {e}"))?
                }
                None => url.parse().map_err(|e| format!("invalid {key}: {e}"))?,
            };
            if !matches!(sample.scheme(), "https" | "http") {
                return Err(format!("{key} must be http or https"));
            }
            if template.is_some() {
                // Never used unfilled: a host that cannot resolve (RFC 2606),
                // so a path that forgot to fill it fails instead of sending
                // secrets anywhere.
                let unfilled = "https://unfilled-url-template.invalid/"
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                return Ok((unfilled, template));
            }
            Ok((sample, None))
        };
        let token_url =
            token_url.and_then(|(key, url)| f.take(&[key], parse_url("token_url", url)));
        let (refresh_url, refresh_url_template) = match self.refresh_url.as_deref() {
            Some(u) => f
                .take(&["refresh_url"], parse_url("refresh_url", u))
                .map_or((None, None), |(url, template)| (Some(url), template)),
            None => (None, None),
        };
        let revocation_url = match self.revocation_url.as_deref() {
            Some(u) => match f.take(&["revocation_url"], parse_url("revocation_url", u)) {
                Some((url, None)) => Some(url),
                Some((_, Some(_))) => {
                    f.add(
                        &["revocation_url"],
                        "revocation_url cannot name placeholders (yet)".into(),
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        if self.revoke_on_delete && self.revocation_url.is_none() {
            f.add(
                &["revoke_on_delete"],
                "revoke_on_delete needs a revocation_url".into(),
            );
        }
        let token_path: Vec<String> = match self.token_path.as_deref() {
            None | Some("") => Vec::new(),
            Some(path) => {
                let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                if keys.iter().any(String::is_empty) {
                    f.add(
                        &["token_path"],
                        format!("token_path {path:?} has an empty key"),
                    );
                }
                keys
            }
        };
        if self.client_id.is_empty() {
            f.add(&["client_id"], "client_id is required".into());
        }
        let public = matches!(
            self.client_auth,
            Some(
                ClientAuthName::None
                    | ClientAuthName::PrivateKeyJwt
                    | ClientAuthName::TlsClientAuth
            )
        );
        let secret_key = if self.client_secret_file.is_some() && self.client_secret_env.is_none() {
            "client_secret_file"
        } else {
            "client_secret_env"
        };
        let client_secret = if public {
            if self.client_secret_env.is_some() || self.client_secret_file.is_some() {
                let method = match self.client_auth {
                    Some(ClientAuthName::PrivateKeyJwt) => {
                        "private_key_jwt\" signs with a private key"
                    }
                    Some(ClientAuthName::TlsClientAuth) => {
                        "tls_client_auth\" presents a certificate"
                    }
                    _ => "none\" is a public client",
                };
                f.add(
                    &[secret_key],
                    format!("client_auth = \"{method}: give it no client secret"),
                );
            }
            Some(String::new())
        } else {
            let secret = f.take(
                &[secret_key],
                read_secret(
                    "client_secret",
                    self.client_secret_env.as_deref(),
                    self.client_secret_file.as_deref(),
                    self.allow_readable_secret_file,
                    env,
                ),
            );
            if secret.as_ref().is_some_and(String::is_empty) {
                f.add(&[secret_key], "the client secret is empty".into());
            }
            secret
        };
        let client_assertion = self
            .client_assertion(env)
            .map_err(|e| (self.assertion_key(), e));
        let client_assertion = f.take_keyed(client_assertion);
        let jwt_audience_template = match self.jwt_audience.as_deref() {
            Some(a) => f
                .take(
                    &["jwt_audience"],
                    tokend_provider::UrlTemplate::parse(a)
                        .map_err(|e| format!("invalid jwt_audience: {e}")),
                )
                .flatten(),
            None => None,
        };
        let param_values = f.take_keyed(self.param_values(&defaults));
        let tls = f.take_keyed(self.tls());
        let mut extra_params: Vec<(String, String)> =
            self.extra_params.clone().into_iter().collect();
        if let Some(uri) = &self.redirect_uri {
            extra_params.push(("redirect_uri".into(), uri.clone()));
        }
        let client_auth = match self.client_auth {
            Some(ClientAuthName::ClientSecretBasic) => ClientAuth::ClientSecretBasic,
            Some(ClientAuthName::ClientSecretPost) => ClientAuth::ClientSecretPost,
            Some(ClientAuthName::None) => ClientAuth::None,
            Some(ClientAuthName::Both) => ClientAuth::Both,
            Some(ClientAuthName::PrivateKeyJwt) => ClientAuth::PrivateKeyJwt,
            Some(ClientAuthName::TlsClientAuth) => ClientAuth::TlsClientAuth,
            None => defaults.client_auth,
        };
        let dialect = match self.dialect {
            Some(DialectName::Hubspot) => Dialect::Hubspot,
            Some(DialectName::Rfc6749) => Dialect::Rfc6749,
            Some(DialectName::Slack) => Dialect::Slack,
            Some(DialectName::Github) => Dialect::Github,
            Some(DialectName::Microsoft) => Dialect::Microsoft,
            Some(DialectName::Zoho) => Dialect::Zoho,
            Some(DialectName::Facebook) => Dialect::Facebook,
            None => defaults.dialect,
        };
        let body = match self.body {
            Some(BodyName::Form) => tokend_provider::RequestBody::Form,
            Some(BodyName::Json) => tokend_provider::RequestBody::Json,
            None => defaults.body,
        };
        use crate::ranges as r;
        let mut secs = |range: r::Range, v: Option<u64>| {
            f.take(&[range.name()], range.check_opt(v))
                .flatten()
                .map(Duration::from_secs)
        };
        let default_lifetime = secs(
            r::PROVIDER_DEFAULT_LIFETIME_SECS,
            self.default_lifetime_secs,
        )
        .unwrap_or(Duration::from_secs(defaults.default_lifetime_secs));
        let mut refresh_policy = RefreshPolicy::default();
        if let Some(b) = secs(r::PROVIDER_REFRESH_BUFFER_SECS, self.refresh_buffer_secs) {
            refresh_policy.buffer = b;
        }
        let keepalive_days = secs(r::PROVIDER_KEEPALIVE_DAYS, self.keepalive_days);
        refresh_policy.keepalive = keepalive_days
            .map(|d| d.as_secs())
            .or(defaults.keepalive_days)
            .map(|days| Duration::from_secs(days * 86_400));
        let rotation_grace = secs(r::PROVIDER_ROTATION_GRACE_SECS, self.rotation_grace_secs)
            .unwrap_or(Duration::from_secs(defaults.rotation_grace_secs));
        let min_refresh_interval = secs(
            r::PROVIDER_MIN_REFRESH_INTERVAL_SECS,
            self.min_refresh_interval_secs,
        )
        .unwrap_or(ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL);
        let refresh_params =
            f.take_keyed(self.checked_params("refresh_params", &self.refresh_params));
        let exchange_params =
            f.take_keyed(self.checked_params("exchange_params", &self.exchange_params));
        let query_params = f.take_keyed(self.checked_params("query_params", &self.query_params));
        let headers = f.take_keyed(self.checked_headers());
        let (
            Some(provider_name),
            Some(token_url),
            Some(client_secret),
            Some(client_assertion),
            Some(param_values),
            Some(tls),
            Some(refresh_params),
            Some(exchange_params),
            Some(query_params),
            Some(headers),
        ) = (
            provider_name,
            token_url,
            client_secret,
            client_assertion,
            param_values,
            tls,
            refresh_params,
            exchange_params,
            query_params,
            headers,
        )
        else {
            return Err(f.list);
        };
        if !f.list.is_empty() {
            return Err(f.list);
        }
        let (token_url, token_url_template) = token_url;
        let mut config = ProviderConfig {
            name: provider_name,
            token_url,
            client_id: self.client_id.clone(),
            client_secret: SecretString::from(client_secret),
            client_auth,
            extra_params,
            default_lifetime,
            refresh_policy,
            dialect,
            account_id_field: self
                .account_id_field
                .clone()
                .or_else(|| defaults.account_id_field.map(str::to_owned)),
            rotation_grace,
            min_refresh_interval,
            request: tokend_provider::RequestShape {
                refresh_url,
                body,
                token_url_template,
                refresh_url_template,
                jwt_audience_template,
                param_values,
                refresh_params,
                exchange_params,
                query_params,
                headers,
                revocation_url,
                revoke_on_delete: self.revoke_on_delete,
                refresh_with_access_token: match self.refresh_with {
                    Some(RefreshWith::AccessToken) => true,
                    Some(RefreshWith::RefreshToken) => false,
                    None => defaults.exchange.is_some(),
                },
                refresh_grant_type: self
                    .refresh_grant_type
                    .clone()
                    .or_else(|| defaults.exchange.map(|(g, _)| g.to_owned())),
                refresh_token_param: self
                    .refresh_token_param
                    .clone()
                    .or_else(|| defaults.exchange.map(|(_, p)| p.to_owned())),
                client_assertion,
                tls,
            },
            response: tokend_provider::ResponseShape {
                token_path,
                metadata_fields: self.metadata_fields.clone().unwrap_or_else(|| {
                    defaults
                        .metadata_fields
                        .iter()
                        .map(|f| (*f).to_owned())
                        .collect()
                }),
            },
            grant: match self.grant {
                Some(GrantName::ClientCredentials) => tokend_provider::GrantType::ClientCredentials,
                Some(GrantName::AuthorizationCode) | None => {
                    tokend_provider::GrantType::AuthorizationCode
                }
            },
            scopes: self.scopes.clone(),
        };
        // A preset's list for a placeholder the file's own URL dropped.
        let names = config.connection_params();
        config
            .request
            .param_values
            .retain(|name, _| names.contains(name) || self.param_values.contains_key(name));
        // Its messages start with the key they are about: `token_url: ...`,
        // `param_values.NAME ...`.
        config.check_templates().map_err(|e| {
            let key: Vec<String> = e
                .split([':', ' '])
                .next()
                .unwrap_or_default()
                .split('.')
                .map(str::to_owned)
                .collect();
            vec![Fault { key, reason: e }]
        })?;
        Ok(config)
    }

    /// The key a `client_assertion` problem is about: the first
    /// `private_key_*`/`jwt_*` key set, else `client_auth`.
    fn assertion_key(&self) -> Vec<String> {
        let wanted = matches!(self.client_auth, Some(ClientAuthName::PrivateKeyJwt));
        let keys = [
            ("private_key_env", self.private_key_env.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
            ("jwt_algorithm", self.jwt_algorithm.is_some() && !wanted),
            ("jwt_key_id", self.jwt_key_id.is_some() && !wanted),
            ("jwt_audience", self.jwt_audience.is_some() && !wanted),
        ];
        let key = keys
            .iter()
            .find(|(_, set)| *set)
            .map_or("client_auth", |(k, _)| k);
        vec![key.to_owned()]
    }

    /// A `token_url` that sends the client secret and refresh tokens in the
    /// clear to another host: `serve` warns, `check-config` lists it.
    fn plain_http_warning(&self) -> Option<Fault> {
        let url: tokend_provider::Url = self.token_url.as_deref()?.parse().ok()?;
        let local = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        (url.scheme() == "http" && !local).then(|| Fault {
            key: vec!["token_url".into()],
            reason: format!(
                "token_url {url} is plain http:// to another host: the client secret and refresh tokens cross the network in the clear"
            ),
        })
    }

    /// `param_values`: the preset's lists, extended by the file's.
    fn param_values(
        &self,
        defaults: &PresetDefaults,
    ) -> Result<BTreeMap<String, Vec<String>>, (Vec<String>, String)> {
        let mut lists: BTreeMap<String, Vec<String>> = defaults
            .param_values
            .iter()
            .map(|(name, values)| {
                let values = values.iter().map(|v| (*v).to_owned()).collect();
                ((*name).to_owned(), values)
            })
            .collect();
        for (name, values) in &self.param_values {
            if values.is_empty() {
                return Err((
                    vec!["param_values".to_owned(), name.clone()],
                    format!("param_values.{name} is empty: list the values, or leave the key out"),
                ));
            }
            let list = lists.entry(name.clone()).or_default();
            for value in values {
                if !list.contains(value) {
                    list.push(value.clone());
                }
            }
        }
        Ok(lists)
    }
}

/// The provider entry for a sandbox reachable at `token_url`, as `tokend
/// serve --sandbox` and the tests configure it.
pub fn sandbox_provider(
    name: &str,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<ProviderConfig, ConfigError> {
    let section = ProviderSection {
        preset: Some(Preset::Sandbox),
        token_url: Some(token_url.to_owned()),
        client_id: client_id.to_owned(),
        client_secret_env: Some("SANDBOX_CLIENT_SECRET".to_owned()),
        ..Default::default()
    };
    section.resolve(name, &|_| Some(client_secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn parse(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn hubspot_preset_fills_in_the_endpoint_and_dialect() {
        let cfg = parse(
            r#"
            listen = "127.0.0.1:6000"
            [providers.hubspot]
            preset = "hubspot"
            client_id = "abc"
            client_secret_env = "HS_SECRET"
            redirect_uri = "https://app.example.com/cb"
            "#,
        );
        let providers = cfg
            .providers(|k| (k == "HS_SECRET").then(|| "s3cret".to_owned()))
            .unwrap();
        let p = &providers[0];
        assert_eq!(p.token_url.as_str(), HUBSPOT_TOKEN_URL);
        assert_eq!(p.dialect, Dialect::Hubspot);
        assert_eq!(p.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(p.default_lifetime, Duration::from_secs(1800));
        assert_eq!(p.client_secret.expose_secret(), "s3cret");
        assert_eq!(p.account_id_field.as_deref(), Some("hub_id"));
        assert!(
            p.extra_params
                .contains(&("redirect_uri".into(), "https://app.example.com/cb".into()))
        );
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    /// Issue 16: the presets with quirks fill in their endpoint, dialect,
    /// body and account field; a table's own keys win; a separate
    /// refresh_url and a nested token path are read and checked.
    /// Issue 16: `private_key_jwt` and mutual TLS read their keys from 0600
    /// files (or the environment), never from the config; each method's
    /// material is required by it and refused elsewhere.
    #[test]
    fn private_key_jwt_and_mutual_tls_read_their_keys_from_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["tokend".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.display().to_string()
        };
        let key_file = write("key.pem", &key.serialize_pem(), 0o600);
        let cert_file = write("cert.pem", &cert.pem(), 0o644);
        let open_key = write("open-key.pem", &key.serialize_pem(), 0o644);
        let ok = parse(&format!(
            r#"
            [providers.jwt]
            token_url = "https://id.example.com/token"
            client_id = "tokend"
            client_auth = "private_key_jwt"
            private_key_file = "{key_file}"
            jwt_algorithm = "ES256"
            jwt_key_id = "k1"
            [providers.mtls]
            token_url = "https://id.example.com/token"
            client_id = "tokend"
            client_auth = "tls_client_auth"
            tls_client_cert_file = "{cert_file}"
            tls_client_key_file = "{key_file}"
            tls_ca_file = "{cert_file}"
            "#
        ));
        let providers = ok.providers(|_| None).unwrap();
        let jwt = providers.iter().find(|p| p.name.as_str() == "jwt").unwrap();
        assert_eq!(jwt.client_auth, ClientAuth::PrivateKeyJwt);
        assert!(jwt.request.client_assertion.is_some());
        let mtls = providers
            .iter()
            .find(|p| p.name.as_str() == "mtls")
            .unwrap();
        assert_eq!(mtls.client_auth, ClientAuth::TlsClientAuth);
        assert!(mtls.request.tls.as_ref().unwrap().has_client_certificate());
        let shown = format!("{providers:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");

        let head = "token_url = \"https://id.example.com/token\"\nclient_id = \"tokend\"";
        for (body, expected) in [
            (
                "client_auth = \"private_key_jwt\"".to_owned(),
                "private_key",
            ),
            (
                format!(
                    "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\njwt_algorithm = \"RS256\""
                ),
                "not a PEM",
            ),
            (
                format!(
                    "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{open_key}\"\njwt_algorithm = \"ES256\""
                ),
                "readable by group or others",
            ),
            (
                format!(
                    "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\njwt_algorithm = \"HS256\""
                ),
                "not one of",
            ),
            (
                format!(
                    "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\nclient_secret_env = \"S\""
                ),
                "give it no client secret",
            ),
            (
                format!("client_secret_env = \"S\"\nprivate_key_file = \"{key_file}\""),
                "are for client_auth",
            ),
            (
                "client_auth = \"tls_client_auth\"".to_owned(),
                "needs tls_client_cert_file",
            ),
            (
                format!("client_secret_env = \"S\"\ntls_client_cert_file = \"{cert_file}\""),
                "set both",
            ),
            (
                format!("client_secret_env = \"S\"\ntls_ca_file = \"{key_file}\""),
                "roots",
            ),
        ] {
            let cfg = parse(&format!("[providers.p]\n{head}\n{body}\n"));
            let err = cfg.providers(|_| Some("s".into())).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
            assert!(!err.contains("PRIVATE KEY"), "{err}");
        }
    }

    #[test]
    fn quirky_presets_and_request_and_response_shapes() {
        use tokend_provider::RequestBody;
        let cfg = parse(
            r#"
            [providers.slack]
            preset = "slack"
            client_id = "a"
            client_secret_env = "S"
            token_path = "authed_user"
            [providers.github]
            preset = "github"
            client_id = "a"
            client_secret_env = "S"
            [providers.notion]
            preset = "notion"
            client_id = "a"
            client_secret_env = "S"
            [providers.custom]
            token_url = "https://id.example.com/oauth/token"
            refresh_url = "https://id.example.com/oauth/refresh"
            body = "json"
            dialect = "slack"
            account_id_field = "org.id"
            client_id = "a"
            client_secret_env = "S"
            "#,
        );
        let providers = cfg.providers(|_| Some("s".to_owned())).unwrap();
        let by = |n: &str| providers.iter().find(|p| p.name.as_str() == n).unwrap();
        let slack = by("slack");
        assert_eq!(slack.dialect, Dialect::Slack);
        assert_eq!(slack.response.token_path, ["authed_user"]);
        assert_eq!(slack.account_id_field.as_deref(), Some("team.id"));
        assert_eq!(slack.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(by("github").dialect, Dialect::Github);
        assert_eq!(by("github").default_lifetime, Duration::from_secs(28_800));
        let notion = by("notion");
        assert_eq!(notion.request.body, RequestBody::Json);
        assert_eq!(notion.client_auth, ClientAuth::ClientSecretBasic);
        assert_eq!(notion.account_id_field.as_deref(), Some("workspace_id"));
        let custom = by("custom");
        assert_eq!(
            custom.request.refresh_url.as_ref().map(|u| u.as_str()),
            Some("https://id.example.com/oauth/refresh")
        );
        assert_eq!(custom.request.body, RequestBody::Json);
        assert_eq!(custom.dialect, Dialect::Slack);
        assert_eq!(custom.account_id_field.as_deref(), Some("org.id"));
        let v3 = parse(
            r#"
            [providers.hubspot]
            preset = "hubspot"
            api_version = "v3"
            client_id = "a"
            client_secret_env = "S"
            "#,
        );
        assert_eq!(
            v3.providers(|_| Some("s".to_owned())).unwrap()[0]
                .token_url
                .as_str(),
            "https://api.hubapi.com/oauth/v3/token"
        );
        let keepalive = parse(
            r#"
            [providers.google]
            token_url = "https://oauth2.googleapis.com/token"
            keepalive_days = 150
            client_id = "a"
            client_secret_env = "S"
            "#,
        );
        assert_eq!(
            keepalive.providers(|_| Some("s".to_owned())).unwrap()[0]
                .refresh_policy
                .keepalive,
            Some(Duration::from_secs(150 * 86_400))
        );
        let presets = parse(
            r#"
            [providers.google]
            preset = "google"
            client_id = "a"
            client_secret_env = "S"
            [providers.xero]
            preset = "xero"
            client_id = "a"
            client_secret_env = "S"
            [providers.zendesk]
            preset = "zendesk"
            client_id = "a"
            client_secret_env = "S"
            [providers.shopify]
            preset = "shopify"
            client_id = "a"
            client_secret_env = "S"
            [providers.zoho]
            preset = "zoho"
            client_id = "a"
            client_secret_env = "S"
            [providers.microsoft]
            preset = "microsoft"
            client_id = "a"
            client_secret_env = "S"
            [providers.atlassian]
            preset = "atlassian"
            client_id = "a"
            client_secret_env = "S"
            "#,
        );
        let providers = presets.providers(|_| Some("s".to_owned())).unwrap();
        let by = |n: &str| providers.iter().find(|p| p.name.as_str() == n).unwrap();
        assert_eq!(
            by("google").refresh_policy.keepalive,
            Some(Duration::from_secs(150 * 86_400))
        );
        assert_eq!(by("xero").rotation_grace, Duration::from_secs(1800));
        assert_eq!(by("atlassian").rotation_grace, Duration::from_secs(600));
        assert_eq!(by("microsoft").rotation_grace, Duration::from_secs(86_400));
        assert_eq!(by("zendesk").connection_params(), ["subdomain"]);
        assert_eq!(by("shopify").connection_params(), ["shop"]);
        assert_eq!(by("zoho").connection_params(), ["dc"]);
        assert_eq!(by("zoho").dialect, Dialect::Zoho);
        assert_eq!(by("microsoft").dialect, Dialect::Microsoft);
        let eu = [("dc".to_owned(), "eu".to_owned())].into();
        assert_eq!(
            by("zoho").for_connection(&eu).unwrap().token_url.as_str(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
        let acme = [("subdomain".to_owned(), "acme".to_owned())].into();
        assert_eq!(
            by("zendesk")
                .for_connection(&acme)
                .unwrap()
                .token_url
                .as_str(),
            "https://acme.zendesk.com/oauth/tokens"
        );
        let public = parse(
            r#"
            [providers.mcp]
            token_url = "https://mcp.example.com/token"
            client_auth = "none"
            client_id = "tokend"
            "#,
        );
        let mcp = &public.providers(|_| None).unwrap()[0];
        assert_eq!(mcp.client_auth, ClientAuth::None);
        let with_secret = parse(
            r#"
            [providers.mcp]
            token_url = "https://mcp.example.com/token"
            client_auth = "none"
            client_id = "tokend"
            client_secret_env = "S"
            "#,
        );
        let refused = with_secret.providers(|_| Some("s".into())).unwrap_err();
        assert!(refused.to_string().contains("public client"), "{refused}");
        for bad in [
            "headers = { Authorization = \"Bearer x\" }",
            "headers = { \"bad name\" = \"x\" }",
            "query_params = { t = \"{Bad}\" }",
            "api_version = \"v3\"",
            "keepalive_days = 0",
            "refresh_url = \"ftp://x/y\"",
            "token_path = \"a..b\"",
            "body = \"xml\"",
        ] {
            let text = format!(
                "[providers.p]\ntoken_url = \"https://x/t\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n{bad}\n"
            );
            let refused = FileConfig::parse(&text, Path::new("t.toml"))
                .map_err(|e| e.to_string())
                .and_then(|c| c.providers(|_| Some("s".into())).map_err(|e| e.to_string()));
            assert!(refused.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn identities_and_tls_parse() {
        let cfg = parse(
            r#"
            audit_log = "/var/log/tokend/audit.log"
            [tls]
            cert_file = "server.pem"
            key_file = "server.key"
            client_ca_file = "clients-ca.pem"
            [[identities]]
            name = "billing"
            api_key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            grants = [{ permissions = ["tokens"], connections = ["tenant-a-"] }]
            "#,
        );
        assert_eq!(cfg.identities.len(), 1);
        assert_eq!(cfg.identities[0].requests_per_second, 200);
        assert!(cfg.tls.unwrap().client_ca_file.is_some());
    }

    #[test]
    fn secrets_in_the_file_itself_are_refused() {
        let err = FileConfig::parse(
            "[providers.x]\nclient_id = \"a\"\nclient_secret = \"inline\"\ntoken_url = \"https://x\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("client_secret"), "{err}");
        assert!(!err.to_string().contains("inline"), "{err}");
    }

    #[test]
    fn missing_secret_env_is_a_clear_error() {
        let cfg = parse(
            "[providers.x]\nclient_id = \"a\"\ntoken_url = \"https://x\"\nclient_secret_env = \"NOPE\"\n",
        );
        let err = cfg.providers(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider x: client_secret_env: environment variable NOPE is not set"
        );
        let err = cfg.providers(|_| Some(String::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider x: client_secret_env: environment variable NOPE is set but empty"
        );
    }

    /// Issue 11. Invariant: every parse error names the file, line, column
    /// and table, and an inline secret says what to do instead.
    #[test]
    fn parse_errors_say_where_and_how_to_fix() {
        let err = |text: &str| {
            FileConfig::parse(text, Path::new("/etc/tokend.toml"))
                .unwrap_err()
                .to_string()
        };
        let typo = err(
            "listen = \"127.0.0.1:1\"\n\n[providers.hubspot]\nclient_id = \"a\"\nclient_secret_evn = \"X\"\n",
        );
        assert!(
            typo.starts_with("invalid config file /etc/tokend.toml:5:1: in [providers.hubspot]: unknown field `client_secret_evn`"),
            "{typo}"
        );
        let wrong_type = err("[providers.x]\nclient_id = \"a\"\ndefault_lifetime_secs = \"300\"\n");
        assert!(
            wrong_type
                .contains(":3:25: in [providers.x]: invalid type: string \"300\", expected u64"),
            "{wrong_type}"
        );
        let unclosed = err("[providers.x\nclient_id = \"a\"\n");
        assert!(
            unclosed.starts_with("invalid config file /etc/tokend.toml:1:"),
            "{unclosed}"
        );
        let inline = err("[providers.x]\nclient_id = \"a\"\nclient_secret = \"hunter2\"\n");
        assert!(inline.contains(":3:1: in [providers.x]: client_secret is not allowed: secrets never go in the config file; use client_secret_env"), "{inline}");
        assert!(!inline.contains("hunter2"));
    }

    /// Issue 11. Invariant: check-config lists every problem, not the first.
    #[test]
    fn every_problem_is_listed() {
        let cfg = parse(
            r#"
            [limits]
            max_concurrent_streams = 0
            [providers.a]
            client_id = "a"
            token_url = "https://a"
            client_secret_env = "A_SECRET"
            [providers.b]
            client_id = "b"
            client_secret_env = "B_SECRET"
            [[identities]]
            name = "svc"
            grants = []
            "#,
        );
        let problems = cfg.problems("0.0.0.0:50051".parse().unwrap(), |_| None);
        let all = problems.join("\n");
        assert!(
            all.contains("provider a: client_secret_env: environment variable A_SECRET is not set"),
            "{all}"
        );
        assert!(all.contains("provider b: token_url is required"), "{all}");
        // Issue 26: the second problem of b's table too, not only the first.
        assert!(
            all.contains("provider b: client_secret_env: environment variable B_SECRET is not set"),
            "{all}"
        );
        assert!(
            all.contains("limits.max_concurrent_streams = 0 is out of range"),
            "{all}"
        );
        // Every problem of the identity too: no key and no grants.
        assert!(all.contains("identity svc: set api_key_sha256"), "{all}");
        assert!(all.contains("identity svc: has no grants"), "{all}");
        assert!(all.contains("without [tls]"), "{all}");
        assert_eq!(problems.len(), 7, "{all}");
        assert!(
            FileConfig::default()
                .problems("127.0.0.1:50051".parse().unwrap(), |_| None)
                .is_empty()
        );
    }

    /// Issue 11. Invariant: a secret file others can read is refused unless
    /// the operator says so.
    #[test]
    fn readable_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[providers.x]\nclient_id = \"a\"\ntoken_url = \"https://x\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        );
        let err = parse(&text).providers(|_| None).unwrap_err().to_string();
        assert!(
            err.contains("readable by group or others (mode 644)"),
            "{err}"
        );
        let allowed = parse(&format!("{text}allow_readable_secret_file = true\n"));
        assert_eq!(
            allowed.providers(|_| None).unwrap()[0]
                .client_secret
                .expose_secret(),
            "s3cret"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(parse(&text).providers(|_| None).is_ok());
    }

    #[test]
    fn refresh_concurrency_is_bounded() {
        assert_eq!(parse("").refresh_concurrency().unwrap(), None);
        assert_eq!(
            parse("refresh_concurrency = 64")
                .refresh_concurrency()
                .unwrap(),
            Some(64)
        );
        assert_eq!(
            parse("").cache_capacity().unwrap(),
            crate::engine::DEFAULT_CACHE_CAPACITY
        );
        assert_eq!(
            parse("cache_capacity = 2000000").cache_capacity().unwrap(),
            2_000_000
        );
        let e = parse("cache_capacity = 10").cache_capacity().unwrap_err();
        assert!(e.to_string().contains("cache_capacity"), "{e}");
        for bad in ["refresh_concurrency = 0", "refresh_concurrency = 5000"] {
            let e = parse(bad).refresh_concurrency().unwrap_err().to_string();
            assert!(e.contains("refresh_concurrency"), "{e}");
        }
    }
}

#[cfg(test)]
#[path = "config_hosts_tests.rs"]
mod hosts_tests;
