//! The control endpoints, concurrent refreshes, and the server's
//! lifecycle (a given listener, shutdown, drop).

use super::*;

#[tokio::test]
async fn control_endpoints_drive_the_provider() {
    let (sandbox, client) = start_default().await;
    let base = sandbox.base_url();

    let code: Value = client
        .post(format!("{base}/sandbox/codes"))
        .json(&json!({"account_id": "curl-1", "scopes": ["a", "b"], "redirect_uri": null}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let code = code["code"].as_str().expect("code").to_owned();
    let exchanged = token(
        &client,
        &sandbox,
        &[("grant_type", "authorization_code"), ("code", &code)],
    )
    .await;
    assert_eq!(exchanged.status, StatusCode::OK);
    assert_eq!(exchanged.json()["scope"], "a b");

    let tokens: tokend_sandbox::IssuedTokens = client
        .post(format!("{base}/sandbox/tokens"))
        .json(&json!({"account_id": "curl-2", "scopes": ["c"]}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("IssuedTokens json");
    assert_eq!(tokens.account_id, "curl-2");
    assert!(sandbox.access_token_is_live(&tokens.access_token));

    for fault in [
        json!({"kind": "status", "status": 503, "count": 1}),
        json!({"kind": "rate_limited", "retry_after_secs": 5, "count": 1}),
        json!({"kind": "latency", "delay_ms": 1, "count": 1}),
        json!({"kind": "malformed_body", "count": 1}),
        json!({"kind": "invalid_client", "count": 1}),
    ] {
        let response = client
            .post(format!("{base}/sandbox/faults"))
            .json(&fault)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{fault}");
    }
    let statuses = [503, 429, 200, 200, 401];
    for (i, expected) in statuses.into_iter().enumerate() {
        let answer = refresh(&client, &sandbox, &tokens.refresh_token).await;
        assert_eq!(
            answer.status.as_u16(),
            expected,
            "fault #{i}: {}",
            answer.text
        );
    }
    // The latency fault refreshed for real (strict rotation): the original token is now used.
    assert_eq!(
        refresh(&client, &sandbox, &tokens.refresh_token)
            .await
            .error(),
        "invalid_grant"
    );

    let revoked = client
        .post(format!("{base}/sandbox/revoke"))
        .json(&json!({"account_id": "curl-2"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert!(!sandbox.access_token_is_live(&tokens.access_token));

    let stats: Stats = client
        .get(format!("{base}/sandbox/stats"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("Stats json");
    assert_eq!(stats, sandbox.stats());
    assert_eq!(stats.faults_served, 5);
    // The operator's revoke counts as one (it read 0 before).
    assert_eq!(stats.revocations, 1);

    let account: AccountStats = client
        .get(format!("{base}/sandbox/accounts/curl-2/stats"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("AccountStats json");
    assert_eq!(account, sandbox.account_stats("curl-2"));
    assert_eq!(account.refresh_grants_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_are_consistent() {
    let (sandbox, client) = start_default().await;
    let sandbox = std::sync::Arc::new(sandbox);

    // Distinct tokens refreshed in parallel all succeed.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let issued = sandbox.issue_tokens(&format!("bulk-{}", i % 10), &["s"]);
        let (sandbox, client) = (sandbox.clone(), client.clone());
        tasks.spawn(async move {
            refresh(&client, &sandbox, &issued.refresh_token)
                .await
                .status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::OK);
    }

    // One strict token raced by many requests wins exactly once.
    let contested = sandbox.issue_tokens("contested", &[]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (sandbox, client, token) = (
            sandbox.clone(),
            client.clone(),
            contested.refresh_token.clone(),
        );
        tasks.spawn(async move { refresh(&client, &sandbox, &token).await.status });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        if status.expect("task") == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        sandbox.account_stats("contested"),
        AccountStats {
            refresh_requests: 32,
            refresh_grants_ok: 1,
            invalid_grant: 31,
        }
    );
    assert_eq!(sandbox.stats().refresh_grants_ok, 201);
}

#[tokio::test]
async fn start_on_uses_the_given_listener_and_shutdown_stops_serving() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sandbox = Sandbox::start_on(listener, SandboxConfig::default())
        .await
        .expect("start_on");
    assert_eq!(sandbox.addr(), addr);
    let client = Client::new();
    let issued = sandbox.issue_tokens("portal-14", &[]);
    assert_eq!(
        api_me(&client, &sandbox, &issued.access_token).await.status,
        StatusCode::OK
    );

    let api = sandbox.api_url();
    let started = Instant::now();
    sandbox.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "graceful stop is prompt"
    );
    // A fresh client has no pooled connection, so this must open a new one and be refused.
    let after = Client::new().get(&api).send().await;
    assert!(after.is_err(), "server still answering after shutdown");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let (sandbox, _) = start_default().await;
    let api = sandbox.api_url();
    drop(sandbox);
    let mut refused = false;
    // The stop happens on the server task: give it a few scheduler turns.
    for _ in 0..50 {
        if Client::new().get(&api).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
}
