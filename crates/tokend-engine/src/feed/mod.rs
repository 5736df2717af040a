//! The event feed: the store's durable event log, tailed into a shared ring
//! of recent events that every subscriber (WatchConnections streams,
//! webhook deliveries) reads from, falling back to the store when behind.
//!
//! Readers never read past the store's durable watermark, so an event is
//! seen only once the write it describes would survive a crash. A slow
//! reader holds nothing but its own position: writers and other readers
//! never wait for it, and when it falls out of the ring it reads the log.

mod cursor;
mod filter;
mod retention;

use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokend_core::{Clock, Event};
use tokend_store::{Store, StoreError, crypto::Keyring};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::error::EngineError;

pub use cursor::{Cursor, Presented};
pub use filter::{EventFilter, Reach, Reader};

pub use tokend_config::events::{EventSettings, EventsSection};

/// Recent events kept in memory for live readers.
const RING_CAPACITY: usize = 8192;
/// Events read from the store at once.
const PAGE: usize = 1024;

/// Why a read of the feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The position is no longer (or never was) in this log.
    #[error("{detail}")]
    Expired {
        detail: &'static str,
        oldest: Cursor,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("shutting down")]
    ShuttingDown,
}

impl From<FeedError> for EngineError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Expired { detail, oldest } => EngineError::CursorExpired {
                detail,
                oldest_cursor: oldest.encode(),
            },
            FeedError::Store(e) => EngineError::Store(e),
            FeedError::ShuttingDown => EngineError::ShuttingDown,
        }
    }
}

/// The shared reader of the event log.
pub struct Feed {
    store: Arc<dyn Store>,
    log_id: u64,
    /// Contiguous recent events, oldest first.
    recent: RwLock<VecDeque<Arc<Event>>>,
    /// The last sequence number the tailer has made readable.
    tail: watch::Sender<u64>,
    settings: EventSettings,
    /// Seals cursors when the store has no keys (the in-memory store).
    fallback_keys: Arc<Keyring>,
}

