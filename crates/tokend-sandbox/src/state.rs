//! The provider's in-memory state: accounts, codes, tokens, queued faults and counters.
//!
//! Everything here is plain synchronous logic so the HTTP layer and the Rust handle share one
//! source of truth and tests can reason about it without sockets.

use std::collections::{HashMap, VecDeque};

use crate::persist;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::secrets::{self, ACCESS_PREFIX, CODE_PREFIX, REFRESH_PREFIX};
use crate::{AccountStats, Dialect, Fault, IssuedTokens, Rotation, SandboxConfig, Stats};

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
    EchoSecrets(crate::Echo),
    LostAnswer {
        answer: crate::LostAnswer,
        hang: Duration,
    },
}

/// Which grant an `invalid_grant` rejection concerns (HubSpot words the two differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantKind {
    Refresh,
    Code,
}

/// A rejected grant. The description is static text: it never echoes what the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrantError {
    pub kind: GrantKind,
    pub description: &'static str,
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

    pub(crate) fn issue_code(
        &self,
        account_id: &str,
        scopes: &[&str],
        redirect_uri: Option<&str>,
        pkce_s256_challenge: Option<&str>,
    ) -> String {
        let code = secrets::credential(CODE_PREFIX);
        let scopes = scope_list(scopes);
        let now = Instant::now();
        let mut inner = self.lock();
        let (account, epoch) = inner.account(account_id);
        inner.codes.insert(
            code.clone(),
            CodeRecord {
                account,
                scopes,
                epoch,
                redirect_uri: redirect_uri.map(str::to_owned),
                pkce_s256_challenge: pkce_s256_challenge.map(str::to_owned),
                expires_at: now + CODE_LIFETIME,
            },
        );
        inner.sweep_codes(now);
        code
    }

    pub(crate) fn issue_tokens(&self, account_id: &str, scopes: &[&str]) -> IssuedTokens {
        let fresh = Fresh::generate();
        let scopes = scope_list(scopes);
        let now = Instant::now();
        let mut inner = self.lock();
        let (account, epoch) = inner.account(account_id);
        let granted = inner.mint(account, scopes, epoch, fresh, true, now);
        drop(inner);
        self.save();
        IssuedTokens {
            access_token: granted.access_token,
            // `mint` with `with_refresh = true` always yields one; the fallback is unreachable.
            refresh_token: granted.refresh_token.unwrap_or_default(),
            expires_in: granted.expires_in,
            scopes: granted.scopes.to_vec(),
            account_id: granted.account_id.to_string(),
        }
    }

    pub(crate) fn revoke_account(&self, account_id: &str) {
        // An account never seen has nothing to revoke; later tokens for it are a fresh install.
        if let Some(account) = self.lock().accounts.get_mut(account_id) {
            account.epoch += 1;
        }
        self.save();
        tracing::debug!(account = account_id, "sandbox: account revoked");
    }

    /// An operator's revocation (`POST /sandbox/revoke`): the account's
    /// grant ends, and `Stats::revocations` counts it.
    pub(crate) fn revoke_account_counted(&self, account_id: &str) {
        self.lock().stats.revocations += 1;
        self.revoke_account(account_id);
    }

    /// `grant_type=refresh_token`.
    pub(crate) fn refresh(&self, token: &str) -> Result<Granted, GrantError> {
        let granted = self.refresh_in_memory(token);
        if granted.is_ok() {
            self.save();
        }
        granted
    }

    fn refresh_in_memory(&self, token: &str) -> Result<Granted, GrantError> {
        let fresh = Fresh::generate();
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if !inner.refresh_tokens.contains_key(token)
            && let Some(record) = inner.restored.remove(&persist::token_hash(token))
        {
            inner.refresh_tokens.insert(token.to_owned(), record);
        }

        let Some(record) = inner.refresh_tokens.get_mut(token) else {
            inner.stats.invalid_grant += 1;
            return Err(UNKNOWN_REFRESH);
        };
        let Some(account) = inner.accounts.get_mut(&*record.account) else {
            // Every record's account is inserted before the record; treat a miss as unknown.
            inner.stats.invalid_grant += 1;
            return Err(UNKNOWN_REFRESH);
        };
        account.stats.refresh_requests += 1;
        if spent(record.used, now, inner.rotation) || record.epoch != account.epoch {
            account.stats.invalid_grant += 1;
            inner.stats.invalid_grant += 1;
            return Err(UNKNOWN_REFRESH);
        }
        let rotate = matches!(inner.rotation, Rotation::Strict | Rotation::Grace(_));
        if rotate && record.used.is_none() {
            record.used = Some(now);
        }
        account.stats.refresh_grants_ok += 1;
        inner.stats.refresh_grants_ok += 1;
        let (account_id, scopes, epoch) = (
            Arc::clone(&record.account),
            Arc::clone(&record.scopes),
            record.epoch,
        );
        Ok(inner.mint(account_id, scopes, epoch, fresh, rotate, now))
    }

    /// `grant_type=fb_exchange_token`: a live access token buys a new one for the same
    /// account and scopes (no refresh token); a dead or unknown one is refused.
    pub(crate) fn exchange_access_token(&self, token: &str) -> Result<Granted, GrantError> {
        let fresh = Fresh::generate();
        let now = Instant::now();
        let mut inner = self.lock();
        let live = inner
            .access_tokens
            .get(token)
            .filter(|r| r.is_live(now, &inner.accounts))
            .map(|r| (Arc::clone(&r.account), Arc::clone(&r.scopes), r.epoch));
        let Some((account, scopes, epoch)) = live else {
            inner.stats.invalid_grant += 1;
            return Err(UNKNOWN_REFRESH);
        };
        inner.stats.refresh_grants_ok += 1;
        Ok(inner.mint(account, scopes, epoch, fresh, false, now))
    }

    /// `grant_type=client_credentials` (RFC 6749 §4.4): an access token for the client itself
    /// (its account is the client id), with the scopes asked for and no refresh token.
    pub(crate) fn client_credentials(&self, scope: Option<&str>) -> Granted {
        let fresh = Fresh::generate();
        let scopes: Vec<&str> = scope
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let scopes = scope_list(&scopes);
        let now = Instant::now();
        let mut inner = self.lock();
        let (account, epoch) = inner.account(&self.client_id);
        inner.mint(account, scopes, epoch, fresh, false, now)
    }

    /// `grant_type=authorization_code`.
    pub(crate) fn redeem_code(
        &self,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
    ) -> Result<Granted, GrantError> {
        let granted = self.redeem_code_in_memory(code, redirect_uri, code_verifier);
        if granted.is_ok() {
            self.save();
        }
        granted
    }

    fn redeem_code_in_memory(
        &self,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
    ) -> Result<Granted, GrantError> {
        let fresh = Fresh::generate();
        let now = Instant::now();
        let mut inner = self.lock();

        // Presenting a code consumes it whatever the outcome, so a leaked code cannot be retried
        // with guessed verifiers or redirect URIs.
        let Some(record) = inner.codes.remove(code) else {
            inner.stats.invalid_grant += 1;
            return Err(UNKNOWN_CODE);
        };
        let rejection = if now >= record.expires_at
            || !epoch_matches(&inner.accounts, &record.account, record.epoch)
        {
            Some(UNKNOWN_CODE)
        } else if record
            .redirect_uri
            .as_deref()
            .is_some_and(|expected| redirect_uri != Some(expected))
        {
            // Only enforced when the authorization request named one (RFC 6749 §4.1.3).
            Some(REDIRECT_MISMATCH)
        } else if let Some(challenge) = &record.pkce_s256_challenge {
            // Only S256 is supported; a verifier sent for a code without a challenge is ignored.
            match code_verifier {
                None => Some(VERIFIER_MISSING),
                Some(verifier)
                    if !secrets::constant_time_eq(
                        secrets::pkce_s256(verifier).as_bytes(),
                        challenge.as_bytes(),
                    ) =>
                {
                    Some(VERIFIER_MISMATCH)
                }
                Some(_) => None,
            }
        } else {
            None
        };
        if let Some(err) = rejection {
            inner.stats.invalid_grant += 1;
            return Err(err);
        }
        inner.stats.code_grants_ok += 1;
        Ok(inner.mint(
            record.account,
            record.scopes,
            record.epoch,
            fresh,
            true,
            now,
        ))
    }

    /// Looks up a bearer token for `/api/me`, counting the call.
    pub(crate) fn authorize_api_call(&self, token: &str) -> Option<(Arc<str>, Arc<[String]>)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let found = inner
            .access_tokens
            .get(token)
            .filter(|r| r.is_live(now, &inner.accounts))
            .map(|r| (Arc::clone(&r.account), Arc::clone(&r.scopes)));
        if found.is_some() {
            inner.stats.api_calls_ok += 1;
        } else {
            inner.stats.api_calls_rejected += 1;
        }
        found
    }

    pub(crate) fn record_api_rejection(&self) {
        self.lock().stats.api_calls_rejected += 1;
    }

    /// RFC 7009: revoking a refresh token ends its whole grant (every token
    /// of the account, as an uninstall does); revoking an access token ends
    /// that token. Unknown tokens are ignored, as the RFC asks.
    pub(crate) fn revoke_token(&self, token: &str) {
        let account = {
            let mut inner = self.lock();
            inner.stats.revocations += 1;
            if inner.access_tokens.remove(token).is_some() {
                None
            } else {
                inner
                    .refresh_tokens
                    .get(token)
                    .map(|r| r.account.to_string())
            }
        };
        if let Some(account) = account {
            self.revoke_account(&account);
        }
    }

    pub(crate) fn access_token_is_live(&self, token: &str) -> bool {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .access_tokens
            .get(token)
            .is_some_and(|r| r.is_live(now, &inner.accounts))
    }
}

