//! The embedded default `Store`: sled 0.34, one tree of records and one of
//! refresh leases, every write flushed before it returns, and every sled call
//! on a blocking thread, never on the async runtime.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Timestamp};

use crate::{
    Expected, Lease, ListQuery, Store, StoreError, check_advances, codec,
    crypto::Keyring,
    leases::{LeaseState, check_fence},
    matches,
};

/// A sled database holding tokend's records. sled types stay inside this
/// module. Cheap to clone: the state is shared.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kept so the database (and its file lock) lives as long as the store.
    db: sled::Db,
    /// `connection id -> codec-encoded Connection`.
    records: sled::Tree,
    /// `connection id -> JSON LeaseState`.
    leases: sled::Tree,
    /// Seals and opens secret fields. A `put` holds the read guard from
    /// encoding to its compare-and-swap, and `set_keyring` takes the write
    /// guard: once `set_keyring` returns, every write that lands after it
    /// was sealed with the new keys, so a re-encryption pass started then
    /// misses nothing and old keys can never gain records again.
    keys: RwLock<Arc<Keyring>>,
    /// Serialises the fence check with the record swap, and lease grants
    /// with both, so no write under a stale fence can slip between a grant
    /// and its swap. sled's exclusive file lock makes this process the only
    /// writer.
    fencing: Mutex<()>,
}

/// The layout of the data dir this build writes. Bump it with a migration
/// in [`check_format`] whenever the records' encoding or the trees change.
pub const FORMAT_VERSION: u32 = 1;

/// Where the format version is kept (sled's default tree).
const FORMAT_KEY: &[u8] = b"tokend.format_version";

/// The data dir's format version: `None` for an empty dir never stamped.
pub fn format_version(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    match db.get(FORMAT_KEY).map_err(backend)? {
        None => Ok(None),
        Some(bytes) => <[u8; 4]>::try_from(bytes.as_ref())
            .map(|b| Some(u32::from_be_bytes(b)))
            .map_err(|_| StoreError::Backend("the format version is unreadable".into())),
    }
}

/// Refuses a data dir written by a newer tokend; migrates an older one
/// (format 0: written before versions were stamped, same encoding) and
/// stamps a new one.
fn check_format(db: &sled::Db, records: &sled::Tree, dir: &Path) -> Result<(), StoreError> {
    let found = match format_version(db)? {
        Some(v) => v,
        None if records.is_empty() => {
            stamp(db, FORMAT_VERSION)?;
            return Ok(());
        }
        None => 0,
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::Backend(format!(
            "the data dir {} has on-disk format {found}, written by a newer tokend; this build reads formats up to {FORMAT_VERSION}: upgrade tokend, or restore a backup made by this version",
            dir.display()
        )));
    }
    if found < FORMAT_VERSION {
        // 0 → 1: the encoding is unchanged; only the stamp is new.
        stamp(db, FORMAT_VERSION)?;
        tracing::info!(
            from = found,
            to = FORMAT_VERSION,
            dir = %dir.display(),
            "on-disk format migrated"
        );
    }
    Ok(())
}

