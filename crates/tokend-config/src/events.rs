//! `[events]` as written, and the event log's retention it resolves to.

use std::time::Duration;

/// How long events are kept and how the feed paces itself (`[events]`).
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// Events older than this are pruned.
    pub retention: Duration,
    /// At most this many events are kept.
    pub max_events: u64,
    /// How often the pruner runs.
    pub prune_interval: Duration,
    /// A stream whose filter skipped events sends a checkpoint at most
    /// this often, so its cursor keeps up with the log.
    pub checkpoint_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: 1_000_000,
            prune_interval: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

/// `[events]` in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Keep events this long [default: 604800, 7 days].
    pub retention_secs: Option<u64>,
    /// Keep at most this many events [default: 1000000].
    pub max_events: Option<u64>,
}

impl EventsSection {
    pub fn resolve(&self) -> Result<EventSettings, String> {
        use crate::ranges as r;
        let d = EventSettings::default();
        let retention = r::EVENTS_RETENTION_SECS.check_opt(self.retention_secs);
        let max_events = r::EVENTS_MAX_EVENTS.check_opt(self.max_events);
        match (retention, max_events) {
            (Ok(retention), Ok(max_events)) => Ok(EventSettings {
                retention: retention.map_or(d.retention, Duration::from_secs),
                max_events: max_events.unwrap_or(d.max_events),
                ..d
            }),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }
}
