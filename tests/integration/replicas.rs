//! Several tokend replicas on one PostgreSQL database (a throwaway cluster,
//! real servers over gRPC, the sandbox over real HTTP): the cache of each
//! follows the others' writes, and refreshes stay single across replicas.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use secrecy::SecretString;
use tokend_postgres::{PgOptions, PostgresStore};
use tokend_proto::v1 as pb;
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::{EngineSettings, ServerConfig, config::sandbox_provider};
use tokend_store::crypto::KeyFile;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic_types::StatusExt;

use crate::harness::{ApiKey, Client, force, get, import_request};

/// Replicas sharing one database and one sandbox provider.
pub(crate) struct Replicas {
    pub(crate) sandbox: Sandbox,
    pub addrs: Vec<std::net::SocketAddr>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), tokend_server::ServerError>>>,
}

impl Replicas {
    async fn start(n: usize, engine: EngineSettings) -> Self {
        let options = PgOptions::new(SecretString::from(
            tokend_pgtest::cluster().database("replicas"),
        ));
        Self::start_on(options, n, engine, Vec::new()).await
    }

    async fn start_on(
        options: PgOptions,
        n: usize,
        engine: EngineSettings,
        webhooks: Vec<Arc<tokend_server::webhooks::WebhookConfig>>,
    ) -> Self {
        Self::start_clocked(options, &vec![0; n], engine, webhooks).await
    }

    /// Replicas on machines whose wall clocks are off by `skews_ms`, one
    /// per replica (0: the system's).
    pub(crate) async fn start_clocked(
        options: PgOptions,
        skews_ms: &[i64],
        engine: EngineSettings,
        webhooks: Vec<Arc<tokend_server::webhooks::WebhookConfig>>,
    ) -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox");
        PostgresStore::migrate(&options).await.expect("migrate");
        let keys = KeyFile::generate();
        let mut replicas = Replicas {
            sandbox,
            addrs: Vec::new(),
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        for (i, &skew_ms) in skews_ms.iter().enumerate() {
            let store = PostgresStore::connect(&options, keys.keyring().expect("keys"))
                .await
                .expect("replica connects");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            replicas.addrs.push(listener.local_addr().expect("addr"));
            let cfg = replicas.sandbox.config();
            let provider = sandbox_provider(
                "sandbox",
                &replicas.sandbox.token_url(),
                &cfg.client_id,
                &cfg.client_secret,
            )
            .expect("provider");
            let config = ServerConfig {
                providers: vec![provider],
                engine: EngineSettings {
                    node: format!("replica-{i}"),
                    ..engine.clone()
                },
                webhooks: webhooks.clone(),
                system_clock: (skew_ms != 0).then(|| tokend_core::Clock::off_by(skew_ms)),
                ..Default::default()
            };
            let (tx, rx) = oneshot::channel::<()>();
            replicas.stops.push(tx);
            replicas.tasks.push(tokio::spawn(tokend_server::run(
                listener,
                Arc::new(store),
                config,
                async move {
                    let _ = rx.await;
                },
            )));
        }
        replicas
    }

