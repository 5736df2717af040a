//! Where connection records live: the `Store` trait (compare-and-swap on
//! revision, with each change's events appended to a durable log in the same
//! write), a sled backend for single-node deployments, an in-memory one for
//! tests, a conformance suite every backend must pass, and the shared base
//! of the stores that wrap another (`StoreWrapper`). The conformance suite
//! and the fault-injecting store are for tests only: feature `testing`.

mod codec;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod crypto;
mod event_log;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub mod key_records;
mod leases;
mod memory;
pub mod restore;
mod sealing;
mod sled_commit;
mod sled_durable;
mod sled_index;
mod sled_keys;
mod sled_store;
mod sled_wal;
mod summary;
mod wrapper;

use std::time::Duration;

use async_trait::async_trait;
use tokend_core::{Connection, ConnectionId, Event, ProviderName, Status, Timestamp};
use tokio::sync::watch;

pub use event_log::{LogBounds, SavedCursor, Watermark, new_log_id};
pub use memory::MemoryStore;
pub use summary::{Census, Summary};
pub use wrapper::{BoxFuture, Op, StoreWrapper};

/// What a backend kept outside this crate (the PostgreSQL one) shares with
/// the built-in ones: the record encoding (secrets sealed before they leave
/// the process) and the preconditions every backend checks the same way.
pub mod backend {
    pub use crate::{
        check_advances, check_delete, check_put,
        codec::{decode, encode, encode_unbound, key_ids, summary, upgrade},
        comparable, matches,
    };
}
pub use sled_store::{BOUND_FORMAT, FORMAT_VERSION, SledStore, Tuning};

/// Errors of the storage layer. Backend types (sled, SQL drivers) never
/// appear here, so the layers above stay backend-agnostic. `Clone`, so one
/// failure can be handed to every waiter of a shared refresh, still typed.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// A write made under a refresh lease whose fence is older than the
    /// newest lease granted for the connection: its holder was paused past
    /// its lease and someone else took over.
    #[error(
        "connection {id}: refresh lease fence {fence} is stale; fence {current} was granted since"
    )]
    Fenced {
        id: ConnectionId,
        fence: u64,
        current: u64,
    },
    /// The stored bytes of one record cannot be decoded; other records are
    /// unaffected.
    #[error("connection {id}: stored record is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    /// The backend itself failed (I/O, disk full, lost database). The write
    /// may or may not have landed: the caller must re-read before assuming
    /// either.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// What one page of `Store::list` selects: records in id order.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only ids strictly greater than this (the previous page's last id).
    pub after: Option<ConnectionId>,
    pub limit: usize,
    pub provider: Option<ProviderName>,
    pub status: Option<Status>,
    /// Only ids starting with this.
    pub prefix: Option<String>,
}

/// What a conditional delete or replacement expects to find stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// This exact record: same incarnation, same revision.
    Record { incarnation: u64, revision: u64 },
    /// A record whose bytes cannot be decoded (so an operator can always
    /// remove or re-install a broken connection), and still unreadable at
    /// the moment of the swap.
    Unreadable,
}

/// A holder's exclusive right to refresh one connection for a while, and
/// the durable *intent* of that refresh.
///
/// Acquiring is durable before it returns, so a process killed between the
/// provider call and persisting its answer leaves the lease unreleased: the
/// next holder gets `in_doubt = true` and knows the provider may have
/// rotated the refresh token it is about to present.
///
/// `fence` grows strictly with every grant for a connection (never reset,
/// not even by a delete). A write under a lease carries its fence, and the
/// store refuses it once a newer fence has been granted (`StoreError::Fenced`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: ConnectionId,
    pub holder: String,
    pub fence: u64,
    pub expires_at: Timestamp,
    /// A previous refresh of this connection ended without its outcome
    /// being settled (a crash after the intent was written, or an answer
    /// that was lost); kept across grants until a holder settles it.
    pub in_doubt: bool,
}

