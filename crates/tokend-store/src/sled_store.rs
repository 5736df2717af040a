//! The embedded default `Store`: sled 0.34, a tree of records, one of
//! refresh leases and the event log, every record change and its events in
//! one sled transaction, every write flushed before it returns. Changes run
//! on one writer thread with group commit (`sled_commit.rs`), reads on
//! blocking threads: no sled call runs on the async runtime.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sled::Transactional;
use tokend_core::{
    Connection, ConnectionId, Event, NewEvent, Timestamp, event,
    steps::{self, Step},
};
use tokio::sync::watch;

use crate::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, Store, StoreError, Summary,
    Watermark, check_advances, codec,
    crypto::Keyring,
    leases::{LeaseState, check_fence},
    matches,
    sled_durable::{Durability, Waited},
    sled_index,
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

/// The data dir's format version: `None` for an empty dir never stamped.
pub fn format_version(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    match db.get(FORMAT_KEY).map_err(backend)? {
        None => Ok(None),
        Some(bytes) => <[u8; 4]>::try_from(bytes.as_ref())
            .map(|b| Some(u32::from_be_bytes(b)))
            .map_err(|_| StoreError::Backend("the format version is unreadable".into())),
    }
}

/// Refuses a data dir written by a newer tokend; migrates an older one
/// (format 0: written before versions were stamped, same encoding) and
/// stamps a new one.
fn check_format(
    db: &sled::Db,
    records: &sled::Tree,
    index: &sled::Tree,
    dir: &Path,
    keys: &Keyring,
) -> Result<(), StoreError> {
    let found = match format_version(db)? {
        Some(v) => v,
        None if records.is_empty() => {
            stamp(db, FORMAT_VERSION)?;
            return Ok(());
        }
        None => 0,
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::Backend(format!(
            "the data dir {} has on-disk format {found}, written by a newer tokend; this build reads formats up to {FORMAT_VERSION}: upgrade tokend, or restore a backup made by this version",
            dir.display()
        )));
    }
    if found < FORMAT_VERSION {
        // 0 → 1: the encoding is unchanged; only the stamp is new.
        // 1 → 2: the event log starts empty (opened by the caller).
        // 2 → 3: the index is built from the records, without opening a
        // token; a rebuild cut off by a crash starts again (the stamp is
        // written last).
        // 3 → 4: every record is re-sealed under the binding (the summaries
        // do not change); one cut off by a crash starts again, skipping the
        // records already re-sealed.
        let started = std::time::Instant::now();
        let indexed = if found < 3 {
            crate::sled_index::rebuild(records, index)?
        } else {
            0
        };
        let resealed = if found < BOUND_FORMAT {
            reseal_unbound(records, keys)?
        } else {
            0
        };
        db.flush().map_err(backend)?;
        stamp(db, FORMAT_VERSION)?;
        tracing::info!(
            from = found,
            to = FORMAT_VERSION,
            dir = %dir.display(),
            indexed,
            resealed,
            took_ms = started.elapsed().as_millis() as u64,
            "on-disk format migrated"
        );
    }
    Ok(())
}

/// Re-seals every record sealed before the binding (format 3 and older)
/// under it, at open, before anything else can write. Returns how many.
///
/// Stops at the first record that does not open, and the format stays
/// old: a wrong key file must not leave every record unreadable for good,
/// and a record forged in the old form (under a key made with the binding,
/// or after a reset stamp) must not be let in. The pending batch is
/// dropped; earlier batches stay valid (bound records), and the next open
/// goes on from there.
fn reseal_unbound(records: &sled::Tree, keys: &Keyring) -> Result<usize, StoreError> {
    let mut resealed = 0;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in records.iter() {
        let (key, bytes) = item.map_err(backend)?;
        match codec::upgrade(&key, &bytes, keys) {
            Ok(None) => {}
            Ok(Some(bound)) => {
                batch.insert(key, bound);
                resealed += 1;
                in_batch += 1;
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "the upgrade to on-disk format {BOUND_FORMAT} re-seals every record, and one does not open ({e}); start with the key file (or TOKEND_KEYS) that sealed it, or remove that connection with the tokend that wrote it"
                )));
            }
        }
        if in_batch == 1000 {
            records
                .apply_batch(std::mem::take(&mut batch))
                .map_err(backend)?;
            in_batch = 0;
        }
    }
    records.apply_batch(batch).map_err(backend)?;
    Ok(resealed)
}

