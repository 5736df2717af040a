//! The provider client against the sandbox provider over real HTTP: both
//! client-auth styles, both error dialects, and every failure class.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokend_core::{Clock, ErrorClass, ProviderName, RefreshPolicy};
use tokend_provider::{ClientAuth, Dialect, HttpSettings, ProviderClient, ProviderConfig};
use tokend_sandbox::{Dialect as SandboxDialect, Fault, Rotation, Sandbox, SandboxConfig};

fn config(sandbox: &Sandbox, auth: ClientAuth, dialect: Dialect) -> ProviderConfig {
    let c = sandbox.config();
    ProviderConfig {
        name: ProviderName::new("sandbox").unwrap(),
        token_url: sandbox.token_url().parse().unwrap(),
        client_id: c.client_id,
        client_secret: SecretString::from(c.client_secret),
        client_auth: auth,
        extra_params: vec![("redirect_uri".into(), "https://app.example.com/cb".into())],
        default_lifetime: Duration::from_secs(1800),
        refresh_policy: RefreshPolicy::default(),
        dialect,
        account_id_field: Some("account_id".into()),
        rotation_grace: Duration::ZERO,
        min_refresh_interval: ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL,
        request: Default::default(),
        response: Default::default(),
        grant: Default::default(),
        scopes: vec![],
    }
}

fn client(request_timeout: Duration) -> ProviderClient {
    ProviderClient::new(
        &HttpSettings {
            request_timeout,
            ..Default::default()
        },
        Clock::system(),
    )
    .unwrap()
}

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

/// Issue 16. The dialects whose refusals come in HTTP 200 bodies (Slack,
/// GitHub) and Notion's JSON request body, each against the sandbox speaking
/// it: a refresh, a revocation (Revoked, never transient), a rate limit, a
/// server error and a client misconfiguration, each classified exactly.
#[tokio::test]
async fn dialects_with_quirks_classify_every_answer() {
    use tokend_provider::{RequestBody, ResponseShape};
    struct Case {
        sandbox: SandboxDialect,
        dialect: Dialect,
        auth: ClientAuth,
        body: RequestBody,
        token_path: &'static [&'static str],
        account_field: Option<&'static str>,
        revoked_code: &'static str,
        client_code: &'static str,
    }
    let cases = [
        Case {
            sandbox: SandboxDialect::Slack,
            dialect: Dialect::Slack,
            auth: ClientAuth::ClientSecretPost,
            body: RequestBody::Form,
            token_path: &["authed_user"],
            account_field: Some("team.id"),
            revoked_code: "invalid_refresh_token",
            client_code: "invalid_client_id",
        },
        Case {
            sandbox: SandboxDialect::Github,
            dialect: Dialect::Github,
            auth: ClientAuth::ClientSecretPost,
            body: RequestBody::Form,
            token_path: &[],
            account_field: None,
            revoked_code: "bad_refresh_token",
            client_code: "incorrect_client_credentials",
        },
        Case {
            sandbox: SandboxDialect::Notion,
            dialect: Dialect::Rfc6749,
            auth: ClientAuth::ClientSecretBasic,
            body: RequestBody::Json,
            token_path: &[],
            account_field: Some("workspace_id"),
            revoked_code: "invalid_grant",
            client_code: "invalid_client",
        },
    ];
    let c = client(Duration::from_secs(5));
    for case in cases {
        let name = format!("{:?}", case.sandbox);
        let sandbox = Sandbox::start(SandboxConfig {
            dialect: case.sandbox,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cfg = config(&sandbox, case.auth, case.dialect);
        cfg.request.body = case.body;
        cfg.response = ResponseShape {
            token_path: case.token_path.iter().map(|s| (*s).to_owned()).collect(),
            metadata_fields: vec![],
        };
        cfg.account_id_field = case.account_field.map(str::to_owned);
        cfg.extra_params.clear();

        let issued = sandbox.issue_tokens("acct-1", &["read"]);
        let grant = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            sandbox.access_token_is_live(grant.tokens.access_token.expose_secret()),
            "{name}"
        );
        assert_eq!(grant.tokens.lifetime(), Duration::from_secs(1800), "{name}");
        assert_eq!(
            grant.account_id.as_deref(),
            case.account_field.map(|_| "acct-1"),
            "{name}"
        );
        let rotated = grant.tokens.refresh_token.expect("rotated");

        // The spent token is refused: Revoked, from a 200 body for Slack
        // and GitHub, never taken for a malformed (transient) grant.
        let e = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Revoked, case.revoked_code),
            "{name}"
        );
        assert!(e.salvage.is_none(), "{name}: a refusal is not a lost grant");
        assert!(!e.to_string().contains(&issued.refresh_token), "{name}");

        sandbox.inject(Fault::RateLimited {
            retry_after_secs: 3,
            count: 1,
        });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.retry_after),
            (ErrorClass::RateLimited, Some(Duration::from_secs(3))),
            "{name}"
        );
        sandbox.inject(Fault::Status {
            status: 502,
            count: 1,
        });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.http_status),
            (ErrorClass::Transient, Some(502)),
            "{name}"
        );
        sandbox.inject(Fault::InvalidClient { count: 1 });
        let e = c.refresh(&cfg, &rotated).await.unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::ClientMisconfigured, case.client_code),
            "{name}"
        );
        // Still good after all that.
        c.refresh(&cfg, &rotated)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Issue 16: a refresh goes to `refresh_url` when one is set; a code
