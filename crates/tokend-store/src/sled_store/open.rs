//! Opening a sled store: the directory lock, the trees, the writer thread
//! and the write-ahead log's replay, and the tuning benchmarks use.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
};

use crate::{
    StoreError, event_log::Watermark, sealing::Keyring, sled_durable::Durability,
    sled_wal::WriteAhead,
};

use super::*;

/// How long `open` waits for sled's directory lock before reporting the data
/// dir in use. A store dropped in this process lets go of its lock when sled's
/// IO threads finish their last write, a moment after the drop returns; a
/// process being restarted lets go when it exits.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled in `dir`, waiting up to `lock_wait` for its directory lock.
pub(super) fn open_db(dir: &Path, lock_wait: std::time::Duration) -> Result<sled::Db, StoreError> {
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

    pub(super) fn open_with(
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

    pub(super) fn open_tuned(
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
                let id = crate::event_log::new_log_id();
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
    pub(super) async fn blocking<T: Send + 'static>(
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
}
