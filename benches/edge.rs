//! Cached GetToken against a true baseline: a bare tonic unary server
//! answering the same request with a reply of the same size, in the same
//! run, on the same runtime. The load is raw gRPC calls (pre-encoded bytes,
//! not the tokend client), over one HTTP/2 connection and over four, at 1,
//! 16 and 64 calls in flight.
//!
//! tokend runs as `tokend serve` does: an API-key identity (its rate limit
//! set above the load, so the limiter runs but never refuses), transport
//! limits enforced, every call audited to a file. Both servers' sockets are
//! accepted with TCP_NODELAY; the echo's by its own accept loop.
//!
//! Each round measures echo and tokend back to back (which goes first
//! alternates) for every shape; figures are medians over rounds, ratios are
//! tokend over echo (throughput: higher is better; latency: lower).
//!
//! Run: `cargo bench --bench edge`

#[path = "common/echo.rs"]
mod echo;
#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use tokend_proto::v1 as pb;
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::{
    auth::{Grant, IdentityConfig, Permission},
    limits::Limits,
};
use tokend_store::{SledStore, crypto::Keyring};
use tonic::transport::Channel;

/// Rounds; `EDGE_ROUNDS` overrides (1 for a profile).
fn rounds() -> usize {
    std::env::var("EDGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}
const API_KEY: &str = "edge-bench-api-key-0123456789";
const GET_TOKEN: &str = "/tokend.v1.TokenService/GetToken";
const ECHO: &str = echo::PATH;
/// (connections, calls in flight, calls per measurement)
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 4_000),
    (1, 16, 24_000),
    (1, 64, 32_000),
    (4, 1, 4_000),
    (4, 16, 24_000),
    (4, 64, 32_000),
];

fn main() {
    support::bench_main(run());
}

async fn call(grpc: &mut tonic::client::Grpc<Channel>, path: &'static str, body: &Bytes) -> Bytes {
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body.clone());
    request
        .metadata_mut()
        .insert("x-api-key", API_KEY.parse().expect("key"));
    grpc.unary(request, PathAndQuery::from_static(path), echo::Raw)
        .await
        .expect("call")
        .into_inner()
}

/// One measurement: `in_flight` callers share `channels` round-robin and
/// make `total` calls between them.
struct Measured {
    per_second: f64,
    latencies: Vec<Duration>,
}

async fn measure(
    channels: &[Channel],
    path: &'static str,
    body: &Bytes,
    in_flight: usize,
    total: usize,
) -> Measured {
    let per_task = total / in_flight;
    // Warm-up: every connection, every caller.
    let warm: Vec<_> = (0..in_flight)
        .map(|i| {
            let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    call(&mut grpc, path, &body).await;
                }
            })
        })
        .collect();
    for w in warm {
        w.await.expect("warm-up");
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|i| {
            let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            let body = body.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    call(&mut grpc, path, &body).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.expect("caller"));
    }
    let elapsed = started.elapsed();
    Measured {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: f64) -> String {
    format!("{d:.3}")
}

/// Per shape and server, each round's figures.
#[derive(Default)]
struct Rounds {
    per_second: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, mut m: Measured) {
        m.latencies.sort();
        let to_ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.per_second.push(m.per_second);
        self.p50.push(to_ms(pct(&m.latencies, 0.50)));
        self.p99.push(to_ms(pct(&m.latencies, 0.99)));
        self.p999.push(to_ms(pct(&m.latencies, 0.999)));
    }
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open(&dir.path().join("db"), Keyring::ephemeral()).expect("store");
    // As `tokend serve` runs: limits enforced, audit on, one API-key
    // identity whose rate limit the load never reaches.
    let limits = Limits::default();
    let identity = IdentityConfig {
        name: "bench".into(),
        api_key_sha256: Some(hex_sha256(API_KEY)),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: vec![Permission::Admin],
            connections: vec!["*".into()],
        }],
        requests_per_second: 10_000_000,
        max_watch_streams: 64,
    };
    let (_channel, tokend_addr, _stop, _server) =
        support::start_configured(&sandbox, Arc::new(store), dir.path(), limits, None, |c| {
            c.identities = vec![identity]
        })
        .await;
    let setup = support::channels(tokend_addr, 1).await;
    let mut admin = pb::token_service_client::TokenServiceClient::with_interceptor(
        setup[0].clone(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("x-api-key", API_KEY.parse().expect("key"));
            Ok(r)
        },
    );
    admin
        .install(support::import_request(&sandbox, "cached", 3600))
        .await
        .expect("install");

    let body = Bytes::from(
        pb::GetTokenRequest {
            connection_id: "cached".into(),
            min_ttl_seconds: 0,
        }
        .encode_to_vec(),
    );
    // The echo answers with a reply the size of tokend's.
    let mut grpc = tonic::client::Grpc::new(setup[0].clone());
    let tokend_reply = call(&mut grpc, GET_TOKEN, &body).await;
    let reply = pb::GetTokenResponse::decode(tokend_reply.clone()).expect("reply");
    let echo_addr = echo::start(reply).await;
    let echo_reply = call(
        &mut tonic::client::Grpc::new(support::channels(echo_addr, 1).await[0].clone()),
        ECHO,
        &body,
    )
    .await;
    assert_eq!(echo_reply.len(), tokend_reply.len(), "same reply size");
    println!(
        "edge: cached GetToken vs a bare tonic echo, reply {} bytes, {} rounds",
        tokend_reply.len(),
        rounds()
    );

    let mut figures: Vec<(Rounds, Rounds)> = SHAPES.iter().map(|_| Default::default()).collect();
    for round in 0..rounds() {
        for (i, &(conns, in_flight, total)) in SHAPES.iter().enumerate() {
            let echo_channels = support::channels(echo_addr, conns).await;
            let tokend_channels = support::channels(tokend_addr, conns).await;
            let order = [false, true];
            let order = if round % 2 == 0 { order } else { [true, false] };
            for tokend in order {
                let m = if tokend {
                    measure(&tokend_channels, GET_TOKEN, &body, in_flight, total).await
                } else {
                    measure(&echo_channels, ECHO, &body, in_flight, total).await
                };
                let slot = &mut figures[i];
                if tokend { &mut slot.1 } else { &mut slot.0 }.add(m);
            }
        }
    }

    println!(
        "| conns | in flight | echo calls/s | tokend calls/s | ratio | echo p50 / p99 / p999 ms | tokend p50 / p99 / p999 ms | p50 diff µs | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, &(conns, in_flight, _)) in SHAPES.iter().enumerate() {
        let (echo, tokend) = &figures[i];
        let ratio = median(
            echo.per_second
                .iter()
                .zip(&tokend.per_second)
                .map(|(e, t)| t / e)
                .collect(),
        );
        let p99_ratio = median(
            echo.p99
                .iter()
                .zip(&tokend.p99)
                .map(|(e, t)| t / e)
                .collect(),
        );
        let p50_diff = median(
            echo.p50
                .iter()
                .zip(&tokend.p50)
                .map(|(e, t)| (t - e) * 1000.0)
                .collect(),
        );
        println!(
            "| {conns} | {in_flight} | {:.0} | {:.0} | {ratio:.2}x | {} / {} / {} | {} / {} / {} | {p50_diff:+.0} | {p99_ratio:.2}x |",
            median(echo.per_second.clone()),
            median(tokend.per_second.clone()),
            ms(median(echo.p50.clone())),
            ms(median(echo.p99.clone())),
            ms(median(echo.p999.clone())),
            ms(median(tokend.p50.clone())),
            ms(median(tokend.p99.clone())),
            ms(median(tokend.p999.clone())),
        );
    }
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
