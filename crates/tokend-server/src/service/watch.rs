//! The `WatchConnection` stream: a snapshot, then every change, as a task
//! owned by the engine's tracker that ends at shutdown, when the client goes
//! away, or after a DELETED event.

use std::sync::Arc;

use tokend_core::{Connection, ConnectionId};
use tokend_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::outbox::{self, OutboxBounds, Receiver, Sender};
use crate::transport::backpressure::WriteState;
use tokend_engine::{
    Engine,
    hub::{EventKind, Subscription},
};

use crate::{convert, error::ServiceError};

/// One watch stream's task and everything it holds. Each field is released
/// by drop when the task ends, however it ends: the hub subscription frees
/// the channel. The stream's slots are held by the outbox's receiver, the
/// response body, until HTTP/2 is done with it.
pub(super) struct WatchTask {
    engine: Arc<Engine>,
    id: ConnectionId,
    events: Subscription,
    /// The newest state sent; watchers see no event older than it.
    last_seen: Arc<Connection>,
    tx: Sender<pb::WatchConnectionResponse>,
}

/// What the next message ends with.
enum Next {
    Send(Box<Result<pb::WatchConnectionResponse, Status>>, bool),
    Skip,
    Stop,
}

impl WatchTask {
    /// Subscribes, reads the current state and starts the stream. The
    /// subscription comes first, so no change can fall between the two.
    pub(super) async fn start(
        engine: &Arc<Engine>,
        id: ConnectionId,
        bounds: OutboxBounds,
        gate: Option<Arc<WriteState>>,
        permit: impl Send + Sync + 'static,
    ) -> Result<Receiver<pb::WatchConnectionResponse>, ServiceError> {
        let events = engine.subscribe(&id);
        let current = engine.cached(&id).await?;
        let (tx, rx) = outbox::outbox(bounds, gate, permit);
        let task = WatchTask {
            engine: Arc::clone(engine),
            id,
            events,
            last_seen: current,
            tx,
        };
        engine.tasks().spawn(task.run());
        Ok(rx)
    }

    fn message(
        &self,
        kind: pb::WatchEventType,
        c: &Connection,
        at: tokend_core::Timestamp,
    ) -> pb::WatchConnectionResponse {
        let live = convert::Live {
            next_refresh_at: self.engine.next_due(&c.id),
            provider_trouble: self.engine.provider_trouble(&c.provider),
        };
        pb::WatchConnectionResponse {
            event_type: kind as i32,
            connection: Some(convert::connection(c, live)),
            event_time: Some(convert::timestamp(at)),
        }
    }

    async fn run(mut self) {
        let shutdown = self.engine.shutdown_token().clone();
        let snapshot = self.message(
            pb::WatchEventType::Snapshot,
            &Arc::clone(&self.last_seen),
            self.engine.now(),
        );
        if !self.send(Ok(snapshot), &shutdown).await {
            return;
        }
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                event = self.events.recv() => event,
            };
            let (out, last) = match self.next(received).await {
                Next::Send(out, last) => (*out, last),
                Next::Skip => continue,
                Next::Stop => return,
            };
            // A client that stops reading must not hold shutdown up.
            if !self.send(out, &shutdown).await || last {
                return;
            }
        }
    }

    async fn send(
        &self,
        out: Result<pb::WatchConnectionResponse, Status>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        // A client that reads nothing for the stall grace is cut off; it
        // resubscribes and gets a fresh snapshot.
        tokio::select! {
            sent = self.tx.send(out) => sent.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    async fn next(&mut self, received: Result<tokend_engine::hub::Event, RecvError>) -> Next {
        match received {
            Ok(event) => {
                let deleted = event.kind == EventKind::Deleted;
                if !deleted && event.connection.revision <= self.last_seen.revision {
                    return Next::Skip; // already covered by the snapshot
                }
                self.last_seen = Arc::clone(&event.connection);
                Next::Send(
                    Box::new(Ok(self.message(
                        event_type(event.kind),
                        &event.connection,
                        event.at,
                    ))),
                    deleted,
                )
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(connection_id = %self.id, skipped, "watcher lagged; resending a snapshot");
                match self.engine.stored(&self.id).await {
                    Ok(record) if record.incarnation == self.last_seen.incarnation => {
                        let record = Arc::new(record);
                        self.last_seen = Arc::clone(&record);
                        Next::Send(
                            Box::new(Ok(self.message(
                                pb::WatchEventType::Snapshot,
                                &record,
                                self.engine.now(),
                            ))),
                            false,
                        )
                    }
                    // Deleted (and maybe re-created) while we lagged: this
                    // stream's connection is gone.
                    Ok(_) | Err(tokend_engine::EngineError::NotFound(_)) => Next::Send(
                        Box::new(Ok(self.message(
                            pb::WatchEventType::Deleted,
                            &Arc::clone(&self.last_seen),
                            self.engine.now(),
                        ))),
                        true,
                    ),
                    Err(e) => Next::Send(Box::new(Err(ServiceError::from(e).to_status())), true),
                }
            }
            Err(RecvError::Closed) => Next::Stop,
        }
    }
}

fn event_type(kind: EventKind) -> pb::WatchEventType {
    match kind {
        EventKind::TokenRotated => pb::WatchEventType::TokenRotated,
        EventKind::StatusChanged => pb::WatchEventType::StatusChanged,
        EventKind::RefreshFailed => pb::WatchEventType::RefreshFailed,
        EventKind::Deleted => pb::WatchEventType::Deleted,
    }
}
