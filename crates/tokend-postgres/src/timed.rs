//! Client-side time limits on every store call: a database connection that
//! went silent (a dead peer, a route that drops packets) gets no answer and
//! no error, and no server-side `statement_timeout` can end the wait. Each
//! call gets [`PgOptions::call_timeout`](crate::PgOptions::call_timeout);
//! past it the call fails, and the pooled connection it held is closed
//! instead of being handed to the next call.

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, Timestamp};
use tokend_store::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, SealedPage, Store, StoreError,
    Summary,
};
use tokio::sync::watch;

use crate::{PgError, PostgresStore};

/// A pooled connection that is detached from the pool and closed, not given
/// back, when the call using it was abandoned at its time limit: its socket
/// may be dead, and the next call must not wait on it too.
pub(crate) struct Pooled {
    client: Option<deadpool_postgres::Client>,
    abandoned: Arc<AtomicBool>,
}

impl Pooled {
    pub(crate) async fn get(
        pool: &deadpool_postgres::Pool,
        abandoned: &Arc<AtomicBool>,
    ) -> Result<Pooled, PgError> {
        Ok(Pooled {
            client: Some(pool.get().await?),
            abandoned: Arc::clone(abandoned),
        })
    }
}

impl Deref for Pooled {
    type Target = deadpool_postgres::Client;

    fn deref(&self) -> &Self::Target {
        // Set from construction until drop.
        self.client
            .as_ref()
            .expect("pooled client present until drop")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client
            .as_mut()
            .expect("pooled client present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::SeqCst)
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Runs `call` for at most `limit`. Past it, `abandoned` is set before the
/// call is dropped, so the connection it held is closed (see [`Pooled`]).
pub(crate) async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    abandoned: &AtomicBool,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut call = std::pin::pin!(call);
    match tokio::time::timeout(limit, call.as_mut()).await {
        Ok(result) => result,
        Err(_) => {
            abandoned.store(true, Ordering::SeqCst);
            tracing::warn!(
                call = what,
                limit_ms = limit.as_millis() as u64,
                "database call got no answer in time; closing its connection"
            );
            Err(PgError::Db(format!(
                "{what}: no answer from the database within {} ms",
                limit.as_millis()
            ))
            .into())
        }
    }
}

/// The store's calls without the time limit (`store.rs`), for one call:
/// its connections carry this call's `abandoned` flag.
pub(crate) struct Untimed {
    store: PostgresStore,
    abandoned: Arc<AtomicBool>,
}

impl Deref for Untimed {
    type Target = PostgresStore;

    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

impl Untimed {
    pub(crate) async fn client(&self) -> Result<Pooled, StoreError> {
        Ok(Pooled::get(&self.store.inner.pool, &self.abandoned).await?)
    }
}

impl PostgresStore {
    fn untimed(&self) -> Untimed {
        Untimed {
            store: self.clone(),
            abandoned: Arc::default(),
        }
    }

    async fn within<T>(
        &self,
        what: &'static str,
        untimed: &Untimed,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(what, self.inner.call_timeout, &untimed.abandoned, call).await
    }
}

/// Every call of [`Untimed`]'s `Store`, within the time limit.
macro_rules! timed {
    ($self:ident, $what:literal, $method:ident($($arg:expr),*)) => {{
        let untimed = $self.untimed();
        $self
            .within($what, &untimed, untimed.$method($($arg),*))
            .await
    }};
}

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        timed!(self, "get", get(id))
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        timed!(self, "put", put(record, expected, fence))
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        timed!(self, "replace_unreadable", replace_unreadable(record))
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        timed!(self, "delete", delete(id, expected))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        timed!(self, "list", list(query))
    }

    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        timed!(self, "summaries", summaries(after, limit))
    }

    async fn census(&self) -> Result<Census, StoreError> {
        timed!(self, "census", census())
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        timed!(
            self,
            "acquire_lease",
            try_acquire_refresh_lease(id, holder, ttl, now)
        )
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        timed!(self, "renew_lease", renew_refresh_lease(lease, ttl, now))
    }

    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        timed!(
            self,
            "release_expired_leases",
            release_expired_leases(now, limit)
        )
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        timed!(
            self,
            "release_lease",
            release_refresh_lease(lease, in_doubt)
        )
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        timed!(
            self,
            "release_abandoned_leases",
            release_abandoned_leases(node_prefix)
        )
    }

    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        timed!(self, "read_events", read_events(after, up_to, limit))
    }

    fn event_watermark(&self) -> watch::Receiver<u64> {
        self.inner.watermark.subscribe()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        timed!(self, "fleet_now", fleet_now())
    }

    fn sealing_keys(&self) -> Option<Arc<tokend_store::crypto::Keyring>> {
        Some(self.keys())
    }

    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        timed!(self, "event_bounds", event_bounds())
    }

    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        timed!(self, "unheld_keys", unheld_keys())
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        timed!(self, "prune_events", prune_events(older_than, keep))
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        timed!(self, "load_cursor", load_cursor(name))
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        timed!(self, "save_cursor", save_cursor(name, cursor))
    }

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        timed!(self, "claim_reader", claim_reader(name, holder, ttl, now))
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        timed!(self, "export_sealed", export_sealed(after, limit))
    }
}
