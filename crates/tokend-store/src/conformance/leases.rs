//! Conformance: a lease is renewed only by its current holder, and a lease
//! that ran out is released to whoever sweeps first, whatever its holder's
//! name (issue 25, items 2 and 8).

use std::{sync::Arc, time::Duration};

use tokend_core::{ConnectionId, Timestamp};

use super::{bump, record};
use crate::{Store, StoreError};

const TTL: Duration = Duration::from_secs(10);

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

async fn acquire(
    store: &impl Store,
    id: &ConnectionId,
    holder: &str,
    now: Timestamp,
) -> Option<crate::Lease> {
    store
        .try_acquire_refresh_lease(id, holder, TTL, now)
        .await
        .expect("lease")
}

/// Invariant (item 2): a renewed lease keeps other holders out past its
/// first expiry, so one provider call that outlasts the lease is still
/// covered; a holder whose lease was taken over (or released) cannot
/// renew it, and learns so.
pub(super) async fn renewal_extends_only_the_current_holders_lease(store: &impl Store) {
    let r = record("renewed", 1);
    store.put(&r, None, None).await.expect("create");
    let a = acquire(store, &r.id, "a", at(0)).await.expect("a");
    // At 8 s, a renews to 18 s: at 12 s (past the first 10 s) b waits.
    assert!(
        store
            .renew_refresh_lease(&a, TTL, at(8_000))
            .await
            .expect("renew"),
        "the holder renews its live lease"
    );
    assert!(
        acquire(store, &r.id, "b", at(12_000)).await.is_none(),
        "a renewed lease is still live past its first expiry"
    );
    // A renewal never shortens a lease.
    assert!(
        store
            .renew_refresh_lease(&a, TTL, at(1_000))
            .await
            .expect("renew")
    );
    assert!(acquire(store, &r.id, "b", at(17_000)).await.is_none());
    // It ran out at 18 s without another renewal: b takes over.
    let b = acquire(store, &r.id, "b", at(18_000))
        .await
        .expect("b after expiry");
    assert!(b.fence > a.fence);
    assert!(
        !store
            .renew_refresh_lease(&a, TTL, at(18_001))
            .await
            .expect("renew"),
        "a's lease is lost once b holds a newer fence"
    );
    // a's renewal attempt did not extend b's lease, and a's write is fenced.
    let written = store.put(&bump(&r), Some(1), Some(a.fence)).await;
    assert!(
        matches!(written, Err(StoreError::Fenced { .. })),
        "{written:?}"
    );
    store
        .release_refresh_lease(&b, false)
        .await
        .expect("release");
    assert!(
        !store
            .renew_refresh_lease(&b, TTL, at(18_002))
            .await
            .expect("renew"),
        "a released lease cannot be renewed"
    );
    assert!(
        acquire(store, &r.id, "c", at(18_003)).await.is_some(),
        "nor was it kept live by the attempt"
    );
    // A lease never granted is not renewed into existence.
    let ghost = crate::Lease {
        id: ConnectionId::new("never-leased").expect("id"),
        holder: "a".into(),
        fence: 1,
        expires_at: at(10_000),
        in_doubt: false,
    };
    assert!(
        !store
            .renew_refresh_lease(&ghost, TTL, at(0))
            .await
            .expect("renew")
    );
}

/// Invariant (item 8): a lease that ran out unreleased is released by the
/// sweep whatever its holder's name (a replica that died under a name
/// nobody will use again), in doubt, and only once; live and released
/// leases are left alone.
pub(super) async fn expired_leases_are_released_whoever_held_them(store: &impl Store) {
    let id = |s: &str| ConnectionId::new(s).expect("id");
    // Dead pods' leases, under names that never come back.
    acquire(store, &id("e2"), "pod-7f9c/1-1", at(0))
        .await
        .expect("e2");
    acquire(store, &id("e1"), "pod-3a1b/1-1", at(0))
        .await
        .expect("e1");
    // A lease renewed by a live holder, one taken later, one released.
    let renewed = acquire(store, &id("live"), "pod-alive/1-1", at(0))
        .await
        .expect("live");
    assert!(
        store
            .renew_refresh_lease(&renewed, TTL, at(9_000))
            .await
            .expect("renew")
    );
    acquire(store, &id("young"), "pod-alive/1-1", at(5_000))
        .await
        .expect("young");
    let done = acquire(store, &id("done"), "pod-3a1b/1-1", at(0))
        .await
        .expect("done");
    store
        .release_refresh_lease(&done, false)
        .await
        .expect("release");
    assert!(
        store
            .release_expired_leases(at(9_999), 100)
            .await
            .expect("sweep")
            .is_empty(),
        "nothing has run out before 10 s"
    );
    let swept = store
        .release_expired_leases(at(10_000), 100)
        .await
        .expect("sweep");
    assert_eq!(swept, vec![id("e1"), id("e2")], "in id order, any holder");
    assert!(
        store
            .release_expired_leases(at(10_000), 100)
            .await
            .expect("sweep")
            .is_empty(),
        "each is released once"
    );
    // Free now, and in doubt: the dead holder may have spent the token.
    let taken = acquire(store, &id("e1"), "pod-new/1-1", at(10_000))
        .await
        .expect("free");
    assert!(taken.in_doubt);
    assert!(acquire(store, &id("live"), "x", at(10_000)).await.is_none());
    assert!(
        acquire(store, &id("young"), "x", at(10_000))
            .await
            .is_none()
    );
    assert!(
        !acquire(store, &id("done"), "x", at(10_000))
            .await
            .expect("done")
            .in_doubt,
        "a released lease is not swept into doubt"
    );
    // A holder whose lease was swept has lost it.
    let limited = store
        .release_expired_leases(at(60_000), 1)
        .await
        .expect("sweep");
    assert_eq!(limited.len(), 1, "at most `limit` at a time");
}

/// Invariant (item 8): sweeps racing on a shared store release each
/// expired lease to exactly one of them.
pub(super) async fn racing_sweeps_take_each_lease_once<S: Store>(store: Arc<S>) {
    let ids: Vec<ConnectionId> = (0..20)
        .map(|i| ConnectionId::new(format!("race-{i:02}")).expect("id"))
        .collect();
    for id in &ids {
        acquire(store.as_ref(), id, "dead/1-1", at(0))
            .await
            .expect("lease");
    }
    let sweeps = (0..4).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let page = store
                    .release_expired_leases(at(20_000), 3)
                    .await
                    .expect("sweep");
                if page.is_empty() {
                    return got;
                }
                got.extend(page);
            }
        })
    });
    let mut all = Vec::new();
    for sweep in sweeps.collect::<Vec<_>>() {
        all.extend(sweep.await.expect("sweep task"));
    }
    all.sort();
    assert_eq!(all, ids, "every expired lease, each once");
}
