//! The provider's in-memory state: accounts, codes, tokens, queued faults and counters.
//!
//! Everything here is plain synchronous logic so the HTTP layer and the Rust handle share one
//! source of truth and tests can reason about it without sockets.

use std::collections::{HashMap, VecDeque};

use crate::persist;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::echo::Echo;
use crate::error::{GrantError, GrantKind};
use crate::secrets::{self, ACCESS_PREFIX, REFRESH_PREFIX};
use crate::{AccountStats, Dialect, Fault, Rotation, SandboxConfig, Stats};

/// Authorization codes are short-lived, as RFC 6749 §4.1.2 recommends (at most 10 minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// Expired access tokens and codes are purged when their map reaches this size, then whenever it
/// doubles from the size left after the last purge: amortised O(1) per insert, bounded memory in
/// long benchmarks with short lifetimes.
const SWEEP_MIN: usize = 4096;

/// A queued fault as the HTTP layer acts on it, stripped of its remaining count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultAction {
    Status(u16),
    RateLimited {
        retry_after_secs: u64,
    },
    Latency(Duration),
    MalformedBody,
    InvalidClient,
    ConsentRequired,
    InteractionRequired,
    EchoSecrets(Echo),
    LostAnswer {
        answer: crate::LostAnswer,
        hang: Duration,
    },
}

const UNKNOWN_REFRESH: GrantError = GrantError {
    kind: GrantKind::Refresh,
    description: "refresh token is invalid, revoked or already used",
};
const UNKNOWN_CODE: GrantError = GrantError {
    kind: GrantKind::Code,
    description: "authorization code is invalid, expired or already used",
};
const REDIRECT_MISMATCH: GrantError = GrantError {
    kind: GrantKind::Code,
    description: "redirect_uri does not match the authorization request",
};
const VERIFIER_MISSING: GrantError = GrantError {
    kind: GrantKind::Code,
    description: "code_verifier is required for this authorization code",
};
const VERIFIER_MISMATCH: GrantError = GrantError {
    kind: GrantKind::Code,
    description: "code_verifier does not match the code challenge",
};

/// A successful grant, ready to be rendered as a token response.
#[derive(Debug)]
pub(crate) struct Granted {
    pub access_token: String,
    /// `None` on a refresh under [`Rotation::Reuse`]: the response omits the field.
    pub refresh_token: Option<String>,
    pub expires_in: u64,
    pub scopes: Arc<[String]>,
    pub account_id: Arc<str>,
}

/// The provider as the HTTP handlers share it.
pub(crate) type Shared = Arc<Provider>;

/// One provider instance. Client credentials and dialect never change after start, so they live
/// outside the mutex; everything mutable lives in [`Inner`].
pub(crate) struct Provider {
    client_id: String,
    client_secret: String,
    dialect: Dialect,
    public_client: bool,
    credentials_in_both: bool,
    /// The `private_key_jwt` key, and its verifier.
    assertion_key: Option<crate::AssertionKey>,
    assertion: Option<crate::client_auth::AssertionVerifier>,
    tls_client_cert: Option<[u8; 32]>,
    /// `http` or `https`: the scheme of this provider's own URLs.
    scheme: &'static str,
    /// Clients registered dynamically (RFC 7591): id → secret (none: a
    /// public client).
    registered: Mutex<HashMap<String, Option<String>>>,
    last_request: Mutex<Option<crate::SeenRequest>>,
    /// Where grants are kept across restarts, if anywhere.
    state_file: Option<std::path::PathBuf>,
    /// Serialises saves, so an older snapshot never lands after a newer.
    saving: Mutex<()>,
    // A std Mutex rather than tokio's: every critical section is a few hash-map operations and
    // the guard is never held across an `.await`, so an async lock would only add overhead.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Account {
    /// Bumped by a revocation. Codes and tokens remember the epoch they were minted in and are
    /// dead once it differs, which makes revocation O(1) however many tokens the account has.
    epoch: u64,
    stats: AccountStats,
}

struct CodeRecord {
    account: Arc<str>,
    scopes: Arc<[String]>,
    epoch: u64,
    redirect_uri: Option<String>,
    pkce_s256_challenge: Option<String>,
    expires_at: Instant,
}

/// Refresh tokens are kept after they die (used or revoked) so a later presentation can still be
/// attributed to its account in [`AccountStats`]. They are small, so this is fine for a sandbox.
struct RefreshRecord {
    account: Arc<str>,
    scopes: Arc<[String]>,
    epoch: u64,
    /// When it was first rotated out, if it was.
    used: Option<Instant>,
}

struct AccessRecord {
    account: Arc<str>,
    scopes: Arc<[String]>,
    epoch: u64,
    /// `None` when the configured lifetime is too large to represent as an `Instant`.
    expires_at: Option<Instant>,
}

