//! A storm: 10,000 callers ask for one expired token at once, over 100
//! HTTP/2 connections (100 streams each, tokend's default limit). The
//! provider takes 50 ms to answer. Exactly one provider call must be made
//! (the bench fails otherwise). The callers' p99 is compared with the same
//! 10,000 calls at once to a bare tonic echo (`common/echo.rs`) plus the
//! provider's latency: on 2 cores, handling 10,000 calls at all takes a
//! few hundred milliseconds, whatever the server does.
//!
//! The per-peer rate limit is raised for the bench: every caller comes from
//! 127.0.0.1, which `tokend serve`'s default (5,000 new requests a second per
//! peer without identities) would rightly refuse. Every other limit is
//! `tokend serve`'s default (16,384 requests pending server-wide).
//!
//! Run: `cargo bench --bench storm`

#[path = "common/echo.rs"]
mod echo;
#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Fault, Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::{SledStore, crypto::Keyring};
use tonic::transport::Channel;

const CALLERS: usize = 10_000;
const CONNECTIONS: usize = 100;
const PROVIDER_LATENCY: Duration = Duration::from_millis(50);
const ROUNDS: usize = 3;

fn main() {
    support::bench_main(run());
}

/// Fires `CALLERS` GetToken calls for `id` at once over `channels` to
/// `path`; each caller's latency, sorted.
async fn storm(channels: &[Channel], path: &'static str, id: &str) -> Vec<Duration> {
    use prost::Message as _;
    let body = bytes::Bytes::from(
        pb::GetTokenRequest {
            connection_id: id.into(),
            min_ttl_seconds: 0,
        }
        .encode_to_vec(),
    );
    let callers = (0..CALLERS).map(|i| {
        let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
        let body = body.clone();
        async move {
            let started = Instant::now();
            grpc.ready().await.expect("ready");
            grpc.unary(
                tonic::Request::new(body),
                http::uri::PathAndQuery::from_static(path),
                echo::Raw,
            )
            .await
            .expect("call");
            started.elapsed()
        }
    });
    let mut latencies = join_all(callers).await;
    latencies.sort();
    latencies
}

async fn run() {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open(&dir.path().join("db"), Keyring::ephemeral()).expect("store");
    let limits = Limits {
        open_requests_per_second_per_peer: 10_000_000,
        ..Limits::default()
    };
    let (channel, addr, _stop, _server) =
        support::start(&sandbox, Arc::new(store), dir.path(), limits, None).await;
    let channels = support::channels(addr, CONNECTIONS).await;
    // The echo answers with a reply the size of tokend's.
    TokenServiceClient::new(channel.clone())
        .install(support::import_request(&sandbox, "sizing", 3600))
        .await
        .expect("install");
    let reply = TokenServiceClient::new(channel.clone())
        .get_token(pb::GetTokenRequest {
            connection_id: "sizing".into(),
            min_ttl_seconds: 0,
        })
        .await
        .expect("get token")
        .into_inner();
    let echo_channels = support::channels(echo::start(reply).await, CONNECTIONS).await;
    println!(
        "storm: {CALLERS} callers on one expired token over {CONNECTIONS} connections, provider latency {} ms",
        PROVIDER_LATENCY.as_millis()
    );
    println!(
        "| round | provider calls | p50 ms | p99 ms | max ms | echo storm p99 ms | p99 - echo p99 - provider latency |"
    );
    println!("|---|---|---|---|---|---|---|");
    for round in 0..ROUNDS {
        let id = format!("storm-{round}");
        // Expired on arrival: every caller needs the refresh.
        TokenServiceClient::new(channel.clone())
            .install(support::import_request(&sandbox, &id, 0))
            .await
            .expect("install");
        sandbox.inject(Fault::Latency {
            delay: PROVIDER_LATENCY,
            count: 1,
        });
        let before = sandbox.stats().token_requests;
        let latencies = storm(&channels, "/tokend.v1.TokenService/GetToken", &id).await;
        let provider_calls = sandbox.stats().token_requests - before;
        assert_eq!(provider_calls, 1, "one provider call for the whole storm");
        let echo = storm(&echo_channels, echo::PATH, &id).await;
        let at = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {round} | {provider_calls} | {:.1} | {:.1} | {:.1} | {:.1} | {:+.1} ms |",
            ms(at(&latencies, 0.5)),
            ms(at(&latencies, 0.99)),
            ms(at(&latencies, 1.0)),
            ms(at(&echo, 0.99)),
            ms(at(&latencies, 0.99)) - ms(at(&echo, 0.99)) - ms(PROVIDER_LATENCY),
        );
    }
    // Server, sandbox and the 10,000 callers together, at their peak.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!(
            "peak RSS of the whole bench process: {}",
            hwm.trim_start_matches("VmHWM:").trim()
        );
    }
}
