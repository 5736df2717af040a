//! An in-memory `Store` for unit tests and as the reference implementation
//! the conformance suite is checked against.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Bound,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, NewEvent, Timestamp, event};
use tokio::sync::watch;

use crate::{
    Expected, Lease, ListQuery, Store, StoreError, check_advances,
    event_log::{LogBounds, SavedCursor, Watermark},
    leases::LeaseState,
    matches,
};

/// Records in a `BTreeMap` (id order for paging). A std `Mutex`, not tokio's:
/// it is never held across an `.await` and critical sections are tiny.
/// It cannot hold an undecodable record, so `Expected::Unreadable` and
/// `replace_unreadable` always find a conflict here.
pub struct MemoryStore {
    records: Mutex<BTreeMap<ConnectionId, Connection>>,
    /// Per connection: the last lease granted (kept after release and
    /// delete, so fences keep growing).
    leases: Mutex<HashMap<ConnectionId, LeaseState>>,
    log: Mutex<Log>,
    watermark: Watermark,
    cursors: Mutex<HashMap<String, SavedCursor>>,
}

struct Log {
    id: u64,
    events: VecDeque<Event>,
    last: u64,
}

impl Log {
    /// Numbers and appends `events`; returns the last sequence number.
    fn append(&mut self, events: Vec<NewEvent>) -> u64 {
        for event in events {
            self.last += 1;
            self.events.push_back(Event {
                seq: self.last,
                event,
            });
        }
        self.last
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            records: Mutex::default(),
            leases: Mutex::default(),
            log: Mutex::new(Log {
                id: crate::event_log::new_log_id(),
                events: VecDeque::new(),
                last: 0,
            }),
            watermark: Watermark::new(0),
            cursors: Mutex::default(),
        }
    }
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
        crate::check_put(record, stored, expected)?;
        let events = event::describe(stored, record);
        records.insert(record.id.clone(), record.clone());
        let last = lock(&self.log).append(events);
        self.watermark.raise(last);
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
        let removed = records.remove(id);
        if let Some(lease) = leases.get_mut(id) {
            lease.forget();
        }
        let at = tokend_core::Clock::system().now();
        let last = lock(&self.log).append(vec![event::deleted(id.as_str(), removed.as_ref(), at)]);
        self.watermark.raise(last);
        Ok(true)
    }

    /// An id prefix is a range of the map: from the prefix (or past
    /// `after`) to the first id that does not start with it.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let records = lock(&self.records);
        let prefix = query.prefix.as_deref().filter(|p| !p.is_empty());
        let from = match prefix.map(ConnectionId::new) {
            None => None,
            Some(Ok(from)) => Some(from),
            // Every prefix of a valid id is itself a valid id: no id
            // starts with this one.
            Some(Err(_)) => return Ok(Vec::new()),
        };
        let start = match (&query.after, from) {
            (Some(after), Some(from)) if from > *after => Bound::Included(from),
            (Some(after), _) => Bound::Excluded(after.clone()),
            (None, Some(from)) => Bound::Included(from),
            (None, None) => Bound::Unbounded,
        };
        Ok(records
            .range((start, Bound::Unbounded))
            .map(|(_, c)| c)
            .take_while(|c| prefix.is_none_or(|p| c.id.as_str().starts_with(p)))
            .filter(|c| matches(query, c))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let log = lock(&self.log);
        Ok(log
            .events
            .iter()
            .skip_while(|e| e.seq <= after)
            .take_while(|e| e.seq <= up_to)
            .take(limit)
            .cloned()
            .collect())
    }

    fn event_watermark(&self) -> watch::Receiver<u64> {
        self.watermark.subscribe()
    }

    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        let log = lock(&self.log);
        Ok(LogBounds {
            log_id: log.id,
            oldest: log.events.front().map_or(log.last + 1, |e| e.seq),
            last: log.last,
        })
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        let mut log = lock(&self.log);
        let mut removed = 0;
        while let Some(first) = log.events.front() {
            if log.events.len() as u64 > keep || first.at < older_than {
                log.events.pop_front();
                removed += 1;
            } else {
                break;
            }
        }
        Ok(removed)
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        Ok(lock(&self.cursors).get(name).cloned())
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        lock(&self.cursors).insert(name.to_owned(), cursor.clone());
        Ok(())
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

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(lock(&self.leases)
            .get_mut(&lease.id)
            .is_some_and(|l| l.renew(lease.fence, ttl, now)))
    }

    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let mut leases = lock(&self.leases);
        let mut expired: Vec<ConnectionId> = leases
            .iter()
            .filter(|(_, l)| !l.released && l.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired.sort();
        expired.truncate(limit);
        for id in &expired {
            if let Some(l) = leases.get_mut(id) {
                l.expire(now);
            }
        }
        Ok(expired)
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
