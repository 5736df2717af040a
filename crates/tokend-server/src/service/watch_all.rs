//! The `WatchConnections` stream: events of every connection the caller's
//! grants cover, read from the feed from a start position, as a task owned
//! by the engine's tracker that ends at shutdown or when the client goes
//! away.
//!
//! The task holds only its position and one small batch. A client that
//! reads slowly makes its own `send` wait; the feed serves it from the ring
//! or the log when it resumes, so it never delays anyone else. A client
//! that reads nothing for the stall timeout is cut off with the cursor of
//! the last message it was handed (`outbox.rs`), and resumes from there.
//!
//! A caller limited to some connections learns nothing of the others'
//! activity from its stream: its cursors are sealed (`feed/cursor.rs`), its
//! events carry no sequence number, and its checkpoints come on a fixed
//! beat (each `checkpoint_interval` without another message), never
//! because the log moved.

use std::sync::Arc;

use tokend_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::outbox::{self, OutboxBounds, Receiver, Sender};
use crate::transport::backpressure::WriteState;
use tokend_engine::feed::{EventFilter, Feed, FeedError, Reader};

use crate::convert;

/// Events taken from the feed at once: what a stalled task holds besides
/// its outbox.
const BATCH: usize = 64;

type Message = Result<pb::ConnectionEvent, Status>;

pub(super) struct FeedTask {
    feed: Arc<Feed>,
    reader: Reader,
    /// The reader is limited to some connections: sealed cursors, no
    /// sequence numbers, checkpoints on a fixed beat.
    sealed: bool,
    filter: EventFilter,
    /// The last sequence number this stream is done with.
    position: u64,
    tx: Sender<pb::ConnectionEvent>,
    cancel: CancellationToken,
}

impl FeedTask {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        feed: Arc<Feed>,
        reader: Reader,
        filter: EventFilter,
        position: u64,
        tasks: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
        bounds: OutboxBounds,
        gate: Option<Arc<WriteState>>,
        permit: impl Send + Sync + 'static,
    ) -> Receiver<pb::ConnectionEvent> {
        let (tx, rx) = outbox::outbox(bounds, gate, permit);
        let task = FeedTask {
            feed,
            sealed: !reader.sees_everything(),
            reader,
            filter,
            position,
            tx,
            cancel,
        };
        tasks.spawn(task.run());
        rx
    }

    fn checkpoint(&self, caught_up: bool) -> Message {
        Ok(convert::checkpoint(
            if self.sealed { 0 } else { self.position },
            self.feed.cursor_for(self.position, self.sealed),
            caught_up,
        ))
    }

    async fn run(mut self) {
        // The replay ends at the log's end as the stream opened.
        let end = self.feed.last();
        let mut replaying = self.position < end;
        if !self.send(self.checkpoint(!replaying)).await {
            return;
        }
        let interval = self.feed.settings().checkpoint_interval;
        let mut reported = self.position;
        let mut last_sent = Instant::now();
        loop {
            // A sealed reader's next checkpoint is due on the beat; waiting
            // for the feed ends by then.
            let wait = if self.sealed {
                (last_sent + interval).saturating_duration_since(Instant::now())
            } else {
                interval
            };
            let batch = tokio::select! {
                _ = self.tx.closed() => return,
                batch = self.feed.next(self.position, BATCH, wait, &self.cancel) => batch,
            };
            let events = match batch {
                Ok(events) => events,
                Err(FeedError::ShuttingDown) => return,
                Err(e) => {
                    let status =
                        crate::error::ServiceError::from(self.feed.service_error(e, self.sealed))
                            .to_status();
                    let _ = self.send(Err(status)).await;
                    return;
                }
            };
            for event in events {
                self.position = event.seq;
                if self.filter.matches(&event) && self.reader.may_see(&event.connection_id) {
                    let mut message =
                        convert::event(&event, self.feed.cursor_for(event.seq, self.sealed));
                    if self.sealed {
                        message.sequence = 0;
                    }
                    if !self.send(Ok(message)).await {
                        return;
                    }
                    reported = self.position;
                    last_sent = Instant::now();
                }
            }
            if replaying && self.position >= end {
                replaying = false;
                if !self.send(self.checkpoint(true)).await {
                    return;
                }
                reported = self.position;
                last_sent = Instant::now();
            }
            // Events the filter left out still move the cursor on. A sealed
            // reader gets its checkpoint on the beat whether or not the log
            // moved, so neither its timing nor its (sealed) cursor says.
            let moved = self.position > reported || self.sealed;
            if moved && last_sent.elapsed() >= interval {
                if !self.send(self.checkpoint(false)).await {
                    return;
                }
                reported = self.position;
                last_sent = Instant::now();
            }
        }
    }

    /// False when the client is gone, too slow (cut off with its last
    /// cursor), or the server is stopping: a client that stops reading must
    /// not hold shutdown up.
    async fn send(&self, message: Message) -> bool {
        tokio::select! {
            sent = self.tx.send(message) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }
}