impl Feed {
    /// Opens the feed on `store` and starts its tailer and the retention
    /// pruner on `tasks`, both ending when `cancel` fires.
    pub async fn start(
        store: Arc<dyn Store>,
        settings: EventSettings,
        clock: Clock,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<Feed>, StoreError> {
        let bounds = store.event_bounds().await?;
        let feed = Arc::new(Feed {
            store: Arc::clone(&store),
            log_id: bounds.log_id,
            recent: RwLock::new(VecDeque::new()),
            tail: watch::Sender::new(bounds.last),
            settings: settings.clone(),
            fallback_keys: Arc::new(Keyring::ephemeral()),
        });
        tasks.spawn(Arc::clone(&feed).tail_log(cancel.clone()));
        tasks.spawn(retention::prune_periodically(
            store,
            settings,
            clock,
            cancel.clone(),
        ));
        Ok(feed)
    }

    /// The most recent events of one connection still in the ring, newest
    /// first (for the console).
    pub fn recent_for(&self, connection_id: &str, limit: usize) -> Vec<Arc<Event>> {
        let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .filter(|e| e.connection_id == connection_id)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The last sequence number readers can have.
    pub fn last(&self) -> u64 {
        *self.tail.borrow()
    }

    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    pub fn cursor(&self, seq: u64) -> Cursor {
        Cursor {
            log_id: self.log_id,
            seq,
        }
    }

    /// The keys cursors are sealed with: the store's own, which every
    /// replica shares and key rotation keeps current.
    fn keys(&self) -> Arc<Keyring> {
        self.store
            .sealing_keys()
            .unwrap_or_else(|| Arc::clone(&self.fallback_keys))
    }

    /// The cursor after `seq` as a reader is shown it: plain, or `sealed`
    /// for one limited to some connections (see `cursor.rs`).
    pub fn cursor_for(&self, seq: u64, sealed: bool) -> String {
        let cursor = self.cursor(seq);
        if sealed {
            cursor.seal(&self.keys())
        } else {
            cursor.encode()
        }
    }

    /// The position a presented cursor stands for. A reader limited to some
    /// connections (`sealed`) must hand back a sealed cursor: a plain one
    /// would let it ask about any position of the log.
    pub async fn open(&self, presented: Presented, sealed: bool) -> Result<Cursor, EngineError> {
        match presented {
            Presented::Plain(c) if !sealed => Ok(c),
            Presented::Plain(_) => Err(EngineError::invalid(
                "resume_after",
                "a plain cursor: a caller limited to some connections resumes with the cursors tokend sent it",
            )),
            Presented::Sealed(bytes) => match Cursor::open(&bytes, &self.keys()) {
                Ok(c) => Ok(c),
                Err(cursor::Unreadable::Forged) => Err(EngineError::invalid(
                    "resume_after",
                    "not a cursor tokend issued (pass a ConnectionEvent's cursor unchanged)",
                )),
                Err(cursor::Unreadable::RetiredKey) => {
                    let bounds = self.store.event_bounds().await?;
                    Err(self.service_error(
                        FeedError::Expired {
                            detail: "it was sealed with a key that has since been retired",
                            oldest: self.cursor(bounds.oldest - 1),
                        },
                        sealed,
                    ))
                }
            },
        }
    }

    /// `e` as the reader is told it: an expired position names the oldest
    /// cursor in the form the reader is shown cursors.
    pub fn service_error(&self, e: FeedError, sealed: bool) -> EngineError {
        match e {
            FeedError::Expired { detail, oldest } if sealed => EngineError::CursorExpired {
                detail,
                oldest_cursor: self.cursor_for(oldest.seq, true),
            },
            e => e.into(),
        }
    }

    /// Where a new reader starts: after `resume_after`, or at the oldest
    /// retained event, or at the end of the log (live).
    pub async fn start_position(
        &self,
        resume_after: Option<Cursor>,
        from_oldest: bool,
    ) -> Result<u64, FeedError> {
        let bounds = self.store.event_bounds().await?;
        let expired = |detail| FeedError::Expired {
            detail,
            oldest: self.cursor(bounds.oldest - 1),
        };
        match resume_after {
            Some(c) if c.log_id != self.log_id => Err(expired(
                "the cursor is from another event log (a restored or replaced data dir)",
            )),
            Some(c) if c.seq > bounds.last => Err(expired("the cursor is ahead of this event log")),
            Some(c) if c.seq + 1 < bounds.oldest => {
                Err(expired("its events are older than the log's retention"))
            }
            Some(c) => Ok(c.seq),
            None if from_oldest => Ok(bounds.oldest - 1),
            None => Ok(bounds.last),
        }
    }

    /// Up to `limit` events after `after`, waiting for the first one at
    /// most `wait` (then an empty list).
    pub async fn next(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Arc<Event>>, FeedError> {
        let mut tail = self.tail.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let available = *tail.borrow_and_update();
            if available > after {
                return self.read(after, available, limit).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(FeedError::ShuttingDown),
                changed = tail.changed() => if changed.is_err() {
                    return Err(FeedError::ShuttingDown);
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    /// Events in `(after, up_to]`: from the ring when it reaches back that
    /// far, else from the store.
    async fn read(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, FeedError> {
        {
            let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
            if let Some(front) = recent.front()
                && front.seq <= after + 1
            {
                let skip = (after + 1 - front.seq) as usize;
                let events: Vec<_> = recent
                    .iter()
                    .skip(skip)
                    .take_while(|e| e.seq <= up_to)
                    .take(limit)
                    .cloned()
                    .collect();
                if !events.is_empty() {
                    return Ok(events);
                }
            }
        }
        let events = self
            .store
            .read_events(after, up_to, limit.min(PAGE))
            .await?;
        match events.first() {
            Some(first) if first.seq == after + 1 => Ok(events.into_iter().map(Arc::new).collect()),
            _ => {
                let bounds = self.store.event_bounds().await?;
                Err(FeedError::Expired {
                    detail: "its events were pruned while it was behind",
                    oldest: self.cursor(bounds.oldest - 1),
                })
            }
        }
    }

    /// Copies newly durable events into the ring, in order.
    async fn tail_log(self: Arc<Self>, cancel: CancellationToken) {
        let mut watermark = self.store.event_watermark();
        let mut read_to = *self.tail.borrow();
        loop {
            let target = *watermark.borrow_and_update();
            while read_to < target {
                match self.store.read_events(read_to, target, PAGE).await {
                    Ok(events) => {
                        let last = events.last().map_or(target, |e| e.seq);
                        self.remember(events);
                        read_to = last;
                        self.tail.send_replace(read_to);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event log failed; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = watermark.changed() => if changed.is_err() { return },
            }
        }
    }

    fn remember(&self, events: Vec<Event>) {
        let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if recent.back().is_some_and(|b| b.seq + 1 != event.seq) {
                // A gap (pruned under us): the ring must stay contiguous.
                recent.clear();
            }
            recent.push_back(Arc::new(event));
            if recent.len() > RING_CAPACITY {
                recent.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests;
