//! Grants on the provider's state: codes, tokens, refreshes, revocation,
//! API calls, and the minting and sweeping behind them.

use crate::persist;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::secrets::{self, CODE_PREFIX};
use crate::{Fault, IssuedTokens, Rotation};

use super::*;

impl Provider {
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

    pub(super) fn refresh_in_memory(&self, token: &str) -> Result<Granted, GrantError> {
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

    pub(super) fn redeem_code_in_memory(
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
    pub(super) fn account(&mut self, account_id: &str) -> (Arc<str>, u64) {
        if let Some((key, account)) = self.accounts.get_key_value(account_id) {
            return (Arc::clone(key), account.epoch);
        }
        let key: Arc<str> = Arc::from(account_id);
        self.accounts.insert(Arc::clone(&key), Account::default());
        (key, 0)
    }

    pub(super) fn next_fault(&mut self) -> Option<FaultAction> {
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
    pub(super) fn mint(
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

    pub(super) fn sweep_access_tokens(&mut self, now: Instant) {
        if self.access_tokens.len() < self.access_sweep_at {
            return;
        }
        let accounts = &self.accounts;
        self.access_tokens.retain(|_, r| r.is_live(now, accounts));
        self.access_sweep_at = (self.access_tokens.len() * 2).max(SWEEP_MIN);
    }

    pub(super) fn sweep_codes(&mut self, now: Instant) {
        if self.codes.len() < self.code_sweep_at {
            return;
        }
        self.codes.retain(|_, c| now < c.expires_at);
        self.code_sweep_at = (self.codes.len() * 2).max(SWEEP_MIN);
    }
}

/// Whether a refresh token first rotated out at `used` is dead at `now`:
/// at once under strict rotation, after the grace under grace rotation.
pub(super) fn spent(used: Option<Instant>, now: Instant, rotation: Rotation) -> bool {
    match (used, rotation) {
        (None, _) => false,
        (Some(used), Rotation::Grace(secs)) => {
            now.saturating_duration_since(used) >= Duration::from_secs(secs)
        }
        (Some(_), _) => true,
    }
}
