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

use crate::{Lease, ListQuery, Store, StoreError, check_advances, matches};

/// Records in a `BTreeMap` (id order for paging). A std `Mutex`, not tokio's:
/// it is never held across an `.await` and critical sections are tiny.
#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<BTreeMap<ConnectionId, Connection>>,
    /// Per connection: the last lease granted (kept after release so fences
    /// keep growing).
    leases: Mutex<HashMap<ConnectionId, Lease>>,
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

    async fn put(&self, record: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
        check_advances(record, expected)?;
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

    async fn delete(&self, id: &ConnectionId, expected: Option<u64>) -> Result<bool, StoreError> {
        let mut records = lock(&self.records);
        let found = records.get(id).map(|c| c.revision);
        match (found, expected) {
            (None, _) => Ok(false),
            (Some(f), Some(e)) if f != e => Err(StoreError::Conflict {
                id: id.clone(),
                expected,
                found,
            }),
            _ => Ok(records.remove(id).is_some()),
        }
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
        let last = leases.get(id);
        if last.is_some_and(|l| l.holder != holder && l.expires_at > now) {
            return Ok(None);
        }
        let lease = Lease {
            id: id.clone(),
            holder: holder.to_owned(),
            fence: last.map_or(1, |l| l.fence + 1),
            expires_at: now.saturating_add(ttl),
        };
        leases.insert(id.clone(), lease.clone());
        Ok(Some(lease))
    }

    async fn release_refresh_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut leases = lock(&self.leases);
        if let Some(current) = leases.get_mut(&lease.id)
            && current.fence == lease.fence
        {
            current.expires_at = Timestamp::from_unix_millis(i64::MIN);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(|| async { super::MemoryStore::new() }).await;
    }
}
