//! Follows the committed end of the event log for this replica: a
//! dedicated connection `LISTEN`s on the channel every writing transaction
//! notifies at commit, and reads `last_seq` itself at start, after every
//! reconnect and every `poll_interval`, so a lost notification delays an
//! event by at most that long.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use tokend_store::Watermark;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The channel writers notify with their last sequence number.
pub(crate) const CHANNEL: &str = "tokend_events";

/// Runs until aborted (when the store is dropped), reconnecting with
/// backoff when the database goes away.
pub(crate) async fn follow(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    poll_interval: Duration,
    watermark: Arc<Watermark>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(&config, &tls, poll_interval, &watermark).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::debug!(error = %e, "event log follower lost its database connection");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn follow_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    poll_interval: Duration,
    watermark: &Watermark,
) -> Result<(), crate::PgError> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    // The connection yields notifications as messages; forward them while
    // driving it.
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
                Err(e) => return Err(crate::PgError::from(e)),
            }
        }
        Ok(())
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let mut poll = tokio::time::interval(poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                seq = rx.recv() => match seq {
                    Some(seq) => watermark.raise(seq),
                    // The connection ended.
                    None => return Ok::<(), crate::PgError>(()),
                },
                _ = poll.tick() => {
                    let row = client.query_one("SELECT last_seq FROM tokend_log", &[]).await?;
                    watermark.raise(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
