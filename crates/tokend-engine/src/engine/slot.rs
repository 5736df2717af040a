//! Per-connection memory: the newest record this process knows, the refresh
//! in flight, retry state and any grant the store has not accepted yet.

use std::sync::{
    Arc, Mutex, MutexGuard, RwLock,
    atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
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
    /// With the answer's metadata fields, merged into the connection's.
    Tokens(TokenSet, std::collections::BTreeMap<String, String>),
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
    /// Whether the refresh waits for another process's lease.
    pub(crate) lease_wait: super::lease::LeaseWait,
    /// Set while a task holds the lease the pending grant was obtained
    /// under and retries its write (`keeper.rs`); refreshes wait for it.
    pub(crate) keeper: AtomicBool,
    /// A lease this process failed to give back (the store failed), with
    /// the doubt to release it with: given back before the next one is
    /// taken (`lease.rs`).
    pub(crate) unreleased: Mutex<Option<(tokend_store::Lease, bool)>>,
    /// The cache generation of its last use (see `Slots::generation`).
    used: AtomicU32,
}

impl Slot {
    pub(crate) fn new(record: Arc<Connection>, generation: u32) -> Self {
        Self {
            record: RwLock::new(record),
            flight: Singleflight::default(),
            retry: Mutex::new(RetryState::default()),
            pending: Mutex::new(None),
            lease_wait: Default::default(),
            keeper: AtomicBool::new(false),
            unreleased: Mutex::new(None),
            used: AtomicU32::new(generation),
        }
    }

    fn touch(&self, generation: u32) {
        // A load first: a hot slot's cache line is written once per
        // generation, not on every read.
        if self.used.load(Ordering::Relaxed) != generation {
            self.used.store(generation, Ordering::Relaxed);
        }
    }

    /// Whether evicting this slot would lose anything but a cached copy of
    /// the stored record: a grant not persisted yet (or its keeper), a
    /// refresh running, a lease to give back, retry state, or a caller
    /// holding it.
    fn pinned(self: &Arc<Self>) -> bool {
        // The count first: with no other holder, nobody can hold the locks
        // below either (they are reached through the slot), so taking them
        // under the map's shard lock cannot deadlock.
        if Arc::strong_count(self) > 1
            || self.flight.is_running()
            || self.has_pending()
            || self.keeping()
            || lock(&self.unreleased).is_some()
        {
            return true;
        }
        let retry = lock(&self.retry);
        retry.attempts > 0 || retry.not_before.is_some()
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
            *guard = record;
        }
        Arc::clone(&guard)
    }

    /// Whether a task holds the pending grant's lease and retries its
    /// write (`keeper.rs`).
    pub(crate) fn keeping(&self) -> bool {
        self.keeper.load(Ordering::SeqCst)
    }

    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }

    /// Whether the last refresh is in doubt: the provider may have rotated
    /// the grant without tokend reading its answer.
    pub(crate) fn in_doubt(&self) -> bool {
        lock(&self.retry).in_doubt_since.is_some()
    }
}

/// The connections this process holds in memory: a bounded cache over the
/// store, sharded so readers of different connections never contend and
/// the read path takes no global lock.
///
/// Past `capacity` slots, a pass on a blocking thread evicts the unpinned
/// slots used longest ago until a sixteenth of the capacity is free again.
/// "Ago" is counted in generations (one per 1/64 of the capacity loaded),
/// so a read costs one relaxed load, and a store once per generation. An evicted connection is read from the store on
/// its next use: the store always holds its newest record, because a record
/// is cached only after it is durable and a slot holding anything not yet
/// durable is pinned. Dropping the last reference to an evicted record
/// zeroizes its tokens (`SecretString`).
pub(crate) struct Slots {
    map: Arc<DashMap<ConnectionId, Arc<Slot>>>,
    capacity: usize,
    /// Set while an eviction pass runs, so at most one does.
    evicting: Arc<AtomicBool>,
    /// Bumped every `capacity / AGES` loads; each slot keeps the
    /// generation of its last use.
    generation: Arc<AtomicU32>,
    loads: AtomicU64,
    /// Counts evictions (`tokend_connections_evicted_total`).
    evicted: prometheus_client::metrics::counter::Counter,
    /// Bumped by every delete; a loader or an installer that raced with one
    /// does not cache, so a deleted record never comes back into memory.
    delete_epoch: AtomicU64,
}

