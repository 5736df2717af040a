//! Validation of a successful token response: what must be there, and what
//! to assume when the provider leaves something out or sends nonsense.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokend_core::{ErrorClass, Timestamp, TokenSet};

use crate::{config::ProviderConfig, error::ProviderError};

/// Longest access or refresh token accepted; real ones are far shorter.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// An `expires_in` beyond this is treated as absurd.
const MAX_PLAUSIBLE_LIFETIME: Duration = Duration::from_secs(400 * 24 * 3600);

fn malformed(message: &str, http_status: u16, correlation_id: Option<String>) -> ProviderError {
    ProviderError {
        class: ErrorClass::Transient,
        code: "malformed_response".into(),
        message: message.into(),
        http_status: Some(http_status),
        correlation_id,
        retry_after: None,
        salvage: None,
        unanswered: false,
    }
}

/// A token from the JSON body: a non-empty string of sane size without
/// whitespace or control characters.
fn token(value: Option<&Value>) -> Result<Option<SecretString>, &'static str> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_TOKEN_LEN => Err("token is too long"),
        Some(Value::String(s)) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err("token contains whitespace or control characters")
        }
        Some(Value::String(s)) => Ok(Some(SecretString::from(s.as_str()))),
        Some(_) => Err("token is not a string"),
    }
}

