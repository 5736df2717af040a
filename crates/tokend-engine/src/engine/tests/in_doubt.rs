//! Refreshes left in doubt: the provider may have rotated the grant but no
//! usable answer came back (a timeout or reset after sending, a 5xx from an
//! edge). Issue 25, item 1.

use super::*;

pub(super) fn background(rotation: ScriptRotation, grace: Duration) -> Setup {
    Setup {
        rotation,
        grace,
        settings: EngineSettings {
            background_refresh: true,
            ..settings()
        },
        ..Default::default()
    }
}

async fn stored(fx: &Fx) -> tokend_core::Connection {
    fx.store.inner().get(&fx.id).await.unwrap().unwrap()
}

/// Invariant: a lost answer is retried promptly with the same refresh token,
/// whatever the access token's remaining life, so a provider's reuse grace
/// saves the grant; and the grant obtained then is the live one.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_retried_within_a_second_inside_the_grace() {
    let grace = Duration::from_secs(30);
    let fx = fixture(background(ScriptRotation::Grace(grace), grace)).await;
    let before = fx.stored_refresh_token().await;
    // The provider rotates, then its answer never arrives.
    fx.provider.push(Step::RotateThenFail(
        tokend_provider::scripted::ScriptedProvider::timed_out(),
    ));
    let _ = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(fx.provider.calls(), 1);
    // The access token has ~30 minutes left: only doubt justifies a call.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fx.provider.calls(), 2, "retried within a second");
    let presented = fx.provider.presented();
    assert_eq!(presented[0], presented[1], "with the same refresh token");
    assert_eq!(presented[0], before);
    let record = stored(&fx).await;
    assert_eq!(record.status, Status::Active);
    let now_live = fx.stored_refresh_token().await;
    assert_ne!(now_live, before);
    assert!(fx.live(&now_live), "the stored token is the live one");
    // Long after the grace, the grant still renews.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let (_, refreshed) = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    assert_eq!(stored(&fx).await.status, Status::Active);
}

/// Invariant: under strict rotation a lost answer is known as lost within
/// seconds and told truthfully (`ROTATION_LOST`, never `REVOKED`), while
/// the still-valid access token keeps being served, status visible.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_under_strict_rotation_is_rotation_lost_at_once() {
    let fx = fixture(background(ScriptRotation::Strict, Duration::ZERO)).await;
    let mut events = fx.engine.subscribe(&fx.id);
    // Rotated, then a 503 from the provider's edge.
    fx.provider.push(Step::RotateThenFail(
        tokend_provider::scripted::ScriptedProvider::transient(),
    ));
    let served = fx.engine.get_token(&fx.id, Duration::ZERO).await.unwrap();
    let _ = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = stored(&fx).await;
    assert_eq!(
        record.status,
        Status::ReconnectRequired,
        "known within seconds"
    );
    assert_eq!(record.reconnect_cause, Some(ReconnectCause::RotationLost));
    let mut told = false;
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await {
        told |= event.kind == EventKind::StatusChanged
            && event.connection.status == Status::ReconnectRequired;
    }
    assert!(told, "watchers were told");
    // The access token the provider issued before is still valid: served
    // until it expires, from a record that says RECONNECT_REQUIRED.
    let still = fx.engine.get_token(&fx.id, Duration::ZERO).await.unwrap();
    assert_eq!(still.status, Status::ReconnectRequired);
    assert_eq!(
        still.tokens.access_token.expose_secret(),
        served.tokens.access_token.expose_secret()
    );
    // Not past its expiry, nor for a caller who needs longer than is left.
    let err = fx
        .engine
        .get_token(&fx.id, Duration::from_secs(1799))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ReconnectRequired", "{err}");
    tokio::time::sleep(Duration::from_secs(1800)).await;
    let err = fx
        .engine
        .get_token(&fx.id, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ReconnectRequired", "{err}");
}

/// Invariant: a failure proven to precede sending (connect refused, DNS,
/// TLS handshake) puts nothing in doubt: no early call, and a later refusal
/// is a revocation.
#[tokio::test(start_paused = true)]
async fn a_connect_failure_is_not_in_doubt() {
    let fx = fixture(background(ScriptRotation::Strict, Duration::ZERO)).await;
    fx.provider.push(Step::Fail(
        tokend_provider::scripted::ScriptedProvider::connect_failed(),
    ));
    let _ = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        fx.provider.calls(),
        1,
        "a fresh token is not refreshed again"
    );
    fx.provider.revoke_all();
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ReconnectRequired", "{err}");
    assert_eq!(
        stored(&fx).await.reconnect_cause,
        Some(ReconnectCause::Revoked)
    );
}

/// Invariant: while answers keep getting lost, retries stay inside the
/// provider's rotation grace, and the first definitive answer ends them.
#[tokio::test(start_paused = true)]
async fn repeated_lost_answers_are_retried_inside_the_grace() {
    let grace = Duration::from_secs(30);
    let fx = fixture(background(ScriptRotation::Grace(grace), grace)).await;
    for _ in 0..4 {
        fx.provider.push(Step::RotateThenFail(
            tokend_provider::scripted::ScriptedProvider::timed_out(),
        ));
    }
    let started = tokio::time::Instant::now();
    let _ = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    while fx.provider.calls() < 5 {
        assert!(started.elapsed() < grace, "retried inside the grace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let record = stored(&fx).await;
    assert_eq!(record.status, Status::Active);
    assert!(fx.live(&fx.stored_refresh_token().await));
    let calls = fx.provider.calls();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        fx.provider.calls(),
        calls,
        "a definitive answer ends the retries"
    );
}
