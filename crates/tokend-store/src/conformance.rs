//! The behaviour every `Store` backend must show, as one async test suite.
//!
//! A backend's tests call [`run_all`] with a factory for empty stores; the
//! sled and in-memory backends do, and a SQL backend must too.

use std::{future::Future, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokend_core::{
    Connection, ConnectionId, ErrorClass, LastError, ProviderName, ReconnectCause, Status,
    Timestamp, TokenSet,
};

use crate::{Expected, ListQuery, Store, StoreError, event_log::SavedCursor};
use tokend_core::EventType;

mod events;
mod fencing;
mod leases;
mod listing;

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
        reconnect_cause: Some(ReconnectCause::RotationLost),
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
        params: [("subdomain".to_owned(), "acme".to_owned())].into(),
        metadata: [(
            "instance_url".to_owned(),
            "https://acme.my.example.com".to_owned(),
        )]
        .into(),
    }
}

fn at(incarnation: u64, revision: u64) -> Expected {
    Expected::Record {
        incarnation,
        revision,
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
    listing::an_id_prefix_lists_exactly_its_range(&make().await).await;
    summaries_and_census_follow_every_change(&make().await).await;
    concurrent_writers_exactly_one_wins(Arc::new(make().await)).await;
    fencing::refresh_leases(&make().await).await;
    fencing::fenced_writes(&make().await).await;
    fencing::doubt_is_carried_until_settled(&make().await).await;
    events::each_change_appends_its_events(&make().await).await;
    events::concurrent_writes_number_events_without_gaps(Arc::new(make().await)).await;
    events::pruning_removes_the_oldest_and_shows_as_a_gap(&make().await).await;
    events::cursors_are_kept_by_name(&make().await).await;
    events::reader_claims_are_exclusive_on_a_shared_store(&make().await).await;
    fencing::abandoned_leases_are_released_at_start(&make().await).await;
    leases::renewal_extends_only_the_current_holders_lease(&make().await).await;
    leases::expired_leases_are_released_whoever_held_them(&make().await).await;
    leases::racing_sweeps_take_each_lease_once(Arc::new(make().await)).await;
    fencing::fences_outlive_deletes(&make().await).await;
    replacing_a_readable_record_as_unreadable_is_refused(&make().await).await;
}

async fn round_trip_keeps_every_field(store: &impl Store) {
    let r = record("rt", 1);
    store.put(&r, None, None).await.expect("create");
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
    assert_eq!(back.reconnect_cause, r.reconnect_cause);
    assert_eq!(back.last_error, r.last_error);
    assert_eq!(back.last_refresh_at, r.last_refresh_at);
    assert_eq!(
        (back.created_at, back.updated_at),
        (r.created_at, r.updated_at)
    );
    assert_eq!(back.install_fingerprint, r.install_fingerprint);
    assert_eq!(back.params, r.params);
    assert_eq!(back.metadata, r.metadata);
    let missing = ConnectionId::new("missing").expect("id");
    assert!(store.get(&missing).await.expect("get").is_none());

    // Incarnations are random 64-bit numbers: the largest ones too.
    let mut big = record("big-incarnation", 1);
    big.incarnation = u64::MAX - 1;
    store.put(&big, None, None).await.expect("create");
    let next = bump(&big);
    store.put(&next, Some(1), None).await.expect("update");
    let back = store.get(&big.id).await.expect("get").expect("present");
    assert_eq!((back.incarnation, back.revision), (u64::MAX - 1, 2));
    store
        .delete(&big.id, at(u64::MAX - 1, 2))
        .await
        .expect("delete");
}

async fn create_only_when_absent(store: &impl Store) {
    let r = record("c", 1);
    store.put(&r, None, None).await.expect("create");
    let again = store.put(&record("c", 2), None, None).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { found: Some(1), .. })),
        "{again:?}"
    );
    let zero = store.put(&record("z", 0), None, None).await;
    assert!(
        matches!(zero, Err(StoreError::RevisionNotAdvanced { .. })),
        "{zero:?}"
    );
}

async fn compare_and_swap_on_revision(store: &impl Store) {
    let r1 = record("cas", 1);
    store.put(&r1, None, None).await.expect("create");
    let r2 = bump(&r1);
    store.put(&r2, Some(1), None).await.expect("advance 1 -> 2");

    // A writer that read revision 1 loses, and the newer record survives.
    let stale = bump(&r1);
    let lost = store.put(&stale, Some(1), None).await;
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
    let same = store.put(&r2, Some(2), None).await;
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
    store.put(&r, None, None).await.expect("create");
    let wrong = store.delete(&r.id, at(7, 2)).await;
    assert!(
        matches!(wrong, Err(StoreError::Conflict { .. })),
        "{wrong:?}"
    );
    assert!(store.get(&r.id).await.expect("get").is_some());
    let other_incarnation = store.delete(&r.id, at(8, 3)).await;
    assert!(
        matches!(other_incarnation, Err(StoreError::Conflict { .. })),
        "{other_incarnation:?}"
    );
    let readable = store.delete(&r.id, Expected::Unreadable).await;
    assert!(
        matches!(readable, Err(StoreError::Conflict { .. })),
        "a readable record is not deleted as unreadable: {readable:?}"
    );
    assert!(store.delete(&r.id, at(7, 3)).await.expect("delete"));
    assert!(!store.delete(&r.id, at(7, 3)).await.expect("delete again"));
    assert!(store.get(&r.id).await.expect("get").is_none());
    // The id can be created afresh after a delete.
    store
        .put(&record("d", 1), None, None)
        .await
        .expect("recreate");
}

