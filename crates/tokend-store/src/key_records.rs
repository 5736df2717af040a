//! Which keys a store's records are sealed with, recorded in the store
//! itself: a check value per key id ([`Keyring::key_check`]), never a key.
//!
//! Invariant: every key a stored record is sealed with is recorded, and a
//! process whose keys lack a recorded key that records still use refuses to
//! open the store. Without it, a process started without its key file (a
//! restart, a new replica) made a fresh key, sealed new installs with a key
//! only it had, and overwrote or deleted the records it could not read.
//!
//! Kept so: the active key is recorded before anything is sealed with it
//! (at open, and at every keyring swap); an import records the keys of the
//! records it brings; a store from before these records records the keys
//! its records use at its first open. A recorded key the keys lack is
//! forgotten once no record uses it (a retired key), and only then.

use std::collections::BTreeMap;

use crate::{
    StoreError,
    sealing::{KeyMatch, KeyOrigin, Keyring, Sealed},
};

/// What a store records: each key id with its check value.
pub type Recorded = BTreeMap<u32, Sealed>;

/// One change to a store's key records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Record (or re-record, for a key id now naming another key that no
    /// record uses) this key's check value.
    Record(u32, Sealed),
    /// Forget this key: the keys lack it and no record uses it.
    Forget(u32),
}

/// Why a store refuses a keyring. Names the key and where the keys came
/// from; never key material.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to open the store: {records} of its records are sealed with key {key_id}, {why}, or those records could never be read again"
)]
pub struct MissingKey {
    pub key_id: u32,
    pub records: usize,
    /// The keys hold another key under that id.
    pub different: bool,
    why: String,
}

impl MissingKey {
    fn new(keys: &Keyring, key_id: u32, records: usize, found: KeyMatch) -> Self {
        let different = found == KeyMatch::Different;
        let why = match (keys.origin(), different) {
            (KeyOrigin::NewFile(path), _) => format!(
                "and there is no key file at {} (no new one was written): put back the key file that sealed them, from its backup",
                path.display()
            ),
            (KeyOrigin::File(path), true) => format!(
                "and the key file {} holds another key under that id (replaced, or made afresh?): start with the key file that sealed them, from its backup",
                path.display()
            ),
            (KeyOrigin::File(path), false) => format!(
                "which the key file {} does not hold (retired while records still use it?): start with a key file that holds it",
                path.display()
            ),
            (KeyOrigin::Env, true) => {
                "and TOKEND_KEYS holds another key under that id: start with the keys that sealed them".into()
            }
            (KeyOrigin::Env, false) => {
                "which TOKEND_KEYS does not hold: start with keys that hold it".into()
            }
            (KeyOrigin::Unnamed, true) => {
                "and the keys given hold another key under that id: start with the keys that sealed them".into()
            }
            (KeyOrigin::Unnamed, false) => {
                "which the keys given do not hold: start with keys that hold it".into()
            }
        };
        MissingKey {
            key_id,
            records,
            different,
            why,
        }
    }
}

impl From<MissingKey> for StoreError {
    fn from(e: MissingKey) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Failure of a reconciliation: the keys lack a key records use, or the
/// store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    MissingKey(#[from] MissingKey),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refused> for StoreError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::MissingKey(m) => m.into(),
            Refused::Store(s) => s,
        }
    }
}

/// The changes that make `recorded` fit `keys`, about to seal with its
/// active key; or the refusal when `keys` lack a recorded key that records
/// still use. `records_on(key_id)` counts the records sealed with a key id:
/// a scan, asked only for a recorded key `keys` do not hold.
pub fn reconcile(
    recorded: &Recorded,
    keys: &Keyring,
    mut records_on: impl FnMut(u32) -> Result<usize, StoreError>,
) -> Result<Vec<Change>, Refused> {
    let mut changes = Vec::new();
    for (&key_id, check) in recorded {
        let found = keys.verify_key_check(key_id, check);
        if found == KeyMatch::Holds {
            continue;
        }
        let records = records_on(key_id)?;
        if records > 0 {
            return Err(MissingKey::new(keys, key_id, records, found).into());
        }
        changes.push(match keys.key_check(key_id) {
            Some(check) => Change::Record(key_id, check),
            None => Change::Forget(key_id),
        });
    }
    let active = keys.active_key_id();
    let recorded_active = recorded.contains_key(&active)
        && !changes
            .iter()
            .any(|c| matches!(c, Change::Forget(id) if *id == active));
    if !recorded_active && let Some(check) = keys.key_check(active) {
        changes.push(Change::Record(active, check));
    }
    Ok(changes)
}

/// What a scan of a store's records found, per key id: for a store that
/// records no key yet (written before key records existed).
#[derive(Default)]
pub struct InUse {
    /// Records per key id.
    pub records: BTreeMap<u32, usize>,
    /// Key ids of which at least one record opened with the keys.
    pub opened: std::collections::BTreeSet<u32>,
}

/// How many records per key id a scan tries to open before it concludes
/// that the keys do not hold that key (one damaged record must not decide).
pub const SAMPLES_PER_KEY: usize = 3;

/// The first key records of a store that has records but records no key:
/// every key its records use, each proven by a record that opens; or the
/// refusal naming a key the keys lack (or hold another of).
pub fn first_records(in_use: &InUse, keys: &Keyring) -> Result<Vec<Change>, Refused> {
    let mut changes = Vec::new();
    for (&key_id, &records) in &in_use.records {
        let Some(check) = keys.key_check(key_id) else {
            return Err(MissingKey::new(keys, key_id, records, KeyMatch::Missing).into());
        };
        if !in_use.opened.contains(&key_id) {
            return Err(MissingKey::new(keys, key_id, records, KeyMatch::Different).into());
        }
        changes.push(Change::Record(key_id, check));
    }
    let active = keys.active_key_id();
    if !in_use.records.contains_key(&active)
        && let Some(check) = keys.key_check(active)
    {
        changes.push(Change::Record(active, check));
    }
    Ok(changes)
}

