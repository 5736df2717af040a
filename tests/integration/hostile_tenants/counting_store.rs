//! A `Store` wrapper for the narrow-listing test (issue 24, item 6): it
//! counts the records listings return and delegates everything else.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokend_core::{Connection, ConnectionId, Event, Timestamp};
use tokend_store::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, SealedPage, SledStore, Store,
    StoreError, Summary,
};
use tokio::sync::watch;

/// A store that counts the records its listings return (what the server
/// reads and decrypts to answer ListConnections) and delegates the rest.
pub struct CountingStore {
    pub inner: Arc<SledStore>,
    pub listed: AtomicU64,
}

#[tonic::async_trait]
impl Store for CountingStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner.get(id).await
    }
    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        self.inner.put(record, expected, fence).await
    }
    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        self.inner.replace_unreadable(record).await
    }
    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        self.inner.delete(id, expected).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let page = self.inner.list(query).await?;
        self.listed.fetch_add(page.len() as u64, Ordering::Relaxed);
        Ok(page)
    }
    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        self.inner.summaries(after, limit).await
    }
    async fn census(&self) -> Result<Census, StoreError> {
        self.inner.census().await
    }
    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner
            .try_acquire_refresh_lease(id, holder, ttl, now)
            .await
    }
    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        self.inner.release_refresh_lease(lease, in_doubt).await
    }
    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner.renew_refresh_lease(lease, ttl, now).await
    }
    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.inner.release_expired_leases(now, limit).await
    }
    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.inner.release_abandoned_leases(node_prefix).await
    }
    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.read_events(after, up_to, limit).await
    }
    fn event_watermark(&self) -> watch::Receiver<u64> {
        self.inner.event_watermark()
    }
    fn broken(&self) -> watch::Receiver<Option<String>> {
        self.inner.broken()
    }
    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.fleet_now().await
    }
    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        self.inner.event_bounds().await
    }
    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        self.inner.unheld_keys().await
    }
    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        self.inner.prune_events(older_than, keep).await
    }
    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        self.inner.load_cursor(name).await
    }
    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        self.inner.save_cursor(name, cursor).await
    }
    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        self.inner.export_sealed(after, limit).await
    }
}