fn stamp(db: &sled::Db, version: u32) -> Result<(), StoreError> {
    db.insert(FORMAT_KEY, &version.to_be_bytes())
        .map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

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

/// How long `open` waits for sled's directory lock before reporting the data
/// dir in use. A store dropped in this process lets go of its lock when sled's
/// IO threads finish their last write, a moment after the drop returns; a
/// process being restarted lets go when it exits.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled in `dir`, waiting up to `lock_wait` for its directory lock.
fn open_db(dir: &Path, lock_wait: std::time::Duration) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            // Durability comes from the explicit flush after every write;
            // the periodic flush only batches sled's own bookkeeping.
            .flush_every_ms(Some(1000))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled locks its directory; another holder is reported as a
            // string (sled 0.34 formats the OS error in).
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().starts_with("could not acquire lock") =>
            {
                if started.elapsed() >= lock_wait {
                    return Err(StoreError::Backend(format!(
                        "the data dir {} is in use by another tokend process (its database is locked); stop that one, or give this one another --data-dir",
                        dir.display()
                    )));
                }
                // Opening is synchronous and happens before serving, so a
                // short blocking wait holds up no other work.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

/// How the writer commits: for benchmarks of group commit.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Most changes one flush covers (1: a flush per write).
    pub max_batch: usize,
    /// Added to every flush, as a slow disk would.
    pub flush_delay: std::time::Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_batch: crate::sled_commit::MAX_BATCH,
            flush_delay: std::time::Duration::ZERO,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, sealing secrets with `keys`.
    pub fn open(dir: &Path, keys: Keyring) -> Result<Self, StoreError> {
        Self::open_with(dir, keys, true, LOCK_WAIT)
    }

    /// Like [`SledStore::open`], but gives up after half a second if
    /// another holder has the directory locked: for tools that fall back to
    /// something else when the server is running. (Not at once: a store
    /// dropped a moment ago may still hold the lock while sled's threads
    /// finish.)
    pub fn try_open(dir: &Path, keys: Keyring) -> Result<Self, StoreError> {
        Self::open_with(dir, keys, true, std::time::Duration::from_millis(500))
    }

    /// For benchmarks only: a store that appends no events, to measure what
    /// the event log costs. A data dir written this way has gaps in its log.
    #[doc(hidden)]
    pub fn open_without_event_log(dir: &Path, keys: Keyring) -> Result<Self, StoreError> {
        Self::open_with(dir, keys, false, LOCK_WAIT)
    }

    fn open_with(
        dir: &Path,
        keys: Keyring,
        log_events: bool,
        lock_wait: std::time::Duration,
    ) -> Result<Self, StoreError> {
        Self::open_tuned(dir, keys, log_events, lock_wait, Tuning::default())
    }

    /// For benchmarks only: a store whose writer flushes once per
    /// `max_batch` changes at most, with `flush_delay` added to each flush.
    #[doc(hidden)]
    pub fn open_for_bench(dir: &Path, keys: Keyring, tuning: Tuning) -> Result<Self, StoreError> {
        Self::open_tuned(dir, keys, true, LOCK_WAIT, tuning)
    }

    fn open_tuned(
        dir: &Path,
        keys: Keyring,
        log_events: bool,
        lock_wait: std::time::Duration,
        tuning: Tuning,
    ) -> Result<Self, StoreError> {
        let db = open_db(dir, lock_wait)?;
        let dir_name = dir.display().to_string();
        let records = db.open_tree("connections").map_err(backend)?;
        let leases = db.open_tree("refresh_leases").map_err(backend)?;
        let index = db.open_tree("index").map_err(backend)?;
        check_format(&db, &records, &index, dir, &keys)?;
        // Before anything is sealed: refuses keys that lack one the
        // records use, and records the active key.
        let key_checks = db.open_tree(crate::sled_keys::TREE).map_err(backend)?;
        crate::sled_keys::reconcile(&db, &key_checks, &records, &keys)?;
        let events = db.open_tree("events").map_err(backend)?;
        let event_meta = db.open_tree("event_meta").map_err(backend)?;
        let cursors = db.open_tree("event_cursors").map_err(backend)?;
        let log_id = match read_u64(&event_meta, LOG_ID_KEY)? {
            Some(id) => id,
            None => {
                let id = crate::new_log_id();
                event_meta
                    .insert(LOG_ID_KEY, &id.to_be_bytes())
                    .map_err(backend)?;
                db.flush().map_err(backend)?;
                id
            }
        };
        // Everything read back at open is durable.
        let last_seq = read_u64(&event_meta, LAST_SEQ_KEY)?.unwrap_or(0);
        let (wal, leftover) = WriteAhead::open(&dir.join(WAL_DIR))
            .map_err(|e| StoreError::Backend(format!("cannot open the write-ahead log: {e}")))?;
        let durability = Arc::new(Durability::default());
        let writer = crate::sled_commit::start(tuning.max_batch, {
            let durability = Arc::clone(&durability);
            move |why: &str| {
                tracing::error!(dir = %dir_name, "{why}");
                durability.writer_died(why);
            }
        });
        let store = Self {
            inner: Arc::new(Inner {
                db,
                records,
                index,
                leases,
                events,
                event_meta,
                cursors,
                key_checks,
                last_seq: AtomicU64::new(last_seq),
                watermark: Watermark::new(last_seq),
                log_id,
                log_events,
                writer,
                durability,
                wal,
                flush_delay: tuning.flush_delay,
                keys: RwLock::new(Arc::new(keys)),
                fencing: Mutex::new(()),
            }),
        };
        store.replay(leftover)?;
        Ok(store)
    }

    /// Runs `f` on a blocking thread: sled calls block on I/O and locks.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Whether the store holds no connection record.
    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    /// Writes records from a backup (`(id, sealed bytes)` as exported),
    /// after checking that each one decrypts with this store's keys, so a
    /// restore with the wrong key file fails before writing anything.
    /// Records already present are overwritten. Flushed before it returns.
    pub fn import_sealed(&self, records: &[(String, Vec<u8>)]) -> Result<usize, StoreError> {
        let keys = self.inner.keys();
        let mut summaries = Vec::with_capacity(records.len());
        for (id, bytes) in records {
            let record = codec::decode(id.as_bytes(), bytes, &keys)?;
            if record.id.as_str() != id {
                return Err(StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("the record inside is {}", record.id),
                });
            }
            summaries.push(Summary::of(&record));
        }
        // Every key these records use is recorded before they land.
        crate::sled_keys::record_for_import(
            &self.inner.db,
            &self.inner.key_checks,
            &keys,
            records.iter().flat_map(|(_, bytes)| codec::key_ids(bytes)),
        )?;
        let _fencing = lock(&self.inner.fencing);
        for ((id, bytes), summary) in records.iter().zip(&summaries) {
            let key = id.as_bytes();
            loop {
                let current = self.inner.records.get(key).map_err(backend)?;
                if self
                    .inner
                    .swap_with_events(key, current, Some((bytes, summary)), Vec::new())?
                {
                    break;
                }
            }
        }
        crate::sled_commit::Flush::flush_and_publish(&*self.inner)?;
        Ok(records.len())
    }

    /// The key new writes are sealed with.
    pub fn active_key_id(&self) -> u32 {
        self.inner.keys().active_key_id()
    }

    /// Every key the current keyring can open.
    pub fn key_ids(&self) -> Vec<u32> {
        self.inner.keys().key_ids()
    }

    /// Switches to a new keyring (after `tokend keys rotate`). It must still
    /// hold every key that sealed a stored field until [`Self::reencrypt`]
    /// has run. Waits for writes sealing with the old keyring to land.
    ///
    /// Its active key is recorded in the store before anything is sealed
    /// with it, and a keyring that lacks a recorded key some record still
    /// uses is refused (the current one is kept): see `key_records.rs`.
    pub async fn set_keyring(&self, keys: Keyring) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            // Under the write guard: no write seals with either keyring
            // while the records are checked and changed.
            let mut current = inner.keys.write().unwrap_or_else(|p| p.into_inner());
            crate::sled_keys::reconcile(&inner.db, &inner.key_checks, &inner.records, &keys)?;
            *current = Arc::new(keys);
            Ok(())
        })
        .await
    }

    /// Re-seals every record whose fields use a key other than the active
    /// one, online: each record is swapped byte-for-byte, so a concurrent
    /// write simply wins and is already sealed with the active key. Returns
    /// how many records were re-sealed.
    pub async fn reencrypt(&self) -> Result<usize, StoreError> {
        let count = self
            .blocking(|inner| {
                let keys = inner.keys();
                let active = keys.active_key_id();
                let mut count = 0;
                for item in inner.records.iter() {
                    let (key, bytes) = item.map_err(backend)?;
                    if codec::key_ids(&bytes).iter().all(|k| *k == active) {
                        continue;
                    }
                    let record = match codec::decode(&key, &bytes, &keys) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot re-encrypt an unreadable record");
                            continue;
                        }
                    };
                    if swap(
                        &inner.records,
                        &key,
                        Some(bytes),
                        Some(codec::encode(&record, &keys)),
                    )? {
                        count += 1;
                    }
                }
                Ok(count)
            })
            .await?;
        self.flush().await?;
        Ok(count)
    }

    /// How many records still use a key other than the active one.
    pub async fn records_on_old_keys(&self) -> Result<usize, StoreError> {
        self.blocking(|inner| {
            let active = inner.keys().active_key_id();
            inner.count_records(|k| k != active)
        })
        .await
    }

    /// How many records have a field sealed with `key_id`.
    pub async fn records_on_key(&self, key_id: u32) -> Result<usize, StoreError> {
        self.blocking(move |inner| inner.count_records(|k| k == key_id))
            .await
    }

    /// Makes every write so far durable (a flush by the writer thread).
    async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| (Ok(()), true)).await
    }

    /// Runs a change on the writer thread, flushed before this returns when
    /// its result satisfies `flush_if`.
    async fn write_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
        flush_if: impl FnOnce(&T) -> bool + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(move |inner| {
            let result = f(inner);
            let flush = result.as_ref().is_ok_and(flush_if);
            (result, flush)
        })
        .await
    }

    /// Runs a change on the writer thread; `f` also says whether the
    /// change must be flushed before this returns.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> (Result<T, StoreError>, bool) + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_timed(f, false).await
    }

    /// [`Self::write`], with the steps of a durable change timed when
    /// `timed` (a grant's put: `tokend_core::steps`).
    async fn write_timed<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> (Result<T, StoreError>, bool) + Send + 'static,
        timed: bool,
    ) -> Result<T, StoreError> {
        let sent = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = crate::sled_commit::Job {
            inner: Arc::clone(&self.inner),
            work: Box::new(move |inner: &Inner| {
                let started = Instant::now();
                let (result, flush) = f(inner);
                let applied = Instant::now();
                let flush = flush && result.is_ok();
                let completion: crate::sled_commit::Completion =
                    Box::new(move |flushed: Option<Result<(), StoreError>>| {
                        let done = Instant::now();
                        if timed && matches!(flushed, Some(Ok(()))) && result.is_ok() {
                            steps::record(Step::Queue, started - sent);
                            steps::record(Step::Apply, applied - started);
                            steps::record(Step::Fsync, done - applied);
                        }
                        // A failed flush fails every change of its batch,
                        // refused ones too: the state a refusal was judged
                        // against is not durable either.
                        let result = match flushed {
                            Some(Err(e)) => Err(e),
                            _ => result,
                        };
                        let _ = tx.send((result, done));
                    });
                (flush, completion)
            }),
        };
        self.inner.writer.send(job).map_err(|_| writer_gone())?;
        let (result, done) = rx
            .await
            .map_err(|_| StoreError::Backend("the store's writer thread failed".into()))?;
        if timed && result.is_ok() {
            steps::record(Step::Ack, done.elapsed());
        }
        result
    }

    /// Before answering with what a read found: if a change it may have
    /// seen is not durable yet (`pending`: the flush that makes it so),
    /// waits for that flush. Invariant 2: nothing is visible before it is
    /// durable, so no caller hands out, or defers to, a change a crash
    /// could still undo.
    async fn durable(&self, pending: Option<u64>) -> Result<(), StoreError> {
        let Some(flush) = pending else {
            return Ok(());
        };
        match self.inner.durability.wait(flush).await {
            Waited::Durable => Ok(()),
            // A new flush covers everything applied before it, what was
            // read included.
            Waited::FlushFailed => self.flush().await,
            Waited::WriterGone => Err(writer_gone()),
        }
    }

    /// For tests of what the server does when the store's writer thread
    /// dies: kills it.
    #[cfg(any(test, feature = "fault-injection"))]
    #[doc(hidden)]
    pub fn kill_writer(&self) {
        let die: crate::sled_commit::Work<Inner> =
            Box::new(|_| std::panic::panic_any(crate::sled_commit::Die));
        let _ = self.inner.writer.send(crate::sled_commit::Job {
            inner: Arc::clone(&self.inner),
            work: die,
        });
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the store's writer thread is gone".into())
}