impl Slots {
    pub(crate) fn new(
        capacity: usize,
        evicted: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Slots {
            map: Arc::new(DashMap::new()),
            capacity: capacity.max(1),
            evicting: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU32::new(0)),
            loads: AtomicU64::new(0),
            evicted,
            delete_epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, id: &ConnectionId) -> Option<Arc<Slot>> {
        self.map.get(id).map(|s| {
            s.touch(self.generation.load(Ordering::Relaxed));
            Arc::clone(&s)
        })
    }

    /// How many connections are in memory.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Inserts `record`'s slot unless one exists; returns the slot and
    /// whether it is new.
    fn insert(&self, record: Arc<Connection>) -> (Arc<Slot>, bool) {
        let mut inserted = false;
        let slot = Arc::clone(
            self.map
                .entry(record.id.clone())
                .or_insert_with(|| {
                    inserted = true;
                    Arc::new(Slot::new(record, self.generation.load(Ordering::Relaxed)))
                })
                .value(),
        );
        if inserted {
            let step = (self.capacity / AGES).max(1) as u64;
            if self.loads.fetch_add(1, Ordering::Relaxed) % step == step - 1 {
                self.generation.fetch_add(1, Ordering::Relaxed);
            }
            self.evict_if_full();
        }
        (slot, inserted)
    }