    pub(crate) async fn client(&self, i: usize) -> Client {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{}", self.addrs[i]))
            .expect("endpoint");
        for _ in 0..100 {
            if let Ok(channel) = endpoint.connect().await {
                return pb::token_service_client::TokenServiceClient::with_interceptor(
                    channel,
                    ApiKey(None),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("replica {i} does not answer");
    }

    pub(crate) async fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for task in self.tasks {
            joined(task).await;
        }
    }

    /// Stops replica `i` only (the others go on).
    async fn stop_one(&mut self, i: usize) {
        let (tx, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.stops[i], tx).send(());
        let task = std::mem::replace(&mut self.tasks[i], tokio::spawn(async { Ok(()) }));
        joined(task).await;
    }
}

async fn joined(task: JoinHandle<Result<(), tokend_server::ServerError>>) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("replica stops within 10 s")
        .expect("replica task joins")
        .expect("replica exits cleanly");
}

impl Replicas {}

fn access_token(resp: pb::GetTokenResponse) -> String {
    resp.token.expect("token").access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_on_one_replica_is_served_by_the_others() {
    let replicas = Replicas::start(
        2,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
    )
    .await;
    let (mut a, mut b) = (replicas.client(0).await, replicas.client(1).await);
    let issued = replicas
        .sandbox
        .issue_tokens("acct-r", &["crm.objects.contacts.read"]);
    a.install(import_request("rep-1", "acct-r", &issued, 1800))
        .await
        .expect("install on A");
    // B learns of the install from the log.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match b.get_token(get("rep-1")).await {
            Ok(resp) => break access_token(resp.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(s) => panic!("B cannot serve A's install: {s:?}"),
        }
    };
    assert_eq!(first, issued.access_token);

    // Rotate on A, 40 times; each time, how long until B serves the new
    // token. B must never go back to an older token once it served a newer.
    let mut lags = Vec::new();
    let mut chain = vec![first];
    let mut newest_served = 0;
    for _ in 0..40 {
        let rotated = a
            .force_refresh(force("rep-1"))
            .await
            .expect("force on A")
            .into_inner()
            .token
            .expect("token")
            .access_token;
        chain.push(rotated.clone());
        let t0 = Instant::now();
        loop {
            let served = access_token(b.get_token(get("rep-1")).await.expect("B").into_inner());
            let position = chain
                .iter()
                .position(|t| *t == served)
                .expect("B serves a token of the chain");
            assert!(
                position >= newest_served,
                "B served an older token after a newer one"
            );
            newest_served = position;
            if served == rotated {
                lags.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "B still serves an older token 5 s after A rotated"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    lags.sort();
    let p = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    println!(
        "cross-replica lag (A rotates, B serves the new token): p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        lags[lags.len() - 1]
    );

    // A delete on B: A forgets the connection.
    b.delete_connection(pb::DeleteConnectionRequest {
        connection_id: "rep-1".into(),
        force: false,
    })
    .await
    .expect("delete on B");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match a.get_token(get("rep-1")).await {
            Err(s) if s.code() == tonic::Code::NotFound => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("A still serves a connection deleted on B: {other:?}"),
        }
    }
    replicas.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_asked_of_three_replicas_at_once_is_refreshed_once() {
    let replicas = Replicas::start(
        3,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
    )
    .await;
    let mut a = replicas.client(0).await;
    let issued = replicas
        .sandbox
        .issue_tokens("acct-sf", &["crm.objects.contacts.read"]);
    // Installed already expired: every caller needs a refresh.
    a.install(import_request("rep-sf", "acct-sf", &issued, 0))
        .await
        .expect("install");
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(replicas.client(i).await);
    }
    // Every replica has the connection cached before the burst.
    for c in &mut clients {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c
            .get_connection(pb::GetConnectionRequest {
                connection_id: "rep-sf".into(),
            })
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "a replica never saw the install");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let before = replicas.sandbox.stats().token_requests;
    let calls = (0..1000).map(|i| {
        let mut c = clients[i % 3].clone();
        async move {
            c.get_token(get("rep-sf"))
                .await
                .map(|r| access_token(r.into_inner()))
        }
    });
    let results = join_all(calls).await;
    let tokens: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| r.expect("every call gets a token"))
        .collect();
    let provider_calls = replicas.sandbox.stats().token_requests - before;
    assert_eq!(
        provider_calls, 1,
        "1,000 calls over 3 replicas made {provider_calls} provider calls"
    );
    assert_eq!(tokens.len(), 1, "every caller got the one refreshed token");
    assert!(!tokens.contains(&issued.access_token));
    replicas.stop().await;
}

/// Guards: while PostgreSQL is down, cached valid tokens are still served;
/// refreshes and installs answer UNAVAILABLE with RetryInfo; a refresh
/// whose provider call succeeded just as the database went away keeps its
/// rotated grant in memory until the database is back, so the connection
/// still refreshes afterwards (strict rotation: a lost refresh token would
/// make that refresh fail with invalid_grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_keeps_cached_tokens_served_and_loses_no_grant() {
    let cluster = tokend_pgtest::Cluster::dedicated();
    let mut options = PgOptions::new(SecretString::from(cluster.database("outage")));
    options.connect_timeout = Duration::from_millis(500);
    options.statement_timeout = Duration::from_secs(2);
    let replicas = Replicas::start_on(
        options,
        1,
        EngineSettings {
            background_refresh: false,
            lease_ttl: Duration::from_secs(2),
            pending_retry_max: Duration::from_millis(500),
            ..Default::default()
        },
        Vec::new(),
    )
    .await;
    let mut a = replicas.client(0).await;
    let install = |id: &'static str| {
        let issued = replicas
            .sandbox
            .issue_tokens(&format!("acct-{id}"), &["crm.objects.contacts.read"]);
        let request = import_request(id, &format!("acct-{id}"), &issued, 1800);
        (issued, request)
    };
    let (cached, req) = install("out-cached");
    a.install(req).await.expect("install");
    let (_, req) = install("out-inflight");
    a.install(req).await.expect("install");

