//! Durable before visible: a grant is handed out only after the write
//! holding it has been flushed, and a grant the store refuses is kept,
//! retried soon, and never dropped while the grant it replaced is stored.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use tokend_core::{Connection, ConnectionId, LastError};
use tokend_store::StoreError;

use super::{
    Engine, Failure,
    slot::{Grant, PendingGrant, Slot, lock},
};
use crate::hub::EventKind;

/// Store errors in a row after which a commit stops retrying inline and
/// leaves the grant pending.
const INLINE_STORE_ATTEMPTS: u32 = 3;
/// Compare-and-swap losses in a row before giving up (`Contended`).
const MAX_CONFLICTS: usize = 8;

/// The record after applying `grant` to `base`.
fn apply(
    base: &Connection,
    grant: &Grant,
    error: Option<&LastError>,
    now: tokend_core::Timestamp,
) -> Connection {
    match grant {
        Grant::Tokens(tokens, metadata) => {
            let mut next = base.with_refreshed_tokens(tokens.clone(), now);
            next.metadata
                .extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            next
        }
        Grant::RefreshTokenOnly(token) => {
            // The access token is unchanged, so the version is too; the
            // refresh token moves on and the replaced one is kept.
            let mut next = base.next_revision(now);
            next.previous_refresh_token = base.tokens.refresh_token.clone();
            next.tokens.refresh_token = Some(token.clone());
            next.last_refresh_at = Some(now);
            next.last_error = error.cloned();
            next
        }
    }
}

/// Whether `stored` is the very record `ours` (a write reported as failed
/// that landed all the same, like a sled write whose flush failed).
fn is_own_write(stored: &Connection, ours: &Connection) -> bool {
    stored.incarnation == ours.incarnation
        && stored.revision == ours.revision
        && stored
            .tokens
            .access_token_is(ours.tokens.access_token.expose_secret())
        && stored.tokens.same_refresh_token(&ours.tokens)
}

impl Engine {
    /// Persists a grant (durably), then caches and announces it. If the
    /// store keeps refusing, the grant is kept as the slot's pending grant,
    /// retried soon, and not handed out.
    pub(super) async fn commit(
        &self,
        slot: &Arc<Slot>,
        base: Connection,
        grant: Grant,
        correlation_id: Option<String>,
        fence: Option<u64>,
    ) -> Result<Arc<Connection>, Failure> {
        self.persist(slot, base, grant, None, correlation_id, fence)
            .await
    }

    /// Write-ahead: persists the refresh token of a 2xx answer that failed
    /// validation, with `error` recorded, before anything can discard it.
    pub(super) async fn write_ahead(
        &self,
        slot: &Arc<Slot>,
        base: Connection,
        refresh_token: secrecy::SecretString,
        error: LastError,
        fence: u64,
    ) -> Result<Arc<Connection>, Failure> {
        self.persist(
            slot,
            base,
            Grant::RefreshTokenOnly(refresh_token),
            Some(error),
            None,
            Some(fence),
        )
        .await
    }

