//! The error vocabulary, each kind produced by a real broker (or by the
//! client's own deadline and retries), and the cache eviction rules.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokend_client::{Client, Error, EventFilter, Install, Rejected};
use tokend_sandbox::Fault;
use tokend_server::auth::{Grant, IdentityConfig, Permission, sha256_hex};
use tonic::Code;

use crate::broker::{Broker, closed_port};

/// NotFound, InvalidArgument (with its field), AlreadyExists and
/// ReconnectRequired (cause REVOKED), each with its gRPC code and reason.
#[tokio::test]
async fn the_brokers_refusals_come_back_as_their_kinds() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    broker.import(&tokend, "kinds", "acct-kinds").await;

    let e = tokend
        .get_token("missing", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { connection_id } if connection_id == "missing"),
        "{e:?}"
    );
    assert_eq!(
        (e.code(), e.reason()),
        (Some(Code::NotFound), Some("CONNECTION_NOT_FOUND"))
    );

    let e = tokend
        .get_token("not valid", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { field, reason, .. } if field == "connection_id" && reason == "INVALID_ARGUMENT"),
        "{e:?}"
    );
    assert_eq!(e.code(), Some(Code::InvalidArgument));

    // The same id for another account, without `replace`.
    let issued = broker.sandbox.issue_tokens("acct-other", &["crm"]);
    let e = tokend
        .install(
            Install::new("sandbox")
                .connection_id("kinds")
                .account_id("acct-other")
                .access_token(issued.access_token.clone())
                .refresh_token(issued.refresh_token.clone()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::AlreadyExists { connection_id, .. } if connection_id == "kinds"),
        "{e:?}"
    );
    assert_eq!(
        (e.code(), e.reason()),
        (Some(Code::AlreadyExists), Some("CONNECTION_ID_TAKEN"))
    );
    assert!(!e.to_string().contains(&issued.access_token));

    broker.sandbox.revoke_account("acct-kinds");
    let e = tokend
        .force_refresh("kinds", Rejected::Unconditional)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::ReconnectRequired { connection_id, cause, provider_error, .. }
            if connection_id == "kinds" && cause == "REVOKED" && provider_error == "invalid_grant"),
        "{e:?}"
    );
    assert_eq!(
        (e.code(), e.reason()),
        (Some(Code::FailedPrecondition), Some("RECONNECT_REQUIRED"))
    );
}

/// Unauthenticated without a key, PermissionDenied outside the key's grants.
#[tokio::test]
async fn callers_without_a_key_or_a_grant_are_told_which() {
    const KEY: &str = "contract-key-0123456789";
    let broker = Broker::start_with(vec![IdentityConfig {
        name: "contract".into(),
        api_key_sha256: Some(sha256_hex(KEY.as_bytes())),
        cert_sha256: None,
        grants: vec![Grant {
            permissions: vec![Permission::Tokens],
            connections: vec!["mine-*".into()],
        }],
        requests_per_second: 1000,
        max_watch_streams: 4,
    }])
    .await;
    let anonymous = broker.client().await;
    let e = anonymous
        .get_token("mine-1", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let keyed = Client::builder(broker.endpoint())
        .api_key(KEY)
        .connect()
        .await
        .unwrap();
    let e = keyed
        .get_token("theirs-1", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(!e.to_string().contains(KEY));
}

/// The client's own deadline: a broker stuck on a slow provider is
/// DeadlineExceeded after the timeout, not retried.
#[tokio::test]
async fn a_call_past_the_deadline_is_deadline_exceeded() {
    let broker = Broker::start().await;
    let setup = broker.client().await;
    broker.import(&setup, "slow", "acct-slow").await;
    broker.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(3),
        count: 1,
    });
    let tokend = Client::builder(broker.endpoint())
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let e = tokend
        .force_refresh("slow", Rejected::Unconditional)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::DeadlineExceeded { .. }), "{e:?}");
    assert_eq!(e.code(), Some(Code::DeadlineExceeded));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "one attempt of 500 ms, not retried: {took:?}"
    );
}

/// A broker that cannot be reached: retried with backoff as configured
/// (100 ms, then 200 ms...), then Transport naming the endpoint.
#[tokio::test]
async fn an_unreachable_broker_is_retried_then_transport() {
    let addr = closed_port();
    for (retries, at_least) in [(0, Duration::ZERO), (3, Duration::from_millis(700))] {
        let tokend = Client::builder(format!("http://{addr}"))
            .transport_retries(retries)
            .connect()
            .await
            .unwrap();
        let started = Instant::now();
        let e = tokend.get_token("x", Duration::ZERO).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(&e, Error::Transport { message } if message.contains(&addr.to_string())),
            "{e:?}"
        );
        assert_eq!(e.code(), Some(Code::Unavailable));
        assert!(
            took >= at_least && took < at_least + Duration::from_secs(2),
            "{retries} retries took {took:?}"
        );
    }
}

/// UNAVAILABLE from the broker, with RetryInfo, is surfaced at once as
/// Unavailable with retry_after: the client does not retry it.
#[tokio::test]
async fn the_brokers_unavailable_is_not_retried() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    broker
        .import_expiring(&tokend, "down", "acct-down", Duration::ZERO)
        .await;
    broker.sandbox.inject(Fault::Status {
        status: 503,
        count: 100,
    });
    let e = tokend.get_token("down", Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unavailable { retry_after: Some(_), reason, .. } if reason == "PROVIDER_UNAVAILABLE"),
        "{e:?}"
    );
    // The audit line is written as the call ends; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.audited("GetToken", "down"), 1, "asked once");
}

/// A NotFound or ReconnectRequired answer drops the connection's cached
/// token; so does a RECONNECT_REQUIRED or DELETED event on `watch_all`.
#[tokio::test]
async fn gone_connections_leave_the_cache() {
    let broker = Broker::start().await;
    let tokend = broker.client().await;
    let other = broker.client().await;
    for (id, account) in [
        ("gone-deleted", "acct-gd"),
        ("gone-revoked", "acct-gr"),
        ("ev-revoked", "acct-er"),
        ("ev-deleted", "acct-ed"),
    ] {
        broker.import(&tokend, id, account).await;
        tokend.token(id).await.expect("cached");
    }
    assert_eq!(tokend.cached_connections(), 4);

    // Answers.
    other.delete_connection("gone-deleted").await.unwrap();
    let e = tokend
        .get_token("gone-deleted", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(tokend.cached_connections(), 3);
    broker.sandbox.revoke_account("acct-gr");
    let e = tokend
        .force_refresh("gone-revoked", Rejected::Unconditional)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReconnectRequired { .. }), "{e:?}");
    assert_eq!(tokend.cached_connections(), 2);

    // Events, made by another client's calls.
    let mut events = tokend.watch_all(EventFilter::default().connection_id_prefix("ev-"));
    events.started().await.expect("stream opens");
    broker.sandbox.revoke_account("acct-er");
    other
        .force_refresh("ev-revoked", Rejected::Unconditional)
        .await
        .unwrap_err();
    other.delete_connection("ev-deleted").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .expect("the stream goes on")
            .expect("an event, not an error");
        seen.push(event.event_type);
    }
    assert_eq!(
        tokend.cached_connections(),
        0,
        "events {seen:?} emptied the cache"
    );
    let e = tokend.token("ev-revoked").await.unwrap_err();
    assert!(matches!(e, Error::ReconnectRequired { .. }), "{e:?}");
}
