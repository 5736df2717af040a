//! Client authentication, dialect error bodies, and the grant type's
//! required fields.

use super::*;

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
