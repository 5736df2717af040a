//! The `Store` calls on PostgreSQL, each without its time limit
//! (`timed.rs` adds it); the event log's are in `events.rs`.

use std::time::Duration;

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, ProviderName, Status, Timestamp, event};
use tokend_store::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, SealedPage, Store, StoreError,
    Summary,
    backend::{check_advances, check_delete, check_put, decode, encode, summary},
};
use tokio::sync::watch;

use crate::{PostgresStore, timed::Untimed};

use super::*;

/// The calls themselves; `timed.rs` puts each within its time limit, and
/// `Untimed::client` hands out connections that are closed if it passes.
#[async_trait]
impl Store for Untimed {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prep(
                    &client,
                    "SELECT sealed FROM tokend_connections WHERE id = $1",
                )
                .await?,
                &[&id.as_str()],
            )
            .await
            .map_err(db)?;
        match row {
            Some(row) => decode(id.as_str().as_bytes(), row.get(0), &self.keys()).map(Some),
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        record: &Connection,
        expected: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError> {
        check_advances(record, expected)?;
        let keys = self.keys();
        let sealed = encode(record, &keys);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // The lease row first, shared: a grant (which updates it) waits for
        // this write to commit, or this write sees the grant's fence.
        if let Some(fence) = fence {
            let newest = tx
                .query_opt(
                    &prep_tx(
                        &tx,
                        "SELECT fence FROM tokend_leases WHERE id = $1 FOR SHARE",
                    )
                    .await?,
                    &[&record.id.as_str()],
                )
                .await
                .map_err(db)?
                .map(|row| to_u64(row.get(0)));
            if let Some(current) = newest.filter(|current| *current > fence) {
                return Err(StoreError::Fenced {
                    id: record.id.clone(),
                    fence,
                    current,
                });
            }
        }
        let current = PostgresStore::lock_record(&tx, &record.id).await?;
        let stored = current
            .as_deref()
            .map(|bytes| decode(record.id.as_str().as_bytes(), bytes, &keys))
            .transpose()?;
        check_put(record, stored.as_ref(), expected)?;
        let events = event::describe(stored.as_ref(), record);
        let over = match &stored {
            Some(s) => Over::Record {
                incarnation: s.incarnation,
                revision: s.revision,
            },
            None => Over::Nothing,
        };
        if !PostgresStore::write_record(&tx, record, &sealed, &over, fence).await? {
            drop(tx);
            return Err(StoreError::Conflict {
                id: record.id.clone(),
                expected,
                found: PostgresStore::found(&client, record).await?,
            });
        }
        let last = PostgresStore::append(&tx, events).await?;
        self.commit(tx, last).await
    }

    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError> {
        let keys = self.keys();
        let sealed = encode(record, &keys);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let conflict = || StoreError::Conflict {
            id: record.id.clone(),
            expected: None,
            found: None,
        };
        let Some(bytes) = PostgresStore::lock_record(&tx, &record.id).await? else {
            return Err(conflict());
        };
        if decode(record.id.as_str().as_bytes(), &bytes, &keys).is_ok() {
            return Err(conflict());
        }
        if !PostgresStore::write_record(&tx, record, &sealed, &Over::Bytes(&bytes), None).await? {
            return Err(conflict());
        }
        let last = PostgresStore::append(&tx, event::describe(None, record)).await?;
        self.commit(tx, last).await
    }

    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError> {
        let keys = self.keys();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Lease, record, log: the order every change locks in.
        tx.execute(
            &prep_tx(&tx, "SELECT 1 FROM tokend_leases WHERE id = $1 FOR UPDATE").await?,
            &[&id.as_str()],
        )
        .await
        .map_err(db)?;
        let Some(bytes) = PostgresStore::lock_record(&tx, id).await? else {
            return Ok(false);
        };
        let decoded = decode(id.as_str().as_bytes(), &bytes, &keys);
        check_delete(id, decoded.as_ref().ok(), expected)?;
        tx.execute(
            &prep_tx(&tx, "DELETE FROM tokend_connections WHERE id = $1").await?,
            &[&id.as_str()],
        )
        .await
        .map_err(db)?;
        let gone = event::deleted(
            id.as_str(),
            decoded.as_ref().ok(),
            tokend_core::Clock::system().now(),
        );
        let last = PostgresStore::append(&tx, vec![gone]).await?;
        // The fence counter outlives the record; nothing stays live or in
        // doubt.
        tx.execute(
            &prep_tx(
                &tx,
                "UPDATE tokend_leases SET released = true, in_doubt = false WHERE id = $1",
            )
            .await?,
            &[&id.as_str()],
        )
        .await
        .map_err(db)?;
        self.commit(tx, last).await?;
        Ok(true)
    }

    /// An id prefix is a range of the primary key (`id >= prefix AND id <
    /// end`, ids in `C` collation), so a narrow listing reads only its own
    /// rows however many others there are.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        let client = self.client().await?;
        let keys = self.keys();
        let provider = query.provider.as_ref().map(|p| p.as_str().to_owned());
        let status = query.status.map(Status::as_str);
        let prefix = query.prefix.clone().unwrap_or_default();
        let end = prefix_end(&prefix);
        // Every id is longer than "", so `id > ''` holds for all.
        let mut after = query
            .after
            .as_ref()
            .map_or_else(String::new, |a| a.as_str().to_owned());
        let statement = prep(&client, if end.is_some() { LIST_RANGE } else { LIST_FROM }).await?;
        let mut out = Vec::new();
        while out.len() < query.limit {
            let want = PAGE.min(i64::try_from(query.limit - out.len()).unwrap_or(PAGE));
            let rows = match &end {
                Some(end) => {
                    client
                        .query(
                            &statement,
                            &[&after, &provider, &status, &want, &prefix, end],
                        )
                        .await
                }
                None => {
                    client
                        .query(&statement, &[&after, &provider, &status, &want, &prefix])
                        .await
                }
            }
            .map_err(db)?;
            let full = rows.len() as i64 == want;
            for row in &rows {
                let id: &str = row.get(0);
                after = id.to_owned();
                match decode(id.as_bytes(), row.get(1), &keys) {
                    Ok(c) => out.push(c),
                    Err(e) => tracing::error!(error = %e, "skipping unreadable connection record"),
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Reads each record's summary fields without opening a sealed one.
    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|a| a.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &prep(
                    &client,
                    "SELECT id, sealed FROM tokend_connections
                     WHERE ($1::text IS NULL OR id > $1)
                     ORDER BY id LIMIT $2",
                )
                .await?,
                &[&after, &limit],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: &str = row.get(0);
            match summary(id.as_bytes(), row.get(1)) {
                Ok(s) => out.push(s),
                Err(e) => tracing::error!(error = %e, "skipping unreadable connection record"),
            }
        }
        Ok(out)
    }

    async fn census(&self) -> Result<Census, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prep(
                    &client,
                    "SELECT provider, status, count(*) FROM tokend_connections
                     GROUP BY provider, status",
                )
                .await?,
                &[],
            )
            .await
            .map_err(db)?;
        let mut census = Census::default();
        for row in &rows {
            let provider = ProviderName::new(row.get::<_, &str>(0));
            let status = Status::parse(row.get::<_, &str>(1));
            let n: i64 = row.get(2);
            if let (Ok(provider), Some(status)) = (provider, status) {
                census.0.insert((provider, status), n.max(0) as u64);
            }
        }
        Ok(census)
    }

    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let now_ms = now.unix_millis();
        let expires = now.saturating_add(ttl).unix_millis();
        let client = self.client().await?;
        // One statement: a live lease (anyone's) refuses; otherwise the
        // fence grows by one, and a lease that ran out unreleased leaves
        // the next holder in doubt.
        let row = client.query_opt(
                &prep(&client, "INSERT INTO tokend_leases AS l (id, holder, fence, expires_at_ms, released, in_doubt)
                 VALUES ($1, $2, 1, $3, false, false)
                 ON CONFLICT (id) DO UPDATE
                   SET holder = EXCLUDED.holder,
                       fence = l.fence + 1,
                       expires_at_ms = EXCLUDED.expires_at_ms,
                       released = false,
                       in_doubt = l.in_doubt OR NOT l.released
                   WHERE l.released OR l.expires_at_ms <= $4
                 RETURNING fence, in_doubt").await?,
                &[&id.as_str(), &holder, &expires, &now_ms],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|row| Lease {
            id: id.clone(),
            holder: holder.to_owned(),
            fence: to_u64(row.get(0)),
            expires_at: Timestamp::from_unix_millis(expires),
            in_doubt: row.get(1),
        }))
    }

    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError> {
        let fence = to_i64("fence", lease.fence)?;
        let client = self.client().await?;
        client
            .execute(
                &prep(
                    &client,
                    "UPDATE tokend_leases SET released = true, in_doubt = $3
                 WHERE id = $1 AND fence = $2",
                )
                .await?,
                &[&lease.id.as_str(), &fence, &in_doubt],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let fence = to_i64("fence", lease.fence)?;
        let expires = now.saturating_add(ttl).unix_millis();
        let client = self.client().await?;
        let renewed = client
            .execute(
                &prep(
                    &client,
                    "UPDATE tokend_leases SET expires_at_ms = GREATEST(expires_at_ms, $3)
                 WHERE id = $1 AND fence = $2 AND NOT released",
                )
                .await?,
                &[&lease.id.as_str(), &fence, &expires],
            )
            .await
            .map_err(db)?;
        Ok(renewed == 1)
    }

    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let client = self.client().await?;
        // Rows another replica's sweep holds are skipped: each expired
        // lease is released, and returned, once fleet-wide. The partial
        // index (migration 6) keeps this to the unreleased leases.
        let rows = client
            .query(
                &prep(
                    &client,
                    "UPDATE tokend_leases SET released = true, in_doubt = true
                 WHERE NOT released AND expires_at_ms <= $1 AND id IN
                   (SELECT id FROM tokend_leases WHERE NOT released AND expires_at_ms <= $1
                    ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id",
                )
                .await?,
                &[
                    &now.unix_millis(),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        let mut ids: Vec<ConnectionId> = rows
            .iter()
            .filter_map(|row| ConnectionId::new(row.get::<_, &str>(0)).ok())
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
    }

    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prep(
                    &client,
                    "UPDATE tokend_leases SET released = true, in_doubt = true
                 WHERE NOT released AND starts_with(holder, $1)
                 RETURNING id",
                )
                .await?,
                &[&node_prefix],
            )
            .await
            .map_err(db)?;
        let mut ids: Vec<ConnectionId> = rows
            .iter()
            .filter_map(|row| ConnectionId::new(row.get::<_, &str>(0)).ok())
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
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

    fn shared(&self) -> bool {
        true
    }

    fn sealing_keys(&self) -> Option<std::sync::Arc<tokend_store::crypto::Keyring>> {
        Some(self.keys())
    }

    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        let client = self.client().await?;
        let recorded = crate::keys::load(&*client).await?;
        Ok(tokend_store::key_records::unheld(&recorded, &self.keys()))
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

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        events::claim_reader(self, name, holder, ttl, now).await
    }

    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prep(
                    &client,
                    "SELECT id, sealed FROM tokend_connections
                 WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
                )
                .await?,
                &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(db)?;
        Ok(SealedPage {
            // The records are encoded exactly as the sled store's.
            format_version: tokend_store::FORMAT_VERSION,
            records: rows
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<u8>>(1)))
                .collect(),
        })
    }
}
