//! A grant the store refused keeps the lease it was obtained under: one
//! engine-owned task renews that lease and retries the grant's write on the
//! store's short delay until it lands, so no other replica takes the lease
//! over and spends the refresh token the grant replaced (issue 25,
//! `pg-stop`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokend_store::Lease;

use super::{Engine, Failure, slot::Slot};

/// Clears the slot's keeper flag however the keeper's task ends.
struct Keeping(Arc<Slot>);

impl Drop for Keeping {
    fn drop(&mut self) {
        self.0.keeper.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Hands `lease`, under which the slot's pending grant was obtained, to
    /// a task that keeps it renewed (`renewing`) and retries the grant's
    /// write under its fence, first after `first_retry`, then on the
    /// store's delay (`RetryState::store_delay`, at most
    /// `pending_retry_max`), until the grant is written, dropped (the store
    /// holds another grant, or the connection is gone) or the engine shuts
    /// down; then gives the lease back.
    ///
    /// Invariant (issue 25, `pg-stop`): a store outage shorter than the
    /// refresh lease never lets another replica present a refresh token
    /// whose successor this replica holds. The lease is not given back
    /// while its grant is pending; it is renewed at most a second apart (so
    /// it has nearly its whole life left when the store goes away), and the
    /// write is retried at most a second apart, so the grant is stored
    /// within about a second of the store's return, before the lease runs
    /// out.
    ///
    /// Why a task of its own, not the flight retrying inline: the flight's
    /// callers get `UNAVAILABLE` at once rather than waiting through the
    /// outage, and the retries need no caller and no background refresher.
    /// Why the same lease, not a new one per retry: this replica cannot
    /// take a lease that is still live, its own included, so a new one
    /// could only be had once this one ran out, in doubt, racing the other
    /// replicas for it; that race is what announced false `ROTATION_LOST`s.
    pub(super) fn keep_pending(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        lease: Lease,
        first_retry: Duration,
    ) {
        slot.keeper.store(true, Ordering::SeqCst);
        let keeping = Keeping(Arc::clone(slot));
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            let slot = Arc::clone(&keeping.0);
            engine
                .renewing(
                    &lease,
                    engine.retry_pending_write(&slot, &lease, first_retry),
                )
                .await;
            // Still pending only at shutdown: the provider rotated the
            // refresh token the store holds, so the next holder is in doubt.
            let in_doubt = slot.has_pending();
            engine.give_back(&slot, lease, in_doubt).await;
            drop(keeping);
        });
    }

    /// Retries writing the slot's pending grant under `lease`'s fence
    /// until nothing is pending or the engine shuts down. A fenced write
    /// (the lease was lost all the same) is written back when the store
    /// still holds the refresh token the grant replaced (`persist.rs`).
    async fn retry_pending_write(&self, slot: &Arc<Slot>, lease: &Lease, first_retry: Duration) {
        let mut delay = first_retry;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return,
            }
            let failure = match self.write_pending(slot, &lease.id, lease.fence).await {
                Ok(()) => return,
                Err(failure) => failure,
            };
            // The store's delay, recorded for callers (`UNAVAILABLE` with
            // when to come back) like any refresh's store failure.
            delay = match self.store_trouble(slot, &lease.id, failure) {
                Failure::Store { retry_after, .. } => retry_after,
                _ => self.settings.pending_retry_max,
            };
        }
    }

    /// While a keeper holds the slot's lease: the failure its last attempt
    /// recorded, with when to come back, so no refresh runs beside it.
    pub(super) fn kept(&self, slot: &Slot) -> Failure {
        let retry = super::slot::lock(&slot.retry);
        let left = retry
            .not_before
            .map(|t| t.duration_since(self.clock.now()))
            .unwrap_or_default()
            .max(self.settings.pending_retry_min);
        match retry.last_failure.clone() {
            Some(Failure::Store { error, .. }) => Failure::Store {
                error,
                retry_after: left,
            },
            Some(other) => other,
            None => Failure::Store {
                error: tokend_store::StoreError::Backend(
                    "a grant is waiting for the store; its write is being retried".into(),
                ),
                retry_after: left,
            },
        }
    }
}
