//! The watch hub: per-connection broadcast of state changes to
//! `WatchConnection` streams.

use std::sync::Arc;

use dashmap::DashMap;
use tokend_core::{Connection, ConnectionId, Timestamp};
use tokio::sync::broadcast;

/// Why an event was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    TokenRotated,
    StatusChanged,
    RefreshFailed,
    Deleted,
}

/// One change of one connection. Holds the record (secrets included, in
/// memory only); the stream converts it to metadata before sending.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub connection: Arc<Connection>,
    pub at: Timestamp,
}

/// Events buffered per connection before a slow watcher lags (and then gets
/// a fresh snapshot instead of the events it missed).
const CHANNEL_CAPACITY: usize = 64;

/// Broadcast channels by connection id, created on first subscribe and
/// dropped once nobody listens, so idle connections cost nothing.
#[derive(Default)]
pub struct WatchHub {
    channels: DashMap<ConnectionId, broadcast::Sender<Event>>,
}

impl WatchHub {
    /// Subscribes to future events of `id`. Subscribe *before* reading the
    /// current state, so no change can fall between the two.
    pub fn subscribe(&self, id: &ConnectionId) -> broadcast::Receiver<Event> {
        self.channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    pub fn publish(&self, event: Event) {
        let id = event.connection.id.clone();
        let unheard = match self.channels.get(&id) {
            Some(tx) => tx.send(event).is_err(),
            None => false,
        };
        if unheard {
            // Checked again under the shard's write lock: a subscriber may
            // have arrived since the send.
            self.channels
                .remove_if(&id, |_, tx| tx.receiver_count() == 0);
        }
    }

    /// Drops `id`'s channel if nobody listens any more (a watcher ended, or
    /// subscribed to a connection that turned out not to exist).
    pub fn release(&self, id: &ConnectionId) {
        self.channels
            .remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    #[cfg(test)]
    fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_exist_only_while_someone_listens() {
        let hub = WatchHub::default();
        let id = ConnectionId::new("c").unwrap();
        let rx = hub.subscribe(&id);
        assert_eq!(hub.channel_count(), 1);
        hub.release(&id);
        assert_eq!(hub.channel_count(), 1, "still listened to");
        drop(rx);
        hub.release(&id);
        assert_eq!(hub.channel_count(), 0);
    }
}
