//! Issue 26, item 9: `/readyz` tells the truth. A server whose PostgreSQL
//! stopped answers 503 within a couple of seconds, and 200 again once the
//! database is back; probes in between are answered from a cache, so a
//! storm of probes costs the store at most a round trip a second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use tokend_postgres::{PgOptions, PostgresStore};
use tokend_server::{ServerConfig, admin::AdminListener};
use tokend_store::crypto::KeyFile;

async fn readiness(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<u16> {
    http.get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// A server on `store` with its admin listener: the admin address, the
/// stop signal and the server's task.
async fn serve(
    store: PostgresStore,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tokend_server::ServerError>>,
) {
    let (admin, admin_addr) = AdminListener::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokend_server::run(
        listener,
        Arc::new(store),
        ServerConfig {
            admin: Some(admin),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    (admin_addr, stop, server)
}

/// Polls `/readyz` until it answers `want`, for at most `limit`; how long
/// that took.
async fn until(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    want: u16,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if readiness(http, addr).await == Some(want) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Before: `/readyz` answered 200 for as long as PostgreSQL was down (only
/// a dead sled writer made it 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_down_and_back() {
    let cluster = tokend_pgtest::Cluster::dedicated();
    let mut options = PgOptions::new(SecretString::from(cluster.database("readyz")));
    options.connect_timeout = Duration::from_millis(500);
    options.statement_timeout = Duration::from_secs(2);
    PostgresStore::migrate(&options).await.expect("migrate");
    let keys = KeyFile::generate();
    let store = PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("connects");
    let (admin_addr, stop, server) = serve(store).await;
    let http = reqwest::Client::new();
    assert!(
        until(&http, admin_addr, 200, Duration::from_secs(20))
            .await
            .is_some(),
        "ready at first"
    );

    cluster.stop_immediately().expect("database stops");
    let down = until(&http, admin_addr, 503, Duration::from_secs(5))
        .await
        .expect("503 within a few seconds of the database stopping");
    println!("/readyz answered 503 {down:?} after PostgreSQL stopped");
    assert!(down < Duration::from_secs(3), "{down:?}");

    // A storm of probes is answered from the cache, quickly.
    let started = Instant::now();
    let probes: Vec<_> = (0..50).map(|_| readiness(&http, admin_addr)).collect();
    let answers = futures::future::join_all(probes).await;
    assert!(answers.iter().all(|a| *a == Some(503)), "{answers:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    cluster.restart().expect("database restarts");
    let up = until(&http, admin_addr, 200, Duration::from_secs(20))
        .await
        .expect("ready again once the database is back");
    println!("/readyz answered 200 {up:?} after PostgreSQL restarted");

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}

/// Ready means this process's keys open the records. Another replica that
/// was given a new key records it before sealing with it; a replica never
/// given that key cannot open what is sealed with it, and says so on
/// `/readyz`. Before: it answered 200 (keys were checked only at its own
/// start and swaps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_key_the_fleet_records_is_not_ready() {
    let cluster = tokend_pgtest::cluster();
    let options = PgOptions::new(SecretString::from(cluster.database("readyz_keys")));
    PostgresStore::migrate(&options).await.expect("migrate");
    let old = KeyFile::generate();
    let dir = tempfile::tempdir().unwrap();
    old.save(&dir.path().join("old.keys")).unwrap();
    let mut new = KeyFile::load(&dir.path().join("old.keys")).unwrap();
    new.rotate();
    let store = PostgresStore::connect(&options, old.keyring().expect("keys"))
        .await
        .expect("connects");
    let (admin_addr, stop, server) = serve(store).await;
    let http = reqwest::Client::new();
    assert!(
        until(&http, admin_addr, 200, Duration::from_secs(20))
            .await
            .is_some(),
        "ready with the keys the database records"
    );

    // A second replica, given the old key and a new active one, records
    // the new key as it connects.
    let other = PostgresStore::connect(&options, new.keyring().expect("keys"))
        .await
        .expect("the replica with the new key connects");
    until(&http, admin_addr, 503, Duration::from_secs(5))
        .await
        .expect("the replica lacking the new key is not ready");
    let body = http
        .get(format!("http://{admin_addr}/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("keys missing") && body.contains('2'),
        "{body}"
    );
    drop(other);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}