impl crate::sled_commit::Flush for Inner {
    /// Flushes, then raises the event watermark to what was committed
    /// before the flush began: sequence order is commit order, so all of it
    /// is durable.
    ///
    /// The blocking `flush`, not `flush_async`: concurrent `flush_async`
    /// calls can hang in sled 0.34 (sled issues #1241, #1308).
    fn flush_and_publish(&self) -> Result<(), StoreError> {
        let flush = self.durability.begin_flush();
        let committed = self.last_seq.load(Ordering::SeqCst);
        if !self.flush_delay.is_zero() {
            // The writer thread's own time: no async worker is held.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(self.flush_delay);
        }
        let flushed = self.db.flush().map(drop).map_err(backend);
        if flushed.is_ok() {
            self.watermark.raise(committed);
        }
        // After the watermark: a reader let go sees its events too.
        self.durability.end_flush(flush, flushed.is_ok());
        flushed
    }

    fn unflushed(&self) -> bool {
        self.durability.any_marked()
    }
}

impl Inner {
    fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn count_records(&self, key_matches: impl Fn(u32) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.records.iter() {
            let (_, bytes) = item.map_err(backend)?;
            if codec::key_ids(&bytes).into_iter().any(&key_matches) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn lease_state(&self, key: &[u8]) -> Result<Option<LeaseState>, StoreError> {
        Ok(self
            .leases
            .get(key)
            .map_err(backend)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn set_lease(&self, key: &[u8], state: &LeaseState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.leases.insert(key, bytes).map_err(backend)?;
        Ok(())
    }

    fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = record.id.as_str().as_bytes();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let new = codec::encode(record, &keys);
        let summary = Summary::of(record);
        let _fencing = lock(&self.fencing);
        check_fence(&record.id, self.lease_state(key)?.as_ref(), fence)?;
        // Read, check the revision, then swap on the exact bytes read: if the
        // record changed in between, the byte-level swap fails and we look
        // again, so the revision check can never act on a stale read.
        loop {
            let current = self.records.get(key).map_err(backend)?;
            let stored = match &current {
                Some(bytes) => Some(codec::decode(key, bytes, &keys)?),
                None => None,
            };
            crate::check_put(record, stored.as_ref(), expected)?;
            let events = event::describe(stored.as_ref(), record);
            if self.swap_with_events(key, current, Some((&new, &summary)), events)? {
                return Ok(());
            }
        }
    }

    /// Swaps `key`'s record from exactly `old` to `new` (with its summary),
    /// updates the index and appends `events` to the log, in one sled
    /// transaction. The caller holds `fencing`, so events are numbered in
    /// commit order. False when the record is no longer `old`.
    fn swap_with_events(
        &self,
        key: &[u8],
        old: Option<sled::IVec>,
        new: Option<(&[u8], &Summary)>,
        events: Vec<NewEvent>,
    ) -> Result<bool, StoreError> {
        // Marked before it is applied: a reader that sees the change sees
        // the mark, and waits for the flush (`sled_durable.rs`).
        self.durability.mark(key);
        let first = self.last_seq.load(Ordering::SeqCst) + 1;
        let mut encoded = Vec::new();
        if self.log_events {
            for (i, event) in events.into_iter().enumerate() {
                let seq = first + i as u64;
                let bytes = serde_json::to_vec(&Event { seq, event }).map_err(json_error)?;
                encoded.push((seq.to_be_bytes(), bytes));
            }
        }
        let last = first + encoded.len() as u64 - 1;
        let swapped = (&self.records, &self.index, &self.events, &self.event_meta)
            .transaction(|(records, index, events, meta)| {
                if records.get(key)? != old {
                    return Ok(false);
                }
                match new {
                    Some((bytes, _)) => records.insert(key, bytes)?,
                    None => records.remove(key)?,
                };
                sled_index::reindex(index, key, new.map(|(_, s)| s))?;
                for (seq, bytes) in &encoded {
                    events.insert(seq, bytes.as_slice())?;
                }
                if !encoded.is_empty() {
                    meta.insert(LAST_SEQ_KEY, &last.to_be_bytes())?;
                }
                Ok(true)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => backend(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Backend("record transaction aborted".into())
                }
            })?;
        if swapped && !encoded.is_empty() {
            self.last_seq.store(last, Ordering::SeqCst);
        }
        Ok(swapped)
    }

    /// One page of a listing. A provider or status filter walks that
    /// index, and only the records it names are read and opened; with both,
    /// the provider index is walked and each summary's status checked
    /// before anything is opened. An id prefix narrows the walk's range.
    fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        // The smallest id to consider.
        let mut start = query.after.as_ref().map_or_else(Vec::new, |a| {
            let mut k = a.as_str().as_bytes().to_vec();
            k.push(0);
            k
        });
        if let Some(p) = &query.prefix
            && p.as_bytes() > start.as_slice()
        {
            start = p.as_bytes().to_vec();
        }
        let past_prefix = |id: &[u8]| {
            query
                .prefix
                .as_ref()
                .is_some_and(|p| !id.starts_with(p.as_bytes()))
        };
        let walk = match (&query.provider, query.status) {
            (Some(provider), _) => Some(sled_index::provider_prefix(provider)),
            (None, Some(status)) => Some(sled_index::status_prefix(status)),
            (None, None) => None,
        };
        let keys = self.keys();
        let mut out = Vec::new();
        let open = |id: &[u8], bytes: &[u8]| match codec::decode(id, bytes, &keys) {
            Ok(c) => matches(query, &c).then_some(c),
            Err(e) => {
                tracing::error!(error = %e, "skipping unreadable connection record");
                None
            }
        };
        match walk {
            Some(prefix) => {
                let mut from = prefix.clone();
                from.extend_from_slice(&start);
                for item in self.index.range(from..) {
                    if out.len() >= query.limit {
                        break;
                    }
                    let (key, _) = item.map_err(backend)?;
                    let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                        break;
                    };
                    if past_prefix(id) {
                        break;
                    }
                    if let (Some(_), Some(status)) = (&query.provider, query.status) {
                        let summary = self
                            .index
                            .get(sled_index::summary_key(id))
                            .map_err(backend)?
                            .and_then(|b| Summary::from_bytes(id, &b));
                        if summary.is_none_or(|s| s.status != status) {
                            continue;
                        }
                    }
                    let Some(bytes) = self.records.get(id).map_err(backend)? else {
                        continue;
                    };
                    out.extend(open(id, &bytes));
                }
            }
            None => {
                for item in self.records.range(start..) {
                    if out.len() >= query.limit {
                        break;
                    }
                    let (id, bytes) = item.map_err(backend)?;
                    if past_prefix(&id) {
                        break;
                    }
                    out.extend(open(&id, &bytes));
                }
            }
        }
        Ok(out)
    }

    /// The stored bytes of `id` if they cannot be decoded.
    fn unreadable(&self, id: &ConnectionId) -> Result<Option<sled::IVec>, StoreError> {
        let key = id.as_str().as_bytes();
        let Some(bytes) = self.records.get(key).map_err(backend)? else {
            return Ok(None);
        };
        Ok(codec::decode(key, &bytes, &self.keys())
            .is_err()
            .then_some(bytes))
    }
}

/// Compare-and-swaps `key` from `old` to `new` at the byte level.
fn swap(
    tree: &sled::Tree,
    key: &[u8],
    old: Option<sled::IVec>,
    new: Option<Vec<u8>>,
) -> Result<bool, StoreError> {
    Ok(tree
        .compare_and_swap(key, old, new)
        .map_err(backend)?
        .is_ok())
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let id = id.clone();
        let (found, pending) = self
            .blocking(move |inner| {
                let key = id.as_str().as_bytes();
                let found = match inner.records.get(key).map_err(backend)? {
                    Some(bytes) => codec::decode(key, &bytes, &inner.keys()).map(Some),
                    None => Ok(None),
                };
                // After the read, so a change it saw is seen marked.
                Ok((found, inner.durability.pending(key)))
            })
            .await?;
        self.durable(pending).await?;
        found
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        check_advances(record, expected)?;
        // Write-ahead: logged before sled applies anything, so every change
        // sled holds, flushed or not, is in the log too. Only updates: a
        // create replayed after a delete would bring the connection back,
        // whereas an update replayed after a delete (or a re-creation, a
        // new incarnation) is refused.
        let written = expected.and_then(|_| self.log_write(record, expected, fence));
        let record = record.clone();
        // The log's sync and sled's put run side by side: either one on disk
        // keeps the grant through a power cut.
        let (ticket, result) = tokio::join!(
            async {
                match written {
                    Some(written) => self.log_sync(written).await,
                    None => None,
                }
            },
            self.write_timed(
                move |inner| (inner.put(&record, expected, fence), true),
                true
            )
        );
        // Settled once flushed by sled, or refused (a replay would be
        // refused too); after a failure the entry stays for the next open.
        if let Some(ticket) = ticket
            && !matches!(result, Err(StoreError::Backend(_)))
        {
            self.inner.wal.settle(ticket);
        }
        result
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let record = record.clone();
        self.write_then(
            move |inner| {
                let conflict = |found| StoreError::Conflict {
                    id: record.id.clone(),
                    expected: None,
                    found,
                };
                let key = record.id.as_str().as_bytes();
                let keys = inner.keys.read().unwrap_or_else(|p| p.into_inner());
                let _fencing = lock(&inner.fencing);
                let Some(bad) = inner.unreadable(&record.id)? else {
                    return Err(conflict(None));
                };
                let new = codec::encode(&record, &keys);
                if inner.swap_with_events(
                    key,
                    Some(bad),
                    Some((&new, &Summary::of(&record))),
                    event::describe(None, &record),
                )? {
                    Ok(())
                } else {
                    Err(conflict(None))
                }
            },
            |_| true,
        )
        .await
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let id = id.clone();
        let deleted = self
            .write_then(
                move |inner| {
                    let key = id.as_str().as_bytes();
                    let _fencing = lock(&inner.fencing);
                    loop {
                        let Some(current) = inner.records.get(key).map_err(backend)? else {
                            return Ok(false);
                        };
                        let decoded = codec::decode(key, &current, &inner.keys());
                        crate::check_delete(&id, decoded.as_ref().ok(), expected)?;
                        let deleted = event::deleted(
                            id.as_str(),
                            decoded.as_ref().ok(),
                            tokend_core::Clock::system().now(),
                        );
                        if inner.swap_with_events(key, Some(current), None, vec![deleted])? {
                            break;
                        }
                    }
                    // The fence counter outlives the record.
                    if let Some(mut lease) = inner.lease_state(key)? {
                        lease.forget();
                        inner.set_lease(key, &lease)?;
                    }
                    Ok(true)
                },
                |deleted| *deleted,
            )
            .await?;
        Ok(deleted)
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::SealedPage, StoreError> {
        let after = after.map(|a| {
            let mut start = a.as_bytes().to_vec();
            start.push(0);
            start
        });
        let (page, pending) = self
            .blocking(move |inner| {
                let iter = match after {
                    Some(start) => inner.records.range(start..),
                    None => inner.records.iter(),
                };
                let mut records = Vec::new();
                for item in iter.take(limit) {
                    let (key, bytes) = item.map_err(backend)?;
                    records.push((String::from_utf8_lossy(&key).into_owned(), bytes.to_vec()));
                }
                let page = crate::SealedPage {
                    format_version: FORMAT_VERSION,
                    records,
                };
                Ok((page, inner.durability.pending_any()))
            })
            .await?;
        self.durable(pending).await?;
        Ok(page)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let query = query.clone();
        let (page, pending) = self
            .blocking(move |inner| Ok((inner.list(&query), inner.durability.pending_any())))
            .await?;
        self.durable(pending).await?;
        page
    }

    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        let after = after.cloned();
        let (page, pending) = self
            .blocking(move |inner| {
                let prefix = sled_index::summary_key(b"");
                let mut from = prefix.clone();
                if let Some(after) = &after {
                    from.extend_from_slice(after.as_str().as_bytes());
                    from.push(0);
                }
                let mut out = Vec::with_capacity(limit.min(10_000));
                for item in inner.index.range(from..) {
                    if out.len() >= limit {
                        break;
                    }
                    let (key, bytes) = item.map_err(backend)?;
                    let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                        break;
                    };
                    if let Some(summary) = Summary::from_bytes(id, &bytes) {
                        out.push(summary);
                    }
                }
                Ok((out, inner.durability.pending_any()))
            })
            .await?;
        self.durable(pending).await?;
        Ok(page)
    }

    async fn census(&self) -> Result<Census, StoreError> {
        let (census, pending) = self
            .blocking(|inner| {
                Ok((
                    sled_index::census(&inner.index),
                    inner.durability.pending_any(),
                ))
            })
            .await?;
        self.durable(pending).await?;
        census
    }

    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        self.blocking(move |inner| {
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

    fn event_watermark(&self) -> watch::Receiver<u64> {
        self.inner.watermark.subscribe()
    }

    fn broken(&self) -> watch::Receiver<Option<String>> {
        self.inner.durability.broken()
    }

    fn sealing_keys(&self) -> Option<Arc<Keyring>> {
        Some(self.inner.keys())
    }

    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        self.blocking(|inner| {
            let recorded = crate::sled_keys::load(&inner.key_checks)?;
            Ok(crate::key_records::unheld(&recorded, &inner.keys()))
        })
        .await
    }

    async fn event_bounds(&self) -> Result<LogBounds, StoreError> {
        self.blocking(|inner| {
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

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            // One writer-thread job per chunk, so other changes are not
            // held up by a long prune.
            let (in_chunk, done) = self
                .write_then(
                    move |inner| {
                        let last = inner.last_seq.load(Ordering::SeqCst);
                        let mut batch = sled::Batch::default();
                        let mut in_chunk = 0u64;
                        let mut done = true;
                        for item in inner.events.iter().take(10_000) {
                            let (key, bytes) = item.map_err(backend)?;
                            let seq =
                                <[u8; 8]>::try_from(key.as_ref()).map_or(0, u64::from_be_bytes);
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

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        let name = name.to_owned();
        self.blocking(
            move |inner| match inner.cursors.get(name.as_bytes()).map_err(backend)? {
                Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(json_error),
                None => Ok(None),
            },
        )
        .await
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        let name = name.to_owned();
        let bytes = serde_json::to_vec(cursor).map_err(json_error)?;
        // Not flushed: the next write's flush (or sled's own, within a
        // second) carries it; a lost save means redelivery, never a skip.
        self.write_then(
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

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let id = id.clone();
        let holder = holder.to_owned();
        let granted = self
            .write_then(
                move |inner| {
                    let key = id.as_str().as_bytes();
                    let _fencing = lock(&inner.fencing);
                    let last = inner.lease_state(key)?;
                    let Some(next) = LeaseState::grant(last.as_ref(), &holder, ttl, now) else {
                        return Ok(None);
                    };
                    inner.set_lease(key, &next)?;
                    Ok(Some(next.lease(&id)))
                },
                // Flushed: the lease is the refresh's durable intent, found
                // again after a crash between the provider call and the commit.
                |granted| granted.is_some(),
            )
            .await?;
        Ok(granted)
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        // Not flushed: the next flush (any write's) carries it. Lost in a
        // crash, it only makes the next refresh look in doubt, which costs
        // nothing unless that refresh is refused.
        let lease = lease.clone();
        self.write_then(
            move |inner| {
                let key = lease.id.as_str().as_bytes();
                let _fencing = lock(&inner.fencing);
                if let Some(mut state) = inner.lease_state(key)?
                    && state.release(lease.fence, in_doubt)
                {
                    inner.set_lease(key, &state)?;
                }
                Ok(())
            },
            |_| false,
        )
        .await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // Not flushed: a renewal lost in a crash only makes the dead
        // holder's lease run out sooner.
        let lease = lease.clone();
        self.write_then(
            move |inner| {
                let key = lease.id.as_str().as_bytes();
                let _fencing = lock(&inner.fencing);
                let Some(mut state) = inner.lease_state(key)? else {
                    return Ok(false);
                };
                if !state.renew(lease.fence, ttl, now) {
                    return Ok(false);
                }
                inner.set_lease(key, &state)?;
                Ok(true)
            },
            |_| false,
        )
        .await
    }

    /// One process owns a sled directory, so start-up's release covers its
    /// earlier runs; this scan is for completeness (and the conformance
    /// suite), not a hot path.
    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        self.write_then(
            move |inner| {
                let _fencing = lock(&inner.fencing);
                let mut ids = Vec::new();
                for item in inner.leases.iter() {
                    if ids.len() >= limit {
                        break;
                    }
                    let (key, bytes) = item.map_err(backend)?;
                    let Ok(mut state) = serde_json::from_slice::<LeaseState>(&bytes) else {
                        continue;
                    };
                    if state.expire(now) {
                        inner.set_lease(&key, &state)?;
                        if let Ok(id) = ConnectionId::new(String::from_utf8_lossy(&key)) {
                            ids.push(id);
                        }
                    }
                }
                Ok(ids)
            },
            |ids| !ids.is_empty(),
        )
        .await
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let prefix = node_prefix.to_owned();
        let ids = self
            .write_then(
                move |inner| {
                    let _fencing = lock(&inner.fencing);
                    let mut ids = Vec::new();
                    for item in inner.leases.iter() {
                        let (key, bytes) = item.map_err(backend)?;
                        let Ok(mut state) = serde_json::from_slice::<LeaseState>(&bytes) else {
                            continue;
                        };
                        if state.abandon(&prefix) {
                            inner.set_lease(&key, &state)?;
                            if let Ok(id) = ConnectionId::new(String::from_utf8_lossy(&key)) {
                                ids.push(id);
                            }
                        }
                    }
                    Ok(ids)
                },
                |_| true,
            )
            .await?;
        Ok(ids)
    }
}

#[cfg(test)]
#[path = "sled_store_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "sled_keys_tests.rs"]
mod keys_tests;

#[cfg(test)]
#[path = "sled_durable_tests.rs"]
mod durable_tests;

#[cfg(test)]
#[path = "sled_wal_tests.rs"]
mod wal_tests;

#[path = "sled_store_wal.rs"]
mod wal;
