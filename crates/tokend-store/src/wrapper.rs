//! The one shared base of `Store` wrappers: [`StoreWrapper`], whose every
//! method forwards to an inner store through one hook, and the blanket
//! `impl Store` that makes each wrapper a store.
//!
//! Why this shape: a wrapper (metrics, injected faults, PostgreSQL's time
//! limit, a test's counter) changes what happens *around* calls, rarely
//! what a call is. So a wrapper names its inner store ([`StoreWrapper::inner`])
//! and, if it acts on every call, writes [`StoreWrapper::around`], which is
//! handed the [`Op`] and the inner store's call, not yet polled. Every
//! method of the trait mirrors one of `Store`'s and has a default that
//! routes the inner call through `around` (the synchronous ones forward
//! plainly), so a wrapper overrides only the methods whose meaning it
//! changes (`FaultStore`'s unreadable records, a counted `list`). The
//! inner store is a handle made per call, not a fixed reference, so a
//! wrapper can give each call its own view (PostgreSQL: a connection flag
//! the time limit sets when it abandons the call).
//!
//! The method names are `Store`'s, so a type that is both is ambiguous
//! where both traits are imported: implement this one by its path
//! (`impl tokend_store::StoreWrapper for ..`) without importing it.

use std::{future::Future, ops::Deref, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, Timestamp};
use tokio::sync::watch;

use crate::{
    Expected, Lease, ListQuery, SealedPage, Store, StoreError,
    event_log::{LogBounds, SavedCursor},
    sealing::Keyring,
    summary::{Census, Summary},
};

/// A store call not yet polled, as `async_trait` hands it out.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every asynchronous `Store` method, one variant each: what a wrapper's
/// [`StoreWrapper::around`] is told, and what a `FaultStore` fault is armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Put,
    Delete,
    List,
    /// `summaries` (a `FaultStore` arms `census` under it too: what
    /// start-up and the gauge read).
    Summaries,
    Census,
    /// `try_acquire_refresh_lease`.
    AcquireLease,
    /// `release_refresh_lease`.
    ReleaseLease,
    /// `renew_refresh_lease`.
    RenewLease,
    ReleaseExpiredLeases,
    ReleaseAbandonedLeases,
    ReplaceUnreadable,
    ReadEvents,
    /// `event_bounds`: what `/readyz` reads to see the store answer.
    EventBounds,
    UnheldKeys,
    PruneEvents,
    LoadCursor,
    SaveCursor,
    ClaimReader,
    /// `fleet_now`: a read of the shared store's clock.
    FleetClock,
    ExportSealed,
}

impl Op {
    /// The call's name in logs and errors (PostgreSQL's time limit).
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Summaries => "summaries",
            Op::Census => "census",
            Op::AcquireLease => "acquire_lease",
            Op::ReleaseLease => "release_lease",
            Op::RenewLease => "renew_lease",
            Op::ReleaseExpiredLeases => "release_expired_leases",
            Op::ReleaseAbandonedLeases => "release_abandoned_leases",
            Op::ReplaceUnreadable => "replace_unreadable",
            Op::ReadEvents => "read_events",
            Op::EventBounds => "event_bounds",
            Op::UnheldKeys => "unheld_keys",
            Op::PruneEvents => "prune_events",
            Op::LoadCursor => "load_cursor",
            Op::SaveCursor => "save_cursor",
            Op::ClaimReader => "claim_reader",
            Op::FleetClock => "fleet_now",
            Op::ExportSealed => "export_sealed",
        }
    }
}