impl AccessRecord {
    fn is_live(&self, now: Instant, accounts: &HashMap<Arc<str>, Account>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
            && epoch_matches(accounts, &self.account, self.epoch)
    }
}

fn epoch_matches(accounts: &HashMap<Arc<str>, Account>, account: &str, epoch: u64) -> bool {
    accounts.get(account).is_some_and(|a| a.epoch == epoch)
}

/// How many recent `traceparent` headers the provider remembers.
const TRACE_PARENTS_KEPT: usize = 64;

struct Inner {
    rotation: Rotation,
    access_token_lifetime: Duration,
    accounts: HashMap<Arc<str>, Account>,
    codes: HashMap<String, CodeRecord>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    /// Refresh tokens from the state file, by hash, until presented.
    restored: HashMap<String, RefreshRecord>,
    access_tokens: HashMap<String, AccessRecord>,
    faults: VecDeque<Fault>,
    stats: Stats,
    /// The W3C `traceparent` of recent token requests that carried one.
    trace_parents: VecDeque<String>,
    access_sweep_at: usize,
    code_sweep_at: usize,
}

/// Credentials generated before taking the lock, so the critical section stays short.
struct Fresh {
    access: String,
    refresh: String,
}

impl Fresh {
    fn generate() -> Self {
        Self {
            access: secrets::credential(ACCESS_PREFIX),
            refresh: secrets::credential(REFRESH_PREFIX),
        }
    }
}

fn scope_list(scopes: &[&str]) -> Arc<[String]> {
    scopes.iter().map(|s| (*s).to_owned()).collect()
}

impl Provider {
    /// A provider with the grants of `config.state_file`, if it exists.
    pub(crate) fn load(config: &SandboxConfig, scheme: &'static str) -> std::io::Result<Self> {
        let mut provider = Self::new(config);
        provider.scheme = scheme;
        if let Some(key) = &config.client_assertion_key {
            provider.assertion = Some(crate::client_auth::AssertionVerifier::new(key)?);
            provider.assertion_key = Some(key.clone());
        }
        let Some(path) = &config.state_file else {
            return Ok(provider);
        };
        if let Some(snapshot) = persist::load(path)? {
            let mut inner = provider.lock();
            for (account, epoch) in snapshot.accounts {
                inner.accounts.insert(
                    Arc::from(account),
                    Account {
                        epoch,
                        stats: AccountStats::default(),
                    },
                );
            }
            for saved in snapshot.refresh_tokens {
                let (account, _) = inner.account(&saved.account);
                inner.restored.insert(
                    saved.sha256,
                    RefreshRecord {
                        account,
                        scopes: saved.scopes.into(),
                        epoch: saved.epoch,
                        used: None,
                    },
                );
            }
            tracing::info!(
                path = %path.display(),
                refresh_tokens = inner.restored.len(),
                "sandbox: grants restored"
            );
        }
        Ok(provider)
    }

    pub(crate) fn new(config: &SandboxConfig) -> Self {
        Self {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            dialect: config.dialect,
            public_client: config.public_client,
            credentials_in_both: config.credentials_in_both,
            assertion_key: None,
            assertion: None,
            tls_client_cert: config.tls_client_cert_sha256,
            scheme: "http",
            registered: Mutex::new(HashMap::new()),
            last_request: Mutex::new(None),
            state_file: config.state_file.clone(),
            saving: Mutex::new(()),
            inner: Mutex::new(Inner {
                rotation: config.rotation,
                access_token_lifetime: config.access_token_lifetime,
                accounts: HashMap::new(),
                codes: HashMap::new(),
                refresh_tokens: HashMap::new(),
                restored: HashMap::new(),
                access_tokens: HashMap::new(),
                faults: VecDeque::new(),
                trace_parents: VecDeque::new(),
                stats: Stats::default(),
                access_sweep_at: SWEEP_MIN,
                code_sweep_at: SWEEP_MIN,
            }),
        }
    }

