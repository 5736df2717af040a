//! What tokend needs to know about one OAuth provider.

use std::{borrow::Cow, collections::BTreeMap, fmt, time::Duration};

use secrecy::SecretString;
use tokend_core::{ProviderName, RefreshPolicy};

use crate::template::{MAX_PARAM_LEN, UrlPlace, UrlTemplate, valid_label, valid_param_value};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (HubSpot).
    ClientSecretPost,
    /// HTTP Basic with the url-encoded id and secret.
    ClientSecretBasic,
    /// A public client (RFC 6749 §2.1; most MCP servers): `client_id` in
    /// the body and no secret.
    None,
    /// Both HTTP Basic and the body fields, for the few providers that
    /// demand it (against RFC 6749 §2.3.1).
    Both,
    /// A JWT signed with the client's private key (RFC 7523 §2.2,
    /// `private_key_jwt`): `client_assertion` in the body, no secret; the
    /// key is [`RequestShape::client_assertion`].
    PrivateKeyJwt,
    /// Mutual TLS (RFC 8705 §2): the client certificate of
    /// [`RequestShape::tls`] authenticates; `client_id` in the body.
    TlsClientAuth,
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
    /// Microsoft identity platform: RFC 6749 codes refined by the `AADSTS`
    /// number in `error_codes`: consent (65001, 65004) and interaction
    /// (50076, 50079, 50158, 53003) required are their own codes.
    Microsoft,
    /// Zoho: `invalid_code` (in HTTP 200) is a dead grant; `"Access Denied"`
    /// means throttled.
    Zoho,
    /// Facebook's Graph API: `{"error":{"type":"OAuthException","code":190}}`;
    /// code 190 is a dead token, 4/17/32/613 throttling.
    Facebook,
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
    /// Per-connection endpoints (`https://{subdomain}.zendesk.com/oauth/tokens`):
    /// filled from the connection's parameters by
    /// [`ProviderConfig::for_connection`], replacing `token_url` and
    /// `refresh_url`.
    pub token_url_template: Option<UrlTemplate>,
    pub refresh_url_template: Option<UrlTemplate>,
    /// A per-connection `aud` for client assertions, filled like the URLs
    /// (and under the same host rule) into [`Self::client_assertion`].
    pub jwt_audience_template: Option<UrlTemplate>,
    /// The values a connection parameter may take, where the provider
    /// lists them (Zoho's `dc`: `com`, `eu`, `com.au`...). A listed
    /// parameter may stand anywhere in a host; one not listed may only be
    /// one DNS label left of a fixed registrable domain.
    pub param_values: BTreeMap<String, Vec<String>>,
    /// Sent with refreshes only, after `extra_params`.
    pub refresh_params: Vec<(String, String)>,
    /// Sent with code exchanges only.
    pub exchange_params: Vec<(String, String)>,
    /// Added to the token URL's query string.
    pub query_params: Vec<(String, String)>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// RFC 7009 revocation endpoint.
    pub revocation_url: Option<reqwest::Url>,
    /// Revoke a connection's grant there when it is deleted.
    pub revoke_on_delete: bool,
    /// Renew by presenting the current access token instead of a refresh
    /// token (Facebook's `fb_exchange_token`): long-lived tokens, no refresh
    /// token.
    pub refresh_with_access_token: bool,
    /// The refresh request's `grant_type` [default: `refresh_token`].
    pub refresh_grant_type: Option<String>,
    /// The parameter carrying the presented token [default: `refresh_token`].
    pub refresh_token_param: Option<String>,
    /// Signs the client assertions of [`ClientAuth::PrivateKeyJwt`].
    pub client_assertion: Option<crate::assertion::AssertionSigner>,
    /// A client certificate (mutual TLS) and private roots for this
    /// provider's endpoints.
    pub tls: Option<crate::tls::ClientTls>,
}

/// Whether `name: value` is a valid HTTP header (before any placeholder
/// is filled: a filled value only adds hostname characters).
pub fn valid_header(name: &str, value: &str) -> bool {
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value).is_ok()
}

/// Where a provider's token answer keeps its fields.
#[derive(Clone, Debug, Default)]
pub struct ResponseShape {
    /// The object holding the token fields, as a path of keys (Slack's user
    /// tokens: `["authed_user"]`); empty: the top level.
    pub token_path: Vec<String>,
    /// Dotted fields of an answer kept as connection metadata (Salesforce's
    /// `instance_url`): string or number values of up to 2,048 characters.
    pub metadata_fields: Vec<String>,
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