    // A refresh whose provider answer comes back after the database is gone.
    replicas.sandbox.inject(tokend_sandbox::Fault::Latency {
        delay: Duration::from_millis(1500),
        count: 1,
    });
    let mut inflight_client = a.clone();
    let inflight =
        tokio::spawn(async move { inflight_client.force_refresh(force("out-inflight")).await });
    // Steady load on the cached connection from before the database stops
    // until after it is back: not one call may fail.
    let load_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&load_stop);
        let clients: Vec<Client> = (0..8).map(|_| a.clone()).collect();
        let want = cached.access_token.clone();
        tokio::spawn(async move {
            let per_client = clients.into_iter().map(|mut c| {
                let (stop, want) = (Arc::clone(&stop), want.clone());
                async move {
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match c
                            .get_token(get("out-cached"))
                            .await
                            .map(|r| access_token(r.into_inner()))
                        {
                            Ok(token) if token == want => ok += 1,
                            Ok(_) => failed.push("another token".to_owned()),
                            Err(status) => failed.push(format!("{status:?}")),
                        }
                        // Paced below the local caller's rate limit.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (ok, failed)
                }
            });
            join_all(per_client).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.stop_immediately().expect("database stops");

    for _ in 0..50 {
        let served = access_token(
            a.get_token(get("out-cached"))
                .await
                .expect("a cached token is served while the database is down")
                .into_inner(),
        );
        assert_eq!(served, cached.access_token);
    }
    let refused = a
        .force_refresh(force("out-cached"))
        .await
        .expect_err("no refresh without the database");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.get_details_retry_info().is_some(),
        "RetryInfo says when to retry: {refused:?}"
    );
    let (_, req) = install("out-new");
    let refused = a.install(req).await.expect_err("no install either");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let inflight = inflight.await.expect("joins");
    println!(
        "the refresh in flight when the database stopped answered: {:?}",
        inflight
            .as_ref()
            .map(|_| "a token")
            .map_err(tonic::Status::code)
    );

    cluster.restart().expect("database restarts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = load.await.expect("load joins");
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    println!(
        "cached GetToken through the outage: {ok} ok, {} failed",
        failed.len()
    );
    assert!(ok > 500, "the load ran ({ok} calls)");
    assert!(
        failed.is_empty(),
        "cached calls failed: {:?}",
        &failed[..failed.len().min(3)]
    );
    // The pool reconnects by itself, and the in-flight grant was kept: the
    // connection refreshes again with the refresh token it rotated to.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match a.force_refresh(force("out-inflight")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("out-inflight no longer refreshes after the outage: {s:?}"),
        }
    }
    let status = a
        .get_connection(pb::GetConnectionRequest {
            connection_id: "out-inflight".into(),
        })
        .await
        .expect("connection")
        .into_inner()
        .connection
        .expect("connection");
    assert_eq!(status.status, pb::ConnectionStatus::Active as i32);
    // The refusals above were remembered with their RetryInfo; once it has
    // passed, everything works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.force_refresh(force("out-cached")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                let wait = s
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait).await;
            }
            Err(s) => panic!("out-cached no longer refreshes after the outage: {s:?}"),
        }
    }
    let (_, req) = install("out-after");
    a.install(req).await.expect("installs work again");
    replicas.stop().await;
}

