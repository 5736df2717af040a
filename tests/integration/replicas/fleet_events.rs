//! Events across the fleet: each webhook event delivered once, and watchers
//! on one replica following another's changes in one order.

use super::*;

/// Guards: with one webhook endpoint configured on every replica, each
/// event is delivered by one replica only; when the delivering replica
/// stops, another takes over from the cursor it saved, skipping nothing and
/// repeating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_gets_each_event_once_from_the_fleet_and_survives_its_sender() {
    let (port, seen) = crate::webhooks::scripted_receiver(Vec::new()).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let options = PgOptions::new(SecretString::from(
        tokend_pgtest::cluster().database("fleet_hooks"),
    ));
    let mut replicas = Replicas::start_on(
        options,
        2,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
        vec![crate::webhooks::hook(
            "fleet",
            &url,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )],
    )
    .await;
    let install_many = |sandbox: &Sandbox, range: std::ops::Range<usize>| {
        range
            .map(|i| {
                let account = format!("acct-hook-{i}");
                let issued = sandbox.issue_tokens(&account, &["crm.objects.contacts.read"]);
                import_request(&format!("hook-{i}"), &account, &issued, 1800)
            })
            .collect::<Vec<_>>()
    };
    let wait_for = |n: usize| {
        let seen = Arc::clone(&seen);
        async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            while seen.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} deliveries arrived",
                    seen.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Anything extra (a duplicate) would arrive right after.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let ids: Vec<String> = seen.lock().unwrap().iter().map(|a| a.id.clone()).collect();
            let distinct: std::collections::BTreeSet<_> = ids.iter().cloned().collect();
            assert_eq!(ids.len(), n, "each event delivered once: {ids:?}");
            assert_eq!(distinct.len(), n);
        }
    };
    let mut a = replicas.client(0).await;
    for request in install_many(&replicas.sandbox, 0..20) {
        a.install(request).await.expect("install");
    }
    wait_for(20).await;

    // Which replica delivered: stop it; the other takes over.
    let mut sender = None;
    for i in 0..2 {
        let status = replicas
            .client(i)
            .await
            .list_webhooks(pb::ListWebhooksRequest {})
            .await
            .expect("list webhooks")
            .into_inner();
        if status.webhooks[0].delivered_since_start > 0 {
            sender = Some(i);
        }
    }
    let sender = sender.expect("one replica delivered");
    replicas.stop_one(sender).await;
    let survivor = 1 - sender;
    let mut b = replicas.client(survivor).await;
    for request in install_many(&replicas.sandbox, 20..30) {
        b.install(request).await.expect("install");
    }
    wait_for(30).await;
    replicas.stop().await;
}

/// Guards: watchers on one replica see what another replica did, and a
/// `WatchConnections` cursor taken on one replica resumes on another with
/// no gap and no duplicate (one log, one order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_on_one_replica_see_another_replicas_changes_in_one_order() {
    let replicas = Replicas::start(
        2,
        EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
    )
    .await;
    let (mut a, mut b) = (replicas.client(0).await, replicas.client(1).await);
    let issued = replicas
        .sandbox
        .issue_tokens("acct-w", &["crm.objects.contacts.read"]);
    a.install(import_request("rep-w", "acct-w", &issued, 1800))
        .await
        .expect("install on A");
    let deadline = Instant::now() + Duration::from_secs(5);
    while b
        .get_connection(pb::GetConnectionRequest {
            connection_id: "rep-w".into(),
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "B never saw the install");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wait = Duration::from_secs(5);

    // WatchConnection on B: A's rotation arrives.
    let mut watch = b
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "rep-w".into(),
        })
        .await
        .expect("watch on B")
        .into_inner();
    let first = tokio::time::timeout(wait, watch.message())
        .await
        .expect("snapshot in time")
        .expect("stream")
        .expect("snapshot");
    let before = first.connection.expect("connection").version;
    a.force_refresh(force("rep-w")).await.expect("rotate on A");
    let rotated = tokio::time::timeout(wait, watch.message())
        .await
        .expect("B's watcher hears of A's rotation")
        .expect("stream")
        .expect("event");
    assert_eq!(
        rotated.event_type,
        pb::WatchEventType::TokenRotated as i32,
        "{rotated:?}"
    );
    assert!(rotated.connection.expect("connection").version > before);

    // WatchConnections on A, from the oldest event; then resume on B from
    // the cursor of the second event.
    // `caught_up` is this replica's view: B may hear of A's last commit a
    // poll interval later, so B's read goes on until it has reached `until`.
    let all_events = |mut client: Client, resume_after: String, until: u64| async move {
        let mut stream = client
            .watch_connections(pb::WatchConnectionsRequest {
                resume_after: resume_after.clone(),
                from_oldest: resume_after.is_empty(),
                ..Default::default()
            })
            .await
            .expect("watch all")
            .into_inner();
        let mut events = Vec::new();
        loop {
            let event = tokio::time::timeout(wait, stream.message())
                .await
                .expect("events in time")
                .expect("stream")
                .expect("event");
            if event.event_type == pb::EventType::Checkpoint as i32 {
                if event.caught_up
                    && events
                        .last()
                        .is_some_and(|e: &(u64, String, String)| e.0 >= until)
                {
                    return events;
                }
                continue;
            }
            events.push((event.sequence, event.cursor, event.connection_id));
        }
    };
    let on_a = all_events(a.clone(), String::new(), 0).await;
    assert!(on_a.len() >= 2, "{on_a:?}");
    let last_on_a = on_a.last().expect("events").0;
    let resumed_on_b = all_events(b.clone(), on_a[0].1.clone(), last_on_a).await;
    let seqs = |v: &[(u64, String, String)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(seqs(&resumed_on_b), seqs(&on_a[1..]));
    replicas.stop().await;
}
