//! A refresh that failed, classified: a refused refresh token is checked
//! against the store, retried once with the previous one inside the
//! provider's rotation grace, else the connection needs reconnecting
//! (`ROTATION_LOST` when the refresh was in doubt, `REVOKED` otherwise); a
//! transient or rate-limited failure backs off (`back_off_by`, the one
//! mechanism for every kind of delay).

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tokend_core::{
    Connection, ConnectionId, ErrorClass, LastError, ReconnectCause, Status, Timestamp,
};
use tokend_provider::{ProviderConfig, ProviderError};
use tokend_store::{Lease, StoreError};

use super::{
    Engine, Failure,
    backoff::provider_wide,
    refresh::Outcome,
    slot::{Grant, Slot, lock},
};

impl Engine {
    /// Handles a provider failure according to its class.
    pub(super) async fn failed(
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
    pub(super) fn previous_within_grace(
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
    pub(super) async fn provider_failure(
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
    pub(super) fn back_off_in_doubt(
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
