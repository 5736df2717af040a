//! Domain records to protobuf messages. No function here copies a token:
//! an access token enters a reply in `service/token.rs` only, and no
//! function copies a refresh token anywhere.

use tokend_core::{
    Connection, ConnectionMeta, ErrorClass, Event, EventType, LastError, ReconnectCause, Status,
    Timestamp,
};
use tokend_proto::v1 as pb;

/// `t` as RFC 3339 in UTC, to the second (for people: the console).
pub fn rfc3339(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.unix_millis().div_euclid(1000))
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.unix_millis().to_string())
}

pub fn timestamp(t: Timestamp) -> tokend_proto::pbjson_types::Timestamp {
    let ms = t.unix_millis();
    tokend_proto::pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn status(s: Status) -> pb::ConnectionStatus {
    match s {
        Status::Active => pb::ConnectionStatus::Active,
        Status::ReconnectRequired => pb::ConnectionStatus::ReconnectRequired,
    }
}

pub fn error_class(c: ErrorClass) -> pb::ErrorClass {
    match c {
        ErrorClass::Revoked => pb::ErrorClass::Revoked,
        ErrorClass::ClientMisconfigured => pb::ErrorClass::ClientMisconfigured,
        ErrorClass::RateLimited => pb::ErrorClass::RateLimited,
        ErrorClass::Transient => pb::ErrorClass::Transient,
    }
}

pub fn provider_error(e: &LastError) -> pb::ProviderError {
    pb::ProviderError {
        error_class: error_class(e.class) as i32,
        code: e.code.clone(),
        message: e.message.clone(),
        correlation_id: e.correlation_id.clone().unwrap_or_default(),
        http_status: e.http_status.map(u32::from).unwrap_or_default(),
        occurred_at: Some(timestamp(e.at)),
    }
}

pub fn reconnect_cause(c: ReconnectCause) -> pb::ReconnectCause {
    match c {
        ReconnectCause::Revoked => pb::ReconnectCause::Revoked,
        ReconnectCause::RotationLost => pb::ReconnectCause::RotationLost,
        ReconnectCause::NoRefreshToken => pb::ReconnectCause::NoRefreshToken,
        ReconnectCause::ConsentRequired => pb::ReconnectCause::ConsentRequired,
        ReconnectCause::InteractionRequired => pb::ReconnectCause::InteractionRequired,
    }
}

/// What the engine knows about a connection beyond its record.
#[derive(Default)]
pub struct Live {
    /// When the background refresher will next renew it.
    pub next_refresh_at: Option<Timestamp>,
    /// Why its provider fails for every connection (breaker open).
    pub provider_trouble: Option<LastError>,
}

/// A connection's metadata, without secrets. `last_error` is the
/// connection's own, or else the provider's trouble while its breaker is
/// open.
pub fn connection(c: &Connection, live: Live) -> pb::Connection {
    pb::Connection {
        connection_id: c.id.to_string(),
        provider: c.provider.to_string(),
        account_id: c.account_id.clone(),
        status: status(c.status) as i32,
        version: c.version,
        scopes: c.tokens.scopes.clone(),
        token_type: c.tokens.token_type.clone(),
        access_token_expires_at: Some(timestamp(c.tokens.expires_at)),
        last_refresh_at: c.last_refresh_at.map(timestamp),
        last_error: c
            .last_error
            .as_ref()
            .or(live.provider_trouble.as_ref())
            .map(provider_error),
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        next_refresh_at: live.next_refresh_at.map(timestamp),
        reconnect_cause: c
            .reconnect_cause
            .map_or(pb::ReconnectCause::Unspecified, reconnect_cause)
            as i32,
        params: c
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metadata: c
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn event_type(t: EventType) -> pb::EventType {
    match t {
        EventType::Installed => pb::EventType::Installed,
        EventType::TokenRotated => pb::EventType::TokenRotated,
        EventType::RefreshFailed => pb::EventType::RefreshFailed,
        EventType::ReconnectRequired => pb::EventType::ReconnectRequired,
        EventType::Recovered => pb::EventType::Recovered,
        EventType::Deleted => pb::EventType::Deleted,
    }
}

/// A connection's metadata as an event recorded it.
pub fn connection_meta(id: &str, m: &ConnectionMeta) -> pb::Connection {
    pb::Connection {
        connection_id: id.to_owned(),
        provider: m.provider.clone(),
        account_id: m.account_id.clone(),
        status: status(m.status) as i32,
        version: m.version,
        scopes: m.scopes.clone(),
        token_type: m.token_type.clone(),
        access_token_expires_at: Some(timestamp(m.access_token_expires_at)),
        last_refresh_at: m.last_refresh_at.map(timestamp),
        last_error: m.last_error.as_ref().map(provider_error),
        created_at: Some(timestamp(m.created_at)),
        updated_at: Some(timestamp(m.updated_at)),
        next_refresh_at: None,
        reconnect_cause: m
            .reconnect_cause
            .map_or(pb::ReconnectCause::Unspecified, reconnect_cause)
            as i32,
        params: Default::default(),
        metadata: Default::default(),
    }
}

/// One logged event, with its cursor.
pub fn event(e: &Event, cursor: String) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        cursor,
        sequence: e.seq,
        event_type: event_type(e.kind) as i32,
        event_time: Some(timestamp(e.at)),
        connection_id: e.connection_id.clone(),
        connection: e
            .connection
            .as_ref()
            .map(|m| connection_meta(&e.connection_id, m)),
        cause: e
            .cause
            .map_or(pb::ReconnectCause::Unspecified, reconnect_cause) as i32,
        caught_up: false,
    }
}

/// A checkpoint: the stream's position (and whether the replay is over)
/// and nothing else.
pub fn checkpoint(seq: u64, cursor: String, caught_up: bool) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        cursor,
        sequence: seq,
        event_type: pb::EventType::Checkpoint as i32,
        caught_up,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_into_seconds_and_nanos() {
        let t = timestamp(Timestamp::from_unix_millis(1_500));
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let t = timestamp(Timestamp::from_unix_millis(-1));
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
