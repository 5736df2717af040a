//! Secret hygiene: the whole flow, logged at TRACE by every crate, never
//! prints an access token, refresh token, authorization code, PKCE verifier
//! or client secret.
//!
//! A test binary of its own (the one exception to tests/integration): it
//! installs a process-wide TRACE subscriber, which must see every thread
//! and must not slow down or interleave with the other tests.

#[allow(dead_code)]
#[path = "../integration/harness.rs"]
mod harness;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokend_proto::v1 as pb;
use tokend_sandbox::Fault;

use crate::harness::{TestServer, background_off, force, get, import_request};

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_the_whole_flow_hold_no_secret() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let capture = capture.clone();
            move || capture.clone()
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber in this binary");

    let mut options = background_off();
    options.engine.backoff_min = Duration::from_millis(50);
    options.engine.backoff_max = Duration::from_millis(100);
    options.engine.misconfigured_retry = Duration::from_millis(100);
    let server = TestServer::start_with(options).await;
    let mut secrets: Vec<String> = vec![server.sandbox.config().client_secret];
    let mut client = server.client().await;

    // Installs: import, and code exchange with PKCE.
    let (_, issued) = server.import("hygiene-1", "acct-h1", 0).await;
    secrets.extend([issued.access_token.clone(), issued.refresh_token.clone()]);
    let verifier = "hygiene-pkce-verifier-0123456789-abcdefghijklmnop".to_owned();
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let code = server
        .sandbox
        .issue_code("acct-h2", &["crm"], None, Some(&challenge));
    secrets.extend([code.clone(), verifier.clone()]);
    client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "hygiene-2".into(),
            account_id: String::new(),
            grant: Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code: code.clone(),
                    redirect_uri: String::new(),
                    code_verifier: verifier.clone(),
                },
            )),
            replace: false,
            params: Default::default(),
            force: false,
        })
        .await
        .expect("code install");

    // Reads, refreshes (rotating refresh tokens), watch, and failures.
    for id in ["hygiene-1", "hygiene-2"] {
        let t = client
            .get_token(get(id))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        secrets.push(t.access_token);
        let t = client
            .force_refresh(force(id))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        secrets.push(t.access_token.clone());
        // A 401 burst naming the token itself.
        client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.into(),
                rejected: Some(pb::force_refresh_request::Rejected::RejectedAccessToken(
                    t.access_token,
                )),
            })
            .await
            .unwrap();
    }
    let mut watch = client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "hygiene-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    for fault in [
        Fault::Status {
            status: 503,
            count: 1,
        },
        Fault::RateLimited {
            retry_after_secs: 0,
            count: 1,
        },
        Fault::MalformedBody { count: 1 },
        Fault::InvalidClient { count: 1 },
    ] {
        server.sandbox.inject(fault);
        let _ = client.force_refresh(force("hygiene-1")).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A rejected code, an invalid install echoing a token, a revocation.
    let _ = client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "hygiene-3".into(),
            account_id: String::new(),
            grant: Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code: code.clone(),
                    redirect_uri: String::new(),
                    code_verifier: String::new(),
                },
            )),
            replace: false,
            params: Default::default(),
            force: false,
        })
        .await
        .unwrap_err();
    let mut bad = import_request("bad id!", "acct", &issued, 10);
    bad.connection_id = "bad id!".into();
    let _ = client.install(bad).await.unwrap_err();
    server.sandbox.revoke_account("acct-h2");
    let _ = client.force_refresh(force("hygiene-2")).await.unwrap_err();
    drop(watch);
    drop(client);
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("token refreshed"),
        "the capture saw tokend's own lines"
    );
    // The spans: one per call, with its connection and code; one per
    // refresh under the call that started it, with provider and attempt.
    assert!(
        log.lines().any(
            |l| l.contains("rpc{path=/tokend.v1.TokenService/ForceRefresh")
                && l.contains("connection_id=hygiene-")
        ),
        "an RPC span with its connection id"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(":refresh{connection_id=hygiene-")
                && l.contains("provider=sandbox")
                && l.contains("attempt=1")),
        "a refresh span, inside the RPC span, with provider and attempt"
    );
    assert!(
        log.contains("provider_call{provider=sandbox}"),
        "the provider call's span"
    );
    assert!(
        log.lines().count() > 100,
        "TRACE output was captured: {} lines",
        log.lines().count()
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret appears in the trace log"
        );
    }
    // Sandbox secrets are recognisable by prefix, so even the rotated refresh
    // tokens this test never saw are covered.
    for prefix in ["sbx_at_", "sbx_rt_", "sbx_code_"] {
        assert!(
            !log.contains(prefix),
            "a {prefix}… token appears in the trace log"
        );
    }
}
