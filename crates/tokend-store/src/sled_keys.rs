//! The sled side of the key records (`key_records.rs`): the `key_checks`
//! tree (`big-endian key id -> JSON check value`), reconciled at open and at
//! every keyring swap, and extended before an import writes.

use crate::{
    StoreError, codec,
    key_records::{self, Change, InUse, Recorded},
    sealing::{Keyring, Sealed},
};

/// The tree's name.
pub(crate) const TREE: &str = "key_checks";

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// What the store records.
pub(crate) fn load(tree: &sled::Tree) -> Result<Recorded, StoreError> {
    let mut recorded = Recorded::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(backend)?;
        let id = <[u8; 4]>::try_from(key.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Backend("a key record's id is unreadable".into()))?;
        let check: Sealed = serde_json::from_slice(&value)
            .map_err(|_| StoreError::Backend(format!("key {id}'s record is unreadable")))?;
        recorded.insert(id, check);
    }
    Ok(recorded)
}

/// Applies `changes` and flushes them: durable before anything is sealed
/// with a key they record.
pub(crate) fn apply(
    db: &sled::Db,
    tree: &sled::Tree,
    changes: &[Change],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    for change in changes {
        match change {
            Change::Record(id, check) => {
                let json = serde_json::to_vec(check)
                    .map_err(|e| StoreError::Backend(format!("key record: {e}")))?;
                tree.insert(id.to_be_bytes(), json).map_err(backend)?;
                tracing::info!(key_id = id, "key recorded in the store");
            }
            Change::Forget(id) => {
                tree.remove(id.to_be_bytes()).map_err(backend)?;
                tracing::info!(
                    key_id = id,
                    "key forgotten by the store: the keys lack it and no record uses it"
                );
            }
        }
    }
    db.flush().map_err(backend)?;
    Ok(())
}

/// How many records are sealed with `key_id`.
pub(crate) fn records_on(records: &sled::Tree, key_id: u32) -> Result<usize, StoreError> {
    let mut n = 0;
    for item in records.iter() {
        let (_, bytes) = item.map_err(backend)?;
        if codec::key_ids(&bytes).contains(&key_id) {
            n += 1;
        }
    }
    Ok(n)
}

/// The key ids the records use, and which of them open with `keys`
/// (trying a few records of each).
fn in_use(records: &sled::Tree, keys: &Keyring) -> Result<InUse, StoreError> {
    let mut found = InUse::default();
    let mut tried = std::collections::BTreeMap::<u32, usize>::new();
    for item in records.iter() {
        let (key, bytes) = item.map_err(backend)?;
        let mut ids = codec::key_ids(&bytes);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            *found.records.entry(id).or_default() += 1;
            let attempts = tried.entry(id).or_default();
            if !found.opened.contains(&id) && *attempts < key_records::SAMPLES_PER_KEY {
                *attempts += 1;
                if codec::decode(&key, &bytes, keys).is_ok() {
                    found.opened.insert(id);
                }
            }
        }
    }
    Ok(found)
}

/// Makes the store's key records fit `keys` before they seal anything, or
/// refuses them (see `key_records::reconcile`). A store that has records
/// but records no key (written before key records) first records the keys
/// its records use.
pub(crate) fn reconcile(
    db: &sled::Db,
    tree: &sled::Tree,
    records: &sled::Tree,
    keys: &Keyring,
) -> Result<(), StoreError> {
    let recorded = load(tree)?;
    let changes = if recorded.is_empty() && !records.is_empty() {
        let found = in_use(records, keys)?;
        let changes = key_records::first_records(&found, keys)?;
        tracing::info!(
            keys = ?found.records.keys().collect::<Vec<_>>(),
            "recorded the keys this store's records are sealed with"
        );
        changes
    } else {
        key_records::reconcile(&recorded, keys, |id| records_on(records, id))?
    };
    apply(db, tree, &changes)
}

/// Records the keys of records about to be imported (they opened with
/// `keys`), before they are written.
pub(crate) fn record_for_import(
    db: &sled::Db,
    tree: &sled::Tree,
    keys: &Keyring,
    key_ids: impl IntoIterator<Item = u32>,
) -> Result<(), StoreError> {
    let recorded = load(tree)?;
    apply(db, tree, &key_records::for_import(&recorded, keys, key_ids))
}
