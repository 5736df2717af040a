//! tokend on PostgreSQL (issue 13) beside the same tokend on sled, both
//! measured in one run, in alternating rounds (which server goes first
//! alternates too), on the same sandbox provider:
//!
//! 1. Cached GetToken: p50 and p99 of 5,000 sequential calls per server
//!    (the two servers' calls interleaved one by one), and throughput of 16
//!    concurrent callers. The read path must not touch the database, so the
//!    goal is >= 0.95x sled's speed.
//! 2. Durable refreshes per second: unconditional ForceRefresh calls from 16
//!    callers over 64 connections (each is a lease write, a provider call
//!    and a grant write, each committed durably before the reply).
//!
//! Every ratio is PostgreSQL's speed relative to sled's: sled latency /
//! PostgreSQL latency, PostgreSQL throughput / sled throughput. 1.00x is as
//! fast, below is slower; each is the median of the rounds' ratios (the
//! latencies shown pool every round's calls). PostgreSQL is a throwaway
//! local cluster (tokend-pgtest: loopback TCP, `fsync` and
//! `synchronous_commit` on) and the store runs with its default options (a
//! pool of 16 connections).
//!
//! Run: `cargo bench --bench replicas`

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use secrecy::SecretString;
use tokend_postgres::{PgOptions, PostgresStore};
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::{SledStore, Store, crypto::Keyring};
use tonic::transport::Channel;

const READ_ROUNDS: usize = 7;
const SEQUENTIAL_CALLS: usize = 5_000;
const READ_TASKS: usize = 16;
const READS_PER_TASK: usize = 1_000;
const REFRESH_ROUNDS: usize = 9;
const CONNECTIONS: usize = 64;
const REFRESH_TASKS: usize = 16;
const REFRESHES_PER_TASK: usize = 100;

fn main() {
    // Started before the runtime: initdb and pg_ctl are blocking commands.
    let url = tokend_pgtest::cluster().database("bench_replicas");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(url));
}

