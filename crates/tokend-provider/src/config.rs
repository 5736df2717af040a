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
    pub client_assertion: Option<crate::AssertionSigner>,
    /// A client certificate (mutual TLS) and private roots for this
    /// provider's endpoints.
    pub tls: Option<crate::ClientTls>,
}

/// A URL with `{name}` placeholders, each filled from a connection
/// parameter: a hostname-safe value (letters, digits, `-` and `.`), so no
/// value can change the URL's scheme, host boundary or path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlTemplate {
    template: String,
    names: Vec<String>,
}

/// Whether `name: value` is a valid HTTP header (before any placeholder
/// is filled: a filled value only adds hostname characters).
pub fn valid_header(name: &str, value: &str) -> bool {
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value).is_ok()
}

/// Longest connection parameter value (a DNS name's length).
pub const MAX_PARAM_LEN: usize = 253;

/// Whether `value` may fill a URL placeholder: 1 to 253 letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, no `..`.
pub fn valid_param_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PARAM_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !value.contains("..")
}

impl UrlTemplate {
    /// `None` when `template` has no placeholder; an error for an unclosed
    /// or empty one, or one whose name is not `[a-z0-9_]`.
    pub fn parse(template: &str) -> Result<Option<UrlTemplate>, String> {
        let mut names = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {template:?}"))?;
            let name = &after[..close];
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            {
                return Err(format!(
                    "placeholder {{{name}}} must be a name of a-z, 0-9 and _"
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
            rest = &after[close + 1..];
        }
        if rest.contains('}') || names.is_empty() && template.contains('}') {
            return Err(format!("unmatched }} in {template:?}"));
        }
        Ok((!names.is_empty()).then(|| UrlTemplate {
            template: template.to_owned(),
            names,
        }))
    }

    /// The placeholders' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text with every placeholder filled from `params`.
    pub fn fill(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, String> {
        let mut text = self.template.clone();
        for name in &self.names {
            let value = params
                .get(name)
                .ok_or_else(|| format!("the connection has no parameter {name:?}"))?;
            if !valid_param_value(value) {
                return Err(format!("parameter {name:?} is not a hostname-safe value"));
            }
            text = text.replace(&format!("{{{name}}}"), value);
        }
        Ok(text)
    }

    /// The URL with every placeholder filled from `params`.
    pub fn render(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<reqwest::Url, String> {
        self.fill(params)?
            .parse()
            .map_err(|e| format!("the filled-in URL is invalid: {e}"))
    }
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
        let mut names: Vec<String> = [
            &self.request.token_url_template,
            &self.request.refresh_url_template,
        ]
        .into_iter()
        .flatten()
        .flat_map(|t| t.names().iter().cloned())
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

    /// This provider as one connection sees it: its URL templates filled
    /// from `params`. Borrowed when there is nothing to fill.
    pub fn for_connection(
        &self,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::borrow::Cow<'_, ProviderConfig>, String> {
        if self.connection_params().is_empty() {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let mut config = self.clone();
        if let Some(t) = &self.request.token_url_template {
            config.token_url = t.render(params)?;
        }
        if let Some(t) = &self.request.refresh_url_template {
            config.request.refresh_url = Some(t.render(params)?);
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
        Ok(std::borrow::Cow::Owned(config))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn url_templates_parse_fill_and_refuse_injection() {
        assert_eq!(UrlTemplate::parse("https://x.example/t").unwrap(), None);
        let t = UrlTemplate::parse("https://{subdomain}.zendesk.com/oauth/tokens?r={region}")
            .unwrap()
            .unwrap();
        assert_eq!(t.names(), ["subdomain", "region"]);
        let params: BTreeMap<String, String> = [
            ("subdomain".to_owned(), "acme".to_owned()),
            ("region".to_owned(), "eu-1".to_owned()),
        ]
        .into();
        assert_eq!(
            t.render(&params).unwrap().as_str(),
            "https://acme.zendesk.com/oauth/tokens?r=eu-1"
        );
        for bad in ["{", "x}", "{}", "{Sub}", "https://{a b}.x"] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad}");
        }
        let mut evil = params.clone();
        evil.insert("subdomain".into(), "evil.com/x?".into());
        assert!(t.render(&evil).is_err());
        evil.remove("subdomain");
        assert!(t.render(&evil).is_err(), "a missing parameter");
        for ok in ["a", "acme", "my-shop", "127.0.0.1", "eu.acme"] {
            assert!(valid_param_value(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a@b",
            "a:1",
            "a b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!valid_param_value(bad), "{bad}");
        }
    }
}
