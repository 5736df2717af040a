//! The data dir's on-disk format: its version stamp, the migrations at
//! open, and the re-sealing of records sealed before the binding.

use std::path::Path;

use crate::{StoreError, codec, sealing::Keyring};

use super::*;

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
pub(super) fn check_format(
    db: &sled::Db,
    records: &sled::Tree,
    index: &sled::Tree,
    dir: &Path,
    keys: &Keyring,
) -> Result<(), StoreError> {
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
        // 1 → 2: the event log starts empty (opened by the caller).
        // 2 → 3: the index is built from the records, without opening a
        // token; a rebuild cut off by a crash starts again (the stamp is
        // written last).
        // 3 → 4: every record is re-sealed under the binding (the summaries
        // do not change); one cut off by a crash starts again, skipping the
        // records already re-sealed.
        let started = std::time::Instant::now();
        let indexed = if found < 3 {
            crate::sled_index::rebuild(records, index)?
        } else {
            0
        };
        let resealed = if found < BOUND_FORMAT {
            reseal_unbound(records, keys)?
        } else {
            0
        };
        db.flush().map_err(backend)?;
        stamp(db, FORMAT_VERSION)?;
        tracing::info!(
            from = found,
            to = FORMAT_VERSION,
            dir = %dir.display(),
            indexed,
            resealed,
            took_ms = started.elapsed().as_millis() as u64,
            "on-disk format migrated"
        );
    }
    Ok(())
}

/// Re-seals every record sealed before the binding (format 3 and older)
/// under it, at open, before anything else can write. Returns how many.
///
/// Stops at the first record that does not open, and the format stays
/// old: a wrong key file must not leave every record unreadable for good,
/// and a record forged in the old form (under a key made with the binding,
/// or after a reset stamp) must not be let in. The pending batch is
/// dropped; earlier batches stay valid (bound records), and the next open
/// goes on from there.
pub(super) fn reseal_unbound(records: &sled::Tree, keys: &Keyring) -> Result<usize, StoreError> {
    let mut resealed = 0;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in records.iter() {
        let (key, bytes) = item.map_err(backend)?;
        match codec::upgrade(&key, &bytes, keys) {
            Ok(None) => {}
            Ok(Some(bound)) => {
                batch.insert(key, bound);
                resealed += 1;
                in_batch += 1;
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "the upgrade to on-disk format {BOUND_FORMAT} re-seals every record, and one does not open ({e}); start with the key file (or TOKEND_KEYS) that sealed it, or remove that connection with the tokend that wrote it"
                )));
            }
        }
        if in_batch == 1000 {
            records
                .apply_batch(std::mem::take(&mut batch))
                .map_err(backend)?;
            in_batch = 0;
        }
    }
    records.apply_batch(batch).map_err(backend)?;
    Ok(resealed)
}

pub(super) fn stamp(db: &sled::Db, version: u32) -> Result<(), StoreError> {
    db.insert(FORMAT_KEY, &version.to_be_bytes())
        .map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}
