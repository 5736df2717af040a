//! A `Store` wrapper that injects faults (fail before or after a write,
//! hang, slow flush) into chosen operations, or makes chosen records read
//! as undecodable, for tests of what the engine does when the disk
//! misbehaves.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Timestamp};
use tokio::sync::watch;

use crate::{Expected, ListQuery, Store, StoreError, wrapper::BoxFuture};

/// The store operations a fault can be armed for: one per method (see
/// [`crate::Op`]); `census` is armed under `Summaries`.
pub use crate::wrapper::Op;

/// What an armed operation does instead of succeeding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails without touching the inner store.
    BeforeWrite,
    /// Lets the inner store apply the write, then fails anyway (sled: the
    /// swap landed, the flush failed).
    AfterWrite,
    /// Never completes until [`FaultStore::heal`]; then goes through.
    Hang,
    /// Waits this long, then goes through (a slow flush).
    Slow(Duration),
}

#[derive(Default)]
struct Book {
    /// Faults armed per operation, with how many calls they still hit
    /// (`None`: until healed).
    armed: HashMap<Op, (Fault, Option<usize>)>,
    calls: HashMap<Op, usize>,
    faulted: HashMap<Op, usize>,
    /// Records that read as undecodable ([`FaultStore::garble`]).
    garbled: HashSet<ConnectionId>,
    /// The store's own clock ([`FaultStore::set_fleet_clock`]).
    fleet_clock: Option<tokend_core::Clock>,
}

/// Wraps `S`, forwarding every call unless a fault is armed for it.
pub struct FaultStore<S> {
    inner: S,
    book: Mutex<Book>,
    /// Bumped by `heal`, releasing hung calls.
    healed: watch::Sender<u64>,
    /// Says the store is shared (see [`FaultStore::set_shared`]).
    shared: std::sync::atomic::AtomicBool,
}

