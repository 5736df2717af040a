//! Keys on a sled store: the keyring swap and re-encryption after a
//! rotation, and counts of records per key.

use std::sync::Arc;

use crate::{StoreError, codec, sealing::Keyring};

use super::*;

impl SledStore {
    /// The key new writes are sealed with.
    pub fn active_key_id(&self) -> u32 {
        self.inner.keys().active_key_id()
    }

    /// Every key the current keyring can open.
    pub fn key_ids(&self) -> Vec<u32> {
        self.inner.keys().key_ids()
    }

    /// Switches to a new keyring (after `tokend keys rotate`). It must still
    /// hold every key that sealed a stored field until [`Self::reencrypt`]
    /// has run. Waits for writes sealing with the old keyring to land.
    ///
    /// Its active key is recorded in the store before anything is sealed
    /// with it, and a keyring that lacks a recorded key some record still
    /// uses is refused (the current one is kept): see `key_records.rs`.
    pub async fn set_keyring(&self, keys: Keyring) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            // Under the write guard: no write seals with either keyring
            // while the records are checked and changed.
            let mut current = inner.keys.write().unwrap_or_else(|p| p.into_inner());
            crate::sled_keys::reconcile(&inner.db, &inner.key_checks, &inner.records, &keys)?;
            *current = Arc::new(keys);
            Ok(())
        })
        .await
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
}
