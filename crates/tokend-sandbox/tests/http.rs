//! End-to-end tests of the sandbox provider over real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokend_sandbox::{AccountStats, Dialect, Fault, Rotation, Sandbox, SandboxConfig, Stats};

const CLIENT_ID: &str = "sandbox-client";
const CLIENT_SECRET: &str = "sandbox-secret";

async fn start(config: SandboxConfig) -> (Sandbox, Client) {
    let sandbox = Sandbox::start(config).await.expect("sandbox starts");
    (sandbox, Client::new())
}

async fn start_default() -> (Sandbox, Client) {
    start(SandboxConfig::default()).await
}

/// A decoded HTTP answer.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body readable");
        Self {
            status,
            headers,
            text,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.text))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// POSTs a token request authenticating with form fields.
async fn token(client: &Client, sandbox: &Sandbox, params: &[(&str, &str)]) -> Answer {
    let mut form = vec![("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)];
    form.extend_from_slice(params);
    let response = client
        .post(sandbox.token_url())
        .form(&form)
        .send()
        .await
        .expect("token request sent");
    Answer::from(response).await
}

async fn refresh(client: &Client, sandbox: &Sandbox, refresh_token: &str) -> Answer {
    token(
        client,
        sandbox,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn api_me(client: &Client, sandbox: &Sandbox, access_token: &str) -> Answer {
    let response = client
        .get(sandbox.api_url())
        .bearer_auth(access_token)
        .send()
        .await
        .expect("api request sent");
    Answer::from(response).await
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[tokio::test]
async fn accessors_describe_the_listener() {
    let (sandbox, _) = start_default().await;
    let port = sandbox.addr().port();
    assert!(sandbox.addr().ip().is_loopback());
    assert_eq!(sandbox.base_url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(
        sandbox.token_url(),
        format!("http://127.0.0.1:{port}/oauth/token")
    );
    assert_eq!(sandbox.api_url(), format!("http://127.0.0.1:{port}/api/me"));
    let config = sandbox.config();
    assert_eq!(config.client_id, CLIENT_ID);
    assert_eq!(config.access_token_lifetime, Duration::from_secs(1800));
    sandbox.set_rotation(Rotation::Reuse);
    sandbox.set_access_token_lifetime(Duration::from_secs(60));
    let config = sandbox.config();
    assert_eq!(config.rotation, Rotation::Reuse);
    assert_eq!(config.access_token_lifetime, Duration::from_secs(60));
}

#[tokio::test]
async fn code_flow_with_pkce_and_redirect_check() {
    let (sandbox, client) = start_default().await;
    let verifier = "a-sufficiently-long-pkce-code-verifier-0123456789";
    let challenge = s256(verifier);
    let redirect = "http://localhost:8080/callback";
    let new_code = || {
        sandbox.issue_code(
            "portal-1",
            &["crm.read", "crm.write"],
            Some(redirect),
            Some(&challenge),
        )
    };

    // Each failed attempt consumes its code, so every case gets a fresh one.
    let rejected = [
        vec![
            ("redirect_uri", "http://evil.example/cb"),
            ("code_verifier", verifier),
        ],
        vec![("code_verifier", verifier)],
        vec![("redirect_uri", redirect)],
        vec![
            ("redirect_uri", redirect),
            ("code_verifier", "wrong-verifier"),
        ],
    ];
    for extra in &rejected {
        let code = new_code();
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
        ];
        params.extend_from_slice(extra);
        let answer = token(&client, &sandbox, &params).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{extra:?}");
        assert_eq!(answer.error(), "invalid_grant");
        assert!(!answer.text.contains(&code), "error must not echo the code");
        assert!(!answer.text.contains(verifier));
    }

    let code = new_code();
    assert!(code.starts_with("sbx_code_"));
    let params = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
    ];
    let answer = token(&client, &sandbox, &params).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let body = answer.json();
    let access = body["access_token"].as_str().expect("access_token");
    let refresh_token = body["refresh_token"].as_str().expect("refresh_token");
    assert!(access.starts_with("sbx_at_") && access.len() >= 7 + 43);
    assert!(refresh_token.starts_with("sbx_rt_") && refresh_token.len() >= 7 + 43);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 1800);
    assert_eq!(body["scope"], "crm.read crm.write");
    assert_eq!(body["account_id"], "portal-1");

    // Codes are single-use.
    let again = token(&client, &sandbox, &params).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.error(), "invalid_grant");

    let me = api_me(&client, &sandbox, access).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        me.json(),
        json!({"account_id": "portal-1", "scopes": ["crm.read", "crm.write"]})
    );

    let stats = sandbox.stats();
    assert_eq!(stats.code_grants_ok, 1);
    assert_eq!(stats.invalid_grant, 5);
    assert_eq!(stats.token_requests, 6);
    assert_eq!(stats.api_calls_ok, 1);
}

#[tokio::test]
async fn code_without_redirect_or_pkce_needs_neither() {
    let (sandbox, client) = start_default().await;
    let code = sandbox.issue_code("portal-2", &[], None, None);
    let answer = token(
        &client,
        &sandbox,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://anything/cb"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.json()["scope"], "");
}

#[tokio::test]
async fn strict_rotation_kills_the_used_refresh_token() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-3", &["a"]);
    assert_eq!(issued.expires_in, 1800);
    assert_eq!(issued.scopes, ["a"]);
    assert_eq!(issued.account_id, "portal-3");

    let first = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let body = first.json();
    let rotated = body["refresh_token"]
        .as_str()
        .expect("strict rotation returns a new token");
    assert_ne!(rotated, issued.refresh_token);
    assert_ne!(body["access_token"], issued.access_token.as_str());

    let reused = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.error(), "invalid_grant");
    assert!(!reused.text.contains(&issued.refresh_token));

    let second = refresh(&client, &sandbox, rotated).await;
    assert_eq!(second.status, StatusCode::OK);

    assert_eq!(
        sandbox.account_stats("portal-3"),
        AccountStats {
            refresh_requests: 3,
            refresh_grants_ok: 2,
            invalid_grant: 1,
        }
    );
    let stats = sandbox.stats();
    assert_eq!(stats.refresh_grants_ok, 2);
    assert_eq!(stats.invalid_grant, 1);
    assert_eq!(stats.token_requests, 3);
    assert_eq!(sandbox.account_stats("nobody"), AccountStats::default());

    // An unknown token is counted globally only: it belongs to no account.
    let unknown = refresh(&client, &sandbox, "sbx_rt_not-a-real-token").await;
    assert_eq!(unknown.error(), "invalid_grant");
    assert_eq!(sandbox.stats().invalid_grant, 2);
}

