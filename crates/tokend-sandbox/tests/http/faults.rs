//! Queued faults over HTTP: status, rate limits, latency, malformed bodies,
//! invalid clients, and their order.

use super::*;

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
