//! One refresh of one connection: the durable intent (the lease), a re-read
//! under it, the provider call, write-ahead of whatever refresh token the
//! answer carried, then commit, or classify the failure.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tokend_core::{
    Connection, ConnectionId, ErrorClass, LastError, ReconnectCause, Status, Timestamp,
    steps::{self, Step},
};
use tokend_provider::{ProviderConfig, ProviderError, TokenGrant};
use tokend_store::{Lease, StoreError};

use super::{
    Engine, Failure,
    backoff::{Admission, provider_wide},
    slot::{Grant, Slot, lock},
};

/// How a leased refresh ended, for the lease's release.
struct Outcome {
    result: Result<Arc<Connection>, Failure>,
    /// Whether the provider may have rotated the grant without tokend
    /// learning the new refresh token.
    in_doubt: bool,
}

impl Outcome {
    fn settled(result: Result<Arc<Connection>, Failure>) -> Self {
        Self {
            result,
            in_doubt: false,
        }
    }
}

/// What `acquire_lease` found.
enum LeaseOutcome {
    Granted(Lease),
    /// Another holder wrote a newer version while we waited.
    Superseded(Box<Connection>),
}

impl Engine {
    /// Joins or starts the refresh of `base`, unless the connection is
    /// backing off after a failure, in which case that failure is returned
    /// without calling the provider.
    pub(super) async fn refresh_once(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        base: &Arc<Connection>,
    ) -> Result<Arc<Connection>, Failure> {
        // A pending grant's keeper holds the lease: its write comes first,
        // and no refresh runs beside it (`keeper.rs`).
        if slot.keeping() {
            return Err(self.kept(slot));
        }
        {
            let retry = lock(&slot.retry);
            let now = self.clock.now();
            if let (Some(not_before), Some(failure)) = (retry.not_before, &retry.last_failure)
                && not_before > now
            {
                let mut failure = failure.clone();
                let left = not_before.duration_since(now);
                match &mut failure {
                    Failure::Provider { retry_after, .. } => *retry_after = Some(left),
                    Failure::Store { retry_after, .. } => *retry_after = left,
                    _ => {}
                }
                return Err(failure);
            }
        }
        let base_version = base.version;
        let engine = Arc::clone(self);
        let task_slot = Arc::clone(slot);
        let id = base.id.clone();
        slot.flight
            .join_or_start(&self.tasks, || {
                // Checked under the flight lock: a flight that finished
                // between the caller's read and now has cached its result.
                let current = task_slot.current();
                if current.version > base_version {
                    return Err(Ok(current));
                }
                // The flight is its own task: its span is a child of the
                // caller's (the RPC that started it), so a trace shows the
                // refresh under the call that waited for it.
                let span = tracing::info_span!(
                    parent: tracing::Span::current(),
                    "refresh",
                    connection_id = %id,
                    provider = %current.provider,
                    attempt = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                    error_class = tracing::field::Empty,
                );
                Ok(tracing::Instrument::instrument(
                    async move { engine.refresh(&task_slot, &id, base_version).await },
                    span,
                ))
            })
            .await
            .unwrap_or_else(|ended| Err(ended.into()))
    }

