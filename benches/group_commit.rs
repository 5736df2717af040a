//! Group commit: durable refreshes per second with 64 refreshes in flight,
//! the sled store as it ships (one flush covers every change the writer
//! took together) against the same store flushing once per write, in one
//! run. Then both again with 2 ms added to every flush, as a cloud disk's
//! fsync would take.
//!
//! Each refresh is an unconditional ForceRefresh on its own connection
//! (64 connections, one caller each) against the sandbox over HTTP; its
//! answer comes after its rotated token is flushed. Rounds alternate which
//! store goes first; figures are medians over rounds.
//!
//! Run: `cargo bench --bench group_commit`

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
use tokend_store::{SledStore, Tuning, crypto::Keyring};
use tonic::transport::Channel;

const ROUNDS: usize = 5;
const IN_FLIGHT: usize = 64;
const REFRESHES_PER_CALLER: usize = 20;

fn main() {
    support::bench_main(run());
}

/// A tokend on a tuned sled store, with its data dir.
struct Server {
    channel: Channel,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn server(sandbox: &Sandbox, tuning: Tuning) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open_for_bench(&dir.path().join("db"), Keyring::ephemeral(), tuning)
        .expect("store");
    let limits = Limits {
        open_requests_per_second_per_peer: 10_000_000,
        ..Limits::default()
    };
    // Unconditional ForceRefresh calls are not floored: each one refreshes.
    let (channel, _, stop, _) = support::start(
        sandbox,
        Arc::new(store),
        dir.path(),
        limits,
        Some(Duration::ZERO),
    )
    .await;
    let mut client = TokenServiceClient::new(channel.clone());
    for i in 0..IN_FLIGHT {
        client
            .install(support::import_request(sandbox, &format!("c{i}"), 1800))
            .await
            .expect("install");
    }
    Server {
        channel,
        _stop: stop,
        _dir: dir,
    }
}

/// 64 callers, each refreshing its own connection; refreshes per second.
async fn round(server: &Server) -> f64 {
    let started = Instant::now();
    let callers = (0..IN_FLIGHT).map(|i| {
        let mut client = TokenServiceClient::new(server.channel.clone());
        async move {
            for _ in 0..REFRESHES_PER_CALLER {
                client
                    .force_refresh(pb::ForceRefreshRequest {
                        connection_id: format!("c{i}"),
                        rejected: None,
                    })
                    .await
                    .expect("refresh");
            }
        }
    });
    join_all(callers).await;
    (IN_FLIGHT * REFRESHES_PER_CALLER) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn compare(sandbox: &Sandbox, flush_delay: Duration) {
    let group = server(
        sandbox,
        Tuning {
            flush_delay,
            ..Tuning::default()
        },
    )
    .await;
    let per_write = server(
        sandbox,
        Tuning {
            max_batch: 1,
            flush_delay,
        },
    )
    .await;
    round(&group).await; // warm-up
    round(&per_write).await;
    let (mut g, mut p, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let (a, b) = if r % 2 == 0 {
            let a = round(&group).await;
            (a, round(&per_write).await)
        } else {
            let b = round(&per_write).await;
            (round(&group).await, b)
        };
        g.push(a);
        p.push(b);
        ratios.push(a / b);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "| {} ms | {:.0} /s | {:.0} /s | {:.2}x (rounds {:.2}–{:.2}x) |",
        flush_delay.as_millis(),
        median(g),
        median(p),
        median(ratios),
        sorted[0],
        sorted[sorted.len() - 1],
    );
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    println!(
        "group commit: durable refreshes, {IN_FLIGHT} in flight, {} per round, {ROUNDS} rounds",
        IN_FLIGHT * REFRESHES_PER_CALLER
    );
    println!("| added flush latency | group commit | flush per write | ratio |");
    println!("|---|---|---|---|");
    compare(&sandbox, Duration::ZERO).await;
    compare(&sandbox, Duration::from_millis(2)).await;
}
