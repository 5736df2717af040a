//! A watch stream's outbox: the messages its task has produced and its
//! client has not taken yet, bounded in bytes, with the cut-off of a
//! subscriber that stops reading.
//!
//! The task waits while the outbox is full. If it stays full for longer
//! than the stall grace, the subscriber is too slow: what is queued is
//! dropped at once and the stream ends with `UNAVAILABLE`, reason
//! `SUBSCRIBER_TOO_SLOW`, carrying the cursor of the last message the
//! client was handed, so it resumes from the event log with no gap. The
//! outbox (the response body) also holds the stream's slots, so they are
//! freed when HTTP/2 is done with the stream, not when the task ends.
//!
//! While the client's connection takes no bytes (its socket is full), the
//! outbox hands hyper nothing (`transport/backpressure.rs`): HTTP/2 would
//! buffer up to 400 KiB per stream for such a peer; the outbox fills
//! instead, and the stall timeout cuts the stream off.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::Stream;
use tokend_proto::v1 as pb;
use tokio::{sync::Notify, time::Instant};
use tonic::Status;

use crate::{error::ServiceError, transport::backpressure::WriteState};

/// A message a watch stream sends, as the outbox accounts for it.
pub(crate) trait Outgoing: prost::Message + Send + 'static {
    /// The cursor a client resumes after once it has this message.
    fn cursor(&self) -> Option<&str>;
}

impl Outgoing for pb::ConnectionEvent {
    fn cursor(&self) -> Option<&str> {
        (!self.cursor.is_empty()).then_some(self.cursor.as_str())
    }
}

impl Outgoing for pb::WatchConnectionResponse {
    /// A connection's watch resumes with a fresh snapshot, not a cursor.
    fn cursor(&self) -> Option<&str> {
        None
    }
}

/// How much one stream may buffer, and for how long it may stay full.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutboxBounds {
    /// Encoded bytes queued at most (one message is always let in, however
    /// large: a message is at most a few KiB).
    pub bytes: usize,
    /// How long the outbox may stay full before the subscriber is cut off.
    pub stall: Duration,
}

type Message<T> = Result<T, Status>;

/// Bytes an error status is counted as (it is a few hundred at most).
const STATUS_BYTES: usize = 256;
/// The gRPC length prefix each message is sent with.
const PREFIX_BYTES: usize = 5;

struct State<T> {
    queue: VecDeque<(Message<T>, usize)>,
    bytes: usize,
    /// The cursor of the last message handed to the client.
    delivered: Option<String>,
    /// The status the stream ends with once the queue was dropped.
    end: Option<Status>,
    /// The receiver (the response body) is gone.
    closed: bool,
    /// The sender (the task) is gone: end after the queue.
    finished: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// One permit per change the sender may wait for: a message taken, the
    /// receiver gone.
    room: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The task's end of an outbox.
pub(crate) struct Sender<T: Outgoing> {
    shared: Arc<Shared<T>>,
    bounds: OutboxBounds,
}

/// The client's end: the stream tonic sends from. It holds the stream's
/// slots (`permit`) until HTTP/2 drops it.
pub(crate) struct Receiver<T: Outgoing> {
    shared: Arc<Shared<T>>,
    ended: bool,
    /// The client connection's write side: nothing is handed to hyper
    /// while it is blocked.
    gate: Option<Arc<WriteState>>,
    _permit: Box<dyn Send + Sync>,
}

/// A new outbox, whose receiver holds `permit`.
pub(crate) fn outbox<T: Outgoing>(
    bounds: OutboxBounds,
    gate: Option<Arc<WriteState>>,
    permit: impl Send + Sync + 'static,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bytes: 0,
            delivered: None,
            end: None,
            closed: false,
            finished: false,
            waker: None,
        }),
        room: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
            bounds,
        },
        Receiver {
            shared,
            ended: false,
            gate,
            _permit: Box::new(permit),
        },
    )
}

/// Why a send did not go through.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The client went away.
    Gone,
    /// The outbox stayed full for the whole grace: the stream was cut off.
    TooSlow,
}