/// Guards: with one webhook endpoint configured on every replica, each
/// event is delivered by one replica only; when the delivering replica
/// stops, another takes over from the cursor it saved, skipping nothing and
/// repeating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_gets_each_event_once_from_the_fleet_and_survives_its_sender() {
    let (port, seen) = crate::webhooks::scripted_receiver(Vec::new()).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let options = PgOptions::new(SecretString::from(
        tokend_pgtest::cluster().database("fleet_hooks"),
    ));
    let mut replicas = Replicas::start_on(
        options,
        2,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
        vec![crate::webhooks::hook(
            "fleet",
            &url,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )],
    )
    .await;
    let install_many = |sandbox: &Sandbox, range: std::ops::Range<usize>| {
        range
            .map(|i| {
                let account = format!("acct-hook-{i}");
                let issued = sandbox.issue_tokens(&account, &["crm.objects.contacts.read"]);
                import_request(&format!("hook-{i}"), &account, &issued, 1800)
            })
            .collect::<Vec<_>>()
    };
    let wait_for = |n: usize| {
        let seen = Arc::clone(&seen);
        async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            while seen.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} deliveries arrived",
                    seen.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Anything extra (a duplicate) would arrive right after.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let ids: Vec<String> = seen.lock().unwrap().iter().map(|a| a.id.clone()).collect();
            let distinct: std::collections::BTreeSet<_> = ids.iter().cloned().collect();
            assert_eq!(ids.len(), n, "each event delivered once: {ids:?}");
            assert_eq!(distinct.len(), n);
        }
    };
    let mut a = replicas.client(0).await;
    for request in install_many(&replicas.sandbox, 0..20) {
        a.install(request).await.expect("install");
    }
    wait_for(20).await;

    // Which replica delivered: stop it; the other takes over.
    let mut sender = None;
    for i in 0..2 {
        let status = replicas
            .client(i)
            .await
            .list_webhooks(pb::ListWebhooksRequest {})
            .await
            .expect("list webhooks")
            .into_inner();
        if status.webhooks[0].delivered_since_start > 0 {
            sender = Some(i);
        }
    }
    let sender = sender.expect("one replica delivered");
    replicas.stop_one(sender).await;
    let survivor = 1 - sender;
    let mut b = replicas.client(survivor).await;
    for request in install_many(&replicas.sandbox, 20..30) {
        b.install(request).await.expect("install");
    }
    wait_for(30).await;
    replicas.stop().await;
}

/// Guards: watchers on one replica see what another replica did, and a
/// `WatchConnections` cursor taken on one replica resumes on another with
/// no gap and no duplicate (one log, one order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_on_one_replica_see_another_replicas_changes_in_one_order() {
    let replicas = Replicas::start(
        2,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
    )
    .await;
    let (mut a, mut b) = (replicas.client(0).await, replicas.client(1).await);
    let issued = replicas
        .sandbox
        .issue_tokens("acct-w", &["crm.objects.contacts.read"]);
    a.install(import_request("rep-w", "acct-w", &issued, 1800))
        .await
        .expect("install on A");
    let deadline = Instant::now() + Duration::from_secs(5);
    while b
        .get_connection(pb::GetConnectionRequest {
            connection_id: "rep-w".into(),
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "B never saw the install");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wait = Duration::from_secs(5);

    // WatchConnection on B: A's rotation arrives.
    let mut watch = b
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "rep-w".into(),
        })
        .await
        .expect("watch on B")
        .into_inner();
    let first = tokio::time::timeout(wait, watch.message())
        .await
        .expect("snapshot in time")
        .expect("stream")
        .expect("snapshot");
    let before = first.connection.expect("connection").version;
    a.force_refresh(force("rep-w")).await.expect("rotate on A");
    let rotated = tokio::time::timeout(wait, watch.message())
        .await
        .expect("B's watcher hears of A's rotation")
        .expect("stream")
        .expect("event");
    assert_eq!(
        rotated.event_type,
        pb::WatchEventType::TokenRotated as i32,
        "{rotated:?}"
    );
    assert!(rotated.connection.expect("connection").version > before);

    // WatchConnections on A, from the oldest event; then resume on B from
    // the cursor of the second event.
    // `caught_up` is this replica's view: B may hear of A's last commit a
    // poll interval later, so B's read goes on until it has reached `until`.
    let all_events = |mut client: Client, resume_after: String, until: u64| async move {
        let mut stream = client
            .watch_connections(pb::WatchConnectionsRequest {
                resume_after: resume_after.clone(),
                from_oldest: resume_after.is_empty(),
                ..Default::default()
            })
            .await
            .expect("watch all")
            .into_inner();
        let mut events = Vec::new();
        loop {
            let event = tokio::time::timeout(wait, stream.message())
                .await
                .expect("events in time")
                .expect("stream")
                .expect("event");
            if event.event_type == pb::EventType::Checkpoint as i32 {
                if event.caught_up
                    && events
                        .last()
                        .is_some_and(|e: &(u64, String, String)| e.0 >= until)
                {
                    return events;
                }
                continue;
            }
            events.push((event.sequence, event.cursor, event.connection_id));
        }
    };
    let on_a = all_events(a.clone(), String::new(), 0).await;
    assert!(on_a.len() >= 2, "{on_a:?}");
    let last_on_a = on_a.last().expect("events").0;
    let resumed_on_b = all_events(b.clone(), on_a[0].1.clone(), last_on_a).await;
    let seqs = |v: &[(u64, String, String)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(seqs(&resumed_on_b), seqs(&on_a[1..]));
    replicas.stop().await;
}
