//! How a sled store writes: the writer thread's jobs, group-commit flushes,
//! durability waits, and the record swaps with their events and index.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use sled::Transactional;
use tokend_core::{
    Connection, ConnectionId, Event, NewEvent, event,
    steps::{self, Step},
};

use crate::{
    ListQuery, StoreError, codec,
    leases::{LeaseState, check_fence},
    matches,
    sealing::Keyring,
    sled_durable::Waited,
    sled_index,
    summary::Summary,
};

use super::*;

impl SledStore {
    /// Makes every write so far durable (a flush by the writer thread).
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| (Ok(()), true)).await
    }

    /// Runs a change on the writer thread, flushed before this returns when
    /// its result satisfies `flush_if`.
    pub(super) async fn write_then<T: Send + 'static>(
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
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> (Result<T, StoreError>, bool) + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_timed(f, false).await
    }

    /// [`Self::write`], with the steps of a durable change timed when
    /// `timed` (a grant's put: `tokend_core::steps`).
    pub(super) async fn write_timed<T: Send + 'static>(
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
    pub(super) async fn durable(&self, pending: Option<u64>) -> Result<(), StoreError> {
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

pub(super) fn writer_gone() -> StoreError {
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
    pub(super) fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn count_records(
        &self,
        key_matches: impl Fn(u32) -> bool,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.records.iter() {
            let (_, bytes) = item.map_err(backend)?;
            if codec::key_ids(&bytes).into_iter().any(&key_matches) {
                n += 1;
            }
        }
        Ok(n)
    }

    pub(super) fn lease_state(&self, key: &[u8]) -> Result<Option<LeaseState>, StoreError> {
        Ok(self
            .leases
            .get(key)
            .map_err(backend)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    pub(super) fn set_lease(&self, key: &[u8], state: &LeaseState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.leases.insert(key, bytes).map_err(backend)?;
        Ok(())
    }

    pub(super) fn put(
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
    pub(super) fn swap_with_events(
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
    pub(super) fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
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
    pub(super) fn unreadable(&self, id: &ConnectionId) -> Result<Option<sled::IVec>, StoreError> {
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
pub(super) fn swap(
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
