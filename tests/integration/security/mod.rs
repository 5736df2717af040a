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

mod mtls;
mod refusals;
