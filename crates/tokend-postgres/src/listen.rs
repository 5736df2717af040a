//! Follows the committed end of the event log for this replica: a
//! dedicated connection `LISTEN`s on the channel every writing transaction
//! notifies at commit, and `last_seq` is read through the pool every
//! `poll_interval`, so a lost notification, or a `LISTEN` connection gone
//! silent, delays an event by at most that long. The `LISTEN` connection
//! is checked every `poll_interval` too (a heartbeat within the call time
//! limit) and opened again when it does not answer.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use futures::{StreamExt, stream};
use tokend_store::{StoreError, Watermark};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{
    PgError,
    timed::{Pooled, bounded},
};

/// The channel writers notify with their last sequence number.
pub(crate) const CHANNEL: &str = "tokend_events";

/// What following the log needs.
pub(crate) struct Follow {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub pool: deadpool_postgres::Pool,
    pub poll_interval: Duration,
    /// The longest any database call may take before its connection is
    /// taken for dead.
    pub call_timeout: Duration,
}

/// Runs until aborted (when the store is dropped): the poll through the
/// pool and the `LISTEN` connection, each on its own, so neither waits on
/// the other's dead socket.
pub(crate) async fn follow(follow: Follow, watermark: Arc<Watermark>) {
    tokio::join!(poll(&follow, &watermark), listen(&follow, &watermark));
}

/// Reads `last_seq` every `poll_interval` through the pool.
///
/// Invariant (issue 25, item 7): another replica's commit reaches this
/// replica within `poll_interval` (plus one call) even when notifications
/// stop without an error, as on a `LISTEN` connection whose peer vanished.
async fn poll(follow: &Follow, watermark: &Watermark) {
    let mut tick = tokio::time::interval(follow.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let abandoned = Arc::new(AtomicBool::new(false));
        let read = bounded("poll last_seq", follow.call_timeout, &abandoned, async {
            let client = Pooled::get(&follow.pool, &abandoned).await?;
            let statement = client
                .prepare_cached("SELECT last_seq FROM tokend_log")
                .await
                .map_err(PgError::from)?;
            let row = client
                .query_one(&statement, &[])
                .await
                .map_err(PgError::from)?;
            Ok::<_, StoreError>(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await;
        match read {
            Ok(seq) => watermark.raise(seq),
            Err(e) => tracing::debug!(error = %e, "reading the event log's end failed"),
        }
    }
}

/// Keeps a `LISTEN` connection open, opening it again with backoff when it
/// fails or stops answering its heartbeat.
async fn listen(follow: &Follow, watermark: &Watermark) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(follow, watermark).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "event log listener lost its database connection; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen_once(follow: &Follow, watermark: &Watermark) -> Result<(), PgError> {
    let limit = follow.call_timeout;
    let timed_out = |what: &str| PgError::Db(format!("{what}: no answer within {limit:?}"));
    let (client, mut connection) =
        tokio::time::timeout(limit, follow.config.connect(follow.tls.clone()))
            .await
            .map_err(|_| timed_out("connecting the listener"))??;
    // The connection yields notifications as messages; forward them while
    // driving it. Aborting the driver closes the socket.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        let _ = tx.send(seq);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(PgError::from(e)),
            }
        }
        Ok(())
    });
    let result = async {
        tokio::time::timeout(limit, client.batch_execute(&format!("LISTEN {CHANNEL}")))
            .await
            .map_err(|_| timed_out("LISTEN"))??;
        let mut beat = tokio::time::interval(follow.poll_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                seq = rx.recv() => match seq {
                    Some(seq) => watermark.raise(seq),
                    // The connection ended.
                    None => return Ok::<(), PgError>(()),
                },
                // A heartbeat: a socket whose peer vanished raises no
                // error, it just never answers.
                _ = beat.tick() => {
                    tokio::time::timeout(limit, client.simple_query("SELECT 1"))
                        .await
                        .map_err(|_| timed_out("listener heartbeat"))??;
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