fn stamp(db: &sled::Db, version: u32) -> Result<(), StoreError> {
    db.insert(FORMAT_KEY, &version.to_be_bytes())
        .map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, sealing secrets with `keys`.
    pub fn open(dir: &Path, keys: Keyring) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from the explicit flush after every write;
            // the periodic flush only batches sled's own bookkeeping.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                // sled locks its directory; another process holding it is
                // reported as a string (sled 0.34 formats the OS error in).
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().starts_with("could not acquire lock") =>
                {
                    StoreError::Backend(format!(
                        "the data dir {} is in use by another tokend process (its database is locked); stop that one, or give this one another --data-dir",
                        dir.display()
                    ))
                }
                e => backend(e),
            })?;
        let records = db.open_tree("connections").map_err(backend)?;
        let leases = db.open_tree("refresh_leases").map_err(backend)?;
        check_format(&db, &records, dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                records,
                leases,
                keys: RwLock::new(Arc::new(keys)),
                fencing: Mutex::new(()),
            }),
        })
    }

    /// Runs `f` on a blocking thread: sled calls block on I/O and locks.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Switches to a new keyring (after `tokend keys rotate`). It must still
    /// hold every key that sealed a stored field until [`Self::reencrypt`]
    /// has run. Waits for writes sealing with the old keyring to land.
    /// Whether the store holds no connection record.
    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    /// Writes records from a backup (`(id, sealed bytes)` as exported),
    /// after checking that each one decrypts with this store's keys, so a
    /// restore with the wrong key file fails before writing anything.
    /// Records already present are overwritten. Flushed before it returns.
    pub fn import_sealed(&self, records: &[(String, Vec<u8>)]) -> Result<usize, StoreError> {
        let keys = self.inner.keys();
        for (id, bytes) in records {
            let record = codec::decode(id.as_bytes(), bytes, &keys)?;
            if record.id.as_str() != id {
                return Err(StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("the record inside is {}", record.id),
                });
            }
        }
        for (id, bytes) in records {
            self.inner
                .records
                .insert(id.as_bytes(), bytes.as_slice())
                .map_err(backend)?;
        }
        self.inner.db.flush().map_err(backend)?;
        Ok(records.len())
    }

    pub fn set_keyring(&self, keys: Keyring) {
        *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Re-seals every record whose fields use a key other than the active
    /// one, online: each record is swapped byte-for-byte, so a concurrent
    /// write simply wins and is already sealed with the active key. Returns
    /// how many records were re-sealed.
    pub async fn reencrypt(&self) -> Result<usize, StoreError> {
        let count = self
            .blocking(|inner| {
                let keys = inner.keys();
                let active = keys.active_key_id();
                let mut count = 0;
                for item in inner.records.iter() {
                    let (key, bytes) = item.map_err(backend)?;
                    if codec::key_ids(&bytes).iter().all(|k| *k == active) {
                        continue;
                    }
                    let record = match codec::decode(&key, &bytes, &keys) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot re-encrypt an unreadable record");
                            continue;
                        }
                    };
                    if swap(
                        &inner.records,
                        &key,
                        Some(bytes),
                        Some(codec::encode(&record, &keys)),
                    )? {
                        count += 1;
                    }
                }
                Ok(count)
            })
            .await?;
        self.flush().await?;
        Ok(count)
    }

    /// How many records still use a key other than the active one.
    pub async fn records_on_old_keys(&self) -> Result<usize, StoreError> {
        self.blocking(|inner| {
            let active = inner.keys().active_key_id();
            inner.count_records(|k| k != active)
        })
        .await
    }

    /// How many records have a field sealed with `key_id`.
    pub async fn records_on_key(&self, key_id: u32) -> Result<usize, StoreError> {
        self.blocking(move |inner| inner.count_records(|k| k == key_id))
            .await
    }

    /// Makes every write so far durable.
    ///
    /// The blocking `flush` on a blocking thread, not `flush_async`:
    /// concurrent `flush_async` calls can hang in sled 0.34 (sled issues
    /// #1241, #1308), and the refresh engine flushes from several tasks.
    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.db.flush().map(|_| ()).map_err(backend))
            .await
    }
}

