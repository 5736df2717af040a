//! Garbage input (answered 4xx, the server unhurt) and request ids on
//! every response.

use super::*;

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
