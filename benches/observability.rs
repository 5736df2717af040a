//! What per-call observability costs on the hot path: the same tokend with
//! its per-call span and per-call metrics layer, and without them, in one
//! run. Both run as `tokend serve` logs (a fmt subscriber at `info`, writing
//! to a sink), on sled stores, against the same sandbox. The metrics that
//! are always kept (refreshes, the connections gauge, served TTLs) are on in
//! both: the ratio isolates what every call pays.
//!
//! Cached GetToken: p50 and p99 of 5,000 sequential calls per server per
//! round (the two servers' calls interleaved one by one, which goes first
//! alternating), and throughput of 16 concurrent callers, 7 rounds. Ratios
//! are the observed server's speed over the bare one's (goal >= 0.95x).
//!
//! Run: `cargo bench --bench observability`

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::{SledStore, crypto::Keyring};
use tonic::transport::Channel;

const ROUNDS: usize = 7;
const SEQUENTIAL_CALLS: usize = 5_000;
const TASKS: usize = 16;
const CALLS_PER_TASK: usize = 1_000;

fn main() {
    support::bench_main(run());
}

fn limits() -> Limits {
    Limits {
        open_requests_per_second_per_peer: 10_000_000,
        ..Limits::default()
    }
}

/// A server, its data dir and its stop handle (kept until the end).
type Running = (Channel, tempfile::TempDir, tokio::sync::oneshot::Sender<()>);

async fn server(sandbox: &Sandbox, bare: bool) -> Running {
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).expect("store");
    let (channel, _, stop, _) =
        support::start_configured(sandbox, Arc::new(store), dir.path(), limits(), None, |c| {
            c.without_call_observability = bare
        })
        .await;
    let mut client = TokenServiceClient::new(channel.clone());
    client
        .install(support::import_request(sandbox, "cached", 3600))
        .await
        .expect("install");
    (channel, dir, stop)
}

async fn get(client: &mut TokenServiceClient<Channel>) -> Duration {
    let t = Instant::now();
    client
        .get_token(pb::GetTokenRequest {
            connection_id: "cached".into(),
            min_ttl_seconds: 0,
        })
        .await
        .expect("get_token");
    t.elapsed()
}

async fn throughput(channel: &Channel) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut client = TokenServiceClient::new(channel.clone());
            tokio::spawn(async move {
                for _ in 0..CALLS_PER_TASK {
                    get(&mut client).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    (TASKS * CALLS_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounds(v: &[f64]) -> String {
    let list: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
    format!("{:.2}x (rounds: {})", median(v.to_vec()), list.join(", "))
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let (observed, _d1, _s1) = server(&sandbox, false).await;
    let (bare, _d2, _s2) = server(&sandbox, true).await;
    let mut on = TokenServiceClient::new(observed.clone());
    let mut off = TokenServiceClient::new(bare.clone());
    for _ in 0..200 {
        get(&mut on).await;
        get(&mut off).await;
    }
    let (mut all_on, mut all_off) = (Vec::new(), Vec::new());
    let (mut r50, mut r99, mut rtp, mut tp_on, mut tp_off) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..SEQUENTIAL_CALLS {
            if (i + round) % 2 == 0 {
                a.push(get(&mut on).await);
                b.push(get(&mut off).await);
            } else {
                b.push(get(&mut off).await);
                a.push(get(&mut on).await);
            }
        }
        r50.push(pct(&mut b, 0.5) / pct(&mut a, 0.5));
        r99.push(pct(&mut b, 0.99) / pct(&mut a, 0.99));
        let (x, y) = if round % 2 == 0 {
            let x = throughput(&observed).await;
            (x, throughput(&bare).await)
        } else {
            let y = throughput(&bare).await;
            (throughput(&observed).await, y)
        };
        rtp.push(x / y);
        tp_on.push(x);
        tp_off.push(y);
        all_on.extend(a);
        all_off.extend(b);
    }
    println!("## per-call observability: on vs off");
    println!();
    println!(
        "| figure | measured (observed) | baseline (same run) | ratio (observed speed / bare) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| cached GetToken p50 | {:.0} µs | without span and metrics {:.0} µs | {} |",
        pct(&mut all_on, 0.5),
        pct(&mut all_off, 0.5),
        rounds(&r50)
    );
    println!(
        "| cached GetToken p99 | {:.0} µs | without {:.0} µs | {} |",
        pct(&mut all_on, 0.99),
        pct(&mut all_off, 0.99),
        rounds(&r99)
    );
    println!(
        "| cached GetToken throughput, {TASKS} callers | {:.0} /s | without {:.0} /s | {} |",
        median(tp_on),
        median(tp_off),
        rounds(&rtp)
    );
}
