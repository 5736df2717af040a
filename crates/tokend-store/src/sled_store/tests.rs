//! Tests of the sled backend: at rest, rotation, corrupt records, leases
//! and the event log across reopening, and the conformance suite.
use super::*;
use crate::sealing::KeyFile;

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
        store.put(&r, None, None).await.unwrap();
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
            .put(&crate::conformance::record(&format!("r{i}"), 1), None, None)
            .await
            .unwrap();
    }
    file.rotate();
    store.set_keyring(file.keyring().unwrap()).await.unwrap();
    assert_eq!(store.records_on_old_keys().await.unwrap(), 5);
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
    assert_eq!(store.records_on_old_keys().await.unwrap(), 0);
    // Now the old key can go.
    let active = file.active;
    file.keys.retain(|k| k.id == active);
    store.set_keyring(file.keyring().unwrap()).await.unwrap();
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
        .put(&crate::conformance::record("a", 1), None, None)
        .await
        .unwrap();
    store
        .put(&crate::conformance::record("b", 1), None, None)
        .await
        .unwrap();
    // Copy b's sealed access token onto a: the associated data no longer
    // matches, so a fails to decrypt and b is untouched.
    let mut a: serde_json::Value =
        serde_json::from_slice(&store.inner.records.get(b"a").unwrap().unwrap()).unwrap();
    let b: serde_json::Value =
        serde_json::from_slice(&store.inner.records.get(b"b").unwrap().unwrap()).unwrap();
    a["access_token"] = b["access_token"].clone();
    store
        .inner
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
        store.put(&record, None, None).await.unwrap();
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
        .put(&crate::conformance::record("good", 1), None, None)
        .await
        .unwrap();
    store
        .inner
        .records
        .insert(b"bad", &b"{not json"[..])
        .unwrap();
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

#[tokio::test]
async fn an_unreadable_record_can_be_deleted_or_replaced_by_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
    let bad = ConnectionId::new("bad").unwrap();
    store
        .inner
        .records
        .insert(b"bad", &b"{not json"[..])
        .unwrap();
    // A delete expecting a readable record refuses; one expecting the
    // broken bytes removes them.
    assert!(matches!(
        store
            .delete(
                &bad,
                Expected::Record {
                    incarnation: 7,
                    revision: 1
                }
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.delete(&bad, Expected::Unreadable).await.unwrap());
    assert!(store.get(&bad).await.unwrap().is_none());
    // Replacing: only while the record is still unreadable.
    store
        .inner
        .records
        .insert(b"bad", &b"{not json"[..])
        .unwrap();
    let fresh = crate::conformance::record("bad", 1);
    store.replace_unreadable(&fresh).await.unwrap();
    assert_eq!(store.get(&bad).await.unwrap().unwrap().revision, 1);
    assert!(matches!(
        store.replace_unreadable(&fresh).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.delete(&bad, Expected::Unreadable).await,
        Err(StoreError::Conflict { .. })
    ));
}

/// Invariant: once `set_keyring` returns, no write sealed with the old
/// keys can land, so after one re-encryption pass no record is left on
/// an old key. Before the fix a put that took its keyring snapshot
/// before the swap could land after the pass had passed its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_write_lands_on_an_old_key_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = KeyFile::generate();
    let store = SledStore::open(dir.path(), file.keyring().unwrap()).unwrap();
    let n = 40;
    for i in 0..n {
        store
            .put(&crate::conformance::record(&format!("k{i}"), 1), None, None)
            .await
            .unwrap();
    }
    let writers: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut r = crate::conformance::record(&format!("k{i}"), 1);
                for rev in 2..30u64 {
                    let expected = r.revision;
                    r.revision = rev;
                    if store.put(&r, Some(expected), None).await.is_err() {
                        r = store.get(&r.id).await.unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    file.rotate();
    store.set_keyring(file.keyring().unwrap()).await.unwrap();
    store.reencrypt().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.records_on_old_keys().await.unwrap(), 0);
    let old = file
        .keys
        .iter()
        .map(|k| k.id)
        .find(|k| *k != file.active)
        .unwrap();
    assert_eq!(store.records_on_key(old).await.unwrap(), 0);
}

/// The lease is the refresh's durable intent: granted, it survives a
/// reopen, and start-up finds it as abandoned and in doubt.
#[tokio::test]
async fn an_unreleased_lease_survives_reopening_as_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let id = ConnectionId::new("c").unwrap();
    let t0 = Timestamp::from_unix_millis(0);
    {
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        store
            .try_acquire_refresh_lease(&id, "local/run-1", Duration::from_secs(30), t0)
            .await
            .unwrap()
            .unwrap();
    }
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    assert_eq!(
        store.release_abandoned_leases("local/").await.unwrap(),
        vec![id.clone()]
    );
    let lease = store
        .try_acquire_refresh_lease(&id, "local/run-2", Duration::from_secs(30), t0)
        .await
        .unwrap()
        .expect("released at start, not waiting for expiry");
    assert!(lease.in_doubt);
}

#[tokio::test]
async fn the_event_log_survives_reopening_and_its_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let log_id;
    {
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        store
            .put(&crate::conformance::record("a", 1), None, None)
            .await
            .unwrap();
        store
            .put(&crate::conformance::record("b", 1), None, None)
            .await
            .unwrap();
        log_id = store.event_bounds().await.unwrap().log_id;
    }
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    let bounds = store.event_bounds().await.unwrap();
    assert_eq!((bounds.log_id, bounds.oldest, bounds.last), (log_id, 1, 2));
    assert_eq!(*store.event_watermark().borrow(), 2, "durable at open");
    store
        .put(&crate::conformance::record("c", 1), None, None)
        .await
        .unwrap();
    let events = store.read_events(0, 3, 10).await.unwrap();
    let ids: Vec<_> = events
        .iter()
        .map(|e| (e.seq, e.connection_id.as_str()))
        .collect();
    assert_eq!(ids, [(1, "a"), (2, "b"), (3, "c")]);
}

#[tokio::test]
async fn events_are_not_visible_before_their_write_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
    let watermark = store.event_watermark();
    let record = crate::conformance::record("w", 1);
    // The committed-but-unflushed state: what a reader sees between a
    // write's transaction and its flush.
    store
        .blocking({
            let record = record.clone();
            move |inner| inner.put(&record, None, None)
        })
        .await
        .unwrap();
    assert_eq!(*watermark.borrow(), 0, "not durable yet");
    store.flush().await.unwrap();
    assert_eq!(*watermark.borrow(), 1);
}

#[tokio::test]
async fn without_the_event_log_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_without_event_log(dir.path(), Keyring::ephemeral()).unwrap();
    store
        .put(&crate::conformance::record("q", 1), None, None)
        .await
        .unwrap();
    let bounds = store.event_bounds().await.unwrap();
    assert_eq!(bounds.last, 0);
}

/// Invariant: a store dropped in this process can be opened again at once
/// (sled lets go of its directory lock a moment after the drop returns, when
/// its IO threads finish; CI once failed `records_survive_reopening` on that).
#[tokio::test]
async fn a_dropped_store_reopens_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    for revision in 1..=40u64 {
        let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
        let expected = (revision > 1).then(|| revision - 1);
        store
            .put(
                &crate::conformance::record("reopened", revision),
                expected,
                None,
            )
            .await
            .unwrap();
    }
}
