//! Durable before visible: a grant is handed out only after a write holding
//! it landed; a refused write keeps it pending; a refresh token is written
//! ahead of validation; a lost answer makes the next refusal ROTATION_LOST;
//! the previous refresh token recovers within the grace.

use super::*;

/// Item 1. Invariant: a token set is handed out only after a write holding
/// it succeeded. A write that lands and then reports failure (sled: swap
/// done, flush failed) is rewritten, not mistaken for someone else's; the
/// refresh is then announced and rescheduled like any other.
#[tokio::test(start_paused = true)]
async fn a_write_that_lands_but_reports_failure_is_rewritten_then_announced() {
    let fx = fixture(Setup::default()).await;
    let mut events = fx.engine.subscribe(&fx.id);
    fx.store.arm(Op::Put, Fault::AfterWrite, 1);
    let (fresh, refreshed) = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    let stored = fx.store.inner().get(&fx.id).await.unwrap().unwrap();
    assert!(
        stored.revision > fresh.revision - 1 && stored.tokens.same_refresh_token(&fresh.tokens),
        "what was handed out is what is stored"
    );
    assert!(
        fx.store.calls(Op::Put) >= 2,
        "the landed write was rewritten"
    );
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind, EventKind::TokenRotated);
    assert!(fx.engine.next_due(&fx.id).is_some(), "rescheduled");
    // The durable log holds the refresh once: the landed write carried its
    // event, and the rewrite that flushed it adds none.
    assert_eq!(
        logged(&fx).await,
        [EventType::Installed, EventType::TokenRotated]
    );
}

async fn logged(fx: &Fx) -> Vec<EventType> {
    let store = fx.store.inner();
    let up_to = *store.event_watermark().borrow();
    store
        .read_events(0, up_to, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

/// Invariant: the log tells a connection's health as it was: a failed
/// refresh is REFRESH_FAILED, the next success TOKEN_ROTATED then
/// RECOVERED, and a refusal RECONNECT_REQUIRED with its cause, once.
#[tokio::test(start_paused = true)]
async fn the_log_tells_failures_recoveries_and_revocations() {
    let fx = fixture(Setup::default()).await;
    fx.provider.push(Step::Fail(ScriptedProvider::transient()));
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_secs(400)).await;
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    fx.provider.revoke_all();
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    let _ = fx.engine.force_refresh(&fx.id, Rejected::Unspecified).await;
    assert_eq!(
        logged(&fx).await,
        [
            EventType::Installed,
            EventType::RefreshFailed,
            EventType::TokenRotated,
            EventType::Recovered,
            EventType::ReconnectRequired
        ]
    );
    let store = fx.store.inner();
    let last = store.read_events(4, 5, 1).await.unwrap().remove(0);
    assert_eq!(last.cause, Some(ReconnectCause::Revoked));
}

/// Item 1/2. Invariant: when the store keeps failing, callers get
/// UNAVAILABLE (STORAGE_UNAVAILABLE) with a retry delay, never the
/// unpersisted token.
#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_failing_gets_unavailable_not_a_token() {
    let fx = fixture(Setup::default()).await;
    fx.store.arm_always(Op::Put, Fault::AfterWrite);
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "StorageUnavailable", "{err}");
    assert!(
        matches!(err, EngineError::StorageUnavailable { retry_after, .. } if !retry_after.is_zero()),
        "with a retry delay"
    );
}

/// Item 2. Invariant: a grant the store refused is kept, retried soon (not
/// at the next due time), persisted without a second provider call, and
/// never dropped.
#[tokio::test(start_paused = true)]
async fn a_refused_grant_is_persisted_soon_after_the_store_heals() {
    let fx = fixture(Setup {
        settings: EngineSettings {
            background_refresh: true,
            ..settings()
        },
        ..Default::default()
    })
    .await;
    let before = fx.stored_refresh_token().await;
    fx.store.arm_always(Op::Put, Fault::BeforeWrite);
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "StorageUnavailable", "{err}");
    assert_eq!(fx.provider.calls(), 1);
    assert!(!fx.live(&before), "strict rotation killed the stored token");
    // The store stays broken for a while: retries keep the grant.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fx.store.heal();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = fx.stored_refresh_token().await;
    assert_ne!(after, before);
    assert!(fx.live(&after), "the persisted grant is the live one");
    assert_eq!(fx.provider.calls(), 1, "persisted without calling again");
}

/// Item 3. Invariant: the refresh token of a 2xx answer that fails
/// validation is persisted before the failure is handled, so the retry
/// presents the live token instead of the one the provider just killed.
#[tokio::test(start_paused = true)]
async fn the_refresh_token_of_an_invalid_2xx_is_written_ahead() {
    let fx = fixture(Setup::default()).await;
    fx.provider.push(Step::RotateThenSalvage);
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ProviderUnavailable", "{err}");
    let stored = fx.stored_refresh_token().await;
    assert!(fx.live(&stored), "the salvaged token was persisted");
    tokio::time::sleep(Duration::from_secs(400)).await;
    let (_, refreshed) = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed, "the next refresh uses the live token");
}

/// Item 3, the unreadable case. Invariant: a 2xx whose body is lost leaves
/// the refresh in doubt, so the refusal that follows is ROTATION_LOST,
/// never REVOKED.
#[tokio::test(start_paused = true)]
async fn a_lost_2xx_makes_the_next_refusal_rotation_lost() {
    let fx = fixture(Setup::default()).await;
    let mut lost = ScriptedProvider::transient();
    lost.salvage = Some(tokend_provider::Salvage {
        refresh_token: None,
    });
    fx.provider.push(Step::RotateThenFail(lost));
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_secs(400)).await;
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ReconnectRequired");
    let record = fx.store.inner().get(&fx.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::ReconnectRequired);
    assert_eq!(record.reconnect_cause, Some(ReconnectCause::RotationLost));
    assert!(
        matches!(
            err,
            EngineError::ReconnectRequired {
                cause: Some(ReconnectCause::RotationLost),
                ..
            }
        ),
        "{err}"
    );
}

/// Item 4. Invariant: before a refused grant is given up, the previous
/// refresh token is tried once when the provider's rotation grace allows.
#[tokio::test(start_paused = true)]
async fn the_previous_refresh_token_recovers_within_the_grace() {
    let fx = fixture(Setup {
        rotation: ScriptRotation::Grace(Duration::from_secs(30)),
        grace: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    fx.provider
        .push(Step::Fail(ScriptedProvider::invalid_grant()));
    let (fresh, refreshed) = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    assert_eq!(fresh.status, Status::Active);
    assert_eq!(
        fx.engine
            .stats()
            .recovered_with_previous
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Outside the grace, a refusal is final and reported as REVOKED.
    tokio::time::sleep(Duration::from_secs(60)).await;
    fx.provider.revoke_all();
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::ReconnectRequired {
                cause: Some(ReconnectCause::Revoked),
                ..
            }
        ),
        "{err}"
    );
}
