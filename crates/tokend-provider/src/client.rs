//! The HTTP side: token requests with timeouts, client authentication, a cap
//! on response size, and no redirects.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use tokend_core::{
    Clock, ErrorClass, TokenSet,
    steps::{self, Step},
};

use crate::{
    assertion::ASSERTION_TYPE,
    classify,
    config::{ClientAuth, ProviderConfig, RequestBody},
    error::{ProviderError, Salvage},
    form::form_encode,
    redact::Redactor,
    response,
};

/// Limits for upstream calls.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// Whole request, connect to last body byte.
    pub request_timeout: Duration,
    /// Bodies larger than this are refused; real token responses are < 4 KiB.
    pub max_response_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// A successful token-endpoint answer.
#[derive(Debug)]
pub struct TokenGrant {
    pub tokens: TokenSet,
    /// The account the provider named, if its config says where to look.
    pub account_id: Option<String>,
    /// The provider's request id, for logs.
    pub correlation_id: Option<String>,
    /// The answer's `metadata_fields` that were there.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Talks to token endpoints. Cheap to clone: one connection pool shared.
#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    /// Timeouts, for the clients of providers with their own TLS settings.
    settings: HttpSettings,
    max_response_bytes: usize,
    clock: Clock,
}

/// Headers providers put their request id in.
const CORRELATION_HEADERS: &[&str] = &[
    "x-hubspot-correlation-id",
    "x-correlation-id",
    "x-request-id",
];

/// An error tokend raises itself, before or instead of a provider's answer.
fn local_error(class: ErrorClass, code: &str, message: &str) -> ProviderError {
    ProviderError {
        class,
        code: code.into(),
        message: message.into(),
        http_status: None,
        correlation_id: None,
        retry_after: None,
        salvage: None,
        unanswered: false,
    }
}

/// The client's own setup is wrong: retrying will not help.
fn misconfigured(code: &str, message: &str) -> ProviderError {
    local_error(ErrorClass::ClientMisconfigured, code, message)
}

fn transport_error(code: &str, message: &str) -> ProviderError {
    local_error(ErrorClass::Transient, code, message)
}

/// `e`, marked as a request that may have reached the provider unanswered.
fn unanswered(mut e: ProviderError) -> ProviderError {
    e.unanswered = true;
    e
}

impl ProviderClient {
    pub fn new(settings: &HttpSettings, clock: Clock) -> Result<Self, ProviderError> {
        let http = Self::builder(settings)
            .build()
            .map_err(|_| transport_error("client_setup", "cannot build the HTTP client"))?;
        Ok(Self {
            http,
            settings: settings.clone(),
            max_response_bytes: settings.max_response_bytes,
            clock,
        })
    }

