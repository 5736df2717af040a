//! Webhooks against real HTTP receivers: an independent Python receiver
//! (the `standardwebhooks` package verifies every signature) that is down
//! for 30 s, across a tokend restart; and a receiver that fails, whose
//! retries come with growing gaps and honour Retry-After.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures::future::join_all;
use tokend_proto::v1 as pb;
use tokend_server::{
    feed::EventFilter,
    webhooks::{Secret, SenderSettings, WebhookConfig, check_url},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Options, TestServer, force};

fn secret_text() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"tokend-webhook-test-secret-32-by")
    )
}

pub(crate) fn hook(
    name: &str,
    url: &str,
    failing_after: Duration,
    retry_max: Duration,
) -> Arc<WebhookConfig> {
    Arc::new(WebhookConfig {
        name: name.into(),
        url: check_url(url).expect("url"),
        secret: Secret::parse(&secret_text()).expect("secret"),
        filter: EventFilter::default(),
        sender: SenderSettings::default(),
        failing_after,
        retry_initial: Duration::from_millis(100),
        retry_max,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the Python receiver; fails loudly when its tools are missing.
fn python_receiver(port: u16, out: &Path) -> KillOnDrop {
    let check = Command::new("python3")
        .args(["-c", "import standardwebhooks, google.protobuf"])
        .status()
        .expect("python3 must be installed (CI installs it)");
    assert!(
        check.success(),
        "the webhook receiver needs PyPI's standardwebhooks and protobuf: pip install standardwebhooks==1.1.0 protobuf (.ci/run does)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks/receiver.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(secret_text())
        .arg(out)
        .stdout(Stdio::null())
        .spawn()
        .expect("receiver starts");
    KillOnDrop(child)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn webhook_status(server: &TestServer) -> pb::WebhookStatus {
    let mut client = server.client().await;
    client
        .list_webhooks(pb::ListWebhooksRequest {})
        .await
        .expect("ListWebhooks")
        .into_inner()
        .webhooks
        .remove(0)
}

fn deliveries(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The invariant: every event in the log reaches an endpoint that was down
/// for 30 s (while tokend restarted), each with a signature an independent
/// implementation accepts, in sequence order; nothing is dropped.
#[tokio::test]
async fn a_receiver_down_for_30_s_gets_every_event_with_a_valid_signature() {
    let port = free_port();
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let down_since = Instant::now();
    let mut server = TestServer::start_with(Options {
        webhooks: vec![hook(
            "receiver",
            &format!("http://127.0.0.1:{port}/hook"),
            Duration::from_secs(10),
            Duration::from_secs(2),
        )],
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = (0..30).map(|i| format!("hooked-{i:02}")).collect();
    join_all(ids[..20].iter().map(|id| server.import(id, id, 1800))).await;
    server.restart().await;
    join_all(ids[20..].iter().map(|id| server.import(id, id, 1800))).await;
    let mut client = server.client().await;
    for id in &ids[..10] {
        server.sandbox.revoke_account(id);
        client.force_refresh(force(id)).await.expect_err("revoked");
    }
    let last = server
        .rust_client(None)
        .await
        .watch_all(tokend_client::EventFilter::default())
        .from_oldest()
        .until_caught_up();
    let expected = {
        use futures::StreamExt as _;
        last.map(|e| e.expect("event").sequence)
            .collect::<BTreeSet<u64>>()
            .await
    };
    assert_eq!(expected.len(), 40, "30 installs and 10 reconnect_required");

    // Down: retried, and marked failing after failing_after (10 s).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    let status = webhook_status(&server).await;
    assert_eq!(status.state, pb::WebhookState::Failing as i32, "{status:?}");
    assert!(status.consecutive_failures > 1, "{status:?}");
    assert!(status.failing_since.is_some() && !status.last_error.is_empty());
    assert_eq!(status.behind, 40, "nothing delivered, nothing dropped");
    assert!(!status.url.contains('?'));

    let _receiver = python_receiver(port, out.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<u64> = deliveries(out.path())
            .iter()
            .filter_map(|d| d["sequence"].as_u64())
            .collect();
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {} of 40 within 30 s of the receiver coming up",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = deliveries(out.path());
    let bad: Vec<_> = all.iter().filter(|d| d.get("bad").is_some()).collect();
    assert!(bad.is_empty(), "every signature verifies: {bad:?}");
    let order: Vec<u64> = all.iter().filter_map(|d| d["sequence"].as_u64()).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {order:?}"
    );
    assert!(
        all.iter().all(|d| d["id"] == d["cursor"]),
        "webhook-id is the event's cursor"
    );
    let status = webhook_status(&server).await;
    assert_eq!(status.state, pb::WebhookState::Healthy as i32, "{status:?}");
    assert_eq!((status.behind, status.delivered_since_start), (0, 40));
    assert!(status.failing_since.is_none());
}

/// One request as the test receiver saw it.
pub(crate) struct Attempt {
    at: Instant,
    pub(crate) id: String,
    timestamp: String,
}

/// A receiver that answers the n-th request with `answers[n]` (then 204).
pub(crate) async fn scripted_receiver(
    answers: Vec<&'static str>,
) -> (u16, Arc<Mutex<Vec<Attempt>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            while buf.len() < head_end + length {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let n = {
                let mut seen = log.lock().unwrap();
                seen.push(Attempt {
                    at: Instant::now(),
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                });
                seen.len() - 1
            };
            let answer = answers.get(n).copied().unwrap_or("204 No Content");
            let extra = if answer.starts_with("503") {
                "retry-after: 2\r\n"
            } else {
                ""
            };
            let response = format!(
                "HTTP/1.1 {answer}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (port, seen)
}

/// A receiver that keeps answering 500 gets the same delivery again with
/// growing gaps; a 503 with Retry-After: 2 is not retried sooner.
#[tokio::test]
async fn failures_are_retried_with_growing_gaps_honouring_retry_after() {
    let answers = vec![
        "500 Internal Server Error",
        "500 Internal Server Error",
        "500 Internal Server Error",
        "500 Internal Server Error",
        "500 Internal Server Error",
        "503 Service Unavailable",
    ];
    let (port, seen) = scripted_receiver(answers).await;
    let server = TestServer::start_with(Options {
        webhooks: vec![hook(
            "flaky",
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(3600),
            Duration::from_secs(10),
        )],
        ..Options::default()
    })
    .await;
    server.import("one", "one", 1800).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 7 {
        assert!(Instant::now() < deadline, "7 attempts within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts: Vec<Attempt> = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        attempts.iter().all(|a| a.id == attempts[0].id),
        "one webhook-id"
    );
    assert!(attempts.iter().all(|a| !a.timestamp.is_empty()));
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    for w in gaps[..5].windows(2) {
        assert!(w[1] >= w[0].mul_f64(0.9), "gaps grow after 500s: {gaps:?}");
    }
    assert!(gaps[4] >= gaps[0] * 4, "{gaps:?}");
    assert!(
        gaps[5] >= Duration::from_millis(1900),
        "Retry-After honoured: {gaps:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = webhook_status(&server).await;
        if status.delivered_since_start == 1 {
            assert_eq!(status.state, pb::WebhookState::Healthy as i32);
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
