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

mod fleet_events;
mod outage;