#[tokio::test]
async fn reuse_mode_omits_refresh_token_and_keeps_the_old_one() {
    let config = SandboxConfig {
        rotation: Rotation::Reuse,
        ..SandboxConfig::default()
    };
    let (sandbox, client) = start(config).await;
    let issued = sandbox.issue_tokens("portal-4", &["x"]);
    for _ in 0..3 {
        let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let body = answer.json();
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert!(body["access_token"].as_str().is_some());
    }
    // Switching to strict at run time rotates on the next refresh.
    sandbox.set_rotation(Rotation::Strict);
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert!(answer.json()["refresh_token"].as_str().is_some());
    let dead = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(dead.error(), "invalid_grant");
    assert_eq!(sandbox.account_stats("portal-4").refresh_grants_ok, 4);
}

#[tokio::test]
async fn hubspot_style_refresh_with_redirect_uri_is_accepted() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-5", &[]);
    let answer = token(
        &client,
        &sandbox,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &issued.refresh_token),
            ("redirect_uri", "https://app.example/oauth/callback"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn revoked_account_gets_invalid_grant_and_401() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-6", &["a"]);
    let other = sandbox.issue_tokens("portal-7", &["a"]);
    let pending_code = sandbox.issue_code("portal-6", &[], None, None);
    assert!(sandbox.access_token_is_live(&issued.access_token));
    assert_eq!(
        api_me(&client, &sandbox, &issued.access_token).await.status,
        StatusCode::OK
    );

    sandbox.revoke_account("portal-6");

    assert!(!sandbox.access_token_is_live(&issued.access_token));
    let me = api_me(&client, &sandbox, &issued.access_token).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.json(), json!({"error": "invalid_token"}));
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), "invalid_grant");
    let code = token(
        &client,
        &sandbox,
        &[
            ("grant_type", "authorization_code"),
            ("code", &pending_code),
        ],
    )
    .await;
    assert_eq!(code.error(), "invalid_grant");

    // Other accounts are untouched.
    assert!(sandbox.access_token_is_live(&other.access_token));
    assert_eq!(
        refresh(&client, &sandbox, &other.refresh_token)
            .await
            .status,
        StatusCode::OK
    );

    let stats = sandbox.account_stats("portal-6");
    assert_eq!((stats.refresh_requests, stats.invalid_grant), (1, 1));
    let global = sandbox.stats();
    assert_eq!((global.api_calls_ok, global.api_calls_rejected), (1, 1));

    // A reinstall mints live tokens again.
    let reinstalled = sandbox.issue_tokens("portal-6", &["a"]);
    assert_eq!(
        refresh(&client, &sandbox, &reinstalled.refresh_token)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn access_tokens_expire_on_the_sandbox_clock() {
    let (sandbox, client) = start_default().await;
    sandbox.set_access_token_lifetime(Duration::from_millis(40));
    let issued = sandbox.issue_tokens("portal-8", &[]);
    assert_eq!(issued.expires_in, 0, "whole seconds");
    assert!(sandbox.access_token_is_live(&issued.access_token));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!sandbox.access_token_is_live(&issued.access_token));
    assert_eq!(
        api_me(&client, &sandbox, &issued.access_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The refresh token outlives the access token.
    sandbox.set_access_token_lifetime(Duration::from_secs(90));
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(answer.json()["expires_in"], 90);
}

#[tokio::test]
async fn status_fault_counts_down_then_normal_handling_resumes() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-9", &[]);
    sandbox.inject(Fault::Status {
        status: 503,
        count: 2,
    });
    for _ in 0..2 {
        let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.error(), "server_error");
    }
    // The faulted requests never reached the grant, so the token is still good.
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(answer.status, StatusCode::OK);
    let stats = sandbox.stats();
    assert_eq!((stats.token_requests, stats.faults_served), (3, 2));
    assert_eq!(stats.refresh_grants_ok, 1);
}

