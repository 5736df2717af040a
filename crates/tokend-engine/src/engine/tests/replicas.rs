//! Two engines sharing one store, as two replicas share PostgreSQL: a
//! replica whose answer comes back after its lease ran out (issue 25,
//! item 3).

use super::*;

/// Invariant: a grant obtained from the refresh token the store holds is
/// newer than any verdict the store reached meanwhile. Replica A's answer
/// arrives after its lease expired; replica B took over, presented the same
/// (now spent) refresh token, was refused and wrote ROTATION_LOST. A's
/// fenced grant is the only live one: it is written back, the connection
/// revives (RECOVERED), and nothing is lost, whatever A learns of B's write
/// in between (here: the event, after its own write was fenced).
#[tokio::test(start_paused = true)]
async fn a_late_answer_from_a_fenced_out_replica_is_written_back() {
    late_answer(false).await;
}

/// Invariant: the same, when the store also refuses A's write for a while:
/// A's grant stays pending and its retry stays scheduled although the
/// cached record says RECONNECT_REQUIRED (the slot is not ACTIVE).
#[tokio::test(start_paused = true)]
async fn a_fenced_out_grant_the_store_refused_is_retried_until_written() {
    late_answer(true).await;
}

async fn late_answer(store_refuses: bool) {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    let replica = |node: &str| replica(&store, &provider, &clock, node, Duration::from_secs(1));
    let a = replica("a");
    let b = replica("b");
    a.start().await.unwrap();
    b.start().await.unwrap();
    let id = ConnectionId::new("c1").unwrap();
    let (access, refresh) = provider.issue();
    a.install(import_input("c1", &access, Some(&refresh)))
        .await
        .unwrap();
    // A's provider call rotates at once, but its answer takes 1.5 s, and A
    // cannot renew its lease meanwhile (a partition from the database, a
    // paused process): it runs out.
    provider.push(Step::RotateThenDelay(Duration::from_millis(1500)));
    store.arm_always(Op::RenewLease, Fault::BeforeWrite);
    let slow = {
        let a = a.clone();
        let id = id.clone();
        tokio::spawn(async move { a.force_refresh(&id, Rejected::Unspecified).await })
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A's lease has expired: B takes over and is refused.
    let err = b
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ReconnectRequired", "{err}");
    store.heal();
    if store_refuses {
        store.arm(Op::Put, Fault::BeforeWrite, 3);
    }
    let _ = slow.await.unwrap();
    if !store_refuses {
        let stored = store.inner().get(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Active, "written back at once");
    }
    // A hears of B's verdict (the event log) after its write was fenced.
    a.reload(&id, EventType::ReconnectRequired).await.unwrap();
    // A's grant must reach the store soon after.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stored = store.inner().get(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Active, "revived with A's grant");
    let rt = stored
        .tokens
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret();
    assert!(
        provider.live_refresh_tokens().iter().any(|t| t == rt),
        "the stored refresh token is the live one"
    );
    let up_to = *store.inner().event_watermark().borrow();
    let kinds: Vec<EventType> = store
        .inner()
        .read_events(0, up_to, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventType::Recovered), "{kinds:?}");
    // And B serves it too.
    b.reload(&id, EventType::Recovered).await.unwrap();
    b.get_token(&id, Duration::ZERO).await.unwrap();
}
