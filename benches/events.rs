//! The event feed's costs, each beside a baseline measured in the same run:
//!
//! 1. Refresh throughput with the event log on vs off (the same server on a
//!    store that appends no events), in alternating rounds: the event rides
//!    in the refresh's own write, so the goal is >= 0.95x.
//! 2. Fan-out of each event to 100 `WatchConnections` subscribers: delivery
//!    latency from the write's RPC being sent to each subscriber receiving
//!    the event, beside a bare tonic server (tonic-health's Watch, no
//!    tokend code) pushing a status change to 100 watchers.
//!
//! Run: `cargo bench --bench events`

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::{SledStore, crypto::Keyring};
use tonic::transport::Channel;
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_client::HealthClient},
};

const ROUNDS: usize = 9;
const CONNECTIONS: usize = 64;
const REFRESH_TASKS: usize = 16;
const REFRESHES_PER_TASK: usize = 100;
const SUBSCRIBERS: usize = 100;
const FANOUT_EVENTS: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn limits() -> Limits {
    Limits {
        open_requests_per_second_per_peer: 10_000_000,
        open_watch_streams_per_peer: 10_000,
        ..Limits::default()
    }
}

fn install(sandbox: &Sandbox, id: &str) -> pb::InstallRequest {
    support::import_request(sandbox, id, 1800)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    println!("## tokend event feed benchmark");
    println!();
    println!("| figure | measured | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    refresh_throughput(&sandbox).await;
    fan_out(&sandbox).await;
}

/// Unconditional ForceRefresh calls from 16 tasks over 64 connections: each
/// is a lease write, a provider call and a grant write, both flushed.
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

async fn refresh_throughput(sandbox: &Sandbox) {
    let on_dir = tempfile::tempdir().expect("tempdir");
    let off_dir = tempfile::tempdir().expect("tempdir");
    let on_store = Arc::new(SledStore::open(on_dir.path(), Keyring::ephemeral()).expect("store"));
    let off_store = Arc::new(
        SledStore::open_without_event_log(off_dir.path(), Keyring::ephemeral()).expect("store"),
    );
    let floor = Some(Duration::ZERO);
    let (on, _, stop_on, on_server) =
        support::start(sandbox, on_store, on_dir.path(), limits(), floor).await;
    let (off, _, stop_off, off_server) =
        support::start(sandbox, off_store, off_dir.path(), limits(), floor).await;
    for channel in [&on, &off] {
        let mut c = TokenServiceClient::new(channel.clone());
        for i in 0..CONNECTIONS {
            c.install(install(sandbox, &format!("c{i}")))
                .await
                .expect("install");
        }
        refresh_round(channel).await; // warm-up
    }
    let (mut with_log, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let a = refresh_round(&on).await;
        let b = refresh_round(&off).await;
        with_log.push(a);
        without.push(b);
        ratios.push(a / b);
    }
    println!(
        "| refresh throughput, event log on ({REFRESH_TASKS} callers, {CONNECTIONS} connections; median of {ROUNDS} alternating rounds) | {:.0} /s | event log off {:.0} /s | {:.2}x (rounds: {}) |",
        median(with_log),
        median(without),
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = stop_on.send(());
    let _ = stop_off.send(());
    let _ = on_server.await;
    let _ = off_server.await;
}

/// Subscribers, each on its own channel, recording when each message
/// arrives; `skip` messages (the streams' opening ones) are not counted.
async fn receive_times<S, F>(
    streams: Vec<S>,
    count: usize,
    skip: usize,
    next: F,
) -> Vec<tokio::task::JoinHandle<Vec<Instant>>>
where
    S: Send + 'static,
    F: Fn(&mut S) -> futures::future::BoxFuture<'_, bool> + Send + Sync + Copy + 'static,
{
    streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for _ in 0..skip {
                    next(&mut s).await;
                }
                let mut times = Vec::with_capacity(count);
                while times.len() < count && next(&mut s).await {
                    times.push(Instant::now());
                }
                times
            })
        })
        .collect()
}

