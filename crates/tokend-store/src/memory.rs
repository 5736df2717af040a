//! An in-memory `Store` for unit tests and as the reference implementation
//! the conformance suite is checked against.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Timestamp};

use crate::{
    Expected, Lease, ListQuery, Store, StoreError, check_advances, leases::LeaseState, matches,
};

/// Records in a `BTreeMap` (id order for paging). A std `Mutex`, not tokio's:
/// it is never held across an `.await` and critical sections are tiny.
/// It cannot hold an undecodable record, so `Expected::Unreadable` and
/// `replace_unreadable` always find a conflict here.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<BTreeMap<ConnectionId, Connection>>,
    /// Per connection: the last lease granted (kept after release and
    /// delete, so fences keep growing).
    leases: Mutex<HashMap<ConnectionId, LeaseState>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-written record: every
    // mutation below is a single insert or remove.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        Ok(lock(&self.records).get(id).cloned())
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        check_advances(record, expected)?;
        // Lock order: leases, then records (as in every method here).
        let leases = lock(&self.leases);
        crate::leases::check_fence(&record.id, leases.get(&record.id), fence)?;
        let mut records = lock(&self.records);
        let stored = records.get(&record.id);
        let found = crate::comparable(record, stored);
        if found != expected || (expected.is_none() && stored.is_some()) {
            return Err(StoreError::Conflict {
                id: record.id.clone(),
                expected,
                found,
            });
        }
        records.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let found = lock(&self.records).get(&record.id).map(|c| c.revision);
        Err(StoreError::Conflict {
            id: record.id.clone(),
            expected: None,
            found,
        })
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let mut leases = lock(&self.leases);
        let mut records = lock(&self.records);
        let Some(stored) = records.get(id) else {
            return Ok(false);
        };
        let matches = match expected {
            Expected::Record {
                incarnation,
                revision,
            } => stored.incarnation == incarnation && stored.revision == revision,
            Expected::Unreadable => false,
        };
        if !matches {
            return Err(StoreError::Conflict {
                id: id.clone(),
                expected: match expected {
                    Expected::Record { revision, .. } => Some(revision),
                    Expected::Unreadable => None,
                },
                found: Some(stored.revision),
            });
        }
        records.remove(id);
        if let Some(lease) = leases.get_mut(id) {
            lease.forget();
        }
        Ok(true)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let records = lock(&self.records);
        let start = match &query.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        Ok(records
            .range((start, Bound::Unbounded))
            .map(|(_, c)| c)
            .filter(|c| matches(query, c))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let mut leases = lock(&self.leases);
        let Some(next) = LeaseState::grant(leases.get(id), holder, ttl, now) else {
            return Ok(None);
        };
        let lease = next.lease(id);
        leases.insert(id.clone(), next);
        Ok(Some(lease))
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        if let Some(current) = lock(&self.leases).get_mut(&lease.id) {
            current.release(lease.fence, in_doubt);
        }
        Ok(())
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let mut leases = lock(&self.leases);
        let mut ids: Vec<ConnectionId> = leases
            .iter_mut()
            .filter_map(|(id, l)| l.abandon(node_prefix).then(|| id.clone()))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(|| async { super::MemoryStore::new() }).await;
    }
}
