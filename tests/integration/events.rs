//! The event feed over gRPC against a real server: resuming across a
//! subscriber's death and a broker restart with nothing lost or repeated,
//! tenant isolation, retention, and the stream's contract.

use std::{collections::HashSet, time::Duration};

use futures::{StreamExt as _, future::join_all};
use tokend_client::{EventFilter, EventType};
use tokend_proto::v1 as pb;
use tokend_server::{
    auth::{Grant, IdentityConfig, Permission, sha256_hex},
    feed::EventSettings,
};

use crate::harness::{Options, TestServer, force, import_request};

/// Collects a stream opened with `until_caught_up` to its end.
async fn drain(stream: tokend_client::EventStream) -> Vec<pb::ConnectionEvent> {
    tokio::time::timeout(
        Duration::from_secs(60),
        stream
            .map(|e| e.expect("no stream error"))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the replay ends within 60 s")
}

/// The invariant: a subscriber that saved its cursor and died, while 1,000
/// connections were revoked and tokend itself restarted, gets exactly those
/// 1,000 RECONNECT_REQUIRED events when it resumes: none lost, none
/// repeated, in sequence order.
#[tokio::test]
async fn a_resumed_subscriber_gets_every_reconnect_required_once_across_a_restart() {
    const N: usize = 1000;
    let mut server = TestServer::start().await;
    let ids: Vec<String> = (0..N).map(|i| format!("fleet-{i:04}")).collect();
    for chunk in ids.chunks(50) {
        join_all(chunk.iter().map(|id| server.import(id, id, 1800))).await;
    }
    // The subscriber starts, saves its position, and is killed.
    let tokend = server.rust_client(None).await;
    let mut subscriber =
        tokend.watch_all(EventFilter::default().event_type(EventType::ReconnectRequired));
    let saved = subscriber.started().await.expect("stream starts");
    drop(subscriber);
    drop(tokend);

    // Every grant is revoked at the provider, and each refresh finds out.
    for id in &ids {
        server.sandbox.revoke_account(id);
    }
    let mut client = server.client().await;
    for chunk in ids.chunks(50) {
        let results = join_all(chunk.iter().map(|id| {
            let mut c = client.clone();
            async move { c.force_refresh(force(id)).await }
        }))
        .await;
        for r in results {
            let e = r.expect_err("revoked");
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        }
    }
    // Noise the filter must leave out.
    client
        .install(import_request(
            "late-arrival",
            "late",
            &server.sandbox.issue_tokens("late", &[]),
            1800,
        ))
        .await
        .expect("install");
    server.restart().await;

    let tokend = server.rust_client(None).await;
    let resumed = tokend
        .watch_all(EventFilter::default().event_type(EventType::ReconnectRequired))
        .resume_after(saved)
        .until_caught_up();
    let events = drain(resumed).await;
    assert_eq!(events.len(), N, "exactly one event per revoked connection");
    let unique: HashSet<_> = events.iter().map(|e| e.connection_id.as_str()).collect();
    assert_eq!(unique.len(), N, "no duplicate");
    assert_eq!(
        unique,
        ids.iter().map(String::as_str).collect(),
        "none lost"
    );
    assert!(
        events.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "in sequence order"
    );
    for e in &events {
        assert_eq!(e.event_type, pb::EventType::ReconnectRequired as i32);
        assert_eq!(e.cause, pb::ReconnectCause::Revoked as i32, "{e:?}");
        let c = e.connection.as_ref().expect("metadata");
        assert_eq!(c.status, pb::ConnectionStatus::ReconnectRequired as i32);
        assert_eq!(c.last_error.as_ref().expect("error").code, "invalid_grant");
    }
}

fn identity(name: &str, key: &str, pattern: &str) -> IdentityConfig {
    IdentityConfig {
        name: name.into(),
        api_key_sha256: Some(sha256_hex(key.as_bytes())),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: vec![if pattern == "*" {
                Permission::Admin
            } else {
                Permission::Tokens
            }],
            connections: vec![pattern.into()],
        }],
        requests_per_second: 1000,
        max_watch_streams: 4,
    }
}

/// A caller granted `tenant-a-*` never sees an event of another tenant,
/// whatever filter it asks for; an admin sees everything.
#[tokio::test]
async fn a_tenant_sees_only_its_own_connections_events() {
    let server = TestServer::start_with(Options {
        identities: vec![
            identity("admin", "admin-key-0123456789", "*"),
            identity("tenant-a", "tenant-a-key-0123456789", "tenant-a-*"),
        ],
        client_key: Some("admin-key-0123456789".into()),
        ..Options::default()
    })
    .await;
    for id in ["tenant-a-1", "tenant-b-1", "tenant-a-2", "tenant-b-2"] {
        server.import(id, id, 1800).await;
    }
    server.sandbox.revoke_account("tenant-b-1");
    let mut admin = server.client().await;
    let _ = admin.force_refresh(force("tenant-b-1")).await;

    let tenant = server.rust_client(Some("tenant-a-key-0123456789")).await;
    for filter in [
        EventFilter::default(),
        EventFilter::default().connection_id_prefix("tenant-b-"),
        EventFilter::default().event_type(EventType::ReconnectRequired),
    ] {
        let events = drain(
            tenant
                .watch_all(filter.clone())
                .from_oldest()
                .until_caught_up(),
        )
        .await;
        assert!(
            events
                .iter()
                .all(|e| e.connection_id.starts_with("tenant-a-")),
            "{filter:?}: {:?}",
            events.iter().map(|e| &e.connection_id).collect::<Vec<_>>()
        );
    }
    let all = drain(
        tenant
            .watch_all(EventFilter::default())
            .from_oldest()
            .until_caught_up(),
    )
    .await;
    assert_eq!(all.len(), 2, "its two installs");

    let admin = server.rust_client(Some("admin-key-0123456789")).await;
    let everything = drain(
        admin
            .watch_all(EventFilter::default())
            .from_oldest()
            .until_caught_up(),
    )
    .await;
    assert_eq!(everything.len(), 5, "4 installs and a reconnect_required");
}

