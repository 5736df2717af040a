//! Transport lockout and starvation (issue 24, items 3, 4 and 11): a real
//! `tokend serve` process, with one API-key identity, driven over raw HTTP/2
//! frames from the `h2` crate on loopback. Each test states the invariant
//! it guards; the figures it prints are the ones in SECURITY.md.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{net::TcpStream, task::JoinHandle};
use tonic::Code;

use crate::harness::{bad_fields, reason};

/// The one caller's API key; its identity may read every connection.
const API_KEY: &str = "hostile-transport-key-7f3a9c2e51d84b06";

/// A `tokend serve` process with one identity (`API_KEY`) and `limits` as
/// its `[limits]`; killed on drop.
struct Tokend {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Tokend {
    /// Starts tokend and waits until it answers health checks.
    async fn start(limits: &str) -> Tokend {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tokend.toml");
        let key_hash = format!("{:x}", Sha256::digest(API_KEY.as_bytes()));
        std::fs::write(
            &config,
            format!(
                "[limits]\n{limits}\n\n[[identities]]\nname = \"svc\"\napi_key_sha256 = \"{key_hash}\"\ngrants = [{{ permissions = [\"tokens\"], connections = [\"*\"] }}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = dir.path().join("tokend.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("tokend serve starts");
        let tokend = Tokend {
            child,
            addr,
            log_path,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while health_check(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "tokend did not start: {}",
                tokend.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokend
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data").join("audit.log")).unwrap_or_default()
    }
}

impl Drop for Tokend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh connection's health check: how long it took to get SERVING,
/// or why it failed within 5 s.
async fn health_check(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        match reply.into_inner().status {
            1 => Ok(started.elapsed()),
            other => Err(format!("status {other}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// The caller's GetToken of a connection that does not exist, on a fresh
/// connection: NOT_FOUND means it was served. The status and the time.
async fn get_token(addr: SocketAddr) -> (Result<tonic::Status, String>, Duration) {
    let started = Instant::now();
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = tokend_proto::v1::token_service_client::TokenServiceClient::new(channel);
        let mut request = tonic::Request::new(crate::harness::get("nobody"));
        request
            .metadata_mut()
            .insert("x-api-key", API_KEY.parse().unwrap());
        match client.get_token(request).await {
            Ok(_) => Err("a token for a connection that does not exist".to_owned()),
            Err(status) => Ok(status),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
    (result, started.elapsed())
}

/// An HTTP/2 connection that has finished its handshake. Its task answers
/// the server's PINGs; `closed` ends when the server closes it.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    ping: Option<h2::PingPong>,
    closed: JoinHandle<()>,
}

async fn h2_connect(addr: SocketAddr) -> Result<H2, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (send, mut connection) = h2::client::Builder::new()
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let ping = connection.ping_pong();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    let send = send.ready().await.map_err(|e| e.to_string())?;
    Ok(H2 { send, ping, closed })
}

fn grpc_request(addr: SocketAddr, path: &str, api_key: bool) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if api_key {
        request = request.header("x-api-key", API_KEY);
    }
    request.body(()).unwrap()
}

const GET_TOKEN: &str = "/tokend.v1.TokenService/GetToken";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// The gRPC status a reply ended with (headers of a trailers-only reply,
/// else the trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<tonic::Status> {
    let response = response.await.ok()?;
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return Some(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.ok()?;
    }
    let trailers = body.trailers().await.ok()??;
    tonic::Status::from_header_map(&trailers)
}

/// A gRPC message prefix: `flag`, then `len` big-endian.
fn prefix(flag: u8, len: u32) -> Vec<u8> {
    let mut p = vec![flag];
    p.extend_from_slice(&len.to_be_bytes());
    p
}

/// Issue 24, item 3. Invariant: idle HTTP/2 connections cannot lock
/// callers out. With every slot held by connections that finished their
/// handshake, answer PINGs and never open a stream, a new health check and
/// an authenticated GetToken are each served at once (the connection idle
/// the longest is closed to make room), and the idle ones shed are closed
/// by the server. Before: accept waited for a free slot, and health checks
/// failed for as long as the connections were held (79 s measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_cannot_lock_callers_out() {
    const SLOTS: usize = 1024;
    let tokend = Tokend::start(&format!("max_connections = {SLOTS}")).await;
    let mut idle = Vec::new();
    for _ in 0..SLOTS {
        idle.push(h2_connect(tokend.addr).await.expect("a slot is free"));
    }
    // The 1,025th: every slot is taken, all by idle connections.
    let health = health_check(tokend.addr).await;
    let (token, token_took) = get_token(tokend.addr).await;
    let shed = idle.iter().filter(|c| c.closed.is_finished()).count();
    eprintln!(
        "{SLOTS} idle connections held: health check {health:?}; GetToken {:?} in {token_took:?}; {shed} idle connections closed",
        token.as_ref().map(|s| s.code())
    );
    let took = health.unwrap_or_else(|e| {
        panic!("a health check was locked out by {SLOTS} idle connections: {e}")
    });
    assert!(took < Duration::from_secs(2), "health check took {took:?}");
    let status = token.unwrap_or_else(|e| panic!("GetToken was locked out: {e}"));
    assert_eq!(status.code(), Code::NotFound, "served: {status:?}");
    assert!(shed >= 1, "the idle connection shed is closed");
}

/// Issue 24, item 3. Invariant: a connection with no open stream is
/// closed after `idle_timeout_secs`, even though it answers the server's
/// keepalive PINGs and sends its own (PINGs are not activity); one with an
/// open stream is kept. Before: an idle connection was held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_streams_are_closed_at_the_idle_timeout() {
    let tokend = Tokend::start(
        "idle_timeout_secs = 1\nkeepalive_interval_secs = 1\nrequest_body_timeout_ms = 60000",
    )
    .await;
    let mut pinging = h2_connect(tokend.addr).await.unwrap();
    let mut ping = pinging.ping.take().expect("the ping handle");
    let pinger = tokio::spawn(async move {
        for _ in 0..100 {
            if ping.ping(h2::Ping::opaque()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // An open stream: an authenticated request whose body is on its way.
    let mut busy = h2_connect(tokend.addr).await.unwrap();
    let (answer, mut body) = busy
        .send
        .send_request(grpc_request(tokend.addr, GET_TOKEN, true), false)
        .unwrap();
    body.send_data(Bytes::from(prefix(0, 100)), false).unwrap();

    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), &mut pinging.closed).await;
    let after = started.elapsed();
    eprintln!("a pinging connection with no stream was closed after {after:?}");
    assert!(
        closed.is_ok(),
        "a connection with no stream was kept for 10 s (idle_timeout_secs = 1)"
    );
    assert!(
        !busy.closed.is_finished(),
        "a connection with a stream is kept"
    );
    pinger.abort();
    drop(body);
    drop(answer);
}

/// Issue 24, item 4. Invariant: the services that take no credentials
/// (health, reflection) have their own small message cap and byte budget,
/// so they cannot starve tokend's callers. Eight reflection streams that
/// each declare a 4 MiB message and send all of it but 5 bytes (exactly
/// the default 32 MiB budget in all) are refused from their prefix, and
/// an authenticated GetToken is served; health calls that fill the
/// unauthenticated budget get RESOURCE_EXHAUSTED naming it, while
/// GetToken and a whole health check are still served. Before: the eight
/// streams held the shared budget and GetToken got RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_services_cannot_starve_token_callers() {
    let tokend = Tokend::start("request_body_timeout_ms = 30000").await;
    let mut attacker = h2_connect(tokend.addr).await.unwrap();
    let mut held = Vec::new();
    let mut big = Vec::new();
    const DECLARED: usize = 4 << 20;
    for _ in 0..8 {
        let (answer, mut body) = attacker
            .send
            .send_request(grpc_request(tokend.addr, REFLECTION, false), false)
            .unwrap();
        let mut data = prefix(0, DECLARED as u32);
        data.resize(DECLARED, 0x0a);
        body.send_data(Bytes::from(data), false).unwrap();
        big.push(tokio::spawn(grpc_status(answer)));
        held.push(body);
    }
    // Let the 32 MiB arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (token, took) = get_token(tokend.addr).await;
    eprintln!(
        "after 8 x 4 MiB reflection streams: GetToken {:?} in {took:?}",
        token.as_ref().map(|s| (s.code(), reason(s)))
    );
    let status = token.unwrap_or_else(|e| panic!("GetToken failed: {e}"));
    assert_eq!(
        status.code(),
        Code::NotFound,
        "GetToken starved by unauthenticated streams: {status:?}"
    );
    for answer in big {
        let status = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("a declared 4 MiB message is refused at once")
            .unwrap()
            .expect("a gRPC status");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), ["request"]);
        assert!(
            status.message().contains("the limit is 4096 bytes"),
            "{}",
            status.message()
        );
    }

    // Health calls that fill the unauthenticated budget: 80 x 4 KB.
    let mut filler = h2_connect(tokend.addr).await.unwrap();
    let mut small = Vec::new();
    for _ in 0..80 {
        filler.send = filler.send.ready().await.unwrap();
        let (answer, mut body) = filler
            .send
            .send_request(grpc_request(tokend.addr, HEALTH_CHECK, false), false)
            .unwrap();
        let mut data = prefix(0, 4000);
        data.resize(5 + 3990, 0x0a);
        body.send_data(Bytes::from(data), false).unwrap();
        small.push(tokio::spawn(grpc_status(answer)));
        held.push(body);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut over_budget = 0;
    for answer in small {
        // Those within the budget wait for their body (30 s): only the
        // refused ones have answered.
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(200), answer).await {
            let status = answer.unwrap().expect("a gRPC status");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(reason(&status), "SERVER_OVERLOADED");
            assert_eq!(
                crate::harness::metadata(&status, "limit").as_deref(),
                Some("max_unauthenticated_buffered_bytes")
            );
            over_budget += 1;
        }
    }
    eprintln!("{over_budget} of 80 health calls over the 256 KiB unauthenticated budget");
    assert!(over_budget > 0, "80 x 4 KB cannot fit in 256 KiB");
    let (token, took) = get_token(tokend.addr).await;
    eprintln!(
        "with the unauthenticated budget full: GetToken {:?} in {took:?}",
        token.as_ref().map(|s| (s.code(), reason(s)))
    );
    assert_eq!(token.unwrap().code(), Code::NotFound);
    // A whole health check is not held back by the full budget.
    let health = health_check(tokend.addr).await;
    eprintln!("health check with the unauthenticated budget full: {health:?}");
    health.expect("a complete health check is served");
    drop(held);
}

/// Issue 24, item 11. Invariant: every framing fault (the compressed flag
/// with no grpc-encoding, a flag byte other than 0 or 1, a body cut inside
/// the 5-byte prefix, a body cut inside its message) is INVALID_ARGUMENT
/// with reason MALFORMED_REQUEST and field `request`, for tokend's
/// services and the unauthenticated ones alike (reflection, a streaming
/// service, answers it in its trailers), and is audited; the server keeps
/// serving. Before: INTERNAL, no ErrorInfo, no audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_faults_are_invalid_argument_and_audited() {
    let tokend = Tokend::start("").await;
    let message = [0x0a, 0x06, b'n', b'o', b'b', b'o', b'd', b'y'];
    let with = |mut p: Vec<u8>, body: &[u8]| {
        p.extend_from_slice(body);
        p
    };
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "compressed flag, no grpc-encoding",
            with(prefix(1, 8), &message),
        ),
        ("flag byte 2", with(prefix(2, 8), &message)),
        ("3-byte prefix", vec![0, 0, 0]),
        ("message cut short", with(prefix(0, 8), &message[..4])),
    ];
    for path in [GET_TOKEN, HEALTH_CHECK, REFLECTION] {
        for (what, bytes) in &cases {
            let mut conn = h2_connect(tokend.addr).await.unwrap();
            let (answer, mut body) = conn
                .send
                .send_request(grpc_request(tokend.addr, path, true), false)
                .unwrap();
            body.send_data(Bytes::from(bytes.clone()), true).unwrap();
            let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(answer))
                .await
                .unwrap_or_else(|_| panic!("{path} {what}: no answer"))
                .expect("a gRPC status");
            eprintln!(
                "{path} {what}: {:?} {} {:?}",
                status.code(),
                reason(&status),
                status.message()
            );
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{path} {what}: {status:?}"
            );
            assert_eq!(reason(&status), "MALFORMED_REQUEST", "{path} {what}");
            assert_eq!(bad_fields(&status), ["request"], "{path} {what}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let audited = |audit: &str, rpc: &str| {
        audit.lines().any(|l| {
            l.contains(&format!("\"rpc\":\"{rpc}\""))
                && l.contains("\"outcome\":\"invalid_argument\"")
                && l.contains("\"reason\":\"MALFORMED_REQUEST\"")
        })
    };
    loop {
        let audit = tokend.audit();
        if audited(&audit, "GetToken") && audited(&audit, "-") {
            eprintln!(
                "audit lines:\n{}",
                audit
                    .lines()
                    .filter(|l| l.contains("MALFORMED_REQUEST"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "framing faults are audited: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_check(tokend.addr)
        .await
        .expect("still serving after framing faults");
}

/// Issue 24, items 3 and 4. Invariant: the new `[limits]` keys are range
/// checked by both `tokend check-config` and `tokend serve`, which name
/// the key and refuse the file; in-range values are accepted.
#[tokio::test]
async fn the_new_limits_are_refused_out_of_range_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokend.toml");
    let tokend = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .arg("--config")
            .arg(&file)
            .env_remove("TOKEND_LISTEN")
            .output()
            .unwrap()
    };
    for (key, bad) in [
        ("idle_timeout_secs", "0"),
        ("idle_timeout_secs", "86401"),
        ("max_connections_per_peer", "0"),
        ("max_unauthenticated_pending_requests", "0"),
        ("max_unauthenticated_buffered_bytes", "1024"),
        ("max_unauthenticated_message_bytes", "65537"),
    ] {
        std::fs::write(&file, format!("[limits]\n{key} = {bad}\n")).unwrap();
        let check = tokend(&["check-config"]);
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(2), "{key} = {bad}: {err}");
        assert!(
            err.contains(&format!("limits.{key}")),
            "{key} = {bad}: {err}"
        );
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = serve.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = serve.kill();
                let _ = serve.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| !s.success()),
            "serve took {key} = {bad}: {err}"
        );
        assert!(
            err.contains(&format!("limits.{key}")),
            "{key} = {bad}: {err}"
        );
    }
    std::fs::write(
        &file,
        "[limits]\nidle_timeout_secs = 60\nmax_connections_per_peer = 16\nmax_unauthenticated_pending_requests = 64\nmax_unauthenticated_buffered_bytes = 65536\nmax_unauthenticated_message_bytes = 2048\n",
    )
    .unwrap();
    let check = tokend(&["check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
