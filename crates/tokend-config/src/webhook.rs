//! `[[webhooks]]` as written: one endpoint's table and its filter. The
//! server resolves them into its `WebhookConfig`.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[[webhooks]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// 1 to 64 of `A-Z a-z 0-9 - _`; keys the endpoint's delivery cursor.
    pub name: String,
    pub url: String,
    /// The env var holding the `whsec_…` signing secret.
    pub secret_env: Option<String>,
    /// Or a file holding it (mode 0600).
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_readable_secret_file: bool,
    #[serde(default)]
    pub filter: FilterSection,
    /// Per request [default: 10].
    pub timeout_secs: Option<u64>,
    /// Failing this long marks the endpoint FAILING [default: 3600].
    pub failing_after_secs: Option<u64>,
    /// First retry delay [default: 1000].
    pub retry_initial_ms: Option<u64>,
    /// Longest retry delay [default: 600].
    pub retry_max_secs: Option<u64>,
}

/// `filter = { ... }` of a webhook: as `WatchConnections`' filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub connection_id_prefixes: Vec<String>,
    /// `reconnect_required`, `recovered`, ...
    #[serde(default)]
    pub event_types: Vec<String>,
    /// `active`, `reconnect_required`.
    #[serde(default)]
    pub statuses: Vec<String>,
}
