//! A real HTTP OAuth2 provider (HubSpot-like) for integration tests, benchmarks and `tokend serve --sandbox`.
//!
//! [`Sandbox::start`] binds an axum server on `127.0.0.1` that speaks the token endpoint of
//! RFC 6749 (authorization-code with PKCE, refresh with strict or reuse rotation), a protected
//! `GET /api/me` resource, and `/sandbox/*` control endpoints. The [`Sandbox`] handle drives the
//! same state from Rust: mint codes and tokens, revoke accounts, queue faults and read counters.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tokend_sandbox::{Fault, Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::start(SandboxConfig::default()).await?;
//! let tokens = sandbox.issue_tokens("portal-1", &["crm.objects.read"]);
//! sandbox.inject(Fault::Status { status: 503, count: 1 });
//! // ... point the broker at sandbox.token_url() and refresh `tokens.refresh_token` ...
//! sandbox.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod answer;
mod client_auth;
mod control;
mod echo;
mod error;
mod form;
mod http;
mod lost;
mod persist;
mod secrets;
mod state;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::Provider;

pub use crate::client_auth::TlsSettings;
pub use crate::echo::Echo;

/// How long [`Sandbox::shutdown`] waits for in-flight requests before aborting the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a successful refresh does to the refresh token that was presented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// Every refresh returns a new refresh token and the presented one dies at once;
    /// presenting it again answers `invalid_grant`.
    #[default]
    Strict,
    /// Refresh responses omit `refresh_token`; the presented one keeps working (HubSpot's behaviour).
    Reuse,
    /// Every refresh returns a new refresh token, but the presented one keeps working for this
    /// many seconds after it was first rotated out (a reuse interval, as Okta and Auth0 offer).
    Grace(u64),
}

/// The shape of error bodies on the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `{"error":"invalid_grant","error_description":"..."}` as in RFC 6749 §5.2.
    #[default]
    Rfc6749,
    /// `{"status":"BAD_REFRESH_TOKEN","message":"...","correlationId":"...","category":"..."}`.
    Hubspot,
    /// Slack's `oauth.v2.access`: every answer is HTTP 200 (429 aside), failures are
    /// `{"ok":false,"error":"invalid_refresh_token"}`, and a user token comes under
    /// `authed_user`, with the workspace as `team.id`.
    Slack,
    /// GitHub's apps: refusals are HTTP 200 with `{"error":"bad_refresh_token",...}`, and
    /// answers carry `refresh_token_expires_in`.
    Github,
    /// Notion: the request is a JSON body with HTTP Basic client authentication, the
    /// workspace comes as `workspace_id`; errors as RFC 6749.
    Notion,
    /// Microsoft identity platform: RFC 6749 codes with `AADSTS` numbers in
    /// `error_description` and `error_codes`, e.g. AADSTS70008 for an expired refresh
    /// token, AADSTS65001 for missing consent, AADSTS50076 for required MFA.
    Microsoft,
    /// Zoho: a dead refresh token is HTTP 200 `{"error":"invalid_code"}`, and throttling
    /// is HTTP 400 `{"error":"Access Denied",...}` with no Retry-After.
    Zoho,
    /// Salesforce: answers carry no `expires_in`, but `instance_url` (the org's API
    /// host), `id`, `issued_at` and `signature`; errors as RFC 6749.
    Salesforce,
    /// Facebook (Graph API): long-lived access tokens renewed by exchanging the current
    /// one (`grant_type=fb_exchange_token`), no refresh tokens; errors as
    /// `{"error":{"message":...,"type":"OAuthException","code":190,...}}`.
    Facebook,
}

/// Settings of one sandbox provider.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The only client the provider knows. Default `sandbox-client`.
    pub client_id: String,
    /// That client's secret. Default `sandbox-secret`.
    pub client_secret: String,
    /// Lifetime of minted access tokens; `expires_in` reports it in whole seconds. Default 30 min.
    pub access_token_lifetime: Duration,
    /// Refresh-token rotation policy. Default [`Rotation::Strict`].
    pub rotation: Rotation,
    /// Error body format. Default [`Dialect::Rfc6749`].
    pub dialect: Dialect,
    /// A file that keeps accounts and redeemable refresh tokens (by hash)
    /// across restarts, as a real provider would. Default: none (memory).
    pub state_file: Option<std::path::PathBuf>,
    /// Also accept the client as a public client (RFC 6749 §2.1): its
    /// `client_id` in the body and no secret at all. Default false.
    pub public_client: bool,
    /// Demand the client credentials twice, in HTTP Basic and in the body
    /// (as a few providers do, against RFC 6749 §2.3.1). Default false.
    pub credentials_in_both: bool,
    /// Also accept `private_key_jwt` client assertions (RFC 7523) signed by
    /// this key. Default none.
    pub client_assertion_key: Option<AssertionKey>,
    /// Also accept mutual-TLS client authentication (RFC 8705) from the
    /// client certificate with this SHA-256 fingerprint (of its DER), on a
    /// sandbox started with [`Sandbox::start_tls`]. Default none.
    pub tls_client_cert_sha256: Option<[u8; 32]>,
}

