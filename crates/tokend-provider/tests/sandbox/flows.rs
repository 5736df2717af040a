//! Refreshes, code exchange with PKCE, revocation, every failure class, and
//! oversized answers.

use super::*;

#[tokio::test]
async fn refresh_rotates_with_either_client_auth_style() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let c = client(Duration::from_secs(5));
    for auth in [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost] {
        let issued = sandbox.issue_tokens("acct", &["crm"]);
        let cfg = config(&sandbox, auth, Dialect::Rfc6749);
        let grant = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
            .await
            .unwrap();
        let new_rt = grant
            .tokens
            .refresh_token
            .clone()
            .expect("strict rotation returns a new one");
        assert_ne!(new_rt.expose_secret(), issued.refresh_token);
        assert_eq!(grant.tokens.token_type, "Bearer");
        assert_eq!(grant.tokens.lifetime(), Duration::from_secs(1800));
        assert_eq!(grant.account_id.as_deref(), Some("acct"));
        assert!(grant.correlation_id.is_some());
        assert!(sandbox.access_token_is_live(grant.tokens.access_token.expose_secret()));
        // The used refresh token is dead now.
        let err = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Revoked);
        assert_eq!(err.code, "invalid_grant");
    }
}

#[tokio::test]
async fn reuse_mode_omits_the_refresh_token() {
    let sandbox = Sandbox::start(SandboxConfig {
        rotation: Rotation::Reuse,
        ..Default::default()
    })
    .await
    .unwrap();
    let issued = sandbox.issue_tokens("acct", &[]);
    let cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    let grant = client(Duration::from_secs(5))
        .refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .unwrap();
    assert!(grant.tokens.refresh_token.is_none());
}

#[tokio::test]
async fn hubspot_dialect_revocation_carries_code_and_correlation_id() {
    let sandbox = Sandbox::start(SandboxConfig {
        dialect: SandboxDialect::Hubspot,
        ..Default::default()
    })
    .await
    .unwrap();
    let issued = sandbox.issue_tokens("portal-1", &[]);
    sandbox.revoke_account("portal-1");
    let cfg = config(&sandbox, ClientAuth::ClientSecretPost, Dialect::Hubspot);
    let err = client(Duration::from_secs(5))
        .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Revoked);
    assert_eq!(err.code, "BAD_REFRESH_TOKEN");
    assert_eq!(err.http_status, Some(400));
    assert!(err.correlation_id.is_some());
    assert!(!err.message.contains(&issued.refresh_token));
    assert!(!err.to_string().contains("sandbox-secret"));
}

#[tokio::test]
async fn every_failure_class() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    let c = client(Duration::from_millis(500));
    let rt = || SecretString::from(sandbox.issue_tokens("acct", &[]).refresh_token);

    sandbox.inject(Fault::RateLimited {
        retry_after_secs: 7,
        count: 1,
    });
    let e = c.refresh(&cfg, &rt()).await.unwrap_err();
    assert_eq!(
        (e.class, e.retry_after),
        (ErrorClass::RateLimited, Some(Duration::from_secs(7)))
    );

    sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    let e = c.refresh(&cfg, &rt()).await.unwrap_err();
    assert_eq!((e.class, e.http_status), (ErrorClass::Transient, Some(503)));

    sandbox.inject(Fault::MalformedBody { count: 1 });
    let e = c.refresh(&cfg, &rt()).await.unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Transient, "malformed_response")
    );

    sandbox.inject(Fault::InvalidClient { count: 1 });
    let e = c.refresh(&cfg, &rt()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::ClientMisconfigured);

    sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(2),
        count: 1,
    });
    let e = c.refresh(&cfg, &rt()).await.unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Transient, "timeout")
    );

    let mut wrong = cfg.clone();
    wrong.client_secret = SecretString::from("not-the-secret");
    let e = c.refresh(&wrong, &rt()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::ClientMisconfigured);
    assert!(!e.to_string().contains("not-the-secret"));

    // Nothing listening: a connection error, transient.
    let mut gone = cfg.clone();
    gone.token_url = "http://127.0.0.1:9/oauth/token".parse().unwrap();
    let e = c.refresh(&gone, &rt()).await.unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Transient, "connect_error")
    );
}

#[tokio::test]
async fn code_exchange_with_pkce() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let verifier = "v".repeat(43) + "-pkce-verifier";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let cfg = config(&sandbox, ClientAuth::ClientSecretPost, Dialect::Rfc6749);
    let c = client(Duration::from_secs(5));

    let code = sandbox.issue_code(
        "acct-pkce",
        &["crm"],
        Some("https://app.example.com/cb"),
        Some(&challenge),
    );
    let wrong = c
        .exchange_code(
            &cfg,
            &SecretString::from(code),
            "https://app.example.com/cb",
            Some(&SecretString::from("w".repeat(43))),
        )
        .await
        .unwrap_err();
    assert_eq!(
        wrong.class,
        ErrorClass::Revoked,
        "a bad verifier is invalid_grant"
    );

    let code = sandbox.issue_code(
        "acct-pkce",
        &["crm"],
        Some("https://app.example.com/cb"),
        Some(&challenge),
    );
    let grant = c
        .exchange_code(
            &cfg,
            &SecretString::from(code.clone()),
            "https://app.example.com/cb",
            Some(&SecretString::from(verifier)),
        )
        .await
        .unwrap();
    assert_eq!(grant.account_id.as_deref(), Some("acct-pkce"));
    assert_eq!(grant.tokens.scopes, ["crm"]);
    // Single use.
    let again = c
        .exchange_code(
            &cfg,
            &SecretString::from(code),
            "https://app.example.com/cb",
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(again.class, ErrorClass::Revoked);
}

/// A token endpoint answering with more than the response cap: refused as
/// transient, without reading the rest.
#[tokio::test]
async fn oversized_responses_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let body = format!("{{\"access_token\":\"{}\"}}", "a".repeat(200 * 1024));
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.write_all(body.as_bytes()).await;
    });
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    cfg.token_url = format!("http://{addr}/token").parse().unwrap();
    let e = client(Duration::from_secs(5))
        .refresh(&cfg, &SecretString::from("rt"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Transient, "response_too_large")
    );
}

/// Issue 16: RFC 7009 revocation of a refresh token ends the grant.
#[tokio::test]
async fn revocation_ends_the_grant() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    cfg.request.revocation_url = Some(sandbox.revocation_url().parse().unwrap());
    let c = client(Duration::from_secs(5));
    let issued = sandbox.issue_tokens("acct", &[]);
    c.revoke(
        &cfg,
        &SecretString::from(issued.refresh_token.clone()),
        "refresh_token",
    )
    .await
    .expect("revoked");
    assert_eq!(sandbox.stats().revocations, 1);
    assert!(!sandbox.access_token_is_live(&issued.access_token));
    let e = c
        .refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Revoked);
}
