//! Shutdown against a store that does not answer: the grace is a deadline.

use super::*;

/// Issue 25, item 9. Invariant 12 (shutdown within `shutdown_grace`): the
/// last attempt to persist pending grants is bounded by the deadline as a
/// whole. A store whose write hangs (a flush that never returns) must not
/// keep the process from exiting, and restarting, for ever; the grant is
/// logged at ERROR as lost instead.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_at_its_deadline_when_the_store_hangs() {
    let grace = Duration::from_secs(3);
    let fx = fixture(Setup {
        settings: EngineSettings {
            shutdown_grace: grace,
            ..settings()
        },
        ..Default::default()
    })
    .await;
    // A grant the store refused: pending.
    fx.store.arm_always(Op::Put, Fault::BeforeWrite);
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    // Then the store stops answering writes at all.
    fx.store.arm_always(Op::Put, Fault::Hang);
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(grace * 10, fx.engine.shutdown()).await;
    assert!(
        ended.is_ok(),
        "shutdown waited for the hung store past its grace"
    );
    assert!(started.elapsed() <= grace + Duration::from_millis(1));
    assert!(fx.store.calls(Op::Put) >= 2, "the pending grant was tried");
}
