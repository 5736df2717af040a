//! Connection events: what a write changed, derived from the record before
//! and after it, so every store backend appends the same events for the
//! same write. Events carry metadata only, never a secret.

use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    connection::{Connection, LastError, ReconnectCause, Status},
};

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Created, or replaced by a new install.
    Installed,
    /// The token set changed: a refresh or a rotation.
    TokenRotated,
    /// A provider call failed; the connection is still active.
    RefreshFailed,
    /// The grant is dead; only a new install revives it.
    ReconnectRequired,
    /// Healthy again: a refresh succeeded after failures, or a new install
    /// replaced a connection that needed reconnecting.
    Recovered,
    /// The connection was deleted.
    Deleted,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Installed,
        EventType::TokenRotated,
        EventType::RefreshFailed,
        EventType::ReconnectRequired,
        EventType::Recovered,
        EventType::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Installed => "installed",
            EventType::TokenRotated => "token_rotated",
            EventType::RefreshFailed => "refresh_failed",
            EventType::ReconnectRequired => "reconnect_required",
            EventType::Recovered => "recovered",
            EventType::Deleted => "deleted",
        }
    }

    /// The inverse of [`Self::as_str`], also accepting upper case.
    pub fn parse(s: &str) -> Option<EventType> {
        let s = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A connection's metadata as of an event: every field of the record but
/// the tokens themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionMeta {
    pub provider: String,
    pub account_id: String,
    pub status: Status,
    pub version: u64,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub access_token_expires_at: Timestamp,
    pub last_refresh_at: Option<Timestamp>,
    pub last_error: Option<LastError>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub reconnect_cause: Option<ReconnectCause>,
}

impl ConnectionMeta {
    pub fn of(c: &Connection) -> ConnectionMeta {
        ConnectionMeta {
            provider: c.provider.to_string(),
            account_id: c.account_id.clone(),
            status: c.status,
            version: c.version,
            scopes: c.tokens.scopes.clone(),
            token_type: c.tokens.token_type.clone(),
            access_token_expires_at: c.tokens.expires_at,
            last_refresh_at: c.last_refresh_at,
            last_error: c.last_error.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            reconnect_cause: c.reconnect_cause,
        }
    }
}

/// An event before the log has numbered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub connection_id: String,
    pub at: Timestamp,
    /// The connection after the event (for `Deleted`, its last state);
    /// `None` only for a deleted record that could not be decoded.
    pub connection: Option<ConnectionMeta>,
    /// For `ReconnectRequired`: why.
    pub cause: Option<ReconnectCause>,
}

/// An event as the log keeps it: numbered by a sequence that grows by
/// exactly one per event, so a reader can tell a gap (pruned events) from
/// the end of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

impl std::ops::Deref for Event {
    type Target = NewEvent;
    fn deref(&self) -> &NewEvent {
        &self.event
    }
}

/// The events a write of `after` over `before` stands for, in order.
/// An empty list for a write that changes nothing a subscriber cares
/// about (a rewrite to flush, a metadata touch).
pub fn describe(before: Option<&Connection>, after: &Connection) -> Vec<NewEvent> {
    let event = |kind| NewEvent {
        kind,
        connection_id: after.id.to_string(),
        at: after.updated_at,
        connection: Some(ConnectionMeta::of(after)),
        cause: (kind == EventType::ReconnectRequired)
            .then_some(after.reconnect_cause)
            .flatten(),
    };
    let Some(before) = before else {
        return vec![event(EventType::Installed)];
    };
    let was_unhealthy = before.status == Status::ReconnectRequired || before.last_error.is_some();
    let healthy = after.status == Status::Active && after.last_error.is_none();
    let recovered = was_unhealthy && healthy;
    let reinstalled = after.incarnation != before.incarnation
        || (after.install_fingerprint.is_some()
            && after.install_fingerprint != before.install_fingerprint);
    let mut events = Vec::new();
    if reinstalled {
        events.push(event(EventType::Installed));
    } else if after.status == Status::ReconnectRequired {
        if before.status != Status::ReconnectRequired {
            events.push(event(EventType::ReconnectRequired));
        }
        return events;
    } else if after.version != before.version {
        events.push(event(EventType::TokenRotated));
    } else if after.last_error.is_some() && after.last_error != before.last_error {
        events.push(event(EventType::RefreshFailed));
    }
    if recovered {
        events.push(event(EventType::Recovered));
    }
    events
}

