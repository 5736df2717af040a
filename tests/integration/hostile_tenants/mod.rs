//! Tenants: narrow listings, audited probes, no silent replace, bounded installs (issue 24, items 6, 7, 8 and the install cap).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokend_core::{Status, Timestamp};
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::Fault;
use tokend_server::{
    EngineSettings, ServerConfig,
    auth::{Grant, IdentityConfig, Permission, sha256_hex},
    config::sandbox_provider,
};
use tokend_store::{SledStore, Store};
use tokio::sync::oneshot;
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt;

use crate::harness::{
    ApiKey, Client, Options, TestServer, background_off, connection, get, import_request, reason,
};

/// An identity allowed `permissions` over `connections`, with API key `key`.
fn identity(
    name: &str,
    key: &str,
    permissions: &[Permission],
    connections: &[&str],
) -> IdentityConfig {
    IdentityConfig {
        name: name.into(),
        api_key_sha256: Some(sha256_hex(key.as_bytes())),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: permissions.to_vec(),
            connections: connections.iter().map(|c| c.to_string()).collect(),
        }],
        requests_per_second: 1000,
        max_watch_streams: 8,
    }
}

// ---- Item 6: a narrow listing reads only what it may see -----------------

mod counting_store;
use counting_store::CountingStore;

/// Connections in the crowded store: tenant B's crowd, and tenant A's few.
const CROWD: usize = 20_000;
const TENANT_A: usize = 10;

/// A sled store holding `CROWD` connections: `tenant-a-000`..`009` (the
/// fourth revoked), `shared-1`, and tenant B's `tenant-b-00000`... Written
/// as one sealed import, as a restore does.
fn crowded_store(dir: &std::path::Path) -> SledStore {
    let file = tokend_store::crypto::KeyFile::generate();
    let keys = file.keyring().expect("keys");
    let store = SledStore::open(dir, file.keyring().expect("keys")).expect("store opens");
    let far = Timestamp::from_unix_millis(4_000_000_000_000);
    let mut ids: Vec<String> = (0..TENANT_A).map(|i| format!("tenant-a-{i:03}")).collect();
    ids.push("shared-1".into());
    ids.extend((ids.len()..CROWD).map(|i| format!("tenant-b-{i:05}")));
    let sealed: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|id| {
            let mut c = tokend_store::conformance::record(id, 1);
            c.tokens.expires_at = far;
            c.last_error = None;
            c.reconnect_cause = None;
            if id == "tenant-a-003" {
                c.status = Status::ReconnectRequired;
            }
            (id.clone(), tokend_store::backend::encode(&c, &keys))
        })
        .collect();
    for chunk in sealed.chunks(5_000) {
        store.import_sealed(chunk).expect("import");
    }
    store
}

