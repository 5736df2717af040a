//! End-to-end broker benchmark: real server, real sandbox, gRPC over
//! loopback. Prints each figure next to a baseline measured in the same run
//! (a gRPC health check on the same server and channel), because absolute
//! numbers on shared machines are noise.
//!
//! Run: `cargo bench --bench broker`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

#[path = "support.rs"]
mod support;

use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::SledStore;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SEQUENTIAL_CALLS: usize = 5_000;
const CONCURRENT_TASKS: usize = 32;
const CONCURRENT_CALLS_PER_TASK: usize = 500;

struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&mut self, p: f64) -> Duration {
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i]
    }
}

async fn sequential<F, Fut>(mut call: F) -> Latencies
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..200 {
        call().await; // warm-up
    }
    let mut out = Vec::with_capacity(SEQUENTIAL_CALLS);
    for _ in 0..SEQUENTIAL_CALLS {
        let t = Instant::now();
        call().await;
        out.push(t.elapsed());
    }
    Latencies(out)
}

async fn throughput<F, Fut>(call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT_TASKS)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                for _ in 0..CONCURRENT_CALLS_PER_TASK {
                    call().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    (CONCURRENT_TASKS * CONCURRENT_CALLS_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    let (channel, stop, server) = start_tokend(&sandbox, dir.path(), bench_limits()).await;
    let tokens = TokenServiceClient::new(channel.clone());
    let health = HealthClient::new(channel.clone());

    let install = |id: &str, expires_in: i64| support::import_request(&sandbox, id, expires_in);
    tokens
        .clone()
        .install(install("cached", 1800))
        .await
        .expect("install");

    let health_call = {
        let health = health.clone();
        move || {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("check");
            }
        }
    };
    let token_call = {
        let tokens = tokens.clone();
        move || {
            let mut c = tokens.clone();
            async move {
                c.get_token(pb::GetTokenRequest {
                    connection_id: "cached".into(),
                    min_ttl_seconds: 0,
                })
                .await
                .expect("get_token");
            }
        }
    };

    let mut base = sequential(health_call.clone()).await;
    let mut cached = sequential(token_call.clone()).await;
    let base_tp = throughput(health_call).await;
    let cached_tp = throughput(token_call).await;

    // One refresh through the provider, sequentially (baseline for the burst).
    let mut refresh_lat = Vec::new();
    for i in 0..50 {
        let mut c = tokens.clone();
        let id = format!("refresh-{i}");
        c.install(install(&id, 1800)).await.expect("install");
        let t = Instant::now();
        c.force_refresh(pb::ForceRefreshRequest {
            connection_id: id,
            rejected: None,
        })
        .await
        .expect("refresh");
        refresh_lat.push(t.elapsed());
    }
    let mut refresh_lat = Latencies(refresh_lat);

    // 1,000 concurrent readers of one expired token, against the same burst
    // on a token that needs no refresh.
    let mut burst_times = Vec::new();
    let mut cached_burst_times = Vec::new();
    let mut burst_calls = Vec::new();
    for round in 0..10 {
        let expired = round % 2 == 0;
        let id = format!("burst-{round}");
        tokens
            .clone()
            .install(install(&id, if expired { 0 } else { 1800 }))
            .await
            .expect("install");
        let before = sandbox.account_stats(&id).refresh_requests;
        let t = Instant::now();
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let mut c = tokens.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    c.get_token(pb::GetTokenRequest {
                        connection_id: id,
                        min_ttl_seconds: 0,
                    })
                    .await
                    .expect("burst get_token");
                })
            })
            .collect();
        for c in calls {
            c.await.expect("join");
        }
        if expired {
            burst_times.push(t.elapsed());
            burst_calls.push(sandbox.account_stats(&id).refresh_requests - before);
        } else {
            cached_burst_times.push(t.elapsed());
        }
    }
    let mut burst_times = Latencies(burst_times);
    let mut cached_burst_times = Latencies(cached_burst_times);

    let (b50, b99, c50, c99) = (
        base.pct(0.5),
        base.pct(0.99),
        cached.pct(0.5),
        cached.pct(0.99),
    );
    println!(
        "## tokend broker benchmark ({SEQUENTIAL_CALLS} sequential calls; {CONCURRENT_TASKS}x{CONCURRENT_CALLS_PER_TASK} concurrent)"
    );
    println!();
    println!("| figure | measured | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| GetToken, cached token, p50 | {:.0} µs | health Check p50 {:.0} µs | {:.2}x |",
        us(c50),
        us(b50),
        us(c50) / us(b50)
    );
    println!(
        "| GetToken, cached token, p99 | {:.0} µs | health Check p99 {:.0} µs | {:.2}x |",
        us(c99),
        us(b99),
        us(c99) / us(b99)
    );
    println!(
        "| GetToken throughput, 32 callers | {cached_tp:.0} /s | health Check {base_tp:.0} /s | {:.2}x |",
        cached_tp / base_tp
    );
    let r50 = refresh_lat.pct(0.5);
    println!(
        "| ForceRefresh via sandbox provider, p50 | {:.0} µs | health Check p50 {:.0} µs | {:.1}x |",
        us(r50),
        us(b50),
        us(r50) / us(b50)
    );
    let bt = burst_times.pct(0.5);
    let cbt = cached_burst_times.pct(0.5);
    println!(
        "| 1,000 concurrent GetToken on an expired token, wall time (median of 5) | {:.1} ms | same burst on a valid token {:.1} ms | {:.2}x |",
        bt.as_secs_f64() * 1e3,
        cbt.as_secs_f64() * 1e3,
        bt.as_secs_f64() / cbt.as_secs_f64()
    );
    println!("| provider calls per 1,000-caller burst (5 rounds) | {burst_calls:?} | ideal: 1 | |");

    limits_cost(&sandbox, &install).await;

    let _ = stop.send(());
    let _ = server.await;
}

