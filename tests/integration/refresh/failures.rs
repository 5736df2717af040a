//! Refreshes after failures and restarts: rate limits, transient failures,
//! invalid clients, restarts, the background refresher, a refresh racing a
//! delete, and `Retry-After: 0`.

use super::*;

#[tokio::test]
async fn rate_limit_retry_after_is_honoured() {
    let server = TestServer::start_with(background_off()).await;
    server.import("limited", "acct-429", 0).await;
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 2,
        count: 1,
    });
    let mut client = server.client().await;

    let err = client.get_token(get("limited")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "PROVIDER_UNAVAILABLE");
    assert_eq!(
        metadata(&err, "error_class").as_deref(),
        Some("rate_limited")
    );
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > Duration::from_millis(1500) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    let requests = server.sandbox.stats().token_requests;

    // Within the window: answered from memory, no provider call.
    for _ in 0..10 {
        let err = client.get_token(get("limited")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.get_details_retry_info().is_some());
    }
    assert_eq!(
        server.sandbox.stats().token_requests,
        requests,
        "Retry-After is honoured"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let token = client
        .get_token(get("limited"))
        .await
        .expect("works after Retry-After");
    assert!(token.into_inner().token.unwrap().expires_in_seconds > 0);
    assert_eq!(server.sandbox.stats().token_requests, requests + 1);
}

#[tokio::test]
async fn transient_failures_are_hidden_while_the_token_is_valid() {
    let server = TestServer::start_with(background_off()).await;
    // 100 s left: inside the 5-minute buffer, so reads try to refresh.
    let (_, issued) = server.import("flaky", "acct-flaky", 100).await;
    server.sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    let mut client = server.client().await;
    let token = client
        .get_token(get("flaky"))
        .await
        .expect("still-valid token served")
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.access_token, issued.access_token);
    let conn = connection(&mut client, "flaky").await;
    assert_eq!(
        conn.status,
        pb::ConnectionStatus::Active as i32,
        "a 503 is not a revocation"
    );
    let last = conn
        .last_error
        .expect("the failure is visible to operators");
    assert_eq!(last.code, "server_error");
    assert_eq!(last.http_status, 503);
    assert_eq!(last.error_class, pb::ErrorClass::Transient as i32);
    assert!(conn.next_refresh_at.is_some(), "a retry is scheduled");
}

#[tokio::test]
async fn transient_failure_without_a_valid_token_is_unavailable_and_backs_off() {
    let server = TestServer::start_with(background_off()).await;
    server.import("down", "acct-down", 0).await;
    server.sandbox.inject(Fault::Status {
        status: 502,
        count: 100,
    });
    let mut client = server.client().await;
    let err = client.get_token(get("down")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        metadata(&err, "provider_http_status").as_deref(),
        Some("502")
    );
    assert!(err.get_details_retry_info().is_some());
    for _ in 0..50 {
        client.get_token(get("down")).await.unwrap_err();
    }
    assert_eq!(
        server.sandbox.account_stats("acct-down").refresh_requests
            + server.sandbox.stats().faults_served,
        1,
        "backoff: one provider call, not one per caller"
    );
}

#[tokio::test]
async fn invalid_client_is_not_a_revocation() {
    let server = TestServer::start_with(background_off()).await;
    server.import("misconf", "acct-misconf", 0).await;
    server.sandbox.inject(Fault::InvalidClient { count: 1 });
    let mut client = server.client().await;
    let err = client.get_token(get("misconf")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "PROVIDER_MISCONFIGURED");
    let conn = connection(&mut client, "misconf").await;
    assert_eq!(conn.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(
        conn.last_error.unwrap().error_class,
        pb::ErrorClass::ClientMisconfigured as i32
    );
}

#[tokio::test]
async fn restart_keeps_every_connection_and_its_latest_refresh_token() {
    let mut server = TestServer::start().await;
    let mut versions = Vec::new();
    for i in 0..5 {
        server
            .import(&format!("keep-{i}"), &format!("acct-keep-{i}"), 1800)
            .await;
    }
    let mut client = server.client().await;
    for i in 0..5 {
        // Rotate each a few times: only the newest refresh token is alive.
        let mut v = 0;
        for _ in 0..=i {
            v = client
                .force_refresh(pb::ForceRefreshRequest {
                    connection_id: format!("keep-{i}"),
                    rejected: None,
                })
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
                .version;
        }
        versions.push(v);
    }
    server.restart().await;
    let mut client = server.client().await;
    let list = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.connections.len(), 5);
    for (i, version) in versions.iter().copied().enumerate() {
        let id = format!("keep-{i}");
        let t = client
            .get_token(get(&id))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        assert_eq!(t.version, version);
        // Refreshing uses the persisted (latest) refresh token: strict
        // rotation would answer invalid_grant to any older one.
        let r = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.clone(),
                rejected: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(r.into_inner().token.unwrap().version, version + 1);
        assert_eq!(
            server
                .sandbox
                .account_stats(&format!("acct-keep-{i}"))
                .invalid_grant,
            0
        );
    }
}

#[tokio::test]
async fn background_refresher_renews_ahead_of_expiry() {
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            access_token_lifetime: Duration::from_secs(2),
            rotation: Rotation::Strict,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Expired at import: the refresher renews it at once, then again before
    // each 2-second token expires (buffer capped at half the lifetime).
    server.import("bg", "acct-bg", 0).await;
    let ok = crate::harness::eventually(Duration::from_secs(5), || {
        server.sandbox.account_stats("acct-bg").refresh_grants_ok >= 3
    })
    .await;
    assert!(
        ok,
        "background refreshes: {:?}",
        server.sandbox.account_stats("acct-bg")
    );
    assert_eq!(server.sandbox.account_stats("acct-bg").invalid_grant, 0);
    let mut client = server.client().await;
    let t = client
        .get_token(get("bg"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(server.sandbox.access_token_is_live(&t.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_of_a_deleted_connection_never_lands_on_its_reinstall() {
    let server = TestServer::start_with(background_off()).await;
    server.import("reborn", "acct-old", 1800).await;
    let mut client = server.client().await;
    // The old incarnation's refresh is slow at the provider...
    server.sandbox.inject(Fault::Latency {
        delay: Duration::from_millis(500),
        count: 1,
    });
    let slow = {
        let mut c = client.clone();
        tokio::spawn(async move { c.force_refresh(force("reborn")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while the connection is deleted and installed again, for another
    // account, under the same id (its revision counter starts over).
    client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "reborn".into(),
            force: false,
        })
        .await
        .unwrap();
    let issued = server.sandbox.issue_tokens("acct-new", &["crm"]);
    let created = client
        .install(import_request("reborn", "acct-new", &issued, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let _ = slow.await.unwrap();

    // The new grant survived: its token is served and its refresh token works.
    let t = client
        .get_token(get("reborn"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(t.access_token, issued.access_token);
    assert_eq!(t.account_id, "acct-new");
    client
        .force_refresh(force("reborn"))
        .await
        .expect("the new grant refreshes");
    assert_eq!(server.sandbox.account_stats("acct-new").invalid_grant, 0);
}

#[tokio::test]
async fn retry_after_zero_does_not_become_a_tight_loop() {
    let server = TestServer::start().await;
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 0,
        count: 1000,
    });
    server.import("zero", "acct-zero", 0).await;
    let mut client = server.client().await;
    let err = client.get_token(get("zero")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay >= Duration::from_millis(500), "{delay:?}");
    // The background refresher and the reader together made one attempt,
    // not one per event-loop turn.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        server.sandbox.stats().faults_served <= 2,
        "{:?}",
        server.sandbox.stats()
    );
}
