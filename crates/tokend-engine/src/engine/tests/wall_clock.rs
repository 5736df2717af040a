//! The engine after a wall-clock jump (issue 25, item 11).

use super::{in_doubt::background, *};

/// Issue 25, item 11. Invariant: after the wall clock jumps forward (a
/// suspend stopped the monotonic clock), a token past its real expiry is
/// neither served nor left waiting for a refresh timetable computed before
/// the jump: the refresher wakes and renews it.
#[tokio::test(start_paused = true)]
async fn a_forward_wall_clock_jump_is_followed_and_wakes_the_refresher() {
    let fx = fixture(background(ScriptRotation::Strict, Duration::ZERO)).await;
    let served = fx.engine.get_token(&fx.id, Duration::ZERO).await.unwrap();
    // The machine slept 40 minutes: the 30-minute token is dead.
    let wall = fx
        .engine
        .clock
        .now()
        .saturating_add(Duration::from_secs(2400));
    let jump = fx.engine.clock.observe_wall(wall);
    assert!(matches!(jump, Some(tokend_core::WallJump::Forward(_))));
    fx.engine.wall_clock_checked(jump, &mut false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fx.provider.calls(), 1, "the refresher woke and renewed it");
    let now = fx.engine.get_token(&fx.id, Duration::ZERO).await.unwrap();
    assert_ne!(
        now.tokens.access_token.expose_secret(),
        served.tokens.access_token.expose_secret()
    );
    assert!(now.tokens.ttl(fx.engine.clock.now()) > Duration::from_secs(1700));
}

/// The database's clock (`fleet`), a store that has it, as PostgreSQL
/// does, and a replica on it whose own machine's clock is off by
/// `skew_ms`: its clock anchored the way `run` anchors it.
async fn fleet_replica(
    store: &Arc<Faulty>,
    provider: &Arc<ScriptedProvider>,
    node: &str,
    skew_ms: i64,
    background: bool,
) -> (Arc<Engine>, bool) {
    let (clock, fleet) = crate::engine::anchor_clock(store.as_ref(), Clock::off_by(skew_ms))
        .await
        .unwrap();
    let engine = Engine::new(
        store.clone(),
        vec![provider_config(Duration::ZERO, Duration::ZERO)],
        provider.clone(),
        clock,
        EngineSettings {
            background_refresh: background,
            lease_ttl: Duration::from_secs(3),
            node: node.into(),
            ..settings()
        },
    );
    engine.start().await.unwrap();
    (engine, fleet)
}

fn fleet_store(fleet: &Clock) -> Arc<Faulty> {
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    store.set_shared(true);
    store.set_fleet_clock(Some(fleet.clone()));
    store
}

