//! Per-connection memory: the newest record this process knows, the refresh
//! in flight, retry state and any grant the store has not accepted yet.

use std::sync::{
    Arc, Mutex, MutexGuard, RwLock,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use secrecy::SecretString;
use tokend_core::{Connection, ConnectionId, TokenSet};
use tokend_store::{Store, StoreError};

use super::{Failure, backoff::RetryState, flight::Singleflight};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments that leave the value
    // consistent, so a poisoned lock's data is still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A grant the provider issued that the store has not accepted yet. With a
/// rotating provider it holds the only live refresh token: it is persisted
/// before the provider is called again, and never dropped while the grant it
/// replaced is still the stored one.
#[derive(Clone)]
pub(crate) struct PendingGrant {
    /// The refresh token this grant replaced (what the store still holds).
    pub(crate) replaced: Option<SecretString>,
    pub(crate) grant: Grant,
    /// Failed attempts to persist it, for the retry delay.
    pub(crate) attempts: u32,
}

/// What a provider answer gave.
#[derive(Clone)]
pub(crate) enum Grant {
    /// A full, validated token set.
    Tokens(TokenSet),
    /// Only a new refresh token, read from a 2xx answer that failed
    /// validation: the access token stays what it was.
    RefreshTokenOnly(SecretString),
}

impl PendingGrant {
    /// Whether this grant was made from the grant `record` still holds.
    pub(crate) fn applies_to(&self, record: &Connection) -> bool {
        use secrecy::ExposeSecret;
        match (&self.replaced, &record.tokens.refresh_token) {
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// In-memory state of one connection.
pub(crate) struct Slot {
    /// The newest record this process knows. A std `RwLock`: held only to
    /// clone an `Arc`, never across an `.await`, so readers never wait on I/O.
    record: RwLock<Arc<Connection>>,
    pub(crate) flight: Singleflight<Result<Arc<Connection>, Failure>>,
    pub(crate) retry: Mutex<RetryState>,
    pub(crate) pending: Mutex<Option<PendingGrant>>,
    /// Counted in the connections gauge: set while the slot is in the map,
    /// so a slot advanced after its removal moves no figure.
    counted: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A record's place in the connections gauge.
fn gauge_key(c: &Connection) -> (&str, &str) {
    (c.provider.as_str(), c.status.as_str())
}

impl Slot {
    pub(crate) fn new(record: Arc<Connection>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            record: RwLock::new(record),
            flight: Singleflight::default(),
            retry: Mutex::new(RetryState::default()),
            pending: Mutex::new(None),
            counted: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Enters the connections gauge (once).
    fn count(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            let current = self.current();
            self.metrics
                .connection_moved(None, Some(gauge_key(&current)));
        }
    }

    /// Leaves the connections gauge (once).
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::SeqCst) {
            let current = self.current();
            self.metrics
                .connection_moved(Some(gauge_key(&current)), None);
        }
    }

    pub(crate) fn current(&self) -> Arc<Connection> {
        Arc::clone(&self.record.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the cached record unless it is older than what is cached.
    /// A record of another incarnation always replaces: it was read from the
    /// store after the cached one was deleted there.
    pub(crate) fn advance(&self, record: Arc<Connection>) -> Arc<Connection> {
        let mut guard = self.record.write().unwrap_or_else(|p| p.into_inner());
        if record.incarnation != guard.incarnation || record.revision >= guard.revision {
            if self.counted.load(Ordering::SeqCst) {
                self.metrics
                    .connection_moved(Some(gauge_key(&guard)), Some(gauge_key(&record)));
            }
            *guard = record;
        }
        Arc::clone(&guard)
    }

    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }
}

/// Every slot of this process, sharded so readers of different connections
/// never contend and the read path takes no global lock.
pub(crate) struct Slots {
    map: DashMap<ConnectionId, Arc<Slot>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Bumped by every delete; a loader or an installer that raced with one
    /// does not cache, so a deleted record never comes back into memory.
    delete_epoch: AtomicU64,
}

impl Slots {
    pub(crate) fn new(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Slots {
            map: DashMap::new(),
            metrics,
            delete_epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, id: &ConnectionId) -> Option<Arc<Slot>> {
        self.map.get(id).map(|s| Arc::clone(&s))
    }

    /// The connection's slot, loading it from the store on first use.
    pub(crate) async fn load(
        &self,
        store: &dyn Store,
        id: &ConnectionId,
    ) -> Result<Option<Arc<Slot>>, StoreError> {
        if let Some(slot) = self.get(id) {
            return Ok(Some(slot));
        }
        loop {
            let epoch = self.epoch();
            let Some(record) = store.get(id).await? else {
                return Ok(None);
            };
            let mut inserted = false;
            let slot = Arc::clone(&self.map.entry(id.clone()).or_insert_with(|| {
                inserted = true;
                let slot = Arc::new(Slot::new(Arc::new(record), Arc::clone(&self.metrics)));
                slot.count();
                slot
            }));
            // A slot someone else inserted is theirs to check.
            if !inserted || self.epoch() == epoch {
                return Ok(Some(slot));
            }
            // A delete ran meanwhile: what we cached may be gone.
            if self
                .map
                .remove_if(id, |_, s| Arc::ptr_eq(s, &slot))
                .is_some()
            {
                slot.uncount();
            }
        }
    }

    /// The current delete epoch, read before a store read or write whose
    /// result will be cached with [`Slots::cache`].
    pub(crate) fn epoch(&self) -> u64 {
        self.delete_epoch.load(Ordering::SeqCst)
    }

    /// Caches a record read or written since `epoch` and returns the newest
    /// known. If a delete ran since, nothing is cached: the record may be
    /// the deleted one.
    pub(crate) fn cache(&self, record: Connection, epoch: u64) -> Arc<Connection> {
        let record = Arc::new(record);
        let slot = Arc::clone(
            self.map
                .entry(record.id.clone())
                .or_insert_with(|| {
                    let slot = Arc::new(Slot::new(Arc::clone(&record), Arc::clone(&self.metrics)));
                    slot.count();
                    slot
                })
                .value(),
        );
        let newest = slot.advance(Arc::clone(&record));
        if self.epoch() != epoch
            && self
                .map
                .remove_if(&record.id, |_, s| Arc::ptr_eq(s, &slot))
                .is_some()
        {
            slot.uncount();
        }
        newest
    }

    /// Forgets a deleted connection.
    pub(crate) fn remove(&self, id: &ConnectionId) {
        self.delete_epoch.fetch_add(1, Ordering::SeqCst);
        if let Some((_, slot)) = self.map.remove(id) {
            slot.uncount();
        }
    }

    /// Every cached connection's id.
    pub(crate) fn ids(&self) -> Vec<ConnectionId> {
        self.map.iter().map(|e| e.key().clone()).collect()
    }

    /// Slots holding a grant the store has not accepted yet.
    pub(crate) fn with_pending(&self) -> Vec<(ConnectionId, Arc<Slot>)> {
        self.map
            .iter()
            .filter(|e| e.value().has_pending())
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect()
    }
}