#[tokio::test]
async fn rate_limited_fault_sets_retry_after() {
    let (sandbox, client) = start_default().await;
    sandbox.inject(Fault::RateLimited {
        retry_after_secs: 7,
        count: 1,
    });
    let answer = refresh(&client, &sandbox, "sbx_rt_whatever").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert!(!answer.error().is_empty());
}

#[tokio::test]
async fn latency_fault_delays_then_handles_normally() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-10", &[]);
    let delay = Duration::from_millis(150);
    sandbox.inject(Fault::Latency { delay, count: 1 });
    let started = Instant::now();
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(sandbox.stats().faults_served, 1);
}

#[tokio::test]
async fn malformed_body_fault_is_200_with_invalid_json() {
    let (sandbox, client) = start_default().await;
    sandbox.inject(Fault::MalformedBody { count: 1 });
    let answer = refresh(&client, &sandbox, "sbx_rt_whatever").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&answer.text).is_err());
}

#[tokio::test]
async fn invalid_client_fault_answers_401_despite_good_credentials() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-11", &[]);
    sandbox.inject(Fault::InvalidClient { count: 1 });
    let answer = refresh(&client, &sandbox, &issued.refresh_token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error(), "invalid_client");
    assert_eq!(
        refresh(&client, &sandbox, &issued.refresh_token)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn faults_are_fifo_and_clearable() {
    let (sandbox, client) = start_default().await;
    sandbox.inject(Fault::InvalidClient { count: 1 });
    sandbox.inject(Fault::Status {
        status: 502,
        count: 1,
    });
    sandbox.inject(Fault::MalformedBody { count: 5 });
    let first = refresh(&client, &sandbox, "x").await;
    let second = refresh(&client, &sandbox, "x").await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(second.status, StatusCode::BAD_GATEWAY);
    sandbox.clear_faults();
    let third = refresh(&client, &sandbox, "x").await;
    assert_eq!(third.status, StatusCode::BAD_REQUEST);
    assert_eq!(third.error(), "invalid_grant");
}

#[tokio::test]
async fn basic_and_post_client_authentication() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-12", &[]);

    let basic = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", issued.refresh_token.as_str()),
        ])
        .send()
        .await
        .expect("sent");
    let basic = Answer::from(basic).await;
    assert_eq!(basic.status, StatusCode::OK, "{}", basic.text);
    let rotated = basic.json()["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();

    let post = refresh(&client, &sandbox, &rotated).await;
    assert_eq!(post.status, StatusCode::OK);

    let wrong_basic = client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some("not-the-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("sent");
    let wrong_basic = Answer::from(wrong_basic).await;
    assert_eq!(wrong_basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_basic.error(), "invalid_client");
    assert!(wrong_basic.header("www-authenticate").is_some());
    assert!(!wrong_basic.text.contains("not-the-secret"));

    let wrong_post = client
        .post(sandbox.token_url())
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", "nope"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
        ])
        .send()
        .await
        .expect("sent");
    let wrong_post = Answer::from(wrong_post).await;
    assert_eq!(wrong_post.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_post.error(), "invalid_client");

    let anonymous = client
        .post(sandbox.token_url())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("sent");
    let anonymous = Answer::from(anonymous).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.error(), "invalid_client");

    let unknown_client = client
        .post(sandbox.token_url())
        .basic_auth("someone-else", Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown_client.status(), StatusCode::UNAUTHORIZED);

    // Client authentication is checked before the grant: no invalid_grant was counted.
    assert_eq!(sandbox.stats().invalid_grant, 0);
}

