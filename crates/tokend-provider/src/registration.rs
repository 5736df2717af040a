//! Dynamic client registration (RFC 7591), and the authorization-server
//! metadata (RFC 8414) that names where to register: what MCP servers ask of
//! a client before it may use them.

use std::{fmt, time::Duration};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The parts of an authorization server's metadata (RFC 8414 §2) tokend
/// uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub authorization_endpoint: Option<String>,
    pub registration_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// What tokend asks to be registered as (RFC 7591 §2).
#[derive(Clone, Debug, Serialize)]
pub struct ClientMetadata {
    pub client_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub token_endpoint_auth_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The server's answer (RFC 7591 §3.2.1). The secret, if any, is a
/// `SecretString`: `Debug` never shows it.
#[derive(Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Unix seconds when the secret expires; 0 or absent: never.
    #[serde(default)]
    pub client_secret_expires_at: u64,
    /// The method the server settled on (it may differ from the one asked).
    pub token_endpoint_auth_method: Option<String>,
}

impl fmt::Debug for RegisteredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("client_secret_expires_at", &self.client_secret_expires_at)
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .finish()
    }
}

/// Answers are small; a larger one is refused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

fn http() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| "cannot build the HTTP client".to_owned())
}

/// Where RFC 8414 §3.1 puts an issuer's metadata: the well-known segment
/// goes between the host and the issuer's path.
pub fn metadata_url(issuer: &reqwest::Url) -> reqwest::Url {
    let mut url = issuer.clone();
    let path = issuer.path().trim_end_matches('/');
    url.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    response: reqwest::Response,
    what: &str,
) -> Result<T, String> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{what}: reading the answer failed: {e}"))?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!("{what}: the answer is larger than 64 KiB"));
    }
    if !status.is_success() {
        // RFC 7591 §3.2.2 errors name a code and a description; neither
        // carries a secret of ours (we sent none).
        #[derive(Deserialize)]
        struct Refusal {
            error: Option<String>,
            error_description: Option<String>,
        }
        let refusal: Option<Refusal> = serde_json::from_slice(&body).ok();
        let detail = refusal
            .map(|r| {
                [r.error, r.error_description]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "no OAuth error in the body".into());
        let detail: String = detail.chars().take(300).collect();
        return Err(format!("{what}: HTTP {} ({detail})", status.as_u16()));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("{what}: the answer is not what RFC 8414/7591 describe: {e}"))
}

/// Reads an issuer's metadata (RFC 8414).
///
/// # Errors
/// The request fails, or the answer is not metadata for this issuer.
pub async fn discover(issuer: &reqwest::Url) -> Result<ServerMetadata, String> {
    let url = metadata_url(issuer);
    let response = http()?
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("metadata at {url}: {e}"))?;
    let metadata: ServerMetadata = read_json(response, &format!("metadata at {url}")).await?;
    if metadata.issuer.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "metadata at {url} names issuer {:?}, not {issuer} (RFC 8414 §3.3)",
            metadata.issuer
        ));
    }
    Ok(metadata)
}

/// Registers a client at `registration_endpoint` (RFC 7591 §3), with an
/// initial access token if the server hands them out.
///
/// # Errors
/// The request fails or the server refuses; the text quotes no secret.
pub async fn register(
    registration_endpoint: &reqwest::Url,
    metadata: &ClientMetadata,
    initial_access_token: Option<&SecretString>,
) -> Result<RegisteredClient, String> {
    use secrecy::ExposeSecret as _;
    let mut request = http()?
        .post(registration_endpoint.clone())
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(metadata).map_err(|e| e.to_string())?);
    if let Some(token) = initial_access_token {
        request = request.bearer_auth(token.expose_secret());
    }
    let response = request.send().await.map_err(|e| {
        format!(
            "registration at {registration_endpoint}: {}",
            e.without_url()
        )
    })?;
    let client: RegisteredClient = read_json(
        response,
        &format!("registration at {registration_endpoint}"),
    )
    .await?;
    if client.client_id.is_empty() {
        return Err("the registration answer has an empty client_id".into());
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc_8414() {
        let at = |issuer: &str| metadata_url(&issuer.parse().unwrap()).to_string();
        assert_eq!(
            at("https://mcp.example.com"),
            "https://mcp.example.com/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            at("https://id.example.com/tenant1/"),
            "https://id.example.com/.well-known/oauth-authorization-server/tenant1"
        );
    }
}