impl<S: Store> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            book: Mutex::new(Book::default()),
            healed: watch::Sender::new(0),
            shared: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes the store say it is shared by several processes, so engines
    /// on one in-memory store behave as replicas on one database do
    /// (following the event log, sweeping expired leases).
    pub fn set_shared(&self, shared: bool) {
        self.shared
            .store(shared, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives the store a clock of its own, as a database has: `fleet_now`
    /// reads `clock` (which a test can step with `observe_wall`) instead of
    /// the inner store's. `None`: the inner store's again.
    pub fn set_fleet_clock(&self, clock: Option<tokend_core::Clock>) {
        self.book().fleet_clock = clock;
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` calls of `op` get `fault`.
    pub fn arm(&self, op: Op, fault: Fault, times: usize) {
        self.book().armed.insert(op, (fault, Some(times)));
    }

    /// Every call of `op` gets `fault` until [`FaultStore::heal`].
    pub fn arm_always(&self, op: Op, fault: Fault) {
        self.book().armed.insert(op, (fault, None));
    }

    /// Clears every fault and releases hung calls.
    pub fn heal(&self) {
        self.book().armed.clear();
        self.healed.send_modify(|n| *n += 1);
    }

    /// From now on the stored record of `id` reads as undecodable (`get`
    /// and `put` answer `Corrupt`, listings skip it), as one sealed with a
    /// key this process lacks, or damaged, would; until it is replaced
    /// (`replace_unreadable`) or deleted as unreadable
    /// (`Expected::Unreadable`), which then act on the inner record.
    pub fn garble(&self, id: &ConnectionId) {
        self.book().garbled.insert(id.clone());
    }

    fn is_garbled(&self, id: &ConnectionId) -> bool {
        self.book().garbled.contains(id)
    }

    /// Calls of `op` so far, faulted or not.
    pub fn calls(&self, op: Op) -> usize {
        self.book().calls.get(&op).copied().unwrap_or(0)
    }

    /// Calls of `op` that got a fault.
    pub fn faulted(&self, op: Op) -> usize {
        self.book().faulted.get(&op).copied().unwrap_or(0)
    }

    /// Counts the call and takes the fault armed for it, if any.
    fn take(&self, op: Op) -> Option<Fault> {
        let mut book = self.book();
        *book.calls.entry(op).or_default() += 1;
        let (fault, left) = book.armed.get(&op).copied()?;
        match left {
            Some(0) => {
                book.armed.remove(&op);
                return None;
            }
            Some(n) => {
                if n == 1 {
                    book.armed.remove(&op);
                } else {
                    book.armed.insert(op, (fault, Some(n - 1)));
                }
            }
            None => {}
        }
        *book.faulted.entry(op).or_default() += 1;
        Some(fault)
    }

    /// Runs `call` through the fault armed for `op`.
    async fn through<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.take(op) {
            None => call.await,
            Some(Fault::BeforeWrite) => Err(injected(op, "before the write")),
            Some(Fault::AfterWrite) => {
                call.await?;
                Err(injected(op, "after the write"))
            }
            Some(Fault::Hang) => {
                let mut healed = self.healed.subscribe();
                let seen = *healed.borrow_and_update();
                while *healed.borrow_and_update() == seen {
                    if healed.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                call.await
            }
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                call.await
            }
        }
    }
}

fn garbled(id: &ConnectionId) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: "injected: the record does not decode".into(),
    }
}

fn injected(op: Op, when: &str) -> StoreError {
    StoreError::Backend(format!("injected fault in {op:?} {when}"))
}

/// Every call goes through the fault armed for its operation; the methods
/// below also honour [`FaultStore::garble`], [`FaultStore::set_shared`]
/// and [`FaultStore::set_fleet_clock`].
#[async_trait]
impl<S: Store> crate::wrapper::StoreWrapper for FaultStore<S> {
    type Target = S;
    type Inner<'a> = &'a S;

    fn inner(&self) -> &S {
        &self.inner
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _: &'a &S,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let op = match op {
            Op::Census => Op::Summaries,
            op => op,
        };
        Box::pin(self.through(op, call))
    }

    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let read = self.through(Op::Get, self.inner.get(id)).await?;
        if read.is_some() && self.is_garbled(id) {
            return Err(garbled(id));
        }
        Ok(read)
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        if self.is_garbled(&record.id) {
            // A backend decodes what it replaces, and fails.
            return Err(garbled(&record.id));
        }
        self.through(Op::Put, self.inner.put(record, expected, fence))
            .await
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        if !self.is_garbled(&record.id) {
            return self
                .through(Op::ReplaceUnreadable, self.inner.replace_unreadable(record))
                .await;
        }
        self.through(Op::ReplaceUnreadable, async {
            if let Some(old) = self.inner.get(&record.id).await? {
                self.inner
                    .delete(
                        &record.id,
                        Expected::Record {
                            incarnation: old.incarnation,
                            revision: old.revision,
                        },
                    )
                    .await?;
            }
            self.inner.put(record, None, None).await
        })
        .await?;
        self.book().garbled.remove(&record.id);
        Ok(())
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        if !self.is_garbled(id) {
            return self
                .through(Op::Delete, self.inner.delete(id, expected))
                .await;
        }
        let Expected::Unreadable = expected else {
            return Err(StoreError::Conflict {
                id: id.clone(),
                expected: None,
                found: None,
            });
        };
        let deleted = self
            .through(Op::Delete, async {
                match self.inner.get(id).await? {
                    Some(old) => {
                        self.inner
                            .delete(
                                id,
                                Expected::Record {
                                    incarnation: old.incarnation,
                                    revision: old.revision,
                                },
                            )
                            .await
                    }
                    None => Ok(false),
                }
            })
            .await?;
        self.book().garbled.remove(id);
        Ok(deleted)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let mut page = self.through(Op::List, self.inner.list(query)).await?;
        page.retain(|c| !self.is_garbled(&c.id));
        Ok(page)
    }

    fn shared(&self) -> bool {
        self.inner.shared() || self.shared.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        let clock = self.book().fleet_clock.clone();
        self.through(Op::FleetClock, async {
            match clock {
                Some(clock) => Ok(Some(clock.now())),
                None => self.inner.fleet_now().await,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::{MemoryStore, conformance::record};

    #[tokio::test]
    async fn faults_hit_as_armed() {
        let store = FaultStore::new(MemoryStore::new());
        let r = record("f", 1);
        store.arm(Op::Put, Fault::BeforeWrite, 1);
        assert!(store.put(&r, None, None).await.is_err());
        assert!(store.inner().get(&r.id).await.unwrap().is_none());
        store.arm(Op::Put, Fault::AfterWrite, 1);
        assert!(store.put(&r, None, None).await.is_err());
        assert!(store.inner().get(&r.id).await.unwrap().is_some(), "landed");
        assert_eq!((store.calls(Op::Put), store.faulted(Op::Put)), (2, 2));
        let mut next = r.next_revision(r.updated_at);
        next.revision = 2;
        store.put(&next, Some(1), None).await.expect("disarmed");
    }

    #[tokio::test(start_paused = true)]
    async fn hung_calls_go_through_once_healed() {
        let store = Arc::new(FaultStore::new(MemoryStore::new()));
        store.arm_always(Op::Get, Fault::Hang);
        let id = ConnectionId::new("h").unwrap();
        let hung = {
            let store = Arc::clone(&store);
            let id = id.clone();
            tokio::spawn(async move { store.get(&id).await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!hung.is_finished());
        store.heal();
        assert!(hung.await.unwrap().unwrap().is_none());
    }
}
