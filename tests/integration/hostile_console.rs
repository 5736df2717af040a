//! The console login: rate limit, audit, Host check (issue 24, item 9).
//! Real HTTP against the admin listener of a real server: a flood of wrong
//! keys, and pages asked for under another host name (DNS rebinding).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokend_server::auth::{Grant, IdentityConfig, Permission, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Options, TestServer};

const ADMIN_KEY: &str = "ops-key-0123456789abcdef0123456789";
/// The login bounds (`console/gate.rs`): a burst of 10 failures per
/// address, one more every 6 s; 30 over all addresses.
const PEER_BURST: usize = 10;
const PEER_REFILL: Duration = Duration::from_secs(6);

fn admin_identity() -> IdentityConfig {
    IdentityConfig {
        name: "ops".into(),
        api_key_sha256: Some(sha256_hex(ADMIN_KEY.as_bytes())),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: vec![Permission::Admin],
            connections: vec!["*".into()],
        }],
        requests_per_second: 1000,
        max_watch_streams: 2,
    }
}

/// The audit log's console lines, parsed.
fn console_lines(server: &TestServer) -> Vec<serde_json::Value> {
    std::fs::read_to_string(server.audit_log_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|l| l["rpc"] == "console")
        .collect()
}

/// How many refusals the lines with `reason` stand for: each line is one,
/// plus its `repeated` count.
fn refusals(lines: &[serde_json::Value], reason: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l["reason"] == reason)
        .map(|l| {
            if l["repeated"].is_u64() {
                l["repeated"].as_u64().unwrap_or(0)
            } else {
                1
            }
        })
        .sum()
}

/// Guards: wrong console keys are checked at most a small burst per
/// address (plus its slow refill); every other attempt is answered 429 with
/// Retry-After without being checked; every failure and refusal is audited,
/// in a bounded number of lines that count them all; and an admin on
/// another address is not locked out by the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_console_keys_is_limited_and_audited_in_few_lines() {
    let mut server = TestServer::start_with(Options {
        admin: true,
        identities: vec![admin_identity()],
        client_key: Some(ADMIN_KEY.into()),
        ..Options::default()
    })
    .await;
    let url = format!("http://{}/", server.admin_addr.expect("admin"));
    let http = reqwest::Client::new();
    const ATTEMPTS: usize = 5_000;
    let started = Instant::now();
    let (mut checked, mut limited) = (0usize, 0usize);
    let mut retry_after = None;
    // Eight at a time, as a scripted guesser would.
    for batch in (0..ATTEMPTS).collect::<Vec<_>>().chunks(8) {
        let answers = futures::future::join_all(batch.iter().map(|i| {
            http.get(&url)
                .basic_auth("admin", Some(format!("guess-{i:05}")))
                .send()
        }))
        .await;
        for answer in answers {
            let answer = answer.expect("the console answers");
            match answer.status().as_u16() {
                401 => checked += 1,
                429 => {
                    limited += 1;
                    retry_after = answer
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let allowed = PEER_BURST + (elapsed.as_secs_f64() / PEER_REFILL.as_secs_f64()).ceil() as usize;
    eprintln!(
        "{ATTEMPTS} wrong keys in {elapsed:?}: {checked} checked (401), {limited} refused (429), Retry-After {retry_after:?}"
    );
    assert!(
        checked <= allowed,
        "{checked} wrong keys were checked in {elapsed:?}; at most {allowed} may be"
    );
    assert_eq!(checked + limited, ATTEMPTS);
    let retry_after = retry_after.expect("429 says when to come back");
    assert!(
        (1..=PEER_REFILL.as_secs()).contains(&retry_after),
        "{retry_after}"
    );

    // The right key from the flooding address waits too: it is not checked.
    let same = http
        .get(&url)
        .basic_auth("admin", Some(ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 429);
    // An admin on another address gets in.
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let admin = elsewhere
        .get(&url)
        .basic_auth("admin", Some(ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200, "the flood locks no one else out");

    // Stopping the server writes the interval's counts.
    server.stop().await;
    let lines = console_lines(&server);
    let failed = refusals(&lines, "CONSOLE_LOGIN_FAILED");
    let refused = refusals(&lines, "CONSOLE_LOGIN_RATE_LIMITED");
    eprintln!(
        "audit.log: {} console lines stand for {failed} failed and {refused} rate-limited logins",
        lines.len()
    );
    assert_eq!(
        failed, checked as u64,
        "every failure is audited: {lines:?}"
    );
    assert_eq!(
        refused,
        limited as u64 + 1,
        "every refusal is audited: {lines:?}"
    );
    // A first line and a count per kind per 10 s interval.
    let intervals = elapsed.as_secs() / 10 + 2;
    assert!(
        lines.len() as u64 <= 4 * intervals,
        "{} lines for a flood: {lines:?}",
        lines.len()
    );
    assert!(lines.iter().all(|l| {
        l["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1"))
    }));
}

/// One HTTP/1.1 GET of `target` with exactly this `Host`; the status code.
async fn http1_status(addr: SocketAddr, target: &str, host: Option<&str>) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head}"))
}

/// Guards: the open console (no identities) answers only requests that
/// name it as a loopback host with its port (in `Host`, and in an
/// absolute-form target too): a page on another site whose name was
/// rebound to 127.0.0.1 sends its own name and is refused (421), and the
/// refusal is audited.
#[tokio::test]
async fn the_open_console_refuses_other_host_names() {
    let mut server = TestServer::start_with(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let addr = server.admin_addr.expect("admin");
    let port = addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        assert_eq!(http1_status(addr, "/", Some(&host)).await, 200, "{host}");
    }
    for host in [
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        assert_eq!(http1_status(addr, "/", Some(&host)).await, 421, "{host}");
    }
    assert_ne!(http1_status(addr, "/", None).await, 200, "no Host at all");
    let local = format!("127.0.0.1:{port}");
    assert_eq!(
        http1_status(addr, &format!("http://{local}/"), Some(&local)).await,
        200
    );
    assert_eq!(
        http1_status(
            addr,
            &format!("http://attacker.example:{port}/connections/x"),
            Some(&local)
        )
        .await,
        421,
        "an absolute-form target naming another host"
    );
    // The metrics stay reachable under any name: they carry no id.
    let metrics = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    server.stop().await;
    let lines = console_lines(&server);
    assert_eq!(
        refusals(&lines, "CONSOLE_HOST_REFUSED"),
        6,
        "each refusal is audited: {lines:?}"
    );
}
