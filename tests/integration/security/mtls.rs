//! Mutual TLS: client certificates mapped to identities.

use super::*;

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    client_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["billing-service".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
        client_der: client_cert.der().to_vec(),
    }
}

#[tokio::test]
async fn mutual_tls_maps_client_certificates_to_identities() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut options = tenants();
    options.identities.push(IdentityConfig {
        name: "billing-service".into(),
        api_key_sha256: None,
        cert_sha256: Some(sha256_hex(&pki.client_der)),
        grants: vec![grant(&[Permission::Tokens], "tenant-a-")],
        requests_per_second: 1000,
        max_watch_streams: 4,
    });
    options.tls = Some(TlsSection {
        cert_file: write("server.pem", &pki.server_cert),
        key_file: write("server.key", &pki.server_key),
        client_ca_file: Some(write("ca.pem", &pki.ca_pem)),
    });
    let server = TestServer::start_with(options).await;

    let channel = |with_cert: bool| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if with_cert {
            tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
        }
        let addr = server.addr;
        async move {
            Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .expect("tls connect")
        }
    };
    // Install over TLS with the admin's API key.
    let issued = server.sandbox.issue_tokens("acct-a1", &[]);
    let mut admin = TokenServiceClient::with_interceptor(
        channel(false).await,
        crate::harness::ApiKey(Some(ADMIN_KEY.into())),
    );
    admin
        .install(import_request("tenant-a-1", "acct-a1", &issued, 1800))
        .await
        .expect("api keys work over tls");

    let mut billing = TokenServiceClient::new(channel(true).await);
    let t = billing
        .get_token(get("tenant-a-1"))
        .await
        .expect("certificate identity");
    assert_eq!(
        t.into_inner().token.unwrap().access_token,
        issued.access_token
    );
    let err = billing.get_token(get("tenant-b-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut anonymous = TokenServiceClient::new(channel(false).await);
    let err = anonymous.get_token(get("tenant-a-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Plaintext is refused by a TLS server.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let err = TokenServiceClient::new(plain)
            .get_token(get("tenant-a-1"))
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
}
