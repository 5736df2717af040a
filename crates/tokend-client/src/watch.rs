//! Watch streams that survive broker restarts: a task re-subscribes with
//! backoff and forwards events (a fresh snapshot first after each resume).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokend_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::{Inner, error::Error};

/// What happened to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The current state (on subscribe, and again after a resume).
    Snapshot,
    TokenRotated,
    StatusChanged,
    RefreshFailed,
    Deleted,
}

/// One event: its kind and the connection's metadata after it.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    pub connection: pb::Connection,
}

impl WatchEvent {
    /// Whether the connection needs the customer to reconnect.
    pub fn reconnect_required(&self) -> bool {
        self.connection.status == pb::ConnectionStatus::ReconnectRequired as i32
    }
}

fn kind(t: i32) -> Option<WatchEventKind> {
    match pb::WatchEventType::try_from(t).ok()? {
        pb::WatchEventType::Snapshot => Some(WatchEventKind::Snapshot),
        pb::WatchEventType::TokenRotated => Some(WatchEventKind::TokenRotated),
        pb::WatchEventType::StatusChanged => Some(WatchEventKind::StatusChanged),
        pb::WatchEventType::RefreshFailed => Some(WatchEventKind::RefreshFailed),
        pb::WatchEventType::Deleted => Some(WatchEventKind::Deleted),
        pb::WatchEventType::Unspecified => None,
    }
}

/// The stream `Client::watch` returns. Dropping it stops the task.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    /// Events of `connection_id`; one saying the grant or the connection
    /// is gone also drops the client's cached token (`cache`).
    pub(crate) fn start(
        client: Inner,
        connection_id: String,
        cache: std::sync::Weak<crate::Cache>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(client, connection_id, tx, cache));
        WatchStream { rx, task }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

async fn run(
    mut client: Inner,
    connection_id: String,
    tx: mpsc::Sender<Result<WatchEvent, Error>>,
    cache: std::sync::Weak<crate::Cache>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let request = pb::WatchConnectionRequest {
            connection_id: connection_id.clone(),
        };
        let mut stream = match client.watch_connection(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = Error::from_status(&status);
                if !e.is_transient_transport() {
                    let _ = tx.send(Err(e)).await;
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
                    let (Some(kind), Some(connection)) = (kind(m.event_type), m.connection) else {
                        continue;
                    };
                    let deleted = kind == WatchEventKind::Deleted;
                    let event = WatchEvent { kind, connection };
                    if (deleted || event.reconnect_required())
                        && let Some(cache) = cache.upgrade()
                    {
                        crate::forget(&cache, &connection_id);
                    }
                    if tx.send(Ok(event)).await.is_err() || deleted {
                        return;
                    }
                }
                // The broker ended the stream (shutdown) or the connection
                // broke: resubscribe.
                Ok(None) => break,
                Err(status) => {
                    let e = Error::from_status(&status);
                    if !(e.is_transient_transport() || matches!(e, Error::Other { .. })) {
                        let _ = tx.send(Err(e)).await;
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
