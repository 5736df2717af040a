//! Parsing of token-request bodies and client authentication (RFC 6749 §2.3.1, §3.2).

use std::borrow::Cow;
use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use percent_encoding::percent_decode_str;

use crate::error::OAuthError;

/// Standard base64 that accepts credentials with or without `=` padding: some clients strip it.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The parameters of an `application/x-www-form-urlencoded` token request.
#[derive(Debug, Default)]
pub(crate) struct TokenForm {
    fields: HashMap<String, String>,
}

impl TokenForm {
    /// Checks the content type and decodes the body.
    ///
    /// Per RFC 6749 §3.2 parameters without a value count as omitted, and a parameter sent
    /// twice is an `invalid_request` (which also keeps clients honest about what they send).
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        if !is_form_content_type(headers) {
            return Err(OAuthError::invalid_request(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let mut fields = HashMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            if value.is_empty() {
                continue;
            }
            if fields
                .insert(name.into_owned(), value.into_owned())
                .is_some()
            {
                return Err(OAuthError::invalid_request(
                    "request parameters must not be repeated",
                ));
            }
        }
        Ok(Self { fields })
    }

    /// Decodes a JSON object of string values (as Notion takes them); empty values count as
    /// omitted, as in a form.
    pub(crate) fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(OAuthError::invalid_request(
                "content type must be application/json",
            ));
        }
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
            return Err(OAuthError::invalid_request("body must be a JSON object"));
        };
        let mut fields = HashMap::new();
        for (name, value) in map {
            match value {
                serde_json::Value::String(v) if v.is_empty() => {}
                serde_json::Value::String(v) => {
                    fields.insert(name, v);
                }
                _ => {
                    return Err(OAuthError::invalid_request(
                        "request parameters must be strings",
                    ));
                }
            }
        }
        Ok(Self { fields })
    }

    /// Every parameter, secret values replaced by `[redacted]`.
    pub(crate) fn redacted(&self) -> std::collections::BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(k, v)| {
                let secret = matches!(
                    k.as_str(),
                    "refresh_token"
                        | "code"
                        | "code_verifier"
                        | "client_secret"
                        | "access_token"
                        | "client_assertion"
                ) || k.contains("token");
                let v = if secret {
                    "[redacted]".to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// A parameter the grant cannot do without.
    pub(crate) fn require(&self, name: &str, missing: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(missing))
    }
}

/// `application/x-www-form-urlencoded`, with any parameters (e.g. `; charset=UTF-8`).
fn is_form_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Client credentials as presented, before they are checked against the provider's client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientCredentials<'a> {
    pub id: Cow<'a, str>,
    pub secret: Cow<'a, str>,
}

/// Extracts the client credentials from `Authorization: Basic` or the `client_id` /
/// `client_secret` form fields.
///
/// RFC 6749 §2.3.1 says a client MUST NOT use both methods, so a secret in both places is an
/// `invalid_request`; a `client_id` field next to Basic auth is tolerated (many libraries add it)
/// as long as it names the same client.
pub(crate) fn client_credentials<'a>(
    headers: &HeaderMap,
    form: &'a TokenForm,
) -> Result<ClientCredentials<'a>, OAuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if form.get("client_secret").is_some() {
            return Err(OAuthError::invalid_request(
                "use either HTTP Basic or form fields for client authentication, not both",
            ));
        }
        let (id, secret) = parse_basic(value.as_bytes())?;
        if form.get("client_id").is_some_and(|field| field != id) {
            return Err(OAuthError::invalid_client(
                "client_id does not match the authenticated client",
            ));
        }
        return Ok(ClientCredentials {
            id: Cow::Owned(id),
            secret: Cow::Owned(secret),
        });
    }
    match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Ok(ClientCredentials {
            id: Cow::Borrowed(id),
            secret: Cow::Borrowed(secret),
        }),
        _ => Err(OAuthError::invalid_client(
            "client authentication is required",
        )),
    }
}

/// Decodes `Basic base64(client_id:client_secret)`.
///
/// RFC 6749 §2.3.1 has clients form-urlencode both parts before base64, so they are decoded
/// here; clients that skip that step still work for credentials without `%` or `+` in them.
pub(crate) fn parse_basic(value: &[u8]) -> Result<(String, String), OAuthError> {
    const MALFORMED: &str = "malformed Basic authorization header";
    let value = std::str::from_utf8(value).map_err(|_| OAuthError::invalid_client(MALFORMED))?;
    let (scheme, encoded) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| OAuthError::invalid_client(MALFORMED))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "client authentication must use the Basic scheme",
        ));
    }
    let decoded = BASIC_BASE64
        .decode(encoded.trim())
        .map_err(|_| OAuthError::invalid_client(MALFORMED))?;
    let decoded = String::from_utf8(decoded).map_err(|_| OAuthError::invalid_client(MALFORMED))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| OAuthError::invalid_client(MALFORMED))?;
    Ok((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(part: &str) -> Result<String, OAuthError> {
    let spaced = part.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| OAuthError::invalid_client("malformed Basic authorization header"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::error::ErrorCode;

    fn form_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
        );
        headers
    }

    #[test]
    fn empty_values_count_as_omitted_and_repeats_are_rejected() {
        let form = TokenForm::parse(&form_headers(), b"a=1&b=&c=%20x").expect("valid form");
        assert_eq!(form.get("a"), Some("1"));
        assert_eq!(form.get("b"), None);
        assert_eq!(form.get("c"), Some(" x"));
        let err = TokenForm::parse(&form_headers(), b"a=1&a=2").expect_err("repeated");
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn wrong_content_type_is_invalid_request() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let err = TokenForm::parse(&headers, b"{}").expect_err("json body");
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(TokenForm::parse(&HeaderMap::new(), b"").is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded_and_padding_is_optional() {
        // base64("my%20id:s+cret") without padding.
        let (id, secret) = parse_basic(b"basic bXklMjBpZDpzK2NyZXQ").expect("valid");
        assert_eq!((id.as_str(), secret.as_str()), ("my id", "s cret"));
    }

    #[test]
    fn malformed_basic_headers_are_invalid_client() {
        for value in [
            &b"Basic"[..],
            b"Basic !!!",
            b"Bearer abc",
            b"Basic bm9jb2xvbg==", // "nocolon"
            b"Basic \xff\xfe",
            b"Basic JQ==", // "%" alone is fine, but no colon
        ] {
            let err = parse_basic(value).expect_err("malformed");
            assert_eq!(err.code, ErrorCode::InvalidClient);
        }
    }

    #[test]
    fn a_secret_in_both_places_is_invalid_request() {
        let mut headers = form_headers();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        let form = TokenForm::parse(&headers, b"client_secret=b").expect("valid form");
        let err = client_credentials(&headers, &form).expect_err("both methods");
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }
}
