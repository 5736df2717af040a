//! What OTLP trace export costs: two real `tokend serve` processes, one
//! exporting every span to an OTLP/gRPC receiver in this process
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), one not, under the same cached
//! GetToken load (raw gRPC calls, 16 in flight over one connection).
//! Rounds alternate which goes first; the ratio is exporting over not.
//!
//! Run: `cargo bench --bench otlp_export`

#[path = "common/echo.rs"]
mod echo;
#[path = "support.rs"]
mod support;

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::join_all;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message as _;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tonic::transport::Channel;

const ROUNDS: usize = 5;
const IN_FLIGHT: usize = 16;
const CALLS: usize = 20_000;
const SECRET: &str = "otlp-bench-secret";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// `tokend serve` with the sandbox configured, exporting to `collector`
/// if given; its channel once it answers, with one connection installed.
async fn serve(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    collector: Option<std::net::SocketAddr>,
) -> (Served, Channel) {
    let config = dir.join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{}\"\n\
             client_id = \"{}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
             [limits]\nopen_requests_per_second_per_peer = 10000000\n",
            sandbox.token_url(),
            sandbox.config().client_id,
        ),
    )
    .expect("config");
    let addr = free_addr();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string(), "--admin-listen", "off"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SANDBOX_CLIENT_SECRET", SECRET)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("TOKEND_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(c) = collector {
        command.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{c}"));
    }
    let served = Served(command.spawn().expect("tokend serve starts"));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = TokenServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .install(support::import_request(sandbox, "cached", 3600))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "tokend did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (served, channel)
}

/// Calls per second: `IN_FLIGHT` callers, `CALLS` cached GetTokens.
async fn load(channel: &Channel, body: &Bytes) -> f64 {
    let started = Instant::now();
    join_all((0..IN_FLIGHT).map(|_| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let body = body.clone();
        async move {
            for _ in 0..CALLS / IN_FLIGHT {
                grpc.ready().await.expect("ready");
                grpc.unary(
                    tonic::Request::new(body.clone()),
                    http::uri::PathAndQuery::from_static("/tokend.v1.TokenService/GetToken"),
                    echo::Raw,
                )
                .await
                .expect("get token");
            }
        }
    }))
    .await;
    CALLS as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let sandbox = Sandbox::start(SandboxConfig {
        client_secret: SECRET.into(),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let (plain_dir, export_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_plain, plain) = serve(&sandbox, plain_dir.path(), None).await;
    let (_exporting, exporting) = serve(&sandbox, export_dir.path(), Some(collector)).await;
    let body = Bytes::from(
        pb::GetTokenRequest {
            connection_id: "cached".into(),
            min_ttl_seconds: 0,
        }
        .encode_to_vec(),
    );
    load(&plain, &body).await; // warm-up
    load(&exporting, &body).await;
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (w, wo) = if round % 2 == 0 {
            let w = load(&exporting, &body).await;
            (w, load(&plain, &body).await)
        } else {
            let wo = load(&plain, &body).await;
            (load(&exporting, &body).await, wo)
        };
        with.push(w);
        without.push(wo);
        ratios.push(w / wo);
    }
    // Let the last batches arrive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "otlp export: cached GetToken, {IN_FLIGHT} in flight, {CALLS} calls a round, {ROUNDS} rounds"
    );
    println!("| exporting | not exporting | ratio | spans received |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} /s | {:.0} /s | {:.2}x (rounds {:.2}–{:.2}x) | {} |",
        median(with),
        median(without),
        median(ratios),
        sorted[0],
        sorted[sorted.len() - 1],
        receiver.0.load(Ordering::Relaxed)
    );
}
