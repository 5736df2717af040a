//! Which transport failures leave a refresh in doubt (issue 25, item 1):
//! after the request may have reached the provider, yes; before it could
//! (connect refused), no. Real sockets on loopback.

use std::time::Duration;

use secrecy::SecretString;
use tokend_core::{Clock, ProviderName, RefreshPolicy};
use tokend_provider::{ClientAuth, Dialect, HttpSettings, ProviderClient, ProviderConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(url: &str) -> ProviderConfig {
    ProviderConfig {
        name: ProviderName::new("p").unwrap(),
        token_url: url.parse().unwrap(),
        client_id: "id".into(),
        client_secret: SecretString::from("secret".to_owned()),
        client_auth: ClientAuth::ClientSecretPost,
        extra_params: vec![],
        default_lifetime: Duration::from_secs(1800),
        refresh_policy: RefreshPolicy::default(),
        dialect: Dialect::Rfc6749,
        account_id_field: None,
        rotation_grace: Duration::ZERO,
        min_refresh_interval: ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL,
        request: Default::default(),
        response: Default::default(),
        grant: Default::default(),
        scopes: vec![],
    }
}

fn client() -> ProviderClient {
    ProviderClient::new(
        &HttpSettings {
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        Clock::system(),
    )
    .unwrap()
}

/// A token endpoint that reads the whole request, then does `then`.
async fn endpoint(then: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                match then {
                    "hang" => tokio::time::sleep(Duration::from_secs(30)).await,
                    "reset" => {
                        let _ = socket.set_zero_linger();
                        drop(socket);
                    }
                    status => {
                        let body = r#"{"error":"server_error"}"#;
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}/token")
}

async fn refresh_error(url: &str) -> tokend_provider::ProviderError {
    client()
        .refresh(&config(url), &SecretString::from("rt".to_owned()))
        .await
        .unwrap_err()
}

/// Invariant: a request that may have reached the provider without an
/// answer (timeout, reset, an edge's 5xx) is in doubt.
#[tokio::test]
async fn failures_after_sending_are_in_doubt() {
    for then in [
        "hang",
        "reset",
        "504 Gateway Timeout",
        "502 Bad Gateway",
        "503 Service Unavailable",
    ] {
        let e = refresh_error(&endpoint(then).await).await;
        assert!(e.in_doubt(), "{then}: {} is in doubt", e.code);
    }
}

/// Invariant: failures proven to precede sending, and definitive 4xx
/// refusals, are not in doubt.
#[tokio::test]
async fn failures_before_sending_and_refusals_are_not_in_doubt() {
    // Nothing listens on a port just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = refresh_error(&format!("http://{closed}/token")).await;
    assert_eq!(e.code, "connect_error");
    assert!(!e.in_doubt());
    for then in [
        "400 Bad Request",
        "401 Unauthorized",
        "429 Too Many Requests",
    ] {
        let e = refresh_error(&endpoint(then).await).await;
        assert!(!e.in_doubt(), "{then}: {} is a refusal", e.code);
    }
}
