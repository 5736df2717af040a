//! A million connections on one machine: seed N sealed records straight
//! into a sled data dir, then run `tokend serve` on it as its own process
//! and measure start-up to the first served token, its resident memory
//! after start and after touching 10% of the connections,
//! cached GetToken p99, and the first page of ListConnections filtered by
//! status and by provider, each against a server with 1,000 connections in
//! the same run. One connection in 100 is RECONNECT_REQUIRED, and another
//! one in 100 belongs to a second provider.
//!
//! Run: `cargo bench --bench million` (`MILLION_N=100000` for a shorter run).
//! The background refresher is off (as in every bench here): every seeded
//! token is valid for 30 days, so it would have nothing to do.

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use tokend_core::{Clock, Connection, ProviderName, Status, Timestamp};
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_store::{SledStore, crypto::KeyFile};
use tonic::transport::Channel;

const SEED_TASKS: usize = 64;
const P99_CALLS: usize = 5_000;

fn main() {
    support::bench_main(run());
}

fn n() -> usize {
    std::env::var("MILLION_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A process's resident set, in MiB, from its `/proc/PID/status`.
fn rss_of(path: &str) -> f64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn connection(i: usize) -> Connection {
    let mut c = tokend_store::conformance::record(&format!("m{i:07}"), 1);
    c.tokens.expires_at =
        Timestamp::from_unix_millis(Clock::system().now().unix_millis() + 30 * 86_400_000);
    c.status = Status::Active;
    c.reconnect_cause = None;
    c.last_error = None;
    c.previous_refresh_token = None;
    if i % 100 == 3 {
        c.status = Status::ReconnectRequired;
    }
    if i % 100 == 5 {
        c.provider = ProviderName::new("other").expect("provider");
    }
    c
}

/// Writes `n` sealed records as a restore does (each checked, indexed and
/// written in its own transaction; one flush per chunk), sealing on
/// `SEED_TASKS` threads.
async fn seed(store: &Arc<SledStore>, keys: &KeyFile, n: usize) {
    const CHUNK: usize = 10_000;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let per_task = (end - start).div_ceil(SEED_TASKS);
        let sealers = (0..SEED_TASKS).map(|t| {
            let keyring = keys.keyring().expect("keys");
            tokio::task::spawn_blocking(move || {
                let from = start + t * per_task;
                (from..(from + per_task).min(end))
                    .map(|i| {
                        let c = connection(i);
                        (
                            c.id.to_string(),
                            tokend_store::backend::encode(&c, &keyring),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        });
        let mut sealed = Vec::with_capacity(end - start);
        for t in join_all(sealers).await {
            sealed.extend(t.expect("sealer"));
        }
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.import_sealed(&sealed))
            .await
            .expect("import task")
            .expect("import");
    }
}

/// The first page of ListConnections with `filter` applied, best of 5.
async fn first_page(channel: &Channel, filter: pb::ListConnectionsRequest) -> (Duration, usize) {
    let mut client = TokenServiceClient::new(channel.clone());
    let mut best = Duration::MAX;
    let mut len = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let page = client
            .list_connections(filter.clone())
            .await
            .expect("list")
            .into_inner();
        best = best.min(t.elapsed());
        len = page.connections.len();
    }
    (best, len)
}

fn by_status() -> pb::ListConnectionsRequest {
    pb::ListConnectionsRequest {
        page_size: 10,
        status: pb::ConnectionStatus::ReconnectRequired as i32,
        ..Default::default()
    }
}

fn by_provider() -> pb::ListConnectionsRequest {
    pb::ListConnectionsRequest {
        page_size: 10,
        provider: "other".into(),
        ..Default::default()
    }
}

/// A running `tokend serve`, killed when dropped.
struct Served {
    child: std::process::Child,
    channel: Channel,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Its resident set, in MiB.
    fn rss_mib(&self) -> f64 {
        rss_of(&format!("/proc/{}/status", self.child.id()))
    }
}

/// `tokend serve` on the data dir `dir` (its key file inside), with the
/// bench's sandbox as provider `sandbox`: the time from spawning it to its
/// first served token, and the process.
async fn start(sandbox: &Sandbox, dir: &std::path::Path, first: &str) -> (Duration, Served) {
    let config = dir.join("tokend.toml");
    // MILLION_CACHE: the server's cache_capacity (its default otherwise).
    let cache = std::env::var("MILLION_CACHE")
        .map(|n| format!("cache_capacity = {n}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "{cache}[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{}\"\n\
             client_id = \"{}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\n\
             [limits]\nopen_requests_per_second_per_peer = 10000000\n",
            sandbox.token_url(),
            sandbox.config().client_id,
        ),
    )
    .expect("config");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let started = Instant::now();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string(), "--admin-listen", "off"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SANDBOX_CLIENT_SECRET", sandbox.config().client_secret)
        .env_remove("TOKEND_KEYS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("tokend.log")).expect("log"));
    let child = command.spawn().expect("tokend serve starts");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = TokenServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = client
            .get_token(pb::GetTokenRequest {
                connection_id: first.into(),
                min_ttl_seconds: 0,
            })
            .await;
        if got.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tokend did not serve in 120 s: {}",
            std::fs::read_to_string(dir.join("tokend.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (started.elapsed(), Served { child, channel })
}

async fn p99(channel: &Channel, ids: &[String]) -> Duration {
    let mut client = TokenServiceClient::new(channel.clone());
    let mut lat = Vec::with_capacity(P99_CALLS);
    for i in 0..P99_CALLS {
        let t = Instant::now();
        client
            .get_token(pb::GetTokenRequest {
                connection_id: ids[i % ids.len()].clone(),
                min_ttl_seconds: 0,
            })
            .await
            .expect("get token");
        lat.push(t.elapsed());
    }
    lat.sort();
    lat[(lat.len() - 1) * 99 / 100]
}

async fn run() {
    let n = n();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    // MILLION_KEEP_DIR: seed the big data dir there once and reuse it (for
    // profiling start-up); a temporary dir otherwise.
    let kept = std::env::var_os("MILLION_KEEP_DIR").map(std::path::PathBuf::from);
    let big_tmp = tempfile::tempdir().expect("dir");
    let big = kept.clone().unwrap_or_else(|| big_tmp.path().to_owned());
    let key_path = |dir: &std::path::Path| {
        dir.join("data")
            .join(tokend_store::crypto::keys::KEY_FILE_NAME)
    };
    let reuse = kept.is_some() && key_path(&big).exists();
    let keys = if reuse {
        KeyFile::load(&key_path(&big)).expect("kept key file")
    } else {
        KeyFile::generate()
    };
    let small = tempfile::tempdir().expect("dir");
    let seeding = Instant::now();
    for (dir, count) in [(big.as_path(), n), (small.path(), 1_000)] {
        if reuse && dir == big.as_path() {
            continue;
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        keys.save(&key_path(dir)).expect("key file");
        let store = Arc::new(SledStore::open(&data, keys.keyring().expect("keys")).expect("store"));
        seed(&store, &keys, count).await;
    }
    println!(
        "million: {n} connections seeded in {:.1} s ({:.0} /s)",
        seeding.elapsed().as_secs_f64(),
        n as f64 / seeding.elapsed().as_secs_f64()
    );
    let (up, big_server) = start(&sandbox, &big, "m0000000").await;
    let channel = big_server.channel.clone();
    let rss_started = big_server.rss_mib();
    // Touch 10%: every tenth connection, 16 callers.
    let touched: Vec<String> = (0..n).step_by(10).map(|i| format!("m{i:07}")).collect();
    let chunks: Vec<Vec<String>> = touched
        .chunks(touched.len().div_ceil(16))
        .map(<[String]>::to_vec)
        .collect();
    let touching = Instant::now();
    join_all(chunks.into_iter().map(|ids| {
        let mut client = TokenServiceClient::new(channel.clone());
        async move {
            for id in ids {
                client
                    .get_token(pb::GetTokenRequest {
                        connection_id: id,
                        min_ttl_seconds: 0,
                    })
                    .await
                    .expect("get token");
            }
        }
    }))
    .await;
    let touch_secs = touching.elapsed().as_secs_f64();
    let rss_touched = big_server.rss_mib();
    let big_p99 = p99(&channel, &touched).await;
    let big_status = first_page(&channel, by_status()).await;
    let big_provider = first_page(&channel, by_provider()).await;
    let (small_up, small_server) = start(&sandbox, small.path(), "m0000000").await;
    let small_channel = small_server.channel.clone();
    let small_rss = small_server.rss_mib();
    let small_status = first_page(&small_channel, by_status()).await;
    let small_provider = first_page(&small_channel, by_provider()).await;
    // Every active connection of the sandbox provider (not 3 or 5 mod 100).
    let small_ids: Vec<String> = (0..1_000)
        .filter(|i| i % 100 != 3 && i % 100 != 5)
        .map(|i| format!("m{i:07}"))
        .collect();
    // Interleaved, best of three each: background work of either store
    // (sled's own flushes) lands on both.
    let mut small_p99 = p99(&small_channel, &small_ids).await;
    let mut big_p99 = big_p99;
    for _ in 0..2 {
        big_p99 = big_p99.min(p99(&channel, &touched).await);
        small_p99 = small_p99.min(p99(&small_channel, &small_ids).await);
    }

    println!("| figure | {n} connections | 1,000 connections | goal |");
    println!("|---|---|---|---|");
    println!(
        "| start-up to the first served token | {:.2} s | {:.3} s | ≤ 10 s |",
        up.as_secs_f64(),
        small_up.as_secs_f64()
    );
    println!("| tokend's RSS after start | {rss_started:.0} MiB | {small_rss:.0} MiB | ≤ 2 GiB |");
    println!(
        "| tokend's RSS after touching 10% ({} GetTokens in {touch_secs:.1} s) | {rss_touched:.0} MiB | | ≤ 2 GiB |",
        touched.len(),
    );
    println!(
        "| cached GetToken p99 (sequential, best of 3 passes) | {:.3} ms | {:.3} ms | ≤ 1.2x: {:.2}x |",
        big_p99.as_secs_f64() * 1000.0,
        small_p99.as_secs_f64() * 1000.0,
        big_p99.as_secs_f64() / small_p99.as_secs_f64()
    );
    for (what, big, small) in [
        ("status RECONNECT_REQUIRED", big_status, small_status),
        ("provider \"other\"", big_provider, small_provider),
    ] {
        println!(
            "| ListConnections by {what}, first page (best of 5) | {:.2} ms ({} rows) | {:.2} ms ({} rows) | index, not a scan: {:.2}x |",
            big.0.as_secs_f64() * 1000.0,
            big.1,
            small.0.as_secs_f64() * 1000.0,
            small.1,
            big.0.as_secs_f64() / small.0.as_secs_f64()
        );
    }
}
