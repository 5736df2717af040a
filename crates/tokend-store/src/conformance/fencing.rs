//! Conformance: refresh leases as fences: grants, writes under a stale
//! fence, doubt carried until settled, abandoned leases at start, and
//! fences that outlive deletes.

use super::*;

pub(super) async fn refresh_leases(store: &impl Store) {
    let id = ConnectionId::new("leased").expect("id");
    let t0 = Timestamp::from_unix_millis(1_000);
    let a = acquire(store, &id, "replica-a", t0).await.expect("granted");
    assert!(!a.in_doubt, "a first lease has nothing to doubt");
    assert!(
        acquire(store, &id, "replica-b", t0).await.is_none(),
        "a live lease excludes other holders"
    );
    assert!(
        acquire(store, &id, "replica-a", t0).await.is_none(),
        "a live lease excludes its own holder too"
    );
    // After expiry another holder gets it, with a larger fence; the
    // expired one was never released, so the new one is in doubt.
    let later = t0.saturating_add(Duration::from_secs(11));
    let b = acquire(store, &id, "replica-b", later)
        .await
        .expect("granted after expiry");
    assert!(b.fence > a.fence);
    assert!(b.in_doubt, "the previous holder vanished mid-refresh");
    // A stale release is a no-op; the live holder's release frees it.
    store
        .release_refresh_lease(&a, false)
        .await
        .expect("release");
    assert!(acquire(store, &id, "replica-c", later).await.is_none());
    store
        .release_refresh_lease(&b, false)
        .await
        .expect("release");
    let c = acquire(store, &id, "replica-c", later)
        .await
        .expect("granted after release");
    assert!(c.fence > b.fence);
    assert!(!c.in_doubt, "a settled release clears doubt");
}

pub(super) async fn acquire(
    store: &impl Store,
    id: &ConnectionId,
    holder: &str,
    now: Timestamp,
) -> Option<crate::Lease> {
    store
        .try_acquire_refresh_lease(id, holder, Duration::from_secs(10), now)
        .await
        .expect("lease")
}

/// A holder paused past its lease cannot overwrite its successor's work.
pub(super) async fn fenced_writes(store: &impl Store) {
    let r1 = record("fenced", 1);
    store.put(&r1, None, None).await.expect("create");
    let t0 = Timestamp::from_unix_millis(0);
    let a = acquire(store, &r1.id, "a", t0).await.expect("a");
    let r2 = bump(&r1);
    store
        .put(&r2, Some(1), Some(a.fence))
        .await
        .expect("the current fence writes");
    // a's lease runs out; b takes over.
    let b = acquire(
        store,
        &r1.id,
        "b",
        t0.saturating_add(Duration::from_secs(60)),
    )
    .await
    .expect("b");
    let stale = bump(&r2);
    let refused = store.put(&stale, Some(2), Some(a.fence)).await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { fence, current, .. }) if fence == a.fence && current == b.fence),
        "{refused:?}"
    );
    assert_eq!(
        store
            .get(&r1.id)
            .await
            .expect("get")
            .expect("present")
            .revision,
        2,
        "nothing landed"
    );
    store
        .put(&stale, Some(2), Some(b.fence))
        .await
        .expect("the newest fence writes");
    // Writes outside any lease (installs) are not fence-checked.
    store
        .put(&bump(&stale), Some(3), None)
        .await
        .expect("unfenced write");
}

pub(super) async fn doubt_is_carried_until_settled(store: &impl Store) {
    let id = ConnectionId::new("doubt").expect("id");
    let t0 = Timestamp::from_unix_millis(0);
    let a = acquire(store, &id, "a", t0).await.expect("a");
    store
        .release_refresh_lease(&a, true)
        .await
        .expect("release");
    let b = acquire(store, &id, "b", t0).await.expect("b");
    assert!(b.in_doubt, "released in doubt");
    // A release that learned nothing new keeps the doubt.
    store
        .release_refresh_lease(&b, true)
        .await
        .expect("release");
    let c = acquire(store, &id, "c", t0).await.expect("c");
    assert!(c.in_doubt);
    store
        .release_refresh_lease(&c, false)
        .await
        .expect("release");
    let d = acquire(store, &id, "d", t0).await.expect("d");
    assert!(!d.in_doubt, "settled");
}

pub(super) async fn abandoned_leases_are_released_at_start(store: &impl Store) {
    let t0 = Timestamp::from_unix_millis(0);
    let x = ConnectionId::new("x").expect("id");
    let y = ConnectionId::new("y").expect("id");
    let z = ConnectionId::new("z").expect("id");
    acquire(store, &y, "node-1/run-1", t0).await.expect("y");
    acquire(store, &x, "node-1/run-1", t0).await.expect("x");
    acquire(store, &z, "node-2/run-1", t0).await.expect("z");
    let done = ConnectionId::new("w").expect("id");
    let w = acquire(store, &done, "node-1/run-1", t0).await.expect("w");
    store
        .release_refresh_lease(&w, false)
        .await
        .expect("release");
    let abandoned = store
        .release_abandoned_leases("node-1/")
        .await
        .expect("release abandoned");
    assert_eq!(
        abandoned,
        vec![x.clone(), y.clone()],
        "in id order, this node's, unreleased"
    );
    // Free at once, not after expiry, and in doubt.
    let again = acquire(store, &x, "node-1/run-2", t0).await.expect("free");
    assert!(again.in_doubt);
    assert!(
        acquire(store, &z, "node-1/run-2", t0).await.is_none(),
        "another node's live lease stays"
    );
    assert!(
        !acquire(store, &done, "node-1/run-2", t0)
            .await
            .expect("w")
            .in_doubt
    );
}

pub(super) async fn fences_outlive_deletes(store: &impl Store) {
    let r = record("gone", 1);
    store.put(&r, None, None).await.expect("create");
    let t0 = Timestamp::from_unix_millis(0);
    let a = acquire(store, &r.id, "a", t0).await.expect("a");
    assert!(store.delete(&r.id, at(7, 1)).await.expect("delete"));
    store
        .put(&record("gone", 1), None, None)
        .await
        .expect("recreate");
    let b = acquire(store, &r.id, "b", t0)
        .await
        .expect("a delete frees the lease");
    assert!(b.fence > a.fence, "fences never go back");
    assert!(!b.in_doubt, "a deleted connection's doubt is gone with it");
}
