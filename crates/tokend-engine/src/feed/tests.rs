//! The feed against the in-memory store: live reads, slow readers past the
//! ring, expiry, and start positions.

use std::{sync::Arc, time::Duration};

use tokend_core::Timestamp;
use tokend_store::{MemoryStore, Store, conformance::record};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::*;

struct Fixture {
    store: Arc<MemoryStore>,
    feed: Arc<Feed>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let feed = Feed::start(
        Arc::clone(&store) as Arc<dyn Store>,
        EventSettings {
            prune_interval: Duration::from_secs(3600),
            ..EventSettings::default()
        },
        Clock::system(),
        &tasks,
        &cancel,
    )
    .await
    .unwrap();
    Fixture {
        store,
        feed,
        cancel,
        tasks,
    }
}

async fn install(store: &MemoryStore, n: usize, prefix: &str) {
    for i in 0..n {
        // Written now: the pruner keeps a week.
        let mut r = record(&format!("{prefix}{i}"), 1);
        r.updated_at = Clock::system().now();
        store.put(&r, None, None).await.unwrap();
    }
}

async fn read_all(fx: &Fixture, mut after: u64, want: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < want {
        let batch = fx
            .feed
            .next(after, 500, Duration::from_secs(5), &fx.cancel)
            .await
            .unwrap();
        assert!(!batch.is_empty(), "timed out after {after}");
        for e in batch {
            after = e.seq;
            seen.push(e.seq);
        }
    }
    seen
}

#[tokio::test]
async fn a_live_reader_gets_every_later_event_in_order() {
    let fx = fixture().await;
    install(&fx.store, 3, "before-").await;
    // Live: starts after what exists now.
    let start = fx.feed.start_position(None, false).await.unwrap();
    assert_eq!(start, 3);
    let reader = {
        let feed = Arc::clone(&fx.feed);
        let cancel = fx.cancel.clone();
        tokio::spawn(async move {
            let mut after = start;
            let mut seen = Vec::new();
            while seen.len() < 5 {
                for e in feed
                    .next(after, 10, Duration::from_secs(5), &cancel)
                    .await
                    .unwrap()
                {
                    after = e.seq;
                    seen.push(e.connection_id.clone());
                }
            }
            seen
        })
    };
    install(&fx.store, 5, "live-").await;
    let seen = reader.await.unwrap();
    assert_eq!(seen, ["live-0", "live-1", "live-2", "live-3", "live-4"]);
    assert_eq!(fx.feed.start_position(None, true).await.unwrap(), 0);
    fx.cancel.cancel();
    fx.tasks.close();
    fx.tasks.wait().await;
}

#[tokio::test]
async fn a_reader_behind_the_ring_continues_from_the_log() {
    let fx = fixture().await;
    let n = RING_CAPACITY + 1500;
    install(&fx.store, n, "c").await;
    let seen = read_all(&fx, 0, n).await;
    assert_eq!(
        seen,
        (1..=n as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    fx.cancel.cancel();
}

#[tokio::test]
async fn a_pruned_position_is_expired_with_the_oldest_cursor() {
    let fx = fixture().await;
    install(&fx.store, 20, "p").await;
    read_all(&fx, 0, 20).await;
    fx.store
        .prune_events(Timestamp::from_unix_millis(0), 5)
        .await
        .unwrap();
    let cursor = fx.feed.cursor(3);
    let err = fx
        .feed
        .start_position(Some(cursor), false)
        .await
        .unwrap_err();
    match err {
        FeedError::Expired { oldest, .. } => assert_eq!(oldest, fx.feed.cursor(15)),
        other => panic!("{other:?}"),
    }
    // From the oldest cursor on, everything retained is there.
    let start = fx
        .feed
        .start_position(Some(fx.feed.cursor(15)), false)
        .await
        .unwrap();
    assert_eq!(read_all(&fx, start, 5).await, [16, 17, 18, 19, 20]);
    // Another log's cursor, or one from the future, is refused the same way.
    let foreign = Cursor {
        log_id: fx.feed.log_id.wrapping_add(1).max(1),
        seq: 10,
    };
    assert!(matches!(
        fx.feed.start_position(Some(foreign), false).await,
        Err(FeedError::Expired { .. })
    ));
    assert!(matches!(
        fx.feed
            .start_position(Some(fx.feed.cursor(99)), false)
            .await,
        Err(FeedError::Expired { .. })
    ));
    fx.cancel.cancel();
}

#[tokio::test]
async fn an_idle_wait_ends_empty_and_cancel_ends_it_at_once() {
    let fx = fixture().await;
    let batch = fx
        .feed
        .next(0, 10, Duration::from_millis(20), &fx.cancel)
        .await
        .unwrap();
    assert!(batch.is_empty());
    fx.cancel.cancel();
    assert!(matches!(
        fx.feed
            .next(0, 10, Duration::from_secs(60), &fx.cancel)
            .await,
        Err(FeedError::ShuttingDown)
    ));
}
