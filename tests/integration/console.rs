//! The web console in a real browser: headless Chromium (Debian's
//! `chromium`) loads it from a live tokend with seeded connections, and the
//! DOM must show the table, a filter, a connection's page, and no token.

use std::{path::Path, process::Command};

use tokend_sandbox::Fault;
use tokend_server::auth::{Grant, IdentityConfig, Permission, sha256_hex};

use crate::harness::{Options, TestServer, background_off, force};

/// The page as Chromium rendered it.
fn dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args(browser_flags(profile.path()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("Chromium must be installed: `sudo apt-get install -y chromium` (CI installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn browser_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_shows_connections_and_never_a_token() {
    let server = TestServer::start_with(Options {
        admin: true,
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    let mut secrets = Vec::new();
    for id in ["cons-ok", "cons-revoked", "cons-failing"] {
        let (_, issued) = server.import(id, &format!("acct-{id}"), 1800).await;
        secrets.push(issued.access_token);
        secrets.push(issued.refresh_token);
    }
    let rotated = client
        .force_refresh(force("cons-ok"))
        .await
        .expect("refresh")
        .into_inner()
        .token
        .expect("token")
        .access_token;
    secrets.push(rotated);
    server.sandbox.revoke_account("acct-cons-revoked");
    client
        .force_refresh(force("cons-revoked"))
        .await
        .expect_err("revoked");
    server.sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    client
        .force_refresh(force("cons-failing"))
        .await
        .expect_err("503");

    let base = format!("http://{}", server.admin_addr.expect("admin"));
    let index = dom(&format!("{base}/"));
    for id in ["cons-ok", "cons-revoked", "cons-failing"] {
        assert!(index.contains(id), "{id} in the table");
    }
    assert!(index.contains("id=\"connections\""), "the table");
    assert!(index.contains("id=\"providers\"") && index.contains("sandbox"));
    assert!(index.contains("id=\"chart\""), "the last hour's chart");
    assert!(index.contains("class=\"reconnect_required\""));

    let filtered = dom(&format!("{base}/?status=reconnect_required"));
    assert!(filtered.contains("cons-revoked"));
    assert!(!filtered.contains("cons-ok"), "the filter is applied");
    let searched = dom(&format!("{base}/?q=cons-f"));
    assert!(searched.contains("cons-failing"));
    assert!(!searched.contains("cons-revoked"), "the search is applied");

    let detail = dom(&format!("{base}/connections/cons-failing"));
    assert!(detail.contains("HTTP 503"), "the last error: {detail}");
    assert!(detail.contains("transient"), "its class");
    assert!(detail.contains("installed"), "its recent events");
    let revoked = dom(&format!("{base}/connections/cons-revoked"));
    assert!(revoked.contains("REVOKED"), "the reconnect cause");

    for page in [&index, &filtered, &searched, &detail, &revoked] {
        for secret in &secrets {
            assert!(!page.contains(secret.as_str()), "a token reached the DOM");
        }
    }

    // A screenshot for people, kept with the build.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let profile = tempfile::tempdir().expect("profile dir");
    let status = Command::new("chromium")
        .args(browser_flags(profile.path()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1000")
        .arg(format!("{base}/"))
        .output()
        .expect("chromium");
    assert!(status.status.success());
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1000);
}

/// Guards: with identities configured, the console asks for an admin
/// identity's API key; a key without admin permission is refused too.
#[tokio::test]
async fn the_console_needs_an_admin_key_when_identities_are_configured() {
    let identity = |name: &str, key: &str, permission| IdentityConfig {
        name: name.into(),
        api_key_sha256: Some(sha256_hex(key.as_bytes())),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: vec![permission],
            connections: vec!["*".into()],
        }],
        requests_per_second: 1000,
        max_watch_streams: 2,
    };
    let server = TestServer::start_with(Options {
        admin: true,
        identities: vec![
            identity("ops", "ops-key-0123456789abcdef", Permission::Admin),
            identity("svc", "svc-key-0123456789abcdef", Permission::Tokens),
        ],
        client_key: Some("ops-key-0123456789abcdef".into()),
        ..Options::default()
    })
    .await;
    let url = format!("http://{}/", server.admin_addr.expect("admin"));
    let http = reqwest::Client::new();
    let anonymous = http.get(&url).send().await.expect("answers");
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let service = http
        .get(&url)
        .basic_auth("svc", Some("svc-key-0123456789abcdef"))
        .send()
        .await
        .expect("answers");
    assert_eq!(service.status(), 401, "a tokens-only identity is refused");
    let ops = http
        .get(&url)
        .basic_auth("anyone", Some("ops-key-0123456789abcdef"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ops.status(), 200);
    // The metrics need no key: they carry no id and no secret.
    let metrics = http
        .get(format!(
            "http://{}/metrics",
            server.admin_addr.expect("admin")
        ))
        .send()
        .await
        .expect("answers");
    assert_eq!(metrics.status(), 200);
}
