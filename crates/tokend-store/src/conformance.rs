//! The behaviour every `Store` backend must show, as one async test suite.
//!
//! A backend's tests call [`run_all`] with a factory for empty stores; the
//! sled and in-memory backends do, and a SQL backend must too.

use std::{future::Future, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokend_core::{
    Connection, ConnectionId, ErrorClass, LastError, ProviderName, Status, Timestamp, TokenSet,
};

use crate::{ListQuery, Store, StoreError};

/// A record with every field set, for tests.
pub fn record(id: &str, revision: u64) -> Connection {
    Connection {
        id: ConnectionId::new(id).expect("valid test id"),
        provider: ProviderName::new("sandbox").expect("valid provider"),
        account_id: format!("acct-{id}"),
        tokens: TokenSet {
            access_token: SecretString::from(format!("at-{id}-{revision}")),
            refresh_token: Some(SecretString::from(format!("rt-{id}-{revision}"))),
            token_type: "Bearer".into(),
            scopes: vec!["crm.objects.read".into(), "oauth".into()],
            expires_at: Timestamp::from_unix_millis(1_800_000),
            obtained_at: Timestamp::from_unix_millis(0),
        },
        previous_refresh_token: Some(SecretString::from(format!("rt-{id}-prev"))),
        version: revision,
        revision,
        incarnation: 7,
        status: Status::Active,
        last_error: Some(LastError {
            class: ErrorClass::Transient,
            code: "http_503".into(),
            message: "service unavailable".into(),
            correlation_id: Some("corr-1".into()),
            http_status: Some(503),
            at: Timestamp::from_unix_millis(5),
        }),
        last_refresh_at: Some(Timestamp::from_unix_millis(7)),
        created_at: Timestamp::from_unix_millis(1),
        updated_at: Timestamp::from_unix_millis(2),
        install_fingerprint: Some("fp".into()),
    }
}

fn bump(c: &Connection) -> Connection {
    let mut next = c.next_revision(c.updated_at);
    next.tokens.access_token = SecretString::from(format!("at-{}-{}", c.id, next.revision));
    next
}

/// Runs every conformance check, each against a fresh store from `make`.
pub async fn run_all<S, F, Fut>(mut make: F)
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    round_trip_keeps_every_field(&make().await).await;
    create_only_when_absent(&make().await).await;
    compare_and_swap_on_revision(&make().await).await;
    deletes(&make().await).await;
    a_recreated_connection_refuses_writes_based_on_the_deleted_one(&make().await).await;
    lists_in_id_order_with_paging_and_filters(&make().await).await;
    concurrent_writers_exactly_one_wins(Arc::new(make().await)).await;
    refresh_leases(&make().await).await;
}

async fn round_trip_keeps_every_field(store: &impl Store) {
    let r = record("rt", 1);
    store.put(&r, None).await.expect("create");
    let back = store.get(&r.id).await.expect("get").expect("present");
    assert_eq!(back.id, r.id);
    assert_eq!(back.provider, r.provider);
    assert_eq!(back.account_id, r.account_id);
    assert_eq!(back.tokens.access_token.expose_secret(), "at-rt-1");
    assert_eq!(
        back.tokens
            .refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some("rt-rt-1".to_owned())
    );
    assert_eq!(
        back.previous_refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some("rt-rt-prev".to_owned())
    );
    assert_eq!(back.tokens.token_type, r.tokens.token_type);
    assert_eq!(back.tokens.scopes, r.tokens.scopes);
    assert_eq!(back.tokens.expires_at, r.tokens.expires_at);
    assert_eq!(back.tokens.obtained_at, r.tokens.obtained_at);
    assert_eq!((back.version, back.revision), (r.version, r.revision));
    assert_eq!(back.incarnation, r.incarnation);
    assert_eq!(back.status, r.status);
    assert_eq!(back.last_error, r.last_error);
    assert_eq!(back.last_refresh_at, r.last_refresh_at);
    assert_eq!(
        (back.created_at, back.updated_at),
        (r.created_at, r.updated_at)
    );
    assert_eq!(back.install_fingerprint, r.install_fingerprint);
    let missing = ConnectionId::new("missing").expect("id");
    assert!(store.get(&missing).await.expect("get").is_none());
}

async fn create_only_when_absent(store: &impl Store) {
    let r = record("c", 1);
    store.put(&r, None).await.expect("create");
    let again = store.put(&record("c", 2), None).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { found: Some(1), .. })),
        "{again:?}"
    );
    let zero = store.put(&record("z", 0), None).await;
    assert!(
        matches!(zero, Err(StoreError::RevisionNotAdvanced { .. })),
        "{zero:?}"
    );
}

async fn compare_and_swap_on_revision(store: &impl Store) {
    let r1 = record("cas", 1);
    store.put(&r1, None).await.expect("create");
    let r2 = bump(&r1);
    store.put(&r2, Some(1)).await.expect("advance 1 -> 2");

    // A writer that read revision 1 loses, and the newer record survives.
    let stale = bump(&r1);
    let lost = store.put(&stale, Some(1)).await;
    assert!(
        matches!(
            lost,
            Err(StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            })
        ),
        "{lost:?}"
    );
    // A write that does not advance the revision is refused.
    let same = store.put(&r2, Some(2)).await;
    assert!(
        matches!(same, Err(StoreError::RevisionNotAdvanced { .. })),
        "{same:?}"
    );

    let back = store.get(&r1.id).await.expect("get").expect("present");
    assert_eq!(back.revision, 2);
    assert_eq!(back.tokens.access_token.expose_secret(), "at-cas-2");
}

