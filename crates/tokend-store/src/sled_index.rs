//! The sled store's index tree, written in the same transaction as the
//! record it describes: each connection's [`Summary`] (the due-time index
//! start-up schedules from), an entry per status and per provider (what a
//! filtered listing walks instead of decrypting every record), and the
//! count per provider and status (the connections gauge).
//!
//! Keys, with `\0` as separator (ids and provider names never contain it,
//! and it sorts before every byte they may hold, so each prefix lists its
//! ids in id order):
//! - `d\0{id}` → the summary's bytes;
//! - `s\0{status}\0{id}` and `p\0{provider}\0{id}` → nothing;
//! - `c\0{provider}\0{status}` → a big-endian u64.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use tokend_core::{ProviderName, Status};

use crate::{
    StoreError,
    summary::{Census, Summary},
};

const COUNT: &[u8] = b"c\0";

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p);
    }
    out
}

pub(crate) fn summary_key(id: &[u8]) -> Vec<u8> {
    key(&[b"d", id])
}

/// Where the ids with `status` start.
pub(crate) fn status_prefix(status: Status) -> Vec<u8> {
    let mut k = key(&[b"s", status.as_str().as_bytes()]);
    k.push(0);
    k
}

/// Where the ids of `provider` start.
pub(crate) fn provider_prefix(provider: &ProviderName) -> Vec<u8> {
    let mut k = key(&[b"p", provider.as_str().as_bytes()]);
    k.push(0);
    k
}

fn count_key(provider: &ProviderName, status: Status) -> Vec<u8> {
    key(&[
        b"c",
        provider.as_str().as_bytes(),
        status.as_str().as_bytes(),
    ])
}

fn entry_keys(s: &Summary) -> [Vec<u8>; 2] {
    let id = s.id.as_str().as_bytes();
    let mut by_status = status_prefix(s.status);
    by_status.extend_from_slice(id);
    let mut by_provider = provider_prefix(&s.provider);
    by_provider.extend_from_slice(id);
    [by_status, by_provider]
}

fn read_count(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

type TxResult<T> = Result<T, ConflictableTransactionError<()>>;

fn add_count(
    index: &TransactionalTree,
    provider: &ProviderName,
    status: Status,
    up: bool,
) -> TxResult<()> {
    let key = count_key(provider, status);
    let n = read_count(index.get(&key)?);
    let n = if up { n + 1 } else { n.saturating_sub(1) };
    if n == 0 {
        index.remove(key)?;
    } else {
        index.insert(key, &n.to_be_bytes())?;
    }
    Ok(())
}

/// Inside a transaction: makes the index say `new` of connection `id`
/// (`None`: it has no record any more). The old entries are found through
/// the stored summary, so they are replaced even when the record itself
/// has become unreadable.
pub(crate) fn reindex(index: &TransactionalTree, id: &[u8], new: Option<&Summary>) -> TxResult<()> {
    let skey = summary_key(id);
    let old = index
        .get(&skey)?
        .and_then(|bytes| Summary::from_bytes(id, &bytes));
    if old.as_ref() == new {
        return Ok(());
    }
    let same_place = matches!((&old, new), (Some(o), Some(n)) if o.provider == n.provider && o.status == n.status);
    if !same_place {
        if let Some(old) = &old {
            for k in entry_keys(old) {
                index.remove(k)?;
            }
            add_count(index, &old.provider, old.status, false)?;
        }
        if let Some(new) = new {
            for k in entry_keys(new) {
                index.insert(k, &[])?;
            }
            add_count(index, &new.provider, new.status, true)?;
        }
    }
    match new {
        Some(new) => index.insert(skey, new.to_bytes())?,
        None => index.remove(skey)?,
    };
    Ok(())
}

/// Rebuilds the whole index from the records (a data dir written before
/// the index existed, or one whose rebuild was cut off). Reads each
/// record's summary without opening any sealed field.
pub(crate) fn rebuild(records: &sled::Tree, index: &sled::Tree) -> Result<usize, StoreError> {
    let backend = |e: sled::Error| StoreError::Backend(e.to_string());
    index.clear().map_err(backend)?;
    let mut census = Census::default();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut count = 0;
    for item in records.iter() {
        let (key, bytes) = item.map_err(backend)?;
        let summary = match crate::codec::summary(&key, &bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "unreadable record left out of the index");
                continue;
            }
        };
        for k in entry_keys(&summary) {
            batch.insert(k, &[]);
        }
        batch.insert(summary_key(&key), summary.to_bytes());
        census.add(&summary.provider, summary.status);
        count += 1;
        in_batch += 1;
        if in_batch == 10_000 {
            index
                .apply_batch(std::mem::take(&mut batch))
                .map_err(backend)?;
            in_batch = 0;
        }
    }
    for (provider, status, n) in census.iter() {
        batch.insert(count_key(provider, status), &n.to_be_bytes());
    }
    index.apply_batch(batch).map_err(backend)?;
    Ok(count)
}

/// The counts per provider and status.
pub(crate) fn census(index: &sled::Tree) -> Result<Census, StoreError> {
    let mut census = Census::default();
    for item in index.scan_prefix(COUNT) {
        let (key, value) = item.map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut parts = key[COUNT.len()..].split(|b| *b == 0);
        let (Some(provider), Some(status)) = (parts.next(), parts.next()) else {
            continue;
        };
        let provider = std::str::from_utf8(provider)
            .ok()
            .and_then(|p| ProviderName::new(p).ok());
        let status = std::str::from_utf8(status).ok().and_then(Status::parse);
        if let (Some(provider), Some(status)) = (provider, status) {
            census.0.insert((provider, status), read_count(Some(value)));
        }
    }
    Ok(census)
}
