//! The grant flows over HTTP: codes with and without PKCE, refresh-token
//! rotation, revocation and access-token expiry.

use super::*;

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
