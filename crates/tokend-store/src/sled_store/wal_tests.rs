//! Tests of the sled store's write-ahead log: a put cut off by a SIGKILL
//! before sled flushed it is back after the restart, and a replay puts only
//! what did not land.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use super::*;
use crate::sealing::KeyFile;

/// Where the crash child works; set only in the child.
const CHILD_DIR: &str = "TOKEND_TEST_CRASH_CHILD_DIR";
/// What the child prints once sled holds the put, unflushed.
const APPLIED: &str = "tokend-crash-child: applied, not flushed";

/// Not a test on its own: the child process of
/// `a_put_cut_off_before_its_flush_survives_a_sigkill` (this test binary
/// run again with [`CHILD_DIR`] set); without it, it returns at once.
/// It puts revision 1, then revision 2 into a store whose flushes take a
/// minute, says so once sled has applied it, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(std::path::PathBuf::from) else {
        return;
    };
    let keys = KeyFile::generate();
    std::fs::write(dir.join("keys.json"), serde_json::to_vec(&keys).unwrap()).unwrap();
    let db = dir.join("db");
    let first = crate::conformance::record("crashed", 1);
    let store = SledStore::open(&db, keys.keyring().unwrap()).unwrap();
    store.put(&first, None, None).await.unwrap();
    drop(store);
    let store = SledStore::open_for_bench(
        &db,
        keys.keyring().unwrap(),
        Tuning {
            max_batch: crate::sled_commit::MAX_BATCH,
            flush_delay: Duration::from_secs(60),
        },
    )
    .unwrap();
    let before = store.inner.last_seq.load(Ordering::SeqCst);
    let second = crate::conformance::record("crashed", 2);
    tokio::spawn({
        let store = store.clone();
        async move { store.put(&second, Some(1), None).await }
    });
    while store.inner.last_seq.load(Ordering::SeqCst) == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("{APPLIED}");
    std::future::pending::<()>().await;
}

/// Issue 25, item 10. Invariant 2 (a grant is never dropped): a put is
/// safe from a crash of the process before sled's flush, which waits for
/// the writer thread's batch and then its own (the strict-rotation window:
/// a strict provider has already killed the refresh token the put
/// replaces). The child is SIGKILLed while sled holds its put applied but
/// unflushed; the reopened store must hold it.
#[test]
fn a_put_cut_off_before_its_flush_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sled_store::wal_tests::crash_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains(APPLIED) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let applied = rx.recv_timeout(Duration::from_secs(60));
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    applied.expect("the child got its put applied");

    let keys: KeyFile =
        serde_json::from_slice(&std::fs::read(dir.path().join("keys.json")).unwrap()).unwrap();
    let store = SledStore::open(&dir.path().join("db"), keys.keyring().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = ConnectionId::new("crashed").unwrap();
    let stored = runtime.block_on(store.get(&id)).unwrap().unwrap();
    assert_eq!(stored.revision, 2, "the put cut off by the kill is back");
    let bounds = runtime.block_on(store.event_bounds()).unwrap();
    assert_eq!(bounds.last, 2, "with its event, numbered after the first");
}

/// Issue 25, item 10. A replay is an ordinary put: what the log holds is
/// put again only where it did not land, and a put that lost to another
/// write stays lost (invariant 1: a write never replaces a newer one).
#[tokio::test]
async fn a_replay_puts_only_what_did_not_land() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFile::generate();
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    let landed = crate::conformance::record("landed", 1);
    store.put(&landed, None, None).await.unwrap();
    let cut_off = crate::conformance::record("cut-off", 1);
    store.put(&cut_off, None, None).await.unwrap();
    // Logged, never given to sled: a crash between the two.
    let next = crate::conformance::record("cut-off", 2);
    assert!(store.log_ahead(&next, Some(1), None).await.is_some());
    // Logged for a revision that is not the stored one: it lost.
    let stale = crate::conformance::record("landed", 3);
    assert!(store.log_ahead(&stale, Some(2), None).await.is_some());
    // Updated (logged), then deleted: it must not come back.
    let deleted = crate::conformance::record("deleted", 1);
    store.put(&deleted, None, None).await.unwrap();
    let update = crate::conformance::record("deleted", 2);
    store.put(&update, Some(1), None).await.unwrap();
    let expected = Expected::Record {
        incarnation: update.incarnation,
        revision: 2,
    };
    assert!(store.delete(&update.id, expected).await.unwrap());
    drop(store);

    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    let revision = |id: &str| {
        let store = store.clone();
        let id = ConnectionId::new(id).unwrap();
        async move { store.get(&id).await.unwrap().unwrap().revision }
    };
    assert_eq!(revision("cut-off").await, 2);
    assert_eq!(revision("landed").await, 1);
    let gone = ConnectionId::new("deleted").unwrap();
    assert!(store.get(&gone).await.unwrap().is_none(), "no resurrection");
    assert_eq!(
        store.inner.wal.segment_files(),
        1,
        "the replayed log is gone"
    );
    drop(store);
    let store = SledStore::open(dir.path(), keys.keyring().unwrap()).unwrap();
    let events = store.event_bounds().await.unwrap();
    // Three creates, an update, a delete, and the replayed update.
    assert_eq!(events.last, 6, "one event per change, none replayed twice");
}
