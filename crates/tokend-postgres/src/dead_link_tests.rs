//! A database connection gone silent is noticed in seconds (issue 25, item
//! 7): replica A reaches a real PostgreSQL through a proxy that stops
//! forwarding without closing anything (`blackhole.rs`), replica B directly.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokend_store::{Store, conformance, crypto::KeyFile};

use crate::{PgOptions, PostgresStore, blackhole::Blackhole};

/// Short limits, so the test takes seconds: each call at most 2 s.
fn quick(url: String, poll_interval: Duration) -> PgOptions {
    PgOptions {
        statement_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        poll_interval,
        ..PgOptions::new(SecretString::from(url))
    }
}

/// Replica A through a new proxy, replica B direct, on a fresh database.
async fn pair(prefix: &str, poll_interval: Duration) -> (PostgresStore, PostgresStore, Blackhole) {
    let cluster = tokend_pgtest::cluster();
    let url = cluster.database(prefix);
    let direct = quick(url.clone(), poll_interval);
    PostgresStore::migrate(&direct).await.expect("migrate");
    let proxy = Blackhole::start(([127, 0, 0, 1], cluster.port()).into()).await;
    let proxied = url.replace(
        &format!(":{}/", cluster.port()),
        &format!(":{}/", proxy.addr.port()),
    );
    let keys = KeyFile::generate();
    let a = PostgresStore::connect(
        &quick(proxied, poll_interval),
        keys.keyring().expect("keys"),
    )
    .await
    .expect("A connects through the proxy");
    let b = PostgresStore::connect(&direct, keys.keyring().expect("keys"))
        .await
        .expect("B connects");
    (a, b, proxy)
}

async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Invariant: another replica's commit reaches this one within the poll
/// interval even when its `LISTEN` connection goes silent (no error, no
/// notification); the heartbeat finds the silent connection and listens
/// again on a new one. (Before: the poll ran on the `LISTEN` connection
/// and hung with it, so nothing more was seen, ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listen_connection_delays_nothing_past_the_poll_interval() {
    let poll = Duration::from_millis(500);
    let (a, b, proxy) = pair("silent-listen", poll).await;
    until(Duration::from_secs(10), || proxy.listeners() == 1)
        .await
        .expect("A listens");
    assert_eq!(proxy.silence_listeners(), 1);
    let seen = a.event_watermark();
    b.put(&conformance::record("rotated", 1), None, None)
        .await
        .expect("B writes");
    let committed = *b.event_watermark().borrow();
    let took = until(Duration::from_secs(10), || *seen.borrow() >= committed)
        .await
        .expect("A sees B's commit");
    println!("B's commit seen by A {took:?} after it, LISTEN connection silent");
    assert!(
        took <= poll + Duration::from_millis(300),
        "seen after {took:?}, poll interval {poll:?}"
    );
    // The heartbeat (every poll interval, 2 s limit) gives up on the silent
    // connection and listens on a new one.
    let relisten = until(Duration::from_secs(10), || proxy.listeners() == 2)
        .await
        .expect("A listens again on a new connection");
    println!("A listening again {relisten:?} later");
}

/// Invariant: a store call on a connection gone silent fails within the
/// call time limit (statement + connect timeout) instead of waiting for
/// the kernel (minutes), and the connection it held is closed, not handed
/// to the next call: once the database is reachable again, the next call
/// succeeds at once. (Before: the write waited forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_write_fails_within_its_time_limit() {
    let (a, _b, proxy) = pair("stuck-write", Duration::from_secs(60)).await;
    let limit = Duration::from_secs(2);
    a.put(&conformance::record("stuck", 1), None, None)
        .await
        .expect("written while the link is healthy");
    proxy.silence_all();
    let started = Instant::now();
    let stuck = tokio::time::timeout(
        Duration::from_secs(30),
        a.put(&conformance::record("stuck-2", 1), None, None),
    )
    .await
    .expect("the write gives up by itself");
    let took = started.elapsed();
    println!("stuck write failed after {took:?} (limit {limit:?}): {stuck:?}");
    assert!(stuck.is_err(), "nothing was acknowledged");
    assert!(
        took <= limit + Duration::from_millis(500),
        "failed after {took:?}, limit {limit:?}"
    );
    proxy.admit_new();
    let started = Instant::now();
    a.put(&conformance::record("after", 1), None, None)
        .await
        .expect("a new connection writes");
    assert!(
        started.elapsed() < limit,
        "the silent connection was not reused: {:?}",
        started.elapsed()
    );
}

/// Invariant: a pooled connection that went silent while idle is checked
/// before it is handed out and replaced, so the call using the pool still
/// succeeds. (Before: the pool handed it out unchecked and the call hung.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_gone_silent_is_replaced_before_use() {
    let (a, b, proxy) = pair("silent-idle", Duration::from_secs(60)).await;
    let record = conformance::record("idle", 1);
    b.put(&record, None, None).await.expect("B writes");
    a.get(&record.id).await.expect("A reads").expect("found");
    proxy.silence_open();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(30), a.get(&record.id))
        .await
        .expect("answers");
    println!(
        "read after the idle connection went silent: {:?}",
        started.elapsed()
    );
    assert!(read.expect("read through a fresh connection").is_some());
}

/// Issue 25, item 11 (`clock-step`). Invariant: the fleet's clock is the
/// database's (`clock_timestamp()`; on this machine, the system's), and
/// reading it is a store call like any other: on a connection gone silent
/// it fails within the call time limit, so the wall-clock watcher that
/// reads it every second is never stuck, and a new connection reads it
/// again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_clock_is_read_within_the_call_time_limit() {
    let (a, _b, proxy) = pair("fleet-clock", Duration::from_secs(60)).await;
    let limit = Duration::from_secs(2);
    let system = tokend_core::Clock::system().now().unix_millis();
    let fleet = a
        .fleet_now()
        .await
        .expect("read")
        .expect("PostgreSQL has a clock")
        .unix_millis();
    assert!(
        (fleet - system).abs() < 1000,
        "the database's clock reads {fleet}, this machine's {system}"
    );
    proxy.silence_all();
    let started = Instant::now();
    let stuck = tokio::time::timeout(Duration::from_secs(30), a.fleet_now())
        .await
        .expect("the read gives up by itself");
    let took = started.elapsed();
    assert!(stuck.is_err(), "{stuck:?}");
    assert!(
        took <= limit + Duration::from_millis(500),
        "failed after {took:?}, limit {limit:?}"
    );
    proxy.admit_new();
    assert!(a.fleet_now().await.expect("read again").is_some());
}