/// The event of deleting `before` (`None`: a record that could not be
/// decoded), at `at`.
pub fn deleted(id: &str, before: Option<&Connection>, at: Timestamp) -> NewEvent {
    NewEvent {
        kind: EventType::Deleted,
        connection_id: id.to_owned(),
        at,
        connection: before.map(ConnectionMeta::of),
        cause: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectionId, ErrorClass, ProviderName, TokenSet};

    fn conn() -> Connection {
        Connection {
            id: ConnectionId::new("c1").unwrap(),
            provider: ProviderName::new("sandbox").unwrap(),
            account_id: "acct".into(),
            tokens: TokenSet {
                access_token: "a1".into(),
                refresh_token: Some("r1".into()),
                token_type: "Bearer".into(),
                scopes: vec![],
                expires_at: Timestamp::from_unix_millis(10),
                obtained_at: Timestamp::from_unix_millis(0),
            },
            previous_refresh_token: None,
            version: 1,
            revision: 1,
            incarnation: 7,
            status: Status::Active,
            reconnect_cause: None,
            last_error: None,
            last_refresh_at: None,
            created_at: Timestamp::from_unix_millis(0),
            updated_at: Timestamp::from_unix_millis(0),
            install_fingerprint: Some("f1".into()),
            params: Default::default(),
            metadata: Default::default(),
        }
    }

    fn error() -> LastError {
        LastError {
            class: ErrorClass::Transient,
            code: "http_503".into(),
            message: "down".into(),
            correlation_id: None,
            http_status: Some(503),
            at: Timestamp::from_unix_millis(5),
        }
    }

    fn kinds(events: Vec<NewEvent>) -> Vec<EventType> {
        events.into_iter().map(|e| e.kind).collect()
    }

    #[test]
    fn each_kind_of_write_has_its_events() {
        use EventType::*;
        let a = conn();
        assert_eq!(kinds(describe(None, &a)), [Installed]);

        let mut failed = a.next_revision(Timestamp::from_unix_millis(5));
        failed.last_error = Some(error());
        assert_eq!(kinds(describe(Some(&a), &failed)), [RefreshFailed]);
        assert_eq!(
            kinds(describe(
                Some(&failed),
                &failed.next_revision(failed.updated_at)
            )),
            [],
            "a rewrite announces nothing"
        );

        let rotated =
            failed.with_refreshed_tokens(a.tokens.clone(), Timestamp::from_unix_millis(9));
        assert_eq!(
            kinds(describe(Some(&failed), &rotated)),
            [TokenRotated, Recovered]
        );
        assert_eq!(kinds(describe(Some(&a), &rotated)), [TokenRotated]);

        let mut dead = rotated.next_revision(Timestamp::from_unix_millis(10));
        dead.status = Status::ReconnectRequired;
        dead.reconnect_cause = Some(ReconnectCause::Revoked);
        dead.last_error = Some(error());
        let events = describe(Some(&rotated), &dead);
        assert_eq!(kinds(events.clone()), [ReconnectRequired]);
        assert_eq!(events[0].cause, Some(ReconnectCause::Revoked));
        assert_eq!(
            kinds(describe(Some(&dead), &dead.next_revision(dead.updated_at))),
            []
        );

        let mut reinstalled = dead.next_revision(Timestamp::from_unix_millis(11));
        reinstalled.status = Status::Active;
        reinstalled.reconnect_cause = None;
        reinstalled.last_error = None;
        reinstalled.version += 1;
        reinstalled.install_fingerprint = Some("f2".into());
        assert_eq!(
            kinds(describe(Some(&dead), &reinstalled)),
            [Installed, Recovered]
        );
        assert_eq!(
            deleted("c1", Some(&reinstalled), Timestamp::from_unix_millis(12)).kind,
            Deleted
        );
    }

    #[test]
    fn events_round_trip_through_json_without_secrets() {
        let a = conn();
        let event = Event {
            seq: 3,
            event: describe(None, &a).remove(0),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("a1") && !json.contains("r1"), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        assert_eq!(
            EventType::parse("RECONNECT_REQUIRED"),
            Some(EventType::ReconnectRequired)
        );
    }
}
