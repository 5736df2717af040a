//! The embedded default `Store`: sled 0.34, a tree of records, one of
//! refresh leases and the event log, every record change and its events in
//! one sled transaction, every write flushed before it returns. Changes run
//! on one writer thread with group commit (`sled_commit.rs`), reads on
//! blocking threads: no sled call runs on the async runtime.

use std::sync::{Arc, Mutex, RwLock, atomic::AtomicU64};

use crate::{
    StoreError, event_log::Watermark, sealing::Keyring, sled_durable::Durability,
    sled_wal::WriteAhead,
};

/// A sled database holding tokend's records. sled types stay inside this
/// module. Cheap to clone: the state is shared.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kept so the database (and its file lock) lives as long as the store.
    db: sled::Db,
    /// `connection id -> codec-encoded Connection`.
    records: sled::Tree,
    /// Summaries, status and provider entries and counts
    /// (`sled_index.rs`), changed in the same transaction as the records.
    index: sled::Tree,
    /// `connection id -> JSON LeaseState`.
    leases: sled::Tree,
    /// `big-endian seq -> JSON Event`: the event log.
    events: sled::Tree,
    /// The log's id and last sequence number.
    event_meta: sled::Tree,
    /// `reader name -> JSON SavedCursor`.
    cursors: sled::Tree,
    /// The keys records are sealed with (`sled_keys.rs`).
    key_checks: sled::Tree,
    /// The last sequence number committed (maybe not yet flushed). Written
    /// only under `fencing`, so sequence order is commit order.
    last_seq: AtomicU64,
    /// The last sequence number flushed.
    watermark: Watermark,
    log_id: u64,
    /// False only for benchmarks measuring what the log costs.
    log_events: bool,
    /// Added to every flush: benchmarks of a slow (cloud) disk.
    flush_delay: std::time::Duration,
    /// The writer thread's queue.
    writer: std::sync::mpsc::Sender<crate::sled_commit::Job<Inner>>,
    /// Which records have changes not yet flushed, and how the flushes
    /// went: reads wait for the flush of what they read
    /// (`sled_durable.rs`).
    durability: Arc<Durability>,
    /// Every put's sealed record, fdatasync'd by its caller while sled
    /// takes its time, replayed at open (`sled_wal.rs`).
    wal: WriteAhead,
    /// Seals and opens secret fields. A `put` holds the read guard from
    /// encoding to its compare-and-swap, and `set_keyring` takes the write
    /// guard: once `set_keyring` returns, every write that lands after it
    /// was sealed with the new keys, so a re-encryption pass started then
    /// misses nothing and old keys can never gain records again.
    keys: RwLock<Arc<Keyring>>,
    /// Serialises the fence check with the record swap, and lease grants
    /// with both, so no write under a stale fence can slip between a grant
    /// and its swap; and numbers events in commit order. sled's exclusive
    /// file lock makes this process the only writer.
    fencing: Mutex<()>,
}

/// The layout of the data dir this build writes. Bump it with a migration
/// in [`check_format`] whenever the records' encoding or the trees change.
/// 2: the event log (a build without it would change records without
/// their events, so it must refuse such a dir).
/// 3: the index tree (a build without it would change records without
/// their summaries).
/// 4: every record's sealed fields bound to its provider, account, params
/// and metadata (codec schema 2). Older records are re-sealed at open, and
/// from then on a record sealed the old way is unreadable: rewriting one in
/// the weaker form (from an old backup, say) gains nothing.
pub const FORMAT_VERSION: u32 = 4;

/// The first format whose records bind their routing fields: backups of an
/// older one hold records that must be re-sealed on the way in.
pub const BOUND_FORMAT: u32 = 4;

const LOG_ID_KEY: &[u8] = b"log_id";
/// The write-ahead log's directory, inside the data dir.
const WAL_DIR: &str = "grant-wal";
const LAST_SEQ_KEY: &[u8] = b"last_seq";

/// Where the format version is kept (sled's default tree).
const FORMAT_KEY: &[u8] = b"tokend.format_version";

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    match tree.get(key).map_err(backend)? {
        None => Ok(None),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| StoreError::Backend("the event log's metadata is unreadable".into())),
    }
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("event encoding failed: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod backup;
mod events;
mod format;
mod leases;
mod open;
mod rotation;
mod store;
mod writes;

use format::check_format;
pub use open::Tuning;
use writes::swap;

/// What the test modules below find through `super::*`.
#[cfg(test)]
use {
    crate::{Expected, ListQuery, Store, codec},
    format::format_version,
    open::LOCK_WAIT,
    std::{path::Path, sync::atomic::Ordering, time::Duration},
    tokend_core::{ConnectionId, Timestamp},
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod format_tests;

#[cfg(test)]
mod keys_tests;

#[cfg(test)]
mod durable_tests;

#[cfg(test)]
mod wal_tests;

mod wal;
