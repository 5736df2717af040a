//! The refresh-lease rules every backend shares: who may take a lease, how
//! fences grow, and how doubt about an interrupted refresh is carried.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokend_core::{ConnectionId, Timestamp};

use crate::{Lease, StoreError};

/// What a backend keeps per connection: the last lease granted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LeaseState {
    pub holder: String,
    pub fence: u64,
    pub expires_at: Timestamp,
    /// Given back by its holder (or by start-up, for a dead run's lease).
    #[serde(default)]
    pub released: bool,
    /// The refresh under this lease (or an earlier one) ended unsettled.
    #[serde(default)]
    pub in_doubt: bool,
}

impl LeaseState {
    /// The lease after `last`, if `holder` may take it at `now`: only when
    /// no lease is live, whoever holds it (the holder itself included).
    pub(crate) fn grant(
        last: Option<&LeaseState>,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Option<LeaseState> {
        if last.is_some_and(|l| !l.released && l.expires_at > now) {
            return None;
        }
        Some(LeaseState {
            holder: holder.to_owned(),
            fence: last.map_or(1, |l| l.fence + 1),
            expires_at: now.saturating_add(ttl),
            released: false,
            // A lease that ran out unreleased: its holder died or stalled
            // mid-refresh, and the provider may have rotated the token.
            in_doubt: last.is_some_and(|l| l.in_doubt || !l.released),
        })
    }

    pub(crate) fn lease(&self, id: &ConnectionId) -> Lease {
        Lease {
            id: id.clone(),
            holder: self.holder.clone(),
            fence: self.fence,
            expires_at: self.expires_at,
            in_doubt: self.in_doubt,
        }
    }

    /// Releases the lease with `fence`, unless a newer one was granted.
    /// Returns whether anything changed.
    pub(crate) fn release(&mut self, fence: u64, in_doubt: bool) -> bool {
        if self.fence != fence {
            return false;
        }
        self.released = true;
        self.in_doubt = in_doubt;
        true
    }

    /// Extends the lease with `fence` to `now + ttl` while its holder still
    /// works under it: only if no newer lease was granted and it was not
    /// released (by its holder, or by a sweep after it ran out). Returns
    /// whether the holder still has it.
    ///
    /// Invariant: a refresh whose lease was taken over learns it here and
    /// never extends its successor's lease.
    pub(crate) fn renew(&mut self, fence: u64, ttl: Duration, now: Timestamp) -> bool {
        if self.fence != fence || self.released {
            return false;
        }
        self.expires_at = self.expires_at.max(now.saturating_add(ttl));
        true
    }

    /// Releases a lease that ran out at `now` unreleased, whoever held it
    /// (a replica that died mid-refresh, under any name), in doubt.
    /// Returns whether it was one.
    pub(crate) fn expire(&mut self, now: Timestamp) -> bool {
        if self.released || self.expires_at > now {
            return false;
        }
        self.released = true;
        self.in_doubt = true;
        true
    }

    /// At start-up: releases an unreleased lease of an earlier run of this
    /// node, in doubt. Returns whether it was one.
    pub(crate) fn abandon(&mut self, node_prefix: &str) -> bool {
        if self.released || !self.holder.starts_with(node_prefix) {
            return false;
        }
        self.released = true;
        self.in_doubt = true;
        true
    }

    /// After a delete: the fence counter stays, nothing is live or in doubt.
    pub(crate) fn forget(&mut self) {
        self.released = true;
        self.in_doubt = false;
    }
}

/// Refuses a write under `fence` once a newer lease has been granted.
pub(crate) fn check_fence(
    id: &ConnectionId,
    last: Option<&LeaseState>,
    fence: Option<u64>,
) -> Result<(), StoreError> {
    match (fence, last) {
        (Some(f), Some(l)) if l.fence > f => Err(StoreError::Fenced {
            id: id.clone(),
            fence: f,
            current: l.fence,
        }),
        _ => Ok(()),
    }
}
