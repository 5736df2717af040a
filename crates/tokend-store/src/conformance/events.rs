//! Conformance: the event log: every change's events, numbering without
//! gaps under concurrency, pruning, saved cursors and reader claims.

use super::{fencing::acquire, *};

/// A healthy record: no error, active.
fn healthy(id: &str) -> Connection {
    let mut r = record(id, 1);
    r.last_error = None;
    r.reconnect_cause = None;
    r
}

pub(super) async fn all_events(store: &impl Store) -> Vec<tokend_core::Event> {
    let up_to = *store.event_watermark().borrow();
    store
        .read_events(0, up_to, usize::MAX)
        .await
        .expect("read events")
}

pub(super) async fn each_change_appends_its_events(store: &impl Store) {
    let bounds = store.event_bounds().await.expect("bounds");
    assert_ne!(bounds.log_id, 0);
    assert_eq!((bounds.oldest, bounds.last), (1, 0), "an empty log");

    let r1 = healthy("e");
    store.put(&r1, None, None).await.expect("create");
    // Refused writes append nothing.
    assert!(store.put(&r1, None, None).await.is_err());
    let lease = acquire(store, &r1.id, "a", Timestamp::from_unix_millis(0))
        .await
        .expect("granted");
    let mut rotated = bump(&r1);
    rotated.version += 1;
    store
        .put(&rotated, Some(1), Some(lease.fence))
        .await
        .expect("rotate");
    acquire(store, &r1.id, "b", Timestamp::from_unix_millis(60_000))
        .await
        .expect("granted after expiry");
    let mut fenced = bump(&rotated);
    fenced.version += 1;
    assert!(matches!(
        store.put(&fenced, Some(2), Some(lease.fence)).await,
        Err(StoreError::Fenced { .. })
    ));
    let mut failed = bump(&rotated);
    failed.last_error = record("x", 1).last_error;
    store.put(&failed, Some(2), None).await.expect("fail");
    let mut dead = bump(&failed);
    dead.status = Status::ReconnectRequired;
    dead.reconnect_cause = Some(ReconnectCause::Revoked);
    store.put(&dead, Some(3), None).await.expect("revoke");
    // A rewrite of the same state announces nothing.
    store
        .put(&bump(&dead), Some(4), None)
        .await
        .expect("rewrite");
    assert!(store.delete(&r1.id, at(7, 5)).await.expect("delete"));

    let events = all_events(store).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::Installed,
            EventType::TokenRotated,
            EventType::RefreshFailed,
            EventType::ReconnectRequired,
            EventType::Deleted
        ]
    );
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "contiguous from 1");
    assert_eq!(events[3].cause, Some(ReconnectCause::Revoked));
    let versions: Vec<_> = events
        .iter()
        .map(|e| e.connection.as_ref().expect("metadata").version)
        .collect();
    assert_eq!(versions, [1, 2, 2, 2, 2]);
    assert!(events.iter().all(|e| e.connection_id == "e"));
    let json = serde_json::to_string(&events).expect("json");
    assert!(
        !json.contains("at-e") && !json.contains("rt-e"),
        "no secret in the log: {json}"
    );
    let bounds = store.event_bounds().await.expect("bounds");
    assert_eq!((bounds.oldest, bounds.last), (1, 5));

    // Reads page and stop at `up_to`.
    let page = store.read_events(1, 3, 10).await.expect("page");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    let page = store.read_events(0, 5, 2).await.expect("limit");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(store.read_events(5, 5, 10).await.expect("end").is_empty());
}

pub(super) async fn concurrent_writes_number_events_without_gaps<S: Store>(store: Arc<S>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut r = healthy(&format!("w{t}"));
            store.put(&r, None, None).await.expect("create");
            for _ in 0..15 {
                let mut next = bump(&r);
                next.version += 1;
                store
                    .put(&next, Some(r.revision), None)
                    .await
                    .expect("advance");
                r = next;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let events = all_events(&*store).await;
    assert_eq!(events.len(), 8 * 16);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "contiguous in commit order");
    }
    // Per connection, events are in the order of its writes.
    for t in 0..8 {
        let id = format!("w{t}");
        let versions: Vec<_> = events
            .iter()
            .filter(|e| e.connection_id == id)
            .map(|e| e.connection.as_ref().expect("metadata").version)
            .collect();
        assert_eq!(versions, (1..=16).collect::<Vec<_>>(), "{id}");
    }
}