/// A client's registered public key for `private_key_jwt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionKey {
    /// The JOSE algorithm (`ES256`, `RS256`...).
    pub algorithm: String,
    /// The PEM public key.
    pub public_key_pem: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            client_id: "sandbox-client".to_owned(),
            client_secret: "sandbox-secret".to_owned(),
            access_token_lifetime: Duration::from_secs(1800),
            rotation: Rotation::Strict,
            dialect: Dialect::Rfc6749,
            state_file: None,
            public_client: false,
            credentials_in_both: false,
            client_assertion_key: None,
            tls_client_cert_sha256: None,
        }
    }
}

/// A token request as the sandbox saw it: body parameters and query
/// parameters in name order, with the values of `refresh_token`, `code`,
/// `code_verifier`, `client_secret`, `access_token` and the like replaced
/// by `[redacted]`, and the headers whose name starts with `x-`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenRequest {
    pub params: std::collections::BTreeMap<String, String>,
    pub query: std::collections::BTreeMap<String, String>,
    pub headers: std::collections::BTreeMap<String, String>,
    /// Whether HTTP Basic credentials came along.
    pub basic_auth: bool,
}

/// A live token set, as minted by [`Sandbox::issue_tokens`] or `POST /sandbox/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub scopes: Vec<String>,
    pub account_id: String,
}

/// A misbehaviour queued for upcoming `POST /oauth/token` requests.
///
/// Faults are consumed first in, first out, one per token request, before normal handling;
/// each request decrements the front fault's `count` and the fault leaves the queue at zero.
/// A fault injected with `count: 0` is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with a server-error body (`server_error` / `INTERNAL_ERROR`).
    /// A number that is not a valid HTTP status is served as 500.
    Status { status: u16, count: u32 },
    /// Answer 429 with `Retry-After: retry_after_secs` and a rate-limit error body.
    RateLimited { retry_after_secs: u64, count: u32 },
    /// Wait `delay`, then handle the request normally.
    Latency { delay: Duration, count: u32 },
    /// Answer 200 with a body that is not valid JSON.
    MalformedBody { count: u32 },
    /// Answer 401 `invalid_client` as if the client credentials were wrong.
    InvalidClient { count: u32 },
    /// Refuse the grant until the user consents again (Microsoft AADSTS65001).
    ConsentRequired { count: u32 },
    /// Refuse the grant until the user signs in interactively (MFA, conditional access:
    /// Microsoft AADSTS50076).
    InteractionRequired { count: u32 },
    /// Answer 400 `invalid_grant` with every secret of the request (the
    /// secret form fields, the Basic credentials) repeated in its
    /// description, message, correlation id and `x-correlation-id`, spelled
    /// as `encoding` says.
    EchoSecrets { encoding: Echo, count: u32 },
    /// Handle the request in full (a refresh rotates the presented token
    /// exactly as for a delivered answer: spent under strict rotation, in its
    /// grace otherwise), then wait `hang` and lose the answer as `answer`
    /// says. The client never learns what it was granted.
    LostAnswer {
        answer: LostAnswer,
        hang: Duration,
        count: u32,
    },
}

/// How a [`Fault::LostAnswer`] loses the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostAnswer {
    /// Answer this status instead: a server-error body for 400-599, a body
    /// cut off mid-stream for 200.
    Status(u16),
    /// Drop the TCP connection with a reset, answering nothing.
    Reset,
}

impl Fault {
    /// How many more requests this fault applies to.
    pub fn count(&self) -> u32 {
        match self {
            Fault::Status { count, .. }
            | Fault::RateLimited { count, .. }
            | Fault::Latency { count, .. }
            | Fault::MalformedBody { count }
            | Fault::InvalidClient { count }
            | Fault::ConsentRequired { count }
            | Fault::InteractionRequired { count }
            | Fault::EchoSecrets { count, .. }
            | Fault::LostAnswer { count, .. } => *count,
        }
    }

