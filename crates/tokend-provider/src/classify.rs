//! Turns a provider's error answer into an `ErrorClass`, whichever dialect
//! it speaks, and makes its message safe to keep.
//!
//! Only known error fields are read from a body, never the body itself: the
//! code (`error`, HubSpot's `status`, Facebook's `error.code`, Microsoft's
//! first `error_codes`), the description (`error_description`, HubSpot's
//! `message`, Facebook's `error.message`) and the correlation id
//! (`correlationId`, `request_id`, `correlation_id`, Microsoft's `trace_id`,
//! `fbtrace_id`). A body
//! that is not a JSON object gives only its status and a fixed note. What is
//! kept is then stripped of every secret sent, in any encoding
//! (`redact.rs`), and bounded.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokend_core::ErrorClass;

use crate::{config::Dialect, error::ProviderError, redact::Redactor};

/// Longest provider message kept.
const MAX_MESSAGE_LEN: usize = 200;

/// Error codes that mean the grant itself is dead.
const REVOKED: &[&str] = &[
    "invalid_grant",
    "BAD_REFRESH_TOKEN",
    "BAD_AUTH_CODE",
    "BAD_GRANT",
    // Slack
    "invalid_refresh_token",
    "invalid_code",
    "code_already_used",
    "token_revoked",
    // GitHub
    "bad_refresh_token",
    "bad_verification_code",
    // The grant needs the user back (Microsoft and OpenID Connect).
    "consent_required",
    "interaction_required",
    "login_required",
];
/// Error codes that say to slow down, whatever the HTTP status.
const RATE_LIMITED: &[&str] = &["ratelimited", "rate_limited", "RATE_LIMITS"];
/// Error codes that blame tokend's client registration, not the connection.
const MISCONFIGURED: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_request",
    "invalid_scope",
    "BAD_CLIENT_ID",
    "BAD_CLIENT_SECRET",
    "BAD_REDIRECT_URI",
    "BAD_REQUEST",
    // Slack
    "invalid_client_id",
    "bad_client_secret",
    "invalid_grant_type",
    "invalid_arguments",
    "bad_redirect_uri",
    // GitHub
    "incorrect_client_credentials",
    "redirect_uri_mismatch",
];

/// The code, message and correlation id in an error body.
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    correlation_id: Option<String>,
}

fn string_field(map: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn parse_body(dialect: Dialect, body: &[u8]) -> ErrorBody {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return ErrorBody {
            code: None,
            message: None,
            correlation_id: None,
        };
    };
    if dialect == Dialect::Facebook
        && let Some(Value::Object(error)) = map.get("error")
    {
        return facebook_error(error);
    }
    let rfc_code = string_field(&map, "error");
    let rfc_message = string_field(&map, "error_description");
    let hs_code = string_field(&map, "status").filter(|s| s != "error");
    let hs_message = string_field(&map, "message");
    let correlation_id =
        string_field(&map, "correlationId").or_else(|| string_field(&map, "request_id"));
    // Each dialect prefers its own fields but understands the other's: many
    // providers mix them.
    let rfc_code = match dialect {
        Dialect::Microsoft => microsoft_code(&map).or(rfc_code),
        // Zoho's throttling reads like a refusal.
        Dialect::Zoho if rfc_code.as_deref() == Some("Access Denied") => {
            Some("rate_limited".into())
        }
        _ => rfc_code,
    };
    let correlation_id = correlation_id
        .or_else(|| string_field(&map, "correlation_id"))
        .or_else(|| string_field(&map, "trace_id"));
    let (code, message) = match dialect {
        Dialect::Rfc6749
        | Dialect::Slack
        | Dialect::Github
        | Dialect::Microsoft
        | Dialect::Zoho
        | Dialect::Facebook => (rfc_code.or(hs_code), rfc_message.or(hs_message)),
        Dialect::Hubspot => (hs_code.or(rfc_code), hs_message.or(rfc_message)),
    };
    ErrorBody {
        code,
        message,
        correlation_id,
    }
}

/// Facebook's nested error object: its numeric code read as the RFC code it
/// means.
fn facebook_error(error: &serde_json::Map<String, Value>) -> ErrorBody {
    let code = error.get("code").and_then(Value::as_i64).map(|c| match c {
        190 | 102 | 463 => "invalid_grant".to_owned(),
        4 | 17 | 32 | 613 | 80004 => "rate_limited".to_owned(),
        1 | 101 => "invalid_client".to_owned(),
        other => format!("facebook_{other}"),
    });
    ErrorBody {
        code,
        message: string_field(error, "message"),
        correlation_id: string_field(error, "fbtrace_id"),
    }
}

