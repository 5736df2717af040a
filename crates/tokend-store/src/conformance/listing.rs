//! Conformance: an id prefix lists exactly its range, with paging and the
//! other filters, on every backend (issue 24, item 6: a narrow grant's
//! listing walks its own prefixes through the id order).

use tokend_core::{Connection, ConnectionId, ProviderName, Status};

use super::record;
use crate::{ListQuery, Store};

fn ids(v: Vec<Connection>) -> Vec<String> {
    v.into_iter().map(|c| c.id.to_string()).collect()
}

/// Invariant: `prefix` selects exactly the ids starting with it, in id
/// order, whatever `after` is (before, inside or past the range) and with
/// provider and status filters applied; a prefix no id can start with lists
/// nothing, and an empty one everything.
pub(super) async fn an_id_prefix_lists_exactly_its_range(store: &impl Store) {
    let hubspot = ProviderName::new("hubspot").expect("provider");
    let all = [
        "s-a-1", "t", "t-", "t-a", "t-a-1", "t-a-2", "t-a-3", "t-a.", "t-aa", "t-b-1", "t-b-2",
        "u-a-1",
    ];
    for id in all {
        let mut r = record(id, 1);
        if id == "t-a-2" {
            r.status = Status::ReconnectRequired;
        }
        if id == "t-a-3" {
            r.provider = hubspot.clone();
        }
        store.put(&r, None, None).await.expect("create");
    }
    let list = |prefix: &str, after: Option<&str>, limit: usize| ListQuery {
        after: after.map(|a| ConnectionId::new(a).expect("id")),
        limit,
        prefix: Some(prefix.to_owned()),
        ..Default::default()
    };
    let run = |q: ListQuery| async move { ids(store.list(&q).await.expect("list")) };

    assert_eq!(
        run(list("t-a-", None, 10)).await,
        ["t-a-1", "t-a-2", "t-a-3"]
    );
    assert_eq!(
        run(list("t-a", None, 10)).await,
        ["t-a", "t-a-1", "t-a-2", "t-a-3", "t-a.", "t-aa"],
        "a prefix without delimiter is still only a prefix"
    );
    // Paging inside the range, from before it, and past it.
    assert_eq!(run(list("t-a-", None, 2)).await, ["t-a-1", "t-a-2"]);
    assert_eq!(run(list("t-a-", Some("t-a-2"), 2)).await, ["t-a-3"]);
    assert_eq!(
        run(list("t-a-", Some("s-a-1"), 10)).await,
        ["t-a-1", "t-a-2", "t-a-3"]
    );
    assert_eq!(
        run(list("t-a-", Some("t-a-"), 10)).await,
        ["t-a-1", "t-a-2", "t-a-3"]
    );
    assert!(run(list("t-a-", Some("t-a-3"), 10)).await.is_empty());
    assert!(run(list("t-a-", Some("t-b-1"), 10)).await.is_empty());
    // A prefix that is a whole id, at the end of the order.
    assert_eq!(run(list("u-a-1", None, 10)).await, ["u-a-1"]);
    // Nothing can start with these.
    assert!(run(list("t/", None, 10)).await.is_empty());
    assert!(run(list("zz", None, 10)).await.is_empty());
    assert!(run(list("-t", None, 10)).await.is_empty());
    assert_eq!(
        run(list("", None, 100)).await,
        all,
        "an empty prefix is everything"
    );
    // With the other filters.
    let filtered = |provider: Option<&ProviderName>, status| ListQuery {
        provider: provider.cloned(),
        status,
        ..list("t-a-", None, 10)
    };
    assert_eq!(
        run(filtered(None, Some(Status::ReconnectRequired))).await,
        ["t-a-2"]
    );
    assert_eq!(run(filtered(Some(&hubspot), None)).await, ["t-a-3"]);
    let sandbox = ProviderName::new("sandbox").expect("provider");
    assert_eq!(
        run(filtered(Some(&sandbox), Some(Status::Active))).await,
        ["t-a-1"]
    );
    assert!(
        run(filtered(Some(&hubspot), Some(Status::ReconnectRequired)))
            .await
            .is_empty()
    );
    // Paging one at a time walks the same range.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = run(list("t-", after.as_deref(), 1)).await;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        walked.extend(page);
    }
    assert_eq!(
        walked,
        [
            "t-", "t-a", "t-a-1", "t-a-2", "t-a-3", "t-a.", "t-aa", "t-b-1", "t-b-2"
        ]
    );
}