/// Durable storage of connection records and of their event log.
///
/// Every write is a compare-and-swap on `(incarnation, revision)` and is
/// durable (flushed) before it returns, so a token set is never handed out
/// before it would survive a crash.
///
/// Every successful `put`, `replace_unreadable` and `delete` appends the
/// events [`tokend_core::event::describe`] (or `event::deleted`) gives for
/// it, in the same atomic write: no change without its events, no event
/// without its change, and no extra flush. A SQL backend maps this onto
/// `UPDATE .. WHERE id = $1 AND revision = $2 AND fence >= (newest fence)` and
/// a leases table.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record, if any.
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Writes `record` if the stored record has `record.incarnation` and
    /// revision `expected_revision` (`None`: no record may exist), and, when
    /// `fence` is given, no refresh lease newer than that fence has been
    /// granted for the connection. `record.revision` must exceed the
    /// expected one.
    async fn put(
        &self,
        record: &Connection,
        expected_revision: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Replaces a stored record that cannot be decoded with `record`
    /// (created afresh: revision 1 and a new incarnation are the caller's).
    /// `Conflict` when the stored record is absent or readable by now.
    async fn replace_unreadable(&self, record: &Connection) -> Result<(), StoreError>;

    /// Removes the record if it is what `expected` says. Returns false when
    /// no record exists; `Conflict` when another one does.
    async fn delete(&self, id: &ConnectionId, expected: Expected) -> Result<bool, StoreError>;

    /// One page of records in id order. Unreadable records are skipped and
    /// logged, so one bad record cannot hide the others.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError>;

    /// Up to `limit` connections' secret-free summaries in id order, after
    /// `after`: what start-up schedules from without opening any token.
    /// Unreadable records are skipped. Backends override the default (which
    /// decodes every record) with an index or by reading the summary's
    /// fields alone.
    async fn summaries(
        &self,
        after: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<Summary>, StoreError> {
        let page = self
            .list(&ListQuery {
                after: after.cloned(),
                limit,
                ..Default::default()
            })
            .await?;
        Ok(page.iter().map(Summary::of).collect())
    }

    /// How many connections there are per provider and status (the
    /// connections gauge). The default pages through [`Store::summaries`].
    async fn census(&self) -> Result<Census, StoreError> {
        let mut census = Census::default();
        let mut after = None;
        loop {
            let page = self.summaries(after.as_ref(), 10_000).await?;
            let Some(last) = page.last() else {
                return Ok(census);
            };
            after = Some(last.id.clone());
            for s in &page {
                census.add(&s.provider, s.status);
            }
        }
    }

    /// Grants `holder` the refresh lease for `id` until `now + ttl` unless a
    /// lease (anyone's, `holder`'s own included) is still live at `now`.
    /// Durable before it returns: it is the refresh's intent.
    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease back. `in_doubt` says whether the refresh's outcome
    /// is still unsettled (the provider may have rotated the token and its
    /// answer was lost); false settles any earlier doubt. A no-op when a
    /// newer fence was granted meanwhile.
    async fn release_refresh_lease(&self, lease: &Lease, in_doubt: bool) -> Result<(), StoreError>;

    /// Extends `lease` to `now + ttl` while its holder still works under it
    /// (a provider call that outlasts a third of the lease). False when the
    /// lease is lost: a newer fence was granted, or it was released (by a
    /// sweep of expired leases). Need not be flushed: lost in a crash, it
    /// only makes the dead holder's lease run out sooner.
    async fn renew_refresh_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Releases up to `limit` unreleased leases that ran out at `now`,
    /// whoever held them (a replica that died mid-refresh, whatever its
    /// name), marking each in doubt, and returns their connections in id
    /// order. On a shared store each such lease is returned to one caller
    /// only, so exactly one replica takes each over.
    async fn release_expired_leases(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// At start-up: releases every unreleased lease whose holder name starts
    /// with `node_prefix` (this node's earlier runs, killed mid-refresh),
    /// marking each in doubt, so refreshes need not wait for them to
    /// expire. Returns the connections concerned, in id order.
    async fn release_abandoned_leases(
        &self,
        node_prefix: &str,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// Up to `limit` events with `after < seq <= up_to`, in order. The
    /// sequence is contiguous and pruning removes a prefix, so a first event
    /// other than `after + 1` (or none while `after < up_to`) means the
    /// events after `after` were pruned.
    async fn read_events(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The last durable sequence number, updated as writes are flushed.
    /// Readers must not read past it.
    fn event_watermark(&self) -> watch::Receiver<u64>;

    /// The log's identity and the range it retains.
    async fn event_bounds(&self) -> Result<LogBounds, StoreError>;

    /// The key ids the store records (`key_records`) that this process's
    /// keys do not hold, or hold another key under: records sealed with
    /// them cannot be opened here. Empty for a store that seals nothing.
    /// `/readyz` asks it: on a fleet another replica may have recorded a
    /// key this one was never given.
    async fn unheld_keys(&self) -> Result<Vec<u32>, StoreError> {
        Ok(Vec::new())
    }

    /// Removes the oldest events while they are older than `older_than` or
    /// more than `keep` are retained. Returns how many were removed.
    async fn prune_events(&self, older_than: Timestamp, keep: u64) -> Result<u64, StoreError>;

    /// A named reader's saved position (a webhook endpoint's).
    async fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, StoreError>;

    /// Saves a named reader's position; need not be flushed before it
    /// returns (a lost save means events delivered again, never skipped).
    async fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), StoreError>;

    /// Takes, or renews, `holder`'s exclusive right to advance the named
    /// reader (a webhook endpoint's delivery) until `now + ttl`: granted when
    /// nobody holds it, when its holder's time ran out, or to the same
    /// holder again. Returns the claim's fence, which grows with every
    /// change of holder; `None` while another holder's claim is live.
    ///
    /// A store only one process writes (sled, memory) has one reader of
    /// each name: it grants every claim.
    async fn claim_reader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let _ = (name, holder, ttl, now);
        Ok(Some(1))
    }

    /// Once set, why this store can write nothing any more (sled: its one
    /// writer thread died). A process whose store broke must stop reporting
    /// ready and exit with an error, not fail every write while looking
    /// healthy. The default never breaks.
    fn broken(&self) -> watch::Receiver<Option<String>> {
        watch::Sender::new(None).subscribe()
    }

    /// Whether other processes write this store too (replicas sharing a
    /// database). Their changes reach this process only through the event
    /// log, so a replica's cache must follow it.
    fn shared(&self) -> bool {
        false
    }

    /// The fleet's time now, by the clock of a store several processes
    /// share (PostgreSQL: `clock_timestamp()`, read at the middle of the
    /// round trip and carried to its end). Every replica anchors its clock
    /// there at start and follows it forward, so the leases and expiries
    /// one replica stamps are compared by the others on the same time,
    /// whatever each machine's own clock says. `None`: this store has no
    /// clock of its own (sled, memory); the system's counts.
    async fn fleet_now(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }

    /// The keys this store seals records with, to seal other values a
    /// reader must not read either (the event cursors handed to callers
    /// limited to some connections). Every replica of a shared store holds
    /// the same keys. `None` for a store that seals nothing.
    fn sealing_keys(&self) -> Option<std::sync::Arc<crypto::Keyring>> {
        None
    }

    /// Up to `limit` stored records exactly as kept (tokens sealed), in id
    /// order after `after`, with the store's format version: what a backup
    /// holds. Stores that keep nothing sealed (the in-memory one) refuse.
    async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Backend(
            "this store cannot export sealed records".into(),
        ))
    }
}

