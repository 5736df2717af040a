//! `Store` on PostgreSQL. Each change is one transaction at READ COMMITTED
//! that locks rows in one order (lease, then record, then the log's row), so
//! concurrent changes from any replica serialise per connection without
//! deadlocks, and event numbering serialises fleet-wide.

use deadpool_postgres::{Client, Transaction};
use tokend_store::StoreError;
use tokio_postgres::Statement;

use crate::PgError;

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

mod calls;
mod events;
mod writes;

pub(crate) use writes::upsert_sealed;
