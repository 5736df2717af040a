//! The sled store's side of its write-ahead log (`sled_wal.rs`): an
//! update logged in its caller's poll before sled takes it, synced beside
//! sled's put, and the log replayed at open.

use std::{sync::Arc, time::Instant};

use tokend_core::{
    Connection,
    steps::{self, Step},
};

use super::SledStore;
use crate::{
    StoreError, check_advances, codec,
    sled_wal::{Entry, Leftover, Ticket, Written},
};

impl SledStore {
    /// Puts again what the write-ahead log holds from an earlier run, each
    /// as the put it was (revision, fence, events), then flushes and drops
    /// the old segments. A put that had landed, or had lost to another
    /// write, is refused again and skipped.
    pub(super) fn replay(&self, leftover: Leftover) -> Result<(), StoreError> {
        if leftover.entries.is_empty() {
            return leftover.done().map_err(wal_error);
        }
        let keys = self.inner.keys();
        let (mut replayed, mut skipped) = (0, 0);
        for Entry {
            key,
            expected,
            fence,
            record,
        } in &leftover.entries
        {
            let put = codec::decode(key, record, &keys).and_then(|record| {
                check_advances(&record, *expected)?;
                self.inner.put(&record, *expected, *fence)
            });
            match put {
                Ok(()) => replayed += 1,
                Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
                Err(StoreError::Corrupt { reason, .. }) => {
                    skipped += 1;
                    tracing::error!(connection_id = %String::from_utf8_lossy(key), reason, "a write-ahead record does not open; skipped");
                }
                Err(_) => skipped += 1,
            }
        }
        if replayed > 0 {
            crate::sled_commit::Flush::flush_and_publish(&*self.inner)?;
        }
        leftover.done().map_err(wal_error)?;
        tracing::info!(
            replayed,
            skipped,
            "write-ahead log replayed: puts a crash cut off before their flush"
        );
        Ok(())
    }

    /// Appends an update to the write-ahead log, at once, in the caller's
    /// poll (the one that read the provider's answer, for a refresh: no
    /// wait for a thread in between): the grant survives a crash of the
    /// process from then on, rather than only once sled flushes it (which
    /// waits for the writer's batch, then for its own). `None` if the log
    /// failed: the put is then as safe as sled makes it, as without a log.
    pub(super) fn log_write(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Option<Written> {
        let started = Instant::now();
        let entry = Entry {
            key: record.id.as_str().as_bytes().to_vec(),
            expected,
            fence,
            record: codec::encode(record, &self.inner.keys()),
        };
        match self.inner.wal.write(&entry) {
            Ok(written) => {
                steps::record(Step::WalWrite, started.elapsed());
                Some(written.timed_from(started))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the write-ahead log failed: this put is safe only once sled flushes it");
                None
            }
        }
    }

    /// Makes a logged update durable (fdatasync, on a blocking thread): it
    /// survives a power cut from then on.
    pub(super) async fn log_sync(&self, written: Written) -> Option<Ticket> {
        let started = written.started();
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || written.sync(&inner.wal)).await {
            Ok(Ok(ticket)) => {
                steps::record(Step::WalSync, started.elapsed());
                Some(ticket)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "syncing the write-ahead log failed: this put is safe from a power cut only once sled flushes it");
                None
            }
            Err(_) => None,
        }
    }

    /// Logs an update and syncs it, without putting it: what a crash
    /// between the two leaves.
    #[cfg(test)]
    pub(super) async fn log_ahead(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Option<Ticket> {
        let written = self.log_write(record, expected, fence)?;
        self.log_sync(written).await
    }
}

fn wal_error(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("write-ahead log: {e}"))
}
