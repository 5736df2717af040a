//! End-to-end tests of the sandbox provider over real HTTP on 127.0.0.1,
//! a file per area; the helpers they share are here.

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

mod client_auth;
mod control;
mod faults;
mod flows;
mod hostile;