/// exchange still goes to `token_url`.
#[tokio::test]
async fn refreshes_go_to_the_refresh_url() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut cfg = config(&sandbox, ClientAuth::ClientSecretBasic, Dialect::Rfc6749);
    cfg.request.refresh_url = Some(cfg.token_url.clone());
    // Nothing listens at the token URL now: only the refresh URL works.
    cfg.token_url = "http://127.0.0.1:9/oauth/token".parse().unwrap();
    let c = client(Duration::from_secs(5));
    let issued = sandbox.issue_tokens("acct", &[]);
    c.refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .expect("refreshed at refresh_url");
    let e = c
        .exchange_code(&cfg, &SecretString::from("code"), "", None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "connect_error", "a code exchange uses token_url");
}

/// Issue 16: a public client (no secret) refreshes with its client_id in
/// the body; a provider that does not take public clients refuses it as a
/// client misconfiguration.
#[tokio::test]
async fn public_clients_send_no_secret() {
    let c = client(Duration::from_secs(5));
    for public in [true, false] {
        let sandbox = Sandbox::start(SandboxConfig {
            public_client: public,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cfg = config(&sandbox, ClientAuth::None, Dialect::Rfc6749);
        cfg.client_secret = SecretString::from("");
        let issued = sandbox.issue_tokens("acct", &[]);
        let answer = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token))
            .await;
        if public {
            answer.expect("a public client refreshes");
        } else {
            assert_eq!(answer.unwrap_err().class, ErrorClass::ClientMisconfigured);
        }
    }
}

