//! `Store` on PostgreSQL. Each change is one transaction at READ COMMITTED
//! that locks rows in one order (lease, then record, then the log's row), so
//! concurrent changes from any replica serialise per connection without
//! deadlocks, and event numbering serialises fleet-wide.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Client, Transaction};
use tokend_core::{
    Connection, ConnectionId, Event, NewEvent, ProviderName, Status, Timestamp, event,
};
use tokend_store::{
    Census, Expected, Lease, ListQuery, LogBounds, SavedCursor, SealedPage, Store, StoreError,
    Summary,
    backend::{check_advances, check_delete, check_put, decode, encode, summary},
};
use tokio::sync::watch;
use tokio_postgres::Statement;

use crate::{PgError, PostgresStore, listen::CHANNEL, timed::Untimed};

/// What a record write expects to replace.
enum Over<'a> {
    /// A readable record at this incarnation and revision.
    Record { incarnation: u64, revision: u64 },
    /// These exact (undecodable) bytes.
    Bytes(&'a [u8]),
    /// No record.
    Nothing,
}

/// Rows read per query when listing or pruning.
const PAGE: i64 = 1000;

fn db(e: tokio_postgres::Error) -> StoreError {
    PgError::from(e).into()
}

/// One page of a listing within an id range: `$1` the last id already
/// listed ("" for none), `$5` the id prefix ("" for none) and `$6` the
/// first id past it. Both bounds are index conditions on the primary key.
pub(crate) const LIST_RANGE: &str = "SELECT id, sealed FROM tokend_connections
     WHERE id > $1 AND id >= $5 AND id < $6
       AND ($2::text IS NULL OR provider = $2)
       AND ($3::text IS NULL OR status = $3)
       AND starts_with(id, $5)
     ORDER BY id LIMIT $4";

/// [`LIST_RANGE`] for a prefix with no upper bound (none, or one whose
/// bytes cannot be incremented).
const LIST_FROM: &str = "SELECT id, sealed FROM tokend_connections
     WHERE id > $1 AND id >= $5
       AND ($2::text IS NULL OR provider = $2)
       AND ($3::text IS NULL OR status = $3)
       AND starts_with(id, $5)
     ORDER BY id LIMIT $4";

/// The smallest string above every string starting with `prefix`, in byte
/// order (COLLATE "C"): its last ASCII byte below 0x7f incremented, what
/// follows dropped. `None` when there is none (an empty prefix, say): the
/// range is then open above.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            // Only whole multi-byte characters were dropped.
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// The statement for `sql`, prepared once per pooled connection: every
/// later use saves the round trip of preparing it again.
async fn prep(client: &Client, sql: &str) -> Result<Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(db)
}

/// [`prep`] inside a transaction.
async fn prep_tx(tx: &Transaction<'_>, sql: &str) -> Result<Statement, StoreError> {
    tx.prepare_cached(sql).await.map_err(db)
}

fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("event encoding: {e}"))
}

