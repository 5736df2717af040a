//! The `Store` trait on sled: reads, record changes, the event log and
//! cursors, and refresh leases, each on the writer thread or a blocking one;
//! the event log's calls are in `events.rs`, the leases' in `leases.rs`.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, Timestamp, event};
use tokio::sync::watch;

use crate::{
    Expected, Lease, ListQuery, Store, StoreError, check_advances, codec,
    event_log::{LogBounds, SavedCursor},
    sealing::Keyring,
    sled_index,
    summary::{Census, Summary},
};

use super::*;

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
        backup::export_sealed(self, after, limit).await
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
        events::read_events(self, after, up_to, limit).await
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
        events::event_bounds(self).await
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        events::prune_events(self, older_than, keep).await
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        events::load_cursor(self, name).await
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        events::save_cursor(self, name, cursor).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        leases::try_acquire_refresh_lease(self, id, holder, ttl, now).await
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        leases::release_refresh_lease(self, lease, in_doubt).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        leases::renew_refresh_lease(self, lease, ttl, now).await
    }

    /// One process owns a sled directory, so start-up's release covers its
    /// earlier runs; this scan is for completeness (and the conformance
    /// suite), not a hot path.
    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        leases::release_expired_leases(self, now, limit).await
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        leases::release_abandoned_leases(self, node_prefix).await
    }
}
