//! Edge cases of the engine: records that cannot be decoded, and a
//! `min_ttl` no refresh can satisfy.

use super::*;

/// Item 8. Invariant: an operator can always remove or re-install a broken
/// connection: delete and install replace a record that cannot be decoded,
/// by compare-and-swap on its bytes, and the error on reads is DATA_LOSS.
#[tokio::test]
async fn an_unreadable_record_can_be_deleted_and_reinstalled() {
    use tokend_store::{SledStore, crypto::Keyring};
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    {
        // Written under one key...
        let store = Arc::new(SledStore::open(dir.path(), Keyring::ephemeral()).unwrap());
        let engine = Engine::new(
            store,
            vec![provider_config(Duration::ZERO, Duration::ZERO)],
            provider.clone(),
            clock.clone(),
            settings(),
        );
        engine.start().await.unwrap();
        for id in ["broken-1", "broken-2"] {
            let (access, refresh) = provider.issue();
            engine
                .install(import_input(id, &access, Some(&refresh)))
                .await
                .unwrap();
        }
        engine.shutdown().await;
    }
    // ...and read under another: both records are undecodable now.
    let store = Arc::new(SledStore::open(dir.path(), Keyring::ephemeral()).unwrap());
    let engine = Engine::new(
        store.clone(),
        vec![provider_config(Duration::ZERO, Duration::ZERO)],
        provider.clone(),
        clock,
        settings(),
    );
    engine.start().await.unwrap();
    let one = ConnectionId::new("broken-1").unwrap();
    let err = engine.get_token(&one, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.to_status().code(), tonic::Code::DataLoss, "{err}");
    engine
        .delete(&one)
        .await
        .expect("an unreadable record can be deleted");
    assert!(store.get(&one).await.unwrap().is_none());

    let (access, refresh) = provider.issue();
    let outcome = engine
        .install(import_input("broken-2", &access, Some(&refresh)))
        .await
        .expect("an unreadable record can be replaced");
    assert!(!outcome.replayed);
    let two = ConnectionId::new("broken-2").unwrap();
    let token = engine.get_token(&two, Duration::ZERO).await.unwrap();
    assert!(token.tokens.access_token_is(&access));
}

/// Issue 10, item 6. Invariant: a `min_ttl` no refresh can satisfy costs at
/// most the one refresh that reveals the provider's real lifetime, and the
/// refusal reads the same on every call.
#[tokio::test(start_paused = true)]
async fn an_impossible_min_ttl_costs_at_most_one_refresh_and_a_stable_answer() {
    let fx = fixture(Setup::default()).await;
    fx.provider.set_lifetime(Duration::from_secs(600));
    let (access, refresh) = fx.provider.issue();
    let id = ConnectionId::new("short").unwrap();
    fx.engine
        .install(import_expiring(
            "short",
            &access,
            Some(&refresh),
            Duration::from_secs(500),
        ))
        .await
        .unwrap();
    let mut messages = Vec::new();
    for _ in 0..3 {
        let err = fx
            .engine
            .get_token(&id, Duration::from_secs(1000))
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "INVALID_ARGUMENT", "{err}");
        messages.push(err.to_string());
    }
    assert_eq!(fx.provider.calls(), 1, "one refresh learnt the lifetime");
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    assert!(messages[0].contains("600 s"), "{}", messages[0]);
    // Beyond even the configured lifetime: refused before any call.
    let calls = fx.provider.calls();
    let err = fx
        .engine
        .get_token(&fx.id, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_ARGUMENT", "{err}");
    assert_eq!(fx.provider.calls(), calls);
}
