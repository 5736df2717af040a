//! Leases outlive nothing (issue 25, items 2 and 8): replicas on one store
//! (engines sharing a `FaultStore` that says it is shared), a provider
//! slower than the lease, and replicas that die holding a lease under
//! names nobody uses again.

use super::*;

use tokend_store::Lease;

const TTL: Duration = Duration::from_secs(3);

struct Fleet {
    store: Arc<Faulty>,
    provider: Arc<ScriptedProvider>,
    clock: Clock,
    grace: Duration,
}

impl Fleet {
    fn new(rotation: ScriptRotation, grace: Duration) -> Fleet {
        let clock = Clock::system();
        let store = Arc::new(FaultStore::new(MemoryStore::new()));
        store.set_shared(true);
        Fleet {
            provider: Arc::new(ScriptedProvider::new(clock.clone(), rotation)),
            store,
            clock,
            grace,
        }
    }

    /// A started replica named `node`.
    async fn replica(&self, node: &str, settings: EngineSettings) -> Arc<Engine> {
        let engine = Engine::new(
            self.store.clone(),
            vec![provider_config(self.grace, Duration::ZERO)],
            self.provider.clone(),
            self.clock.clone(),
            EngineSettings {
                node: node.into(),
                ..settings
            },
        );
        engine.start().await.unwrap();
        engine
    }

    async fn import(&self, engine: &Arc<Engine>, id: &str, expires_in: Duration) -> String {
        let (access, refresh) = self.provider.issue();
        engine
            .install(import_expiring(id, &access, Some(&refresh), expires_in))
            .await
            .unwrap();
        access
    }

    /// A replica that dies while holding `id`'s lease: it took the lease
    /// under a name nobody will use again, and never releases it.
    async fn dies_holding(&self, id: &str, ttl: Duration) -> Lease {
        self.store
            .try_acquire_refresh_lease(&cid(id), "pod-7f9c4d/1-1", ttl, self.clock.now())
            .await
            .unwrap()
            .expect("the lease was free")
    }

    async fn stored(&self, id: &str) -> tokend_core::Connection {
        self.store.inner().get(&cid(id)).await.unwrap().unwrap()
    }

    fn live(&self, refresh_token: &tokend_core::Connection) -> bool {
        let rt = refresh_token.tokens.refresh_token.as_ref().unwrap();
        self.provider
            .live_refresh_tokens()
            .iter()
            .any(|t| t == rt.expose_secret())
    }
}

fn cid(id: &str) -> ConnectionId {
    ConnectionId::new(id).unwrap()
}

fn quiet(lease_ttl: Duration) -> EngineSettings {
    EngineSettings {
        lease_ttl,
        ..settings()
    }
}

/// Item 2. Invariant: the lease outlives its provider call, however slow:
/// renewed while the call runs, it keeps every other replica from taking
/// it, so a grant is refreshed once, not twice, and the strict provider's
/// rotation never refuses one replica's token because the other spent it.
/// (Before: the 3 s lease ran out under a 10 s call and B refreshed too.)
#[tokio::test(start_paused = true)]
async fn a_provider_call_slower_than_the_lease_keeps_it_and_no_replica_refreshes_twice() {
    let fleet = Fleet::new(ScriptRotation::Strict, Duration::ZERO);
    let a = fleet.replica("a", quiet(TTL)).await;
    let b = fleet.replica("b", quiet(TTL)).await;
    fleet.import(&a, "slow", Duration::from_secs(1800)).await;
    b.cached(&cid("slow")).await.unwrap();
    fleet.provider.push(Step::Delay(Duration::from_secs(10)));
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.force_refresh(&cid("slow"), Rejected::Unspecified).await })
    };
    // Well past A's first lease (3 s), its call still out: B asks too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (from_b, _) = b
        .force_refresh(&cid("slow"), Rejected::Unspecified)
        .await
        .expect("B is answered with A's refresh");
    let (from_a, refreshed) = first.await.unwrap().expect("A's refresh lands");
    assert!(refreshed);
    assert_eq!(
        fleet.provider.calls(),
        1,
        "one grant, one provider call: B waited for A's lease"
    );
    assert_eq!(from_a.version, from_b.version, "B got A's grant");
    let stored = fleet.stored("slow").await;
    assert_eq!(stored.status, Status::Active);
    assert!(fleet.live(&stored), "the stored grant is the live one");
    assert_eq!(
        a.stats()
            .leases_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        fleet.store.calls(Op::RenewLease) >= 3,
        "renewed every third of the lease while the call ran"
    );
}