/// A store that forwards to an inner one; see the module doc. Every type
/// implementing it is a [`Store`].
#[async_trait]
pub trait StoreWrapper: Send + Sync + 'static {
    /// The store wrapped.
    type Target: Store + ?Sized;

    /// What [`StoreWrapper::inner`] hands out: a reference, or a per-call view.
    type Inner<'a>: Deref<Target = Self::Target> + Send + Sync + 'a
    where
        Self: 'a;

    /// The store a call goes to.
    fn inner(&self) -> Self::Inner<'_>;

    /// Runs `call`, `op` on `inner`; the default just runs it.
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        inner: &'a Self::Inner<'_>,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let _ = (op, inner);
        call
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let inner = self.inner();
        self.around(Op::Get, &inner, inner.get(id)).await
    }

    async fn put(
        &self,
        record: &Connection,
        expected_revision: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        let inner = self.inner();
        let call = inner.put(record, expected_revision, fence);
        self.around(Op::Put, &inner, call).await
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let inner = self.inner();
        let call = inner.replace_unreadable(record);
        self.around(Op::ReplaceUnreadable, &inner, call).await
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let inner = self.inner();
        self.around(Op::Delete, &inner, inner.delete(id, expected))
            .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let inner = self.inner();
        self.around(Op::List, &inner, inner.list(query)).await
    }

    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        let inner = self.inner();
        let call = inner.summaries(after, limit);
        self.around(Op::Summaries, &inner, call).await
    }

    async fn census(&self) -> Result<Census, StoreError> {
        let inner = self.inner();
        self.around(Op::Census, &inner, inner.census()).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let inner = self.inner();
        let call = inner.try_acquire_refresh_lease(id, holder, ttl, now);
        self.around(Op::AcquireLease, &inner, call).await
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        let inner = self.inner();
        let call = inner.release_refresh_lease(lease, in_doubt);
        self.around(Op::ReleaseLease, &inner, call).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let inner = self.inner();
        let call = inner.renew_refresh_lease(lease, ttl, now);
        self.around(Op::RenewLease, &inner, call).await
    }

    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let inner = self.inner();
        let call = inner.release_expired_leases(now, limit);
        self.around(Op::ReleaseExpiredLeases, &inner, call).await
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let inner = self.inner();
        let call = inner.release_abandoned_leases(node_prefix);
        self.around(Op::ReleaseAbandonedLeases, &inner, call).await
    }

    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let inner = self.inner();
        let call = inner.read_events(after, up_to, limit);
        self.around(Op::ReadEvents, &inner, call).await
    }

    fn event_watermark(&self) -> watch::Receiver<u64> {
        self.inner().event_watermark()
    }

    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        let inner = self.inner();
        self.around(Op::EventBounds, &inner, inner.event_bounds())
            .await
    }

    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        let inner = self.inner();
        self.around(Op::UnheldKeys, &inner, inner.unheld_keys())
            .await
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        let inner = self.inner();
        let call = inner.prune_events(older_than, keep);
        self.around(Op::PruneEvents, &inner, call).await
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        let inner = self.inner();
        self.around(Op::LoadCursor, &inner, inner.load_cursor(name))
            .await
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        let inner = self.inner();
        let call = inner.save_cursor(name, cursor);
        self.around(Op::SaveCursor, &inner, call).await
    }

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let inner = self.inner();
        let call = inner.claim_reader(name, holder, ttl, now);
        self.around(Op::ClaimReader, &inner, call).await
    }

    fn broken(&self) -> watch::Receiver<Option<String>> {
        self.inner().broken()
    }

    fn shared(&self) -> bool {
        self.inner().shared()
    }

    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        let inner = self.inner();
        self.around(Op::FleetClock, &inner, inner.fleet_now()).await
    }

    fn sealing_keys(&self) -> Option<Arc<Keyring>> {
        self.inner().sealing_keys()
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        let inner = self.inner();
        let call = inner.export_sealed(after, limit);
        self.around(Op::ExportSealed, &inner, call).await
    }
}

/// Every wrapper is a store: each method is the wrapper's own.
#[async_trait]
impl<W: StoreWrapper> Store for W {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        StoreWrapper::get(self, id).await
    }

    async fn put(
        &self,
        record: &Connection,
        expected_revision: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        StoreWrapper::put(self, record, expected_revision, fence).await
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        StoreWrapper::replace_unreadable(self, record).await
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        StoreWrapper::delete(self, id, expected).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        StoreWrapper::list(self, query).await
    }

    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        StoreWrapper::summaries(self, after, limit).await
    }

    async fn census(&self) -> Result<Census, StoreError> {
        StoreWrapper::census(self).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        StoreWrapper::try_acquire_refresh_lease(self, id, holder, ttl, now).await
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        StoreWrapper::release_refresh_lease(self, lease, in_doubt).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        StoreWrapper::renew_refresh_lease(self, lease, ttl, now).await
    }

    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        StoreWrapper::release_expired_leases(self, now, limit).await
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        StoreWrapper::release_abandoned_leases(self, node_prefix).await
    }

    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        StoreWrapper::read_events(self, after, up_to, limit).await
    }

    fn event_watermark(&self) -> watch::Receiver<u64> {
        StoreWrapper::event_watermark(self)
    }

    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        StoreWrapper::event_bounds(self).await
    }

    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        StoreWrapper::unheld_keys(self).await
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        StoreWrapper::prune_events(self, older_than, keep).await
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        StoreWrapper::load_cursor(self, name).await
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        StoreWrapper::save_cursor(self, name, cursor).await
    }

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        StoreWrapper::claim_reader(self, name, holder, ttl, now).await
    }

    fn broken(&self) -> watch::Receiver<Option<String>> {
        StoreWrapper::broken(self)
    }

    fn shared(&self) -> bool {
        StoreWrapper::shared(self)
    }

    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        StoreWrapper::fleet_now(self).await
    }

    fn sealing_keys(&self) -> Option<Arc<Keyring>> {
        StoreWrapper::sealing_keys(self)
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        StoreWrapper::export_sealed(self, after, limit).await
    }
}
