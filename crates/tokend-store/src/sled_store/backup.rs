//! Backups on a sled store: pages of records exactly as stored, for
//! `tokend backup`, and the import of sealed records on restore.

use crate::{StoreError, codec, summary::Summary};

use super::*;

impl SledStore {
    /// Writes records from a backup (`(id, sealed bytes)` as exported),
    /// after checking that each one decrypts with this store's keys, so a
    /// restore with the wrong key file fails before writing anything.
    /// Records already present are overwritten. Flushed before it returns.
    pub fn import_sealed(&self, records: &[(String, Vec<u8>)]) -> Result<usize, StoreError> {
        let keys = self.inner.keys();
        let mut summaries = Vec::with_capacity(records.len());
        for (id, bytes) in records {
            let record = codec::decode(id.as_bytes(), bytes, &keys)?;
            if record.id.as_str() != id {
                return Err(StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("the record inside is {}", record.id),
                });
            }
            summaries.push(Summary::of(&record));
        }
        // Every key these records use is recorded before they land.
        crate::sled_keys::record_for_import(
            &self.inner.db,
            &self.inner.key_checks,
            &keys,
            records.iter().flat_map(|(_, bytes)| codec::key_ids(bytes)),
        )?;
        let _fencing = lock(&self.inner.fencing);
        for ((id, bytes), summary) in records.iter().zip(&summaries) {
            let key = id.as_bytes();
            loop {
                let current = self.inner.records.get(key).map_err(backend)?;
                if self
                    .inner
                    .swap_with_events(key, current, Some((bytes, summary)), Vec::new())?
                {
                    break;
                }
            }
        }
        crate::sled_commit::Flush::flush_and_publish(&*self.inner)?;
        Ok(records.len())
    }
}

pub(super) async fn export_sealed(
    store: &SledStore,
    after: Option<&str>,
    limit: usize,
) -> Result<crate::SealedPage, StoreError> {
    let after = after.map(|a| {
        let mut start = a.as_bytes().to_vec();
        start.push(0);
        start
    });
    let (page, pending) = store
        .blocking(move |inner| {
            let iter = match after {
                Some(start) => inner.records.range(start..),
                None => inner.records.iter(),
            };
            let mut records = Vec::new();
            for item in iter.take(limit) {
                let (key, bytes) = item.map_err(backend)?;
                records.push((String::from_utf8_lossy(&key).into_owned(), bytes.to_vec()));
            }
            let page = crate::SealedPage {
                format_version: FORMAT_VERSION,
                records,
            };
            Ok((page, inner.durability.pending_any()))
        })
        .await?;
    store.durable(pending).await?;
    Ok(page)
}