    async fn persist(
        &self,
        slot: &Arc<Slot>,
        mut base: Connection,
        grant: Grant,
        error: Option<LastError>,
        correlation_id: Option<String>,
        mut fence: Option<u64>,
    ) -> Result<Arc<Connection>, Failure> {
        let id = base.id.clone();
        let replaced = base.tokens.refresh_token.clone();
        let now = self.clock.now();
        let mut store_failures = 0;
        // Set once a write reported as failed turns out to have landed: it
        // is rewritten as is (which flushes it) rather than applied again.
        let mut landed: Option<Connection> = None;
        let mut last_failure = None;
        for _ in 0..MAX_CONFLICTS {
            let (next, expected) = match &landed {
                Some(l) => (l.next_revision(now), l.revision),
                None => (apply(&base, &grant, error.as_ref(), now), base.revision),
            };
            match self.store.put(&next, Some(expected), fence).await {
                Ok(()) => return Ok(self.persisted(slot, &base, next, &grant, correlation_id)),
                Err(e @ (StoreError::Conflict { .. } | StoreError::Fenced { .. })) => {
                    let latest = match self.load_latest(&id).await {
                        Ok(l) => l,
                        Err(f) => {
                            last_failure = Some(f);
                            break;
                        }
                    };
                    if is_own_write(&latest, &next) {
                        landed = Some(latest);
                        continue;
                    }
                    if latest.supersedes(&base) {
                        // Another grant replaced the one we refreshed (a
                        // re-install, another replica): it stands.
                        tracing::warn!(connection_id = %id, "refresh result superseded by a concurrent write");
                        lock(&slot.pending).take();
                        return Ok(slot.advance(Arc::new(latest)));
                    }
                    if matches!(e, StoreError::Fenced { .. }) && fence.is_some() {
                        // Our lease ran out and a newer holder took over,
                        // but the store still holds the refresh token this
                        // grant was made from: no newer grant exists,
                        // whatever verdict that holder wrote (ROTATION_LOST
                        // after presenting the same, now spent, token). Ours
                        // is the only live grant: it is written back, by
                        // compare-and-swap on the revision alone. A holder
                        // still refreshing then finds it superseded.
                        tracing::warn!(connection_id = %id, "refresh answered after its lease ran out; writing the grant back over the newer holder's record");
                        fence = None;
                    }
                    // Only metadata changed: apply our grant on top of it.
                    landed = None;
                    base = latest;
                }
                Err(e) => {
                    store_failures += 1;
                    tracing::error!(connection_id = %id, error = %e, attempt = store_failures, "persisting a grant failed; not handing it out");
                    last_failure = Some(Failure::store(e));
                    if store_failures >= INLINE_STORE_ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50 << store_failures)).await;
                    // The write may have landed: re-read before retrying.
                    if let Ok(latest) = self.load_latest(&id).await
                        && is_own_write(&latest, &next)
                    {
                        landed = Some(latest);
                    }
                }
            }
        }
        // Never dropped: kept for the next attempt, which persists it before
        // any provider call.
        let mut pending = lock(&slot.pending);
        let attempts = pending.as_ref().map_or(0, |p| p.attempts) + 1;
        *pending = Some(PendingGrant {
            replaced,
            grant,
            attempts,
        });
        drop(pending);
        Err(last_failure.unwrap_or(Failure::Contended(id)))
    }

    /// After a durable write: cache, schedule, announce.
    fn persisted(
        &self,
        slot: &Arc<Slot>,
        base: &Connection,
        next: Connection,
        grant: &Grant,
        correlation_id: Option<String>,
    ) -> Arc<Connection> {
        lock(&slot.pending).take();
        let now = self.clock.now();
        let next = slot.advance(Arc::new(next));
        match grant {
            Grant::Tokens(..) => {
                *lock(&slot.retry) = Default::default();
                self.schedule(&next);
                tracing::info!(
                    connection_id = %next.id,
                    version = next.version,
                    ttl_secs = next.tokens.ttl(now).as_secs(),
                    rotated = !next.tokens.same_refresh_token(&base.tokens),
                    correlation_id = correlation_id.as_deref().unwrap_or(""),
                    "token refreshed"
                );
                self.publish(EventKind::TokenRotated, &next);
            }
            Grant::RefreshTokenOnly(_) => {
                tracing::warn!(
                    connection_id = %next.id,
                    "persisted the refresh token of a provider answer that failed validation"
                );
            }
        }
        next
    }

    /// Turns a storage failure of a refresh (its lease, a read, a write)
    /// into the caller's answer, and arranges the retry on the store's own
    /// short delay (`RetryState::store_delay`, at most `pending_retry_max`),
    /// pending grant or not: never the provider's backoff, never its
    /// breaker. A pending grant's keeper (`keeper.rs`) waits the same.
    pub(super) fn store_trouble(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        failure: Failure,
    ) -> Failure {
        let with_delay = |delay: Duration| match &failure {
            Failure::Store { error, .. } => Failure::Store {
                error: error.clone(),
                retry_after: delay,
            },
            other => other.clone(),
        };
        let delay = self.back_off_by(slot, id, with_delay, |retry, _| {
            retry.store_delay(&self.settings)
        });
        with_delay(delay)
    }

    /// Writes the slot's pending grant under `fence`. `Ok` once nothing is
    /// pending: written, or dropped because the store holds another grant
    /// now (its refresh token is not the one the grant replaced) or the
    /// connection is gone.
    pub(super) async fn write_pending(
        &self,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        fence: u64,
    ) -> Result<(), Failure> {
        let record = match self.load_latest(id).await {
            Ok(record) => record,
            Err(Failure::NotFound(_)) => {
                if lock(&slot.pending).take().is_some() {
                    tracing::warn!(connection_id = %id, "connection deleted while a grant the store refused was pending; dropping it");
                }
                return Ok(());
            }
            Err(failure) => return Err(failure),
        };
        let Some(pending) = lock(&slot.pending).clone() else {
            return Ok(());
        };
        if !pending.applies_to(&record) {
            tracing::warn!(connection_id = %id, "a grant the store refused was replaced by another writer's; dropping it");
            lock(&slot.pending).take();
            let current = slot.advance(Arc::new(record));
            self.schedule(&current);
            return Ok(());
        }
        tracing::info!(connection_id = %id, attempts = pending.attempts, "persisting a grant the store refused earlier");
        self.commit(slot, record, pending.grant, None, Some(fence))
            .await
            .map(drop)
    }

    /// At shutdown: persists every pending grant, retrying until
    /// `deadline`; logs at ERROR, with the connection id, each one that
    /// could not be written.
    ///
    /// The deadline bounds the whole, not only the pauses between rounds:
    /// a store that never answers (a hung flush) must not keep the process
    /// from exiting past its grace, the more so as a restart is what such
    /// a store may need.
    pub(super) async fn persist_pending_before_exit(&self, deadline: tokio::time::Instant) {
        if tokio::time::timeout_at(deadline, self.retry_pending_until(deadline))
            .await
            .is_err()
        {
            tracing::error!(
                "the store did not accept every pending grant within the shutdown grace"
            );
        }
        for (id, _) in self.slots.with_pending() {
            tracing::error!(
                connection_id = %id,
                "shutting down with a grant the store would not accept: it is lost with this process"
            );
        }
    }

    /// Retries every pending grant until none is left or `deadline`.
    async fn retry_pending_until(&self, deadline: tokio::time::Instant) {
        loop {
            let pending = self.slots.with_pending();
            if pending.is_empty() {
                return;
            }
            for (id, slot) in &pending {
                let Ok(record) = self.load_latest(id).await else {
                    continue;
                };
                let grant = lock(&slot.pending).clone();
                // A pending grant stands even over RECONNECT_REQUIRED: it
                // was issued for the stored refresh token, so it is live.
                if let Some(grant) = grant
                    && grant.applies_to(&record)
                {
                    let _ = self.commit(slot, record, grant.grant, None, None).await;
                } else {
                    lock(&slot.pending).take();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(self.settings.pending_retry_min).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }
}