/// Item 8. Invariant: a replica that dies mid-refresh, under a name no
/// replica will use again (a Kubernetes pod), leaves a lease that a live
/// replica takes over within `lease_ttl` and a sweep, refreshing the
/// connection at once and in doubt, without a caller or the next due time
/// (half an hour away here), while the provider's rotation grace still
/// holds the token the dead replica spent. (Before: nothing happened until
/// the connection fell due, long after the grace.)
#[tokio::test(start_paused = true)]
async fn a_dead_replicas_lease_is_taken_over_whatever_its_name() {
    let grace = Duration::from_secs(60);
    let fleet = Fleet::new(ScriptRotation::Grace(grace), grace);
    let live = fleet.replica("pod-5b2a91", quiet(TTL)).await;
    fleet
        .import(&live, "orphan", Duration::from_secs(1800))
        .await;
    let v0 = fleet.stored("orphan").await.version;
    // The dead pod took the lease and spent the refresh token: the provider
    // rotated, and the answer died with the pod.
    fleet.dies_holding("orphan", TTL).await;
    let spent = fleet.stored("orphan").await.tokens.refresh_token.unwrap();
    let config = provider_config(grace, Duration::ZERO);
    fleet.provider.refresh(&config, &spent).await.unwrap();
    let died = tokio::time::Instant::now();
    let deadline = died + TTL + crate::engine::lease::sweep_every(TTL) + Duration::from_secs(1);
    loop {
        let stored = fleet.stored("orphan").await;
        if stored.version > v0 {
            assert_eq!(stored.status, Status::Active);
            assert!(
                fleet.live(&stored),
                "the taken-over refresh holds a live grant"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead pod's lease was not taken over within {:?}",
            deadline - died
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "taken over {:?} after the holder died (lease {TTL:?})",
        died.elapsed()
    );
    assert_eq!(
        live.stats()
            .leases_taken_over
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(fleet.provider.calls(), 2, "the dead pod's call and ours");
}

/// Item 8. Invariant: a caller whose token is still valid never waits for
/// a lease another process holds (a dead replica's lasts `lease_ttl`): it
/// gets its token at once, and the refresh goes on without it, taking the
/// lease over when it runs out. (Before: the caller waited the 30 s.)
#[tokio::test(start_paused = true)]
async fn a_caller_with_a_valid_token_never_waits_for_a_dead_lease() {
    let fleet = Fleet::new(ScriptRotation::Strict, Duration::ZERO);
    let engine = fleet.replica("b", quiet(Duration::from_secs(30))).await;
    let access = fleet
        .import(&engine, "held", Duration::from_secs(600))
        .await;
    // Inside the 300 s refresh buffer, 290 s still to live.
    tokio::time::sleep(Duration::from_secs(310)).await;
    let v0 = fleet.stored("held").await.version;
    fleet.dies_holding("held", Duration::from_secs(30)).await;
    let asked = tokio::time::Instant::now();
    let got = engine
        .get_token(&cid("held"), Duration::ZERO)
        .await
        .expect("the valid token");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "answered without waiting for the dead lease: {:?}",
        asked.elapsed()
    );
    assert!(got.tokens.access_token_is(&access));
    // The refresh went on without the caller, and took over at expiry.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        fleet.stored("held").await.version > v0,
        "refreshed after the lease ran out"
    );
}

/// Item 8. Invariant: a background refresh waiting for another process's
/// lease gives its refresher permit back, so one dead replica's leases
/// cannot stall every other connection's renewal. With one permit, `x`
/// (held by a dead replica for 30 s) falls due first and `y` a second
/// later: `y` is refreshed at once. (Before: `y` waited for `x`'s lease.)
#[tokio::test(start_paused = true)]
async fn background_refreshes_waiting_on_a_dead_lease_hold_no_permit() {
    let fleet = Fleet::new(ScriptRotation::Strict, Duration::ZERO);
    let engine = fleet
        .replica(
            "b",
            EngineSettings {
                lease_ttl: Duration::from_secs(30),
                background_concurrency: 1,
                ..Default::default()
            },
        )
        .await;
    fleet.import(&engine, "x", Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.import(&engine, "y", Duration::from_secs(600)).await;
    let (x0, y0) = (
        fleet.stored("x").await.version,
        fleet.stored("y").await.version,
    );
    // x is due at 300 s, y at 301 s; the dead replica holds x from 299 s.
    tokio::time::sleep(Duration::from_secs(298)).await;
    fleet.dies_holding("x", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        fleet.stored("y").await.version > y0,
        "y was refreshed while x waits for the dead lease"
    );
    assert_eq!(fleet.stored("x").await.version, x0, "x waits for the lease");
    // And x is refreshed once the lease runs out.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fleet.stored("x").await.version > x0);
}