/// `expires_in` as the provider sent it (number or numeric string), if
/// plausible.
fn expires_in(value: Option<&Value>) -> Option<Duration> {
    let secs = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // Checked before converting: `Duration::from_secs_f64` panics on values
    // it cannot represent, and a provider may send anything.
    if !secs.is_finite() || secs < 1.0 || secs > MAX_PLAUSIBLE_LIFETIME.as_secs_f64() {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// `expires_at` (Unix seconds, as some providers send instead of
/// `expires_in`) as a lifetime from `sent_at`, if plausible.
fn expires_at(value: Option<&Value>, sent_at: Timestamp) -> Option<Duration> {
    let at = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    let secs = at - sent_at.unix_millis() as f64 / 1000.0;
    if !secs.is_finite() || secs < 1.0 || secs > MAX_PLAUSIBLE_LIFETIME.as_secs_f64() {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

fn scopes(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn account_id(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The object at `path` (keys) inside `value`.
fn at_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// A dotted field (`team.id`) inside `value`.
fn dotted<'a>(value: &'a Value, field: &str) -> Option<&'a Value> {
    field.split('.').try_fold(value, |v, key| v.get(key))
}

/// The refresh token of a 2xx body that failed validation, if one can still
/// be read: a non-empty JSON string of storable size with no whitespace or
/// control characters. With a rotating provider it is the only live one.
pub(crate) fn salvage_refresh_token(config: &ProviderConfig, body: &[u8]) -> Option<SecretString> {
    const MAX_SALVAGED_LEN: usize = 16 * 1024;
    let json: Value = serde_json::from_slice(body).ok()?;
    let fields = at_path(&json, &config.response.token_path)?;
    match fields.get("refresh_token")? {
        Value::String(s)
            if !s.is_empty()
                && s.len() <= MAX_SALVAGED_LEN
                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some(SecretString::from(s.as_str()))
        }
        _ => None,
    }
}

/// A validated token response.
pub(crate) struct Parsed {
    pub tokens: TokenSet,
    pub account_id: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Parses a 2xx body. `sent_at` is when the request left: measuring the
/// lifetime from then errs on the side of refreshing early.
pub(crate) fn parse(
    config: &ProviderConfig,
    body: &[u8],
    http_status: u16,
    correlation_id: Option<String>,
    sent_at: Timestamp,
) -> Result<Parsed, ProviderError> {
    let fail = |m: &str| malformed(m, http_status, correlation_id.clone());
    let json: Value =
        serde_json::from_slice(body).map_err(|_| fail("token response is not JSON"))?;
    if !json.is_object() {
        return Err(fail("token response is not a JSON object"));
    }
    let Some(Value::Object(map)) = at_path(&json, &config.response.token_path) else {
        return Err(fail(
            "token response has no object at the configured token_path",
        ));
    };
    let access_token = token(map.get("access_token"))
        .map_err(fail)?
        .ok_or_else(|| fail("token response has no access_token"))?;
    let refresh_token = token(map.get("refresh_token")).map_err(fail)?;
    let token_type = match map.get("token_type").and_then(Value::as_str) {
        None | Some("") => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) if t.len() <= 32 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            t.to_owned()
        }
        Some(_) => return Err(fail("token response has an invalid token_type")),
    };
    let lifetime = expires_in(map.get("expires_in"))
        .or_else(|| expires_at(map.get("expires_at"), sent_at))
        .unwrap_or(config.default_lifetime);
    let fields = Value::Object(map.clone());
    let account = config.account_id_field.as_deref().and_then(|field| {
        account_id(dotted(&fields, field)).or_else(|| account_id(dotted(&json, field)))
    });
    Ok(Parsed {
        tokens: TokenSet {
            access_token,
            refresh_token,
            token_type,
            scopes: scopes(map.get("scope").or_else(|| map.get("scopes"))),
            expires_at: sent_at.saturating_add(lifetime),
            obtained_at: sent_at,
        },
        account_id: account,
        metadata: config
            .response
            .metadata_fields
            .iter()
            .filter_map(|field| {
                let value = match dotted(&fields, field).or_else(|| dotted(&json, field))? {
                    Value::String(s) if s.len() <= 2048 && !s.chars().any(char::is_control) => {
                        s.clone()
                    }
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((field.clone(), value))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::{ClientAuth, Dialect};

    fn config() -> ProviderConfig {
        ProviderConfig {
            name: tokend_core::ProviderName::new("p").unwrap(),
            token_url: "http://127.0.0.1:1/token".parse().unwrap(),
            client_id: "id".into(),
            client_secret: "secret".into(),
            client_auth: ClientAuth::ClientSecretPost,
            extra_params: vec![],
            default_lifetime: Duration::from_secs(1800),
            refresh_policy: Default::default(),
            dialect: Dialect::Rfc6749,
            account_id_field: Some("hub_id".into()),
            rotation_grace: Duration::ZERO,
            min_refresh_interval: ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL,
            request: Default::default(),
            response: Default::default(),
            grant: Default::default(),
            scopes: vec![],
        }
    }

    fn parse_str(body: &str) -> Result<Parsed, ProviderError> {
        parse(
            &config(),
            body.as_bytes(),
            200,
            None,
            Timestamp::from_unix_millis(0),
        )
    }

    #[test]
    fn a_complete_response() {
        let p = parse_str(
            r#"{"access_token":"a","refresh_token":"r","token_type":"bearer","expires_in":60,"scope":"x y","hub_id":42}"#,
        )
        .unwrap();
        assert_eq!(p.tokens.access_token.expose_secret(), "a");
        assert_eq!(p.tokens.refresh_token.unwrap().expose_secret(), "r");
        assert_eq!(p.tokens.token_type, "Bearer");
        assert_eq!(p.tokens.expires_at.unix_millis(), 60_000);
        assert_eq!(p.tokens.scopes, ["x", "y"]);
        assert_eq!(p.account_id.as_deref(), Some("42"));
    }

    #[test]
    fn missing_or_absurd_expires_in_falls_back_to_the_default() {
        for body in [
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a","expires_in":0}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":1e300}"#,
            r#"{"access_token":"a","expires_in":"soon"}"#,
            r#"{"access_token":"a","expires_in":[1]}"#,
        ] {
            let p = parse_str(body).unwrap();
            assert_eq!(p.tokens.expires_at.unix_millis(), 1_800_000, "{body}");
        }
        let p = parse_str(r#"{"access_token":"a","expires_in":"120"}"#).unwrap();
        assert_eq!(p.tokens.expires_at.unix_millis(), 120_000);
    }

    /// Issue 16: `expires_at` (Unix seconds) when there is no `expires_in`,
    /// and token fields at a nested path with the account at a dotted one.
    #[test]
    fn expires_at_and_nested_token_fields() {
        let p = parse_str(r#"{"access_token":"a","expires_at":900}"#).unwrap();
        assert_eq!(p.tokens.expires_at.unix_millis(), 900_000);
        let p = parse_str(r#"{"access_token":"a","expires_at":"nonsense"}"#).unwrap();
        assert_eq!(p.tokens.expires_at.unix_millis(), 1_800_000);
        let mut cfg = config();
        cfg.response.token_path = vec!["authed_user".into()];
        cfg.account_id_field = Some("team.id".into());
        let body = r#"{"ok":true,"authed_user":{"access_token":"u","refresh_token":"r","expires_in":60},"team":{"id":"T1"}}"#;
        let p = parse(
            &cfg,
            body.as_bytes(),
            200,
            None,
            Timestamp::from_unix_millis(0),
        )
        .unwrap();
        assert_eq!(p.tokens.access_token.expose_secret(), "u");
        assert_eq!(p.tokens.expires_at.unix_millis(), 60_000);
        assert_eq!(p.account_id.as_deref(), Some("T1"));
        assert_eq!(
            salvage_refresh_token(&cfg, body.as_bytes()).map(|r| r.expose_secret().to_owned()),
            Some("r".to_owned())
        );
        let e = parse(
            &cfg,
            br#"{"access_token":"top"}"#,
            200,
            None,
            Timestamp::from_unix_millis(0),
        )
        .err()
        .unwrap();
        assert_eq!(e.code, "malformed_response");
    }

    #[test]
    fn invalid_responses_are_transient_errors_without_the_body() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"refresh_token":"r"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":12}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a","token_type":"<script>"}"#,
        ] {
            let e = parse_str(body).err().unwrap();
            assert_eq!(e.class, ErrorClass::Transient, "{body}");
            assert_eq!(e.code, "malformed_response");
        }
    }
}