    /// Starts an eviction pass when the cache is over capacity.
    fn evict_if_full(&self) {
        if self.map.len() <= self.capacity || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let map = Arc::clone(&self.map);
        let evicting = Arc::clone(&self.evicting);
        let evicted = self.evicted.clone();
        let generation = Arc::clone(&self.generation);
        let target = self.capacity - self.capacity / 16;
        let pass = move || {
            let n = evict(&map, target, &generation);
            evicted.inc_by(n as u64);
            evicting.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(pass);
            }
            Err(_) => pass(),
        }
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
            let (slot, inserted) = self.insert(Arc::new(record));
            // A slot someone else inserted is theirs to check.
            if !inserted || self.epoch() == epoch {
                return Ok(Some(slot));
            }
            // A delete ran meanwhile: what we cached may be gone.
            self.forget_unless_busy(id, &slot);
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
        let (slot, inserted) = self.insert(Arc::clone(&record));
        let newest = slot.advance(Arc::clone(&record));
        // Only a slot inserted here can hold a deleted record: a delete of
        // this connection removes the slot that was there itself, and a
        // delete of another one says nothing about this one.
        if inserted && self.epoch() != epoch {
            self.forget_unless_busy(&record.id, &slot);
        }
        newest
    }

    /// Drops `slot` (just inserted from a read that raced with a delete)
    /// unless it already holds what the store may not: a grant not yet
    /// persisted or a refresh under way. Those finish against the store,
    /// which tells them if the connection is gone.
    fn forget_unless_busy(&self, id: &ConnectionId, slot: &Arc<Slot>) {
        self.map.remove_if(id, |_, s| {
            Arc::ptr_eq(s, slot) && !s.has_pending() && !s.flight.is_running()
        });
    }

    /// Forgets a deleted connection.
    pub(crate) fn remove(&self, id: &ConnectionId) {
        self.delete_epoch.fetch_add(1, Ordering::SeqCst);
        self.map.remove(id);
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

/// Generations told apart by eviction; older ones count as this old.
const AGES: usize = 64;

/// One eviction pass: evicts unpinned slots, oldest use first, until at
/// most `target` remain. A first pass over the
/// map counts slots per age, to find the age to evict from; the second
/// evicts with `retain`, which holds each shard's write lock while it
/// looks, so nobody can take a slot it is evicting.
fn evict(map: &DashMap<ConnectionId, Arc<Slot>>, target: usize, generation: &AtomicU32) -> usize {
    let now = generation.load(Ordering::Relaxed);
    let age =
        |slot: &Slot| (now.wrapping_sub(slot.used.load(Ordering::Relaxed)) as usize).min(AGES - 1);
    let excess = map.len().saturating_sub(target);
    if excess == 0 {
        return 0;
    }
    let mut by_age = [0usize; AGES];
    for entry in map.iter() {
        by_age[age(entry.value())] += 1;
    }
    // Evict every slot older than `cut`, and `at_cut` of those of age `cut`.
    let mut cut = AGES - 1;
    let mut older = 0;
    while cut > 0 && older + by_age[cut] < excess {
        older += by_age[cut];
        cut -= 1;
    }
    let mut at_cut = excess - older;
    let mut evicted = 0;
    map.retain(|_, slot| {
        let a = age(slot);
        if a < cut || (a == cut && at_cut == 0) || slot.pinned() {
            return true;
        }
        if a == cut {
            at_cut -= 1;
        }
        evicted += 1;
        false
    });
    evicted
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::metrics::counter::Counter;
    use secrecy::SecretString;

    use super::*;

    fn record(i: usize) -> Connection {
        tokend_store::conformance::record(&format!("c{i:05}"), 1)
    }

    async fn settle(slots: &Slots) {
        for _ in 0..1000 {
            if !slots.evicting.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("an eviction pass never ended");
    }

    /// Issue 15. Invariant: the cache stays within its capacity however
    /// many connections are read, the least recently used go first,
    /// evicted records are released (their tokens zeroized by
    /// `SecretString`'s drop), and a connection read all along stays.
    #[tokio::test]
    async fn the_cache_stays_bounded_and_releases_what_it_evicts() {
        let evicted = Counter::default();
        let slots = Slots::new(1_000, evicted.clone());
        let first = Arc::downgrade(&slots.cache(record(0), slots.epoch()));
        for i in 1..5_000 {
            slots.cache(record(i), slots.epoch());
            // A hot connection, read between every load.
            let hot = ConnectionId::new("c00001").unwrap();
            if i > 1 {
                assert!(
                    slots.get(&hot).is_some(),
                    "the hot connection was evicted at {i}"
                );
            }
            settle(&slots).await;
        }
        assert!(slots.len() <= 1_000, "{} cached", slots.len());
        assert!(evicted.get() >= 4_000, "{} evicted", evicted.get());
        assert!(
            first.upgrade().is_none(),
            "an evicted record is still held somewhere"
        );
    }

    /// Issue 25, item 4. Invariant: the cache never drops what the store
    /// does not hold. A delete of another connection while a record of this
    /// one was read (the delete epoch moved) must not remove its slot, which
    /// holds a grant not persisted yet.
    #[tokio::test]
    async fn a_delete_elsewhere_never_drops_a_pending_grant() {
        let slots = Slots::new(1_000, Counter::default());
        slots.cache(record(0), slots.epoch());
        let slot = slots.get(&ConnectionId::new("c00000").unwrap()).unwrap();
        *lock(&slot.pending) = Some(PendingGrant {
            replaced: None,
            grant: Grant::RefreshTokenOnly(SecretString::from("rt-new")),
            attempts: 1,
        });
        drop(slot);
        // A reload of c00000 reads the store...
        let epoch = slots.epoch();
        // ...while another connection is deleted...
        slots.cache(record(1), slots.epoch());
        slots.remove(&ConnectionId::new("c00001").unwrap());
        // ...and then caches what it read.
        slots.cache(record(0), epoch);
        let kept = slots
            .get(&ConnectionId::new("c00000").unwrap())
            .expect("the slot holding a pending grant is still cached");
        assert!(kept.has_pending());
        assert_eq!(slots.with_pending().len(), 1);
        // A slot that was new, idle, and raced with a delete is still
        // dropped: it may hold the deleted record.
        let epoch = slots.epoch();
        slots.remove(&ConnectionId::new("c00002").unwrap());
        slots.cache(record(2), epoch);
        assert!(slots.get(&ConnectionId::new("c00002").unwrap()).is_none());
    }

    /// Issue 15. Invariant: eviction never drops what is not in the store:
    /// a slot with a grant not persisted yet, a refresh running, retry
    /// state, or a caller holding it.
    #[tokio::test]
    async fn pinned_slots_are_never_evicted() {
        let slots = Slots::new(1_000, Counter::default());
        slots.cache(record(0), slots.epoch());
        slots.cache(record(1), slots.epoch());
        slots.cache(record(2), slots.epoch());
        let pending = slots.get(&ConnectionId::new("c00000").unwrap()).unwrap();
        *lock(&pending.pending) = Some(PendingGrant {
            replaced: None,
            grant: Grant::RefreshTokenOnly(SecretString::from("rt-new")),
            attempts: 0,
        });
        drop(pending);
        let retrying = slots.get(&ConnectionId::new("c00001").unwrap()).unwrap();
        lock(&retrying.retry).attempts = 2;
        drop(retrying);
        let held = slots.get(&ConnectionId::new("c00002").unwrap()).unwrap();
        for i in 3..3_000 {
            slots.cache(record(i), slots.epoch());
            settle(&slots).await;
        }
        // Twice with nothing touched in between: every unpinned slot goes.
        evict(&slots.map, 0, &slots.generation);
        let mut left = slots.ids();
        left.sort();
        let left: Vec<String> = left.iter().map(ToString::to_string).collect();
        assert_eq!(left, ["c00000", "c00001", "c00002"]);
        drop(held);
    }
}
