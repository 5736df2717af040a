//! One refresh of one connection: the durable intent (the lease), a re-read
//! under it, the provider call, write-ahead of whatever refresh token the
//! answer carried, then commit, or classify the failure.

use std::{sync::Arc, time::Duration};

use tokend_core::{
    Connection, ConnectionId, ErrorClass, LastError, ReconnectCause, Status,
    steps::{self, Step},
};
use tokend_provider::{ProviderConfig, TokenGrant};
use tokend_store::{Lease, StoreError};

use super::{
    Engine, Failure,
    backoff::Admission,
    slot::{Grant, Slot, lock},
};

/// How a leased refresh ended, for the lease's release.
pub(super) struct Outcome {
    pub(super) result: Result<Arc<Connection>, Failure>,
    /// Whether the provider may have rotated the grant without tokend
    /// learning the new refresh token.
    pub(super) in_doubt: bool,
}

impl Outcome {
    pub(super) fn settled(result: Result<Arc<Connection>, Failure>) -> Self {
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
    pub(super) async fn timed_refresh_call(
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