pub(super) async fn pruning_removes_the_oldest_and_shows_as_a_gap(store: &impl Store) {
    for i in 0..10 {
        let mut r = healthy(&format!("p{i}"));
        r.updated_at = Timestamp::from_unix_millis(1_000 * i);
        store.put(&r, None, None).await.expect("create");
    }
    // By count: keep 7 of 10.
    let removed = store
        .prune_events(Timestamp::from_unix_millis(0), 7)
        .await
        .expect("prune");
    assert_eq!(removed, 3);
    let bounds = store.event_bounds().await.expect("bounds");
    assert_eq!((bounds.oldest, bounds.last), (4, 10));
    let after_gap = store.read_events(1, 10, 10).await.expect("read");
    assert_eq!(after_gap.first().map(|e| e.seq), Some(4), "the gap shows");
    // By age: events before t=6 s go (seq 7 was written at 6 s).
    let removed = store
        .prune_events(Timestamp::from_unix_millis(6_000), 100)
        .await
        .expect("prune");
    assert_eq!(removed, 3);
    assert_eq!(store.event_bounds().await.expect("bounds").oldest, 7);
    // Pruning everything keeps the numbering going.
    store
        .prune_events(Timestamp::from_unix_millis(i64::MAX), 0)
        .await
        .expect("prune all");
    let bounds = store.event_bounds().await.expect("bounds");
    assert_eq!((bounds.oldest, bounds.last), (11, 10));
    store
        .put(&healthy("p-next"), None, None)
        .await
        .expect("create");
    let events = all_events(store).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [11]);
}

pub(super) async fn cursors_are_kept_by_name(store: &impl Store) {
    assert!(store.load_cursor("hook").await.expect("load").is_none());
    let cursor = SavedCursor {
        log_id: 9,
        seq: 41,
        failing_since: Some(Timestamp::from_unix_millis(5)),
        last_error: Some("http 500".into()),
        updated_at: Timestamp::from_unix_millis(6),
        fence: 3,
    };
    store.save_cursor("hook", &cursor).await.expect("save");
    store
        .save_cursor(
            "other",
            &SavedCursor {
                seq: 1,
                ..cursor.clone()
            },
        )
        .await
        .expect("save other");
    assert_eq!(store.load_cursor("hook").await.expect("load"), Some(cursor));
}

/// Guards: on a store replicas share, one replica at a time advances a
/// named reader (one delivery per webhook event fleet-wide), and a holder
/// paused past its claim cannot move the saved cursor back.
pub(super) async fn reader_claims_are_exclusive_on_a_shared_store(store: &impl Store) {
    let ttl = Duration::from_secs(10);
    let t0 = Timestamp::from_unix_millis(1_000_000);
    let first = store
        .claim_reader("hook", "a", ttl, t0)
        .await
        .expect("claim");
    assert!(first.is_some(), "a free reader is granted");
    if !store.shared() {
        return;
    }
    let first = first.unwrap_or_default();
    assert_eq!(
        store
            .claim_reader("hook", "b", ttl, t0)
            .await
            .expect("claim"),
        None,
        "another holder is refused while the claim is live"
    );
    assert_eq!(
        store
            .claim_reader("hook", "a", ttl, t0)
            .await
            .expect("renew"),
        Some(first),
        "the holder renews under the same fence"
    );
    assert!(
        store
            .claim_reader("other", "b", ttl, t0)
            .await
            .expect("claim")
            .is_some(),
        "names are independent"
    );
    let later = t0.saturating_add(ttl * 2);
    let second = store
        .claim_reader("hook", "b", ttl, later)
        .await
        .expect("take over")
        .expect("an expired claim passes on");
    assert!(second > first, "the fence grows with a new holder");
    let at = |seq, fence| SavedCursor {
        log_id: 1,
        seq,
        failing_since: None,
        last_error: None,
        updated_at: t0,
        fence,
    };
    store
        .save_cursor("hook", &at(20, second))
        .await
        .expect("save");
    // The old holder wakes up and saves where it had got to.
    store
        .save_cursor("hook", &at(5, first))
        .await
        .expect("stale save");
    assert_eq!(
        store
            .load_cursor("hook")
            .await
            .expect("load")
            .map(|c| c.seq),
        Some(20),
        "a save under an older fence is ignored"
    );
}
