//! A worker calling an upstream API through tokend's refresh-and-retry
//! middleware, across several token expiries.
//!
//! ```sh
//! cargo run --release -- serve --sandbox --sandbox-token-lifetime-secs 5 &
//! cargo run --example worker          # WORKER_SECONDS=30 by default
//! ```

use std::time::Duration;

use tokend_client::{Client, Install, middleware::TokendAuth};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = env("TOKEND_ENDPOINT", "http://127.0.0.1:50051");
    let sandbox = env("TOKEND_SANDBOX", "http://127.0.0.1:50052");
    let seconds: u64 = env("WORKER_SECONDS", "30").parse()?;

    // Onboarding, done once: the sandbox mints a grant, tokend takes it over.
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("{sandbox}/sandbox/tokens"))
        .header("content-type", "application/json")
        .body(r#"{"account_id":"worker-demo","scopes":["crm"]}"#)
        .send()
        .await?
        .bytes()
        .await?;
    let issued: serde_json::Value = serde_json::from_slice(&issued)?;
    let field = |k: &str| issued[k].as_str().unwrap_or_default().to_owned();
    let tokend = Client::builder(endpoint).connect().await?;
    tokend
        .install(
            Install::new("sandbox")
                .connection_id("worker-demo")
                .account_id("worker-demo")
                .access_token(field("access_token"))
                .refresh_token(field("refresh_token"))
                .expires_in(Duration::from_secs(
                    issued["expires_in"].as_u64().unwrap_or(0),
                ))
                .scopes(["crm"]),
        )
        .await?;

    // The worker: three lines of setup, then plain HTTP calls.
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokendAuth::new(tokend, "worker-demo"))
        .build();
    let (mut ok, mut failed) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        match api.get(format!("{sandbox}/api/me")).send().await {
            Ok(r) if r.status().is_success() => ok += 1,
            Ok(r) => {
                failed += 1;
                eprintln!("upstream answered {}", r.status());
            }
            Err(e) => {
                failed += 1;
                eprintln!("request failed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{ok} requests ok, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