/// The changes recording the keys in `key_ids` (of records being imported,
/// which opened with `keys`) that `recorded` lacks.
pub fn for_import(
    recorded: &Recorded,
    keys: &Keyring,
    key_ids: impl IntoIterator<Item = u32>,
) -> Vec<Change> {
    let mut wanted: Vec<u32> = key_ids
        .into_iter()
        .filter(|id| !recorded.contains_key(id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    wanted
        .into_iter()
        .filter_map(|id| keys.key_check(id).map(|check| Change::Record(id, check)))
        .collect()
}

/// The recorded key ids that `keys` do not hold (no key under that id, or
/// another key): records sealed with them cannot be opened with `keys`.
pub fn unheld(recorded: &Recorded, keys: &Keyring) -> Vec<u32> {
    recorded
        .iter()
        .filter(|(id, check)| keys.verify_key_check(**id, check) != KeyMatch::Holds)
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::KeyFile;

    fn recorded_for(keys: &Keyring, ids: &[u32]) -> Recorded {
        ids.iter()
            .map(|id| (*id, keys.key_check(*id).expect("held")))
            .collect()
    }

    /// Guards the core rule: a keyring made afresh (whose key is numbered 1
    /// too) is refused while records use the recorded key 1, and the
    /// refusal names the key and where the keys came from.
    #[test]
    fn a_fresh_key_with_a_recorded_id_is_refused_while_records_use_it() {
        let original = Keyring::ephemeral();
        let recorded = recorded_for(&original, &[1]);
        let fresh = Keyring::ephemeral().with_origin(KeyOrigin::File("/data/tokend.keys".into()));
        let refused = reconcile(&recorded, &fresh, |_| Ok(12)).expect_err("refused");
        let Refused::MissingKey(missing) = &refused else {
            panic!("{refused}");
        };
        assert!(missing.different);
        let message = refused.to_string();
        assert!(message.contains("key 1"), "{message}");
        assert!(message.contains("/data/tokend.keys"), "{message}");
        assert!(message.contains("12 of its records"), "{message}");
        // With no record on it, the new key takes the id over.
        let changes = reconcile(&recorded, &fresh, |_| Ok(0)).expect("allowed");
        assert!(matches!(changes.as_slice(), [Change::Record(1, _)]));
        // The right keys: nothing to change, and no scan.
        let changes = reconcile(&recorded, &original, |_| panic!("no scan")).expect("holds");
        assert!(changes.is_empty());
    }

    /// Guards: a retired key is forgotten only once no record uses it,
    /// and a new active key is recorded before it seals anything.
    #[test]
    fn retired_keys_are_forgotten_once_unused_and_new_ones_recorded() {
        let mut file = KeyFile::generate();
        file.rotate();
        let both = file.keyring().expect("keys");
        let recorded = recorded_for(&both, &[1]);
        let changes = reconcile(&recorded, &both, |_| panic!("no scan")).expect("ok");
        assert!(matches!(changes.as_slice(), [Change::Record(2, _)]));
        file.keys.retain(|k| k.id != 1);
        let only_new = file.keyring().expect("keys");
        let recorded = recorded_for(&both, &[1, 2]);
        assert!(matches!(
            reconcile(&recorded, &only_new, |id| Ok(if id == 1 { 3 } else { 0 })),
            Err(Refused::MissingKey(MissingKey {
                key_id: 1,
                records: 3,
                different: false,
                ..
            }))
        ));
        let changes = reconcile(&recorded, &only_new, |_| Ok(0)).expect("unused");
        assert_eq!(changes, vec![Change::Forget(1)]);
    }

    #[test]
    fn a_store_without_records_of_keys_records_those_its_records_use() {
        let mut file = KeyFile::generate();
        file.rotate();
        let keys = file.keyring().expect("keys");
        let mut in_use = InUse::default();
        in_use.records.insert(1, 5);
        in_use.opened.insert(1);
        let changes = first_records(&in_use, &keys).expect("ok");
        let ids: Vec<_> = changes
            .iter()
            .map(|c| match c {
                Change::Record(id, _) => *id,
                Change::Forget(id) => panic!("forget {id}"),
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        in_use.opened.clear();
        assert!(first_records(&in_use, &keys).is_err(), "no record opened");
        in_use.records.insert(7, 1);
        assert!(matches!(
            first_records(&in_use, &keys),
            Err(Refused::MissingKey(MissingKey { key_id: 1 | 7, .. }))
        ));
    }

    #[test]
    fn a_check_value_proves_the_key_and_reveals_nothing_of_it() {
        let file = KeyFile::generate();
        let keys = file.keyring().expect("keys");
        let check = keys.key_check(1).expect("held");
        let json = serde_json::to_string(&check).expect("json");
        assert!(!json.contains(&file.keys[0].key));
        assert_eq!(keys.verify_key_check(1, &check), KeyMatch::Holds);
        assert_eq!(
            Keyring::ephemeral().verify_key_check(1, &check),
            KeyMatch::Different
        );
        assert_eq!(keys.verify_key_check(2, &check), KeyMatch::Missing);
        assert!(keys.key_check(2).is_none());
    }
}