    pub(crate) fn count_mut(&mut self) -> &mut u32 {
        match self {
            Fault::Status { count, .. }
            | Fault::RateLimited { count, .. }
            | Fault::Latency { count, .. }
            | Fault::MalformedBody { count }
            | Fault::InvalidClient { count }
            | Fault::ConsentRequired { count }
            | Fault::InteractionRequired { count }
            | Fault::EchoSecrets { count, .. }
            | Fault::LostAnswer { count, .. } => count,
        }
    }
}

/// Provider-wide counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every `POST /oauth/token` received, faulted ones included.
    pub token_requests: u64,
    pub refresh_grants_ok: u64,
    pub code_grants_ok: u64,
    /// Refresh or code attempts rejected as unknown, expired, revoked or reused.
    pub invalid_grant: u64,
    /// Token requests that consumed a queued [`Fault`] (latency faults included).
    pub faults_served: u64,
    pub api_calls_ok: u64,
    pub api_calls_rejected: u64,
    /// Revocations: `POST /oauth/revoke` requests a client authenticated
    /// (RFC 7009), and accounts revoked by the operator (`POST
    /// /sandbox/revoke`, [`Sandbox::revoke_account`]).
    #[serde(default)]
    pub revocations: u64,
    /// Token requests handled in full whose answer a [`Fault::LostAnswer`]
    /// replaced.
    #[serde(default)]
    pub lost_answers: u64,
    /// Of `lost_answers`, those that had granted a token: a refresh among
    /// them rotated the presented refresh token, and under strict rotation
    /// the only live one is in the answer the client never got.
    #[serde(default)]
    pub lost_answers_granted: u64,
}

/// Refresh counters of one account, attributed through the refresh token presented
/// (tokens stay mapped to their account after they die, so reuse of dead tokens counts here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    /// Authenticated refresh grants that presented one of this account's refresh tokens.
    pub refresh_requests: u64,
    pub refresh_grants_ok: u64,
    /// Refresh grants rejected because the token was used (strict rotation) or revoked.
    pub invalid_grant: u64,
}