    /// Nothing panics while the lock is held, but should that ever change, a poisoned lock still
    /// guards consistent-enough counters and maps for a test provider: keep serving.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the grants a restart must keep, before the answer that
    /// created them is sent. A failed write is logged: the sandbox keeps
    /// serving from memory.
    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = {
            let inner = self.lock();
            let saved = |sha256: String, r: &RefreshRecord| persist::SavedRefresh {
                sha256,
                account: r.account.to_string(),
                scopes: r.scopes.to_vec(),
                epoch: r.epoch,
            };
            let live = |r: &RefreshRecord| {
                r.used.is_none() && epoch_matches(&inner.accounts, &r.account, r.epoch)
            };
            persist::Snapshot {
                version: 0,
                accounts: inner
                    .accounts
                    .iter()
                    .map(|(id, a)| (id.to_string(), a.epoch))
                    .collect(),
                refresh_tokens: inner
                    .refresh_tokens
                    .iter()
                    .filter(|(_, r)| live(r))
                    .map(|(t, r)| saved(persist::token_hash(t), r))
                    .chain(
                        inner
                            .restored
                            .iter()
                            .filter(|(_, r)| live(r))
                            .map(|(h, r)| saved(h.clone(), r)),
                    )
                    .collect(),
            }
        };
        if let Err(e) = persist::save(path, snapshot) {
            tracing::error!(path = %path.display(), error = %e, "sandbox: cannot save grants");
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn config(&self) -> SandboxConfig {
        let inner = self.lock();
        SandboxConfig {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            access_token_lifetime: inner.access_token_lifetime,
            rotation: inner.rotation,
            dialect: self.dialect,
            state_file: self.state_file.clone(),
            public_client: self.public_client,
            credentials_in_both: self.credentials_in_both,
            client_assertion_key: self.assertion_key.clone(),
            tls_client_cert_sha256: self.tls_client_cert,
        }
    }

    /// The verifier of `private_key_jwt` assertions, if a key is registered.
    pub(crate) fn assertion_verifier(&self) -> Option<&crate::client_auth::AssertionVerifier> {
        self.assertion.as_ref()
    }

    /// Whether a connection's client certificate is the registered one.
    pub(crate) fn tls_client_matches(&self, peer: Option<[u8; 32]>) -> bool {
        match (self.tls_client_cert, peer) {
            (Some(registered), Some(presented)) => {
                secrets::constant_time_eq(&registered, &presented)
            }
            _ => false,
        }
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub(crate) fn wants_credentials_in_both(&self) -> bool {
        self.credentials_in_both
    }

    pub(crate) fn record_request(&self, seen: crate::SeenRequest) {
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(seen);
    }

    pub(crate) fn last_request(&self) -> Option<crate::SeenRequest> {
        self.last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A public client's request: its id in the body, no secret anywhere.
    pub(crate) fn is_public_client(&self, client_id: &str) -> bool {
        let registered_public = matches!(
            self.registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(client_id),
            Some(None)
        );
        registered_public
            || (self.public_client
                && secrets::constant_time_eq(client_id.as_bytes(), self.client_id.as_bytes()))
    }

    /// Registers a new client (RFC 7591), with a secret or public.
    pub(crate) fn register_client(&self, confidential: bool) -> (String, Option<String>) {
        let id = format!("dyn-{}", secrets::uuid_like());
        let secret = confidential.then(|| secrets::credential("dsec"));
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), secret.clone());
        (id, secret)
    }

    pub(crate) fn set_rotation(&self, rotation: Rotation) {
        self.lock().rotation = rotation;
    }

    pub(crate) fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.lock().access_token_lifetime = lifetime;
    }

    /// Checks client credentials. Both comparisons always run so timing reveals nothing.
    pub(crate) fn authenticate(&self, client_id: &[u8], client_secret: &[u8]) -> bool {
        let id_ok = secrets::constant_time_eq(client_id, self.client_id.as_bytes());
        let secret_ok = secrets::constant_time_eq(client_secret, self.client_secret.as_bytes());
        if let Ok(id) = std::str::from_utf8(client_id)
            && let Some(Some(registered)) = self
                .registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(id)
        {
            return secrets::constant_time_eq(client_secret, registered.as_bytes());
        }
        id_ok & secret_ok
    }

    /// Counts a token request and takes the fault it must suffer, if any.
    pub(crate) fn begin_token_request(&self, trace_parent: Option<&str>) -> Option<FaultAction> {
        let mut inner = self.lock();
        inner.stats.token_requests += 1;
        if let Some(tp) = trace_parent {
            if inner.trace_parents.len() == TRACE_PARENTS_KEPT {
                inner.trace_parents.pop_front();
            }
            inner.trace_parents.push_back(tp.to_owned());
        }
        let action = inner.next_fault();
        if action.is_some() {
            inner.stats.faults_served += 1;
        }
        action
    }

    /// Counts a handled request whose answer a lost-answer fault replaces;
    /// `granted` when the request had earned a token.
    pub(crate) fn record_lost_answer(&self, granted: bool) {
        let mut inner = self.lock();
        inner.stats.lost_answers += 1;
        if granted {
            inner.stats.lost_answers_granted += 1;
        }
    }

    pub(crate) fn inject(&self, fault: Fault) {
        if fault.count() > 0 {
            self.lock().faults.push_back(fault);
        }
    }

    pub(crate) fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub(crate) fn trace_parents(&self) -> Vec<String> {
        self.lock().trace_parents.iter().cloned().collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub(crate) fn account_stats(&self, account_id: &str) -> AccountStats {
        self.lock()
            .accounts
            .get(account_id)
            .map(|a| a.stats.clone())
            .unwrap_or_default()
    }
}

mod grants;

#[cfg(test)]
mod tests;