/// The default limits, with a per-connection request rate the benchmark's
/// one channel per server cannot reach: it measures serving, not the
/// throttle.
fn limits() -> Limits {
    Limits {
        open_requests_per_second_per_peer: 10_000_000,
        ..Limits::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Ratios as "median (rounds: a, b, ...)".
fn rounds(v: &[f64]) -> String {
    format!(
        "{:.2}x (rounds: {})",
        median(v.to_vec()),
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One tokend under test and what it runs on.
struct Server {
    channel: Channel,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tokend_server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(sandbox: &Sandbox, store: Arc<dyn Store>, dir: tempfile::TempDir) -> Self {
        // Unconditional ForceRefresh calls are not floored: each one
        // refreshes.
        let floor = Some(Duration::ZERO);
        let (channel, _, stop, task) =
            support::start(sandbox, store, dir.path(), limits(), floor).await;
        let mut client = TokenServiceClient::new(channel.clone());
        client
            .install(support::import_request(sandbox, "cached", 1800))
            .await
            .expect("install");
        for i in 0..CONNECTIONS {
            client
                .install(support::import_request(sandbox, &format!("c{i}"), 1800))
                .await
                .expect("install");
        }
        Self {
            channel,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(url: String) {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let options = PgOptions::new(SecretString::from(url));
    PostgresStore::migrate(&options).await.expect("migrate");
    let pg_store = PostgresStore::connect(&options, Keyring::ephemeral())
        .await
        .expect("PostgreSQL store");
    let pg = Server::start(
        &sandbox,
        Arc::new(pg_store),
        tempfile::tempdir().expect("tempdir"),
    )
    .await;
    let sled_dir = tempfile::tempdir().expect("tempdir");
    let sled_store = SledStore::open(sled_dir.path(), Keyring::ephemeral()).expect("sled store");
    let sled = Server::start(&sandbox, Arc::new(sled_store), sled_dir).await;

    println!("## tokend replicas benchmark: PostgreSQL store vs sled store");
    println!();
    println!(
        "| figure | measured (PostgreSQL) | baseline (same run) | ratio (PostgreSQL speed / sled) |"
    );
    println!("|---|---|---|---|");
    cached_reads(&pg.channel, &sled.channel).await;
    refreshes(&pg.channel, &sled.channel).await;

    pg.stop().await;
    sled.stop().await;
}

async fn get_cached(client: &mut TokenServiceClient<Channel>) {
    client
        .get_token(pb::GetTokenRequest {
            connection_id: "cached".into(),
            min_ttl_seconds: 0,
        })
        .await
        .expect("get_token");
}

async fn timed(client: &mut TokenServiceClient<Channel>) -> Duration {
    let t = Instant::now();
    get_cached(client).await;
    t.elapsed()
}

/// Latencies of sequential cached GetToken calls, after a warm-up, the two
/// servers' calls interleaved one by one (which goes first alternates), so
/// whatever else the machine does hits both alike.
async fn sequential(pg: &Channel, sled: &Channel) -> (Vec<Duration>, Vec<Duration>) {
    let mut pg = TokenServiceClient::new(pg.clone());
    let mut sled = TokenServiceClient::new(sled.clone());
    for _ in 0..200 {
        get_cached(&mut pg).await;
        get_cached(&mut sled).await;
    }
    let mut on_pg = Vec::with_capacity(SEQUENTIAL_CALLS);
    let mut on_sled = Vec::with_capacity(SEQUENTIAL_CALLS);
    for i in 0..SEQUENTIAL_CALLS {
        if i % 2 == 0 {
            on_pg.push(timed(&mut pg).await);
            on_sled.push(timed(&mut sled).await);
        } else {
            on_sled.push(timed(&mut sled).await);
            on_pg.push(timed(&mut pg).await);
        }
    }
    (on_pg, on_sled)
}

/// Cached GetToken calls per second from 16 concurrent callers.
async fn read_throughput(channel: &Channel) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..READ_TASKS)
        .map(|_| {
            let mut client = TokenServiceClient::new(channel.clone());
            tokio::spawn(async move {
                for _ in 0..READS_PER_TASK {
                    get_cached(&mut client).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("reader");
    }
    (READ_TASKS * READS_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

async fn cached_reads(pg: &Channel, sled: &Channel) {
    // Latencies: every round's calls pooled for the measured figures; the
    // ratio is the median of the rounds' ratios.
    let (mut all_pg, mut all_sled) = (Vec::new(), Vec::new());
    let (mut pg_tp, mut sled_tp) = (Vec::new(), Vec::new());
    let (mut r50, mut r99, mut rtp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..READ_ROUNDS {
        let (mut p, mut s) = sequential(pg, sled).await;
        let (ptp, stp);
        if round % 2 == 0 {
            ptp = read_throughput(pg).await;
            stp = read_throughput(sled).await;
        } else {
            stp = read_throughput(sled).await;
            ptp = read_throughput(pg).await;
        }
        r50.push(us(pct(&mut s, 0.5)) / us(pct(&mut p, 0.5)));
        r99.push(us(pct(&mut s, 0.99)) / us(pct(&mut p, 0.99)));
        rtp.push(ptp / stp);
        all_pg.extend(p);
        all_sled.extend(s);
        pg_tp.push(ptp);
        sled_tp.push(stp);
    }
    println!(
        "| cached GetToken p50 ({SEQUENTIAL_CALLS} sequential calls per server per round, the servers' calls interleaved; {READ_ROUNDS} rounds) | {:.0} µs | sled {:.0} µs | {} |",
        us(pct(&mut all_pg, 0.5)),
        us(pct(&mut all_sled, 0.5)),
        rounds(&r50)
    );
    println!(
        "| cached GetToken p99 | {:.0} µs | sled {:.0} µs | {} |",
        us(pct(&mut all_pg, 0.99)),
        us(pct(&mut all_sled, 0.99)),
        rounds(&r99)
    );
    println!(
        "| cached GetToken throughput, {READ_TASKS} callers (median of {READ_ROUNDS} alternating rounds) | {:.0} /s | sled {:.0} /s | {} |",
        median(pg_tp),
        median(sled_tp),
        rounds(&rtp)
    );
}

/// Unconditional ForceRefresh calls from 16 tasks over 64 connections;
/// refreshes per second.
async fn refresh_round(channel: &Channel) -> f64 {
    let start = Instant::now();
    let tasks = (0..REFRESH_TASKS).map(|t| {
        let mut client = TokenServiceClient::new(channel.clone());
        async move {
            for i in 0..REFRESHES_PER_TASK {
                let id = format!("c{}", (t * REFRESHES_PER_TASK + i) % CONNECTIONS);
                client
                    .force_refresh(pb::ForceRefreshRequest {
                        connection_id: id,
                        rejected: None,
                    })
                    .await
                    .expect("refresh");
            }
        }
    });
    join_all(tasks).await;
    (REFRESH_TASKS * REFRESHES_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

async fn refreshes(pg: &Channel, sled: &Channel) {
    refresh_round(pg).await; // warm-up
    refresh_round(sled).await;
    let (mut on_pg, mut on_sled, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..REFRESH_ROUNDS {
        let (p, s);
        if round % 2 == 0 {
            p = refresh_round(pg).await;
            s = refresh_round(sled).await;
        } else {
            s = refresh_round(sled).await;
            p = refresh_round(pg).await;
        }
        on_pg.push(p);
        on_sled.push(s);
        ratios.push(p / s);
    }
    println!(
        "| durable refreshes (ForceRefresh), {REFRESH_TASKS} callers, {CONNECTIONS} connections (median of {REFRESH_ROUNDS} alternating rounds) | {:.0} /s | sled {:.0} /s | {} |",
        median(on_pg),
        median(on_sled),
        rounds(&ratios)
    );
}
