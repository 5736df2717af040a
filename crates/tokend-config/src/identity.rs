//! `[[identities]]` as written: who may call, with what grants, and the
//! checks of those entries.

use serde::Deserialize;

/// What a grant allows. Each RPC needs exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// GetToken, ForceRefresh, WatchConnection, GetConnection, ListConnections.
    Tokens,
    /// Install.
    Install,
    /// DeleteConnection, and everything else.
    Admin,
}

impl Permission {
    /// Whether a grant of `self` allows what `wanted` needs.
    pub fn allows(self, wanted: Permission) -> bool {
        self == Permission::Admin || self == wanted
    }
}

/// One grant: permissions over the connections `connections` names. Each
/// entry is `"*"` (every connection), `"tenant-a-*"` (ids starting with
/// `tenant-a-`), or an exact id. The older prefix form without `*` is read
/// as a prefix only when it ends with a delimiter (`-`, `_`, `.`, `:`, `/`),
/// with a warning at start; `"sandbox-a"` never matches `"sandbox-ab9"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub permissions: Vec<Permission>,
    pub connections: Vec<String>,
}

/// One `[[identities]]` entry of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    /// Hex SHA-256 of the API key; the key itself is never configured.
    pub api_key_sha256: Option<String>,
    /// Hex SHA-256 of the client certificate (DER), for mutual TLS.
    pub cert_sha256: Option<String>,
    pub grants: Vec<Grant>,
    /// Requests per second allowed, with bursts of the same size.
    #[serde(default = "default_rate")]
    pub requests_per_second: u32,
    /// Watch streams open at once.
    #[serde(default = "default_watch_streams")]
    pub max_watch_streams: usize,
}

fn default_rate() -> u32 {
    200
}

fn default_watch_streams() -> usize {
    32
}

/// Why an identity configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("identity {name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// Every problem of `identities`, each naming its identity (`check-config`
/// lists them all; `Authenticator::new` refuses the first): one of
/// `api_key_sha256`/`cert_sha256`, some grants, 64 hex digits, and no key
/// or certificate shared by two identities.
pub fn check_identities(identities: &[IdentityConfig]) -> Vec<AuthConfigError> {
    let mut problems = Vec::new();
    let mut keys = std::collections::HashSet::new();
    let mut certs = std::collections::HashSet::new();
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for config in identities {
        let mut fail = |reason: &str| {
            problems.push(AuthConfigError::Invalid {
                name: config.name.clone(),
                reason: reason.to_owned(),
            })
        };
        if config.api_key_sha256.is_none() && config.cert_sha256.is_none() {
            fail("set api_key_sha256 or cert_sha256");
        }
        if config.grants.is_empty() {
            fail("has no grants");
        }
        if let Some(h) = &config.api_key_sha256 {
            if !hex(h) {
                fail("api_key_sha256 must be 64 hex digits");
            } else if !keys.insert(h.to_ascii_lowercase()) {
                fail("api key shared with another identity");
            }
        }
        if let Some(h) = &config.cert_sha256 {
            if !hex(h) {
                fail("cert_sha256 must be 64 hex digits");
            } else if !certs.insert(h.to_ascii_lowercase()) {
                fail("certificate shared with another identity");
            }
        }
    }
    problems
}