/// One page of [`Store::export_sealed`].
#[derive(Clone, Debug, Default)]
pub struct SealedPage {
    pub format_version: u32,
    /// `(connection id, stored bytes)`.
    pub records: Vec<(String, Vec<u8>)>,
}

/// Checks a put's preconditions that do not depend on the backend.
pub fn check_advances(record: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
    if expected.is_some_and(|e| record.revision <= e) || record.revision == 0 {
        return Err(StoreError::RevisionNotAdvanced {
            id: record.id.clone(),
            expected,
            new: record.revision,
        });
    }
    Ok(())
}

/// Whether a put of `record` expecting revision `expected` (`None`: no
/// record) may replace `stored`; otherwise the conflict to report.
pub fn check_put(
    record: &Connection,
    stored: Option<&Connection>,
    expected: Option<u64>,
) -> Result<(), StoreError> {
    let found = comparable(record, stored);
    if found != expected || (expected.is_none() && stored.is_some()) {
        return Err(StoreError::Conflict {
            id: record.id.clone(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Whether a delete expecting `expected` may remove the stored record,
/// which decoded as `stored` (`None`: its bytes cannot be decoded);
/// otherwise the conflict to report.
pub fn check_delete(
    id: &ConnectionId,
    stored: Option<&Connection>,
    expected: Expected,
) -> Result<(), StoreError> {
    let (ok, found) = match (stored, expected) {
        (
            Some(r),
            Expected::Record {
                incarnation,
                revision,
            },
        ) => (
            r.incarnation == incarnation && r.revision == revision,
            Some(r.revision),
        ),
        (Some(r), Expected::Unreadable) => (false, Some(r.revision)),
        (None, Expected::Unreadable) => (true, None),
        (None, Expected::Record { .. }) => (false, None),
    };
    if ok {
        return Ok(());
    }
    Err(StoreError::Conflict {
        id: id.clone(),
        expected: match expected {
            Expected::Record { revision, .. } => Some(revision),
            Expected::Unreadable => None,
        },
        found,
    })
}

/// The `found` revision of a compare-and-swap, or `None` when the stored
/// record is absent or of another incarnation than `record`.
pub fn comparable(record: &Connection, stored: Option<&Connection>) -> Option<u64> {
    stored
        .filter(|s| s.incarnation == record.incarnation)
        .map(|s| s.revision)
}

/// Whether a record passes a list query's filters.
pub fn matches(query: &ListQuery, record: &Connection) -> bool {
    query
        .provider
        .as_ref()
        .is_none_or(|p| *p == record.provider)
        && query.status.is_none_or(|s| s == record.status)
        && query
            .prefix
            .as_deref()
            .is_none_or(|p| record.id.as_str().starts_with(p))
}