impl Inner {
    /// The shared key and current epoch of an account, creating it on first sight.
    fn account(&mut self, account_id: &str) -> (Arc<str>, u64) {
        if let Some((key, account)) = self.accounts.get_key_value(account_id) {
            return (Arc::clone(key), account.epoch);
        }
        let key: Arc<str> = Arc::from(account_id);
        self.accounts.insert(Arc::clone(&key), Account::default());
        (key, 0)
    }

    fn next_fault(&mut self) -> Option<FaultAction> {
        let front = self.faults.front_mut()?;
        let action = match front {
            Fault::Status { status, .. } => FaultAction::Status(*status),
            Fault::RateLimited {
                retry_after_secs, ..
            } => FaultAction::RateLimited {
                retry_after_secs: *retry_after_secs,
            },
            Fault::Latency { delay, .. } => FaultAction::Latency(*delay),
            Fault::MalformedBody { .. } => FaultAction::MalformedBody,
            Fault::InvalidClient { .. } => FaultAction::InvalidClient,
            Fault::ConsentRequired { .. } => FaultAction::ConsentRequired,
            Fault::InteractionRequired { .. } => FaultAction::InteractionRequired,
            Fault::EchoSecrets { encoding, .. } => FaultAction::EchoSecrets(*encoding),
            Fault::LostAnswer { answer, hang, .. } => FaultAction::LostAnswer {
                answer: *answer,
                hang: *hang,
            },
        };
        // `inject` refuses zero counts, so the front fault always has at least one use left.
        let remaining = front.count_mut();
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            self.faults.pop_front();
        }
        Some(action)
    }

    /// Records a new access token (and refresh token when `with_refresh`) for the account.
    fn mint(
        &mut self,
        account: Arc<str>,
        scopes: Arc<[String]>,
        epoch: u64,
        fresh: Fresh,
        with_refresh: bool,
        now: Instant,
    ) -> Granted {
        let lifetime = self.access_token_lifetime;
        self.access_tokens.insert(
            fresh.access.clone(),
            AccessRecord {
                account: Arc::clone(&account),
                scopes: Arc::clone(&scopes),
                epoch,
                expires_at: now.checked_add(lifetime),
            },
        );
        let refresh_token = with_refresh.then(|| {
            self.refresh_tokens.insert(
                fresh.refresh.clone(),
                RefreshRecord {
                    account: Arc::clone(&account),
                    scopes: Arc::clone(&scopes),
                    epoch,
                    used: None,
                },
            );
            fresh.refresh
        });
        self.sweep_access_tokens(now);
        Granted {
            access_token: fresh.access,
            refresh_token,
            expires_in: lifetime.as_secs(),
            scopes,
            account_id: account,
        }
    }

    fn sweep_access_tokens(&mut self, now: Instant) {
        if self.access_tokens.len() < self.access_sweep_at {
            return;
        }
        let accounts = &self.accounts;
        self.access_tokens.retain(|_, r| r.is_live(now, accounts));
        self.access_sweep_at = (self.access_tokens.len() * 2).max(SWEEP_MIN);
    }

    fn sweep_codes(&mut self, now: Instant) {
        if self.codes.len() < self.code_sweep_at {
            return;
        }
        self.codes.retain(|_, c| now < c.expires_at);
        self.code_sweep_at = (self.codes.len() * 2).max(SWEEP_MIN);
    }
}

