//! The event log on sled: reading, bounds, pruning in chunks on the writer
//! thread, and saved cursors.

use std::sync::atomic::Ordering;

use tokend_core::{Event, Timestamp};

use crate::{
    StoreError,
    event_log::{LogBounds, SavedCursor},
};

use super::*;

pub(super) async fn read_events(
    store: &SledStore,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    if after >= up_to {
        return Ok(Vec::new());
    }
    store
        .blocking(move |inner| {
            let mut out = Vec::new();
            let range = (after + 1).to_be_bytes()..=up_to.to_be_bytes();
            for item in inner.events.range(range).take(limit) {
                let (_, bytes) = item.map_err(backend)?;
                out.push(
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        id: "event log".into(),
                        reason: e.to_string(),
                    })?,
                );
            }
            Ok(out)
        })
        .await
}

pub(super) async fn event_bounds(store: &SledStore) -> Result<LogBounds, StoreError> {
    store
        .blocking(|inner| {
            let last = inner.watermark.get();
            let oldest = match inner.events.first().map_err(backend)? {
                Some((key, _)) => <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(last + 1)
                    .min(last + 1),
                None => last + 1,
            };
            Ok(LogBounds {
                log_id: inner.log_id,
                oldest,
                last,
            })
        })
        .await
}

pub(super) async fn prune_events(
    store: &SledStore,
    older_than: Timestamp,
    keep: u64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        // One writer-thread job per chunk, so other changes are not
        // held up by a long prune.
        let (in_chunk, done) = store
            .write_then(
                move |inner| {
                    let last = inner.last_seq.load(Ordering::SeqCst);
                    let mut batch = sled::Batch::default();
                    let mut in_chunk = 0u64;
                    let mut done = true;
                    for item in inner.events.iter().take(10_000) {
                        let (key, bytes) = item.map_err(backend)?;
                        let seq = <[u8; 8]>::try_from(key.as_ref()).map_or(0, u64::from_be_bytes);
                        let retained = last.saturating_sub(seq) + 1;
                        let old = serde_json::from_slice::<Event>(&bytes)
                            .map_or(true, |e| e.at < older_than);
                        if !(retained > keep || old) {
                            done = true;
                            break;
                        }
                        batch.remove(key);
                        in_chunk += 1;
                        done = false;
                    }
                    if in_chunk > 0 {
                        inner.events.apply_batch(batch).map_err(backend)?;
                    }
                    Ok((in_chunk, done || in_chunk < 10_000))
                },
                |_| false,
            )
            .await?;
        removed += in_chunk;
        if done || in_chunk == 0 {
            return Ok(removed);
        }
    }
}

pub(super) async fn load_cursor(
    store: &SledStore,
    name: &str,
) -> Result<Option<SavedCursor>, StoreError> {
    let name = name.to_owned();
    store
        .blocking(
            move |inner| match inner.cursors.get(name.as_bytes()).map_err(backend)? {
                Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(json_error),
                None => Ok(None),
            },
        )
        .await
}

pub(super) async fn save_cursor(
    store: &SledStore,
    name: &str,
    cursor: &SavedCursor,
) -> Result<(), StoreError> {
    let name = name.to_owned();
    let bytes = serde_json::to_vec(cursor).map_err(json_error)?;
    // Not flushed: the next write's flush (or sled's own, within a
    // second) carries it; a lost save means redelivery, never a skip.
    store
        .write_then(
            move |inner| {
                inner
                    .cursors
                    .insert(name.as_bytes(), bytes)
                    .map_err(backend)?;
                Ok(())
            },
            |_| false,
        )
        .await
}
