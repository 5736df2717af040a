//! The embedded default `Store`: sled 0.34, one tree of records and one of
//! refresh leases, every write flushed before it returns.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokend_core::{Connection, ConnectionId, Timestamp};

use crate::{Lease, ListQuery, Store, StoreError, check_advances, codec, crypto::Keyring, matches};

/// A sled database holding tokend's records. sled types stay inside this
/// module.
pub struct SledStore {
    /// Kept so the database (and its file lock) lives as long as the store.
    db: sled::Db,
    /// `connection id -> codec-encoded Connection`.
    records: sled::Tree,
    /// `connection id -> JSON StoredLease`.
    leases: sled::Tree,
    /// Seals and opens secret fields. Swapped whole when keys rotate; a
    /// std `RwLock` held only to clone the `Arc`.
    keys: RwLock<Arc<Keyring>>,
}

#[derive(Serialize, Deserialize)]
struct StoredLease {
    holder: String,
    fence: u64,
    expires_at: Timestamp,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
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
            .map_err(backend)?;
        let records = db.open_tree("connections").map_err(backend)?;
        let leases = db.open_tree("refresh_leases").map_err(backend)?;
        Ok(Self {
            db,
            records,
            leases,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Switches to a new keyring (after `tokend keys rotate`). It must still
    /// hold every key that sealed a stored field until [`Self::reencrypt`]
    /// has run.
    pub fn set_keyring(&self, keys: Keyring) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Re-seals every record whose fields use a key other than the active
    /// one, online: each record is swapped byte-for-byte, so a concurrent
    /// write simply wins and is already sealed with the active key. Returns
    /// how many records were re-sealed.
    pub async fn reencrypt(&self) -> Result<usize, StoreError> {
        let keys = self.keys();
        let active = keys.active_key_id();
        let mut count = 0;
        for item in self.records.iter() {
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
            if Self::swap(
                &self.records,
                &key,
                Some(bytes),
                Some(codec::encode(&record, &keys)),
            )? {
                count += 1;
            }
        }
        self.flush().await?;
        Ok(count)
    }

    /// How many records still use a key other than the active one.
    pub fn records_on_old_keys(&self) -> Result<usize, StoreError> {
        let active = self.keys().active_key_id();
        let mut n = 0;
        for item in self.records.iter() {
            let (_, bytes) = item.map_err(backend)?;
            if codec::key_ids(&bytes).iter().any(|k| *k != active) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Makes every write so far durable.
    ///
    /// The blocking `flush` on a blocking thread, not `flush_async`:
    /// concurrent `flush_async` calls can hang in sled 0.34 (sled issues
    /// #1241, #1308), and the refresh engine flushes from several tasks.
    async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Backend(format!("flush task failed: {e}")))?
            .map_err(backend)?;
        Ok(())
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
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let key = id.as_str().as_bytes();
        match self.records.get(key).map_err(backend)? {
            Some(bytes) => codec::decode(key, &bytes, &self.keys()).map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, record: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
        check_advances(record, expected)?;
        let key = record.id.as_str().as_bytes();
        let keys = self.keys();
        let new = codec::encode(record, &keys);
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
            if Self::swap(&self.records, key, current, Some(new.clone()))? {
                break;
            }
        }
        self.flush().await
    }

    async fn delete(&self, id: &ConnectionId, expected: Option<u64>) -> Result<bool, StoreError> {
        let key = id.as_str().as_bytes();
        loop {
            let Some(current) = self.records.get(key).map_err(backend)? else {
                return Ok(false);
            };
            if let Some(e) = expected {
                let found = codec::decode(key, &current, &self.keys())?.revision;
                if found != e {
                    return Err(StoreError::Conflict {
                        id: id.clone(),
                        expected,
                        found: Some(found),
                    });
                }
            }
            if Self::swap(&self.records, key, Some(current), None)? {
                break;
            }
        }
        self.leases.remove(key).map_err(backend)?;
        self.flush().await?;
        Ok(true)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let iter = match &query.after {
            Some(after) => {
                let mut start = after.as_str().as_bytes().to_vec();
                // The smallest key strictly greater than `after`.
                start.push(0);
                self.records.range(start..)
            }
            None => self.records.iter(),
        };
        let keys = self.keys();
        let mut out = Vec::new();
        for item in iter {
            if out.len() >= query.limit {
                break;
            }
            let (key, bytes) = item.map_err(backend)?;
            match codec::decode(&key, &bytes, &keys) {
                Ok(c) if matches(query, &c) => out.push(c),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "skipping unreadable connection record"),
            }
        }
        Ok(out)
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let key = id.as_str().as_bytes();
        loop {
            let current = self.leases.get(key).map_err(backend)?;
            let last: Option<StoredLease> = match &current {
                Some(bytes) => serde_json::from_slice(bytes).ok(),
                None => None,
            };
            if last
                .as_ref()
                .is_some_and(|l| l.holder != holder && l.expires_at > now)
            {
                return Ok(None);
            }
            let lease = StoredLease {
                holder: holder.to_owned(),
                fence: last.as_ref().map_or(1, |l| l.fence + 1),
                expires_at: now.saturating_add(ttl),
            };
            let bytes =
                serde_json::to_vec(&lease).map_err(|e| StoreError::Backend(e.to_string()))?;
            if Self::swap(&self.leases, key, current, Some(bytes))? {
                // Not flushed: a lease lost in a crash only costs a possible
                // duplicate provider call, which the revision CAS makes safe.
                return Ok(Some(Lease {
                    id: id.clone(),
                    holder: lease.holder,
                    fence: lease.fence,
                    expires_at: lease.expires_at,
                }));
            }
        }
    }

    async fn release_refresh_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.id.as_str().as_bytes();
        loop {
            let Some(current) = self.leases.get(key).map_err(backend)? else {
                return Ok(());
            };
            let Ok(mut stored) = serde_json::from_slice::<StoredLease>(&current) else {
                return Ok(());
            };
            if stored.fence != lease.fence {
                return Ok(());
            }
            stored.expires_at = Timestamp::from_unix_millis(i64::MIN);
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| StoreError::Backend(e.to_string()))?;
            if Self::swap(&self.leases, key, Some(current), Some(bytes))? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyFile;

    /// Every byte of every file under `dir`.
    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.extend(std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[tokio::test]
    async fn no_secret_reaches_the_disk_in_plaintext() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
        let mut secrets = Vec::new();
        for i in 0..20 {
            let r = crate::conformance::record(&format!("conn-{i}"), 1);
            secrets.push(r.tokens.access_token.expose_secret().to_owned());
            secrets.push(
                r.tokens
                    .refresh_token
                    .as_ref()
                    .unwrap()
                    .expose_secret()
                    .to_owned(),
            );
            store.put(&r, None).await.unwrap();
        }
        drop(store);
        let bytes = all_bytes(dir.path());
        assert!(contains(&bytes, "conn-7"), "the scan does see the data");
        for s in &secrets {
            assert!(!contains(&bytes, s), "{s} found in plaintext");
        }
    }

    #[tokio::test]
    async fn rotation_reencrypts_online_and_old_keys_decrypt_meanwhile() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let mut file = KeyFile::generate();
        let store = SledStore::open(dir.path(), file.keyring().unwrap()).unwrap();
        for i in 0..5 {
            store
                .put(&crate::conformance::record(&format!("r{i}"), 1), None)
                .await
                .unwrap();
        }
        file.rotate();
        store.set_keyring(file.keyring().unwrap());
        assert_eq!(store.records_on_old_keys().unwrap(), 5);
        let id = ConnectionId::new("r3").unwrap();
        assert_eq!(
            store
                .get(&id)
                .await
                .unwrap()
                .unwrap()
                .tokens
                .access_token
                .expose_secret(),
            "at-r3-1"
        );
        assert_eq!(store.reencrypt().await.unwrap(), 5);
        assert_eq!(store.records_on_old_keys().unwrap(), 0);
        // Now the old key can go.
        let active = file.active;
        file.keys.retain(|k| k.id == active);
        store.set_keyring(file.keyring().unwrap());
        assert_eq!(
            store
                .get(&id)
                .await
                .unwrap()
                .unwrap()
                .tokens
                .access_token
                .expose_secret(),
            "at-r3-1"
        );
    }

