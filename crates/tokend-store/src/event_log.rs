//! The event log's shared parts: its bounds, named readers' saved cursors,
//! and the durable watermark every backend publishes.
//!
//! The log numbers events with a sequence that grows by exactly one per
//! event, in commit order, and appends them in the same atomic write as the
//! record change they describe. Pruning removes a prefix only. So a reader
//! that asks for the events after `n` and gets a first event other than
//! `n + 1` knows the ones between were pruned, never skipped.

use serde::{Deserialize, Serialize};
use tokend_core::Timestamp;
use tokio::sync::watch;

/// Where the log stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// Identifies this log: a cursor from another log (a restored or new
    /// data dir) cannot be resumed here, even if its number fits.
    pub log_id: u64,
    /// The first retained sequence number; `last + 1` when nothing is
    /// retained.
    pub oldest: u64,
    /// The last durable sequence number; 0 before the first event.
    pub last: u64,
}

/// A named reader's position, kept by the store so a restart resumes where
/// the reader stopped (webhook endpoints). Saving it need not be flushed:
/// losing the newest save only means some events are delivered again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCursor {
    pub log_id: u64,
    /// The last sequence number the reader is done with.
    pub seq: u64,
    /// Since when the reader's deliveries have been failing, if they are.
    pub failing_since: Option<Timestamp>,
    /// The last delivery failure, for operators. Never a secret.
    pub last_error: Option<String>,
    pub updated_at: Timestamp,
    /// The reader claim's fence it was saved under ([`crate::Store::claim_reader`]).
    /// A shared store ignores a save under an older fence than the stored
    /// one: a holder paused past its claim cannot move the cursor back.
    #[serde(default)]
    pub fence: u64,
}

/// The highest sequence number known durable. Writers raise it after their
/// flush; readers never read past it, so no event is seen before the write
/// it belongs to would survive a crash.
#[derive(Debug)]
pub struct Watermark(watch::Sender<u64>);

impl Watermark {
    pub fn new(start: u64) -> Self {
        Self(watch::Sender::new(start))
    }

    /// Raises the watermark to `seq` if that is higher.
    pub fn raise(&self, seq: u64) {
        self.0.send_if_modified(|w| {
            let higher = seq > *w;
            if higher {
                *w = seq;
            }
            higher
        });
    }

    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A fresh log id: random, never 0.
pub fn new_log_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}