/// Whether a refresh token first rotated out at `used` is dead at `now`:
/// at once under strict rotation, after the grace under grace rotation.
fn spent(used: Option<Instant>, now: Instant, rotation: Rotation) -> bool {
    match (used, rotation) {
        (None, _) => false,
        (Some(used), Rotation::Grace(secs)) => {
            now.saturating_duration_since(used) >= Duration::from_secs(secs)
        }
        (Some(_), _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        Provider::new(&SandboxConfig::default())
    }

    /// Issue 11. Invariant: a refresh token issued before a restart is
    /// honoured after it, exactly once under strict rotation; a revocation
    /// survives too; and no token is written in the clear.
    #[test]
    fn grants_survive_a_restart_without_plaintext_tokens() {
        let dir = std::env::temp_dir().join(format!("sbx-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = SandboxConfig {
            state_file: Some(dir.join("state.json")),
            ..SandboxConfig::default()
        };
        let before = Provider::load(&config, "http").unwrap();
        let kept = before.issue_tokens("acct-kept", &["crm"]);
        let revoked = before.issue_tokens("acct-gone", &[]);
        before.revoke_account("acct-gone");
        drop(before);

        let text = std::fs::read_to_string(dir.join("state.json")).unwrap();
        assert!(!text.contains(&kept.refresh_token), "{text}");
        let after = Provider::load(&config, "http").unwrap();
        let granted = after.refresh(&kept.refresh_token).expect("still valid");
        assert_eq!(&*granted.account_id, "acct-kept");
        assert!(after.refresh(&kept.refresh_token).is_err(), "rotated out");
        assert!(
            after.refresh(&revoked.refresh_token).is_err(),
            "still revoked"
        );
        // The rotated-in token survives the next restart.
        let next = granted.refresh_token.unwrap();
        drop(after);
        let again = Provider::load(&config, "http").unwrap();
        again.refresh(&next).expect("the new token survived too");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn faults_are_consumed_in_order_and_counted_down() {
        let p = provider();
        p.inject(Fault::Status {
            status: 503,
            count: 2,
        });
        p.inject(Fault::MalformedBody { count: 0 });
        p.inject(Fault::InvalidClient { count: 1 });
        assert_eq!(p.begin_token_request(None), Some(FaultAction::Status(503)));
        assert_eq!(p.begin_token_request(None), Some(FaultAction::Status(503)));
        assert_eq!(
            p.begin_token_request(None),
            Some(FaultAction::InvalidClient)
        );
        assert_eq!(p.begin_token_request(None), None);
        let stats = p.stats();
        assert_eq!((stats.token_requests, stats.faults_served), (4, 3));
    }

    #[test]
    fn a_lost_answer_fault_is_taken_like_the_others_and_counted_apart() {
        let p = provider();
        p.inject(Fault::LostAnswer {
            answer: crate::LostAnswer::Reset,
            hang: Duration::from_millis(7),
            count: 2,
        });
        let lost = Some(FaultAction::LostAnswer {
            answer: crate::LostAnswer::Reset,
            hang: Duration::from_millis(7),
        });
        assert_eq!(p.begin_token_request(None), lost);
        assert_eq!(p.begin_token_request(None), lost);
        assert_eq!(p.begin_token_request(None), None);
        p.record_lost_answer(true);
        p.record_lost_answer(false);
        let stats = p.stats();
        assert_eq!(
            (
                stats.faults_served,
                stats.lost_answers,
                stats.lost_answers_granted
            ),
            (2, 2, 1)
        );
    }

    #[test]
    fn strict_rotation_kills_the_presented_token() {
        let p = provider();
        let issued = p.issue_tokens("acct", &["a"]);
        let granted = p.refresh(&issued.refresh_token).expect("first refresh");
        let next = granted
            .refresh_token
            .expect("strict rotation returns a new token");
        assert_eq!(
            p.refresh(&issued.refresh_token).err(),
            Some(UNKNOWN_REFRESH)
        );
        assert!(p.refresh(&next).is_ok());
        let stats = p.account_stats("acct");
        assert_eq!(
            (
                stats.refresh_requests,
                stats.refresh_grants_ok,
                stats.invalid_grant
            ),
            (3, 2, 1)
        );
    }

    #[test]
    fn grace_rotation_keeps_a_rotated_out_token_for_a_while() {
        let p = provider();
        p.set_rotation(Rotation::Grace(1));
        let issued = p.issue_tokens("acct", &["a"]);
        let granted = p.refresh(&issued.refresh_token).expect("first refresh");
        assert!(granted.refresh_token.is_some(), "grace rotation rotates");
        // Reused inside the grace: a fresh pair, and the grace does not restart.
        assert!(p.refresh(&issued.refresh_token).is_ok());
        let t0 = Instant::now();
        let grace = Rotation::Grace(30);
        assert!(!spent(None, t0, grace));
        assert!(!spent(Some(t0), t0 + Duration::from_secs(29), grace));
        assert!(
            spent(Some(t0), t0 + Duration::from_secs(30), grace),
            "dead once the grace has passed"
        );
        assert!(spent(Some(t0), t0, Rotation::Strict));
        p.revoke_account("acct");
        assert_eq!(
            p.refresh(&granted.refresh_token.unwrap()).err(),
            Some(UNKNOWN_REFRESH),
            "revocation ignores the grace"
        );
    }

    #[test]
    fn revocation_is_per_epoch_and_reinstall_works() {
        let p = provider();
        let old = p.issue_tokens("acct", &[]);
        p.revoke_account("acct");
        assert!(!p.access_token_is_live(&old.access_token));
        assert!(p.refresh(&old.refresh_token).is_err());
        let new = p.issue_tokens("acct", &[]);
        assert!(p.access_token_is_live(&new.access_token));
        assert!(p.refresh(&new.refresh_token).is_ok());
    }

    #[test]
    fn huge_lifetime_does_not_overflow() {
        let p = provider();
        p.set_access_token_lifetime(Duration::MAX);
        let issued = p.issue_tokens("acct", &[]);
        assert!(p.access_token_is_live(&issued.access_token));
        assert_eq!(issued.expires_in, u64::MAX);
    }

    #[test]
    fn sweeping_drops_only_dead_access_tokens() {
        let p = provider();
        p.set_access_token_lifetime(Duration::ZERO);
        for _ in 0..SWEEP_MIN {
            p.issue_tokens("short", &[]);
        }
        p.set_access_token_lifetime(Duration::from_secs(60));
        let live = p.issue_tokens("long", &[]);
        let inner = p.lock();
        assert!(inner.access_tokens.len() < SWEEP_MIN);
        assert!(inner.access_tokens.contains_key(&live.access_token));
    }
}
