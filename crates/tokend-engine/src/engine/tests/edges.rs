//! Edge cases of the engine: records that cannot be decoded, and a
//! `min_ttl` no refresh can satisfy.

use super::*;

/// Item 8, and issue 25 item 5. Invariants: an operator can always remove
/// or re-install a broken connection (delete and install replace a record
/// that cannot be decoded, by compare-and-swap on its bytes), but only when
/// asked (`force`): without it both are refused (FAILED_PRECONDITION,
/// RECORD_UNREADABLE) and the record is left as it was, since it may be
/// sealed with a key this process lacks and hold the only copy of a live
/// grant. Reads of it are DATA_LOSS. Before issue 25, an install or a
/// delete replaced or removed such a record unasked.
#[tokio::test(start_paused = true)]
async fn an_unreadable_record_is_replaced_or_deleted_only_with_force() {
    let fx = fixture(Setup::default()).await;
    fx.import("broken-2").await;
    let two = ConnectionId::new("broken-2").unwrap();
    let kept = fx.stored_refresh_token().await;
    fx.store.garble(&fx.id);
    fx.store.garble(&two);
    let err = fx.engine.stored(&fx.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Store(tokend_store::StoreError::Corrupt { .. })
        ),
        "{err}"
    );

    // Unasked: refused, and the record is untouched.
    let err = fx.engine.delete(&fx.id, false).await.unwrap_err();
    assert_eq!(reason(&err), "RecordUnreadable");
    let (access, refresh) = fx.provider.issue();
    let err = fx
        .engine
        .install(import_input("c1", &access, Some(&refresh)))
        .await
        .err()
        .expect("refused");
    assert_eq!(reason(&err), "RecordUnreadable", "{err}");
    assert_eq!(fx.stored_refresh_token().await, kept, "left as it was");

    // Asked: replaced, and deleted.
    let mut forced = import_input("c1", &access, Some(&refresh));
    forced.force = true;
    let outcome = fx.engine.install(forced).await.expect("replaced");
    assert!(!outcome.replayed && !outcome.created);
    let token = fx.engine.get_token(&fx.id, Duration::ZERO).await.unwrap();
    assert!(token.tokens.access_token_is(&access));
    fx.engine
        .delete(&two, true)
        .await
        .expect("an unreadable record can be deleted when asked");
    assert!(fx.store.inner().get(&two).await.unwrap().is_none());
}

/// Invariant: a code install over an unreadable record without `force` is
/// refused before the provider sees the single-use code, so no grant is
/// bought that could not be kept.
#[tokio::test(start_paused = true)]
async fn a_code_install_over_an_unreadable_record_spends_no_code() {
    let fx = fixture(Setup::default()).await;
    fx.store.garble(&fx.id);
    let code = fx.provider.issue_code();
    let input = InstallInput {
        provider: ProviderName::new("p").unwrap(),
        connection_id: Some(fx.id.clone()),
        account_id: Some("acct-c1".into()),
        grant: InstallGrant::Code {
            code: SecretString::from(code),
            redirect_uri: "https://app.example/cb".into(),
            code_verifier: None,
        },
        replace: false,
        params: Default::default(),
        force: false,
    };
    let err = fx.engine.install(input).await.err().expect("refused");
    assert_eq!(reason(&err), "RecordUnreadable", "{err}");
    assert_eq!(fx.provider.code_exchanges(), 0, "the code was not spent");
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
        assert_eq!(reason(&err), "InvalidArgument", "{err}");
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
    assert_eq!(reason(&err), "InvalidArgument", "{err}");
    assert_eq!(fx.provider.calls(), calls);
}