    #[tokio::test]
    async fn a_tampered_field_is_an_error_for_that_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
        store
            .put(&crate::conformance::record("a", 1), None)
            .await
            .unwrap();
        store
            .put(&crate::conformance::record("b", 1), None)
            .await
            .unwrap();
        // Copy b's sealed access token onto a: the associated data no longer
        // matches, so a fails to decrypt and b is untouched.
        let mut a: serde_json::Value =
            serde_json::from_slice(&store.records.get(b"a").unwrap().unwrap()).unwrap();
        let b: serde_json::Value =
            serde_json::from_slice(&store.records.get(b"b").unwrap().unwrap()).unwrap();
        a["access_token"] = b["access_token"].clone();
        store
            .records
            .insert(b"a", serde_json::to_vec(&a).unwrap())
            .unwrap();
        let err = store
            .get(&ConnectionId::new("a").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            store
                .get(&ConnectionId::new("b").unwrap())
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::conformance::run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("db{n}"));
            async move { SledStore::open(&path, Keyring::ephemeral()).unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let record = crate::conformance::record("persisted", 1);
        let keys = KeyFile::generate();
        {
            let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
            store.put(&record, None).await.unwrap();
        }
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        let back = store.get(&record.id).await.unwrap().unwrap();
        assert_eq!(back.revision, 1);
        use secrecy::ExposeSecret;
        assert_eq!(
            back.tokens.refresh_token.unwrap().expose_secret(),
            record.tokens.refresh_token.unwrap().expose_secret()
        );
    }

    #[tokio::test]
    async fn a_corrupt_record_is_an_error_for_that_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
        store
            .put(&crate::conformance::record("good", 1), None)
            .await
            .unwrap();
        store.records.insert(b"bad", &b"{not json"[..]).unwrap();
        let bad = ConnectionId::new("bad").unwrap();
        assert!(matches!(
            store.get(&bad).await,
            Err(StoreError::Corrupt { .. })
        ));
        let all = store
            .list(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id.as_str(), "good");
    }
}
