//! The lost-answer fault over real HTTP: the refresh takes effect at the
//! provider (the presented token rotates), and the client gets a status, a
//! cut-off body or a TCP reset instead of the grant, after an optional hang.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokend_sandbox::{Fault, LostAnswer, Rotation, Sandbox, SandboxConfig, Stats};

async fn start(rotation: Rotation) -> Sandbox {
    Sandbox::start(SandboxConfig {
        rotation,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts")
}

fn form(refresh_token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", "sandbox-client".into()),
        ("client_secret", "sandbox-secret".into()),
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh_token.to_owned()),
    ]
}

async fn refresh(
    client: &Client,
    sandbox: &Sandbox,
    token: &str,
) -> reqwest::Result<(u16, String)> {
    let response = client
        .post(sandbox.token_url())
        .form(&form(token))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

async fn inject(client: &Client, sandbox: &Sandbox, fault: Value) -> StatusCode {
    client
        .post(format!("{}/sandbox/faults", sandbox.base_url()))
        .json(&fault)
        .send()
        .await
        .expect("control request sent")
        .status()
}

async fn stats(client: &Client, sandbox: &Sandbox) -> Stats {
    client
        .get(format!("{}/sandbox/stats", sandbox.base_url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("Stats json")
}

/// Issue 25. Invariant: a lost answer is lost *after* the refresh took
/// effect. Under strict rotation the presented token is spent although the
/// client only saw a 504, and `/sandbox/stats` shows the grant it hid, so a
/// chaos run can count the rotations a broker never learned of.
#[tokio::test]
async fn a_lost_answer_rotates_then_answers_the_status() {
    let sandbox = start(Rotation::Strict).await;
    let client = Client::new();
    let issued = sandbox.issue_tokens("lost-504", &["crm"]);
    let fault = json!({"kind": "lost_answer", "status": 504, "count": 1});
    assert_eq!(
        inject(&client, &sandbox, fault).await,
        StatusCode::NO_CONTENT
    );

    let (status, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 504, "{body}");
    assert!(
        !body.contains("sbx_"),
        "no token in the lost answer: {body}"
    );
    let seen = stats(&client, &sandbox).await;
    assert_eq!(
        (
            seen.refresh_grants_ok,
            seen.lost_answers,
            seen.lost_answers_granted
        ),
        (1, 1, 1)
    );
    // The rotation happened: the presented token is spent.
    let (again, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(again, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");

    // A refused request loses its refusal just the same, and is not counted
    // as a hidden grant.
    sandbox.inject(Fault::LostAnswer {
        answer: LostAnswer::Status(502),
        hang: Duration::ZERO,
        count: 1,
    });
    let (status, _) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 502);
    let seen = sandbox.stats();
    assert_eq!((seen.lost_answers, seen.lost_answers_granted), (2, 1));
}

/// Issue 25. Invariant: under grace rotation a lost answer leaves the
/// presented token in its grace, so a client that retries it promptly is
/// served: the fault rotates exactly as a delivered answer would.
#[tokio::test]
async fn under_grace_rotation_the_presented_token_survives_a_lost_answer() {
    let sandbox = start(Rotation::Grace(30)).await;
    let client = Client::new();
    let issued = sandbox.issue_tokens("lost-grace", &[]);
    let fault = json!({"kind": "lost_answer", "status": 500});
    assert_eq!(
        inject(&client, &sandbox, fault).await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 500);
    let (status, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert_eq!(sandbox.stats().refresh_grants_ok, 2);
}

/// Issue 25. Invariant: the hang comes after the rotation, so a client
/// that times out during it has already lost its refresh token (strict).
#[tokio::test]
async fn a_client_that_times_out_during_the_hang_finds_its_token_spent() {
    let sandbox = start(Rotation::Strict).await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let issued = sandbox.issue_tokens("lost-hang", &[]);
    let fault = json!({"kind": "lost_answer", "status": 504, "hang_ms": 30000});
    assert_eq!(
        inject(&impatient, &sandbox, fault).await,
        StatusCode::NO_CONTENT
    );
    let err = refresh(&impatient, &sandbox, &issued.refresh_token)
        .await
        .expect_err("no answer within the client's timeout");
    assert!(err.is_timeout(), "{err}");
    let seen = sandbox.stats();
    assert_eq!((seen.lost_answers_granted, seen.refresh_grants_ok), (1, 1));
    let (status, body) = refresh(&Client::new(), &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert!(
        status == 400 && body.contains("invalid_grant"),
        "{status} {body}"
    );

    // A short hang is served in full, then the status.
    sandbox.inject(Fault::LostAnswer {
        answer: LostAnswer::Status(503),
        hang: Duration::from_millis(300),
        count: 1,
    });
    let fresh = sandbox.issue_tokens("lost-hang-2", &[]);
    let started = Instant::now();
    let (status, _) = refresh(&Client::new(), &sandbox, &fresh.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Issue 25. Invariant: `"reset": true` drops the connection with a TCP
/// reset and not one byte of answer, after rotating; the sandbox keeps
/// serving other connections.
#[tokio::test]
async fn a_reset_answers_nothing_and_the_token_is_spent() {
    let sandbox = start(Rotation::Strict).await;
    let client = Client::new();
    let issued = sandbox.issue_tokens("lost-reset", &[]);
    let fault = json!({"kind": "lost_answer", "reset": true});
    assert_eq!(
        inject(&client, &sandbox, fault).await,
        StatusCode::NO_CONTENT
    );

    // A raw socket, to see exactly what comes back: nothing, then RST.
    let body = form_urlencoded(&form(&issued.refresh_token));
    let request = format!(
        "POST /oauth/token HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        sandbox.addr(),
        body.len()
    );
    let addr = sandbox.addr();
    let (answer, read) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(addr).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        socket
            .write_all(request.as_bytes())
            .expect("request written");
        let mut answer = Vec::new();
        let read = socket.read_to_end(&mut answer);
        (answer, read)
    })
    .await
    .expect("the raw exchange ran");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    let err = read.expect_err("a reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let seen = sandbox.stats();
    assert_eq!((seen.lost_answers_granted, seen.refresh_grants_ok), (1, 1));
    let (status, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("other connections are served");
    assert!(
        status == 400 && body.contains("invalid_grant"),
        "{status} {body}"
    );

    // Through an HTTP client: an error with no status.
    sandbox.inject(Fault::LostAnswer {
        answer: LostAnswer::Reset,
        hang: Duration::ZERO,
        count: 1,
    });
    let fresh = sandbox.issue_tokens("lost-reset-2", &[]);
    let err = refresh(&Client::new(), &sandbox, &fresh.refresh_token)
        .await
        .expect_err("no answer");
    assert!(err.status().is_none() && !err.is_timeout(), "{err}");
}

/// Issue 25. Invariant: with status 200 the grant is in no readable answer:
/// the body is cut off mid-JSON and carries no token.
#[tokio::test]
async fn a_lost_answer_with_status_200_cuts_the_body() {
    let sandbox = start(Rotation::Strict).await;
    let client = Client::new();
    let issued = sandbox.issue_tokens("lost-200", &[]);
    let fault = json!({"kind": "lost_answer", "status": 200});
    assert_eq!(
        inject(&client, &sandbox, fault).await,
        StatusCode::NO_CONTENT
    );
    let (status, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    assert!(!body.contains("sbx_"), "{body}");
    assert_eq!(sandbox.stats().lost_answers_granted, 1);
    let (status, body) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert!(
        status == 400 && body.contains("invalid_grant"),
        "rotated: {status} {body}"
    );
}

#[tokio::test]
async fn malformed_lost_answer_requests_are_refused() {
    let sandbox = start(Rotation::Strict).await;
    let client = Client::new();
    for fault in [
        json!({"kind": "lost_answer"}),
        json!({"kind": "lost_answer", "status": 504, "reset": true}),
        json!({"kind": "lost_answer", "reset": false}),
        json!({"kind": "lost_answer", "status": 302}),
        json!({"kind": "lost_answer", "status": 504, "hang": 5}),
        json!({"kind": "lost_answer", "status": 504, "hang_ms": -1}),
    ] {
        let status = inject(&client, &sandbox, fault.clone()).await;
        assert!(status.is_client_error(), "{fault}: {status}");
    }
    assert_eq!(sandbox.stats().faults_served, 0);
    let issued = sandbox.issue_tokens("after", &[]);
    let (status, _) = refresh(&client, &sandbox, &issued.refresh_token)
        .await
        .expect("an answer");
    assert_eq!(status, 200, "no fault was queued");
}

fn form_urlencoded(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
        .collect::<Vec<_>>()
        .join("&")
}
