//! Keeps this replica's cache in step with the changes other replicas make
//! to a shared store: follows the event log, and for every event about a
//! connection re-reads the record unless the cache already shows that
//! state, then caches it (only ever forwards: `Slot::advance`), reschedules
//! its refresh and tells `WatchConnection` watchers.
//!
//! Runs only on a shared store: on the embedded one every write is this
//! process's own and already cached.

use std::{sync::Arc, time::Duration};

use tokend_core::{ConnectionId, Event, EventType, event::ConnectionMeta};

use super::Engine;
use crate::{
    feed::{Feed, FeedError},
    hub::EventKind,
};

/// Events taken from the feed at once.
const BATCH: usize = 512;

impl Engine {
    /// Follows the log from `after` until shutdown.
    pub async fn follow_other_replicas(self: Arc<Self>, feed: Arc<Feed>, mut after: u64) {
        let cancel = self.cancel.clone();
        loop {
            match feed
                .next(after, BATCH, Duration::from_secs(30), &cancel)
                .await
            {
                Ok(events) => {
                    for event in events {
                        after = event.seq;
                        self.apply_logged(&event).await;
                    }
                }
                Err(FeedError::ShuttingDown) => return,
                Err(FeedError::Expired { .. }) => {
                    // Fell behind the log's retention (a long database
                    // outage): re-read everything cached instead.
                    after = feed.last();
                    tracing::warn!("fell behind the event log; re-reading every cached connection");
                    if let Err(e) = self.reload_cached().await {
                        tracing::warn!(error = %e, "re-reading cached connections failed");
                    }
                }
                Err(FeedError::Store(e)) => {
                    tracing::warn!(error = %e, "reading the event log failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Brings one connection's cache up to `event`.
    async fn apply_logged(&self, event: &Event) {
        let Ok(id) = ConnectionId::new(event.connection_id.as_str()) else {
            return;
        };
        let cached = self.slots.get(&id).map(|slot| slot.current());
        if event.kind != EventType::Deleted
            && let (Some(cached), Some(meta)) = (&cached, &event.connection)
            && (ConnectionMeta::of(cached) == *meta || cached.version > meta.version)
        {
            // Already cached (this replica's own write), or newer.
            return;
        }
        if let Err(e) = self.reload(&id, event.kind).await {
            tracing::warn!(connection_id = %id, error = %e, "cannot re-read a connection another replica changed");
        }
    }

    /// Re-reads `id` and caches what the store holds now.
    pub(super) async fn reload(
        &self,
        id: &ConnectionId,
        kind: EventType,
    ) -> Result<(), tokend_store::StoreError> {
        let epoch = self.slots.epoch();
        match self.store.get(id).await? {
            Some(record) => {
                let newest = self.slots.cache(record, epoch);
                self.schedule_no_sooner_than(&newest, Duration::ZERO);
                let kind = match kind {
                    EventType::TokenRotated => EventKind::TokenRotated,
                    EventType::RefreshFailed => EventKind::RefreshFailed,
                    _ => EventKind::StatusChanged,
                };
                self.publish(kind, &newest);
            }
            None => {
                if let Some(slot) = self.slots.get(id) {
                    let last = slot.current();
                    self.slots.remove(id);
                    self.scheduler.unschedule(id);
                    self.publish(EventKind::Deleted, &last);
                }
            }
        }
        Ok(())
    }

    /// Re-reads every cached connection.
    async fn reload_cached(&self) -> Result<(), tokend_store::StoreError> {
        for id in self.slots.ids() {
            self.reload(&id, EventType::Recovered).await?;
        }
        Ok(())
    }
}
