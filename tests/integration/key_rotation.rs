//! An online key rotation on a real `tokend serve`: `tokend keys rotate`
//! while it runs, its progress on `/metrics`, every token still readable,
//! and the old key retired from the server's usage report.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tokend_proto::v1 as pb;

use crate::process::Served;

/// The value of the one sample `name` with `labels`, if exported.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().copied()
}

async fn scrape(served: &Served) -> Scrape {
    let body = reqwest::get(format!("http://{}/metrics", served.admin))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition")
}

fn tokend(args: &[&str], served: &Served) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .arg("--data-dir")
        .arg(served.data_dir())
        .env_remove("TOKEND_KEYS")
        .env_remove("TOKEND_KEY_FILE")
        .output()
        .expect("tokend runs")
}

/// Issue 14 (key rotation progress). Invariants: a rotation applied while
/// the server runs re-seals every record with the new key and loses none
/// (each connection still serves the token it was installed with); the
/// metrics show the active key, the records left on old keys falling to 0
/// and how many were re-sealed; the old key can then be retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_rotation_shows_its_progress_and_loses_nothing() {
    let served = Served::start(&[]).await;
    let before = scrape(&served).await;
    assert_eq!(
        sample(&before, "tokend_encryption_active_key", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&before, "tokend_encryption_records_on_old_keys", &[]),
        Some(0.0)
    );
    let mut installed = Vec::new();
    for i in 0..3 {
        let id = format!("rotated-{i}");
        let issued = served.install(&id, 3600).await;
        installed.push((id, issued.access_token));
    }

    let rotated = tokend(&["keys", "rotate"], &served);
    assert!(
        rotated.status.success(),
        "keys rotate: {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    // The server polls its key file every 5 s; the pass follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(&served).await;
        let figures = (
            sample(&s, "tokend_encryption_active_key", &[]),
            sample(&s, "tokend_encryption_records_on_old_keys", &[]),
            sample(&s, "tokend_encryption_reencrypted_records_total", &[]),
            sample(&s, "tokend_encryption_sealed_records", &[("key_id", "2")]),
            sample(&s, "tokend_encryption_sealed_records", &[("key_id", "1")]),
        );
        if figures == (Some(2.0), Some(0.0), Some(3.0), Some(3.0), Some(0.0)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation progress (active, on old, re-sealed, on 2, on 1): {figures:?}\n{}",
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut client = served.client();
    for (id, access_token) in &installed {
        let token = client
            .get_token(pb::GetTokenRequest {
                connection_id: id.clone(),
                min_ttl_seconds: 0,
            })
            .await
            .expect("get token")
            .into_inner()
            .token
            .expect("token");
        assert_eq!(&token.access_token, access_token, "{id} kept its token");
    }

    let retired = tokend(&["keys", "retire", "1"], &served);
    assert!(
        retired.status.success(),
        "keys retire 1: {}",
        String::from_utf8_lossy(&retired.stderr)
    );
}
