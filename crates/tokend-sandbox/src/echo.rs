//! The `EchoSecrets` fault: a careless (or hostile) provider that repeats
//! the request's secrets in its error body, in one of the encodings real
//! providers and their frameworks produce. Tests use it to show a client
//! never keeps or shows any of them.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// How an [`crate::Fault::EchoSecrets`] answer spells each secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Echo {
    /// As received.
    Raw,
    /// `application/x-www-form-urlencoded` (WHATWG: `*-._` kept, space `+`).
    Form,
    /// Python's `urllib.parse.quote_plus` (`_.-~` kept, space `+`).
    QuotePlus,
    /// JavaScript's `encodeURIComponent` (`-_.!~*'()` kept, space `%20`).
    EncodeUriComponent,
    /// Every byte as `%XX`, upper-case hex.
    PercentUpper,
    /// Every byte as `%xx`, lower-case hex.
    PercentLower,
    /// The bytes in lower-case hex.
    HexLower,
    /// The bytes in upper-case hex.
    HexUpper,
    /// Standard base64, padded.
    Base64,
    /// base64url without padding.
    Base64Url,
    /// Inside a JSON string with every non-alphanumeric character as
    /// `\uXXXX` (Python's `ensure_ascii`, and then some).
    JsonEscaped,
    /// The first half of each secret.
    FirstHalf,
    /// The second half of each secret.
    SecondHalf,
    /// The whole request body as received, and the `Authorization` header.
    Request,
}

impl Echo {
    /// Every encoding, in a fixed order.
    pub const ALL: [Echo; 14] = [
        Echo::Raw,
        Echo::Form,
        Echo::QuotePlus,
        Echo::EncodeUriComponent,
        Echo::PercentUpper,
        Echo::PercentLower,
        Echo::HexLower,
        Echo::HexUpper,
        Echo::Base64,
        Echo::Base64Url,
        Echo::JsonEscaped,
        Echo::FirstHalf,
        Echo::SecondHalf,
        Echo::Request,
    ];

    /// `secret` as this encoding spells it ([`Echo::Request`]: as is).
    pub fn apply(self, secret: &str) -> String {
        match self {
            Echo::Raw | Echo::Request => secret.to_owned(),
            Echo::Form => percent(secret, b"*-._", true, true),
            Echo::QuotePlus => percent(secret, b"_.-~", true, true),
            Echo::EncodeUriComponent => percent(secret, b"-_.!~*'()", false, true),
            Echo::PercentUpper => every_byte(secret, true),
            Echo::PercentLower => every_byte(secret, false),
            Echo::HexLower => secret.bytes().map(|b| format!("{b:02x}")).collect(),
            Echo::HexUpper => secret.bytes().map(|b| format!("{b:02X}")).collect(),
            Echo::Base64 => STANDARD.encode(secret),
            Echo::Base64Url => URL_SAFE_NO_PAD.encode(secret),
            Echo::JsonEscaped => {
                let mut out = String::new();
                for c in secret.chars() {
                    if c.is_ascii_alphanumeric() {
                        out.push(c);
                    } else {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                }
                out
            }
            Echo::FirstHalf => {
                let chars: Vec<char> = secret.chars().collect();
                chars[..chars.len().div_ceil(2)].iter().collect()
            }
            Echo::SecondHalf => {
                let chars: Vec<char> = secret.chars().collect();
                chars[chars.len() / 2..].iter().collect()
            }
        }
    }
}

/// Percent-encodes every byte but ASCII alphanumerics and `safe`; a space
/// as `+` when `plus`.
fn percent(s: &str, safe: &[u8], plus: bool, upper: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || safe.contains(&b) {
            out.push(char::from(b));
        } else if plus && b == b' ' {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn every_byte(s: &str, upper: bool) -> String {
    s.bytes()
        .map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// The secrets a token request carried: the secret form fields (form or
/// JSON body), and the HTTP Basic credentials, decoded and as sent.
fn secrets_of(headers: &HeaderMap, body: &[u8]) -> Vec<String> {
    const SECRET_FIELDS: [&str; 6] = [
        "refresh_token",
        "code",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "token",
    ];
    let mut fields: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        fields = map
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect();
    }
    let mut secrets: Vec<String> = fields
        .into_iter()
        .filter(|(k, v)| SECRET_FIELDS.contains(&k.as_str()) && !v.is_empty())
        .map(|(_, v)| v)
        .collect();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if let Ok((id, secret)) = crate::form::parse_basic(value.as_bytes()) {
            secrets.push(secret.clone());
            secrets.push(format!("{id}:{secret}"));
        }
        if let Some((_, credentials)) = value.to_str().ok().and_then(|v| v.split_once(' ')) {
            secrets.push(credentials.to_owned());
        }
    }
    secrets
}

/// A 400 `invalid_grant` whose description, message and correlation id
/// repeat the request's secrets in `encoding`.
pub(crate) fn response(encoding: Echo, headers: &HeaderMap, body: &[u8]) -> Response {
    let secrets = secrets_of(headers, body);
    let mut echoed: Vec<String> = secrets.iter().map(|s| encoding.apply(s)).collect();
    if encoding == Echo::Request {
        echoed.insert(0, String::from_utf8_lossy(body).into_owned());
    }
    let text = format!("echo: {}", echoed.join(" | "));
    let first = echoed.first().cloned().unwrap_or_default();
    let mut response = (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": text,
            "message": text,
            "correlationId": first,
            "error_uri": format!("https://provider.example/errors?echo={first}"),
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&first) {
        response.headers_mut().insert("x-correlation-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_spell_what_they_say() {
        let s = "a b/é";
        assert_eq!(Echo::Form.apply(s), "a+b%2F%C3%A9");
        assert_eq!(Echo::QuotePlus.apply("a~*"), "a~%2A");
        assert_eq!(Echo::EncodeUriComponent.apply(s), "a%20b%2F%C3%A9");
        assert_eq!(Echo::PercentLower.apply("a/"), "%61%2f");
        assert_eq!(Echo::HexUpper.apply("a/"), "612F");
        assert_eq!(Echo::JsonEscaped.apply("a/é"), "a\\u002f\\u00e9");
        assert_eq!(Echo::FirstHalf.apply("abcde"), "abc");
        assert_eq!(Echo::SecondHalf.apply("abcde"), "cde");
    }
}