async fn latencies(
    tasks: Vec<tokio::task::JoinHandle<Vec<Instant>>>,
    sent: &[Instant],
) -> Vec<Duration> {
    let mut out = Vec::new();
    for t in tasks {
        let times = t.await.expect("subscriber");
        assert_eq!(times.len(), sent.len(), "every subscriber got every event");
        out.extend(times.iter().zip(sent).map(|(r, s)| r.duration_since(*s)));
    }
    out
}

async fn channels(addr: String, n: usize) -> Vec<Channel> {
    join_all((0..n).map(|_| {
        let addr = addr.clone();
        async move {
            Channel::from_shared(addr)
                .expect("uri")
                .connect()
                .await
                .expect("connect")
        }
    }))
    .await
}

async fn fan_out(sandbox: &Sandbox) {
    // tokend: 100 WatchConnections streams; each Install is one event.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).expect("store");
    let (channel, addr, stop, server) =
        support::start(sandbox, Arc::new(store), dir.path(), limits(), None).await;
    let addr = format!("http://{addr}");
    let mut streams = Vec::new();
    for ch in channels(addr, SUBSCRIBERS).await {
        let s = TokenServiceClient::new(ch)
            .watch_connections(pb::WatchConnectionsRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        streams.push(s);
    }
    let tasks = receive_times(streams, FANOUT_EVENTS, 1, |s| {
        Box::pin(async move { matches!(s.message().await, Ok(Some(_))) })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = TokenServiceClient::new(channel.clone());
    let mut sent = Vec::new();
    let mut write_rtt = Vec::new();
    for i in 0..FANOUT_EVENTS {
        let request = install(sandbox, &format!("f{i}"));
        let t = Instant::now();
        sent.push(t);
        client.install(request).await.expect("install");
        write_rtt.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tokend = latencies(tasks, &sent).await;
    let _ = stop.send(());
    let _ = server.await;

    // Baseline: a bare tonic server (tonic-health) and 100 Watch streams.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("svc", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base_addr = format!("http://{}", listener.local_addr().expect("addr"));
    let bare = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut watches = Vec::new();
    for ch in channels(base_addr, SUBSCRIBERS).await {
        let s = HealthClient::new(ch)
            .watch(HealthCheckRequest {
                service: "svc".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        watches.push(s);
    }
    let tasks = receive_times(watches, FANOUT_EVENTS, 1, |s| {
        Box::pin(async move { matches!(s.message().await, Ok(Some(_))) })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut base_sent = Vec::new();
    for i in 0..FANOUT_EVENTS {
        let status = if i % 2 == 0 {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        base_sent.push(Instant::now());
        reporter.set_service_status("svc", status).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut baseline = latencies(tasks, &base_sent).await;
    bare.abort();

    let (t50, t99) = (pct(&mut tokend, 0.5), pct(&mut tokend, 0.99));
    let (b50, b99) = (pct(&mut baseline, 0.5), pct(&mut baseline, 0.99));
    let (w50, w99) = (pct(&mut write_rtt, 0.5), pct(&mut write_rtt, 0.99));
    println!(
        "| fan-out to {SUBSCRIBERS} subscribers, delivery latency p50 ({FANOUT_EVENTS} events, from the write's RPC sent) | {:.2} ms | bare tonic Watch p50 {:.2} ms | {:.1}x |",
        ms(t50),
        ms(b50),
        ms(t50) / ms(b50)
    );
    println!(
        "| fan-out to {SUBSCRIBERS} subscribers, delivery latency p99 | {:.2} ms | bare tonic Watch p99 {:.2} ms | {:.1}x |",
        ms(t99),
        ms(b99),
        ms(t99) / ms(b99)
    );
    println!(
        "| the write itself (Install RPC, flushed), p50 / p99 | {:.2} / {:.2} ms | | |",
        ms(w50),
        ms(w99)
    );
}