/// Lists every page as the caller `client` is, `page_size` at a time.
async fn list_all(
    client: &mut Client,
    page_size: i32,
    status: pb::ConnectionStatus,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_connections(pb::ListConnectionsRequest {
                page_size,
                page_token: page_token.clone(),
                provider: String::new(),
                status: status as i32,
            })
            .await
            .expect("ListConnections")
            .into_inner();
        ids.extend(page.connections.into_iter().map(|c| c.connection_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// Issue 24, item 6. Invariant: ListConnections for a caller whose grants
/// name a few prefixes and ids reads only the records those cover (through
/// the store's id order), not the whole store: among 20,000 connections,
/// a tenant with 11 reads about a page's worth, every page of its listing
/// is correct and complete, and the status filter still applies.
#[tokio::test]
async fn hostile_tenants_a_narrow_listing_reads_only_its_own_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let built = Instant::now();
    let store = Arc::new(CountingStore {
        inner: Arc::new(crowded_store(dir.path())),
        listed: AtomicU64::new(0),
    });
    eprintln!("{CROWD} connections written in {:?}", built.elapsed());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        providers: vec![
            sandbox_provider("sandbox", "http://127.0.0.1:9/oauth/token", "c", "s").unwrap(),
        ],
        engine: EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
        identities: vec![
            identity(
                "tenant-a",
                "key-a",
                &[Permission::Tokens],
                &["tenant-a-*", "shared-1", "shared-2"],
            ),
            identity("ops", "key-ops", &[Permission::Admin], &["*"]),
        ],
        ..Default::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(tokend_server::run(
        listener,
        store.clone() as Arc<dyn Store>,
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(30));
    let mut channel_ready = None;
    for _ in 0..300 {
        if let Ok(ch) = channel.connect().await {
            channel_ready = Some(ch);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = channel_ready.expect("tokend accepts connections");
    let mut tenant_a =
        TokenServiceClient::with_interceptor(channel.clone(), ApiKey(Some("key-a".into())));

    // The figure: how long one page takes, and how many records it reads.
    store.listed.store(0, Ordering::SeqCst);
    let mut took = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let page = tenant_a
            .list_connections(pb::ListConnectionsRequest::default())
            .await
            .expect("ListConnections")
            .into_inner();
        took.push(started.elapsed());
        assert_eq!(page.connections.len(), TENANT_A + 1);
    }
    took.sort();
    let read_per_call = store.listed.load(Ordering::SeqCst) / 9;
    eprintln!(
        "FIGURE item 6: narrow ListConnections among {CROWD}: median {:?}, max {:?}, {read_per_call} records listed per call",
        took[4], took[8]
    );
    assert!(
        read_per_call <= (TENANT_A + 1) as u64,
        "a narrow listing read {read_per_call} records per call for {} visible",
        TENANT_A + 1
    );

    // Every page, small pages across both sources, exactly what it may see.
    store.listed.store(0, Ordering::SeqCst);
    let mut expected: Vec<String> = vec!["shared-1".into()];
    expected.extend((0..TENANT_A).map(|i| format!("tenant-a-{i:03}")));
    assert_eq!(
        list_all(&mut tenant_a, 3, pb::ConnectionStatus::Unspecified).await,
        expected
    );
    let pages = expected.len().div_ceil(3) as u64;
    let listed = store.listed.load(Ordering::SeqCst);
    assert!(
        listed <= pages * 4,
        "paging read {listed} records for {} visible in {pages} pages",
        expected.len()
    );
    assert_eq!(
        list_all(&mut tenant_a, 2, pb::ConnectionStatus::ReconnectRequired).await,
        ["tenant-a-003"],
        "the status filter still applies"
    );
    // An operator with `*` still sees everything.
    let mut ops = TokenServiceClient::with_interceptor(channel, ApiKey(Some("key-ops".into())));
    let all = list_all(&mut ops, 1000, pb::ConnectionStatus::Unspecified).await;
    assert_eq!(all.len(), CROWD);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

// ---- Item 7: every probed connection is audited ------------------------

/// Issue 24, item 7. Invariant: a caller refused on several connections
/// leaves one audit line naming each of them, even from one address and
/// within one aggregation interval; repeats of the same connection are
/// counted on a summary line that names it.
#[tokio::test]
async fn hostile_tenants_every_probed_connection_is_in_the_audit_log() {
    let mut server = TestServer::start_with(Options {
        identities: vec![
            identity("tenant-a", "key-a", &[Permission::Tokens], &["tenant-a-*"]),
            identity("ops", "key-ops", &[Permission::Admin], &["*"]),
        ],
        client_key: Some("key-ops".into()),
        ..background_off()
    })
    .await;
    server.import("tenant-b-1", "acct-b-1", 1800).await;
    server.import("tenant-b-2", "acct-b-2", 1800).await;
    let mut probe = server.client_with_key(Some("key-a")).await;
    for id in ["tenant-b-1", "tenant-b-2", "tenant-b-1"] {
        let err = probe.get_token(get(id)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{id}");
    }
    drop(probe);
    // Stopping joins the audit writer: every line and count is written.
    server.stop().await;
    let text = std::fs::read_to_string(server.audit_log_path()).unwrap();
    let denied: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["caller"] == "tenant-a" && l["outcome"] == "permission_denied")
        .collect();
    let named = |id: &str| {
        denied
            .iter()
            .filter(|l| l["connection_id"] == id && l["repeated"].is_null())
            .count()
    };
    assert_eq!(named("tenant-b-1"), 1, "{text}");
    assert_eq!(
        named("tenant-b-2"),
        1,
        "the second probed connection is named: {text}"
    );
    let repeats: Vec<_> = denied.iter().filter(|l| !l["repeated"].is_null()).collect();
    assert_eq!(repeats.len(), 1, "{text}");
    assert_eq!(repeats[0]["connection_id"], "tenant-b-1");
    assert_eq!(repeats[0]["repeated"], 1);
}

fn code_request(id: &str, account: &str, code: &str) -> pb::InstallRequest {
    pb::InstallRequest {
        provider: "sandbox".into(),
        connection_id: id.into(),
        account_id: account.into(),
        grant: Some(pb::install_request::Grant::AuthorizationCode(
            pb::AuthorizationCode {
                code: code.into(),
                redirect_uri: String::new(),
                code_verifier: String::new(),
            },
        )),
        replace: false,
        params: Default::default(),
        force: false,
    }
}

mod install_cap;
mod replace;