/// Issue 16: a provider that wants the client credentials in both HTTP
/// Basic and the body gets them twice with `ClientAuth::Both`; either one
/// alone is refused there.
#[tokio::test]
async fn credentials_in_both_places_when_the_provider_wants_them() {
    let sandbox = Sandbox::start(SandboxConfig {
        credentials_in_both: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client(Duration::from_secs(5));
    for (auth, ok) in [
        (ClientAuth::Both, true),
        (ClientAuth::ClientSecretBasic, false),
        (ClientAuth::ClientSecretPost, false),
    ] {
        let cfg = config(&sandbox, auth, Dialect::Rfc6749);
        let issued = sandbox.issue_tokens("acct", &[]);
        let answer = c
            .refresh(&cfg, &SecretString::from(issued.refresh_token))
            .await;
        assert_eq!(answer.is_ok(), ok, "{auth:?}");
        let seen = sandbox.last_token_request().expect("seen");
        assert_eq!(
            seen.basic_auth,
            auth != ClientAuth::ClientSecretPost,
            "{auth:?}"
        );
        assert_eq!(
            seen.params.contains_key("client_secret"),
            auth != ClientAuth::ClientSecretBasic,
            "{auth:?}"
        );
    }
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

/// Issue 16: `private_key_jwt` (RFC 7523). Each request carries a fresh
/// assertion signed with the client's key and no secret; the provider
/// checks signature, issuer, audience and expiry and refuses a replayed
/// `jti`. A key the provider does not know is a client misconfiguration,
/// and the assertion never shows in what the provider saw or in an error.
#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_per_request() {
    let key = rcgen::KeyPair::generate().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        client_assertion_key: Some(tokend_sandbox::AssertionKey {
            algorithm: "ES256".into(),
            public_key_pem: key.public_key_pem(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&sandbox, ClientAuth::PrivateKeyJwt, Dialect::Rfc6749);
    cfg.client_secret = SecretString::from("");
    cfg.request.client_assertion = Some(
        tokend_provider::AssertionSigner::from_pem(
            key.serialize_pem().as_bytes(),
            "ES256",
            Some("key-1".into()),
            None,
        )
        .unwrap(),
    );
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
    let c = client(Duration::from_secs(5));
    let issued = sandbox.issue_tokens("acct", &[]);
    let grant = c
        .refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .expect("a signed assertion authenticates the client");
    let seen = sandbox.last_token_request().expect("seen");
    assert!(!seen.basic_auth);
    assert!(!seen.params.contains_key("client_secret"));
    assert_eq!(seen.params["client_assertion"], "[redacted]");
    assert_eq!(
        seen.params["client_assertion_type"],
        tokend_provider::ASSERTION_TYPE
    );
    // A second request signs a new assertion (a new jti): a reused one
    // would be refused.
    c.refresh(&cfg, grant.tokens.refresh_token.as_ref().unwrap())
        .await
        .expect("a second request with a fresh assertion");

    // Signed with a key the provider has never seen.
    let stranger = rcgen::KeyPair::generate().unwrap();
    cfg.request.client_assertion = Some(
        tokend_provider::AssertionSigner::from_pem(
            stranger.serialize_pem().as_bytes(),
            "ES256",
            None,
            None,
        )
        .unwrap(),
    );
    let issued = sandbox.issue_tokens("acct", &[]);
    let err = c
        .refresh(&cfg, &SecretString::from(issued.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::ClientMisconfigured);
    assert_eq!(err.code, "invalid_client");

    // A key that does not fit the algorithm is refused when configured.
    assert!(
        tokend_provider::AssertionSigner::from_pem(
            key.serialize_pem().as_bytes(),
            "RS256",
            None,
            None
        )
        .is_err()
    );
    assert!(tokend_provider::AssertionSigner::from_pem(b"not a key", "ES256", None, None).is_err());
}

/// Issue 16: mutual TLS (RFC 8705 `tls_client_auth`). The provider serves
/// HTTPS from a private CA and asks for a client certificate; tokend trusts
/// that CA for this provider only and authenticates with its certificate,
/// no secret sent. Without the certificate the same request is refused as
/// a client misconfiguration; a certificate the provider did not register
/// is refused too.
#[tokio::test]
async fn mutual_tls_authenticates_with_the_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let mut client_certs = Vec::new();
    for name in ["tokend", "someone-else"] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        client_certs.push((cert, key));
    }
    let registered: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(client_certs[0].0.der()).into()
    };
    let sandbox = Sandbox::start_tls(
        SandboxConfig {
            tls_client_cert_sha256: Some(registered),
            ..Default::default()
        },
        tokend_sandbox::TlsSettings {
            cert_chain_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            client_ca_pem: Some(ca_pem.clone()),
        },
    )
    .await
    .unwrap();
    assert!(sandbox.token_url().starts_with("https://127.0.0.1:"));
    let c = client(Duration::from_secs(5));
    let with = |identity: Option<usize>| {
        let mut cfg = config(&sandbox, ClientAuth::TlsClientAuth, Dialect::Rfc6749);
        cfg.client_secret = SecretString::from("");
        let pems = identity.map(|i| (client_certs[i].0.pem(), client_certs[i].1.serialize_pem()));
        cfg.request.tls = Some(
            tokend_provider::ClientTls::from_pem(
                pems.as_ref().map(|(c, k)| (c.as_bytes(), k.as_bytes())),
                Some(ca_pem.as_bytes()),
            )
            .unwrap(),
        );
        assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
        cfg
    };

    let issued = sandbox.issue_tokens("acct", &[]);
    let grant = c
        .refresh(&with(Some(0)), &SecretString::from(issued.refresh_token))
        .await
        .expect("the registered certificate authenticates the client");
    assert!(sandbox.access_token_is_live(grant.tokens.access_token.expose_secret()));
    let seen = sandbox.last_token_request().expect("seen");
    assert!(!seen.basic_auth);
    assert!(!seen.params.contains_key("client_secret"));
    assert_eq!(seen.params["client_id"], sandbox.config().client_id);

    for identity in [None, Some(1)] {
        let issued = sandbox.issue_tokens("acct", &[]);
        let err = c
            .refresh(&with(identity), &SecretString::from(issued.refresh_token))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::ClientMisconfigured, "{identity:?}");
        assert_eq!(err.code, "invalid_client", "{identity:?}");
    }

    assert!(tokend_provider::ClientTls::from_pem(None, Some(b"junk")).is_err());
    assert!(tokend_provider::ClientTls::from_pem(Some((b"junk", b"junk")), None).is_err());
}