    fn builder(settings: &HttpSettings) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A token endpoint that redirects would make us re-send secrets
            // somewhere else; treat it as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
    }

    /// The HTTP client for `config`'s provider: the shared one, or one with
    /// the provider's client certificate and roots.
    fn http_for(&self, config: &ProviderConfig) -> Result<reqwest::Client, ProviderError> {
        match &config.request.tls {
            None => Ok(self.http.clone()),
            Some(tls) => tls.client(|| Self::builder(&self.settings)).map_err(|_| {
                misconfigured(
                    "tls_setup",
                    "cannot build the HTTP client with the provider's TLS settings",
                )
            }),
        }
    }

    /// Exchanges a refresh token for a new token set.
    pub async fn refresh(
        &self,
        config: &ProviderConfig,
        refresh_token: &SecretString,
    ) -> Result<TokenGrant, ProviderError> {
        let rt = refresh_token.expose_secret();
        let url = config
            .request
            .refresh_url
            .as_ref()
            .unwrap_or(&config.token_url);
        let grant_type = config
            .request
            .refresh_grant_type
            .as_deref()
            .unwrap_or("refresh_token");
        let param = config
            .request
            .refresh_token_param
            .as_deref()
            .unwrap_or("refresh_token");
        let mut form = vec![("grant_type", grant_type), (param, rt)];
        for (k, v) in &config.request.refresh_params {
            form.push((k, v));
        }
        self.token_request(config, url, form, &[rt]).await
    }

    /// Asks for a token with the client's own credentials (RFC 6749 §4.4),
    /// with the configured scopes.
    pub async fn client_credentials(
        &self,
        config: &ProviderConfig,
    ) -> Result<TokenGrant, ProviderError> {
        let scope = config.scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        self.token_request(config, &config.token_url, form, &[])
            .await
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3, with PKCE when a
    /// verifier is given).
    pub async fn exchange_code(
        &self,
        config: &ProviderConfig,
        code: &SecretString,
        redirect_uri: &str,
        code_verifier: Option<&SecretString>,
    ) -> Result<TokenGrant, ProviderError> {
        let code = code.expose_secret();
        let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
        if !redirect_uri.is_empty() {
            form.push(("redirect_uri", redirect_uri));
        }
        let mut secrets = vec![code];
        if let Some(v) = code_verifier {
            form.push(("code_verifier", v.expose_secret()));
            secrets.push(v.expose_secret());
        }
        for (k, v) in &config.request.exchange_params {
            form.push((k, v));
        }
        self.token_request(config, &config.token_url, form, &secrets)
            .await
    }

    /// A POST to `url` with `form`, the provider's extra parameters, query
    /// parameters, headers and client authentication, in its body format;
    /// and every secret it carries in every form it was sent (what an error
    /// text must never show).
    fn prepare<'a>(
        &self,
        config: &'a ProviderConfig,
        url: &reqwest::Url,
        form: Vec<(&'a str, &'a str)>,
        sent_secrets: &[&str],
    ) -> Result<(reqwest::RequestBuilder, Redactor), ProviderError> {
        let mut form: Vec<(&str, &str)> = form;
        let secret = config.client_secret.expose_secret();
        // Everything a provider might echo back in an error, in any
        // encoding: each secret sent, the client secret, the assertion and
        // the Basic credentials.
        let mut redact = Redactor::new(sent_secrets.iter().copied().chain([secret]));
        for (k, v) in &config.extra_params {
            if !form.iter().any(|(existing, _)| existing == k) {
                form.push((k, v));
            }
        }
        let audience = url.as_str();
        let mut url = url.clone();
        if !config.request.query_params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(&config.request.query_params);
        }
        let mut request = self
            .http_for(config)?
            .post(url)
            .header("accept", "application/json");
        let assertion;
        for (name, value) in &config.request.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match config.client_auth {
            ClientAuth::None | ClientAuth::TlsClientAuth => {
                form.push(("client_id", &config.client_id));
            }
            ClientAuth::PrivateKeyJwt => {
                let signer = config.request.client_assertion.as_ref().ok_or_else(|| {
                    misconfigured("no_signing_key", "private_key_jwt needs a private key")
                })?;
                assertion = signer
                    .sign(&config.client_id, audience, self.clock.now())
                    .map_err(|m| misconfigured("client_assertion", &m))?;
                redact.push(&assertion);
                form.push(("client_id", &config.client_id));
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", &assertion));
            }
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", &config.client_id));
                form.push(("client_secret", secret));
            }
            ClientAuth::ClientSecretBasic | ClientAuth::Both => {
                let credentials =
                    format!("{}:{}", form_encode(&config.client_id), form_encode(secret));
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                redact.basic(&config.client_id, secret);
                request = request.header("authorization", format!("Basic {encoded}"));
                if config.client_auth == ClientAuth::Both {
                    form.push(("client_id", &config.client_id));
                    form.push(("client_secret", secret));
                }
            }
        }
        let request = crate::trace_context::with_current_trace(request);
        let request = match config.request.body {
            RequestBody::Form => request.form(&form),
            RequestBody::Json => {
                let object: serde_json::Map<String, serde_json::Value> = form
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                    .collect();
                request
                    .header("content-type", "application/json")
                    .body(serde_json::Value::Object(object).to_string())
            }
        };
        Ok((request, redact))
    }

    /// Revokes `token` at the provider's revocation endpoint (RFC 7009),
    /// `hint` saying what it is (`refresh_token`, `access_token`).
    pub async fn revoke(
        &self,
        config: &ProviderConfig,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), ProviderError> {
        let Some(url) = &config.request.revocation_url else {
            return Err(misconfigured(
                "no_revocation_url",
                "the provider has no revocation_url",
            ));
        };
        let t = token.expose_secret();
        let (request, redact) = self.prepare(
            config,
            url,
            vec![("token", t), ("token_type_hint", hint)],
            &[t],
        )?;
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                transport_error("timeout", "revocation endpoint timed out")
            } else {
                transport_error("http_error", "revocation request failed")
            }
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        let body = &body[..body.len().min(self.max_response_bytes)];
        Err(classify::classify(
            config.dialect,
            status,
            body,
            None,
            None,
            &redact,
        ))
    }

    async fn token_request<'a>(
        &self,
        config: &'a ProviderConfig,
        url: &reqwest::Url,
        form: Vec<(&'a str, &'a str)>,
        sent_secrets: &[&str],
    ) -> Result<TokenGrant, ProviderError> {
        let (request, secrets) = self.prepare(config, url, form, sent_secrets)?;
        let sent_at = self.clock.now();
        let sending = std::time::Instant::now();
        let mut response = request.send().await.map_err(|e| {
            // Only a failure to connect (DNS, refused, TLS handshake) is
            // proven to precede sending; after that, the provider may have
            // acted on the request, so the refresh is in doubt.
            if e.is_connect() {
                transport_error("connect_error", "cannot connect to the token endpoint")
            } else if e.is_timeout() {
                unanswered(transport_error("timeout", "token endpoint timed out"))
            } else {
                unanswered(transport_error("http_error", "token request failed"))
            }
        })?;
        let headers_at = std::time::Instant::now();
        let status = response.status().as_u16();
        let correlation_id = CORRELATION_HEADERS.iter().find_map(|h| {
            response
                .headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| classify::sanitize(v, &secrets))
        });
        // An HTTP-date Retry-After is absolute wall time by definition, so it
        // is compared with the system clock, not tokend's.
        #[allow(clippy::disallowed_methods)]
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| classify::retry_after(v, SystemTime::now()));

        let success = (200..300).contains(&status);
        // A 2xx whose body is lost may still have rotated the grant: say so,
        // so the engine does not report the next refusal as a revocation.
        let lost = |mut e: ProviderError| {
            e.http_status = Some(status);
            e.correlation_id = correlation_id.clone();
            e.unanswered = true;
            if success {
                e.salvage = Some(Salvage {
                    refresh_token: None,
                });
            }
            e
        };
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(lost(transport_error(
                            "response_too_large",
                            "token response exceeds the size limit",
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(lost(if e.is_timeout() {
                        transport_error("timeout", "token endpoint timed out")
                    } else {
                        transport_error("http_error", "reading the token response failed")
                    }));
                }
            }
        }
        // The strict-rotation window is open from here on for a grant:
        // timed, step by step (`tokend_core::steps`).
        let parsing = std::time::Instant::now();
        if success {
            steps::record(Step::AnswerWait, headers_at - sending);
            steps::record(Step::AnswerRead, parsing - headers_at);
        }
        let interpreted = interpret(
            config,
            Answer {
                status,
                body: &body,
                correlation_id,
                retry_after,
            },
            &secrets,
            sent_at,
        );
        if success {
            steps::record(Step::Parse, parsing.elapsed());
        }
        interpreted
    }
}

/// What came back from a token endpoint, read in full.
pub(crate) struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    pub correlation_id: Option<String>,
    pub retry_after: Option<Duration>,
}

/// A grant, or the classified failure, from an answer. `secrets` are what
/// the request carried, stripped from any error text in any encoding. Pure,
/// so it can be fuzzed.
pub(crate) fn interpret(
    config: &ProviderConfig,
    answer: Answer<'_>,
    secrets: &Redactor,
    sent_at: tokend_core::Timestamp,
) -> Result<TokenGrant, ProviderError> {
    let Answer {
        status,
        body,
        correlation_id,
        retry_after,
    } = answer;
    if (200..300).contains(&status) && !classify::is_refusal(body) {
        let parsed = response::parse(config, body, status, correlation_id.clone(), sent_at)
            .map_err(|mut e| {
                e.salvage = Some(Salvage {
                    refresh_token: response::salvage_refresh_token(config, body),
                });
                e
            })?;
        Ok(TokenGrant {
            tokens: parsed.tokens,
            account_id: parsed.account_id,
            correlation_id,
            metadata: parsed.metadata,
        })
    } else {
        Err(classify::classify(
            config.dialect,
            status,
            body,
            correlation_id,
            retry_after,
            secrets,
        ))
    }
}