/// A cursor older than retention gives OUT_OF_RANGE / CURSOR_EXPIRED with
/// the oldest cursor, from which the retained events follow.
#[tokio::test]
async fn an_expired_cursor_names_the_oldest_one() {
    let server = TestServer::start_with(Options {
        events: Some(EventSettings {
            max_events: 5,
            prune_interval: Duration::from_millis(50),
            ..EventSettings::default()
        }),
        ..Options::default()
    })
    .await;
    let tokend = server.rust_client(None).await;
    let mut live = tokend.watch_all(EventFilter::default());
    let early = live.started().await.expect("started");
    for i in 0..20 {
        server
            .import(&format!("r{i}"), &format!("r{i}"), 1800)
            .await;
    }
    let got: Vec<_> = live
        .by_ref()
        .take(20)
        .map(|e| e.expect("event").sequence)
        .collect()
        .await;
    assert_eq!(got, (1..=20).collect::<Vec<u64>>(), "live, in order");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Raw gRPC, to see the status itself.
    let mut client = server.client().await;
    let mut stream = client
        .watch_connections(pb::WatchConnectionsRequest {
            resume_after: early.clone(),
            ..Default::default()
        })
        .await;
    let status = match &mut stream {
        Err(status) => status.clone(),
        Ok(s) => s.get_mut().message().await.expect_err("expired"),
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_eq!(crate::harness::reason(&status), "CURSOR_EXPIRED");
    assert!(
        status.message().contains("ListConnections"),
        "{}",
        status.message()
    );

    let err = drain_err(tokend.watch_all(EventFilter::default()).resume_after(early)).await;
    let tokend_client::Error::CursorExpired { oldest_cursor, .. } = err else {
        panic!("{err:?}");
    };
    let kept = drain(
        tokend
            .watch_all(EventFilter::default())
            .resume_after(oldest_cursor)
            .until_caught_up(),
    )
    .await;
    assert_eq!(
        kept.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [16, 17, 18, 19, 20]
    );
}

async fn drain_err(mut stream: tokend_client::EventStream) -> tokend_client::Error {
    tokio::time::timeout(Duration::from_secs(10), async {
        match stream.next().await {
            Some(Err(e)) => e,
            Some(Ok(e)) => panic!("unexpected event {e:?}"),
            None => panic!("the stream ended without an error"),
        }
    })
    .await
    .expect("an error within 10 s")
}

/// Bad requests are INVALID_ARGUMENT naming the field; the stream's first
/// message is a checkpoint; a filtered stream's cursor keeps moving.
#[tokio::test]
async fn the_stream_contract() {
    let server = TestServer::start_with(Options {
        events: Some(EventSettings {
            checkpoint_interval: Duration::from_millis(200),
            ..EventSettings::default()
        }),
        ..Options::default()
    })
    .await;
    let mut client = server.client().await;
    for (request, field) in [
        (
            pb::WatchConnectionsRequest {
                resume_after: "not-a-cursor".into(),
                ..Default::default()
            },
            "resume_after",
        ),
        (
            pb::WatchConnectionsRequest {
                filter: Some(pb::EventFilter {
                    event_types: vec![pb::EventType::Checkpoint as i32],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.event_types",
        ),
        (
            pb::WatchConnectionsRequest {
                filter: Some(pb::EventFilter {
                    connection_id_prefixes: vec!["x".repeat(500)],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.connection_id_prefixes",
        ),
    ] {
        let status = client.watch_connections(request).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(crate::harness::bad_fields(&status), [field]);
    }

    let mut raw = client
        .watch_connections(pb::WatchConnectionsRequest {
            filter: Some(pb::EventFilter {
                event_types: vec![pb::EventType::Deleted as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("opens")
        .into_inner();
    let first = raw.message().await.expect("ok").expect("a message");
    assert_eq!(first.event_type, pb::EventType::Checkpoint as i32);
    assert!(first.caught_up && first.connection.is_none() && !first.cursor.is_empty());
    server.import("skipped", "skipped", 1800).await;
    let next = tokio::time::timeout(Duration::from_secs(3), raw.message())
        .await
        .expect("a checkpoint within 3 s")
        .expect("ok")
        .expect("a message");
    assert_eq!(
        next.event_type,
        pb::EventType::Checkpoint as i32,
        "{next:?}"
    );
    assert_eq!(next.sequence, first.sequence + 1, "moved past the install");
}