impl PostgresStore {
    /// Appends `events` in `tx`, numbered after the log's last sequence
    /// number under its row lock, and notifies every replica at commit.
    /// Returns the last sequence number, if any event was appended.
    ///
    /// One statement, so the lock is held for it and the commit only: every
    /// writer that appends events waits for this one to commit.
    async fn append(
        tx: &Transaction<'_>,
        events: Vec<NewEvent>,
    ) -> Result<Option<u64>, StoreError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut ats = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        for event in &events {
            ats.push(event.at.unix_millis());
            // The sequence number is the row's, not the body's.
            bodies.push(serde_json::to_string(event).map_err(json_error)?);
        }
        let row = tx
            .query_one(
                &prep_tx(
                    tx,
                    "WITH numbered AS (
                         UPDATE tokend_log SET last_seq = last_seq + cardinality($1::bigint[])
                         RETURNING last_seq
                     ), appended AS (
                         INSERT INTO tokend_events (seq, at_ms, body)
                         SELECT n.last_seq - cardinality($1::bigint[]) + e.ord, e.at_ms, e.body
                         FROM numbered n,
                              UNNEST($1::bigint[], $2::text[]) WITH ORDINALITY AS e(at_ms, body, ord)
                     )
                     SELECT last_seq, pg_notify($3, last_seq::text)::text FROM numbered",
                )
                .await?,
                &[&ats, &bodies, &CHANNEL],
            )
            .await
            .map_err(db)?;
        Ok(Some(to_u64(row.get(0))))
    }

    /// Commits, then publishes the events' end to this replica's readers
    /// (a commit is durable: `synchronous_commit` is PostgreSQL's default).
    async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        last: Option<u64>,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(db)?;
        if let Some(last) = last {
            self.inner.watermark.raise(last);
        }
        Ok(())
    }

    /// The stored record of `id`, locked until the transaction ends, as its
    /// raw bytes.
    async fn lock_record(
        tx: &Transaction<'_>,
        id: &ConnectionId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(tx
            .query_opt(
                &prep_tx(
                    tx,
                    "SELECT sealed FROM tokend_connections WHERE id = $1 FOR UPDATE",
                )
                .await?,
                &[&id.as_str()],
            )
            .await
            .map_err(db)?
            .map(|row| row.get(0)))
    }

    /// Writes `record` over the row locked by [`Self::lock_record`], or
    /// inserts it. The statement itself is conditional too (on what was
    /// read, and on no newer lease than `fence`), so a logic slip above can
    /// never turn into a blind overwrite. False when nothing matched (an
    /// insert raced by another replica's).
    async fn write_record(
        tx: &Transaction<'_>,
        record: &Connection,
        sealed: &[u8],
        over: &Over<'_>,
        fence: Option<u64>,
    ) -> Result<bool, StoreError> {
        let id = record.id.as_str();
        let provider = record.provider.as_str();
        let status = record.status.as_str();
        // Incarnations are random u64s: kept as the same 64 bits.
        let incarnation = record.incarnation as i64;
        let revision = to_i64("revision", record.revision)?;
        let fence = fence.map(|f| to_i64("fence", f)).transpose()?;
        let rows = match over {
            Over::Record {
                incarnation: was_incarnation,
                revision: was_revision,
            } => {
                let was_incarnation = *was_incarnation as i64;
                let was_revision = to_i64("revision", *was_revision)?;
                tx.execute(
                    &prep_tx(
                        tx,
                        "UPDATE tokend_connections
                         SET provider = $2, status = $3, incarnation = $4, revision = $5, sealed = $6
                         WHERE id = $1 AND incarnation = $7 AND revision = $8
                           AND ($9::bigint IS NULL OR NOT EXISTS
                                (SELECT 1 FROM tokend_leases l WHERE l.id = $1 AND l.fence > $9))",
                    )
                    .await?,
                    &[
                        &id,
                        &provider,
                        &status,
                        &incarnation,
                        &revision,
                        &sealed,
                        &was_incarnation,
                        &was_revision,
                        &fence,
                    ],
                )
                .await
            }
            Over::Bytes(old) => {
                tx.execute(
                    &prep_tx(
                        tx,
                        "UPDATE tokend_connections
                         SET provider = $2, status = $3, incarnation = $4, revision = $5, sealed = $6
                         WHERE id = $1 AND sealed = $7",
                    )
                    .await?,
                    &[&id, &provider, &status, &incarnation, &revision, &sealed, old],
                )
                .await
            }
            Over::Nothing => {
                tx.execute(
                    &prep_tx(
                        tx,
                        "INSERT INTO tokend_connections (id, provider, status, incarnation, revision, sealed)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .await?,
                    &[&id, &provider, &status, &incarnation, &revision, &sealed],
                )
                .await
            }
        }
        .map_err(db)?;
        Ok(rows == 1)
    }

    /// The revision stored for `record`'s connection and incarnation now,
    /// for a conflict's report.
    async fn found(client: &Client, record: &Connection) -> Result<Option<u64>, StoreError> {
        Ok(client
            .query_opt(
                &prep(
                    client,
                    "SELECT incarnation, revision FROM tokend_connections WHERE id = $1",
                )
                .await?,
                &[&record.id.as_str()],
            )
            .await
            .map_err(db)?
            .filter(|row| row.get::<_, i64>(0) as u64 == record.incarnation)
            .map(|row| to_u64(row.get(1))))
    }
}

