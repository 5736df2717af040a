//! The refresh guarantees: singleflight, no stampede after 401s, strict
//! rotation under load, revocation, rate limits, transient failures,
//! durability across restarts.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokend_proto::v1 as pb;
use tokend_sandbox::{Fault, Rotation, SandboxConfig};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{
    Options, TestServer, background_off, connection, force, get, import_request, metadata, reason,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_readers_of_an_expired_token_cause_one_provider_call() {
    // The background refresher is off so that the 1000 readers, not it,
    // find the token expired and race for the refresh.
    let server = TestServer::start_with(background_off()).await;
    let (_, issued) = server.import("burst", "acct-burst", 0).await;

    // Four HTTP/2 connections, 250 concurrent calls each.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    let calls = (0..1000).map(|i| {
        let mut c = clients[i % 4].clone();
        async move { c.get_token(get("burst")).await }
    });
    let results = join_all(calls).await;

    let mut tokens = std::collections::HashSet::new();
    for r in results {
        let token = r
            .expect("every caller gets a token")
            .into_inner()
            .token
            .expect("token");
        assert!(
            token.expires_in_seconds > 1000,
            "a fresh token: {}",
            token.expires_in_seconds
        );
        tokens.insert(token.access_token);
    }
    assert_eq!(tokens.len(), 1, "all callers share the one refreshed token");
    assert!(
        !tokens.contains(&issued.access_token),
        "the expired token is not served"
    );
    let after = server.sandbox.account_stats("acct-burst");
    assert_eq!(
        after.refresh_requests, 1,
        "exactly one provider call for 1000 callers"
    );
    assert!(
        server
            .sandbox
            .access_token_is_live(tokens.iter().next().unwrap())
    );
}