#[tokio::test]
async fn hubspot_dialect_error_bodies() {
    let config = SandboxConfig {
        dialect: Dialect::Hubspot,
        ..SandboxConfig::default()
    };
    let (sandbox, client) = start(config).await;

    let check = |answer: &Answer, status: StatusCode, hubspot_status: &str| {
        assert_eq!(answer.status, status, "{}", answer.text);
        let body = answer.json();
        assert_eq!(body["status"], hubspot_status, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["category"].as_str().is_some_and(|c| !c.is_empty()));
        let correlation = body["correlationId"].as_str().expect("correlationId");
        assert_eq!(correlation.len(), 36);
        assert!(body.get("error").is_none());
    };

    let bad_refresh = refresh(&client, &sandbox, "sbx_rt_unknown").await;
    check(&bad_refresh, StatusCode::BAD_REQUEST, "BAD_REFRESH_TOKEN");
    assert!(!bad_refresh.text.contains("sbx_rt_unknown"));

    let bad_code = token(
        &client,
        &sandbox,
        &[
            ("grant_type", "authorization_code"),
            ("code", "sbx_code_nope"),
        ],
    )
    .await;
    check(&bad_code, StatusCode::BAD_REQUEST, "BAD_AUTH_CODE");

    let missing_field = token(&client, &sandbox, &[("grant_type", "refresh_token")]).await;
    check(&missing_field, StatusCode::BAD_REQUEST, "BAD_REQUEST");

    sandbox.inject(Fault::InvalidClient { count: 1 });
    let bad_client = refresh(&client, &sandbox, "x").await;
    check(&bad_client, StatusCode::UNAUTHORIZED, "BAD_CLIENT_ID");

    sandbox.inject(Fault::Status {
        status: 500,
        count: 1,
    });
    let server = refresh(&client, &sandbox, "x").await;
    check(&server, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");

    sandbox.inject(Fault::RateLimited {
        retry_after_secs: 1,
        count: 1,
    });
    let limited = refresh(&client, &sandbox, "x").await;
    check(&limited, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITS");
    assert_eq!(limited.header("retry-after"), Some("1"));

    // Two errors never share a correlation id.
    assert_ne!(
        bad_refresh.json()["correlationId"],
        bad_code.json()["correlationId"]
    );
}

#[tokio::test]
async fn grant_type_and_required_fields() {
    let (sandbox, client) = start_default().await;
    let missing = token(&client, &sandbox, &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.error(), "unsupported_grant_type");
    let other = token(&client, &sandbox, &[("grant_type", "password")]).await;
    assert_eq!(other.error(), "unsupported_grant_type");
    let no_code = token(&client, &sandbox, &[("grant_type", "authorization_code")]).await;
    assert_eq!(no_code.error(), "invalid_request");
    let empty_token = token(
        &client,
        &sandbox,
        &[("grant_type", "refresh_token"), ("refresh_token", "")],
    )
    .await;
    assert_eq!(empty_token.error(), "invalid_request");
}

#[tokio::test]
async fn garbage_input_gets_4xx_and_never_kills_the_server() {
    let (sandbox, client) = start_default().await;
    let url = sandbox.token_url();

    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no body", client.post(&url)),
        (
            "json body",
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"grant_type":"refresh_token"}"#),
        ),
        (
            "binary form",
            client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(vec![0xff, 0xfe, b'=', 0x00, b'&', b'%', b'z']),
        ),
        (
            "repeated parameter",
            client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=refresh_token&grant_type=refresh_token"),
        ),
        (
            "garbage basic",
            client
                .post(&url)
                .header("authorization", "Basic %%%not-base64")
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]),
        ),
        (
            "bearer instead of basic",
            client
                .post(&url)
                .header("authorization", "Bearer sbx_at_x")
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]),
        ),
        (
            "basic without colon",
            client
                .post(&url)
                .header("authorization", "Basic c2FuZGJveC1jbGllbnQ=")
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]),
        ),
        ("wrong method", client.get(&url)),
        (
            "unknown path",
            client.get(format!("{}/nope", sandbox.base_url())),
        ),
    ];
    for (name, request) in cases {
        let response = request.send().await.expect(name);
        let status = response.status();
        assert!(status.is_client_error(), "{name}: {status}");
        assert!(response.headers().contains_key("x-request-id"), "{name}");
    }

    let huge = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&pad={}",
            "a".repeat(64 * 1024)
        ))
        .send()
        .await
        .expect("huge body sent");
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let huge = Answer::from(huge).await;
    assert_eq!(huge.error(), "invalid_request");

    let api = sandbox.api_url();
    for header in [
        None,
        Some("Bearer"),
        Some("Bearer   "),
        Some("Basic abc"),
        Some("sbx_at_x"),
    ] {
        let mut request = client.get(&api);
        if let Some(value) = header {
            request = request.header("authorization", value);
        }
        let answer = Answer::from(request.send().await.expect("sent")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(answer.error(), "invalid_token");
    }
    assert_eq!(sandbox.stats().api_calls_rejected, 5);

    let control = format!("{}/sandbox/faults", sandbox.base_url());
    for body in [
        "not json",
        r#"{"kind":"earthquake","count":1}"#,
        r#"{"kind":"status","status":200}"#,
        r#"{"kind":"latency"}"#,
        "[]",
    ] {
        let response = client
            .post(&control)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("sent");
        assert!(response.status().is_client_error(), "{body}");
    }
    let no_type = client.post(&control).body("{}").send().await.expect("sent");
    assert!(no_type.status().is_client_error());
    let empty_account = client
        .post(format!("{}/sandbox/tokens", sandbox.base_url()))
        .json(&json!({"account_id": ""}))
        .send()
        .await
        .expect("sent");
    assert_eq!(empty_account.status(), StatusCode::BAD_REQUEST);

    // Still serving after all of that.
    let issued = sandbox.issue_tokens("survivor", &[]);
    assert_eq!(
        refresh(&client, &sandbox, &issued.refresh_token)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let (sandbox, client) = start_default().await;
    let issued = sandbox.issue_tokens("portal-13", &[]);
    let ok = refresh(&client, &sandbox, &issued.refresh_token).await;
    let err = refresh(&client, &sandbox, &issued.refresh_token).await;
    let me = api_me(&client, &sandbox, "nope").await;
    let ids: Vec<&str> = [&ok, &err, &me]
        .iter()
        .map(|a| a.header("x-request-id").expect("x-request-id"))
        .collect();
    assert!(ids.iter().all(|id| !id.is_empty()));
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn control_endpoints_drive_the_provider() {
    let (sandbox, client) = start_default().await;
    let base = sandbox.base_url();

    let code: Value = client
        .post(format!("{base}/sandbox/codes"))
        .json(&json!({"account_id": "curl-1", "scopes": ["a", "b"], "redirect_uri": null}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let code = code["code"].as_str().expect("code").to_owned();
    let exchanged = token(
        &client,
        &sandbox,
        &[("grant_type", "authorization_code"), ("code", &code)],
    )
    .await;
    assert_eq!(exchanged.status, StatusCode::OK);
    assert_eq!(exchanged.json()["scope"], "a b");

    let tokens: tokend_sandbox::IssuedTokens = client
        .post(format!("{base}/sandbox/tokens"))
        .json(&json!({"account_id": "curl-2", "scopes": ["c"]}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("IssuedTokens json");
    assert_eq!(tokens.account_id, "curl-2");
    assert!(sandbox.access_token_is_live(&tokens.access_token));

    for fault in [
        json!({"kind": "status", "status": 503, "count": 1}),
        json!({"kind": "rate_limited", "retry_after_secs": 5, "count": 1}),
        json!({"kind": "latency", "delay_ms": 1, "count": 1}),
        json!({"kind": "malformed_body", "count": 1}),
        json!({"kind": "invalid_client", "count": 1}),
    ] {
        let response = client
            .post(format!("{base}/sandbox/faults"))
            .json(&fault)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{fault}");
    }
    let statuses = [503, 429, 200, 200, 401];
    for (i, expected) in statuses.into_iter().enumerate() {
        let answer = refresh(&client, &sandbox, &tokens.refresh_token).await;
        assert_eq!(
            answer.status.as_u16(),
            expected,
            "fault #{i}: {}",
            answer.text
        );
    }
    // The latency fault refreshed for real (strict rotation): the original token is now used.
    assert_eq!(
        refresh(&client, &sandbox, &tokens.refresh_token)
            .await
            .error(),
        "invalid_grant"
    );

    let revoked = client
        .post(format!("{base}/sandbox/revoke"))
        .json(&json!({"account_id": "curl-2"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert!(!sandbox.access_token_is_live(&tokens.access_token));

    let stats: Stats = client
        .get(format!("{base}/sandbox/stats"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("Stats json");
    assert_eq!(stats, sandbox.stats());
    assert_eq!(stats.faults_served, 5);
    // The operator's revoke counts as one (it read 0 before).
    assert_eq!(stats.revocations, 1);

    let account: AccountStats = client
        .get(format!("{base}/sandbox/accounts/curl-2/stats"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("AccountStats json");
    assert_eq!(account, sandbox.account_stats("curl-2"));
    assert_eq!(account.refresh_grants_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_are_consistent() {
    let (sandbox, client) = start_default().await;
    let sandbox = std::sync::Arc::new(sandbox);

    // Distinct tokens refreshed in parallel all succeed.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let issued = sandbox.issue_tokens(&format!("bulk-{}", i % 10), &["s"]);
        let (sandbox, client) = (sandbox.clone(), client.clone());
        tasks.spawn(async move {
            refresh(&client, &sandbox, &issued.refresh_token)
                .await
                .status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::OK);
    }

    // One strict token raced by many requests wins exactly once.
    let contested = sandbox.issue_tokens("contested", &[]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (sandbox, client, token) = (
            sandbox.clone(),
            client.clone(),
            contested.refresh_token.clone(),
        );
        tasks.spawn(async move { refresh(&client, &sandbox, &token).await.status });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        if status.expect("task") == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        sandbox.account_stats("contested"),
        AccountStats {
            refresh_requests: 32,
            refresh_grants_ok: 1,
            invalid_grant: 31,
        }
    );
    assert_eq!(sandbox.stats().refresh_grants_ok, 201);
}

#[tokio::test]
async fn start_on_uses_the_given_listener_and_shutdown_stops_serving() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sandbox = Sandbox::start_on(listener, SandboxConfig::default())
        .await
        .expect("start_on");
    assert_eq!(sandbox.addr(), addr);
    let client = Client::new();
    let issued = sandbox.issue_tokens("portal-14", &[]);
    assert_eq!(
        api_me(&client, &sandbox, &issued.access_token).await.status,
        StatusCode::OK
    );

    let api = sandbox.api_url();
    let started = Instant::now();
    sandbox.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "graceful stop is prompt"
    );
    // A fresh client has no pooled connection, so this must open a new one and be refused.
    let after = Client::new().get(&api).send().await;
    assert!(after.is_err(), "server still answering after shutdown");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let (sandbox, _) = start_default().await;
    let api = sandbox.api_url();
    drop(sandbox);
    let mut refused = false;
    // The stop happens on the server task: give it a few scheduler turns.
    for _ in 0..50 {
        if Client::new().get(&api).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
}
