//! One local client at N GetToken calls in flight over one HTTP/2
//! connection, counting what it got back: the load of issue 26, item 10.
//!
//! ```sh
//! cargo run --release -- serve --sandbox &
//! cargo run --release --example open_load   # LOAD_IN_FLIGHT=64 LOAD_SECONDS=4
//! ```
//!
//! Prints calls/s, `RESOURCE_EXHAUSTED` by reason, and every other error
//! by code and message (transport errors are `UNAVAILABLE`/`UNKNOWN`/
//! `INTERNAL` with the h2 or hyper message).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = env("TOKEND_ENDPOINT", "http://127.0.0.1:50051");
    let sandbox = env("TOKEND_SANDBOX", "http://127.0.0.1:50052");
    let in_flight: usize = env("LOAD_IN_FLIGHT", "64").parse()?;
    let seconds: u64 = env("LOAD_SECONDS", "4").parse()?;

    let issued = reqwest::Client::new()
        .post(format!("{sandbox}/sandbox/tokens"))
        .header("content-type", "application/json")
        .body(r#"{"account_id":"open-load","scopes":["crm"]}"#)
        .send()
        .await?
        .bytes()
        .await?;
    let issued: serde_json::Value = serde_json::from_slice(&issued)?;
    let field = |k: &str| issued[k].as_str().unwrap_or_default().to_owned();
    // One channel: one HTTP/2 connection, one open-mode peer.
    let channel = Channel::from_shared(endpoint)?.connect().await?;
    let mut client = TokenServiceClient::new(channel);
    client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "open-load".into(),
            account_id: "open-load".into(),
            grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                access_token: field("access_token"),
                refresh_token: field("refresh_token"),
                expires_in_seconds: issued["expires_in"].as_i64().unwrap_or(3600),
                scopes: vec!["crm".into()],
                token_type: String::new(),
            })),
            replace: true,
            params: Default::default(),
            force: false,
        })
        .await?;

    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = client.clone();
        let outcomes = Arc::clone(&outcomes);
        workers.push(tokio::spawn(async move {
            let mut local: BTreeMap<String, u64> = BTreeMap::new();
            while tokio::time::Instant::now() < deadline {
                let answer = client
                    .get_token(pb::GetTokenRequest {
                        connection_id: "open-load".into(),
                        min_ttl_seconds: 0,
                    })
                    .await;
                let key = match answer {
                    Ok(_) => "ok".to_owned(),
                    Err(s) => match s.get_details_error_info() {
                        Some(info) => format!("{:?} {}", s.code(), info.reason),
                        None => format!("{:?} {}", s.code(), s.message()),
                    },
                };
                *local.entry(key).or_default() += 1;
            }
            let mut all = outcomes.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in local {
                *all.entry(k).or_default() += n;
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    let ok = outcomes.get("ok").copied().unwrap_or(0);
    println!(
        "in_flight={in_flight} seconds={elapsed:.2} ok={ok} ok_per_s={:.0}",
        ok as f64 / elapsed
    );
    for (k, n) in outcomes.iter().filter(|(k, _)| *k != "ok") {
        println!("  {n:>8}  {k}");
    }
    Ok(())
}
