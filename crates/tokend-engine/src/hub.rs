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
    /// current state, so no change can fall between the two. Dropping the
    /// subscription releases the channel if nobody else listens.
    pub fn subscribe(self: &Arc<Self>, id: &ConnectionId) -> Subscription {
        let receiver = self
            .channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Subscription {
            hub: Arc::clone(self),
            id: id.clone(),
            receiver: Some(receiver),
        }
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

    /// Drops `id`'s channel if nobody listens any more.
    fn release(&self, id: &ConnectionId) {
        self.channels
            .remove_if(id, |_, tx| tx.receiver_count() == 0);
    }

    #[cfg(test)]
    fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

/// One watcher's receiver of one connection's events. Its drop releases
/// the channel when it was the last listener, however the watcher ends.
pub struct Subscription {
    hub: Arc<WatchHub>,
    id: ConnectionId,
    /// Always `Some` until drop.
    receiver: Option<broadcast::Receiver<Event>>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Event, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(r) => r.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        self.hub.release(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_exist_only_while_someone_listens() {
        let hub = Arc::new(WatchHub::default());
        let id = ConnectionId::new("c").unwrap();
        let a = hub.subscribe(&id);
        let b = hub.subscribe(&id);
        assert_eq!(hub.channel_count(), 1);
        drop(a);
        assert_eq!(hub.channel_count(), 1, "still listened to");
        drop(b);
        assert_eq!(hub.channel_count(), 0, "released by the last drop");
    }
}