/// Issue 25, item 11 (`clock-step`). Invariant: a replica whose wall clock
/// is ahead never takes over a lease another replica holds live. Its clock
/// is the fleet's (the store's), not its machine's: A's lease, stamped and
/// renewed by the fleet's time, has not run out by B's either, so B's sweep
/// leaves it and the provider sees one refresh. (Before: B, 120 s ahead,
/// found A's lease expired, took the refresh over and presented the same
/// refresh token a second time.)
#[tokio::test(start_paused = true)]
async fn a_replica_whose_clock_is_ahead_takes_over_no_live_lease() {
    let fleet = Clock::system();
    let store = fleet_store(&fleet);
    let provider = Arc::new(ScriptedProvider::new(fleet.clone(), ScriptRotation::Strict));
    let (a, _) = fleet_replica(&store, &provider, "a", 0, false).await;
    let (b, _) = fleet_replica(&store, &provider, "b", 120_000, true).await;
    let (access, refresh) = provider.issue();
    a.install(import_input("c1", &access, Some(&refresh)))
        .await
        .unwrap();
    let id = ConnectionId::new("c1").unwrap();
    // A's refresh takes 5 s at the provider, under a 3 s lease it renews
    // every second; B sweeps every second meanwhile.
    provider.push(Step::Delay(Duration::from_secs(5)));
    let refreshed = a.force_refresh(&id, Rejected::Unspecified).await;
    assert!(refreshed.is_ok(), "{:?}", refreshed.err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.calls(), 1, "B took A's live lease over");
    assert_eq!(
        b.stats()
            .leases_taken_over
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Issue 25, item 11 (`clock-step`). Invariant: a replica whose wall clock
/// is behind never serves a token another replica stamped as expired: by
/// the fleet's time the token is dead, so B refreshes it. (Before: B, 120 s
/// behind, saw 119 s of life left in a 60 s token A had stamped expired a
/// second earlier, and served it for two minutes after the provider
/// stopped taking it.)
#[tokio::test(start_paused = true)]
async fn a_replica_whose_clock_is_behind_serves_no_token_stamped_expired() {
    let fleet = Clock::system();
    let store = fleet_store(&fleet);
    let provider = Arc::new(ScriptedProvider::new(fleet.clone(), ScriptRotation::Strict));
    let (a, _) = fleet_replica(&store, &provider, "a", 0, false).await;
    let (b, _) = fleet_replica(&store, &provider, "b", -120_000, false).await;
    let (access, refresh) = provider.issue();
    a.install(import_input("c1", &access, Some(&refresh)))
        .await
        .unwrap();
    let id = ConnectionId::new("c1").unwrap();
    // A refreshes: a 60 s token, stamped by A.
    provider.set_lifetime(Duration::from_secs(60));
    let (stamped, _) = a.force_refresh(&id, Rejected::Unspecified).await.unwrap();
    let stamped = stamped.tokens.access_token.expose_secret().to_owned();
    provider.set_lifetime(Duration::from_secs(1800));
    tokio::time::sleep(Duration::from_secs(61)).await;
    let served = b.get_token(&id, Duration::ZERO).await.unwrap();
    assert_ne!(
        served.tokens.access_token.expose_secret(),
        stamped,
        "B served the token A stamped as expired"
    );
    assert!(served.tokens.ttl(fleet.now()) > Duration::from_secs(1700));
    assert_eq!(provider.calls(), 2, "B refreshed it");
    a.shutdown().await;
    b.shutdown().await;
}

/// Issue 25, item 11 (`clock-step`). Invariant: on a shared store the wall
/// clock watcher follows the fleet's clock (forward within a second, never
/// back), not the machine's, whose own steps therefore move nothing; and a
/// reading of the fleet's clock that fails is no jump: the clock keeps the
/// offset it had. (Before: the watcher followed the machine's wall clock,
/// so a forward step of one replica's clock made it take live leases.)
#[tokio::test(start_paused = true)]
async fn on_a_shared_store_the_watcher_follows_the_fleet_clock_not_the_machine() {
    let fleet = Clock::system();
    let store = fleet_store(&fleet);
    let provider = Arc::new(ScriptedProvider::new(fleet.clone(), ScriptRotation::Strict));
    let (b, fleet_clocked) = fleet_replica(&store, &provider, "b", 120_000, false).await;
    b.tasks()
        .spawn(Arc::clone(&b).watch_wall_clock(fleet_clocked));
    let near = |what: &str| {
        let off = b.clock.now().unix_millis() - fleet.now().unix_millis();
        assert!(off.abs() <= 10, "{what}: {off} ms off the fleet's clock");
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    near("3 s on");
    // The database's clock steps forward 40 s: followed within a second.
    fleet.observe_wall(fleet.now().saturating_add(Duration::from_secs(40)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    near("after the fleet's step forward");
    // Its reads fail: no jump either way, time goes on.
    store.arm_always(Op::FleetClock, Fault::BeforeWrite);
    fleet.observe_wall(fleet.now().saturating_add(Duration::from_secs(40)));
    let before = b.clock.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        b.clock.now(),
        before.saturating_add(Duration::from_secs(3)),
        "a failed reading moved the clock"
    );
    assert!(
        store.faulted(Op::FleetClock) >= 3,
        "the watcher kept asking"
    );
    store.heal();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    near("once the clock reads again");
    // A fleet clock seen behind (the database's clock stepped back): "now"
    // never goes back.
    let fleet_back = Clock::starting_at(fleet.now().saturating_sub(Duration::from_secs(60)));
    store.set_fleet_clock(Some(fleet_back));
    let before = b.clock.now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.clock.now(), before.saturating_add(Duration::from_secs(2)));
    b.shutdown().await;
}

/// A store without a clock of its own (sled, memory): the machine's clock
/// stays, and its watcher keeps following the machine's wall clock.
#[tokio::test(start_paused = true)]
async fn a_store_without_a_clock_keeps_the_machine_clock() {
    let store = FaultStore::new(MemoryStore::new());
    let local = Clock::off_by(60_000);
    let at = local.now();
    let (clock, fleet) = crate::engine::anchor_clock(&store, local).await.unwrap();
    assert!(!fleet);
    assert_eq!(clock.now(), at);
    assert_eq!(store.calls(Op::FleetClock), 1);
}