async fn a_recreated_connection_refuses_writes_based_on_the_deleted_one(store: &impl Store) {
    let old = record("again", 1);
    store.put(&old, None, None).await.expect("create");
    assert!(store.delete(&old.id, at(7, 1)).await.expect("delete"));
    let mut new = record("again", 1);
    new.incarnation = old.incarnation + 1;
    new.tokens.access_token = SecretString::from("at-new-incarnation");
    store.put(&new, None, None).await.expect("re-create");
    // A refresh of the deleted incarnation finishing late: same id, same
    // revision numbers, other incarnation. It must not land.
    let late = bump(&old);
    let lost = store.put(&late, Some(1), None).await;
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
        .put(&bump(&new), Some(1), None)
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
        store.put(&r, None, None).await.expect("create");
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
    store
        .put(&record("a1", 1), None, None)
        .await
        .expect("create");
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

/// The secret-free summaries (what start-up schedules from) and the
/// counts per provider and status (the connections gauge) follow creates,
/// refreshes, status changes and deletes; combined filters and an id
/// prefix list exactly what a full scan would.
async fn summaries_and_census_follow_every_change(store: &impl Store) {
    let hubspot = ProviderName::new("hubspot").expect("provider");
    let sandbox = ProviderName::new("sandbox").expect("provider");
    for i in 0..6 {
        let mut r = record(&format!("s{i}"), 1);
        if i % 2 == 1 {
            r.provider = hubspot.clone();
        }
        store.put(&r, None, None).await.expect("create");
    }
    // s1 (hubspot) is revoked, s2 (sandbox) refreshed, s4 deleted.
    let mut revoked = bump(&store.get(&id("s1")).await.expect("get").expect("s1"));
    revoked.status = Status::ReconnectRequired;
    store.put(&revoked, Some(1), None).await.expect("revoke");
    let mut refreshed = bump(&store.get(&id("s2")).await.expect("get").expect("s2"));
    refreshed.tokens.expires_at = Timestamp::from_unix_millis(9_000_000);
    refreshed.tokens.obtained_at = Timestamp::from_unix_millis(7_200_000);
    store.put(&refreshed, Some(1), None).await.expect("refresh");
    assert!(store.delete(&id("s4"), at(7, 1)).await.expect("delete"));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.summaries(after.as_ref(), 2).await.expect("summaries");
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 2);
        after = Some(last.id.clone());
        seen.extend(page);
    }
    let names: Vec<_> = seen.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s5"]);
    assert_eq!(seen[1].status, Status::ReconnectRequired);
    assert_eq!(seen[1].provider, hubspot);
    assert_eq!(seen[2].expires_at, Timestamp::from_unix_millis(9_000_000));
    assert_eq!(seen[2].obtained_at, Timestamp::from_unix_millis(7_200_000));
    assert_eq!(seen[0], crate::summary::Summary::of(&record("s0", 1)));

    let census: Vec<_> = store
        .census()
        .await
        .expect("census")
        .iter()
        .map(|(p, s, n)| (p.to_string(), s, n))
        .collect();
    assert_eq!(
        census,
        [
            ("hubspot".to_owned(), Status::Active, 2),
            ("hubspot".to_owned(), Status::ReconnectRequired, 1),
            ("sandbox".to_owned(), Status::Active, 2),
        ]
    );

    let query =
        |provider: Option<&ProviderName>, status, prefix: Option<&str>, after: Option<&str>| {
            ListQuery {
                after: after.map(id),
                limit: 10,
                provider: provider.cloned(),
                status,
                prefix: prefix.map(str::to_owned),
            }
        };
    let ids = |v: Vec<Connection>| v.into_iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    let both = store
        .list(&query(Some(&hubspot), Some(Status::Active), None, None))
        .await
        .expect("list");
    assert_eq!(ids(both), ["s3", "s5"]);
    let active_after = store
        .list(&query(None, Some(Status::Active), Some("s"), Some("s2")))
        .await
        .expect("list");
    assert_eq!(ids(active_after), ["s3", "s5"]);
    let prefixed = store
        .list(&query(Some(&sandbox), None, Some("s2"), None))
        .await
        .expect("list");
    assert_eq!(ids(prefixed), ["s2"]);
    let none = store
        .list(&query(
            Some(&sandbox),
            Some(Status::ReconnectRequired),
            None,
            None,
        ))
        .await
        .expect("list");
    assert!(none.is_empty());
}

fn id(s: &str) -> ConnectionId {
    ConnectionId::new(s).expect("id")
}

async fn concurrent_writers_exactly_one_wins<S: Store>(store: Arc<S>) {
    let r1 = record("race", 1);
    store.put(&r1, None, None).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        let mut next = bump(&r1);
        next.tokens.access_token = SecretString::from(format!("writer-{i}"));
        tasks.push(tokio::spawn(async move {
            store.put(&next, Some(1), None).await
        }));
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

async fn replacing_a_readable_record_as_unreadable_is_refused(store: &impl Store) {
    let r = record("fine", 1);
    let absent = store.replace_unreadable(&r).await;
    assert!(
        matches!(absent, Err(StoreError::Conflict { .. })),
        "{absent:?}"
    );
    store.put(&r, None, None).await.expect("create");
    let readable = store.replace_unreadable(&bump(&r)).await;
    assert!(
        matches!(readable, Err(StoreError::Conflict { .. })),
        "{readable:?}"
    );
    assert_eq!(
        store
            .get(&r.id)
            .await
            .expect("get")
            .expect("present")
            .revision,
        1
    );
}