/// Handle to a running sandbox provider. Dropping it stops the server.
pub struct Sandbox {
    provider: Arc<Provider>,
    addr: SocketAddr,
    base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a provider on `127.0.0.1` with an ephemeral port.
    ///
    /// # Errors
    /// When the listening socket cannot be bound.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, config).await
    }

    /// Starts a provider on a listener the caller bound (e.g. a fixed port for `tokend serve --sandbox`).
    ///
    /// Async although it does not wait for anything: it spawns the server on the current Tokio
    /// runtime, and an `async fn` can only be called from within one.
    ///
    /// # Errors
    /// When the listener's local address cannot be read, or the state file
    /// cannot be read.
    pub async fn start_on(
        listener: TcpListener,
        config: SandboxConfig,
    ) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let provider = Arc::new(Provider::load(&config, "http")?);
        Ok(Self::serve(
            client_auth::PlainListener(listener),
            provider,
            addr,
            base_url_for(addr),
        ))
    }

    /// Serves `provider` on `listener` until shut down.
    fn serve<L>(listener: L, provider: Arc<Provider>, addr: SocketAddr, base_url: String) -> Sandbox
    where
        L: axum::serve::Listener,
        L::Addr: fmt::Debug,
        for<'a> client_auth::PeerCert:
            axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
    {
        let router = http::router(Arc::clone(&provider));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<client_auth::PeerCert>(),
        )
        .with_graceful_shutdown(async move {
            // Both an explicit send and a dropped sender mean "stop".
            let _ = shutdown_rx.await;
        });
        let task = tokio::spawn(async move {
            if let Err(err) = server.await {
                tracing::warn!(%err, "sandbox server stopped with an error");
            }
        });
        tracing::debug!(%addr, "sandbox provider listening");
        Sandbox {
            provider,
            addr,
            base_url,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// Starts a provider that speaks HTTPS on `127.0.0.1` with an ephemeral
    /// port, asking clients for a certificate signed by
    /// `tls.client_ca_pem` (for `tls_client_cert_sha256`). Its URLs are
    /// `https://127.0.0.1:PORT/...`: the server certificate must name that
    /// address.
    ///
    /// # Errors
    /// When the socket cannot be bound, or the PEM material does not parse.
    pub async fn start_tls(config: SandboxConfig, tls: TlsSettings) -> std::io::Result<Sandbox> {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = tcp.local_addr()?;
        let listener = client_auth::TlsListener::new(tcp, &tls)?;
        let provider = Arc::new(Provider::load(&config, "https")?);
        let base_url = base_url_for(addr).replacen("http://", "https://", 1);
        Ok(Self::serve(listener, provider, addr, base_url))
    }

    /// The socket address the provider listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The token endpoint, `base_url() + "/oauth/token"`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base_url)
    }

    /// The protected resource, `base_url() + "/api/me"`.
    pub fn api_url(&self) -> String {
        format!("{}/api/me", self.base_url)
    }

    /// The configuration in force, including changes made with the setters.
    pub fn config(&self) -> SandboxConfig {
        self.provider.config()
    }

    /// Changes the rotation policy for refreshes from now on.
    pub fn set_rotation(&self, rotation: Rotation) {
        self.provider.set_rotation(rotation);
    }

    /// Changes the lifetime of access tokens minted from now on.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.provider.set_access_token_lifetime(lifetime);
    }

    /// Mints a single-use authorization code, valid for 10 minutes. When `redirect_uri` is given
    /// the exchange must repeat it; when a S256 PKCE challenge is given the exchange must carry
    /// the matching `code_verifier`.
    pub fn issue_code(
        &self,
        account_id: &str,
        scopes: &[&str],
        redirect_uri: Option<&str>,
        pkce_s256_challenge: Option<&str>,
    ) -> String {
        self.provider
            .issue_code(account_id, scopes, redirect_uri, pkce_s256_challenge)
    }

    /// Mints a live token set directly, as if an app had done the code flow elsewhere.
    pub fn issue_tokens(&self, account_id: &str, scopes: &[&str]) -> IssuedTokens {
        self.provider.issue_tokens(account_id, scopes)
    }

    /// Kills every code, refresh token and access token of the account, as when a portal
    /// uninstalls the app. Tokens minted afterwards (a reinstall) are live again.
    pub fn revoke_account(&self, account_id: &str) {
        self.provider.revoke_account_counted(account_id);
    }

    /// Queues a fault for upcoming `/oauth/token` requests.
    pub fn inject(&self, fault: Fault) {
        self.provider.inject(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.provider.clear_faults();
    }

    /// What the last token request carried, its secrets redacted: for tests
    /// of what a client sends.
    pub fn last_token_request(&self) -> Option<SeenRequest> {
        self.provider.last_request()
    }

    /// Provider-wide counters.
    pub fn stats(&self) -> Stats {
        self.provider.stats()
    }

    /// The W3C `traceparent` headers of the last 64 token requests that
    /// carried one, oldest first: what a provider's own tracing would see.
    pub fn trace_parents(&self) -> Vec<String> {
        self.provider.trace_parents()
    }

    /// Refresh counters of one account (all zero for an unknown account).
    pub fn account_stats(&self, account_id: &str) -> AccountStats {
        self.provider.account_stats(account_id)
    }

    /// The revocation endpoint (RFC 7009).
    pub fn revocation_url(&self) -> String {
        self.token_url().replace("/oauth/token", "/oauth/revoke")
    }

    /// Whether `/api/me` would accept this access token now (does not count as an API call).
    pub fn access_token_is_live(&self, token: &str) -> bool {
        self.provider.access_token_is_live(token)
    }

    /// Stops accepting connections, lets in-flight requests finish (up to 5 s), then returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("sandbox: in-flight requests outlived the grace period; aborting");
            task.abort();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Graceful stop in the background; the server task ends on its own once signalled.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately leaves out the config: it holds the client secret.
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Clients cannot connect to a wildcard address, so a listener bound to `0.0.0.0` / `::`
/// is advertised through the loopback address of the same family.
fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_replaces_wildcards_with_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().expect("literal");
        assert_eq!(base_url_for(v4), "http://127.0.0.1:8080");
        let v6: SocketAddr = "[::]:8080".parse().expect("literal");
        assert_eq!(base_url_for(v6), "http://[::1]:8080");
        let bound: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        assert_eq!(base_url_for(bound), "http://127.0.0.1:9");
    }

    #[test]
    fn zero_count_faults_are_reported_as_zero() {
        assert_eq!(Fault::MalformedBody { count: 0 }.count(), 0);
        let mut fault = Fault::Latency {
            delay: Duration::from_millis(1),
            count: 3,
        };
        *fault.count_mut() -= 1;
        assert_eq!(fault.count(), 2);
    }
}
