//! The TOML configuration file as written: every `[section]`, and the
//! values read straight off it (ranges checked, defaults filled in).
//! Client secrets come from an env var or a file, never from the file
//! itself.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokend_provider::{HttpSettings, Preset, ProviderConfig};

use crate::error::ConfigError;

/// Connections kept decrypted in memory by default: about 2.5 KiB each.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

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
    pub identities: Vec<crate::identity::IdentityConfig>,
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
    /// Event log retention; see [`crate::events`].
    #[serde(default)]
    pub events: crate::events::EventsSection,
    /// Endpoints that receive events (the server resolves them).
    #[serde(default)]
    pub webhooks: Vec<crate::webhook::WebhookSection>,
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
            .unwrap_or(DEFAULT_CACHE_CAPACITY))
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
            message: crate::error::locate(text, &e),
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
