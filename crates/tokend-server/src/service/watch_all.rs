//! The `WatchConnections` stream: events of every connection the caller's
//! grants cover, read from the feed from a start position, as a task owned
//! by the engine's tracker that ends at shutdown or when the client goes
//! away.
//!
//! The task holds only its position. A client that reads slowly makes its
//! own `send` wait; the feed serves it from the ring or the log when it
//! resumes, so it is never dropped and never delays anyone else.

use std::sync::Arc;

use tokend_proto::v1 as pb;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    ServiceError, convert,
    feed::{EventFilter, Feed, FeedError, Reader},
};

/// Messages buffered per stream before the task waits for the client.
const STREAM_BUFFER: usize = 64;
/// Events taken from the feed at once.
const BATCH: usize = 256;

type Message = Result<pb::ConnectionEvent, Status>;

pub(super) struct FeedTask<P: Send + Sync + 'static> {
    feed: Arc<Feed>,
    reader: Reader,
    filter: EventFilter,
    /// The last sequence number this stream is done with.
    position: u64,
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
    /// The caller's watch-stream slot.
    _permit: P,
}

impl<P: Send + Sync + 'static> FeedTask<P> {
    pub(super) fn start(
        feed: Arc<Feed>,
        reader: Reader,
        filter: EventFilter,
        position: u64,
        tasks: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
        permit: P,
    ) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = FeedTask {
            feed,
            reader,
            filter,
            position,
            tx,
            cancel,
            _permit: permit,
        };
        tasks.spawn(task.run());
        rx
    }

    fn checkpoint(&self, caught_up: bool) -> Message {
        Ok(convert::checkpoint(
            self.position,
            self.feed.cursor(self.position).encode(),
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
            let batch = tokio::select! {
                _ = self.tx.closed() => return,
                batch = self.feed.next(self.position, BATCH, interval, &self.cancel) => batch,
            };
            let events = match batch {
                Ok(events) => events,
                Err(FeedError::ShuttingDown) => return,
                Err(e) => {
                    let _ = self.send(Err(ServiceError::from(e).to_status())).await;
                    return;
                }
            };
            for event in events {
                self.position = event.seq;
                if self.filter.matches(&event) && self.reader.may_see(&event.connection_id) {
                    let message = convert::event(&event, self.feed.cursor(event.seq).encode());
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
            // Events the filter left out still move the cursor on.
            if self.position > reported && last_sent.elapsed() >= interval {
                if !self.send(self.checkpoint(false)).await {
                    return;
                }
                reported = self.position;
                last_sent = Instant::now();
            }
        }
    }

    /// False when the client is gone or the server is stopping: a client
    /// that stops reading must not hold shutdown up.
    async fn send(&self, message: Message) -> bool {
        tokio::select! {
            sent = self.tx.send(message) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }
}
