//! The background refresher's sustained rate: 4,000 connections all due at
//! once, against a sandbox that takes 50 ms per token request, with
//! `refresh_concurrency` 8 (the default) and 64. A million tokens of 30
//! minutes need about 560 refreshes a second.
//!
//! Each connection holds a real sandbox grant, written straight into the
//! store before the server starts; the rate is grants refreshed over the
//! time from start to the last one.
//!
//! Run: `cargo bench --bench refresher`

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use tokend_core::{Clock, Status, Timestamp};
use tokend_sandbox::{Fault, Sandbox, SandboxConfig};
use tokend_server::limits::Limits;
use tokend_store::{SledStore, Store, crypto::Keyring};

const CONNECTIONS: usize = 4_000;
const PROVIDER_LATENCY: Duration = Duration::from_millis(50);

fn main() {
    support::bench_main(run());
}

/// Refreshes per second with `concurrency` background refreshes at once.
async fn rate(concurrency: usize) -> f64 {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open(&dir.path().join("db"), Keyring::ephemeral()).expect("store");
    // Two minutes left: inside the refresh buffer, so every one is due.
    let expires_at = Timestamp::from_unix_millis(Clock::system().now().unix_millis() + 120_000);
    for i in 0..CONNECTIONS {
        let id = format!("r{i:05}");
        let issued = sandbox.issue_tokens(&id, &["crm"]);
        let mut c = tokend_store::conformance::record(&id, 1);
        c.account_id = id.clone();
        c.tokens.access_token = SecretString::from(issued.access_token);
        c.tokens.refresh_token = Some(SecretString::from(issued.refresh_token));
        c.tokens.expires_at = expires_at;
        c.status = Status::Active;
        c.reconnect_cause = None;
        c.last_error = None;
        c.previous_refresh_token = None;
        store.put(&c, None, None).await.expect("seed");
    }
    sandbox.inject(Fault::Latency {
        delay: PROVIDER_LATENCY,
        count: u32::MAX,
    });
    let started = Instant::now();
    let (_channel, _, _stop, _server) = support::start_configured(
        &sandbox,
        Arc::new(store),
        dir.path(),
        Limits::default(),
        None,
        |c| {
            c.engine.background_refresh = true;
            c.engine.background_concurrency = concurrency;
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while sandbox.stats().refresh_grants_ok < CONNECTIONS as u64 {
        assert!(Instant::now() < deadline, "the refresher stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    CONNECTIONS as f64 / started.elapsed().as_secs_f64()
}

async fn run() {
    println!(
        "refresher: {CONNECTIONS} connections due at once, provider latency {} ms",
        PROVIDER_LATENCY.as_millis()
    );
    println!("| refresh_concurrency | refreshes/s | bound: concurrency / latency |");
    println!("|---|---|---|");
    for concurrency in [8, 64] {
        let r = rate(concurrency).await;
        println!(
            "| {concurrency} | {r:.0} | {:.0} |",
            concurrency as f64 / PROVIDER_LATENCY.as_secs_f64()
        );
    }
}