impl Inner {
    fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn count_records(&self, key_matches: impl Fn(u32) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.records.iter() {
            let (_, bytes) = item.map_err(backend)?;
            if codec::key_ids(&bytes).into_iter().any(&key_matches) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn lease_state(&self, key: &[u8]) -> Result<Option<LeaseState>, StoreError> {
        Ok(self
            .leases
            .get(key)
            .map_err(backend)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn set_lease(&self, key: &[u8], state: &LeaseState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.leases.insert(key, bytes).map_err(backend)?;
        Ok(())
    }

    fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = record.id.as_str().as_bytes();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let new = codec::encode(record, &keys);
        let _fencing = lock(&self.fencing);
        check_fence(&record.id, self.lease_state(key)?.as_ref(), fence)?;
        // Read, check the revision, then swap on the exact bytes read: if the
        // record changed in between, the byte-level swap fails and we look
        // again, so the revision check can never act on a stale read.
        loop {
            let current = self.records.get(key).map_err(backend)?;
            let stored = match &current {
                Some(bytes) => Some(codec::decode(key, bytes, &keys)?),
                None => None,
            };
            let found = crate::comparable(record, stored.as_ref());
            if found != expected || (expected.is_none() && stored.is_some()) {
                return Err(StoreError::Conflict {
                    id: record.id.clone(),
                    expected,
                    found,
                });
            }
            if swap(&self.records, key, current, Some(new.clone()))? {
                return Ok(());
            }
        }
    }

    /// The stored bytes of `id` if they cannot be decoded.
    fn unreadable(&self, id: &ConnectionId) -> Result<Option<sled::IVec>, StoreError> {
        let key = id.as_str().as_bytes();
        let Some(bytes) = self.records.get(key).map_err(backend)? else {
            return Ok(None);
        };
        Ok(codec::decode(key, &bytes, &self.keys())
            .is_err()
            .then_some(bytes))
    }
}

/// Compare-and-swaps `key` from `old` to `new` at the byte level.
fn swap(
    tree: &sled::Tree,
    key: &[u8],
    old: Option<sled::IVec>,
    new: Option<Vec<u8>>,
) -> Result<bool, StoreError> {
    Ok(tree
        .compare_and_swap(key, old, new)
        .map_err(backend)?
        .is_ok())
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let id = id.clone();
        self.blocking(move |inner| {
            let key = id.as_str().as_bytes();
            match inner.records.get(key).map_err(backend)? {
                Some(bytes) => codec::decode(key, &bytes, &inner.keys()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        check_advances(record, expected)?;
        let record = record.clone();
        self.blocking(move |inner| inner.put(&record, expected, fence))
            .await?;
        self.flush().await
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let record = record.clone();
        self.blocking(move |inner| {
            let conflict = |found| StoreError::Conflict {
                id: record.id.clone(),
                expected: None,
                found,
            };
            let key = record.id.as_str().as_bytes();
            let keys = inner.keys.read().unwrap_or_else(|p| p.into_inner());
            let Some(bad) = inner.unreadable(&record.id)? else {
                return Err(conflict(None));
            };
            if swap(
                &inner.records,
                key,
                Some(bad),
                Some(codec::encode(&record, &keys)),
            )? {
                Ok(())
            } else {
                Err(conflict(None))
            }
        })
        .await?;
        self.flush().await
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let id = id.clone();
        let deleted = self
            .blocking(move |inner| {
                let key = id.as_str().as_bytes();
                loop {
                    let Some(current) = inner.records.get(key).map_err(backend)? else {
                        return Ok(false);
                    };
                    let decoded = codec::decode(key, &current, &inner.keys());
                    let (ok, found) = match (&decoded, expected) {
                        (
                            Ok(r),
                            Expected::Record {
                                incarnation,
                                revision,
                            },
                        ) => (
                            r.incarnation == incarnation && r.revision == revision,
                            Some(r.revision),
                        ),
                        (Ok(r), Expected::Unreadable) => (false, Some(r.revision)),
                        (Err(_), Expected::Unreadable) => (true, None),
                        (Err(_), Expected::Record { .. }) => (false, None),
                    };
                    if !ok {
                        return Err(StoreError::Conflict {
                            id: id.clone(),
                            expected: match expected {
                                Expected::Record { revision, .. } => Some(revision),
                                Expected::Unreadable => None,
                            },
                            found,
                        });
                    }
                    if swap(&inner.records, key, Some(current), None)? {
                        break;
                    }
                }
                // The fence counter outlives the record.
                let _fencing = lock(&inner.fencing);
                if let Some(mut lease) = inner.lease_state(key)? {
                    lease.forget();
                    inner.set_lease(key, &lease)?;
                }
                Ok(true)
            })
            .await?;
        if deleted {
            self.flush().await?;
        }
        Ok(deleted)
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::SealedPage, StoreError> {
        let after = after.map(|a| {
            let mut start = a.as_bytes().to_vec();
            start.push(0);
            start
        });
        self.blocking(move |inner| {
            let iter = match after {
                Some(start) => inner.records.range(start..),
                None => inner.records.iter(),
            };
            let mut records = Vec::new();
            for item in iter.take(limit) {
                let (key, bytes) = item.map_err(backend)?;
                records.push((String::from_utf8_lossy(&key).into_owned(), bytes.to_vec()));
            }
            Ok(crate::SealedPage {
                format_version: FORMAT_VERSION,
                records,
            })
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| {
            let iter = match &query.after {
                Some(after) => {
                    let mut start = after.as_str().as_bytes().to_vec();
                    // The smallest key strictly greater than `after`.
                    start.push(0);
                    inner.records.range(start..)
                }
                None => inner.records.iter(),
            };
            let keys = inner.keys();
            let mut out = Vec::new();
            for item in iter {
                if out.len() >= query.limit {
                    break;
                }
                let (key, bytes) = item.map_err(backend)?;
                match codec::decode(&key, &bytes, &keys) {
                    Ok(c) if matches(&query, &c) => out.push(c),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "skipping unreadable connection record"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let id = id.clone();
        let holder = holder.to_owned();
        let granted = self
            .blocking(move |inner| {
                let key = id.as_str().as_bytes();
                let _fencing = lock(&inner.fencing);
                let last = inner.lease_state(key)?;
                let Some(next) = LeaseState::grant(last.as_ref(), &holder, ttl, now) else {
                    return Ok(None);
                };
                inner.set_lease(key, &next)?;
                Ok(Some(next.lease(&id)))
            })
            .await?;
        if granted.is_some() {
            // Flushed: the lease is the refresh's durable intent, found
            // again after a crash between the provider call and the commit.
            self.flush().await?;
        }
        Ok(granted)
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        // Not flushed: the next flush (any write's) carries it. Lost in a
        // crash, it only makes the next refresh look in doubt, which costs
        // nothing unless that refresh is refused.
        let lease = lease.clone();
        self.blocking(move |inner| {
            let key = lease.id.as_str().as_bytes();
            let _fencing = lock(&inner.fencing);
            if let Some(mut state) = inner.lease_state(key)?
                && state.release(lease.fence, in_doubt)
            {
                inner.set_lease(key, &state)?;
            }
            Ok(())
        })
        .await
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let prefix = node_prefix.to_owned();
        let ids = self
            .blocking(move |inner| {
                let _fencing = lock(&inner.fencing);
                let mut ids = Vec::new();
                for item in inner.leases.iter() {
                    let (key, bytes) = item.map_err(backend)?;
                    let Ok(mut state) = serde_json::from_slice::<LeaseState>(&bytes) else {
                        continue;
                    };
                    if state.abandon(&prefix) {
                        inner.set_lease(&key, &state)?;
                        if let Ok(id) = ConnectionId::new(String::from_utf8_lossy(&key)) {
                            ids.push(id);
                        }
                    }
                }
                Ok(ids)
            })
            .await?;
        self.flush().await?;
        Ok(ids)
    }
}

#[cfg(test)]
#[path = "sled_store_tests.rs"]
mod tests;
