//! Replicas whose machines' wall clocks are off, on one real PostgreSQL
//! (issue 25, item 11, `clock-step`): the database's clock is the fleet's,
//! so a replica 120 s ahead takes over no live lease and one 120 s behind
//! serves no token another replica stamped expired. Real servers over
//! gRPC, the sandbox provider over real HTTP.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokend_postgres::PgOptions;
use tokend_sandbox::Fault;
use tokend_server::EngineSettings;

use crate::{
    harness::{get, import_request},
    replicas::Replicas,
};

fn database(name: &str) -> PgOptions {
    PgOptions::new(SecretString::from(tokend_pgtest::cluster().database(name)))
}

fn on_demand() -> EngineSettings {
    EngineSettings {
        background_refresh: false,
        lease_ttl: Duration::from_secs(6),
        ..Default::default()
    }
}

/// Issue 25, item 11. Invariant: a replica whose wall clock is behind
/// never serves a token another replica stamped as expired. Replica A
/// (true clock) refreshes a connection and gets a 3-second token; once the
/// provider no longer takes it, replica B, on a machine 120 s behind, is
/// asked for it: it must refresh, and what it serves must be live at the
/// provider. (Before: B's clock was its machine's, it saw two minutes of
/// life left in the dead token and served it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_120_s_behind_serves_no_token_another_stamped_expired() {
    let replicas = Replicas::start_clocked(
        database("clock_behind"),
        &[0, -120_000],
        on_demand(),
        vec![],
    )
    .await;
    let (mut a, mut b) = (replicas.client(0).await, replicas.client(1).await);
    let sandbox = &replicas.sandbox;
    let issued = sandbox.issue_tokens("acct-behind", &["crm.objects.contacts.read"]);
    // Installed expired, so A's first read refreshes it: a 3 s token.
    a.install(import_request("behind", "acct-behind", &issued, 0))
        .await
        .expect("install on A");
    sandbox.set_access_token_lifetime(Duration::from_secs(3));
    let stamped = a
        .get_token(get("behind"))
        .await
        .expect("A refreshes")
        .into_inner()
        .token
        .expect("token")
        .access_token;
    sandbox.set_access_token_lifetime(Duration::from_secs(1800));
    let started = Instant::now();
    while sandbox.access_token_is_live(&stamped) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = b
        .get_token(get("behind"))
        .await
        .expect("B serves")
        .into_inner()
        .token
        .expect("token")
        .access_token;
    assert_ne!(served, stamped, "B served the token A stamped as expired");
    assert!(
        sandbox.access_token_is_live(&served),
        "the provider refuses what B served"
    );
    replicas.stop().await;
}

/// Issue 25, item 11. Invariant: a replica whose wall clock is ahead never
/// takes over a lease another replica holds live. Replica A's refresh
/// spends 4 s at the provider under a 6 s lease it renews every 2 s;
/// replica B, on a machine 120 s ahead, sweeps expired leases every 2 s
/// meanwhile. The provider must see one refresh request, and A's answer
/// must be served. (Before: B found A's live lease expired by its own
/// clock, took the refresh over and presented the same refresh token a
/// second time, which strict rotation refuses.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_120_s_ahead_takes_over_no_live_lease() {
    let replicas =
        Replicas::start_clocked(database("clock_ahead"), &[0, 120_000], on_demand(), vec![]).await;
    let mut a = replicas.client(0).await;
    let sandbox = &replicas.sandbox;
    let issued = sandbox.issue_tokens("acct-ahead", &["crm.objects.contacts.read"]);
    a.install(import_request("ahead", "acct-ahead", &issued, 0))
        .await
        .expect("install on A");
    sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(4),
        count: 1,
    });
    let served = a
        .get_token(get("ahead"))
        .await
        .expect("A refreshes")
        .into_inner()
        .token
        .expect("token")
        .access_token;
    // One more sweep of B's, after A's lease was released.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = sandbox.account_stats("acct-ahead");
    assert_eq!(
        stats.refresh_requests, 1,
        "the refresh token was presented twice: B took A's live lease over"
    );
    assert_eq!(stats.invalid_grant, 0);
    assert!(sandbox.access_token_is_live(&served));
    replicas.stop().await;
}
