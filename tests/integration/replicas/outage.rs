//! A database outage: cached tokens still served, no grant lost.

use super::*;

/// Guards: while PostgreSQL is down, cached valid tokens are still served;
/// refreshes and installs answer UNAVAILABLE with RetryInfo; a refresh
/// whose provider call succeeded just as the database went away keeps its
/// rotated grant in memory until the database is back, so the connection
/// still refreshes afterwards (strict rotation: a lost refresh token would
/// make that refresh fail with invalid_grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_keeps_cached_tokens_served_and_loses_no_grant() {
    let cluster = tokend_pgtest::Cluster::dedicated();
    let mut options = PgOptions::new(SecretString::from(cluster.database("outage")));
    options.connect_timeout = Duration::from_millis(500);
    options.statement_timeout = Duration::from_secs(2);
    let replicas = Replicas::start_on(
        options,
        1,
        EngineSettings {
            background_refresh: false,
            lease_ttl: Duration::from_secs(2),
            pending_retry_max: Duration::from_millis(500),
            ..Default::default()
        },
        Vec::new(),
    )
    .await;
    let mut a = replicas.client(0).await;
    let install = |id: &'static str| {
        let issued = replicas
            .sandbox
            .issue_tokens(&format!("acct-{id}"), &["crm.objects.contacts.read"]);
        let request = import_request(id, &format!("acct-{id}"), &issued, 1800);
        (issued, request)
    };
    let (cached, req) = install("out-cached");
    a.install(req).await.expect("install");
    let (_, req) = install("out-inflight");
    a.install(req).await.expect("install");

    // A refresh whose provider answer comes back after the database is gone.
    replicas.sandbox.inject(tokend_sandbox::Fault::Latency {
        delay: Duration::from_millis(1500),
        count: 1,
    });
    let mut inflight_client = a.clone();
    let inflight =
        tokio::spawn(async move { inflight_client.force_refresh(force("out-inflight")).await });
    // Steady load on the cached connection from before the database stops
    // until after it is back: not one call may fail.
    let load_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&load_stop);
        let clients: Vec<Client> = (0..8).map(|_| a.clone()).collect();
        let want = cached.access_token.clone();
        tokio::spawn(async move {
            let per_client = clients.into_iter().map(|mut c| {
                let (stop, want) = (Arc::clone(&stop), want.clone());
                async move {
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match c
                            .get_token(get("out-cached"))
                            .await
                            .map(|r| access_token(r.into_inner()))
                        {
                            Ok(token) if token == want => ok += 1,
                            Ok(_) => failed.push("another token".to_owned()),
                            Err(status) => failed.push(format!("{status:?}")),
                        }
                        // Paced below the local caller's rate limit.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (ok, failed)
                }
            });
            join_all(per_client).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.stop_immediately().expect("database stops");

    for _ in 0..50 {
        let served = access_token(
            a.get_token(get("out-cached"))
                .await
                .expect("a cached token is served while the database is down")
                .into_inner(),
        );
        assert_eq!(served, cached.access_token);
    }
    let refused = a
        .force_refresh(force("out-cached"))
        .await
        .expect_err("no refresh without the database");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.get_details_retry_info().is_some(),
        "RetryInfo says when to retry: {refused:?}"
    );
    let (_, req) = install("out-new");
    let refused = a.install(req).await.expect_err("no install either");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let inflight = inflight.await.expect("joins");
    println!(
        "the refresh in flight when the database stopped answered: {:?}",
        inflight
            .as_ref()
            .map(|_| "a token")
            .map_err(tonic::Status::code)
    );

    cluster.restart().expect("database restarts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = load.await.expect("load joins");
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    println!(
        "cached GetToken through the outage: {ok} ok, {} failed",
        failed.len()
    );
    assert!(ok > 500, "the load ran ({ok} calls)");
    assert!(
        failed.is_empty(),
        "cached calls failed: {:?}",
        &failed[..failed.len().min(3)]
    );
    // The pool reconnects by itself, and the in-flight grant was kept: the
    // connection refreshes again with the refresh token it rotated to.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match a.force_refresh(force("out-inflight")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("out-inflight no longer refreshes after the outage: {s:?}"),
        }
    }
    let status = a
        .get_connection(pb::GetConnectionRequest {
            connection_id: "out-inflight".into(),
        })
        .await
        .expect("connection")
        .into_inner()
        .connection
        .expect("connection");
    assert_eq!(status.status, pb::ConnectionStatus::Active as i32);
    // The refusals above were remembered with their RetryInfo; once it has
    // passed, everything works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.force_refresh(force("out-cached")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                let wait = s
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait).await;
            }
            Err(s) => panic!("out-cached no longer refreshes after the outage: {s:?}"),
        }
    }
    let (_, req) = install("out-after");
    a.install(req).await.expect("installs work again");
    replicas.stop().await;
}