/// The default limits, but with a per-connection request rate the
/// benchmark's one channel cannot reach: it measures what serving costs,
/// not the throttle (whose check still runs on every call).
fn bench_limits() -> Limits {
    Limits {
        open_requests_per_second_per_peer: 10_000_000,
        ..Limits::default()
    }
}

/// A tokend as `tokend serve` runs it (every call audited), with `limits`,
/// and a channel to it.
async fn start_tokend(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    limits: Limits,
) -> (
    Channel,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tokend_server::ServerError>>,
) {
    let store = SledStore::open(dir, tokend_store::crypto::Keyring::ephemeral()).expect("store");
    let (channel, _, stop, server) =
        support::start(sandbox, Arc::new(store), dir, limits, None).await;
    (channel, stop, server)
}

/// What the transport bounds (issue 10) cost a cached GetToken: the same
/// server with the default limits and with none, same run, measured in
/// alternating rounds so drift hits both alike.
async fn limits_cost(sandbox: &Sandbox, install: &impl Fn(&str, i64) -> pb::InstallRequest) {
    const ROUNDS: usize = 5;
    let on_dir = tempfile::tempdir().expect("tempdir");
    let off_dir = tempfile::tempdir().expect("tempdir");
    let (on, stop_on, on_server) = start_tokend(sandbox, on_dir.path(), bench_limits()).await;
    let (off, stop_off, off_server) =
        start_tokend(sandbox, off_dir.path(), Limits::unenforced()).await;
    for channel in [&on, &off] {
        TokenServiceClient::new(channel.clone())
            .install(install("cached", 1800))
            .await
            .expect("install");
    }
    let call = |channel: &Channel| {
        let tokens = TokenServiceClient::new(channel.clone());
        move || {
            let mut c = tokens.clone();
            async move {
                c.get_token(pb::GetTokenRequest {
                    connection_id: "cached".into(),
                    min_ttl_seconds: 0,
                })
                .await
                .expect("get_token");
            }
        }
    };
    let (mut p50, mut p99, mut tp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Which server goes first alternates too.
        let (mut with, mut without, with_tp, without_tp);
        if round % 2 == 0 {
            with = sequential(call(&on)).await;
            without = sequential(call(&off)).await;
            with_tp = throughput(call(&on)).await;
            without_tp = throughput(call(&off)).await;
        } else {
            without = sequential(call(&off)).await;
            with = sequential(call(&on)).await;
            without_tp = throughput(call(&off)).await;
            with_tp = throughput(call(&on)).await;
        }
        p50.push(us(with.pct(0.5)) / us(without.pct(0.5)));
        p99.push(us(with.pct(0.99)) / us(without.pct(0.99)));
        // Throughput: higher is better; report without/with so that, like
        // the latencies, 1.00x means "costs nothing" and above is slower.
        tp.push(without_tp / with_tp);
    }
    let fmt = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        format!(
            "{} (median {:.2}x)",
            v.iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            sorted[sorted.len() / 2]
        )
    };
    println!();
    println!(
        "## Transport bounds: default limits / no limits, cached GetToken ({ROUNDS} alternating rounds, order alternating)"
    );
    println!();
    println!("| figure | ratios (1.00x = free, above = slower) |");
    println!("|---|---|");
    println!("| p50 latency | {} |", fmt(&p50));
    println!("| p99 latency | {} |", fmt(&p99));
    println!("| throughput, 32 callers (inverse) | {} |", fmt(&tp));
    let _ = stop_on.send(());
    let _ = stop_off.send(());
    let _ = on_server.await;
    let _ = off_server.await;
}
