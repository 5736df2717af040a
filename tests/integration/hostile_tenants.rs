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

// ---- Item 8: no silent replace -----------------------------------------

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

/// Issue 24, item 8. Invariants: an install naming an existing connection
/// id replaces its grant only when both name the same account, or with
/// `replace`; an account the request does not name counts as another one,
/// and such a code install is refused before the provider sees the code.
/// An identical retry is still answered idempotently, and a replacement
/// carries the new account label, not the old one.
#[tokio::test]
async fn hostile_tenants_an_install_without_replace_never_replaces_another_grant() {
    let server = TestServer::start_with(background_off()).await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("acct-a", &["crm"]);
    let original = import_request("conn-1", "acct-a", &first, 1800);
    client.install(original.clone()).await.unwrap();

    // Another grant, no account named: refused, the first grant stands.
    let other = server.sandbox.issue_tokens("acct-b", &["crm"]);
    let err = client
        .install(import_request("conn-1", "", &other, 1800))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    let kept = connection(&mut client, "conn-1").await;
    assert_eq!((kept.version, kept.account_id.as_str()), (1, "acct-a"));
    let token = client.get_token(get("conn-1")).await.unwrap().into_inner();
    assert_eq!(token.token.unwrap().access_token, first.access_token);

    // A code install with no account is refused before the exchange: the
    // provider never sees the code, which stays redeemable.
    let requests = server.sandbox.stats().token_requests;
    let code = server.sandbox.issue_code("acct-b", &["crm"], None, None);
    let err = client
        .install(code_request("conn-1", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN");
    assert_eq!(
        server.sandbox.stats().token_requests,
        requests,
        "no exchange"
    );

    // An identical retry of the original is still a replay.
    let again = client.install(original).await.unwrap().into_inner();
    assert!(again.replayed);
    // The same, named account renews its own grant.
    let renewed = server.sandbox.issue_tokens("acct-a", &["crm"]);
    let out = client
        .install(import_request("conn-1", "acct-a", &renewed, 1800))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.connection.unwrap().version, 2);

    // `replace` replaces, and the label follows the new grant: the
    // provider's answer names acct-b.
    let mut replace = code_request("conn-1", "", &code);
    replace.replace = true;
    let out = client.install(replace).await.unwrap().into_inner();
    let replaced = out.connection.unwrap();
    assert_eq!(replaced.account_id, "acct-b");
    // An import naming no account replaces the label with none.
    let mut unnamed = import_request("conn-1", "", &other, 1800);
    unnamed.replace = true;
    let out = client.install(unnamed).await.unwrap().into_inner();
    assert_eq!(out.connection.unwrap().account_id, "", "no stale label");
}

/// A server whose sandbox provider has an RFC 7009 revocation endpoint.
async fn revoking_server() -> TestServer {
    TestServer::start_with(Options {
        provider_toml: Some(
            "preset = \"sandbox\"\nrevocation_url = \"http://127.0.0.1:SANDBOX_PORT/oauth/revoke\""
                .into(),
        ),
        ..background_off()
    })
    .await
}

/// Issue 24, item 8. Invariant: a grant bought by a code exchange and then
/// refused (the id the provider's answer derives is another account's) is
/// revoked at the provider, not left live with nobody holding it.
#[tokio::test]
async fn hostile_tenants_a_refused_exchange_is_revoked_not_left_live() {
    let server = revoking_server().await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("u@x.com", &["crm"]);
    client
        .install(import_request("", "u@x.com", &first, 1800))
        .await
        .unwrap();
    // "u_x.com" derives the same id; only the provider's answer says so.
    let code = server.sandbox.issue_code("u_x.com", &["crm"], None, None);
    let err = client
        .install(code_request("", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN", "{err:?}");
    let revoked = crate::harness::eventually(Duration::from_secs(10), || {
        server.sandbox.stats().revocations >= 1
    })
    .await;
    assert!(
        revoked,
        "the refused grant was revoked: {:?}",
        server.sandbox.stats()
    );
    let kept = client
        .get_token(get("sandbox-u_x.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.token.unwrap().access_token, first.access_token);
}

/// Issue 24, item 8. Invariant: a refused grant that may be the stored
/// grant's own user's (the stored record names no account) is dropped, not
/// revoked: a provider that revokes every token of a user and client at
/// once would otherwise end the connection the install was refused for.
#[tokio::test]
async fn hostile_tenants_a_refused_grant_of_an_unknown_account_is_not_revoked() {
    let server = revoking_server().await;
    let mut client = server.client().await;
    let first = server.sandbox.issue_tokens("u@x.com", &["crm"]);
    client
        .install(import_request("sandbox-u_x.com", "", &first, 1800))
        .await
        .unwrap();
    let code = server.sandbox.issue_code("u_x.com", &["crm"], None, None);
    let err = client
        .install(code_request("", "", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CONNECTION_ID_TAKEN", "{err:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.sandbox.stats().revocations,
        0,
        "nothing revoked: {:?}",
        server.sandbox.stats()
    );
    let kept = client
        .get_token(get("sandbox-u_x.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.token.unwrap().access_token, first.access_token);
}

// ---- Install cap -----------------------------------------------------------

/// Established TCP connections to `port` on 127.0.0.1 from this process's
/// network namespace (tokend's sockets to the sandbox).
fn sockets_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "01"
                && fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// Issue 24, install cap. Invariant: a caller that abandons installs to a
/// provider that does not answer holds at most `max_installs_per_caller`
/// of them (and as many sockets); the rest are RESOURCE_EXHAUSTED with
/// RetryInfo. Another tenant still installs. The abandoned installs still
/// finish and persist their grants, and only then free their slots.
#[tokio::test]
async fn hostile_tenants_abandoned_installs_are_capped_per_caller() {
    const CAP: usize = 4;
    const BURST: usize = 40;
    let server = TestServer::start_with(Options {
        identities: vec![
            identity(
                "tenant-a",
                "key-a",
                &[Permission::Install, Permission::Tokens],
                &["tenant-a-*"],
            ),
            identity(
                "tenant-b",
                "key-b",
                &[Permission::Install, Permission::Tokens],
                &["tenant-b-*"],
            ),
        ],
        client_key: Some("key-a".into()),
        limits: Some(tokend_server::limits::Limits {
            max_installs_per_caller: CAP,
            ..Default::default()
        }),
        ..background_off()
    })
    .await;
    let port = server.sandbox.addr().port();
    // The provider holds every token request for 8 s.
    server.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(8),
        count: BURST as u32,
    });
    let tenant_a = server.client_with_key(Some("key-a")).await;
    let calls = (0..BURST).map(|i| {
        let mut client = tenant_a.clone();
        let code = server
            .sandbox
            .issue_code(&format!("acct-a-{i}"), &["crm"], None, None);
        async move {
            let mut request = Request::new(code_request(
                &format!("tenant-a-{i}"),
                &format!("acct-a-{i}"),
                &code,
            ));
            // The caller gives up long before the provider answers.
            request.set_timeout(Duration::from_millis(500));
            client.install(request).await
        }
    });
    let results = futures::future::join_all(calls).await;
    let refused: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| e.code() == Code::ResourceExhausted)
        .collect();
    let sockets = sockets_to(port);
    eprintln!(
        "FIGURE install cap: {BURST} abandoned installs, cap {CAP}: {} refused, {sockets} sockets to the provider",
        refused.len()
    );
    assert_eq!(refused.len(), BURST - CAP, "{results:?}");
    for e in &refused {
        assert_eq!(reason(e), "TOO_MANY_INSTALLS");
        assert!(e.get_details_retry_info().is_some(), "RetryInfo: {e:?}");
    }
    assert!(sockets <= CAP + 1, "{sockets} sockets to the provider");
    // The abandoned ones still hold A's slots...
    let mut a = tenant_a.clone();
    let code = server.sandbox.issue_code("acct-a-x", &["crm"], None, None);
    let err = a
        .install(code_request("tenant-a-x", "acct-a-x", &code))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "TOO_MANY_INSTALLS");
    // ...while tenant B is not locked out.
    server.sandbox.clear_faults();
    let mut b = server.client_with_key(Some("key-b")).await;
    let code_b = server.sandbox.issue_code("acct-b-1", &["crm"], None, None);
    b.install(code_request("tenant-b-1", "acct-b-1", &code_b))
        .await
        .expect("another tenant installs");
    // The abandoned installs finish: their grants are kept, then A's slots
    // are free again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let page = a
            .list_connections(pb::ListConnectionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        if page.connections.len() >= CAP || Instant::now() > deadline {
            break page.connections;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        finished.len(),
        CAP,
        "every admitted install persisted its grant"
    );
    let code = server.sandbox.issue_code("acct-a-y", &["crm"], None, None);
    let mut freed = false;
    for _ in 0..100 {
        match a
            .install(code_request("tenant-a-y", "acct-a-y", &code))
            .await
        {
            Ok(_) => {
                freed = true;
                break;
            }
            Err(e) if reason(&e) == "TOO_MANY_INSTALLS" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(freed, "the slots came back once the installs ended");
}

/// Issue 24, install cap. Invariant: `max_installs_per_caller` outside
/// 1..=10000 is refused, with the key named, by `check-config` and by
/// `serve` (which then never listens); a value inside it is accepted.
#[test]
fn hostile_tenants_the_install_cap_key_is_range_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokend = |args: &[&str], config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("TOKEND_LISTEN")
            .output()
            .unwrap()
    };
    for bad in ["0", "10001"] {
        let config = dir.path().join(format!("bad-{bad}.toml"));
        std::fs::write(
            &config,
            format!("[limits]\nmax_installs_per_caller = {bad}\n"),
        )
        .unwrap();
        let out = tokend(&["check-config"], &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "limits.max_installs_per_caller = {bad} is out of range: allowed 1 to 10000"
            )),
            "{err}"
        );
        let data = dir.path().join(format!("data-{bad}"));
        let out = tokend(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &config,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve refuses {bad}: {err}");
        assert!(err.contains("limits.max_installs_per_caller"), "{err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[limits]\nmax_installs_per_caller = 64\n").unwrap();
    let out = tokend(&["check-config"], &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
