//! Start-up and the background refresher: every ACTIVE connection is
//! renewed before it expires, from a due-time timetable, a few at a time.

use std::{sync::Arc, time::Duration};

use tokend_core::{Connection, ConnectionId, Status};
use tokend_store::StoreError;

use super::{Engine, Failure};

/// The shortest time between two scheduled background refreshes of one
/// connection: a provider granting absurdly short tokens must not cause a
/// refresh loop.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Connections overdue at start-up are spread over this window.
const START_SPREAD_MILLIS: u64 = 2000;

/// Refreshes found in doubt at start-up are retried within this window:
/// a provider's rotation grace (often 30 s or more) must not run out first.
const IN_DOUBT_SPREAD_MILLIS: u64 = 500;

impl Engine {
    /// Starts the engine: releases refresh leases an earlier run of this
    /// node left behind (a crash mid-refresh) and schedules those
    /// connections at once, schedules every connection from the store's
    /// summaries, and starts the background refresher (when enabled) and,
    /// on a shared store, the sweep of leases dead replicas left.
    /// Returns how many connections the store holds.
    pub async fn start(self: &Arc<Self>) -> Result<usize, StoreError> {
        // A store only this process writes (sled locks its directory) has
        // no live lease but this run's: every unreleased one is an earlier
        // run's, whatever node name it ran under. On a shared store only
        // this node's; the sweep takes over other holders' once they run
        // out.
        let abandoned = if self.store.shared() {
            format!("{}/", self.settings.node)
        } else {
            String::new()
        };
        let in_doubt = self.store.release_abandoned_leases(&abandoned).await?;
        if !in_doubt.is_empty() {
            tracing::warn!(
                connections = in_doubt.len(),
                "refreshes interrupted by the previous run's end; retrying them now"
            );
            self.stats
                .in_doubt_at_start
                .fetch_add(in_doubt.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let loaded = self.load_all().await?;
        for id in in_doubt {
            self.recover_soon(id);
        }
        if self.settings.background_refresh {
            let engine = Arc::clone(self);
            self.tasks.spawn(engine.run_refresher(self.cancel.clone()));
        }
        if self.store.shared() {
            let engine = Arc::clone(self);
            self.tasks
                .spawn(engine.sweep_expired_leases(self.cancel.clone()));
        }
        Ok(loaded)
    }

    /// Refreshes `id`, whose last refresh was cut off, within
    /// `IN_DOUBT_SPREAD_MILLIS`.
    pub(super) fn recover_soon(self: &Arc<Self>, id: ConnectionId) {
        let spread = Duration::from_millis(spread_millis(&id) % IN_DOUBT_SPREAD_MILLIS);
        let engine = Arc::clone(self);
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(spread) => engine.recover_in_doubt(&id).await,
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Refreshes a connection whose last refresh was cut off, whatever its
    /// token's validity: with a provider that keeps a rotated-out token
    /// alive for a grace period, this must happen before the grace ends.
    async fn recover_in_doubt(self: &Arc<Self>, id: &ConnectionId) {
        let Ok(slot) = self.slot(id).await else {
            return;
        };
        let current = slot.current();
        if current.status != Status::Active {
            return;
        }
        match self.refresh_once(&slot, &current).await {
            Ok(fresh) => {
                tracing::info!(connection_id = %id, version = fresh.version, "interrupted refresh recovered")
            }
            Err(failure) => {
                tracing::warn!(connection_id = %id, failure = ?failure, "interrupted refresh not recovered yet")
            }
        }
    }

    /// Schedules the next background refresh of an ACTIVE connection.
    pub(super) fn schedule(&self, record: &Connection) {
        self.schedule_no_sooner_than(record, MIN_REFRESH_INTERVAL);
    }

    /// Schedules `record`'s refresh when its policy says, but at least
    /// `gap` from now. Unschedules connections that are not ACTIVE; returns
    /// false when the connection's provider is not configured.
    pub(super) fn schedule_no_sooner_than(&self, record: &Connection, gap: Duration) -> bool {
        if record.status != Status::Active {
            // A grant this process holds but could not write (fenced out
            // by another replica that then found the grant dead) is newer
            // than that verdict: its retry stays scheduled.
            if self.slots.get(&record.id).is_some_and(|s| s.has_pending()) {
                if self.scheduler.next_due(&record.id).is_none() {
                    self.scheduler.schedule(
                        &record.id,
                        self.clock
                            .now()
                            .saturating_add(self.settings.pending_retry_min),
                    );
                }
            } else {
                self.scheduler.unschedule(&record.id);
            }
            return true;
        }
        let Some(provider) = self.providers.get(&record.provider) else {
            return false;
        };
        let due = provider
            .refresh_policy
            .refresh_due_at(&record.tokens)
            .max(self.clock.now().saturating_add(gap));
        self.scheduler.schedule(&record.id, due);
        true
    }

    /// Schedules every ACTIVE connection from the store's secret-free
    /// summaries: no record is read or decrypted here; each is loaded into
    /// the bounded cache on first use. Overdue ones are spread over a few
    /// seconds instead of all at once.
    async fn load_all(&self) -> Result<usize, StoreError> {
        let mut after = None;
        let mut count = 0;
        let mut unconfigured = 0usize;
        loop {
            let page = self.store.summaries(after.as_ref(), 10_000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            count += page.len();
            for summary in page {
                if summary.status != Status::Active {
                    continue;
                }
                let Some(provider) = self.providers.get(&summary.provider) else {
                    unconfigured += 1;
                    if unconfigured <= 10 {
                        tracing::warn!(connection_id = %summary.id, provider = %summary.provider, "connection's provider is not configured; not refreshing it");
                    }
                    continue;
                };
                let spread =
                    Duration::from_millis(spread_millis(&summary.id) % START_SPREAD_MILLIS);
                let due = provider
                    .refresh_policy
                    .due_at(summary.expires_at, summary.obtained_at)
                    .max(self.clock.now().saturating_add(spread));
                self.scheduler.schedule(&summary.id, due);
            }
        }
        if unconfigured > 10 {
            tracing::warn!(
                connections = unconfigured,
                "connections whose provider is not configured; not refreshing them"
            );
        }
        Ok(count)
    }

    /// Runs due background refreshes until `cancel` fires.
    async fn run_refresher(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.settings.background_concurrency.max(1),
        ));
        loop {
            let now = self.clock.now();
            for (due, id) in self.scheduler.pop_due(now) {
                let engine = Arc::clone(&self);
                let permits = Arc::clone(&permits);
                let cancel = cancel.clone();
                let backlog = crate::metrics::Backlog::start(&self.metrics);
                self.tasks.spawn(async move {
                    let _backlog = backlog;
                    let permit = tokio::select! {
                        p = permits.acquire_owned() => p,
                        _ = cancel.cancelled() => return,
                    };
                    let Ok(permit) = permit else { return };
                    engine
                        .metrics
                        .refresher_delay
                        .observe(engine.clock.now().duration_since(due).as_secs_f64());
                    engine.background_refresh(&id, permit).await;
                });
            }
            let wait = self
                .scheduler
                .earliest()
                .map(|t| t.duration_since(self.clock.now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.scheduler.changed() => {}
                _ = cancel.cancelled() => break,
            }
        }
        // Refreshes popped but still waiting for a permit give up.
        permits.close();
    }

    async fn background_refresh(
        self: &Arc<Self>,
        id: &ConnectionId,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Ok(slot) = self.slot(id).await else {
            return;
        };
        let current = slot.current();
        let pending = slot.has_pending();
        if current.status != Status::Active && !pending {
            return;
        }
        let Some(provider) = self.providers.get(&current.provider) else {
            return;
        };
        let now = self.clock.now();
        // A grant the store refused, or a refresh in doubt, goes ahead
        // whatever the token's remaining life.
        if !pending
            && !slot.in_doubt()
            && !provider
                .refresh_policy
                .needs_refresh(&current.tokens, now, Duration::ZERO)
            && !provider.refresh_policy.keepalive_due(&current.tokens, now)
        {
            // A reader refreshed it already.
            self.schedule(&current);
            return;
        }
        // `pop_due` removed the entry: every outcome must put one back
        // unless the connection is gone or revoked.
        match self.refresh_with_permit(&slot, &current, permit).await {
            Ok(fresh) => {
                if self.scheduler.next_due(id).is_none() {
                    self.schedule(&fresh)
                }
            }
            Err(Failure::Revoked(_) | Failure::NotFound(_) | Failure::ShuttingDown) => {}
            Err(Failure::Provider {
                retry_after: Some(delay),
                ..
            }) => {
                if self.scheduler.next_due(id).is_none() {
                    self.scheduler.schedule(id, now.saturating_add(delay))
                }
            }
            Err(_) => {
                if self.scheduler.next_due(id).is_none() {
                    self.scheduler.schedule(
                        id,
                        now.saturating_add(self.settings.backoff_max.min(Duration::from_secs(30))),
                    )
                }
            }
        }
    }
}

/// A stable offset per connection, so connections overdue at start-up are
/// not all refreshed in the same instant.
fn spread_millis(id: &ConnectionId) -> u64 {
    id.as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_stable() {
        let id = ConnectionId::new("hubspot-123").unwrap();
        assert_eq!(spread_millis(&id), spread_millis(&id));
        assert!(spread_millis(&id) % START_SPREAD_MILLIS < START_SPREAD_MILLIS);
    }
}
