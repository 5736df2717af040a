//! The refresh lease around one refresh: renewed while the refresh holds it
//! (provider calls, the previous-token retry, store retries), a wait for
//! another process's lease that no caller with a valid token and no
//! background permit sits through, and the sweep that takes over the
//! leases of replicas that died mid-refresh, whatever their names.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokend_core::Connection;
use tokend_store::Lease;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Engine, Failure, slot::Slot};

/// Expired leases released per sweep at most; the rest wait for the next.
const SWEEP_BATCH: usize = 100;

/// How often a held lease is renewed: a third of its lifetime, so two
/// renewals in a row can fail (or be slow) before it runs out, and at
/// least every second, so a lease has nearly its whole life left when the
/// store goes away and outlives any outage shorter than it, less a second
/// (issue 25, `pg-stop`). A refresh answered within a second renews
/// nothing.
pub(super) fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How often a shared store is swept for expired leases: a third of the
/// lease lifetime (at most 10 s), so a dead replica's lease is taken over
/// within a third of `lease_ttl` of running out.
pub(super) fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The least shutdown grace for providers answering within
/// `request_timeout`: one refresh may make two provider calls under its
/// lease (the refresh token, then the previous one), then write (with store
/// retries), and shutdown must not cut any of it short: a provider that
/// rotated the token has answered with the only live grant.
pub fn shutdown_grace_for(request_timeout: Duration) -> Duration {
    const WRITE_MARGIN: Duration = Duration::from_secs(5);
    request_timeout
        .saturating_mul(2)
        .saturating_add(WRITE_MARGIN)
}

/// Whether a slot's refresh is waiting for a lease another process holds.
#[derive(Default)]
pub(crate) struct LeaseWait {
    waiting: AtomicBool,
    changed: Notify,
}

impl LeaseWait {
    /// Marks the wait begun; it ends when the guard drops.
    pub(super) fn begin(&self) -> WaitGuard<'_> {
        self.waiting.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        WaitGuard(self)
    }

    /// Resolves once the slot's refresh waits for another process's lease.
    pub(super) async fn held_elsewhere(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.waiting.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Ends a [`LeaseWait`] however the wait ends.
pub(super) struct WaitGuard<'a>(&'a LeaseWait);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Runs `work` (everything a refresh does under `lease`) while renewing
    /// the lease every third of its lifetime.
    ///
    /// Invariant (issue 25, item 2): a lease outlives the provider calls
    /// and writes made under it, however slow, so no other replica starts a
    /// second refresh of the same grant meanwhile. If the lease is lost all
    /// the same (this process stalled past it, a sweep released it), the
    /// work goes on and its answer is handled, but its write is fenced; this
    /// is logged, never silent.
    pub(super) async fn renewing<T>(&self, lease: &Lease, work: impl Future<Output = T>) -> T {
        let renew = async {
            let every = renew_every(self.settings.lease_ttl);
            loop {
                tokio::time::sleep(every).await;
                match self
                    .store
                    .renew_refresh_lease(lease, self.settings.lease_ttl, self.clock.now())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            connection_id = %lease.id,
                            fence = lease.fence,
                            "refresh lease lost while its refresh ran; its write will be refused"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(connection_id = %lease.id, error = %e, "renewing the refresh lease failed; retrying")
                    }
                }
            }
            std::future::pending::<T>().await
        };
        tokio::select! {
            out = work => out,
            out = renew => out,
        }
    }

    /// Gives `lease` back. If the store fails, the lease is kept in the
    /// slot and given back before the next one is taken
    /// ([`Engine::give_back_left_over`]).
    pub(super) async fn give_back(&self, slot: &Slot, lease: Lease, in_doubt: bool) {
        if let Err(e) = self.store.release_refresh_lease(&lease, in_doubt).await {
            tracing::warn!(connection_id = %lease.id, error = %e, "releasing refresh lease failed; it is released before the next refresh");
            *super::slot::lock(&slot.unreleased) = Some((lease, in_doubt));
        }
    }

    /// Gives back the lease an earlier refresh of this slot could not,
    /// before a new one is taken.
    ///
    /// Invariant (issue 25, `pg-stop`): a lease whose release failed while
    /// the store was away does not keep its own connection from being
    /// refreshed until it runs out (`lease_ttl`) after the store is back:
    /// no process may take a live lease, its holder included. Releasing it
    /// now is safe: nothing of this process runs under it (the slot's
    /// singleflight), a newer fence makes the release a no-op, and the
    /// doubt it is released with is the one its refresh ended in.
    pub(super) async fn give_back_left_over(&self, slot: &Slot) -> Result<(), Failure> {
        let Some((lease, in_doubt)) = super::slot::lock(&slot.unreleased).take() else {
            return Ok(());
        };
        match self.store.release_refresh_lease(&lease, in_doubt).await {
            Ok(()) => Ok(()),
            Err(e) => {
                *super::slot::lock(&slot.unreleased) = Some((lease, in_doubt));
                Err(Failure::store(e))
            }
        }
    }

    /// [`Engine::refresh_once`], for a caller that has a valid token and so
    /// need not wait: `None` as soon as the refresh is found waiting for a
    /// lease another process holds (maybe a dead replica's, for up to
    /// `lease_ttl`). The refresh goes on in its own task.
    pub(super) async fn refresh_unless_held(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        base: &Arc<Connection>,
    ) -> Option<Result<Arc<Connection>, Failure>> {
        tokio::select! {
            biased;
            result = self.refresh_once(slot, base) => Some(result),
            () = slot.lease_wait.held_elsewhere() => None,
        }
    }

    /// A background refresh holding one of the refresher's `permit`s: the
    /// permit is given back as soon as the refresh waits for another
    /// process's lease, so a dead replica's leases cannot stall the
    /// refresher for everyone else.
    pub(super) async fn refresh_with_permit(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        base: &Arc<Connection>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Arc<Connection>, Failure> {
        let refresh = self.refresh_once(slot, base);
        tokio::pin!(refresh);
        tokio::select! {
            biased;
            result = &mut refresh => result,
            () = slot.lease_wait.held_elsewhere() => {
                drop(permit);
                refresh.await
            }
        }
    }

    /// On a shared store: releases the leases that ran out unreleased,
    /// whoever held them, and refreshes those connections at once (in
    /// doubt), until `cancel` fires.
    ///
    /// Invariant (issue 25, item 8): a replica that dies mid-refresh under
    /// a name nobody uses again (a Kubernetes pod) holds up its connections
    /// for at most `lease_ttl` plus a sweep, and their refresh is retried
    /// while a provider's rotation grace may still hold, without waiting for
    /// a caller or the next due time.
    pub(super) async fn sweep_expired_leases(self: Arc<Self>, cancel: CancellationToken) {
        let every = sweep_every(self.settings.lease_ttl);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
            let expired = match self
                .store
                .release_expired_leases(self.clock.now(), SWEEP_BATCH)
                .await
            {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping expired refresh leases failed");
                    continue;
                }
            };
            for id in expired {
                tracing::warn!(connection_id = %id, "a refresh lease ran out unreleased (its holder died mid-refresh); taking the refresh over");
                self.stats.leases_taken_over.fetch_add(1, Ordering::Relaxed);
                self.recover_soon(id);
            }
        }
    }
}
