//! Tests of the sled data dir's format: the version check and migrations,
//! the index built at open, and the binding of sealed records to their
//! route (re-sealing at open, refusing the unbound form after).
use super::*;
use super::{format::stamp, open::open_db};
use crate::sealing::KeyFile;

/// Issue 11. Invariants: a data dir is stamped with its format; one
/// written by a newer tokend is refused with a message saying so, before
/// anything is read or written; one from before stamps (format 0) is
/// migrated and its records kept.
#[tokio::test]
async fn the_on_disk_format_is_checked_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    store
        .put(&crate::conformance::record("kept", 1), None, None)
        .await
        .unwrap();
    assert_eq!(
        format_version(&store.inner.db).unwrap(),
        Some(FORMAT_VERSION)
    );
    // As written before format stamps existed.
    store.inner.db.remove(FORMAT_KEY).unwrap();
    store.inner.db.flush().unwrap();
    drop(store);
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).expect("format 0 migrates");
    assert_eq!(
        format_version(&store.inner.db).unwrap(),
        Some(FORMAT_VERSION)
    );
    assert!(
        store
            .get(&ConnectionId::new("kept").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    // As a newer tokend would leave it.
    store
        .inner
        .db
        .insert(FORMAT_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
        .unwrap();
    store.inner.db.flush().unwrap();
    drop(store);
    let refused = SledStore::open(dir.path(), keys.keyring().unwrap())
        .err()
        .expect("a newer format is refused")
        .to_string();
    assert!(refused.contains("written by a newer tokend"), "{refused}");
    assert!(refused.contains("upgrade tokend"), "{refused}");
}

/// Issue 15. Invariant: a format-2 data dir (records without the index,
/// as every earlier build left it) gets its index built at open, from the
/// records, without a key: summaries, counts and filtered listings are
/// exactly what the records say. A rebuild cut off before its stamp (here:
/// a half-written index) starts again.
#[tokio::test]
async fn a_format_2_dir_gets_its_index_built_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    for i in 0..30 {
        let mut r = crate::conformance::record(&format!("m{i:02}"), 1);
        if i % 3 == 0 {
            r.status = tokend_core::Status::ReconnectRequired;
        }
        store.put(&r, None, None).await.unwrap();
    }
    let census = store.census().await.unwrap();
    let summaries = store.summaries(None, 100).await.unwrap();
    assert_eq!(summaries.len(), 30);
    // As format 2 left it: no index at all, then a rebuild cut off midway
    // (a stale entry that no record backs).
    store.inner.index.clear().unwrap();
    store
        .inner
        .index
        .insert(crate::sled_index::summary_key(b"ghost"), &[1u8; 20])
        .unwrap();
    stamp(&store.inner.db, 2).unwrap();
    drop(store);
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).expect("format 2 migrates");
    assert_eq!(
        format_version(&store.inner.db).unwrap(),
        Some(FORMAT_VERSION)
    );
    assert_eq!(store.census().await.unwrap(), census);
    assert_eq!(store.summaries(None, 100).await.unwrap(), summaries);
    let revoked = store
        .list(&ListQuery {
            limit: 100,
            status: Some(tokend_core::Status::ReconnectRequired),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(revoked.len(), 10);
}

/// Keys as a key file made before the binding holds them.
fn pre_binding_key_file() -> KeyFile {
    let mut file = KeyFile::generate();
    file.keys[0].bound = false;
    file
}

/// The stored document of `id`, as JSON.
fn stored_json(store: &SledStore, id: &str) -> serde_json::Value {
    serde_json::from_slice(&store.inner.records.get(id.as_bytes()).unwrap().unwrap()).unwrap()
}

/// Guards issue 24 item 2: a record whose provider, account or params were
/// rewritten in the store (a database writer, an edited copy) is
/// unreadable, `Corrupt` for that connection only: it is never handed to
/// the engine with the new route, and the others are unaffected.
#[tokio::test]
async fn a_repointed_record_is_an_error_for_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
    for id in ["victim", "bystander"] {
        store
            .put(&crate::conformance::record(id, 1), None, None)
            .await
            .unwrap();
    }
    let original = store.inner.records.get(b"victim").unwrap().unwrap();
    for (field, value) in [
        ("provider", serde_json::json!("attacker")),
        ("account_id", serde_json::json!("acct-bystander")),
        (
            "params",
            serde_json::json!({"subdomain": "attacker.example"}),
        ),
    ] {
        let mut doc: serde_json::Value = serde_json::from_slice(&original).unwrap();
        doc[field] = value;
        store
            .inner
            .records
            .insert(b"victim", serde_json::to_vec(&doc).unwrap())
            .unwrap();
        let err = store
            .get(&ConnectionId::new("victim").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("does not decrypt")),
            "{field}: {err}"
        );
        let listed = store
            .list(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{field}: the victim is skipped");
        assert_eq!(listed[0].id.as_str(), "bystander");
    }
}

/// Guards issue 24 item 2's upgrade: a format-3 data dir (records sealed
/// without the binding) is re-sealed at open with every field intact, and
/// from then on the old form is refused: an unbound record written back
/// later (from an old backup) is `Corrupt`, the others unaffected. A key
/// made with the binding never opens the old form, so even a reset format
/// stamp cannot bring a forged unbound record back in: the upgrade stops
/// there, lets nothing in, and the record stays unreadable.
#[tokio::test]
async fn a_format_3_dir_is_resealed_at_open_and_the_unbound_form_refused_after() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let keys = pre_binding_key_file();
    let records: Vec<_> = (0..5)
        .map(|i| crate::conformance::record(&format!("old-{i}"), 2))
        .collect();
    let unbound: Vec<_> = {
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        let ring = keys.keyring().unwrap();
        let mut unbound = Vec::new();
        for r in &records {
            store.put(r, None, None).await.unwrap();
            // As format 3 sealed it.
            let bytes = codec::encode_unbound(r, &ring);
            store
                .inner
                .records
                .insert(r.id.as_str().as_bytes(), bytes.clone())
                .unwrap();
            unbound.push(bytes);
        }
        stamp(&store.inner.db, 3).unwrap();
        assert!(
            store.get(&records[0].id).await.is_err(),
            "this build refuses the unbound form outside the upgrade"
        );
        unbound
    };
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).expect("format 3 migrates");
    assert_eq!(format_version(&store.inner.db).unwrap(), Some(4));
    for r in &records {
        assert_eq!(stored_json(&store, r.id.as_str())["schema"], 2);
        let back = store.get(&r.id).await.unwrap().expect("kept");
        assert_eq!((back.revision, &back.params), (r.revision, &r.params));
        assert_eq!(
            back.tokens.refresh_token.unwrap().expose_secret(),
            r.tokens.refresh_token.as_ref().unwrap().expose_secret()
        );
    }
    // The downgrade: old-0's unbound bytes written back.
    store
        .inner
        .records
        .insert(b"old-0", unbound[0].clone())
        .unwrap();
    let err = store.get(&records[0].id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(store.get(&records[1].id).await.unwrap().is_some());
    drop(store);

    // A key made with the binding, and a forged unbound record under it
    // with the stamp reset: the upgrade leaves it unreadable.
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    for r in &records[..2] {
        store.put(r, None, None).await.unwrap();
    }
    let mut forged = records[0].clone();
    forged.params = [("subdomain".to_owned(), "attacker.example".to_owned())].into();
    store
        .inner
        .records
        .insert(
            b"old-0",
            codec::encode_unbound(&forged, &keys.keyring().unwrap()),
        )
        .unwrap();
    stamp(&store.inner.db, 3).unwrap();
    drop(store);
    let refused = SledStore::open(dir.path(), keys.keyring().unwrap())
        .err()
        .expect("the forged record stops the upgrade")
        .to_string();
    assert!(refused.contains("made after the binding"), "{refused}");
    // Removed (as the message says), the rest upgrades and serves.
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        db.open_tree("connections")
            .unwrap()
            .remove(b"old-0")
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).expect("opens");
    assert!(store.get(&records[0].id).await.unwrap().is_none());
    assert!(store.get(&records[1].id).await.unwrap().is_some());
}

