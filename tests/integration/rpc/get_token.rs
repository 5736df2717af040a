//! GetToken: the installed token, bad arguments and unknown connections,
//! and how `min_ttl` decides a refresh.

use super::*;

#[tokio::test]
async fn get_token_serves_the_installed_token() {
    let server = TestServer::start().await;
    let (installed, issued) = server.import("reader", "acct-reader", 1800).await;
    let mut client = server.client().await;
    let t = token(&mut client, "reader").await;
    assert_eq!(t.connection_id, "reader");
    assert_eq!(t.access_token, issued.access_token);
    assert!(server.sandbox.access_token_is_live(&t.access_token));
    assert_eq!(t.token_type, "Bearer");
    assert!((1795..=1800).contains(&t.expires_in_seconds), "{t:?}");
    assert_eq!(
        t.expires_at.unwrap(),
        installed.access_token_expires_at.unwrap()
    );
    assert_eq!(t.version, installed.version);
    assert_eq!(t.version, 1);
    assert_eq!(t.account_id, "acct-reader");
    assert_eq!(t.scopes, ["crm.objects.contacts.read"]);
}

#[tokio::test]
async fn get_token_rejects_bad_arguments_and_unknown_connections() {
    let server = TestServer::start().await;
    server.import("known", "acct-known", 1800).await;
    let mut client = server.client().await;

    for id in ["", "has space", "ü-nicode", "a/b", &"x".repeat(129)] {
        let err = client.get_token(get(id)).await.unwrap_err();
        assert_invalid(&err, "connection_id");
    }
    for ttl in [-1, i64::MIN, 24 * 3600 + 1, i64::MAX] {
        let err = client
            .get_token(pb::GetTokenRequest {
                connection_id: "known".into(),
                min_ttl_seconds: ttl,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "min_ttl_seconds");
    }
    let err = client.get_token(get("nobody")).await.unwrap_err();
    assert_not_found(&err, "nobody");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_not_found(&err, "nobody");
    let err = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "not valid".into(),
        })
        .await
        .unwrap_err();
    assert_invalid(&err, "connection_id");
    let err = client.force_refresh(force("nobody")).await.unwrap_err();
    assert_not_found(&err, "nobody");
    // The known one is unaffected.
    token(&mut client, "known").await;
}

#[tokio::test]
async fn min_ttl_beyond_the_granted_lifetime_is_invalid_after_a_refresh() {
    let server = TestServer::start_with(background_off()).await;
    server.import("long-ttl", "acct-long", 1800).await;
    let mut client = server.client().await;
    // A refresh teaches tokend the provider's real lifetime: 1800 s.
    client.force_refresh(force("long-ttl")).await.unwrap();
    let calls = server.sandbox.account_stats("acct-long").refresh_requests;
    assert_eq!(calls, 1);

    for _ in 0..5 {
        let err = client
            .get_token(pb::GetTokenRequest {
                connection_id: "long-ttl".into(),
                min_ttl_seconds: 3600,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, "min_ttl_seconds");
        assert!(err.message().contains("1800"), "{}", err.message());
    }
    assert_eq!(
        server.sandbox.account_stats("acct-long").refresh_requests,
        calls,
        "refused without refreshing on every call"
    );
    // Within the lifetime it is served.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "long-ttl".into(),
            min_ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(t.expires_in_seconds >= 1200);
}

#[tokio::test]
async fn min_ttl_decides_whether_a_read_refreshes() {
    let server = TestServer::start_with(background_off()).await;
    let (_, fresh) = server.import("fresh", "acct-fresh", 1800).await;
    let (_, short) = server.import("short", "acct-short", 1000).await;
    let mut client = server.client().await;

    // 1800 s left, 1000 s asked: served as is.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "fresh".into(),
            min_ttl_seconds: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(t.access_token, fresh.access_token);
    assert_eq!(t.version, 1);
    assert_eq!(
        server.sandbox.account_stats("acct-fresh").refresh_requests,
        0
    );

    // 1000 s left, 1200 s asked: refreshed first.
    let t = client
        .get_token(pb::GetTokenRequest {
            connection_id: "short".into(),
            min_ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(t.access_token, short.access_token);
    assert_eq!(t.version, 2);
    assert!(t.expires_in_seconds >= 1200, "{t:?}");
    assert_eq!(
        server.sandbox.account_stats("acct-short").refresh_requests,
        1
    );
    // ... and only once.
    let again = token(&mut client, "short").await;
    assert_eq!(again.access_token, t.access_token);
    assert_eq!(
        server.sandbox.account_stats("acct-short").refresh_requests,
        1
    );
}
