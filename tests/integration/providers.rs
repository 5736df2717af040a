//! Issue 16: presets whose providers have quirks, each through the real
//! engine and server against the sandbox speaking that dialect: a refresh,
//! a revocation (RECONNECT_REQUIRED, cause REVOKED), a transient failure
//! and a rate limit, each reaching callers as the contract says.

use tokend_proto::v1 as pb;
use tokend_sandbox::{Dialect, Fault, SandboxConfig};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Options, TestServer, background_off, connection, get, metadata, reason};

async fn quirks(dialect: Dialect, provider_toml: &str) {
    let name = format!("{dialect:?}");
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            dialect,
            ..Default::default()
        },
        provider_toml: Some(provider_toml.to_owned()),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;

    // A refresh.
    server.import("ok", "acct-ok", 0).await;
    let token = client
        .get_token(get("ok"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner()
        .token
        .expect("a token");
    assert!(
        server.sandbox.access_token_is_live(&token.access_token),
        "{name}: the refreshed token is the provider's"
    );

    // A transient failure: UNAVAILABLE with RetryInfo, the grant kept.
    server.import("down", "acct-down", 0).await;
    server.sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    let err = client.get_token(get("down")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{name}: {err}");
    assert_eq!(
        metadata(&err, "error_class").as_deref(),
        Some("transient"),
        "{name}"
    );
    assert!(err.get_details_retry_info().is_some(), "{name}");
    assert_eq!(
        connection(&mut client, "down").await.status,
        pb::ConnectionStatus::Active as i32,
        "{name}"
    );

    // A revocation: refused in the dialect's way (an HTTP 200 body for
    // Slack and GitHub), RECONNECT_REQUIRED with cause REVOKED.
    server.import("rev", "acct-rev", 0).await;
    server.sandbox.revoke_account("acct-rev");
    let err = client.get_token(get("rev")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err}");
    assert_eq!(reason(&err), "RECONNECT_REQUIRED", "{name}");
    let revoked = connection(&mut client, "rev").await;
    assert_eq!(
        revoked.reconnect_cause,
        pb::ReconnectCause::Revoked as i32,
        "{name}"
    );

    // A rate limit: UNAVAILABLE, classified rate_limited, with RetryInfo.
    server.import("limited", "acct-429", 0).await;
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 2,
        count: 1,
    });
    let err = client.get_token(get("limited")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{name}: {err}");
    assert_eq!(
        metadata(&err, "error_class").as_deref(),
        Some("rate_limited"),
        "{name}"
    );
    assert!(err.get_details_retry_info().is_some(), "{name}");
}

#[tokio::test]
async fn slack_user_tokens_and_refusals_in_200_bodies() {
    quirks(
        Dialect::Slack,
        "preset = \"slack\"\ntoken_path = \"authed_user\"",
    )
    .await;
}

#[tokio::test]
async fn github_refusals_in_200_bodies() {
    quirks(Dialect::Github, "preset = \"github\"").await;
}

#[tokio::test]
async fn notion_json_bodies_with_basic_auth() {
    quirks(Dialect::Notion, "preset = \"notion\"").await;
}

#[tokio::test]
async fn hubspot_preset_keeps_its_dialect() {
    quirks(
        Dialect::Hubspot,
        "preset = \"hubspot\"\naccount_id_field = \"account_id\"",
    )
    .await;
}
