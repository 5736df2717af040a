//! The store goes away for a while and comes back (issue 25, `pg-stop`):
//! a grant the provider issued meanwhile keeps its lease and reaches the
//! store within a second of its return, and store failures are retried on
//! their own short delay, not the provider's backoff.

use super::*;

/// Every store operation a refresh, a lease or the sweep makes.
const EVERY_OP: [Op; 10] = [
    Op::Get,
    Op::Put,
    Op::Delete,
    Op::List,
    Op::Summaries,
    Op::AcquireLease,
    Op::ReleaseLease,
    Op::RenewLease,
    Op::ReadEvents,
    Op::SaveCursor,
];

/// What fails while the store is "down".
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Everything: the database is stopped.
    Whole,
    /// Record writes only; reads and leases answer (a disk that refuses
    /// writes): the lease can be renewed, the grant cannot be written.
    Writes,
}

fn go_down(store: &Faulty, outage: Outage) {
    match outage {
        Outage::Whole => {
            for op in EVERY_OP {
                store.arm_always(op, Fault::BeforeWrite);
            }
        }
        Outage::Writes => store.arm_always(Op::Put, Fault::BeforeWrite),
    }
}

fn cid(id: &str) -> ConnectionId {
    ConnectionId::new(id).unwrap()
}

/// Issue 25, `pg-stop`, item 1, the whole database stopped for 6 s, less
/// than the 10 s lease.
///
/// Invariant: a store outage shorter than the refresh lease never lets
/// another replica present a refresh token whose successor this replica
/// holds. Replica A's provider call rotated the grant just before the
/// store went away; its write fails and the grant is pending. A keeps the
/// lease it got the grant under and retries the write every second at
/// most, so the grant is stored within a second of the store's return, and
/// replica B, asking all along, gets A's grant without presenting the spent
/// token: no refusal, no `ROTATION_LOST`. (Before: A's retries waited for
/// A's own lease to run out, 10 s after it was taken; then A or B took it,
/// and B, when it won, presented the spent token and announced
/// `ROTATION_LOST`.)
#[tokio::test(start_paused = true)]
async fn an_outage_shorter_than_the_lease_never_lets_another_replica_spend_a_pending_grant() {
    pending_grant_outlives(
        Outage::Whole,
        Duration::from_millis(500),
        Duration::from_secs(6),
    )
    .await;
}

/// Issue 25, `pg-stop`, item 1, the whole database stopped for 7.8 s from
/// 2.9 s into a 10 s lease (the provider took 3.3 s to answer).
///
/// Invariant: the same, whenever the outage begins: a held lease is
/// renewed at least every second (not only every third of its life), so
/// it has nearly all its life left when the store goes away. (Before, with
/// renewals every 3.3 s: the last renewal before the outage was the grant
/// itself at 0 s, so the lease had run out when the store came back at
/// 10.7 s, free for any replica to take.)
#[tokio::test(start_paused = true)]
async fn an_outage_late_in_a_lease_still_leaves_the_pending_grant_its_lease() {
    pending_grant_outlives(
        Outage::Whole,
        Duration::from_millis(3300),
        Duration::from_millis(7800),
    )
    .await;
}

/// Issue 25, `pg-stop`, item 1, record writes refused for 15 s, longer
/// than the 10 s lease, while the lease itself can still be renewed.
///
/// Invariant: a pending grant's lease is kept renewed while its write is
/// retried, so no other replica takes it over, however long the writes
/// fail, as long as the lease can be renewed. (Before: nothing renewed it
/// once the refresh ended; it ran out 10 s after it was taken and B
/// presented the spent token.)
#[tokio::test(start_paused = true)]
async fn a_pending_grants_lease_is_renewed_while_its_write_is_retried() {
    pending_grant_outlives(
        Outage::Writes,
        Duration::from_millis(500),
        Duration::from_secs(15),
    )
    .await;
}

