//! Callers: authentication (API keys, client certificates over mutual TLS),
//! per-tenant authorisation, rate limits, watch-stream caps, the audit log
//! and the loopback-only rule when no identities are configured.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_server::{
    ServerConfig, ServerError,
    auth::{Grant, IdentityConfig, Permission, sha256_hex},
    config::TlsSection,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::harness::{Options, TestServer, get, import_request, reason};

const ADMIN_KEY: &str = "admin-key-0123456789";
const TENANT_A_KEY: &str = "tenant-a-key-0123456789";
const TENANT_B_KEY: &str = "tenant-b-key-0123456789";

fn identity(name: &str, key: &str, grants: Vec<Grant>) -> IdentityConfig {
    IdentityConfig {
        name: name.into(),
        api_key_sha256: Some(sha256_hex(key.as_bytes())),
        cert_sha256: None,
        grants,
        requests_per_second: 1000,
        max_watch_streams: 2,
    }
}

fn grant(permissions: &[Permission], prefix: &str) -> Grant {
    Grant {
        permissions: permissions.to_vec(),
        connections: vec![prefix.into()],
    }
}

fn tenants() -> Options {
    Options {
        identities: vec![
            identity("admin", ADMIN_KEY, vec![grant(&[Permission::Admin], "*")]),
            identity(
                "tenant-a",
                TENANT_A_KEY,
                vec![grant(
                    &[Permission::Tokens, Permission::Install],
                    "tenant-a-",
                )],
            ),
            identity(
                "tenant-b",
                TENANT_B_KEY,
                vec![grant(&[Permission::Tokens], "tenant-b-")],
            ),
        ],
        client_key: Some(ADMIN_KEY.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn callers_only_reach_their_own_tenants_connections() {
    let server = TestServer::start_with(tenants()).await;
    server.import("tenant-a-1", "acct-a1", 1800).await;
    server.import("tenant-b-1", "acct-b1", 1800).await;
    let mut a = server.client_with_key(Some(TENANT_A_KEY)).await;
    let mut b = server.client_with_key(Some(TENANT_B_KEY)).await;

    a.get_token(get("tenant-a-1"))
        .await
        .expect("own connection");
    b.get_token(get("tenant-b-1"))
        .await
        .expect("own connection");
    let denied = a.get_token(get("tenant-b-1")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), "PERMISSION_DENIED");
    for err in [
        b.get_token(get("tenant-a-1")).await.unwrap_err(),
        a.get_connection(pb::GetConnectionRequest {
            connection_id: "tenant-b-1".into(),
        })
        .await
        .unwrap_err(),
        a.force_refresh(crate::harness::force("tenant-b-1"))
            .await
            .unwrap_err(),
        a.watch_connection(pb::WatchConnectionRequest {
            connection_id: "tenant-b-1".into(),
        })
        .await
        .map(|_| ())
        .unwrap_err(),
        // Deleting needs admin, even for one's own connection.
        a.delete_connection(pb::DeleteConnectionRequest {
            connection_id: "tenant-a-1".into(),
            force: false,
        })
        .await
        .map(|_| ())
        .unwrap_err(),
        // Tenant B may not install at all.
        b.install(import_request(
            "tenant-b-2",
            "acct-b2",
            &server.sandbox.issue_tokens("acct-b2", &[]),
            1800,
        ))
        .await
        .map(|_| ())
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // An unknown connection of another tenant is denied, not reported
    // missing: its existence is not disclosed.
    let err = a.get_token(get("tenant-b-404")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Installing inside one's prefix works; outside it, or with the id left
    // to the provider, does not.
    let issued = server.sandbox.issue_tokens("acct-a2", &[]);
    a.install(import_request("tenant-a-2", "acct-a2", &issued, 1800))
        .await
        .expect("install in own prefix");
    let err = a
        .install(import_request("tenant-b-9", "acct-a2", &issued, 1800))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let code = server.sandbox.issue_code("acct-a3", &[], None, None);
    let err = a
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: String::new(),
            account_id: String::new(),
            grant: Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code,
                    redirect_uri: String::new(),
                    code_verifier: String::new(),
                },
            )),
            replace: false,
            params: Default::default(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Listing shows only what the caller may see, across pages.
    for i in 3..8 {
        server
            .import(&format!("tenant-b-{i}"), &format!("acct-b{i}"), 1800)
            .await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = a
            .list_connections(pb::ListConnectionsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.connections.into_iter().map(|c| c.connection_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["tenant-a-1", "tenant-a-2"]);
    let all = server
        .client()
        .await
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.connections.len(), 8, "the admin sees everything");
}

#[tokio::test]
async fn requests_without_valid_credentials_are_unauthenticated() {
    let server = TestServer::start_with(tenants()).await;
    server.import("tenant-a-1", "acct-a1", 1800).await;
    for key in [None, Some("wrong-key"), Some("")] {
        let err = server
            .client_with_key(key)
            .await
            .get_token(get("tenant-a-1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}: {err:?}");
    }
    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no credentials");
}

#[tokio::test]
async fn each_caller_is_rate_limited_on_its_own() {
    let mut options = tenants();
    options.identities[1].requests_per_second = 5;
    let server = TestServer::start_with(options).await;
    server.import("tenant-a-1", "acct-a1", 1800).await;
    let a = server.client_with_key(Some(TENANT_A_KEY)).await;
    let results = join_all((0..30).map(|_| {
        let mut a = a.clone();
        async move { a.get_token(get("tenant-a-1")).await }
    }))
    .await;
    let limited: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        limited.len() >= 20,
        "only ~5 of 30 pass: {} limited",
        limited.len()
    );
    for err in &limited {
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(reason(err), "CALLER_RATE_LIMITED");
    }
    // Another caller is unaffected.
    server
        .client()
        .await
        .get_token(get("tenant-a-1"))
        .await
        .expect("admin unaffected");
}

#[tokio::test]
async fn watch_streams_per_caller_are_capped() {
    let server = TestServer::start_with(tenants()).await;
    server.import("tenant-a-1", "acct-a1", 1800).await;
    let mut a = server.client_with_key(Some(TENANT_A_KEY)).await;
    let watch = || pb::WatchConnectionRequest {
        connection_id: "tenant-a-1".into(),
    };
    let first = a.watch_connection(watch()).await.unwrap().into_inner();
    let _second = a.watch_connection(watch()).await.unwrap().into_inner();
    let err = a.watch_connection(watch()).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "TOO_MANY_WATCH_STREAMS");
    drop(first);
    let mut reopened = false;
    for _ in 0..100 {
        if a.watch_connection(watch()).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened, "a closed stream frees its slot");
}

#[tokio::test]
async fn every_call_is_audited_without_secrets() {
    let mut server = TestServer::start_with(tenants()).await;
    let (_, issued) = server.import("tenant-a-1", "acct-a1", 1800).await;
    let mut a = server.client_with_key(Some(TENANT_A_KEY)).await;
    let token = a
        .get_token(get("tenant-a-1"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    a.get_token(get("tenant-b-1")).await.unwrap_err();
    // An install whose id is derived from the account: its line names it.
    let mut admin = server.client().await;
    let derived = server.sandbox.issue_tokens("acct-derived", &[]);
    admin
        .install(crate::harness::import_request(
            "",
            "acct-derived",
            &derived,
            1800,
        ))
        .await
        .unwrap();
    server.stop().await;

    let text = std::fs::read_to_string(server.audit_log_path()).expect("audit log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let find = |caller: &str, rpc: &str, outcome: &str| {
        lines.iter().any(|l| {
            l["caller"] == caller
                && l["rpc"] == rpc
                && l["outcome"] == outcome
                && l["ts"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z') && t.contains('T'))
        })
    };
    assert!(find("admin", "Install", "ok"), "{text}");
    assert!(
        lines
            .iter()
            .filter(|l| l["rpc"] == "Install")
            .all(|l| l["connection_id"].as_str().is_some_and(|id| !id.is_empty())),
        "every Install line names its connection: {text}"
    );
    assert!(find("tenant-a", "GetToken", "ok"), "{text}");
    assert!(find("tenant-a", "GetToken", "permission_denied"), "{text}");
    assert!(lines.iter().any(|l| l["connection_id"] == "tenant-b-1"));
    for secret in [
        &issued.access_token,
        &issued.refresh_token,
        &token.access_token,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a token reached the audit log"
        );
    }
}

#[tokio::test]
async fn an_open_server_refuses_to_listen_beyond_loopback() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        tokend_store::SledStore::open(dir.path(), tokend_store::crypto::Keyring::ephemeral())
            .unwrap();
    let result =
        tokend_server::run(listener, Arc::new(store), ServerConfig::default(), async {}).await;
    assert!(
        matches!(result, Err(ServerError::OpenOnNetwork(_))),
        "{result:?}"
    );
}

/// Issue 11. Invariant: API keys and tokens never cross the network in
/// plaintext by default: identities without `[tls]` on a non-loopback
/// address are refused, unless `allow_plaintext` says so explicitly.
#[tokio::test]
async fn plaintext_beyond_loopback_needs_an_explicit_opt_in() {
    let config = || ServerConfig {
        identities: tenants().identities,
        ..Default::default()
    };
    let start = |config: ServerConfig| async move {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store =
            tokend_store::SledStore::open(dir.path(), tokend_store::crypto::Keyring::ephemeral())
                .unwrap();
        tokend_server::run(listener, Arc::new(store), config, async {}).await
    };
    let refused = start(config()).await;
    assert!(
        matches!(refused, Err(ServerError::PlaintextOnNetwork(_))),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("allow_plaintext = true"), "{message}");
    let allowed = start(ServerConfig {
        allow_plaintext: true,
        ..config()
    })
    .await;
    assert!(allowed.is_ok(), "{allowed:?}");
}

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
