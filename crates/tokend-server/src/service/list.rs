//! ListConnections: one page of the connections a caller may see, read
//! only from the id ranges its grants cover (each `prefix-*` a range of the
//! store's id order, each whole id one lookup), merged in id order. A
//! narrow grant costs the records it may see, however many others exist.

use tokend_core::{Connection, ConnectionId};
use tokend_store::{ListQuery, StoreError};

use super::validate::ListParams;
use tokend_engine::{Engine, EngineError};

use crate::{
    auth::{Caller, Permission, Reach},
    error::ServiceError,
};

/// Where a listing reads, in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The ids starting with this prefix.
    Prefix(String),
    /// This one id.
    Id(ConnectionId),
}

impl Source {
    /// The smallest id the source can hold: sources sort by it.
    fn start(&self) -> &str {
        match self {
            Source::Prefix(p) => p,
            Source::Id(id) => id.as_str(),
        }
    }
}

/// The disjoint sources a reach covers, in id order; `None` for every
/// connection.
///
/// A prefix that another prefix covers is dropped, and so is an id that a
/// prefix covers. Of two prefixes neither of which starts the other, every
/// id of the smaller sorts before every id of the larger (they differ
/// within the shorter one's length), and an id outside a prefix's range
/// lies wholly before or after it: so sorting by start orders the ids too.
pub(super) fn sources(reach: Reach) -> Option<Vec<Source>> {
    let Reach::Only { mut prefixes, ids } = reach else {
        return None;
    };
    if prefixes.iter().any(String::is_empty) {
        return None;
    }
    prefixes.sort();
    prefixes.dedup();
    let mut kept: Vec<String> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted: a covering prefix comes right before what it covers.
        if !kept.last().is_some_and(|k| p.starts_with(k.as_str())) {
            kept.push(p);
        }
    }
    let mut out: Vec<Source> = ids
        .into_iter()
        // A grant naming no valid id reaches no connection.
        .filter_map(|id| ConnectionId::new(id).ok())
        .filter(|id| !kept.iter().any(|p| id.as_str().starts_with(p.as_str())))
        .map(Source::Id)
        .collect();
    out.extend(kept.into_iter().map(Source::Prefix));
    out.sort_by(|a, b| a.start().cmp(b.start()));
    out.dedup();
    Some(out)
}

/// One page for `caller`: up to `page_size` records in id order after
/// `params.after`, and whether more follow.
pub(super) async fn page(
    engine: &Engine,
    caller: &Caller,
    params: ListParams,
) -> Result<(Vec<Connection>, bool), ServiceError> {
    // One more than the page, to know whether another page follows.
    let want = params.page_size + 1;
    let query = |after: Option<ConnectionId>, limit: usize, prefix: Option<String>| ListQuery {
        after,
        limit,
        provider: params.provider.clone(),
        status: params.status,
        prefix,
    };
    let mut records = match sources(caller.reach(Permission::Tokens)) {
        None => {
            engine
                .list(&query(params.after.clone(), want, None))
                .await?
        }
        Some(sources) => {
            let mut records: Vec<Connection> = Vec::new();
            for source in sources {
                if records.len() >= want {
                    break;
                }
                let after = records
                    .last()
                    .map(|c| c.id.clone())
                    .or_else(|| params.after.clone());
                match source {
                    Source::Prefix(prefix) => {
                        let limit = want - records.len();
                        records.extend(engine.list(&query(after, limit, Some(prefix))).await?);
                    }
                    Source::Id(id) => {
                        if after.as_ref().is_some_and(|a| id <= *a) {
                            continue;
                        }
                        match engine.stored(&id).await {
                            Ok(record) if tokend_store::matches(&query(None, 1, None), &record) => {
                                records.push(record);
                            }
                            Ok(_) | Err(EngineError::NotFound(_)) => {}
                            // As a store listing does: one unreadable
                            // record does not hide the others.
                            Err(EngineError::Store(StoreError::Corrupt { .. })) => {
                                tracing::error!(connection_id = %id, "skipping unreadable connection record");
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            records
        }
    };
    // The walk above reads only what the grants cover; checked once more
    // per record all the same, as every other RPC is.
    records.retain(|c| caller.may(Permission::Tokens, Some(&c.id)));
    let more = records.len() > params.page_size;
    records.truncate(params.page_size);
    Ok((records, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(prefixes: &[&str], ids: &[&str]) -> Reach {
        Reach::Only {
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn starts(sources: Option<Vec<Source>>) -> Vec<String> {
        sources
            .expect("some sources")
            .iter()
            .map(|s| match s {
                Source::Prefix(p) => format!("{p}*"),
                Source::Id(id) => id.to_string(),
            })
            .collect()
    }

    /// Issue 24, item 6. Invariant: the sources a listing walks are
    /// disjoint and in id order, covering exactly the grants' patterns.
    #[test]
    fn sources_are_disjoint_and_in_id_order() {
        assert_eq!(sources(Reach::All), None);
        assert_eq!(
            sources(only(&["", "t-"], &[])),
            None,
            "an empty prefix is all"
        );
        assert_eq!(
            starts(sources(only(
                &["t-b-", "t-a-", "t-a-x-", "t-a-", "u"],
                &["t-a-1", "s-1", "t-c", "u-9", "bad id", "t-c"],
            ))),
            ["s-1", "t-a-*", "t-b-*", "t-c", "u*"]
        );
        // An id that a prefix's range does not hold sorts outside it.
        assert_eq!(starts(sources(only(&["t-a"], &["t-"]))), ["t-", "t-a*"]);
        assert!(sources(only(&[], &[])).expect("nothing").is_empty());
    }
}