/// A's provider call rotates at once and answers after `answer_after`; the
/// store goes away 400 ms before that, for `down_for`.
async fn pending_grant_outlives(outage: Outage, answer_after: Duration, down_for: Duration) {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    store.set_shared(true);
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    let replica = |node: &str| replica(&store, &provider, &clock, node, Duration::from_secs(10));
    let a = replica("a");
    let b = replica("b");
    a.start().await.unwrap();
    b.start().await.unwrap();
    let id = cid("c1");
    let (access, spent) = provider.issue();
    a.install(import_input("c1", &access, Some(&spent)))
        .await
        .unwrap();
    b.cached(&id).await.unwrap();

    // A's provider call rotates at once; its answer arrives after the
    // store is gone.
    provider.push(Step::RotateThenDelay(answer_after));
    let refresh = {
        let a = a.clone();
        let id = id.clone();
        tokio::spawn(async move { a.force_refresh(&id, Rejected::Unspecified).await })
    };
    tokio::time::sleep(answer_after - Duration::from_millis(400)).await;
    go_down(&store, outage);
    let down = tokio::time::Instant::now();
    let err = refresh.await.unwrap().unwrap_err();
    assert_eq!(reason(&err), "StorageUnavailable", "{err}");
    assert_eq!(provider.calls(), 1);
    assert!(
        !provider.live_refresh_tokens().contains(&spent),
        "strict rotation spent the stored token: A's pending grant is the only live one"
    );

    // B wants a new token all along, through the outage and after.
    let from_b = {
        let b = b.clone();
        let id = id.clone();
        tokio::spawn(async move {
            loop {
                match b.force_refresh(&id, Rejected::Unspecified).await {
                    Ok((fresh, _)) => return fresh,
                    Err(e) => {
                        let why = reason(&e);
                        assert!(
                            why == "StorageUnavailable",
                            "B was told something else than to retry: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };

    tokio::time::sleep_until(down + down_for).await;
    // As the store returns, A's lease is still live: no other replica can
    // take it (a probe, as another replica would, straight at the store).
    let probe = store
        .inner()
        .try_acquire_refresh_lease(&id, "c/probe", Duration::from_secs(10), clock.now())
        .await
        .unwrap();
    assert!(
        probe.is_none(),
        "A's lease ran out during an outage shorter than it ({outage:?} for {down_for:?})"
    );
    store.heal();
    let healed = tokio::time::Instant::now();
    // A's grant reaches the store within a second or so of its return.
    let stored = loop {
        let stored = store.inner().get(&id).await.unwrap().unwrap();
        let rt = stored
            .tokens
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret();
        if rt != spent {
            break stored;
        }
        assert!(
            healed.elapsed() < Duration::from_millis(1200),
            "A's pending grant was not written within 1.2 s of the store's return ({outage:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "{outage:?} for {down_for:?} from {:?} into the lease: A's grant stored {:?} after the store came back",
        answer_after - Duration::from_millis(400),
        healed.elapsed()
    );
    assert_eq!(stored.status, Status::Active);
    let stored_rt = stored
        .tokens
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret();
    assert!(
        provider
            .live_refresh_tokens()
            .iter()
            .any(|t| t == stored_rt),
        "the stored grant is the live one"
    );

    // Past the time the lease would have run out and been swept.
    let got = tokio::time::timeout(Duration::from_secs(30), from_b)
        .await
        .expect("B is served")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        provider.presented().iter().filter(|t| **t == spent).count(),
        1,
        "only A presented the token it spent: {:?}",
        provider.presented()
    );
    assert!(got.tokens.refresh_token.is_some());
    let rotation_lost = |e: &Arc<Engine>| {
        e.stats()
            .rotation_lost
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(rotation_lost(&a) + rotation_lost(&b), 0, "no false verdict");
    let up_to = *store.inner().event_watermark().borrow();
    let kinds: Vec<EventType> = store
        .inner()
        .read_events(0, up_to, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        !kinds.contains(&EventType::ReconnectRequired),
        "no RECONNECT_REQUIRED was announced: {kinds:?}"
    );
    let stored = store.inner().get(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Active);
}

/// Issue 25, `pg-stop`, item 2.
///
/// Invariant: a refresh that failed because the store failed (its lease,
/// the read under it, a write) is retried on a short delay of its own,
/// never the provider's backoff, and never opens the provider's breaker:
/// callers are told to come back within a second or two however long the
/// outage, and a connection whose token expired is served within 2 s of
/// the store's return. Here the outage begins between the lease's grant
/// and the read under it, so the lease's release fails too; it is released
/// before the next attempt, not left to run out (30 s). (Before: store
/// failures backed off like provider ones, 1 s doubling, so after 20 s of
/// outage callers were told to wait 8 s or more, and the connection then
/// waited for its own unreleased lease.)
#[tokio::test(start_paused = true)]
async fn a_connection_is_served_within_two_seconds_of_the_stores_return() {
    let fx = fixture(Setup::default()).await;
    // The imported token expires in 1 s; the refresh is needed.
    let (access, refresh) = fx.provider.issue();
    fx.engine
        .install(import_expiring(
            "exp",
            &access,
            Some(&refresh),
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
    let id = cid("exp");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The store goes away after granting the lease: the read under it and
    // the lease's release fail.
    fx.store.arm_always(Op::Get, Fault::BeforeWrite);
    fx.store.arm_always(Op::ReleaseLease, Fault::BeforeWrite);
    let err = fx.engine.get_token(&id, Duration::ZERO).await.unwrap_err();
    assert_eq!(reason(&err), "StorageUnavailable", "{err}");
    assert_eq!(fx.store.faulted(Op::ReleaseLease), 1, "the release failed");
    go_down(&fx.store, Outage::Whole);
    let down = tokio::time::Instant::now();
    let mut longest = Duration::ZERO;
    let mut refusals = 0;
    while down.elapsed() < Duration::from_secs(20) {
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            fx.engine.get_token(&id, Duration::ZERO),
        )
        .await
        .expect("a caller is answered at once while the store is down");
        let err = answer.expect_err("no token without the store");
        assert_eq!(reason(&err), "StorageUnavailable", "{err}");
        let EngineError::StorageUnavailable {
            retry_after: retry, ..
        } = err
        else {
            unreachable!("checked above")
        };
        longest = longest.max(retry);
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        longest <= Duration::from_secs(2),
        "a store failure was retried like a provider failure: told to wait {longest:?}"
    );
    assert_eq!(fx.provider.calls(), 0, "no provider call without the store");
    assert!(
        fx.engine
            .provider_trouble(&ProviderName::new("p").unwrap())
            .is_none(),
        "the store's failures never open the provider's breaker"
    );

    fx.store.heal();
    let healed = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            fx.engine.get_token(&id, Duration::ZERO),
        )
        .await
        {
            Ok(Ok(served)) => {
                assert!(!served.tokens.access_token_is(&access), "a new token");
                break;
            }
            Ok(Err(e)) => assert_eq!(reason(&e), "StorageUnavailable", "{e}"),
            Err(_) => {}
        }
        assert!(
            healed.elapsed() <= Duration::from_secs(2),
            "not served within 2 s of the store's return"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{refusals} refusals over the 20 s outage (longest retry delay {longest:?}); served {:?} after the store came back",
        healed.elapsed()
    );
    assert_eq!(fx.provider.calls(), 1);
}
