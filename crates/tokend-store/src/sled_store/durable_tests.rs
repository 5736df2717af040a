//! Tests of what the sled store lets be seen: nothing before the flush that
//! makes it durable (reads, refused compare-and-swaps), and a writer thread
//! that dies is reported, never silently fails every write.
//!
//! The disk is made slow (`Tuning::flush_delay`) so that a change stays
//! applied but unflushed for a while; whatever a caller learns in that
//! while, the event watermark (raised by the flush, before anyone waiting
//! hears of it) must already cover.
use std::time::Duration;

use super::*;

/// A store whose every flush takes `delay` longer.
fn slow_store(dir: &Path, delay: Duration) -> SledStore {
    SledStore::open_for_bench(
        dir,
        Keyring::ephemeral(),
        Tuning {
            max_batch: crate::sled_commit::MAX_BATCH,
            flush_delay: delay,
        },
    )
    .unwrap()
}

/// Everything committed so far is durable.
fn all_durable(store: &SledStore) -> bool {
    store.inner.watermark.get() == store.inner.last_seq.load(Ordering::SeqCst)
}

/// What a record looks like through each kind of read.
async fn seen(store: &SledStore, id: &ConnectionId) -> [Option<u64>; 3] {
    let got = store.get(id).await.unwrap().map(|c| c.revision);
    let listed = store
        .list(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .find(|c| c.id == *id)
        .map(|c| c.revision);
    let summarised = store
        .summaries(None, 10)
        .await
        .unwrap()
        .iter()
        .find(|s| s.id == *id)
        .map(|s| u64::from(s.status == tokend_core::Status::ReconnectRequired));
    [got, listed, summarised]
}

/// Issue 25, item 9. Invariant 2 (durable before visible): a read never
/// returns a change that a crash could still undo. A reader that saw the
/// refreshed grant and handed it out, or deferred to it, would lose it if
/// the process died before the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_sees_a_change_before_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = slow_store(dir.path(), Duration::from_millis(300));
    let first = crate::conformance::record("visible", 1);
    store.put(&first, None, None).await.unwrap();
    let id = first.id.clone();
    let before = seen(&store, &id).await;

    let mut second = first.next_revision(first.updated_at);
    second.status = tokend_core::Status::ReconnectRequired;
    let committed = store.inner.last_seq.load(Ordering::SeqCst);
    let writing = tokio::spawn({
        let store = store.clone();
        async move { store.put(&second, Some(1), None).await }
    });
    // Once the change is applied (its events numbered), the flush takes
    // 300 ms more: reads in that while must not see it before it is over.
    while store.inner.last_seq.load(Ordering::SeqCst) == committed {
        tokio::task::yield_now().await;
    }
    let mut raced = false;
    loop {
        // Applied but not flushed as the read begins.
        raced |= !all_durable(&store);
        let now = seen(&store, &id).await;
        let durable = all_durable(&store);
        for (i, (then, now)) in before.iter().zip(&now).enumerate() {
            assert!(
                then == now || durable,
                "read {i} saw a change before its flush: {then:?} -> {now:?}"
            );
        }
        if now.iter().zip(&before).all(|(n, b)| n != b) {
            break;
        }
    }
    writing.await.unwrap().unwrap();
    assert!(raced, "a read began between the write and its flush");
}

/// Issue 25, item 9. Invariant 2: a compare-and-swap refused because of a
/// change not yet flushed is not reported before that flush. Its caller
/// re-reads and defers to the change it lost to, dropping its own grant: if
/// the process died before the flush, both grants would be gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_swap_returns_only_once_what_refused_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = slow_store(dir.path(), Duration::from_millis(300));
    let record = crate::conformance::record("contended", 1);
    store.put(&record, None, None).await.unwrap();
    // The winner's change has events, so the watermark tells whether it
    // is durable.
    let mut winner = record.next_revision(record.updated_at);
    winner.status = tokend_core::Status::ReconnectRequired;
    let loser = record.next_revision(record.updated_at);
    // Sent one after the other: the first keeps the writer in a slow flush
    // (or is in the batch too) while the two rivals queue, so they are
    // applied in one batch: the winner's change, the loser's refusal, then
    // one flush.
    let other = crate::conformance::record("other", 1);
    let (busy, won, lost) = tokio::join!(
        store.put(&other, None, None),
        store.put(&winner, Some(1), None),
        async {
            let refused = store.put(&loser, Some(1), None).await;
            (refused, store.inner.watermark.get())
        }
    );
    busy.unwrap();
    won.unwrap();
    let (refused, watermark_then) = lost;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    let last = store.inner.last_seq.load(Ordering::SeqCst);
    let winners = store.read_events(0, last, 100).await.unwrap();
    let winners_seq = winners
        .iter()
        .filter(|e| e.connection_id.as_str() == "contended")
        .map(|e| e.seq)
        .max()
        .unwrap();
    assert!(
        watermark_then >= winners_seq,
        "the refusal was reported before the change it lost to was flushed"
    );
}

/// Issue 25, item 9: a writer thread that dies is reported (`broken`), so
/// the server stops reporting ready and exits, instead of failing every
/// write while looking healthy. What was durable can still be read.
#[tokio::test]
async fn a_dead_writer_breaks_the_store_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
    let record = crate::conformance::record("before-death", 1);
    store.put(&record, None, None).await.unwrap();
    let mut broken = store.broken();
    assert!(broken.borrow().is_none());
    store.kill_writer();
    let why = broken.wait_for(Option::is_some).await.unwrap().clone();
    assert!(why.unwrap().contains("writer thread"));
    let next = record.next_revision(record.updated_at);
    assert!(store.put(&next, Some(1), None).await.is_err());
    let stored = store.get(&record.id).await.unwrap().unwrap();
    assert_eq!(stored.revision, 1);
}