#[tokio::test]
async fn force_refresh_with_an_already_replaced_token_does_not_call_the_provider() {
    let server = TestServer::start().await;
    server.import("stale401", "acct-401", 1800).await;
    let mut client = server.client().await;
    let first = client
        .get_token(get("stale401"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();

    // The first 401 refreshes.
    let refreshed = client
        .force_refresh(pb::ForceRefreshRequest {
            connection_id: "stale401".into(),
            rejected: Some(pb::force_refresh_request::Rejected::RejectedAccessToken(
                first.access_token.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refreshed.refreshed);
    let second = refreshed.token.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.version, first.version + 1);
    assert_eq!(server.sandbox.account_stats("acct-401").refresh_requests, 1);

    // A burst of late 401s for the old token, by token and by version: no
    // provider call, the newer token comes back.
    let mut late = Vec::new();
    for i in 0..50 {
        let mut c = client.clone();
        let rejected = if i % 2 == 0 {
            pb::force_refresh_request::Rejected::RejectedAccessToken(first.access_token.clone())
        } else {
            pb::force_refresh_request::Rejected::RejectedVersion(first.version)
        };
        late.push(async move {
            c.force_refresh(pb::ForceRefreshRequest {
                connection_id: "stale401".into(),
                rejected: Some(rejected),
            })
            .await
        });
    }
    for r in join_all(late).await {
        let r = r.unwrap().into_inner();
        assert!(!r.refreshed);
        assert_eq!(r.token.unwrap().access_token, second.access_token);
    }
    assert_eq!(
        server.sandbox.account_stats("acct-401").refresh_requests,
        1,
        "0 provider calls for already-replaced tokens"
    );

    // A version that was never issued is a clear error.
    let err = client
        .force_refresh(pb::ForceRefreshRequest {
            connection_id: "stale401".into(),
            rejected: Some(pb::force_refresh_request::Rejected::RejectedVersion(99)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(metadata(&err, "field").as_deref(), Some("rejected_version"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_strict_rotations_with_concurrent_readers_lose_no_grant() {
    let server = TestServer::start().await;
    server.import("rotating", "acct-rot", 1800).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut c = server.client().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = c
                    .get_token(get("rotating"))
                    .await
                    .expect("reads never fail")
                    .into_inner();
                assert!(t.token.unwrap().expires_in_seconds > 0);
                reads += 1;
            }
            reads
        }));
    }
    let mut client = server.client().await;
    let mut last_version = 0;
    for _ in 0..500 {
        let r = client
            .force_refresh(force("rotating"))
            .await
            .expect("refresh succeeds")
            .into_inner();
        let v = r.token.unwrap().version;
        assert!(v > last_version);
        last_version = v;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    let stats = server.sandbox.account_stats("acct-rot");
    assert_eq!(
        stats.invalid_grant, 0,
        "no refresh ever used a dead refresh token"
    );
    assert_eq!(stats.refresh_grants_ok, 500);
    assert!(reads > 0);
    let c = connection(&mut client, "rotating").await;
    assert_eq!(c.status, pb::ConnectionStatus::Active as i32);
}

#[tokio::test]
async fn revocation_marks_reconnect_required_tells_watchers_once_and_stops_calling() {
    let server = TestServer::start().await;
    server.import("revoked", "acct-rev", 0).await;
    let mut client = server.client().await;
    // Let the first (background or on-demand) refresh succeed.
    client
        .get_token(get("revoked"))
        .await
        .expect("first refresh works");

    let mut watch = client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "revoked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch.message().await.unwrap().unwrap();
    assert_eq!(snapshot.event_type, pb::WatchEventType::Snapshot as i32);

    server.sandbox.revoke_account("acct-rev");
    let revoked_at = Instant::now();
    let err = client.force_refresh(force("revoked")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "RECONNECT_REQUIRED");
    assert_eq!(
        metadata(&err, "provider_error").as_deref(),
        Some("invalid_grant")
    );

    let event = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let e = watch.message().await.unwrap().unwrap();
            if e.event_type == pb::WatchEventType::StatusChanged as i32 {
                return e;
            }
        }
    })
    .await
    .expect("the watcher hears RECONNECT_REQUIRED within 1 s");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    let conn = event.connection.unwrap();
    assert_eq!(conn.status, pb::ConnectionStatus::ReconnectRequired as i32);
    assert_eq!(conn.last_error.unwrap().code, "invalid_grant");

    let calls = server.sandbox.account_stats("acct-rev").refresh_requests;
    for _ in 0..20 {
        let e = client.get_token(get("revoked")).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = client.force_refresh(force("revoked")).await.unwrap_err();
        assert_eq!(reason(&e), "RECONNECT_REQUIRED");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.sandbox.account_stats("acct-rev").refresh_requests,
        calls,
        "no provider calls after revocation"
    );
    // Told once: no second status event.
    let more = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(more.is_err(), "no further events: {more:?}");
}

#[tokio::test]
async fn reinstall_revives_a_reconnect_required_connection() {
    let server = TestServer::start().await;
    server.import("revive", "acct-revive", 1800).await;
    let mut client = server.client().await;
    server.sandbox.revoke_account("acct-revive");
    let err = client.force_refresh(force("revive")).await.unwrap_err();
    assert_eq!(reason(&err), "RECONNECT_REQUIRED");

    let mut watch = client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "revive".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let snap = watch.message().await.unwrap().unwrap().connection.unwrap();
    assert_eq!(snap.status, pb::ConnectionStatus::ReconnectRequired as i32);

    let issued = server.sandbox.issue_tokens("acct-revive", &["crm"]);
    let resp = client
        .install(import_request("revive", "acct-revive", &issued, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.created);
    let conn = resp.connection.unwrap();
    assert_eq!(conn.status, pb::ConnectionStatus::Active as i32);
    assert!(conn.version > snap.version);

    let event = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.event_type, pb::WatchEventType::StatusChanged as i32);
    assert_eq!(
        event.connection.unwrap().status,
        pb::ConnectionStatus::Active as i32
    );

    let token = client
        .get_token(get("revive"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.access_token, issued.access_token);
    // And it refreshes again.
    client
        .force_refresh(force("revive"))
        .await
        .expect("refresh after re-install");
}

#[tokio::test]
async fn rate_limit_retry_after_is_honoured() {
    let server = TestServer::start_with(background_off()).await;
    server.import("limited", "acct-429", 0).await;
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 2,
        count: 1,
    });
    let mut client = server.client().await;

    let err = client.get_token(get("limited")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "PROVIDER_UNAVAILABLE");
    assert_eq!(
        metadata(&err, "error_class").as_deref(),
        Some("rate_limited")
    );
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > Duration::from_millis(1500) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    let requests = server.sandbox.stats().token_requests;

    // Within the window: answered from memory, no provider call.
    for _ in 0..10 {
        let err = client.get_token(get("limited")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.get_details_retry_info().is_some());
    }
    assert_eq!(
        server.sandbox.stats().token_requests,
        requests,
        "Retry-After is honoured"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let token = client
        .get_token(get("limited"))
        .await
        .expect("works after Retry-After");
    assert!(token.into_inner().token.unwrap().expires_in_seconds > 0);
    assert_eq!(server.sandbox.stats().token_requests, requests + 1);
}

#[tokio::test]
async fn transient_failures_are_hidden_while_the_token_is_valid() {
    let server = TestServer::start_with(background_off()).await;
    // 100 s left: inside the 5-minute buffer, so reads try to refresh.
    let (_, issued) = server.import("flaky", "acct-flaky", 100).await;
    server.sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    let mut client = server.client().await;
    let token = client
        .get_token(get("flaky"))
        .await
        .expect("still-valid token served")
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.access_token, issued.access_token);
    let conn = connection(&mut client, "flaky").await;
    assert_eq!(
        conn.status,
        pb::ConnectionStatus::Active as i32,
        "a 503 is not a revocation"
    );
    let last = conn
        .last_error
        .expect("the failure is visible to operators");
    assert_eq!(last.code, "server_error");
    assert_eq!(last.http_status, 503);
    assert_eq!(last.error_class, pb::ErrorClass::Transient as i32);
    assert!(conn.next_refresh_at.is_some(), "a retry is scheduled");
}

#[tokio::test]
async fn transient_failure_without_a_valid_token_is_unavailable_and_backs_off() {
    let server = TestServer::start_with(background_off()).await;
    server.import("down", "acct-down", 0).await;
    server.sandbox.inject(Fault::Status {
        status: 502,
        count: 100,
    });
    let mut client = server.client().await;
    let err = client.get_token(get("down")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        metadata(&err, "provider_http_status").as_deref(),
        Some("502")
    );
    assert!(err.get_details_retry_info().is_some());
    for _ in 0..50 {
        client.get_token(get("down")).await.unwrap_err();
    }
    assert_eq!(
        server.sandbox.account_stats("acct-down").refresh_requests
            + server.sandbox.stats().faults_served,
        1,
        "backoff: one provider call, not one per caller"
    );
}

#[tokio::test]
async fn invalid_client_is_not_a_revocation() {
    let server = TestServer::start_with(background_off()).await;
    server.import("misconf", "acct-misconf", 0).await;
    server.sandbox.inject(Fault::InvalidClient { count: 1 });
    let mut client = server.client().await;
    let err = client.get_token(get("misconf")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "PROVIDER_MISCONFIGURED");
    let conn = connection(&mut client, "misconf").await;
    assert_eq!(conn.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(
        conn.last_error.unwrap().error_class,
        pb::ErrorClass::ClientMisconfigured as i32
    );
}

#[tokio::test]
async fn restart_keeps_every_connection_and_its_latest_refresh_token() {
    let mut server = TestServer::start().await;
    let mut versions = Vec::new();
    for i in 0..5 {
        server
            .import(&format!("keep-{i}"), &format!("acct-keep-{i}"), 1800)
            .await;
    }
    let mut client = server.client().await;
    for i in 0..5 {
        // Rotate each a few times: only the newest refresh token is alive.
        let mut v = 0;
        for _ in 0..=i {
            v = client
                .force_refresh(pb::ForceRefreshRequest {
                    connection_id: format!("keep-{i}"),
                    rejected: None,
                })
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
                .version;
        }
        versions.push(v);
    }
    server.restart().await;
    let mut client = server.client().await;
    let list = client
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.connections.len(), 5);
    for (i, version) in versions.iter().copied().enumerate() {
        let id = format!("keep-{i}");
        let t = client
            .get_token(get(&id))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap();
        assert_eq!(t.version, version);
        // Refreshing uses the persisted (latest) refresh token: strict
        // rotation would answer invalid_grant to any older one.
        let r = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.clone(),
                rejected: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(r.into_inner().token.unwrap().version, version + 1);
        assert_eq!(
            server
                .sandbox
                .account_stats(&format!("acct-keep-{i}"))
                .invalid_grant,
            0
        );
    }
}

#[tokio::test]
async fn background_refresher_renews_ahead_of_expiry() {
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            access_token_lifetime: Duration::from_secs(2),
            rotation: Rotation::Strict,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Expired at import: the refresher renews it at once, then again before
    // each 2-second token expires (buffer capped at half the lifetime).
    server.import("bg", "acct-bg", 0).await;
    let ok = crate::harness::eventually(Duration::from_secs(5), || {
        server.sandbox.account_stats("acct-bg").refresh_grants_ok >= 3
    })
    .await;
    assert!(
        ok,
        "background refreshes: {:?}",
        server.sandbox.account_stats("acct-bg")
    );
    assert_eq!(server.sandbox.account_stats("acct-bg").invalid_grant, 0);
    let mut client = server.client().await;
    let t = client
        .get_token(get("bg"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(server.sandbox.access_token_is_live(&t.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_of_a_deleted_connection_never_lands_on_its_reinstall() {
    let server = TestServer::start_with(background_off()).await;
    server.import("reborn", "acct-old", 1800).await;
    let mut client = server.client().await;
    // The old incarnation's refresh is slow at the provider...
    server.sandbox.inject(Fault::Latency {
        delay: Duration::from_millis(500),
        count: 1,
    });
    let slow = {
        let mut c = client.clone();
        tokio::spawn(async move { c.force_refresh(force("reborn")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while the connection is deleted and installed again, for another
    // account, under the same id (its revision counter starts over).
    client
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: "reborn".into(),
            force: false,
        })
        .await
        .unwrap();
    let issued = server.sandbox.issue_tokens("acct-new", &["crm"]);
    let created = client
        .install(import_request("reborn", "acct-new", &issued, 1800))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let _ = slow.await.unwrap();

    // The new grant survived: its token is served and its refresh token works.
    let t = client
        .get_token(get("reborn"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(t.access_token, issued.access_token);
    assert_eq!(t.account_id, "acct-new");
    client
        .force_refresh(force("reborn"))
        .await
        .expect("the new grant refreshes");
    assert_eq!(server.sandbox.account_stats("acct-new").invalid_grant, 0);
}

#[tokio::test]
async fn retry_after_zero_does_not_become_a_tight_loop() {
    let server = TestServer::start().await;
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 0,
        count: 1000,
    });
    server.import("zero", "acct-zero", 0).await;
    let mut client = server.client().await;
    let err = client.get_token(get("zero")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let delay = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay >= Duration::from_millis(500), "{delay:?}");
    // The background refresher and the reader together made one attempt,
    // not one per event-loop turn.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        server.sandbox.stats().faults_served <= 2,
        "{:?}",
        server.sandbox.stats()
    );
}
