//! The `Store` trait on sled: reads, record changes, the event log and
//! cursors, and refresh leases, each on the writer thread or a blocking one.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, Timestamp, event};
use tokio::sync::watch;

use crate::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, Store, StoreError, Summary,
    check_advances, codec, crypto::Keyring, leases::LeaseState, sled_index,
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