/// What Microsoft's first `AADSTS` number in `error_codes` says beyond the
/// RFC 6749 code: consent or interaction required.
fn microsoft_code(map: &serde_json::Map<String, Value>) -> Option<String> {
    let first = map.get("error_codes")?.as_array()?.first()?.as_u64()?;
    match first {
        65001 | 65004 => Some("consent_required".into()),
        50076 | 50079 | 50158 | 53003 => Some("interaction_required".into()),
        _ => None,
    }
}

/// Whether a 2xx body is a refusal, not a grant: Slack's `"ok": false`, or
/// an `error` with no `access_token` (GitHub, and any provider that answers
/// 200 to everything). Such an answer is classified like an error status,
/// never taken for a malformed grant (which would be retried as transient
/// and leave the refresh in doubt).
pub(crate) fn is_refusal(body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    map.get("ok") == Some(&Value::Bool(false))
        || (map.get("error").is_some_and(Value::is_string) && !map.contains_key("access_token"))
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub(crate) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Characters that show nothing (zero-width, bidirectional overrides, the
/// byte-order mark): dropped, so they can neither split a secret to slip it
/// past redaction nor disguise text in the console.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
    )
}

/// Keeps a provider message short, printable and free of the secrets sent,
/// in any encoding.
pub(crate) fn sanitize(message: &str, secrets: &Redactor) -> String {
    let printable: String = message
        .chars()
        .filter(|&c| !is_invisible(c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = secrets.redact(&printable);
    if out.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// `code` if it is one of the codes tokend classifies by.
fn known_code(code: &str) -> Option<&'static str> {
    [RATE_LIMITED, REVOKED, MISCONFIGURED]
        .into_iter()
        .flatten()
        .copied()
        .find(|known| *known == code)
}

/// Classifies a non-2xx answer, or a 2xx refusal ([`is_refusal`]).
pub(crate) fn classify(
    dialect: Dialect,
    http_status: u16,
    body: &[u8],
    header_correlation_id: Option<String>,
    retry_after: Option<Duration>,
    secrets: &Redactor,
) -> ProviderError {
    let parsed = parse_body(dialect, body);
    // Classified on the code as the provider wrote it: redaction may cut a
    // short secret's window out of `invalid_client`, and a dead grant must
    // not become a transient error by that.
    let raw = parsed.code.filter(|c| !c.is_empty() && c.len() <= 64);
    let class = match (http_status, raw.as_deref()) {
        (429, _) => ErrorClass::RateLimited,
        (500..=599, _) => ErrorClass::Transient,
        (_, Some(c)) if RATE_LIMITED.contains(&c) => ErrorClass::RateLimited,
        (_, Some(c)) if REVOKED.contains(&c) => ErrorClass::Revoked,
        (_, Some(c)) if MISCONFIGURED.contains(&c) => ErrorClass::ClientMisconfigured,
        // A bare 401/403 from a token endpoint rejects the client itself.
        (401 | 403, _) => ErrorClass::ClientMisconfigured,
        // Anything else unknown: retry with backoff rather than declare the
        // grant dead on a guess.
        _ => ErrorClass::Transient,
    };
    // A code tokend knows is kept as the constant it is; any other is
    // redacted like the rest of the body.
    let code = raw.map(|c| match known_code(&c) {
        Some(known) => known.to_owned(),
        None => sanitize(&c, secrets),
    });
    ProviderError {
        class,
        code: code.unwrap_or_else(|| format!("http_{http_status}")),
        message: sanitize(
            parsed.message.as_deref().unwrap_or("no error description"),
            secrets,
        ),
        http_status: Some(http_status),
        correlation_id: parsed
            .correlation_id
            .or(header_correlation_id)
            .map(|c| sanitize(&c, secrets)),
        retry_after,
        salvage: None,
        unanswered: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(dialect: Dialect, status: u16, body: &str) -> ProviderError {
        classify(
            dialect,
            status,
            body.as_bytes(),
            None,
            None,
            &Redactor::new(["rt-secret-123"]),
        )
    }

    /// Invariant: a known error code is classified and kept as the provider
    /// wrote it, even when a short secret shares a window with it (a client
    /// secret `client12` redacts `clie` wherever it appears).
    #[test]
    fn codes_are_classified_before_redaction() {
        for (secret, body, class, code) in [
            (
                "client12",
                r#"{"error":"invalid_client"}"#,
                ErrorClass::ClientMisconfigured,
                "invalid_client",
            ),
            (
                "grant123",
                r#"{"error":"invalid_grant","error_description":"grant123 is dead"}"#,
                ErrorClass::Revoked,
                "invalid_grant",
            ),
        ] {
            let e = classify(
                Dialect::Rfc6749,
                400,
                body.as_bytes(),
                None,
                None,
                &Redactor::new([secret]),
            );
            assert_eq!((e.class, e.code.as_str()), (class, code), "{secret}");
            assert!(!e.message.contains(secret), "{}", e.message);
        }
    }

    #[test]
    fn rfc6749_codes() {
        let e = c(
            Dialect::Rfc6749,
            400,
            r#"{"error":"invalid_grant","error_description":"expired"}"#,
        );
        assert_eq!(
            (e.class, e.code.as_str(), e.message.as_str()),
            (ErrorClass::Revoked, "invalid_grant", "expired")
        );
        assert_eq!(
            c(Dialect::Rfc6749, 401, r#"{"error":"invalid_client"}"#).class,
            ErrorClass::ClientMisconfigured
        );
        assert_eq!(
            c(Dialect::Rfc6749, 400, r#"{"error":"unauthorized_client"}"#).class,
            ErrorClass::ClientMisconfigured
        );
        assert_eq!(
            c(Dialect::Rfc6749, 401, "").class,
            ErrorClass::ClientMisconfigured
        );
        assert_eq!(
            c(Dialect::Rfc6749, 400, r#"{"error":"something_new"}"#).class,
            ErrorClass::Transient
        );
        assert_eq!(c(Dialect::Rfc6749, 418, "teapot").code, "http_418");
    }

    #[test]
    fn hubspot_codes_and_correlation_id() {
        let e = c(
            Dialect::Hubspot,
            400,
            r#"{"status":"BAD_REFRESH_TOKEN","message":"missing or invalid refresh token","correlationId":"abc-123"}"#,
        );
        assert_eq!(e.class, ErrorClass::Revoked);
        assert_eq!(e.code, "BAD_REFRESH_TOKEN");
        assert_eq!(e.correlation_id.as_deref(), Some("abc-123"));
        assert_eq!(
            c(Dialect::Hubspot, 400, r#"{"status":"BAD_CLIENT_ID"}"#).class,
            ErrorClass::ClientMisconfigured
        );
    }

    #[test]
    fn status_wins_over_body_for_429_and_5xx() {
        assert_eq!(
            c(Dialect::Rfc6749, 429, r#"{"error":"invalid_grant"}"#).class,
            ErrorClass::RateLimited
        );
        let e = c(Dialect::Rfc6749, 503, "<html>down</html>");
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Transient, "http_503")
        );
    }

    #[test]
    fn echoed_secrets_are_stripped_and_messages_bounded() {
        let e = c(
            Dialect::Rfc6749,
            400,
            r#"{"error":"invalid_grant","error_description":"token rt-secret-123 is unknown\n"}"#,
        );
        assert!(!e.message.contains("rt-secret-123"), "{}", e.message);
        assert!(e.message.contains("[redacted]"));
        let long = format!(
            r#"{{"error":"invalid_grant","error_description":"{}"}}"#,
            "é".repeat(500)
        );
        assert!(c(Dialect::Rfc6749, 400, &long).message.len() <= MAX_MESSAGE_LEN + 3);
    }

    /// Issue 24, item 10. Invariant: only the known error fields of a body
    /// are read; unknown fields and non-JSON bodies leave nothing of theirs
    /// in the error, whatever they hold.
    #[test]
    fn only_known_error_fields_are_kept() {
        let marker = "UNKNOWN-FIELD-MARKER";
        for (dialect, body) in [
            (
                Dialect::Rfc6749,
                format!(
                    r#"{{"error":"invalid_grant","debug":"{marker}","request":{{"body":"{marker}"}}}}"#
                ),
            ),
            (
                Dialect::Hubspot,
                format!(r#"{{"status":"BAD_REFRESH_TOKEN","context":{{"x":["{marker}"]}}}}"#),
            ),
            (
                Dialect::Facebook,
                format!(r#"{{"error":{{"code":190,"error_user_msg":"{marker}"}}}}"#),
            ),
            (
                Dialect::Microsoft,
                format!(r#"{{"error":"invalid_grant","error_codes":[70008],"claims":"{marker}"}}"#),
            ),
            (
                Dialect::Rfc6749,
                format!("<html><pre>{marker}</pre></html>"),
            ),
            (Dialect::Slack, format!("token={marker}&error=invalid")),
        ] {
            let e = c(dialect, 400, &body);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(marker), "{dialect:?}: {shown}");
        }
        let e = c(Dialect::Rfc6749, 502, "<html>bad gateway</html>");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("http_502", "no error description")
        );
    }

    /// Invariant: characters that show nothing cannot split a secret to
    /// slip it past redaction.
    #[test]
    fn invisible_characters_are_dropped_before_redaction() {
        let e = c(
            Dialect::Rfc6749,
            400,
            r#"{"error":"invalid_grant","error_description":"rt-se\u200bcret\u202e-123"}"#,
        );
        assert_eq!(e.message, "[redacted]");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now), None);
    }
}