async fn deletes(store: &impl Store) {
    let r = record("d", 3);
    store.put(&r, None).await.expect("create");
    let wrong = store.delete(&r.id, Some(2)).await;
    assert!(
        matches!(wrong, Err(StoreError::Conflict { .. })),
        "{wrong:?}"
    );
    assert!(store.get(&r.id).await.expect("get").is_some());
    assert!(store.delete(&r.id, Some(3)).await.expect("delete"));
    assert!(!store.delete(&r.id, None).await.expect("delete again"));
    assert!(store.get(&r.id).await.expect("get").is_none());
    // The id can be created afresh after a delete.
    store.put(&record("d", 1), None).await.expect("recreate");
}

async fn a_recreated_connection_refuses_writes_based_on_the_deleted_one(store: &impl Store) {
    let old = record("again", 1);
    store.put(&old, None).await.expect("create");
    assert!(store.delete(&old.id, None).await.expect("delete"));
    let mut new = record("again", 1);
    new.incarnation = old.incarnation + 1;
    new.tokens.access_token = SecretString::from("at-new-incarnation");
    store.put(&new, None).await.expect("re-create");
    // A refresh of the deleted incarnation finishing late: same id, same
    // revision numbers, other incarnation. It must not land.
    let late = bump(&old);
    let lost = store.put(&late, Some(1)).await;
    assert!(
        matches!(lost, Err(StoreError::Conflict { found: None, .. })),
        "{lost:?}"
    );
    let back = store.get(&new.id).await.expect("get").expect("present");
    assert_eq!(back.incarnation, new.incarnation);
    assert_eq!(
        back.tokens.access_token.expose_secret(),
        "at-new-incarnation"
    );
    // The new incarnation's own writes go through.
    store
        .put(&bump(&new), Some(1))
        .await
        .expect("advance new incarnation");
}

async fn lists_in_id_order_with_paging_and_filters(store: &impl Store) {
    for id in ["b", "a", "d", "c", "e"] {
        let mut r = record(id, 1);
        if id == "c" {
            r.status = Status::ReconnectRequired;
        }
        if id == "e" {
            r.provider = ProviderName::new("hubspot").expect("provider");
        }
        store.put(&r, None).await.expect("create");
    }
    let ids = |v: Vec<Connection>| v.into_iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    let page1 = store
        .list(&ListQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(page1), ["a", "b"]);
    let page2 = store
        .list(&ListQuery {
            limit: 2,
            after: Some(ConnectionId::new("b").expect("id")),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(page2), ["c", "d"]);
    let by_status = store
        .list(&ListQuery {
            limit: 10,
            status: Some(Status::ReconnectRequired),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(by_status), ["c"]);
    let by_provider = store
        .list(&ListQuery {
            limit: 10,
            provider: Some(ProviderName::new("hubspot").expect("provider")),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(by_provider), ["e"]);
    // A prefix of another id does not make `after` skip it.
    store.put(&record("a1", 1), None).await.expect("create");
    let after_a = store
        .list(&ListQuery {
            limit: 1,
            after: Some(ConnectionId::new("a").expect("id")),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(after_a), ["a1"]);
}

async fn concurrent_writers_exactly_one_wins<S: Store>(store: Arc<S>) {
    let r1 = record("race", 1);
    store.put(&r1, None).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        let mut next = bump(&r1);
        next.tokens.access_token = SecretString::from(format!("writer-{i}"));
        tasks.push(tokio::spawn(async move { store.put(&next, Some(1)).await }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one compare-and-swap from revision 1 may win"
    );
}

async fn refresh_leases(store: &impl Store) {
    let id = ConnectionId::new("leased").expect("id");
    let t0 = Timestamp::from_unix_millis(1_000);
    let ttl = Duration::from_secs(10);
    let a = store
        .try_acquire_refresh_lease(&id, "replica-a", ttl, t0)
        .await
        .expect("lease")
        .expect("granted");
    assert!(
        store
            .try_acquire_refresh_lease(&id, "replica-b", ttl, t0)
            .await
            .expect("lease")
            .is_none(),
        "a live lease excludes other holders"
    );
    // After expiry another holder gets it, with a larger fence.
    let later = t0.saturating_add(Duration::from_secs(11));
    let b = store
        .try_acquire_refresh_lease(&id, "replica-b", ttl, later)
        .await
        .expect("lease")
        .expect("granted after expiry");
    assert!(b.fence > a.fence);
    // A stale release is a no-op; the live holder's release frees it.
    store.release_refresh_lease(&a).await.expect("release");
    assert!(
        store
            .try_acquire_refresh_lease(&id, "replica-c", ttl, later)
            .await
            .expect("lease")
            .is_none()
    );
    store.release_refresh_lease(&b).await.expect("release");
    let c = store
        .try_acquire_refresh_lease(&id, "replica-c", ttl, later)
        .await
        .expect("lease")
        .expect("granted after release");
    assert!(c.fence > b.fence);
}
