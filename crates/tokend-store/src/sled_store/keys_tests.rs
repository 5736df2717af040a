//! Issue 25, item 5: the sled store's key records, against real data dirs.

use super::*;
use crate::{
    sealing::{KeyFile, KeyOrigin},
    sled_keys,
};

fn keyring(file: &KeyFile, origin: KeyOrigin) -> Keyring {
    file.keyring().unwrap().with_origin(origin)
}

async fn put_records(store: &SledStore, prefix: &str, n: usize) {
    for i in 0..n {
        store
            .put(
                &crate::conformance::record(&format!("{prefix}{i}"), 1),
                None,
                None,
            )
            .await
            .unwrap();
    }
}

/// Invariant: a process whose keys lack the key the records are sealed
/// with (here: a key file made afresh, whose key is numbered 1 too) cannot
/// open the store, and the refusal names the key and where the keys came
/// from; it writes nothing. Before, the store opened, sealed new records
/// with a key only that process had, and let it overwrite the others.
#[tokio::test]
async fn a_store_refuses_keys_that_lack_the_one_its_records_use() {
    let dir = tempfile::tempdir().unwrap();
    let original = KeyFile::generate();
    {
        let store = SledStore::open(dir.path(), original.keyring().unwrap()).unwrap();
        put_records(&store, "r", 3).await;
    }
    let fresh = KeyFile::generate();
    let refused = SledStore::open(
        dir.path(),
        keyring(&fresh, KeyOrigin::File("/srv/tokend/tokend.keys".into())),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(refused.contains("sealed with key 1"), "{refused}");
    assert!(refused.contains("/srv/tokend/tokend.keys"), "{refused}");
    assert!(refused.contains("store: 3 of its records"), "{refused}");
    // Keys that lack key 1 altogether (only a key 2) are refused too.
    let mut other = KeyFile::generate();
    other.rotate();
    other.keys.retain(|k| k.id == 2);
    let refused = SledStore::open(dir.path(), keyring(&other, KeyOrigin::Env))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("which TOKEND_KEYS does not hold"),
        "{refused}"
    );
    // Nothing was written: the right keys open every record.
    let store = SledStore::open(dir.path(), original.keyring().unwrap()).unwrap();
    for i in 0..3 {
        let id = ConnectionId::new(format!("r{i}")).unwrap();
        assert!(store.get(&id).await.unwrap().is_some());
    }
    assert_eq!(
        sled_keys::load(&store.inner.key_checks)
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [&1]
    );
}

/// An empty store (or one whose key was never used) takes new keys: a
/// first start that died before its key file was written is not stuck.
#[tokio::test]
async fn a_store_no_record_uses_takes_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path(), Keyring::ephemeral()).unwrap());
    let file = KeyFile::generate();
    let store = SledStore::open(dir.path(), file.keyring().unwrap()).expect("no record");
    put_records(&store, "n", 1).await;
    drop(store);
    assert!(SledStore::open(dir.path(), Keyring::ephemeral()).is_err());
    assert!(SledStore::open(dir.path(), file.keyring().unwrap()).is_ok());
}

/// Invariants: a rotation records its new key before anything is sealed
/// with it; a keyring that drops a key records still use is refused and
/// the current one kept; a retired key is forgotten once no record uses
/// it, so keys without it open the store.
#[tokio::test]
async fn rotation_keeps_the_key_records_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = KeyFile::generate();
    let store = SledStore::open(dir.path(), file.keyring().unwrap()).unwrap();
    put_records(&store, "k", 4).await;
    file.rotate();
    store.set_keyring(file.keyring().unwrap()).await.unwrap();
    let recorded = sled_keys::load(&store.inner.key_checks).unwrap();
    assert_eq!(recorded.keys().collect::<Vec<_>>(), [&1, &2]);
    // Key 1 dropped while records still use it: refused, old keys kept.
    let mut only_new = KeyFile::parse(&serde_json::to_vec(&file).unwrap()).unwrap();
    only_new.keys.retain(|k| k.id == 2);
    let refused = store
        .set_keyring(only_new.keyring().unwrap())
        .await
        .expect_err("records use key 1");
    assert!(refused.to_string().contains("key 1"), "{refused}");
    let id = ConnectionId::new("k0").unwrap();
    assert!(store.get(&id).await.unwrap().is_some(), "old keys kept");
    // Re-encrypted: key 1 is unused, so it goes.
    assert_eq!(store.reencrypt().await.unwrap(), 4);
    store
        .set_keyring(only_new.keyring().unwrap())
        .await
        .unwrap();
    assert_eq!(
        sled_keys::load(&store.inner.key_checks)
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [&2]
    );
    drop(store);
    let store = SledStore::open(dir.path(), only_new.keyring().unwrap()).unwrap();
    assert!(store.get(&id).await.unwrap().is_some());
}

/// Invariant: a data dir written before key records existed records, at
/// its first open, the keys its records use, proven by a record that
/// opens; keys that open none of them are refused. Before, such a dir
/// opened with any keys.
#[tokio::test]
async fn a_store_from_before_key_records_records_the_keys_its_records_use() {
    let dir = tempfile::tempdir().unwrap();
    let file = KeyFile::generate();
    {
        let store = SledStore::open(dir.path(), file.keyring().unwrap()).unwrap();
        put_records(&store, "old", 5).await;
        // As every earlier build left it: no key records.
        store.inner.key_checks.clear().unwrap();
        store.inner.db.flush().unwrap();
    }
    let refused = SledStore::open(dir.path(), Keyring::ephemeral())
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("store: 5 of its records"), "{refused}");
    let store = SledStore::open(dir.path(), file.keyring().unwrap()).unwrap();
    assert_eq!(
        sled_keys::load(&store.inner.key_checks)
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [&1]
    );
}

/// Invariant: an import records the keys of the records it brings before
/// writing them, so keys that lack one of those are refused later. Before,
/// records sealed with an old key could land in a store recording only
/// the active one, and a start without the old key would open it.
#[tokio::test]
async fn an_import_records_the_keys_of_the_records_it_brings() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut file = KeyFile::generate();
    let exported = {
        let source = SledStore::open(source_dir.path(), file.keyring().unwrap()).unwrap();
        put_records(&source, "i", 2).await;
        source.export_sealed(None, 10).await.unwrap().records
    };
    file.rotate();
    let target_dir = tempfile::tempdir().unwrap();
    {
        let target = SledStore::open(target_dir.path(), file.keyring().unwrap()).unwrap();
        target.import_sealed(&exported).unwrap();
        let recorded = sled_keys::load(&target.inner.key_checks).unwrap();
        assert_eq!(recorded.keys().collect::<Vec<_>>(), [&1, &2]);
    }
    let mut only_new = file;
    only_new.keys.retain(|k| k.id == 2);
    assert!(
        SledStore::open(target_dir.path(), only_new.keyring().unwrap()).is_err(),
        "the imported records need key 1"
    );
}