/// Writes `record`, stored as `sealed`, whatever is there (an import).
pub(crate) async fn upsert_sealed(
    tx: &Transaction<'_>,
    record: &Connection,
    sealed: &[u8],
) -> Result<(), StoreError> {
    let incarnation = record.incarnation as i64;
    let revision = to_i64("revision", record.revision)?;
    tx.execute(
        &prep_tx(tx, "INSERT INTO tokend_connections (id, provider, status, incarnation, revision, sealed)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET provider = EXCLUDED.provider, status = EXCLUDED.status,
           incarnation = EXCLUDED.incarnation, revision = EXCLUDED.revision, sealed = EXCLUDED.sealed").await?,
        &[
            &record.id.as_str(),
            &record.provider.as_str(),
            &record.status.as_str(),
            &incarnation,
            &revision,
            &sealed,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

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
        if after >= up_to || limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client.query(
                &prep(&client, "SELECT seq, body FROM tokend_events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3").await?,
                &[
                    &to_i64("sequence", after)?,
                    &to_i64("sequence", up_to)?,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let event: NewEvent =
                    serde_json::from_str(row.get(1)).map_err(|e| StoreError::Corrupt {
                        id: "event log".into(),
                        reason: e.to_string(),
                    })?;
                Ok(Event {
                    seq: to_u64(row.get(0)),
                    event,
                })
            })
            .collect()
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
        let client = self.client().await?;
        let row = client
            .query_one(
                &prep(
                    &client,
                    "SELECT last_seq, (SELECT min(seq) FROM tokend_events) FROM tokend_log",
                )
                .await?,
                &[],
            )
            .await
            .map_err(db)?;
        let last = to_u64(row.get(0));
        self.inner.watermark.raise(last);
        let last = self.inner.watermark.get();
        let oldest = row
            .get::<_, Option<i64>>(1)
            .map_or(last + 1, |o| to_u64(o).min(last + 1));
        Ok(LogBounds {
            log_id: self.inner.log_id,
            oldest,
            last,
        })
    }

    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // A prefix only: everything up to the newest of "beyond the count"
        // and "before the first event young enough to keep".
        let row = client
            .query_one(
                &prep(
                    &client,
                    "SELECT last_seq,
                        (SELECT min(seq) FROM tokend_events WHERE at_ms >= $1)
                 FROM tokend_log",
                )
                .await?,
                &[&older_than.unix_millis()],
            )
            .await
            .map_err(db)?;
        let last = to_u64(row.get(0));
        let by_count = last.saturating_sub(keep);
        let by_age = row
            .get::<_, Option<i64>>(1)
            .map_or(last, |first_young| to_u64(first_young).saturating_sub(1));
        let up_to = to_i64("sequence", by_count.max(by_age))?;
        let mut removed = 0;
        loop {
            // In chunks, so no statement holds many row locks for long.
            let n = client
                .execute(
                    &prep(
                        &client,
                        "DELETE FROM tokend_events WHERE seq IN
                       (SELECT seq FROM tokend_events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
                    )
                    .await?,
                    &[&up_to, &(PAGE * 10)],
                )
                .await
                .map_err(db)?;
            removed += n;
            if n < (PAGE * 10) as u64 {
                return Ok(removed);
            }
        }
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prep(&client, "SELECT body FROM tokend_cursors WHERE name = $1").await?,
                &[&name],
            )
            .await
            .map_err(db)?;
        row.map(|row| serde_json::from_str(row.get(0)).map_err(json_error))
            .transpose()
    }

    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError> {
        let body = serde_json::to_string(cursor).map_err(json_error)?;
        let fence = to_i64("fence", cursor.fence)?;
        let client = self.client().await?;
        // A save under an older claim than the stored one is a paused
        // replica's: ignored.
        client
            .execute(
                &prep(
                    &client,
                    "INSERT INTO tokend_cursors AS c (name, body, fence) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, fence = EXCLUDED.fence
                 WHERE c.fence <= EXCLUDED.fence",
                )
                .await?,
                &[&name, &body, &fence],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let now_ms = now.unix_millis();
        let expires = now.saturating_add(ttl).unix_millis();
        let client = self.client().await?;
        // One statement: renew our own claim, take a free or expired one
        // (with a new fence), or get nothing while another's is live.
        let row = client.query_opt(
                &prep(&client, "INSERT INTO tokend_reader_claims AS r (name, holder, fence, expires_at_ms)
                 VALUES ($1, $2, 1, $3)
                 ON CONFLICT (name) DO UPDATE
                   SET holder = EXCLUDED.holder,
                       fence = CASE WHEN r.holder = EXCLUDED.holder THEN r.fence ELSE r.fence + 1 END,
                       expires_at_ms = EXCLUDED.expires_at_ms
                   WHERE r.holder = EXCLUDED.holder OR r.expires_at_ms <= $4
                 RETURNING fence").await?,
                &[&name, &holder, &expires, &now_ms],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|row| to_u64(row.get(0))))
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