impl<T: Outgoing> Sender<T> {
    /// Queues `message`, waiting while the outbox is full. After the stall
    /// grace the subscriber is cut off ([`Refused::TooSlow`]): the queue is
    /// dropped and the stream ends with the last delivered cursor.
    pub(crate) async fn send(&self, message: Message<T>) -> Result<(), Refused> {
        let size = match &message {
            Ok(m) => m.encoded_len() + PREFIX_BYTES,
            Err(_) => STATUS_BYTES,
        };
        let mut message = Some(message);
        let mut deadline = None;
        loop {
            {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(Refused::Gone);
                }
                if state.queue.is_empty() || state.bytes + size <= self.bounds.bytes {
                    if let Some(m) = message.take() {
                        state.queue.push_back((m, size));
                        state.bytes += size;
                    }
                    if let Some(w) = state.waker.take() {
                        w.wake();
                    }
                    return Ok(());
                }
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.bounds.stall);
            tokio::select! {
                _ = self.shared.room.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    self.cut();
                    return Err(Refused::TooSlow);
                }
            }
        }
    }

    /// Resolves once the client has gone away.
    pub(crate) async fn closed(&self) {
        loop {
            if self.shared.lock().closed {
                return;
            }
            self.shared.room.notified().await;
        }
    }

    /// Drops what is queued and ends the stream with `SUBSCRIBER_TOO_SLOW`
    /// and the cursor of the last message the client was handed.
    fn cut(&self) {
        let mut state = self.shared.lock();
        state.queue.clear();
        state.bytes = 0;
        let status = ServiceError::SubscriberTooSlow {
            cursor: state.delivered.clone(),
            stalled: self.bounds.stall,
        }
        .to_status();
        state.end = Some(status);
        tracing::info!(
            stalled = ?self.bounds.stall,
            "watch stream cut off: its client read nothing for the stall timeout"
        );
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

impl<T: Outgoing> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.finished = true;
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

impl<T: Outgoing> Stream for Receiver<T> {
    type Item = Message<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message<T>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.gate.as_ref().is_some_and(|g| g.poll_blocked(cx)) {
            return Poll::Pending;
        }
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        if let Some((message, size)) = state.queue.pop_front() {
            state.bytes -= size;
            if let Ok(m) = &message
                && let Some(cursor) = m.cursor()
            {
                state.delivered = Some(cursor.to_owned());
            }
            drop(state);
            shared.room.notify_one();
            return Poll::Ready(Some(message));
        }
        if let Some(end) = state.end.take() {
            drop(state);
            self.ended = true;
            return Poll::Ready(Some(Err(end)));
        }
        if state.finished {
            drop(state);
            self.ended = true;
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T: Outgoing> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.queue.clear();
        state.bytes = 0;
        drop(state);
        self.shared.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use prost::Message as _;

    use super::*;

    fn event(cursor: &str) -> pb::ConnectionEvent {
        pb::ConnectionEvent {
            cursor: cursor.into(),
            connection_id: "x".repeat(100),
            ..Default::default()
        }
    }

    fn bounds(bytes: usize) -> OutboxBounds {
        OutboxBounds {
            bytes,
            stall: Duration::from_secs(10),
        }
    }

    /// Invariant: the queue never holds more than its byte bound (but
    /// always lets one message in), and a message taken makes room.
    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_in_bytes() {
        let one = event("c1").encoded_len() + PREFIX_BYTES;
        let (tx, mut rx) = outbox(bounds(one * 3), None, ());
        for i in 0..3 {
            tx.send(Ok(event(&format!("c{i}")))).await.unwrap();
        }
        assert_eq!(tx.shared.lock().bytes, 3 * one);
        let fourth = tokio::spawn(async move {
            tx.send(Ok(event("c3"))).await.unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!fourth.is_finished(), "waits while the outbox is full");
        assert_eq!(rx.next().await.unwrap().unwrap().cursor, "c0");
        let tx = fourth.await.unwrap();
        assert_eq!(tx.shared.lock().bytes, 3 * one);

        let (tx, mut rx) = outbox(bounds(1), None, ());
        tx.send(Ok(event("big"))).await.unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap().cursor, "big");
    }

    /// Invariant: a subscriber whose outbox stays full for the grace is
    /// cut off: the queue is dropped at once, and the stream ends with
    /// UNAVAILABLE / SUBSCRIBER_TOO_SLOW and the cursor of the last message
    /// it was handed, never one it was not.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_subscriber_is_cut_off_with_its_last_cursor() {
        let one = event("c1").encoded_len() + PREFIX_BYTES;
        let (tx, mut rx) = outbox(bounds(one * 2), None, ());
        tx.send(Ok(event("c1"))).await.unwrap();
        tx.send(Ok(event("c2"))).await.unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap().cursor, "c1");
        tx.send(Ok(event("c3"))).await.unwrap();
        let started = Instant::now();
        assert_eq!(tx.send(Ok(event("c4"))).await, Err(Refused::TooSlow));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(tx.shared.lock().bytes, 0, "the queue is dropped at once");
        drop(tx);
        let status = rx.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.reason, "SUBSCRIBER_TOO_SLOW");
        assert_eq!(info.metadata["cursor"], "c1", "the last one handed over");
        assert!(rx.next().await.is_none());
    }

    /// Invariant: a subscriber that reads, however slowly, within the
    /// grace is never cut; a client that goes away frees the queue and
    /// wakes the task.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_within_the_grace_is_kept_and_a_gone_one_is_noticed() {
        let one = event("c1").encoded_len() + PREFIX_BYTES;
        let (tx, mut rx) = outbox(bounds(one), None, ());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            while let Some(m) = rx.next().await {
                m.unwrap();
                got += 1;
                if got == 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(9)).await;
            }
            rx
        });
        for i in 0..20 {
            tx.send(Ok(event(&format!("c{i}")))).await.unwrap();
        }
        let rx = reader.await.unwrap();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .expect("the task learns the client is gone");
        assert_eq!(tx.send(Ok(event("late"))).await, Err(Refused::Gone));
    }
}