    /// One refresh attempt, run as the flight's task.
    pub(super) async fn refresh(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<Arc<Connection>, Failure> {
        let _in_flight = crate::metrics::InFlight::start(&self.metrics);
        let started = std::time::Instant::now();
        // While the provider fails for everyone, wait without a provider
        // call or a write (a pending grant needs no provider: it goes on).
        let provider = slot.current().provider.clone();
        if !slot.has_pending()
            && !slot.in_doubt()
            && let Some((error, retry_after)) = self
                .breakers
                .get(&provider)
                .and_then(|b| b.rejecting(self.clock.now(), &self.settings))
        {
            self.scheduler
                .schedule(id, self.clock.now().saturating_add(retry_after));
            self.metrics.refresh_ended(
                provider.as_str(),
                "breaker_open",
                error.class.as_str(),
                started.elapsed(),
            );
            return Err(Failure::Provider {
                provider,
                error,
                retry_after: Some(retry_after),
            });
        }
        let result = self.refresh_counted(slot, id, base_version).await;
        let (outcome, class) = match &result {
            Ok(_) => ("success", ""),
            Err(Failure::Provider { error, .. }) => ("failure", error.class.as_str()),
            Err(Failure::Revoked(c)) => (
                "reconnect_required",
                match c.reconnect_cause {
                    Some(tokend_core::ReconnectCause::RotationLost) => "rotation_lost",
                    Some(tokend_core::ReconnectCause::NoRefreshToken) => "no_refresh_token",
                    Some(tokend_core::ReconnectCause::ConsentRequired) => "consent_required",
                    Some(tokend_core::ReconnectCause::InteractionRequired) => {
                        "interaction_required"
                    }
                    _ => "revoked",
                },
            ),
            Err(Failure::Store { .. }) => ("failure", "store"),
            Err(Failure::Contended(_)) => ("failure", "contended"),
            Err(Failure::NotFound(_)) => ("failure", "not_found"),
            Err(Failure::UnknownProvider(_)) => ("failure", "unknown_provider"),
            Err(Failure::Panicked) => ("failure", "panicked"),
            Err(Failure::ShuttingDown) => ("failure", "shutting_down"),
        };
        self.metrics
            .refresh_ended(provider.as_str(), outcome, class, started.elapsed());
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        if !class.is_empty() {
            span.record("error_class", class);
        }
        result
    }

    /// A token-endpoint refresh call, counted and timed.
    async fn timed_refresh_call(
        &self,
        provider: &tokend_provider::ProviderConfig,
        refresh_token: Option<&secrecy::SecretString>,
    ) -> Result<tokend_provider::TokenGrant, tokend_provider::ProviderError> {
        let started = std::time::Instant::now();
        let call = async {
            match refresh_token {
                Some(rt) => self.endpoint.refresh(provider, rt).await,
                None => self.endpoint.client_credentials(provider).await,
            }
        };
        let answer = tracing::Instrument::instrument(
            call,
            tracing::info_span!("provider_call", provider = %provider.name),
        )
        .await;
        let status = match &answer {
            Ok(_) => Some(200),
            Err(e) => e.http_status,
        };
        self.metrics
            .provider_call(provider.name.as_str(), status, started.elapsed());
        answer
    }

    async fn refresh_counted(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<Arc<Connection>, Failure> {
        if slot.keeping() {
            return Err(self.kept(slot));
        }
        if let Err(failure) = self.give_back_left_over(slot).await {
            return Err(self.store_trouble(slot, id, failure));
        }
        let lease = match self.acquire_lease(slot, id, base_version).await {
            Ok(LeaseOutcome::Granted(lease)) => lease,
            Ok(LeaseOutcome::Superseded(newer)) => return Ok(slot.advance(Arc::new(*newer))),
            Err(Failure::ShuttingDown) => return Err(Failure::ShuttingDown),
            Err(failure) => return Err(self.store_trouble(slot, id, failure)),
        };
        // Renewed while it runs: both provider calls and every store retry
        // stay under this one lease (`lease.rs`).
        let outcome = self
            .renewing(&lease, self.refresh_leased(slot, id, base_version, &lease))
            .await;
        // Doubt from an earlier run is settled only by a definite answer.
        let in_doubt = outcome.in_doubt
            || (lease.in_doubt
                && matches!(
                    outcome.result,
                    Err(Failure::Provider { .. } | Failure::Store { .. } | Failure::Contended(_))
                ));
        if let Err(failure @ (Failure::Store { .. } | Failure::Contended(_))) = &outcome.result
            && slot.has_pending()
        {
            // The store refused the grant: the lease stays with it, renewed,
            // while its write is retried (`keeper.rs`).
            let failure = self.store_trouble(slot, id, failure.clone());
            let first_retry = match &failure {
                Failure::Store { retry_after, .. } => *retry_after,
                _ => self.settings.pending_retry_min,
            };
            self.keep_pending(slot, lease, first_retry);
            return Err(failure);
        }
        self.give_back(slot, lease, in_doubt).await;
        match outcome.result {
            Err(failure @ (Failure::Store { .. } | Failure::Contended(_))) => {
                Err(self.store_trouble(slot, id, failure))
            }
            other => other,
        }
    }

    /// Takes the refresh lease (the durable intent), or waits for its
    /// holder's result.
    async fn acquire_lease(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<LeaseOutcome, Failure> {
        // Set while another process holds the lease: callers with a valid
        // token and background permits stop waiting for this refresh.
        let mut waiting = None;
        loop {
            let now = self.clock.now();
            if let Some(lease) = self
                .store
                .try_acquire_refresh_lease(id, &self.holder, self.settings.lease_ttl, now)
                .await
                .map_err(Failure::store)?
            {
                return Ok(LeaseOutcome::Granted(lease));
            }
            // Another replica is refreshing: wait for its write, or for its
            // lease to run out if it died; not past shutdown.
            if waiting.is_none() {
                waiting = Some(slot.lease_wait.begin());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.cancel.cancelled() => return Err(Failure::ShuttingDown),
            }
            let latest = self.load_latest(id).await?;
            if latest.version > base_version {
                return Ok(LeaseOutcome::Superseded(Box::new(latest)));
            }
        }
    }

    pub(super) async fn load_latest(&self, id: &ConnectionId) -> Result<Connection, Failure> {
        match self.store.get(id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(Failure::NotFound(id.clone())),
            Err(e) => Err(Failure::store(e)),
        }
    }

    /// The part of a refresh done while holding the lease.
    async fn refresh_leased(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
        lease: &Lease,
    ) -> Outcome {
        // Read under the lease: another writer (or the previous lease
        // holder) may have refreshed, rotated or revoked it since the caller
        // looked.
        let record = match self.load_latest(id).await {
            Ok(r) => r,
            Err(f) => return Outcome::settled(Err(f)),
        };
        // A grant the store refused earlier is the newest one: persist it
        // before anything else, and never spend the token it replaced.
        let pending = lock(&slot.pending).clone();
        if let Some(pending) = pending {
            if pending.applies_to(&record) {
                tracing::info!(connection_id = %id, "persisting a grant the store refused earlier");
                let result = self
                    .commit(slot, record, pending.grant, None, Some(lease.fence))
                    .await;
                return Outcome::settled(result);
            }
            tracing::warn!(connection_id = %id, "a grant the store refused was replaced by another writer's; dropping it");
            lock(&slot.pending).take();
        }
        if record.version > base_version {
            // Nothing was asked of the provider: any doubt stays.
            return Outcome {
                result: Ok(slot.advance(Arc::new(record))),
                in_doubt: lease.in_doubt,
            };
        }
        if record.status == Status::ReconnectRequired {
            return Outcome::settled(Err(Failure::Revoked(slot.advance(Arc::new(record)))));
        }
        let provider = match self.provider_of(&record) {
            Ok(p) => p,
            Err(f) => return Outcome::settled(Err(f)),
        };
        // Per-connection endpoints: the templates filled from the record.
        let provider = match provider.for_connection(&record.params) {
            Ok(std::borrow::Cow::Borrowed(_)) => provider,
            Ok(std::borrow::Cow::Owned(p)) => Arc::new(p),
            Err(reason) => {
                return Outcome::settled(Err(Failure::Provider {
                    provider: provider.name.clone(),
                    error: LastError {
                        class: ErrorClass::ClientMisconfigured,
                        code: "connection_params".into(),
                        message: reason,
                        correlation_id: None,
                        http_status: None,
                        at: self.clock.now(),
                    },
                    retry_after: Some(self.settings.misconfigured_retry),
                }));
            }
        };
        // The client_credentials grant has no refresh token: the client's
        // own credentials get the next token.
        let client_credentials = provider.grant == tokend_provider::GrantType::ClientCredentials;
        // What is presented: the refresh token, or for providers that renew
        // long-lived tokens by exchanging them, the access token itself.
        let refresh_token = if provider.request.refresh_with_access_token {
            Some(record.tokens.access_token.clone())
        } else {
            record.tokens.refresh_token.clone()
        };
        if refresh_token.is_none() && !client_credentials {
            let error = LastError {
                class: ErrorClass::Revoked,
                code: "no_refresh_token".into(),
                message: "expired, no refresh token: tokend cannot renew it; install the connection again".into(),
                correlation_id: None,
                http_status: None,
                at: self.clock.now(),
            };
            let result = self
                .mark_reconnect_required(
                    slot,
                    record,
                    error,
                    ReconnectCause::NoRefreshToken,
                    Some(lease.fence),
                )
                .await;
            return Outcome::settled(result);
        }
        let refresh_token = refresh_token.filter(|_| !client_credentials);
        let breaker = &self.breakers[&provider.name];
        // A refresh in doubt is retried inside the provider's rotation grace
        // even while the breaker is open: the grant may depend on it.
        let in_doubt = lease.in_doubt || slot.in_doubt();
        let probe = match breaker.admit(self.clock.now(), &self.settings) {
            Admission::Call => false,
            Admission::Probe => true,
            Admission::Reject { .. } if in_doubt => false,
            Admission::Reject { error, retry_after } => {
                // The provider fails for everyone: no call, no write.
                self.scheduler
                    .schedule(id, self.clock.now().saturating_add(retry_after));
                return Outcome {
                    result: Err(Failure::Provider {
                        provider: provider.name.clone(),
                        error,
                        retry_after: Some(retry_after),
                    }),
                    in_doubt: false,
                };
            }
        };
        let probe_guard = ProbeGuard {
            engine: self,
            provider: &provider,
            armed: probe,
        };
        let attempt = lock(&slot.retry).attempts + 1;
        tracing::Span::current().record("attempt", attempt);
        tracing::debug!(connection_id = %id, provider = %provider.name, attempt, probe, "refreshing");
        let answer = self
            .timed_refresh_call(&provider, refresh_token.as_ref())
            .await;
        probe_guard.disarm();
        match answer {
            Ok(grant) => {
                let answered = std::time::Instant::now();
                if breaker.close() {
                    tracing::info!(provider = %provider.name, "provider answering again; breaker closed");
                }
                self.metrics.breaker(provider.name.as_str(), false);
                let TokenGrant {
                    tokens,
                    correlation_id,
                    metadata,
                    ..
                } = grant;
                let result = self
                    .commit(
                        slot,
                        record,
                        Grant::Tokens(tokens, metadata),
                        correlation_id,
                        Some(lease.fence),
                    )
                    .await;
                if result.is_ok() {
                    steps::record(Step::Commit, answered.elapsed());
                }
                Outcome::settled(result)
            }
            Err(error) => {
                self.failed(slot, record, &provider, error, attempt, lease)
                    .await
            }
        }
    }

    /// Handles a provider failure according to its class.
    async fn failed(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        record: Connection,
        provider: &ProviderConfig,
        error: ProviderError,
        attempt: u32,
        lease: &Lease,
    ) -> Outcome {
        let now = self.clock.now();
        tracing::warn!(
            connection_id = %record.id,
            provider = %provider.name,
            error_class = error.class.as_str(),
            code = %error.code,
            http_status = error.http_status.unwrap_or(0),
            correlation_id = error.correlation_id.as_deref().unwrap_or(""),
            attempt,
            ttl_secs = record.tokens.ttl(now).as_secs(),
            answered_2xx = error.salvage.is_some(),
            "refresh failed"
        );
        let breaker = &self.breakers[&provider.name];
        if provider_wide(error.class) {
            let delay = breaker.trip(
                &error.to_last_error(now),
                error.retry_after,
                now,
                &self.settings,
            );
            tracing::error!(
                provider = %provider.name,
                error_class = error.class.as_str(),
                code = %error.code,
                retry_in_secs = delay.as_secs(),
                "provider failing for every connection; breaker open"
            );
            self.metrics.breaker(provider.name.as_str(), true);
        } else {
            breaker.close();
            self.metrics.breaker(provider.name.as_str(), false);
        }
        // Write-ahead: a 2xx answer that failed validation may have rotated
        // the grant. Its refresh token, if readable, is persisted before
        // anything can discard it; if unreadable, the refresh stays in doubt.
        if let Some(salvage) = &error.salvage {
            let Some(new_token) = salvage.refresh_token.clone() else {
                let result = self
                    .provider_failure(slot, Some(record), provider, &error, lease.fence, true)
                    .await;
                return Outcome {
                    result,
                    in_doubt: true,
                };
            };
            let result = match self
                .write_ahead(
                    slot,
                    record,
                    new_token,
                    error.to_last_error(now),
                    lease.fence,
                )
                .await
            {
                // The error is on the written record already.
                Ok(_) => {
                    self.provider_failure(slot, None, provider, &error, lease.fence, false)
                        .await
                }
                Err(f) => Err(f),
            };
            return Outcome::settled(result);
        }
        if error.class != ErrorClass::Revoked {
            // A provider-wide failure is recorded once, by the breaker, not
            // on every connection.
            let record = (!provider_wide(error.class)).then_some(record);
            // No answer, or one that does not refuse: the provider may have
            // rotated the grant, so retry promptly with the same token.
            let in_doubt = error.in_doubt();
            let result = self
                .provider_failure(slot, record, provider, &error, lease.fence, in_doubt)
                .await;
            return Outcome { result, in_doubt };
        }
        // Refused. Another writer may have rotated the token since we read
        // it: only a refusal of the token still stored means the grant died.
        let latest = match self.load_latest(&record.id).await {
            Ok(l) => l,
            Err(f) => return Outcome::settled(Err(f)),
        };
        if latest.supersedes(&record) {
            let latest = slot.advance(Arc::new(latest));
            let result = match latest.status {
                Status::Active => Ok(latest),
                Status::ReconnectRequired => Err(Failure::Revoked(latest)),
            };
            return Outcome::settled(result);
        }
        // Before giving up: the previous refresh token, when the provider
        // keeps rotated-out tokens alive for a while and it is that recent.
        if let Some(previous) = self.previous_within_grace(&latest, provider, now) {
            match self.timed_refresh_call(provider, Some(&previous)).await {
                Ok(grant) => {
                    tracing::warn!(connection_id = %latest.id, "refresh token refused; recovered with the previous one");
                    self.stats
                        .recovered_with_previous
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let result = self
                        .commit(
                            slot,
                            latest,
                            Grant::Tokens(grant.tokens, grant.metadata),
                            grant.correlation_id,
                            Some(lease.fence),
                        )
                        .await;
                    return Outcome::settled(result);
                }
                Err(e) => {
                    tracing::warn!(connection_id = %latest.id, code = %e.code, "the previous refresh token was refused too")
                }
            }
        }
        let cause = if lease.in_doubt || slot.in_doubt() {
            ReconnectCause::RotationLost
        } else {
            // A grant that needs the user back, not a dead one, says so.
            match error.code.as_str() {
                "consent_required" => ReconnectCause::ConsentRequired,
                "interaction_required" => ReconnectCause::InteractionRequired,
                _ => ReconnectCause::Revoked,
            }
        };
        let result = self
            .mark_reconnect_required(
                slot,
                latest,
                error.to_last_error(now),
                cause,
                Some(lease.fence),
            )
            .await;
        Outcome::settled(result)
    }

    /// The previous refresh token, if the provider's rotation grace may
    /// still accept it.
    fn previous_within_grace(
        &self,
        record: &Connection,
        provider: &ProviderConfig,
        now: Timestamp,
    ) -> Option<SecretString> {
        if provider.rotation_grace.is_zero() {
            return None;
        }
        let previous = record.previous_refresh_token.clone()?;
        let rotated_at = record.last_refresh_at.unwrap_or(record.updated_at);
        (rotated_at.saturating_add(provider.rotation_grace) > now).then_some(previous)
    }

    /// A provider failure that leaves the connection ACTIVE: back off, and
    /// record it on `record` for operators (one write) when given.
    async fn provider_failure(
        &self,
        slot: &Arc<Slot>,
        record: Option<Connection>,
        provider: &ProviderConfig,
        error: &ProviderError,
        fence: u64,
        in_doubt: bool,
    ) -> Result<Arc<Connection>, Failure> {
        let now = self.clock.now();
        let last = error.to_last_error(now);
        let id = &slot.current().id;
        let failure = |delay| Failure::Provider {
            provider: provider.name.clone(),
            error: last.clone(),
            retry_after: Some(delay),
        };
        let delay = if in_doubt {
            self.back_off_in_doubt(slot, id, provider, error, failure)
        } else {
            self.back_off(slot, id, error.class, error.retry_after, failure)
        };
        if let Some(record) = record {
            // Losing this race to another writer is harmless: theirs is newer.
            let mut next = record.next_revision(now);
            next.last_error = Some(last.clone());
            match self
                .store
                .put(&next, Some(record.revision), Some(fence))
                .await
            {
                Ok(()) => {
                    let next = slot.advance(Arc::new(next));
                    self.publish(crate::hub::EventKind::RefreshFailed, &next);
                }
                Err(e) => {
                    tracing::debug!(connection_id = %record.id, error = %e, "recording last error skipped")
                }
            }
        }
        Err(Failure::Provider {
            provider: provider.name.clone(),
            error: last,
            retry_after: Some(delay),
        })
    }

    /// Puts a connection into backoff after a failed attempt: no provider
    /// call before the delay passes (callers get `failure(delay)` meanwhile)
    /// and a background retry scheduled then. Returns the delay.
    pub(super) fn back_off(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        class: ErrorClass,
        retry_after: Option<Duration>,
        failure: impl FnOnce(Duration) -> Failure,
    ) -> Duration {
        self.back_off_by(slot, id, failure, |retry, _| {
            retry.next_delay(class, retry_after, &self.settings)
        })
    }

    /// Like [`Engine::back_off`], for a refresh left in doubt: the retry
    /// comes within a second, then inside the provider's rotation grace,
    /// whatever the access token's remaining life (`background_refresh`
    /// refreshes a connection in doubt even when its token is fresh).
    fn back_off_in_doubt(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        provider: &ProviderConfig,
        error: &ProviderError,
        failure: impl FnOnce(Duration) -> Failure,
    ) -> Duration {
        let delay = self.back_off_by(slot, id, failure, |retry, now| {
            retry.in_doubt_delay(
                now,
                provider.rotation_grace,
                error.class,
                error.retry_after,
                &self.settings,
            )
        });
        tracing::warn!(
            connection_id = %id,
            retry_in_ms = delay.as_millis() as u64,
            "refresh in doubt: the provider may have rotated the grant; retrying with the same refresh token"
        );
        self.stats
            .in_doubt_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        delay
    }

    /// The one backoff mechanism: `delay` picks the wait from the retry
    /// state (the provider's backoff, the in-doubt retry, or the store's
    /// delay); no provider call before it passes (callers get `failure`
    /// meanwhile) and a background retry is scheduled then.
    pub(super) fn back_off_by(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        failure: impl FnOnce(Duration) -> Failure,
        delay: impl FnOnce(&mut super::backoff::RetryState, Timestamp) -> Duration,
    ) -> Duration {
        let now = self.clock.now();
        let (delay, not_before) = {
            let mut retry = lock(&slot.retry);
            let delay = delay(&mut retry, now);
            let not_before = now.saturating_add(delay);
            retry.not_before = Some(not_before);
            retry.last_failure = Some(failure(delay));
            (delay, not_before)
        };
        self.scheduler.schedule(id, not_before);
        delay
    }

    /// Marks a connection RECONNECT_REQUIRED (once), stops refreshing it and
    /// tells watchers.
    pub(super) async fn mark_reconnect_required(
        &self,
        slot: &Arc<Slot>,
        mut record: Connection,
        error: LastError,
        cause: ReconnectCause,
        fence: Option<u64>,
    ) -> Result<Arc<Connection>, Failure> {
        for _ in 0..5 {
            if record.status == Status::ReconnectRequired {
                return Err(Failure::Revoked(slot.advance(Arc::new(record))));
            }
            let mut next = record.next_revision(self.clock.now());
            next.status = Status::ReconnectRequired;
            next.reconnect_cause = Some(cause);
            next.last_error = Some(error.clone());
            match self.store.put(&next, Some(record.revision), fence).await {
                Ok(()) => {
                    let written = next.revision;
                    let next = slot.advance(Arc::new(next));
                    if next.revision != written || next.status != Status::ReconnectRequired {
                        // A re-install landed right after our write: it
                        // stands, and there is nothing to announce.
                        return Ok(next);
                    }
                    self.scheduler.unschedule(&next.id);
                    *lock(&slot.retry) = Default::default();
                    self.announce_reconnect_required(&next);
                    return Err(Failure::Revoked(next));
                }
                Err(StoreError::Conflict { .. }) => {
                    let latest = self.load_latest(&record.id).await?;
                    if latest.supersedes(&record) {
                        // Re-installed meanwhile: the new grant stands.
                        return Ok(slot.advance(Arc::new(latest)));
                    }
                    record = latest;
                }
                Err(e) => return Err(Failure::store(e)),
            }
        }
        Err(Failure::Contended(record.id))
    }
}

/// Lets the next caller probe the provider if this probe's task ends
/// without an answer (panic, shutdown).
struct ProbeGuard<'a> {
    engine: &'a Engine,
    provider: &'a ProviderConfig,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.breakers[&self.provider.name].probe_abandoned(self.engine.clock.now());
        }
    }
}

impl Failure {
    pub(super) fn store(error: StoreError) -> Failure {
        Failure::Store {
            error,
            retry_after: Duration::from_secs(1),
        }
    }
}
