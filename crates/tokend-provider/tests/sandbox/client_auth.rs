//! Client authentication: public clients, credentials in both places,
//! `private_key_jwt` and mutual TLS.

use super::*;

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
