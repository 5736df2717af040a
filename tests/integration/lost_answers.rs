//! Lost answers against the real server and the sandbox over HTTP (issue
//! 25, item 1): the sandbox rotates the refresh token, then its answer is
//! lost (an edge's 504 after a hang, or a reset). tokend must treat the
//! refresh as in doubt: retry it at once with the same refresh token, and
//! tell the truth when that fails.

use std::time::Duration;

use tokend_proto::v1 as pb;
use tokend_sandbox::{Fault, LostAnswer, Rotation, SandboxConfig};
use tonic::Code;

use crate::harness::{Options, TestServer, connection, eventually, force, get, reason};

fn options(rotation: Rotation, grace_secs: u64) -> Options {
    Options {
        sandbox: SandboxConfig {
            rotation,
            ..Default::default()
        },
        provider_toml: Some(format!("rotation_grace_secs = {grace_secs}")),
        ..Default::default()
    }
}

/// Invariant: a grant rotated by a provider whose answer was lost survives
/// while the provider's reuse grace lasts: tokend presents the same refresh
/// token again within a second, whatever the access token's remaining life,
/// and stores the pair it gets. 30 s grace, answer lost after a 20 s hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_inside_the_reuse_grace_loses_nothing() {
    let server = TestServer::start_with(options(Rotation::Grace(30), 30)).await;
    let (before, _) = server.import("lost-grace", "acct-lost-grace", 1800).await;
    let mut client = server.client().await;
    server.sandbox.inject(Fault::LostAnswer {
        answer: LostAnswer::Status(504),
        hang: Duration::from_secs(20),
        count: 1,
    });
    let err = client.force_refresh(force("lost-grace")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Retried with the same refresh token inside the grace: a new pair.
    let renewed = eventually(Duration::from_secs(5), || {
        server.sandbox.stats().refresh_grants_ok >= 2
    })
    .await;
    assert!(renewed, "{:?}", server.sandbox.stats());
    // The sandbox counts the grant when it answers; tokend stores it a
    // moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = connection(&mut client, "lost-grace").await;
        if after.version > before.version || tokio::time::Instant::now() >= deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.status(), pb::ConnectionStatus::Active);
    assert!(
        after.version > before.version,
        "the retry's grant is stored"
    );
    // Long after the grace, the stored refresh token is the live one.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let again = client
        .force_refresh(force("lost-grace"))
        .await
        .expect("the grant survived")
        .into_inner();
    assert!(again.refreshed);
}

/// Invariant: under strict rotation a lost answer (504 or reset) is known
/// within seconds and told truthfully, `ROTATION_LOST`, never `REVOKED`;
/// the still-valid access token keeps being served, its status beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_under_strict_rotation_is_rotation_lost_within_seconds() {
    let server = TestServer::start_with(options(Rotation::Strict, 0)).await;
    let mut client = server.client().await;
    for (id, answer) in [
        ("lost-504", LostAnswer::Status(504)),
        ("lost-reset", LostAnswer::Reset),
    ] {
        server.import(id, &format!("acct-{id}"), 1800).await;
        let served = client.get_token(get(id)).await.unwrap().into_inner();
        server.sandbox.inject(Fault::LostAnswer {
            answer,
            hang: Duration::ZERO,
            count: 1,
        });
        let err = client.force_refresh(force(id)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{id}: {err:?}");
        let mut status = None;
        for _ in 0..50 {
            let c = connection(&mut client, id).await;
            if c.status() == pb::ConnectionStatus::ReconnectRequired {
                status = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = status.unwrap_or_else(|| panic!("{id}: not known lost within 5 s"));
        assert_eq!(
            c.reconnect_cause(),
            pb::ReconnectCause::RotationLost,
            "{id}: lost in transit, not revoked"
        );
        // The access token the provider issued is still valid: served.
        let still = client.get_token(get(id)).await.expect("still served");
        assert_eq!(
            still
                .metadata()
                .get("tokend-connection-status")
                .and_then(|v| v.to_str().ok()),
            Some("RECONNECT_REQUIRED")
        );
        assert_eq!(
            still
                .metadata()
                .get("tokend-reconnect-cause")
                .and_then(|v| v.to_str().ok()),
            Some("ROTATION_LOST")
        );
        assert_eq!(
            still.into_inner().token.unwrap().access_token,
            served.token.unwrap().access_token
        );
        // A caller needing more than is left is told to reconnect.
        let mut long = get(id);
        long.min_ttl_seconds = 1800;
        let err = client.get_token(long).await.unwrap_err();
        assert_eq!(reason(&err), "RECONNECT_REQUIRED");
    }
}
