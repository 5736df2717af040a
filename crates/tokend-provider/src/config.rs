//! What tokend needs to know about one OAuth provider.

use std::{fmt, time::Duration};

use secrecy::SecretString;
use tokend_core::{ProviderName, RefreshPolicy};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (HubSpot).
    ClientSecretPost,
    /// HTTP Basic with the url-encoded id and secret.
    ClientSecretBasic,
}

/// How the provider words its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error":"invalid_grant","error_description":"..."}`
    Rfc6749,
    /// `{"status":"BAD_REFRESH_TOKEN","message":"...","correlationId":"..."}`
    Hubspot,
    /// Slack: refusals are HTTP 200 with `{"ok":false,"error":"invalid_refresh_token"}`.
    Slack,
    /// GitHub: refusals are HTTP 200 with `{"error":"bad_refresh_token",...}`.
    Github,
}

/// How tokend obtains a connection's tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrantType {
    /// A user authorises once (code exchange, or an imported grant); tokend
    /// renews with the refresh token.
    #[default]
    AuthorizationCode,
    /// RFC 6749 §4.4: no user and no refresh token; tokend asks for a new
    /// token with the client's own credentials before the old one expires.
    ClientCredentials,
}

/// How a token request carries its parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestBody {
    /// `application/x-www-form-urlencoded`, as RFC 6749 says.
    #[default]
    Form,
    /// A JSON object of strings (Notion).
    Json,
}

/// Where a provider's requests go and what they look like, beyond the
/// token URL and client authentication.
#[derive(Clone, Debug, Default)]
pub struct RequestShape {
    /// Refresh requests go here instead of `token_url` (13 providers of a
    /// public catalogue have one).
    pub refresh_url: Option<reqwest::Url>,
    pub body: RequestBody,
}

/// Where a provider's token answer keeps its fields.
#[derive(Clone, Debug, Default)]
pub struct ResponseShape {
    /// The object holding the token fields, as a path of keys (Slack's user
    /// tokens: `["authed_user"]`); empty: the top level.
    pub token_path: Vec<String>,
}

/// One provider's settings. The client secret is a `SecretString`, so this
/// type's `Debug` never shows it.
#[derive(Clone)]
pub struct ProviderConfig {
    pub name: ProviderName,
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub client_auth: ClientAuth,
    /// Extra form fields sent with every token request (HubSpot wants
    /// `redirect_uri` on refresh too).
    pub extra_params: Vec<(String, String)>,
    /// Lifetime assumed when a response's `expires_in` is missing or absurd.
    pub default_lifetime: Duration,
    pub refresh_policy: RefreshPolicy,
    pub dialect: Dialect,
    /// Field of the token response naming the provider-side account, if the
    /// provider sends one (`account_id` for the sandbox, `hub_id` where a
    /// HubSpot-style endpoint adds it); a dotted path reaches into objects
    /// (`team.id`). Looked up beside the token fields first, then at the top.
    pub account_id_field: Option<String>,
    /// How long the provider keeps accepting a refresh token after rotating
    /// it (0: strict rotation). Within it, a refresh refused after a crash is
    /// retried once with the previous refresh token before giving up.
    pub rotation_grace: Duration,
    /// Least time between two on-demand refreshes that name no rejected
    /// token or version: `ForceRefresh` inside it returns the current token.
    pub min_refresh_interval: Duration,
    pub request: RequestShape,
    pub response: ResponseShape,
    pub grant: GrantType,
    /// Scopes asked for in a client-credentials request (`scope`).
    pub scopes: Vec<String>,
}

impl ProviderConfig {
    /// Default of `min_refresh_interval`.
    pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("client_auth", &self.client_auth)
            .field("extra_params", &self.extra_params)
            .field("default_lifetime", &self.default_lifetime)
            .field("refresh_policy", &self.refresh_policy)
            .field("dialect", &self.dialect)
            .field("account_id_field", &self.account_id_field)
            .field("rotation_grace", &self.rotation_grace)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("request", &self.request)
            .field("response", &self.response)
            .field("grant", &self.grant)
            .field("scopes", &self.scopes)
            .finish()
    }
}
