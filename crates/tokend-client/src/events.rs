//! The fleet-wide event feed: `client.watch_all(filter).resume_after(cursor)`,
//! a `Stream` of events that reconnects by itself and resumes after the
//! last cursor it received, so a broker restart loses and repeats nothing.

use std::{
    pin::Pin,
    sync::Weak,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokend_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::{Cache, Inner, error::Error};

pub use pb::{ConnectionEvent, EventType};

/// Which events to receive. Empty fields match everything; values within a
/// field are alternatives, fields must all match.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub providers: Vec<String>,
    pub connection_id_prefixes: Vec<String>,
    pub event_types: Vec<EventType>,
    pub statuses: Vec<pb::ConnectionStatus>,
}

impl EventFilter {
    pub fn provider(mut self, p: impl Into<String>) -> Self {
        self.providers.push(p.into());
        self
    }

    pub fn connection_id_prefix(mut self, p: impl Into<String>) -> Self {
        self.connection_id_prefixes.push(p.into());
        self
    }

    pub fn event_type(mut self, t: EventType) -> Self {
        self.event_types.push(t);
        self
    }

    pub fn status(mut self, s: pb::ConnectionStatus) -> Self {
        self.statuses.push(s);
        self
    }

    fn to_pb(&self) -> pb::EventFilter {
        pb::EventFilter {
            providers: self.providers.clone(),
            connection_id_prefixes: self.connection_id_prefixes.clone(),
            event_types: self.event_types.iter().map(|t| *t as i32).collect(),
            statuses: self.statuses.iter().map(|s| *s as i32).collect(),
        }
    }
}

/// What the task hands the stream: an event, or only a new position.
enum Item {
    Event(Box<ConnectionEvent>),
    Checkpoint { cursor: String, caught_up: bool },
    Failed(Error),
}

/// The stream `Client::watch_all` returns. It starts on first poll; drop
/// it to stop.
pub struct EventStream {
    /// Until the first poll: what to subscribe with.
    pending: Option<(Inner, pb::WatchConnectionsRequest)>,
    /// The client's token cache: a RECONNECT_REQUIRED or DELETED event
    /// drops that connection's cached token.
    cache: Weak<Cache>,
    rx: Option<mpsc::Receiver<Item>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The cursor of the last event yielded or checkpoint passed.
    cursor: Option<String>,
    /// End once the replay is over (`until_caught_up`).
    stop_when_caught_up: bool,
    /// An event received while `started` waited for the first position.
    stash: Option<ConnectionEvent>,
}

impl EventStream {
    pub(crate) fn new(client: Inner, filter: &EventFilter, cache: Weak<Cache>) -> Self {
        EventStream {
            cache,
            pending: Some((
                client,
                pb::WatchConnectionsRequest {
                    filter: Some(filter.to_pb()),
                    ..Default::default()
                },
            )),
            rx: None,
            task: None,
            cursor: None,
            stop_when_caught_up: false,
            stash: None,
        }
    }

    /// Subscribes (if not yet) and returns the stream's position: for a
    /// new stream, once the broker has sent it; when resuming, the cursor
    /// given (an expired one shows as the stream's first error). Persist it
    /// before acting on anything, so a restart resumes from here even if no
    /// event came.
    pub async fn started(&mut self) -> Result<String, Error> {
        futures::future::poll_fn(|cx| {
            if self.stash.is_none() {
                match Pin::new(&mut *self).poll_next(cx) {
                    Poll::Ready(Some(Ok(event))) => self.stash = Some(event),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(Error::Transport {
                            message: "the event stream ended before it started".into(),
                        }));
                    }
                    Poll::Pending => {}
                }
            }
            match &self.cursor {
                Some(cursor) => Poll::Ready(Ok(cursor.clone())),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// End the stream once it has replayed every event the broker held
    /// when it opened, instead of going on live: a listing of the log.
    pub fn until_caught_up(mut self) -> Self {
        self.stop_when_caught_up = true;
        self
    }

    /// Resume after this cursor (one this stream's `cursor()` gave, saved
    /// somewhere durable): replays what happened since, then goes live.
    pub fn resume_after(mut self, cursor: impl Into<String>) -> Self {
        let cursor = cursor.into();
        if let Some((_, request)) = &mut self.pending {
            request.resume_after = cursor.clone();
        }
        self.cursor = Some(cursor);
        self
    }

    /// Without a cursor: start with the oldest event the broker retains
    /// instead of live.
    pub fn from_oldest(mut self) -> Self {
        if let Some((_, request)) = &mut self.pending {
            request.from_oldest = true;
        }
        self
    }

    /// Where this stream stands: persist it, and pass it to
    /// [`Self::resume_after`] to continue after a restart. `None` until the
    /// broker has sent the stream's first position.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Stream for EventStream {
    type Item = Result<ConnectionEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = self.stash.take() {
            return Poll::Ready(Some(Ok(event)));
        }
        if let Some((client, request)) = self.pending.take() {
            let (tx, rx) = mpsc::channel(64);
            self.task = Some(tokio::spawn(run(client, request, tx, self.cache.clone())));
            self.rx = Some(rx);
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(None);
            };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(Item::Checkpoint { cursor, caught_up })) => {
                    self.cursor = Some(cursor);
                    if caught_up && self.stop_when_caught_up {
                        self.rx = None;
                        if let Some(task) = self.task.take() {
                            task.abort();
                        }
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(Some(Item::Event(event))) => {
                    self.cursor = Some(event.cursor.clone());
                    return Poll::Ready(Some(Ok(*event)));
                }
                Poll::Ready(Some(Item::Failed(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn run(
    mut client: Inner,
    mut request: pb::WatchConnectionsRequest,
    tx: mpsc::Sender<Item>,
    cache: Weak<Cache>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut stream = match client.watch_connections(request.clone()).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = Error::from_status(&status);
                if !retryable(&e) {
                    let _ = tx.send(Item::Failed(e)).await;
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    delay = Duration::from_millis(100);
                    // Everything received is delivered, so a reconnect
                    // resumes after it.
                    request.resume_after = m.cursor.clone();
                    evict_if_gone(&m, &cache);
                    let item = if m.event_type == EventType::Checkpoint as i32 {
                        Item::Checkpoint {
                            cursor: m.cursor,
                            caught_up: m.caught_up,
                        }
                    } else {
                        Item::Event(Box::new(m))
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                // The broker ended the stream (shutdown) or the connection
                // broke: resume.
                Ok(None) => break,
                Err(status) => {
                    let e = Error::from_status(&status);
                    if !retryable(&e) {
                        let _ = tx.send(Item::Failed(e)).await;
                        return;
                    }
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A connection whose grant is dead or which was deleted loses its cached
/// token at once, whoever's call made it so.
fn evict_if_gone(event: &ConnectionEvent, cache: &Weak<Cache>) {
    let gone = event.event_type == EventType::ReconnectRequired as i32
        || event.event_type == EventType::Deleted as i32;
    if gone && let Some(cache) = cache.upgrade() {
        crate::forget(&cache, &event.connection_id);
    }
}

/// Broker restarts and shutdowns are retried; everything else (an expired
/// cursor, a denied caller, a bad filter) ends the stream.
fn retryable(e: &Error) -> bool {
    e.is_transient_transport()
        || matches!(e, Error::Unavailable { .. })
        || matches!(e, Error::Other { code, .. } if matches!(code, tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled))
}
