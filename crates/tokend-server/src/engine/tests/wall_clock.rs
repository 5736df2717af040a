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
