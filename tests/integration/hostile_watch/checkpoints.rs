//! Item 14: a tenant's checkpoints do not follow other tenants' activity.

use super::*;

fn identity(
    name: &str,
    key: &str,
    permissions: Vec<tokend_server::auth::Permission>,
    connections: &str,
) -> tokend_server::auth::IdentityConfig {
    tokend_server::auth::IdentityConfig {
        name: name.into(),
        api_key_sha256: Some(tokend_server::auth::sha256_hex(key.as_bytes())),
        cert_sha256: None,
        grants: vec![tokend_server::auth::Grant {
            permissions,
            connections: vec![connections.into()],
        }],
        requests_per_second: 10_000,
        max_watch_streams: 8,
    }
}

/// Reads `stream` for `period`: each message with when it came.
async fn collect(
    stream: &mut tonic::Streaming<pb::ConnectionEvent>,
    period: Duration,
) -> Vec<(Instant, pb::ConnectionEvent)> {
    let end = tokio::time::Instant::now() + period;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(end, stream.next()).await {
        out.push((Instant::now(), m.expect("message")));
    }
    out
}

/// Issue 24, item 14. Invariant: a tenant's WatchConnections stream tells
/// it nothing of other tenants' activity. Its checkpoints come on a fixed
/// beat (one per `checkpoint_interval` without another message) whether
/// the log moved or not, never sooner; no message carries a sequence
/// number; every cursor is sealed (80 characters, a fresh nonce each
/// time, so no two are equal); it resumes from a sealed cursor with no gap
/// and cannot present a plain one. A caller over every connection keeps
/// plain cursors and sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_checkpoints_do_not_follow_other_tenants_activity() {
    use tokend_server::auth::Permission::{Admin, Install, Tokens};
    const BEAT: Duration = Duration::from_millis(300);
    let server = TestServer::start_with(Options {
        identities: vec![
            identity("admin", "admin-key", vec![Admin], "*"),
            identity("tenant-a", "a-key", vec![Tokens, Install], "tenant-a-*"),
        ],
        client_key: Some("admin-key".into()),
        events: Some(tokend_server::feed::EventSettings {
            checkpoint_interval: BEAT,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let admin = server.client().await;
    let mut tenant = server.client_with_key(Some("a-key")).await;
    let mut a = tenant
        .watch_connections(pb::WatchConnectionsRequest::default())
        .await
        .expect("tenant watches")
        .into_inner();
    let mut everything = admin
        .clone()
        .watch_connections(pb::WatchConnectionsRequest::default())
        .await
        .expect("admin watches")
        .into_inner();

    // Quiet: nothing happens anywhere.
    let quiet = collect(&mut a, BEAT * 6).await;
    // Busy: another tenant's connections change, and one of tenant A's.
    let busy_writer = {
        let admin = admin.clone();
        let sandbox_tokens: Vec<_> = (0..40)
            .map(|i| server.sandbox.issue_tokens(&format!("b-{i}"), &["x"]))
            .collect();
        tokio::spawn(async move {
            for (i, issued) in sandbox_tokens.iter().enumerate() {
                admin
                    .clone()
                    .install(import_request(&format!("tenant-b-{i}"), "b", issued, 1800))
                    .await
                    .expect("install b");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let own = server.sandbox.issue_tokens("a-1", &["x"]);
    tenant
        .install(import_request("tenant-a-1", "a", &own, 1800))
        .await
        .expect("install a");
    let busy = collect(&mut a, BEAT * 6).await;
    busy_writer.await.unwrap();

    let checkpoint = pb::EventType::Checkpoint as i32;
    let quiet_checkpoints = quiet
        .iter()
        .filter(|(_, m)| m.event_type == checkpoint)
        .count();
    assert!(
        quiet_checkpoints >= 3,
        "checkpoints come on the beat even when nothing happens: {quiet_checkpoints}"
    );
    let own_events: Vec<_> = busy
        .iter()
        .filter(|(_, m)| m.event_type != checkpoint)
        .collect();
    assert_eq!(own_events.len(), 1, "only its own event: {own_events:?}");
    assert_eq!(own_events[0].1.connection_id, "tenant-a-1");
    let mut cursors = std::collections::HashSet::new();
    for (_, m) in quiet.iter().chain(&busy) {
        assert_eq!(m.sequence, 0, "no sequence number: {m:?}");
        assert_eq!(m.cursor.len(), 80, "a sealed cursor: {m:?}");
        assert!(cursors.insert(m.cursor.clone()), "a cursor repeated");
    }
    // Foreign events never bring a checkpoint forward.
    let busy_times: Vec<_> = busy
        .iter()
        .filter(|(_, m)| m.event_type == checkpoint)
        .map(|(t, _)| *t)
        .collect();
    for pair in busy_times.windows(2) {
        assert!(
            pair[1] - pair[0] >= BEAT * 8 / 10,
            "two checkpoints {:?} apart: the beat followed the log",
            pair[1] - pair[0]
        );
    }
    let busy_checkpoints = busy
        .iter()
        .filter(|(_, m)| m.event_type == checkpoint)
        .count();
    eprintln!(
        "tenant checkpoints: {quiet_checkpoints} with no foreign event, {busy_checkpoints} with 40 foreign events, all with sequence 0 and distinct sealed cursors"
    );
    assert!(
        busy_checkpoints <= quiet_checkpoints + 1,
        "{busy_checkpoints} checkpoints while busy, {quiet_checkpoints} while quiet"
    );

    // Resuming from the last checkpoint before its own event: the event
    // comes again, nothing of tenant B's.
    let before_own = busy
        .iter()
        .take_while(|(_, m)| m.event_type == checkpoint)
        .last()
        .or(quiet.last())
        .map(|(_, m)| m.cursor.clone())
        .expect("a checkpoint");
    let mut resumed = tenant
        .watch_connections(pb::WatchConnectionsRequest {
            resume_after: before_own,
            ..Default::default()
        })
        .await
        .expect("resumes from a sealed cursor")
        .into_inner();
    let replay = collect(&mut resumed, BEAT * 3).await;
    let replayed: Vec<_> = replay
        .iter()
        .filter(|(_, m)| m.event_type != checkpoint)
        .map(|(_, m)| m.connection_id.as_str())
        .collect();
    assert_eq!(replayed, ["tenant-a-1"]);

    // A plain cursor is refused to a tenant: it could ask about any
    // position of the log.
    let admin_first = everything.next().await.unwrap().unwrap();
    assert_eq!(
        admin_first.cursor.len(),
        22,
        "the admin's cursors stay plain"
    );
    let err = tenant
        .watch_connections(pb::WatchConnectionsRequest {
            resume_after: admin_first.cursor,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let admin_seen = collect(&mut everything, BEAT * 2).await;
    let sequences: Vec<_> = admin_seen
        .iter()
        .filter(|(_, m)| m.event_type != checkpoint)
        .map(|(_, m)| m.sequence)
        .collect();
    assert_eq!(sequences.len(), 41, "the admin sees every event");
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
}
