//! Subscribing to RECONNECT_REQUIRED across all connections: a billing
//! service's listener that hears about every connection whose customer must
//! reconnect, persists its cursor in a file, and so loses and repeats
//! nothing when it or tokend restarts.
//!
//! ```sh
//! cargo run --example reconnect_listener -- /tmp/reconnect.cursor [PROVIDER]
//! ```
//!
//! Keep the cursor file in the service's state dir, not in a checkout. With
//! no saved cursor (the first start) it lists the connections that need
//! reconnecting now before it listens, as it does for an expired cursor.
//!
//! Delivery is at least once: the cursor is saved after an event has been
//! handled, so a crash in between hands that event over again. Handle
//! events idempotently (e.g. keyed by connection id and version).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt as _;
use tokend_client::{Client, ConnectionEvent, Error, EventFilter, EventType};
use tokend_proto::v1 as pb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint =
        std::env::var("TOKEND_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let mut args = std::env::args().skip(1);
    let Some(cursor_file) = args.next().map(PathBuf::from) else {
        anyhow::bail!(
            "usage: reconnect_listener CURSOR_FILE [PROVIDER] (e.g. /tmp/reconnect.cursor sandbox)"
        );
    };
    let provider = args.next();
    let mut filter = EventFilter::default()
        .event_type(EventType::ReconnectRequired)
        .event_type(EventType::Recovered);
    if let Some(provider) = &provider {
        filter = filter.provider(provider.clone());
    }
    let tokend = Client::builder(endpoint).connect().await?;

    let mut saved = std::fs::read_to_string(&cursor_file)
        .ok()
        .map(|s| s.trim().to_owned());
    if saved.is_none() {
        // First start: subscribe live, then read the current state, then go
        // on from the live cursor, as for an expired cursor below.
        println!("no saved cursor: the connections that need reconnecting now");
        let mut live = tokend.watch_all(filter.clone());
        let cursor = live.started().await?;
        resync(&tokend, provider.as_deref()).await?;
        save(&cursor_file, &cursor)?;
        saved = Some(cursor);
    }
    println!(
        "listening for reconnect_required and recovered events{}",
        provider
            .as_deref()
            .map(|p| format!(" of provider {p}"))
            .unwrap_or_default()
    );
    loop {
        let mut stream = tokend.watch_all(filter.clone());
        if let Some(cursor) = saved.clone() {
            stream = stream.resume_after(cursor);
        }
        // Persist where we start before anything else, so a restart right
        // now resumes from here even if no event comes.
        match stream.started().await {
            Ok(cursor) => save(&cursor_file, &cursor)?,
            Err(e) => return Err(e.into()),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let outcome = loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(event)) => {
                        handle(&event);
                        save(&cursor_file, &event.cursor)?;
                    }
                    Some(Err(e)) => break e,
                    None => return Ok(()),
                },
                // A filtered stream's cursor also moves past events it
                // skipped; saving it keeps it inside the broker's retention.
                _ = tick.tick() => if let Some(cursor) = stream.cursor() {
                    save(&cursor_file, cursor)?;
                },
            }
        };
        match outcome {
            // Down longer than tokend keeps events: subscribe live first,
            // then read the current state, then go on from the live cursor.
            // Nothing falls between the two; a connection may be reported
            // twice, which `handle` tolerates.
            Error::CursorExpired { .. } => {
                eprintln!("cursor expired: resyncing from ListConnections");
                let mut live = tokend.watch_all(filter.clone());
                let cursor = live.started().await?;
                resync(&tokend, provider.as_deref()).await?;
                save(&cursor_file, &cursor)?;
                saved = Some(cursor);
            }
            e => return Err(e.into()),
        }
    }
}

/// What a real service does: pause the customer's jobs and ask them to
/// reconnect; resume when the connection recovers.
fn handle(event: &ConnectionEvent) {
    let account = event
        .connection
        .as_ref()
        .map(|c| c.account_id.as_str())
        .unwrap_or("");
    match EventType::try_from(event.event_type) {
        Ok(EventType::ReconnectRequired) => {
            let cause = pb::ReconnectCause::try_from(event.cause)
                .map(|c| c.as_str_name())
                .unwrap_or("");
            println!(
                "RECONNECT_REQUIRED {} account={account} cause={cause}",
                event.connection_id
            );
        }
        Ok(EventType::Recovered) => println!("RECOVERED {} account={account}", event.connection_id),
        _ => {}
    }
}

/// Every connection that needs reconnecting now.
async fn resync(tokend: &Client, provider: Option<&str>) -> Result<(), Error> {
    let mut page_token = String::new();
    loop {
        let page = tokend
            .list_connections(pb::ListConnectionsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                status: pb::ConnectionStatus::ReconnectRequired as i32,
                provider: provider.unwrap_or_default().to_owned(),
            })
            .await?;
        for c in &page.connections {
            println!(
                "RECONNECT_REQUIRED {} account={} (resync)",
                c.connection_id, c.account_id
            );
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// Writes the cursor atomically: a crash leaves the old one or the new one.
fn save(path: &Path, cursor: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, cursor)?;
    std::fs::rename(tmp, path)
}
