//! How the client subcommands print what tokend answers: `--json` in the
//! proto3 JSON mapping (lowerCamelCase fields, enum value names such as
//! `CONNECTION_STATUS_RECONNECT_REQUIRED`, 64-bit integers as strings,
//! default values left out), the mapping `tokend events --json`, webhook
//! bodies and grpcurl use; text for people. Metadata only: no token.

use serde_json::{Value, json};
use tokend_proto::v1 as pb;

/// A message in the proto3 JSON mapping (pbjson). Every tokend message
/// has one; a failure would be a bug, shown as `null` rather than a panic.
pub(crate) fn proto_json<T: serde::Serialize>(message: &T) -> Value {
    serde_json::to_value(message).unwrap_or(Value::Null)
}

/// A connection as JSON: `pb::Connection` as the mapping writes it, its
/// `reconnectCause` included.
pub(crate) fn connection_json(c: &pb::Connection) -> Value {
    proto_json(c)
}

/// A token's metadata and, only for `token get`, the token itself, with
/// the field names and types of `pb::AccessToken`.
pub(crate) fn token_json(t: &tokend_client::Token, secret: Option<&str>) -> Value {
    let mut out = json!({
        "connectionId": t.connection_id,
        "tokenType": t.token_type,
        "expiresInSeconds": t.ttl().as_secs().to_string(),
        "version": t.version.to_string(),
        "scopes": t.scopes,
        "accountId": t.account_id,
    });
    if let Some(secret) = secret {
        out["accessToken"] = Value::String(secret.to_owned());
    }
    out
}

/// A status as text: the enum value's name without its prefix, as in the
/// error reasons (`ACTIVE`, `RECONNECT_REQUIRED`).
pub(crate) fn status_name(status: i32) -> &'static str {
    match pb::ConnectionStatus::try_from(status) {
        Ok(pb::ConnectionStatus::Active) => "ACTIVE",
        Ok(pb::ConnectionStatus::ReconnectRequired) => "RECONNECT_REQUIRED",
        _ => "UNSPECIFIED",
    }
}

/// A reconnect cause as text (`REVOKED`, `ROTATION_LOST`, ...), as the
/// `cause` metadata of a RECONNECT_REQUIRED error names it; `None` when
/// there is none.
pub(crate) fn cause_name(cause: i32) -> Option<&'static str> {
    match pb::ReconnectCause::try_from(cause) {
        Ok(pb::ReconnectCause::Unspecified) | Err(_) => None,
        Ok(c) => Some(
            c.as_str_name()
                .strip_prefix("RECONNECT_CAUSE_")
                .unwrap_or(c.as_str_name()),
        ),
    }
}

fn ts(t: &Option<tokend_proto::pbjson_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

/// A connection as text, for `connections show` and `install`.
pub(crate) fn connection_text(c: &pb::Connection) -> String {
    let mut out = format!(
        "{}\n  provider:    {}\n  account:     {}\n  status:      {}\n",
        c.connection_id,
        c.provider,
        c.account_id,
        status_name(c.status),
    );
    if let Some(cause) = cause_name(c.reconnect_cause) {
        out.push_str(&format!("  cause:       {cause}\n"));
    }
    out.push_str(&format!(
        "  version:     {}\n  expires at:  {}\n  next refresh {}\n",
        c.version,
        ts(&c.access_token_expires_at),
        ts(&c.next_refresh_at),
    ));
    if let Some(e) = &c.last_error {
        out.push_str(&format!(
            "  last error:  {} ({}) {}{}\n",
            e.code,
            e.http_status,
            e.message,
            if e.correlation_id.is_empty() {
                String::new()
            } else {
                format!(" [correlation {}]", e.correlation_id)
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_print_in_the_proto3_json_mapping_with_their_cause() {
        let c = pb::Connection {
            connection_id: "sandbox-portal-123".into(),
            status: pb::ConnectionStatus::ReconnectRequired as i32,
            reconnect_cause: pb::ReconnectCause::Revoked as i32,
            version: 2,
            ..Default::default()
        };
        let j = connection_json(&c);
        assert_eq!(j["connectionId"], "sandbox-portal-123");
        assert_eq!(j["status"], "CONNECTION_STATUS_RECONNECT_REQUIRED");
        assert_eq!(j["reconnectCause"], "RECONNECT_CAUSE_REVOKED");
        assert_eq!(j["version"], "2");
        assert!(j.get("connection_id").is_none());
        let text = connection_text(&c);
        assert!(text.contains("status:      RECONNECT_REQUIRED"), "{text}");
        assert!(text.contains("cause:       REVOKED"), "{text}");
    }
}
