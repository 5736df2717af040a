//! Shutdown never cuts a refresh at the provider short (issue 25, item 2):
//! a real `tokend serve` gets SIGTERM while the sandbox takes 12 s to
//! answer its refresh, longer than the old 10 s grace.

use std::time::{Duration, Instant};

use tokend_sandbox::Fault;
use tokend_store::{SledStore, Store, crypto::KeyFile};

use crate::{
    harness::{eventually, force},
    process::Served,
};

/// Invariant: a grant the provider is answering when SIGTERM arrives is
/// persisted before the process exits: the refresh's answer holds the only
/// live refresh token (strict rotation), and the grace covers two provider
/// calls and the write. (Before: the 10 s grace ran out, the process
/// exited with the call still out, and the provider's new grant was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_12_s_provider_call_persists_the_grant() {
    let keys = KeyFile::generate();
    let mut served =
        Served::start(&[("TOKEND_KEYS", serde_json::to_string(&keys).expect("keys"))]).await;
    let id = "sigterm-slow";
    let issued = served.install(id, 3600).await;
    served.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(12),
        count: 1,
    });
    let asked = served.sandbox.stats().token_requests;
    // The caller gives up after a second; the refresh goes on in tokend.
    let mut request = tonic::Request::new(force(id));
    request.set_timeout(Duration::from_secs(1));
    let _ = served.client().force_refresh(request).await;
    assert!(
        eventually(Duration::from_secs(10), || served
            .sandbox
            .stats()
            .token_requests
            > asked)
        .await,
        "the refresh reached the sandbox"
    );
    let sigterm = Instant::now();
    served.signal(libc::SIGTERM);
    let status = served
        .exited_within(Duration::from_secs(60))
        .await
        .expect("tokend exits after SIGTERM");
    let took = sigterm.elapsed();
    println!("exited {took:?} after SIGTERM, mid 12 s provider call: {status}");
    assert!(status.success(), "{status}\n{}", served.log_text());
    assert!(
        took >= Duration::from_secs(9),
        "it waited for the provider's answer: {took:?}"
    );

    let store = SledStore::open(&served.data_dir(), keys.keyring().expect("keys"))
        .expect("the data dir opens");
    let record = store
        .get(&tokend_core::ConnectionId::new(id).expect("id"))
        .await
        .expect("read")
        .expect("stored");
    use secrecy::ExposeSecret;
    let access = record.tokens.access_token.expose_secret().to_owned();
    assert_ne!(
        access,
        issued.access_token,
        "the refreshed grant was persisted before exit\n{}",
        served.log_text()
    );
    assert!(served.sandbox.access_token_is_live(&access));
    // And its refresh token is the one the provider takes now.
    let refresh = record.tokens.refresh_token.expect("refresh token");
    let cfg = served.sandbox.config();
    let answer = reqwest::Client::new()
        .post(served.sandbox.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose_secret()),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("sandbox answers");
    assert!(
        answer.status().is_success(),
        "the stored refresh token is live: {}",
        answer.status()
    );
}
