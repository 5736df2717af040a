//! Which events a subscriber receives: its filter, and the connections its
//! grants cover. Both are applied here, server-side, before anything is sent.

use std::sync::Arc;

use tokend_core::{ConnectionId, Event, EventType, Status};

/// A validated `EventFilter`. Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub providers: Vec<String>,
    pub id_prefixes: Vec<String>,
    pub types: Vec<EventType>,
    pub statuses: Vec<Status>,
}

/// Most values per filter field, and longest value.
pub const MAX_FILTER_VALUES: usize = 100;
pub const MAX_FILTER_VALUE_LEN: usize = 128;

/// Why a filter was refused: the field and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct FilterError {
    pub field: &'static str,
    pub description: String,
}

impl EventFilter {
    /// A filter from names, as the config file and the CLI give them:
    /// event types and statuses in snake case or upper case.
    pub fn parse(
        providers: &[String],
        id_prefixes: &[String],
        types: &[String],
        statuses: &[String],
    ) -> Result<EventFilter, FilterError> {
        let types = types
            .iter()
            .map(|t| {
                EventType::parse(t.trim_start_matches("EVENT_TYPE_")).ok_or_else(|| FilterError {
                    field: "event_types",
                    description: format!(
                        "unknown event type {t:?}; known: {}",
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        let statuses = statuses
            .iter()
            .map(|s| {
                match Status::parse(
                    &s.trim_start_matches("CONNECTION_STATUS_")
                        .to_ascii_lowercase(),
                ) {
                    Some(status) => Ok(status),
                    None => Err(FilterError {
                        field: "statuses",
                        description: format!(
                            "unknown status {s:?}; known: active, reconnect_required"
                        ),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        EventFilter {
            providers: providers.to_vec(),
            id_prefixes: id_prefixes.to_vec(),
            types,
            statuses,
        }
        .checked()
    }

    /// Bounds on sizes, so a filter cannot make matching expensive.
    pub fn checked(self) -> Result<EventFilter, FilterError> {
        for (field, values) in [
            ("providers", &self.providers),
            ("connection_id_prefixes", &self.id_prefixes),
        ] {
            if values.len() > MAX_FILTER_VALUES {
                return Err(FilterError {
                    field,
                    description: format!("at most {MAX_FILTER_VALUES} values"),
                });
            }
            if let Some(bad) = values.iter().find(|v| {
                v.is_empty() || v.len() > MAX_FILTER_VALUE_LEN || v.chars().any(char::is_control)
            }) {
                return Err(FilterError {
                    field,
                    description: format!(
                        "{:?} is not a value: 1 to {MAX_FILTER_VALUE_LEN} printable bytes",
                        bad.chars().take(MAX_FILTER_VALUE_LEN).collect::<String>()
                    ),
                });
            }
        }
        Ok(self)
    }

    pub fn matches(&self, event: &Event) -> bool {
        let meta = event.connection.as_ref();
        (self.types.is_empty() || self.types.contains(&event.kind))
            && (self.id_prefixes.is_empty()
                || self
                    .id_prefixes
                    .iter()
                    .any(|p| event.connection_id.starts_with(p.as_str())))
            && (self.providers.is_empty()
                || meta.is_some_and(|m| self.providers.contains(&m.provider)))
            && (self.statuses.is_empty() || meta.is_some_and(|m| self.statuses.contains(&m.status)))
    }
}

/// What a reader holding only some grants may read: the edge's caller
/// implements it (the engine knows no callers, only this question).
pub trait Reach: Send + Sync {
    /// Whether events of connection `id` may be shown.
    fn may_read(&self, id: &ConnectionId) -> bool;
    /// Whether every connection's events may be shown.
    fn may_read_all(&self) -> bool;
}

/// Who is reading: a caller with a reach (its grants decide), or tokend
/// itself (webhooks, configured by the operator: everything).
#[derive(Clone)]
pub enum Reader {
    Caller(Arc<dyn Reach>),
    Operator,
}

impl Reader {
    /// Whether this reader may see events of connection `id`.
    pub fn may_see(&self, id: &str) -> bool {
        match self {
            Reader::Operator => true,
            Reader::Caller(caller) => ConnectionId::new(id).is_ok_and(|id| caller.may_read(&id)),
        }
    }

    /// Whether this reader sees every connection's events. One that does
    /// not must learn nothing of the others' activity: it gets sealed
    /// cursors, no sequence numbers, and checkpoints on a fixed beat.
    pub fn sees_everything(&self) -> bool {
        match self {
            Reader::Operator => true,
            Reader::Caller(caller) => caller.may_read_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokend_core::{ConnectionMeta, NewEvent, Timestamp};

    fn event(id: &str, provider: &str, kind: EventType, status: Status) -> Event {
        let t = Timestamp::from_unix_millis(0);
        Event {
            seq: 1,
            event: NewEvent {
                kind,
                connection_id: id.into(),
                at: t,
                connection: Some(ConnectionMeta {
                    provider: provider.into(),
                    account_id: String::new(),
                    status,
                    version: 1,
                    scopes: vec![],
                    token_type: "Bearer".into(),
                    access_token_expires_at: t,
                    last_refresh_at: None,
                    last_error: None,
                    created_at: t,
                    updated_at: t,
                    reconnect_cause: None,
                }),
                cause: None,
            },
        }
    }

    #[test]
    fn fields_combine_with_and_values_with_or() {
        let dead = event(
            "tenant-a-1",
            "hubspot",
            EventType::ReconnectRequired,
            Status::ReconnectRequired,
        );
        assert!(EventFilter::default().matches(&dead));
        let f = EventFilter {
            providers: vec!["google".into(), "hubspot".into()],
            id_prefixes: vec!["tenant-a-".into()],
            types: vec![EventType::ReconnectRequired],
            statuses: vec![],
        };
        assert!(f.matches(&dead));
        assert!(!f.matches(&event(
            "tenant-b-1",
            "hubspot",
            EventType::ReconnectRequired,
            Status::ReconnectRequired
        )));
        assert!(!f.matches(&event(
            "tenant-a-1",
            "slack",
            EventType::ReconnectRequired,
            Status::ReconnectRequired
        )));
        assert!(!f.matches(&event(
            "tenant-a-1",
            "hubspot",
            EventType::TokenRotated,
            Status::Active
        )));
        let active_only = EventFilter {
            statuses: vec![Status::Active],
            ..Default::default()
        };
        assert!(!active_only.matches(&dead));
    }
}
