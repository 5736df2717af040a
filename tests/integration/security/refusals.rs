//! Refusals: oversized requests, blind ForceRefresh calls, and the audit
//! line every refusal leaves.

use super::*;

#[tokio::test]
async fn oversized_requests_get_a_precise_error() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let issued = server.sandbox.issue_tokens("acct-big", &[]);
    let mut big = import_request("big", "acct-big", &issued, 1800);
    if let Some(pb::install_request::Grant::TokenImport(t)) = big.grant.as_mut() {
        t.scopes = vec!["s".repeat(250); 300]; // ~76 KB
    }
    let err = client.install(big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(crate::harness::bad_fields(&err), ["request"]);
    assert!(err.message().contains("65536"), "{}", err.message());
    if let Some(pb::install_request::Grant::TokenImport(t)) = big.grant.as_mut() {
        t.scopes = vec!["s".repeat(1000); 400]; // ~400 KB
    }
    let err = client.install(big).await.unwrap_err();
    // Refused from the declared length alone, before a byte is buffered.
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(crate::harness::bad_fields(&err), ["request"]);
    assert!(err.message().contains("65536"), "{}", err.message());
    // The server is fine afterwards.
    client
        .install(import_request("big", "acct-big", &issued, 1800))
        .await
        .expect("a normal request still works");
}

/// Issue 10, item 11. Invariant: blind ForceRefresh calls (naming nothing
/// rejected) cannot turn into a provider refresh each: at most one per
/// provider's `min_refresh_interval`, in open mode as with identities.
#[tokio::test]
async fn blind_force_refreshes_cannot_hammer_the_provider() {
    let server = TestServer::start_with(Options {
        min_refresh_interval: Some(Duration::from_secs(5)),
        ..Default::default()
    })
    .await;
    server.import("blind", "acct-blind", 1800).await;
    let client = server.client().await;
    let calls = join_all((0..200).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .force_refresh(pb::ForceRefreshRequest {
                    connection_id: "blind".into(),
                    rejected: None,
                })
                .await
                .map(|r| r.into_inner().refreshed)
        }
    }))
    .await;
    assert!(calls.iter().all(Result::is_ok));
    // Then one after the other: each answered from the fresh token.
    let mut client = client;
    for _ in 0..50 {
        let refreshed = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: "blind".into(),
                rejected: None,
            })
            .await
            .unwrap()
            .into_inner()
            .refreshed;
        assert!(!refreshed, "inside the floor");
    }
    assert_eq!(
        server.sandbox.account_stats("acct-blind").refresh_requests,
        1,
        "250 blind calls, one provider refresh"
    );
}

/// Issue 10, item 3 (in part). Invariant: every refusal leaves one audit
/// line: unknown keys (with the client's address), rate-limited callers,
/// oversized requests, and ids cut to a bounded length.
#[tokio::test]
async fn refusals_are_audited_too() {
    let mut options = tenants();
    options.identities[1].requests_per_second = 1;
    let mut server = TestServer::start_with(options).await;
    server.import("tenant-a-1", "acct-a1", 1800).await;
    let mut stranger = server.client_with_key(Some("a-guessed-key")).await;
    // A flood of guesses costs two lines, the second with the count.
    for _ in 0..500 {
        stranger.get_token(get("tenant-a-1")).await.unwrap_err();
    }
    let a = server.client_with_key(Some(TENANT_A_KEY)).await;
    join_all((0..10).map(|_| {
        let mut a = a.clone();
        async move { a.get_token(get("tenant-a-1")).await }
    }))
    .await;
    let mut admin = server.client().await;
    let mut huge = get("tenant-a-1");
    huge.connection_id = "x".repeat(100 * 1024);
    let err = admin.get_token(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Undecodable bytes (invalid UTF-8 in connection_id).
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let mut undecodable = tonic::Request::new(vec![0x0a_u8, 0x02, 0xff, 0xfe]);
    undecodable
        .metadata_mut()
        .insert("x-api-key", ADMIN_KEY.parse().unwrap());
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, Vec<u8>, _>(
            undecodable,
            http::uri::PathAndQuery::from_static("/tokend.v1.TokenService/GetToken"),
            crate::malformed::Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;

    let text = std::fs::read_to_string(server.audit_log_path()).expect("audit log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(
        lines.iter().any(|l| l["caller"] == "unauthenticated"
            && l["outcome"] == "unauthenticated"
            && l["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:"))),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["caller"] == "tenant-a" && l["reason"] == "CALLER_RATE_LIMITED"),
        "{text}"
    );
    let guesses: Vec<_> = lines
        .iter()
        .filter(|l| l["caller"] == "unauthenticated")
        .collect();
    // Two lines per 10 s interval (first sight, then the count).
    assert!((2..=4).contains(&guesses.len()), "{text}");
    let counted: u64 = guesses
        .iter()
        .map(|l| l["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(counted, 500, "every guess is counted: {text}");
    assert!(
        lines.iter().any(|l| l["rpc"] == "GetToken"
            && l["outcome"] == "invalid_argument"
            && l["reason"] == "INVALID_ARGUMENT"
            && l["peer"].is_string()),
        "the oversized call is audited: {text}"
    );
    assert!(
        lines.iter().any(|l| l["rpc"] == "GetToken"
            && l["reason"] == "MALFORMED_REQUEST"
            && l["peer"].is_string()),
        "the undecodable call is audited: {text}"
    );
    assert!(
        text.len() < 16 * 1024,
        "a 100 KiB id costs the log a few bytes"
    );
}
