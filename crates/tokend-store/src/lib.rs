//! Where connection records live: the `Store` trait (compare-and-swap on
//! revision), a sled backend for single-node deployments, an in-memory one for
//! tests, and a conformance suite every backend must pass.

mod codec;
pub mod conformance;
pub mod crypto;
mod memory;
mod sled_store;

use std::time::Duration;

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, ProviderName, Status, Timestamp};

pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// Errors of the storage layer. Backend types (sled, SQL drivers) never
/// appear here, so the layers above stay backend-agnostic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The compare-and-swap lost: someone else wrote the record first (or
    /// deleted and re-created it: `found` is then `None`).
    #[error(
        "connection {id} changed concurrently: expected revision {expected:?}, found {found:?}"
    )]
    Conflict {
        id: ConnectionId,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// A write that would not advance the revision was refused.
    #[error("connection {id}: new revision {new} must be greater than {expected:?}")]
    RevisionNotAdvanced {
        id: ConnectionId,
        expected: Option<u64>,
        new: u64,
    },
    /// The stored bytes of one record cannot be decoded; other records are
    /// unaffected.
    #[error("connection {id}: stored record is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    /// The backend itself failed (I/O, disk full, lost database).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// What `Store::list` returns: one page of records in id order.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only ids strictly greater than this (the previous page's last id).
    pub after: Option<ConnectionId>,
    pub limit: usize,
    pub provider: Option<ProviderName>,
    pub status: Option<Status>,
}

/// A holder's exclusive right to refresh one connection for a while.
///
/// Within one process the refresh engine's singleflight already guarantees
/// one provider call per connection; the lease extends that across replicas
/// sharing one store. It only avoids duplicate provider calls: safety comes
/// from the revision compare-and-swap, which refuses any write based on a
/// stale read, whoever holds the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: ConnectionId,
    pub holder: String,
    /// Grows with every grant for this connection: a fencing token.
    pub fence: u64,
    pub expires_at: Timestamp,
}

/// Durable storage of connection records.
///
/// Every write is a compare-and-swap on `Connection::revision` and is durable
/// (flushed) before it returns, so a token set is never handed out before it
/// would survive a crash. A SQL backend maps this onto
/// `UPDATE .. WHERE id = ? AND revision = ?` and a leases table.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record, if any.
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Writes `record` if the stored record has `record.incarnation` and
    /// revision `expected_revision` (`None`: no record may exist).
    /// `record.revision` must exceed it.
    async fn put(
        &self,
        record: &Connection,
        expected_revision: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Removes the record if its revision is `expected_revision` (`None`:
    /// whatever it is). Returns whether a record was removed.
    async fn delete(
        &self,
        id: &ConnectionId,
        expected_revision: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// One page of records in id order. Unreadable records are skipped and
    /// logged, so one bad record cannot hide the others.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError>;

    /// Grants `holder` the refresh lease for `id` until `now + ttl` unless
    /// another holder's lease is still live at `now`.
    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease back early; a no-op if it already passed to someone else.
    async fn release_refresh_lease(&self, lease: &Lease) -> Result<(), StoreError>;
}

/// Checks a put's preconditions that do not depend on the backend.
fn check_advances(record: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
    if expected.is_some_and(|e| record.revision <= e) || record.revision == 0 {
        return Err(StoreError::RevisionNotAdvanced {
            id: record.id.clone(),
            expected,
            new: record.revision,
        });
    }
    Ok(())
}

/// The `found` revision of a compare-and-swap, or `None` when the stored
/// record is absent or of another incarnation than `record`.
fn comparable(record: &Connection, stored: Option<&Connection>) -> Option<u64> {
    stored
        .filter(|s| s.incarnation == record.incarnation)
        .map(|s| s.revision)
}

/// Whether a record passes a list query's filters.
fn matches(query: &ListQuery, record: &Connection) -> bool {
    query
        .provider
        .as_ref()
        .is_none_or(|p| *p == record.provider)
        && query.status.is_none_or(|s| s == record.status)
}
