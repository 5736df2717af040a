//! WatchConnection, health, reflection and shutdown.

use std::time::Duration;

use tokend_proto::v1 as pb;
use tonic::{Code, Streaming};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::{
    Client, TestServer, bad_fields, force, get, import_request, metadata, reason,
};

type Watch = Streaming<pb::WatchConnectionResponse>;

/// How long a test waits for an event it expects.
const EVENT_WAIT: Duration = Duration::from_secs(2);

async fn watch(client: &mut Client, id: &str) -> Watch {
    client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("WatchConnection {id}: {e:?}"))
        .into_inner()
}

/// The next event, failing the test if none arrives in time or the stream
/// ends or fails.
async fn next(stream: &mut Watch) -> pb::WatchConnectionResponse {
    tokio::time::timeout(EVENT_WAIT, stream.message())
        .await
        .expect("an event within 2 s")
        .expect("the stream does not fail")
        .expect("the stream does not end")
}

#[track_caller]
fn assert_kind(event: &pb::WatchConnectionResponse, kind: pb::WatchEventType) {
    assert_eq!(
        pb::WatchEventType::try_from(event.event_type),
        Ok(kind),
        "{event:?}"
    );
}

fn delete(id: &str) -> pb::DeleteConnectionRequest {
    pb::DeleteConnectionRequest {
        connection_id: id.into(),
        force: false,
    }
}

// ---- WatchConnection ----------------------------------------------------

