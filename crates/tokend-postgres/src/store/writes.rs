//! A record write's steps in one transaction: the lease row, the record
//! (compare-and-swap), the log's row and its events, then the commit; and
//! the upsert of an import.

use deadpool_postgres::{Client, Transaction};
use tokend_core::{Connection, ConnectionId, NewEvent};
use tokend_store::StoreError;

use crate::{PostgresStore, listen::CHANNEL};

use super::*;

impl PostgresStore {
    /// Appends `events` in `tx`, numbered after the log's last sequence
    /// number under its row lock, and notifies every replica at commit.
    /// Returns the last sequence number, if any event was appended.
    ///
    /// One statement, so the lock is held for it and the commit only: every
    /// writer that appends events waits for this one to commit.
    pub(super) async fn append(
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
    pub(super) async fn commit(
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
    pub(super) async fn lock_record(
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
    pub(super) async fn write_record(
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
    pub(super) async fn found(
        client: &Client,
        record: &Connection,
    ) -> Result<Option<u64>, StoreError> {
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
