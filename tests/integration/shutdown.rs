//! Shutdown never cuts a refresh at the provider short (issue 25, item 2):
//! a real `tokend serve` gets SIGTERM while the sandbox takes 12 s to
//! answer its refresh, longer than the old 10 s grace.

use std::time::{Duration, Instant};

use std::sync::Arc;
use tokend_sandbox::Fault;

use tokend_store::{SledStore, Store, crypto::KeyFile};

use crate::{
    harness::{eventually, force},
    process::Served,
};

/// Invariant: a grant the provider is answering when SIGTERM arrives is
/// persisted before the process exits: the refresh's answer holds the only
/// live refresh token (strict rotation), and the grace covers two provider
/// calls and the write. (Before: the 10 s grace ran out, the process
/// exited with the call still out, and the provider's new grant was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_12_s_provider_call_persists_the_grant() {
    let keys = KeyFile::generate();
    let mut served =
        Served::start(&[("TOKEND_KEYS", serde_json::to_string(&keys).expect("keys"))]).await;
    let id = "sigterm-slow";
    let issued = served.install(id, 3600).await;
    served.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(12),
        count: 1,
    });
    let asked = served.sandbox.stats().token_requests;
    // The caller gives up after a second; the refresh goes on in tokend.
    let mut request = tonic::Request::new(force(id));
    request.set_timeout(Duration::from_secs(1));
    let _ = served.client().force_refresh(request).await;
    assert!(
        eventually(Duration::from_secs(10), || served
            .sandbox
            .stats()
            .token_requests
            > asked)
        .await,
        "the refresh reached the sandbox"
    );
    let sigterm = Instant::now();
    served.signal(libc::SIGTERM);
    let status = served
        .exited_within(Duration::from_secs(60))
        .await
        .expect("tokend exits after SIGTERM");
    let took = sigterm.elapsed();
    println!("exited {took:?} after SIGTERM, mid 12 s provider call: {status}");
    assert!(status.success(), "{status}\n{}", served.log_text());
    assert!(
        took >= Duration::from_secs(9),
        "it waited for the provider's answer: {took:?}"
    );

    let store = SledStore::open(&served.data_dir(), keys.keyring().expect("keys"))
        .expect("the data dir opens");
    let record = store
        .get(&tokend_core::ConnectionId::new(id).expect("id"))
        .await
        .expect("read")
        .expect("stored");
    use secrecy::ExposeSecret;
    let access = record.tokens.access_token.expose_secret().to_owned();
    assert_ne!(
        access,
        issued.access_token,
        "the refreshed grant was persisted before exit\n{}",
        served.log_text()
    );
    assert!(served.sandbox.access_token_is_live(&access));
    // And its refresh token is the one the provider takes now.
    let refresh = record.tokens.refresh_token.expect("refresh token");
    let cfg = served.sandbox.config();
    let answer = reqwest::Client::new()
        .post(served.sandbox.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose_secret()),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("sandbox answers");
    assert!(
        answer.status().is_success(),
        "the stored refresh token is live: {}",
        answer.status()
    );
}

/// Issue 27. Invariant: shutdown is one sequence with a deadline at every
/// wait, so a hung disk cannot hold it: a ForceRefresh stuck on a store
/// that never answers is cut off once the drain's grace runs out, the
/// engine's flush gives up at its own, and `run` returns. (Before: the
/// drain waited for every open call, so a call stuck on the disk held
/// shutdown for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_disk_cannot_hold_shutdown_past_its_deadlines() {
    use tokend_store::fault::{Fault, FaultStore, Op};

    let sandbox = tokend_sandbox::Sandbox::start(Default::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(FaultStore::new(
        SledStore::open(dir.path(), tokend_store::crypto::Keyring::ephemeral()).expect("store"),
    ));
    let cfg = sandbox.config();
    let provider = tokend_server::config::sandbox_provider(
        "sandbox",
        &sandbox.token_url(),
        &cfg.client_id,
        &cfg.client_secret,
    )
    .expect("provider");
    let http = tokend_provider::HttpSettings {
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let request_timeout = http.request_timeout;
    let grace = tokend_server::engine::shutdown_grace_for(request_timeout);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokend_server::run(
        listener,
        Arc::clone(&store) as Arc<dyn Store>,
        tokend_server::ServerConfig {
            providers: vec![provider],
            http,
            engine: tokend_server::EngineSettings {
                background_refresh: false,
                shutdown_grace: Duration::from_secs(1),
                ..Default::default()
            },
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let mut client = loop {
        match channel.connect().await {
            Ok(c) => break tokend_proto::v1::token_service_client::TokenServiceClient::new(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let issued = sandbox.issue_tokens("acct-hung", &["crm.objects.contacts.read"]);
    client
        .install(crate::harness::import_request(
            "hung-disk",
            "acct-hung",
            &issued,
            3600,
        ))
        .await
        .expect("install");

    // The disk hangs: every store call from now on waits for ever.
    for op in [
        Op::Get,
        Op::Put,
        Op::AcquireLease,
        Op::RenewLease,
        Op::ReleaseLease,
        Op::ReadEvents,
        Op::EventBounds,
    ] {
        store.arm_always(op, Fault::Hang);
    }
    let stuck = tokio::spawn({
        let mut client = client.clone();
        async move { client.force_refresh(force("hung-disk")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stuck.is_finished(), "the call waits on the hung store");

    let asked = Instant::now();
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("shutdown ends although the disk hangs")
        .expect("joins");
    let took = asked.elapsed();
    println!("shutdown with a hung disk took {took:?} (grace {grace:?})");
    assert!(ended.is_ok(), "{ended:?}");
    // The drain's grace, the engine's, the audit writer's and slack for a
    // loaded machine: bounded, and not by the hung store.
    let bound = grace * 2 + Duration::from_secs(5) + Duration::from_secs(10);
    assert!(took < bound, "shutdown took {took:?}, over {bound:?}");
    let answered = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the stuck call ends with the server")
        .expect("joins");
    assert!(answered.is_err(), "no token came off a hung disk");
    store.heal();
}