#[tokio::test]
async fn watch_rejects_unknown_and_invalid_ids() {
    let server = TestServer::start().await;
    server.import("present", "acct-present", 1800).await;
    let mut client = server.client().await;

    let err = client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "absent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(reason(&err), "CONNECTION_NOT_FOUND");
    assert_eq!(metadata(&err, "connection_id").as_deref(), Some("absent"));

    let huge = "w".repeat(10 * 1024);
    for id in ["", "bad id", "nul\u{0}", "\u{1f680}", huge.as_str()] {
        let err = client
            .watch_connection(pb::WatchConnectionRequest {
                connection_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(bad_fields(&err), ["connection_id"]);
    }
    // A rejected watch leaves the service healthy.
    let mut stream = watch(&mut client, "present").await;
    assert_kind(&next(&mut stream).await, pb::WatchEventType::Snapshot);
}

#[tokio::test]
async fn watch_starts_with_a_snapshot_then_reports_rotations_without_secrets() {
    let server = TestServer::start().await;
    let (installed, issued) = server.import("watched", "acct-watched", 1800).await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "watched").await;

    let snapshot = next(&mut stream).await;
    assert_kind(&snapshot, pb::WatchEventType::Snapshot);
    assert!(snapshot.event_time.is_some());
    let c = snapshot.connection.clone().expect("connection");
    assert_eq!(c.connection_id, "watched");
    assert_eq!(c.provider, "sandbox");
    assert_eq!(c.account_id, "acct-watched");
    assert_eq!(c.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(c.version, installed.version);
    assert_eq!(c.access_token_expires_at, installed.access_token_expires_at);
    let shown = format!("{snapshot:?}");
    assert!(!shown.contains(&issued.access_token));
    assert!(!shown.contains(&issued.refresh_token));

    let refreshed = client
        .force_refresh(force("watched"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let rotated = next(&mut stream).await;
    assert_kind(&rotated, pb::WatchEventType::TokenRotated);
    let c = rotated.connection.clone().expect("connection");
    assert_eq!(c.version, installed.version + 1);
    assert_eq!(c.version, refreshed.version);
    assert!(c.last_refresh_at.is_some());
    assert_eq!(c.access_token_expires_at, refreshed.expires_at);

    let current = client
        .get_token(get("watched"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(current.version, c.version);
    let shown = format!("{rotated:?}");
    assert!(!shown.contains(&current.access_token), "{shown}");
    assert!(!shown.contains(&issued.access_token), "{shown}");
    assert!(!shown.contains(&issued.refresh_token), "{shown}");

    // A later subscriber starts from the current state, not the install.
    let mut late = watch(&mut client, "watched").await;
    let first = next(&mut late).await;
    assert_kind(&first, pb::WatchEventType::Snapshot);
    assert_eq!(first.connection.unwrap().version, current.version);

    // A re-install wakes both watchers too.
    let newer = server.sandbox.issue_tokens("acct-watched", &["crm"]);
    let reinstalled = client
        .install(import_request("watched", "acct-watched", &newer, 1800))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    for s in [&mut stream, &mut late] {
        let event = next(s).await;
        assert_kind(&event, pb::WatchEventType::TokenRotated);
        assert!(!format!("{event:?}").contains(&newer.access_token));
        assert_eq!(event.connection.unwrap().version, reinstalled.version);
    }
}

#[tokio::test]
async fn delete_sends_deleted_and_ends_the_stream() {
    let server = TestServer::start().await;
    server.import("goner", "acct-goner", 1800).await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "goner").await;
    let snapshot = next(&mut stream).await;
    assert_kind(&snapshot, pb::WatchEventType::Snapshot);

    client.delete_connection(delete("goner")).await.unwrap();
    let deleted = next(&mut stream).await;
    assert_kind(&deleted, pb::WatchEventType::Deleted);
    let last = deleted.connection.expect("the last state");
    assert_eq!(last.connection_id, "goner");
    assert_eq!(last.version, snapshot.connection.unwrap().version);

    let end = tokio::time::timeout(EVENT_WAIT, stream.message())
        .await
        .expect("the stream ends promptly after DELETED");
    assert!(matches!(end, Ok(None)), "a clean end: {end:?}");

    // Watching it now is NOT_FOUND.
    let err = client
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "goner".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn two_concurrent_watchers_both_receive_the_event() {
    let server = TestServer::start().await;
    server.import("shared", "acct-shared", 1800).await;
    let mut a_client = server.client().await;
    let mut b_client = server.client().await;
    let mut a = watch(&mut a_client, "shared").await;
    let mut b = watch(&mut b_client, "shared").await;
    assert_kind(&next(&mut a).await, pb::WatchEventType::Snapshot);
    assert_kind(&next(&mut b).await, pb::WatchEventType::Snapshot);

    let v = a_client
        .force_refresh(force("shared"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .version;
    let (ea, eb) = tokio::join!(next(&mut a), next(&mut b));
    for e in [ea, eb] {
        assert_kind(&e, pb::WatchEventType::TokenRotated);
        assert_eq!(e.connection.unwrap().version, v);
    }

    // One watcher leaving does not disturb the other.
    drop(a);
    let v = b_client
        .force_refresh(force("shared"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .version;
    let e = next(&mut b).await;
    assert_kind(&e, pb::WatchEventType::TokenRotated);
    assert_eq!(e.connection.unwrap().version, v);
}

// ---- health and reflection ----------------------------------------------

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "tokend.v1.TokenService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check {service:?}: {e:?}"))
            .into_inner();
        assert_eq!(
            ServingStatus::try_from(resp.status),
            Ok(ServingStatus::Serving),
            "{service:?}"
        );
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

// Reflection is covered by reflection.rs (v1 and v1alpha clients) and, with
// the real grpcurl binary, by scripts/walkthrough.sh in CI.

// ---- shutdown and restart -----------------------------------------------

#[tokio::test]
async fn graceful_shutdown_ends_watch_streams_cleanly() {
    let mut server = TestServer::start().await;
    server.import("lingering", "acct-linger", 1800).await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "lingering").await;
    let snapshot = next(&mut stream).await;
    assert_kind(&snapshot, pb::WatchEventType::Snapshot);

    // stop() itself asserts the server exits cleanly within its limit; the
    // open watch must not hold it up.
    let stopping = async {
        tokio::time::timeout(Duration::from_secs(5), server.stop())
            .await
            .expect("stop() returns within 5 s with a watch open");
    };
    let (_, end) = tokio::join!(
        stopping,
        tokio::time::timeout(Duration::from_secs(5), stream.message())
    );
    let end = end.expect("the watch stream ends within 5 s of shutdown");
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "no event, just the end: {end:?}"
    );

    // The store was released and holds the connection.
    use tokend_store::Store as _;
    let store = server.open_store();
    let id = tokend_core::ConnectionId::new("lingering").unwrap();
    let record = store.get(&id).await.unwrap().expect("still stored");
    assert_eq!(record.version, snapshot.connection.unwrap().version);
}

#[tokio::test]
async fn restart_serves_the_same_version_to_new_watchers() {
    let mut server = TestServer::start().await;
    server.import("durable", "acct-durable", 1800).await;
    let mut client = server.client().await;
    let before = client
        .force_refresh(force("durable"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(before.version, 2);

    server.restart().await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "durable").await;
    let snapshot = next(&mut stream).await;
    assert_kind(&snapshot, pb::WatchEventType::Snapshot);
    let c = snapshot.connection.unwrap();
    assert_eq!(c.version, before.version);
    assert_eq!(c.status, pb::ConnectionStatus::Active as i32);
    assert_eq!(c.access_token_expires_at, before.expires_at);
    let after = client
        .get_token(get("durable"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(after.access_token, before.access_token);
    assert_eq!(after.version, before.version);

    // And it keeps streaming changes after the restart.
    client.force_refresh(force("durable")).await.unwrap();
    let rotated = next(&mut stream).await;
    assert_kind(&rotated, pb::WatchEventType::TokenRotated);
    assert_eq!(rotated.connection.unwrap().version, before.version + 1);
}
