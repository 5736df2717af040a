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
    quirks_with(
        SandboxConfig {
            dialect,
            ..Default::default()
        },
        provider_toml,
    )
    .await;
}

async fn quirks_with(sandbox: SandboxConfig, provider_toml: &str) {
    let name = format!("{:?} {provider_toml}", sandbox.dialect);
    let server = TestServer::start_with(Options {
        sandbox,
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
async fn google_intuit_and_atlassian_presets() {
    for preset in ["google", "intuit", "atlassian"] {
        quirks(Dialect::Rfc6749, &format!("preset = \"{preset}\"")).await;
    }
}

/// Xero keeps a rotated-out refresh token working for 30 minutes.
#[tokio::test]
async fn xero_preset_with_its_reuse_grace() {
    quirks_with(
        SandboxConfig {
            rotation: tokend_sandbox::Rotation::Grace(1800),
            ..Default::default()
        },
        "preset = \"xero\"",
    )
    .await;
}

/// Zoho refuses a dead grant in an HTTP 200 body and throttles with
/// "Access Denied" and no Retry-After. (The preset's URL names a data
/// centre; here the sandbox's own URL stands in.)
#[tokio::test]
async fn zoho_dialect_200_refusals_and_access_denied_throttling() {
    quirks(
        Dialect::Zoho,
        "dialect = \"zoho\"\nclient_auth = \"client_secret_post\"",
    )
    .await;
}

/// The per-tenant presets, with everything but their host: the sandbox's
/// URL stands in for `https://{subdomain}.zendesk.com`,
/// `https://{shop}.myshopify.com` and `https://accounts.zoho.{dc}` (the
/// templates themselves run through the engine in
/// `per_connection_endpoints_are_filled_from_install_params`).
#[tokio::test]
async fn zendesk_shopify_and_zoho_presets() {
    for (preset, dialect) in [
        ("zendesk", Dialect::Rfc6749),
        ("shopify", Dialect::Rfc6749),
        ("zoho", Dialect::Zoho),
    ] {
        quirks(dialect, &format!("preset = \"{preset}\"")).await;
    }
}

#[tokio::test]
async fn hubspot_preset_keeps_its_dialect() {
    quirks(
        Dialect::Hubspot,
        "preset = \"hubspot\"\naccount_id_field = \"account_id\"",
    )
    .await;
}

/// Issue 16: a client_credentials provider. Install names only the
/// provider and the connection; tokend fetches the first token with the
/// client's own credentials and every later one the same way, with the same
/// singleflight and classification, never asking for a refresh token
/// (which such a connection never has) and never marking it
/// RECONNECT_REQUIRED for lacking one.
#[tokio::test]
async fn client_credentials_connections_need_no_user_and_no_refresh_token() {
    let server = TestServer::start_with(Options {
        provider_toml: Some(
            "grant = \"client_credentials\"\nscopes = [\"reports.read\", \"reports.write\"]".into(),
        ),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    let installed = client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "svc-1".into(),
            ..Default::default()
        })
        .await
        .expect("installed with no grant")
        .into_inner();
    assert!(installed.created);
    let first = client
        .get_token(get("svc-1"))
        .await
        .expect("token")
        .into_inner()
        .token
        .expect("a token");
    assert!(server.sandbox.access_token_is_live(&first.access_token));
    assert_eq!(first.scopes, ["reports.read", "reports.write"]);
    let requests = server.sandbox.stats().token_requests;

    // Renewed with the client's credentials: a new live token.
    let renewed = client
        .force_refresh(crate::harness::force("svc-1"))
        .await
        .expect("renewed")
        .into_inner()
        .token
        .expect("a token");
    assert_ne!(renewed.access_token, first.access_token);
    assert!(server.sandbox.access_token_is_live(&renewed.access_token));
    assert_eq!(server.sandbox.stats().token_requests, requests + 1);

    // The provider refuses the client: tokend's configuration is wrong,
    // not the connection, which stays ACTIVE.
    server.sandbox.inject(Fault::InvalidClient { count: 1 });
    let err = client
        .force_refresh(crate::harness::force("svc-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(reason(&err), "PROVIDER_MISCONFIGURED");
    assert_eq!(
        connection(&mut client, "svc-1").await.status,
        pb::ConnectionStatus::Active as i32
    );

    // A provider of the other kind still needs a grant.
    let no_name = client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_name.code(), Code::InvalidArgument);
    assert_eq!(crate::harness::bad_fields(&no_name), ["connection_id"]);
}

/// A provider of the usual kind refuses an Install without a grant, naming
/// the field.
#[tokio::test]
async fn an_install_without_a_grant_names_the_field() {
    let server = TestServer::start_with(background_off()).await;
    let mut client = server.client().await;
    let err = client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(crate::harness::bad_fields(&err), ["grant"]);
}

/// Issue 16: per-connection endpoints. The provider's token URL is a
/// template; each connection fills it with parameters given at Install,
/// validated (hostname characters only: no scheme, user, port or path can
/// be injected), stored with the connection and used for every refresh,
/// after a restart too.
#[tokio::test]
async fn per_connection_endpoints_are_filled_from_install_params() {
    let mut server = TestServer::start_with(Options {
        // A placeholder that is the whole host takes only listed values.
        provider_toml: Some(
            "token_url = \"http://{host}:SANDBOX_PORT/oauth/token\"\nparam_values = { host = [\"127.0.0.1\", \"localhost\"] }".into(),
        ),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    let install = |id: &str, params: &[(&str, &str)]| {
        let issued = server
            .sandbox
            .issue_tokens(&format!("acct-{id}"), &["read"]);
        let mut request = crate::harness::import_request(id, &format!("acct-{id}"), &issued, 0);
        request.params = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        request
    };
    let installed = client
        .install(install("tenant-a", &[("host", "127.0.0.1")]))
        .await
        .expect("installed")
        .into_inner()
        .connection
        .expect("connection");
    assert_eq!(
        installed.params.get("host").map(String::as_str),
        Some("127.0.0.1")
    );
    client
        .install(install("tenant-b", &[("host", "localhost")]))
        .await
        .expect("installed");
    for id in ["tenant-a", "tenant-b"] {
        let token = client
            .get_token(get(id))
            .await
            .expect(id)
            .into_inner()
            .token
            .expect("token");
        assert!(
            server.sandbox.access_token_is_live(&token.access_token),
            "{id}"
        );
    }

    for (params, why) in [
        (vec![], "missing"),
        (vec![("host", "evil.example/steal")], "a path"),
        (vec![("host", "user@evil.example")], "a user"),
        (vec![("host", "evil.example:443")], "a port"),
        (vec![("host", "-x")], "a leading dash"),
        (vec![("host", "a..b")], "an empty label"),
        (vec![("host", "evil.example")], "an unlisted host"),
        (
            vec![("host", "127.0.0.1"), ("region", "eu")],
            "an unknown name",
        ),
    ] {
        let err = client.install(install("bad", &params)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err}");
        let field = if why == "an unknown name" {
            "params.region"
        } else {
            "params.host"
        };
        assert_eq!(crate::harness::bad_fields(&err), [field], "{why}");
    }

    // Kept with the connection: refreshed at the same endpoint after a restart.
    server.restart().await;
    let mut client = server.client().await;
    client
        .force_refresh(crate::harness::force("tenant-a"))
        .await
        .expect("refreshed after restart");
    assert_eq!(
        connection(&mut client, "tenant-a")
            .await
            .params
            .get("host")
            .map(String::as_str),
        Some("127.0.0.1")
    );
}

/// Issue 16: parameters that differ between refresh and code exchange, a
/// query string, extra headers, RFC 8707 `resource` kept on every request,
/// and per-connection values in any of them, as the provider received them.
#[tokio::test]
async fn request_params_headers_and_query_reach_the_provider() {
    let server = TestServer::start_with(Options {
        provider_toml: Some(
            r#"extra_params = { resource = "https://api.example.com/" }
refresh_params = { scope = "read write" }
exchange_params = { audience = "api" }
query_params = { tenant = "{tenant}" }
headers = { "X-Tenant" = "{tenant}", "X-Api-Version" = "2024-01" }"#
                .into(),
        ),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    let params = |t: &str| [("tenant".to_owned(), t.to_owned())].into_iter().collect();

    let issued = server.sandbox.issue_tokens("acct-r", &["read"]);
    let mut request = crate::harness::import_request("r", "acct-r", &issued, 0);
    request.params = params("t1");
    client.install(request).await.expect("installed");
    client.get_token(get("r")).await.expect("refreshed");
    let seen = server.sandbox.last_token_request().expect("a request");
    let p = |k: &str| seen.params.get(k).map(String::as_str);
    assert_eq!(p("grant_type"), Some("refresh_token"));
    assert_eq!(p("refresh_token"), Some("[redacted]"));
    assert_eq!(p("scope"), Some("read write"));
    assert_eq!(p("resource"), Some("https://api.example.com/"));
    assert_eq!(p("audience"), None, "exchange-only");
    assert_eq!(seen.query.get("tenant").map(String::as_str), Some("t1"));
    assert_eq!(seen.headers.get("x-tenant").map(String::as_str), Some("t1"));
    assert_eq!(
        seen.headers.get("x-api-version").map(String::as_str),
        Some("2024-01")
    );

    let code = server.sandbox.issue_code("acct-c", &["read"], None, None);
    client
        .install(pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: "c".into(),
            account_id: "acct-c".into(),
            grant: Some(pb::install_request::Grant::AuthorizationCode(
                pb::AuthorizationCode {
                    code,
                    redirect_uri: String::new(),
                    code_verifier: String::new(),
                },
            )),
            replace: false,
            params: params("t2"),
            force: false,
        })
        .await
        .expect("code exchanged");
    let seen = server.sandbox.last_token_request().expect("a request");
    let p = |k: &str| seen.params.get(k).map(String::as_str);
    assert_eq!(p("grant_type"), Some("authorization_code"));
    assert_eq!(p("audience"), Some("api"));
    assert_eq!(p("scope"), None, "refresh-only");
    assert_eq!(p("resource"), Some("https://api.example.com/"));
    assert_eq!(seen.query.get("tenant").map(String::as_str), Some("t2"));
    assert_eq!(seen.headers.get("x-tenant").map(String::as_str), Some("t2"));
}

/// Issue 16: `revoke_on_delete` revokes a deleted connection's grant at the
/// provider (RFC 7009); without it, deleting leaves the provider alone.
#[tokio::test]
async fn deleting_revokes_the_grant_when_configured() {
    for revoke in [true, false] {
        let toml = if revoke {
            "revocation_url = \"http://127.0.0.1:SANDBOX_PORT/oauth/revoke\"\nrevoke_on_delete = true"
        } else {
            "revocation_url = \"http://127.0.0.1:SANDBOX_PORT/oauth/revoke\""
        };
        let server = TestServer::start_with(Options {
            provider_toml: Some(toml.into()),
            ..background_off()
        })
        .await;
        let mut client = server.client().await;
        let (_, issued) = server.import("gone", "acct-gone", 1800).await;
        client
            .delete_connection(pb::DeleteConnectionRequest {
                connection_id: "gone".into(),
                force: false,
            })
            .await
            .expect("deleted");
        // Waited for when expected; otherwise given half a second to appear.
        let wait = std::time::Duration::from_millis(if revoke { 5000 } else { 500 });
        let revoked =
            crate::harness::eventually(wait, || server.sandbox.stats().revocations == 1).await;
        assert_eq!(revoked, revoke, "revoke_on_delete = {revoke}");
        assert_eq!(
            server.sandbox.access_token_is_live(&issued.access_token),
            !revoke,
            "the grant ends with the revocation"
        );
    }
}

/// Issue 16: the microsoft preset against the sandbox speaking Microsoft's
/// dialect (AADSTS numbers): the common quirks, and a grant that needs the
/// user back says why: consent (AADSTS65001) or an interactive sign-in
/// (AADSTS50076) required, each its own RECONNECT_REQUIRED cause.
#[tokio::test]
async fn microsoft_aadsts_codes_and_user_action_causes() {
    quirks(Dialect::Microsoft, "preset = \"microsoft\"").await;
    for (fault, cause, code) in [
        (
            Fault::ConsentRequired { count: 1 },
            pb::ReconnectCause::ConsentRequired,
            "CONSENT_REQUIRED",
        ),
        (
            Fault::InteractionRequired { count: 1 },
            pb::ReconnectCause::InteractionRequired,
            "INTERACTION_REQUIRED",
        ),
    ] {
        let server = TestServer::start_with(Options {
            sandbox: SandboxConfig {
                dialect: Dialect::Microsoft,
                ..Default::default()
            },
            provider_toml: Some("preset = \"microsoft\"".into()),
            ..background_off()
        })
        .await;
        let mut client = server.client().await;
        server.import("user", "acct-user", 0).await;
        server.sandbox.inject(fault);
        let err = client.get_token(get("user")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{code}: {err}");
        assert_eq!(reason(&err), "RECONNECT_REQUIRED", "{code}");
        assert_eq!(metadata(&err, "cause").as_deref(), Some(code));
        assert_eq!(
            connection(&mut client, "user").await.reconnect_cause,
            cause as i32,
            "{code}"
        );
    }
}

/// Issue 16: the salesforce preset against the sandbox speaking Salesforce:
/// answers without `expires_in` get the preset's 2-hour lifetime, the
/// refresh token is kept (no rotation), and `instance_url` is kept as
/// connection metadata.
#[tokio::test]
async fn salesforce_without_expires_in_keeps_instance_url() {
    let sandbox = SandboxConfig {
        dialect: Dialect::Salesforce,
        rotation: tokend_sandbox::Rotation::Reuse,
        ..Default::default()
    };
    quirks_with(sandbox.clone(), "preset = \"salesforce\"").await;
    let server = TestServer::start_with(Options {
        sandbox,
        provider_toml: Some("preset = \"salesforce\"".into()),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    server.import("org", "00dorg", 0).await;
    let token = client
        .get_token(get("org"))
        .await
        .expect("refreshed")
        .into_inner()
        .token
        .expect("token");
    let ttl = token.expires_in_seconds;
    assert!((7100..=7200).contains(&ttl), "the preset's lifetime: {ttl}");
    let c = connection(&mut client, "org").await;
    assert_eq!(
        c.metadata.get("instance_url").map(String::as_str),
        Some("https://00dorg.my.salesforce.com")
    );
}

/// Issue 16: Facebook renews a long-lived token by exchanging the current
/// access token (`fb_exchange_token`); there is no refresh token. Its errors
/// are nested objects: code 190 is a dead token (RECONNECT_REQUIRED), code 4
/// throttling.
#[tokio::test]
async fn facebook_renews_by_exchanging_the_access_token() {
    quirks(Dialect::Facebook, "preset = \"facebook\"").await;
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            dialect: Dialect::Facebook,
            ..Default::default()
        },
        provider_toml: Some("preset = \"facebook\"".into()),
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    let (_, issued) = server.import("page", "acct-page", 0).await;
    let token = client
        .get_token(get("page"))
        .await
        .expect("exchanged")
        .into_inner()
        .token
        .expect("token");
    assert_ne!(token.access_token, issued.access_token);
    assert!(server.sandbox.access_token_is_live(&token.access_token));
    let seen = server.sandbox.last_token_request().expect("seen");
    assert_eq!(
        seen.params.get("grant_type").map(String::as_str),
        Some("fb_exchange_token")
    );
    assert!(seen.params.contains_key("fb_exchange_token"));
    assert!(!seen.params.contains_key("refresh_token"));
}