/// Guards the upgrade against a wrong key file (a fresh one has key id 1
/// too): re-sealing needs the keys that sealed the records, so an open
/// with others is refused before anything is written (the format stays 3,
/// the records as they were), instead of leaving every record unreadable
/// for good; the right keys then upgrade it.
#[tokio::test]
async fn the_upgrade_is_refused_without_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = pre_binding_key_file();
    let r = crate::conformance::record("old", 1);
    let bytes = {
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        store.put(&r, None, None).await.unwrap();
        let bytes = codec::encode_unbound(&r, &keys.keyring().unwrap());
        store.inner.records.insert(b"old", bytes.clone()).unwrap();
        stamp(&store.inner.db, 3).unwrap();
        bytes
    };
    let refused = SledStore::open(dir.path(), Keyring::ephemeral())
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("does not open"), "{refused}");
    {
        let db = open_db(dir.path(), LOCK_WAIT).unwrap();
        assert_eq!(format_version(&db).unwrap(), Some(3));
        let kept = db.open_tree("connections").unwrap().get(b"old").unwrap();
        assert_eq!(kept.as_deref(), Some(bytes.as_slice()));
    }
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).expect("the right keys");
    assert!(store.get(&r.id).await.unwrap().is_some());
    assert_eq!(format_version(&store.inner.db).unwrap(), Some(4));
}
