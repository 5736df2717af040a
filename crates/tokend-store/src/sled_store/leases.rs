//! Refresh leases on sled: grants (flushed: the refresh's durable intent),
//! releases, renewals, and the sweeps of expired and abandoned leases.

use std::time::Duration;

use tokend_core::{ConnectionId, Timestamp};

use crate::{Lease, StoreError, leases::LeaseState};

use super::*;

pub(super) async fn try_acquire_refresh_lease(
    store: &SledStore,
    id: &ConnectionId,
    holder: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<Option<Lease>, StoreError> {
    let id = id.clone();
    let holder = holder.to_owned();
    let granted = store
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

pub(super) async fn release_refresh_lease(
    store: &SledStore,
    lease: &Lease,
    in_doubt: bool,
) -> Result<(), StoreError> {
    // Not flushed: the next flush (any write's) carries it. Lost in a
    // crash, it only makes the next refresh look in doubt, which costs
    // nothing unless that refresh is refused.
    let lease = lease.clone();
    store
        .write_then(
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

pub(super) async fn renew_refresh_lease(
    store: &SledStore,
    lease: &Lease,
    ttl: Duration,
    now: Timestamp,
) -> Result<bool, StoreError> {
    // Not flushed: a renewal lost in a crash only makes the dead
    // holder's lease run out sooner.
    let lease = lease.clone();
    store
        .write_then(
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

pub(super) async fn release_expired_leases(
    store: &SledStore,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<ConnectionId>, StoreError> {
    store
        .write_then(
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

pub(super) async fn release_abandoned_leases(
    store: &SledStore,
    node_prefix: &str,
) -> Result<Vec<ConnectionId>, StoreError> {
    let prefix = node_prefix.to_owned();
    let ids = store
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