    /// The parameters a connection must give at Install: the names of the
    /// URL templates' placeholders.
    pub fn connection_params(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .url_templates()
            .flat_map(|(_, t)| t.names().iter().cloned())
            .collect();
        for (_, value) in self.param_lists().flat_map(|l| l.iter()) {
            if let Ok(Some(t)) = UrlTemplate::parse(value) {
                names.extend(t.names().iter().cloned());
            }
        }
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every template of a URL (or an audience) that a secret or a signed
    /// assertion goes with, by its config key.
    fn url_templates(&self) -> impl Iterator<Item = (&'static str, &UrlTemplate)> {
        [
            ("token_url", &self.request.token_url_template),
            ("refresh_url", &self.request.refresh_url_template),
            ("jwt_audience", &self.request.jwt_audience_template),
        ]
        .into_iter()
        .filter_map(|(key, t)| t.as_ref().map(|t| (key, t)))
    }

    /// Whether placeholder `name` stands in the host of some URL.
    fn in_a_host(&self, name: &str) -> bool {
        self.url_templates().any(|(_, t)| {
            t.places().map_or(true, |p| {
                p.iter()
                    .any(|&(n, place)| n == name && place == UrlPlace::Host)
            })
        })
    }

    /// Whether `value` may fill placeholder `name`: one of the listed
    /// values where the provider lists them; otherwise one DNS label where
    /// `name` is in a host, a hostname-safe value elsewhere. The error says
    /// what is allowed and never quotes the value.
    pub fn check_param(&self, name: &str, value: &str) -> Result<(), String> {
        if let Some(values) = self.request.param_values.get(name) {
            if values.iter().any(|v| v == value) {
                return Ok(());
            }
            return Err(format!("must be one of {}", values.join(", ")));
        }
        if !valid_param_value(value) {
            return Err(format!(
                "must be 1 to {MAX_PARAM_LEN} letters, digits, '-' or '.', starting and ending with a letter or digit"
            ));
        }
        if self.in_a_host(name) && !valid_label(value) {
            return Err("must be one DNS label (1 to 63 letters, digits or '-', no dot): it names a host under the provider's domain".into());
        }
        Ok(())
    }

    /// The configuration's check of its templates: each placeholder of a
    /// URL in the host, path or query; none able to choose a host's
    /// registrable domain unless its values are listed; each list for a
    /// parameter some template names, of values that fill every URL into
    /// a valid one.
    pub fn check_templates(&self) -> Result<(), String> {
        let listed = &self.request.param_values;
        for (key, t) in self.url_templates() {
            t.check_host(|n| listed.contains_key(n))
                .map_err(|e| format!("{key}: {e}"))?;
        }
        let names = self.connection_params();
        for (name, values) in listed {
            if !names.contains(name) {
                return Err(format!("param_values.{name}: no template names {{{name}}}"));
            }
            if values.is_empty() {
                return Err(format!("param_values.{name} is empty"));
            }
            if let Some(bad) = values.iter().find(|v| !valid_param_value(v)) {
                return Err(format!(
                    "param_values.{name}: {bad:?} must be letters, digits, '-' and '.', starting and ending with a letter or digit"
                ));
            }
        }
        // Every listed value, with the first of every other list (or a
        // sample label), makes a valid URL.
        for (key, t) in self.url_templates() {
            let sample: BTreeMap<String, String> = t
                .names()
                .iter()
                .map(|n| {
                    let v = listed.get(n).and_then(|v| v.first());
                    (n.clone(), v.map_or("sample", String::as_str).to_owned())
                })
                .collect();
            for name in t.names() {
                for value in listed.get(name).into_iter().flatten() {
                    let mut params = sample.clone();
                    params.insert(name.clone(), value.clone());
                    t.render(&params)
                        .map_err(|e| format!("{key} with param_values.{name} = {value:?}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Every list of parameters or headers whose values may hold
    /// placeholders.
    fn param_lists(&self) -> impl Iterator<Item = &Vec<(String, String)>> {
        [
            &self.extra_params,
            &self.request.refresh_params,
            &self.request.exchange_params,
            &self.request.query_params,
            &self.request.headers,
        ]
        .into_iter()
    }

    /// This provider as one connection sees it: its templates filled from
    /// `params`, each value checked first ([`Self::check_param`]), so a
    /// connection stored before a rule or a list changed is refused, not
    /// sent anywhere. Borrowed when there is nothing to fill.
    pub fn for_connection(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Cow<'_, ProviderConfig>, String> {
        let wanted = self.connection_params();
        if wanted.is_empty() {
            return Ok(Cow::Borrowed(self));
        }
        for name in &wanted {
            let value = params
                .get(name)
                .ok_or_else(|| format!("the connection has no parameter {name:?}"))?;
            self.check_param(name, value)
                .map_err(|e| format!("parameter {name:?} {e}"))?;
        }
        let mut config = self.clone();
        if let Some(t) = &self.request.token_url_template {
            config.token_url = t.render(params)?;
        }
        if let Some(t) = &self.request.refresh_url_template {
            config.request.refresh_url = Some(t.render(params)?);
        }
        if let (Some(t), Some(signer)) = (
            &self.request.jwt_audience_template,
            &self.request.client_assertion,
        ) {
            config.request.client_assertion =
                Some(signer.with_audience(t.render(params)?.to_string()));
        }
        let fill_all = |list: &mut Vec<(String, String)>| -> Result<(), String> {
            for (_, value) in list.iter_mut() {
                if let Some(t) = UrlTemplate::parse(value)? {
                    *value = t.fill(params)?;
                }
            }
            Ok(())
        };
        fill_all(&mut config.extra_params)?;
        fill_all(&mut config.request.refresh_params)?;
        fill_all(&mut config.request.exchange_params)?;
        fill_all(&mut config.request.query_params)?;
        fill_all(&mut config.request.headers)?;
        Ok(Cow::Owned(config))
    }
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
