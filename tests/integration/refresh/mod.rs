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

mod failures;
