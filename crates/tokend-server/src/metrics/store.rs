//! A `Store` that counts and times every write of the store it wraps, by
//! operation and outcome (reads are the cache's business and stay uncounted).

use std::{sync::Arc, time::Duration, time::Instant};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, Timestamp};
use tokend_store::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, SealedPage, Store, StoreError,
    Summary,
};
use tokio::sync::watch;

use super::{Metrics, OperationLabel, StoreLabels};

/// Wraps a store; see the module doc.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn record<T>(&self, operation: &str, started: Instant, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(StoreError::Fenced { .. }) => "fenced",
            Err(_) => "error",
        };
        self.metrics
            .store_operations
            .get_or_create(&StoreLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.metrics
            .store_duration
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner.get(id).await
    }

    async fn put(
        &self,
        record: &Connection,
        expected_revision: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.put(record, expected_revision, fence).await;
        self.record("put", started, &result);
        result
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.replace_unreadable(record).await;
        self.record("replace", started, &result);
        result
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.delete(id, expected).await;
        self.record("delete", started, &result);
        result
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        self.inner.list(query).await
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
        let started = Instant::now();
        let result = self
            .inner
            .try_acquire_refresh_lease(id, holder, ttl, now)
            .await;
        self.record("acquire_lease", started, &result);
        result
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.release_refresh_lease(lease, in_doubt).await;
        self.record("release_lease", started, &result);
        result
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.renew_refresh_lease(lease, ttl, now).await;
        self.record("renew_lease", started, &result);
        result
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
        let started = Instant::now();
        let result = self.inner.save_cursor(name, cursor).await;
        self.record("save_cursor", started, &result);
        result
    }

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.claim_reader(name, holder, ttl, now).await
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn sealing_keys(&self) -> Option<Arc<tokend_store::crypto::Keyring>> {
        self.inner.sealing_keys()
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        self.inner.export_sealed(after, limit).await
    }
}
