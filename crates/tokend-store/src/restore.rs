//! Writing a backup's records into a store that may already hold some:
//! each record compared with the target's, written through the store's
//! ordinary compare-and-swap `put` (so its events are appended, as for any
//! change), never over a newer revision.
//!
//! Invariant: a restore never moves a connection back. A backup is a point
//! in time; under strict rotation, the refresh token of a connection
//! refreshed since is dead at the provider, and writing it back would lose
//! the live one. So a target record the backup does not hold a newer
//! revision of (a higher revision, another incarnation: re-created since,
//! or a record the target cannot read) is never overwritten: the restore
//! reports it, and the caller refuses or skips it.

use tokend_core::{Connection, ConnectionId};

use crate::{Store, StoreError};

/// What a restore would do, record by record, against the target as read.
#[derive(Default)]
pub struct Plan {
    /// Absent from the target: written as new.
    pub add: Vec<Connection>,
    /// The same connection (incarnation) at a lower revision in the target:
    /// written over it, `(record, the target's revision)`.
    pub advance: Vec<(Connection, u64)>,
    /// At the same revision in the target: nothing to write.
    pub same: usize,
    /// Newer in the target than in the backup: a higher revision of the
    /// same connection, or another incarnation (deleted and re-created
    /// since). Never written.
    pub older: Vec<ConnectionId>,
    /// Unreadable in the target (sealed with a key the restore lacks, or
    /// damaged): not comparable, never written.
    pub unreadable: Vec<ConnectionId>,
}

impl Plan {
    /// Records the target holds and the backup would move back, or cannot
    /// compare with: what the caller must refuse, or be told to skip.
    pub fn held_back(&self) -> usize {
        self.older.len() + self.unreadable.len()
    }
}

/// Compares every record of a backup with the target's.
pub async fn plan(target: &dyn Store, records: Vec<Connection>) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    for record in records {
        match target.get(&record.id).await {
            Ok(None) => plan.add.push(record),
            Ok(Some(stored)) if stored.incarnation != record.incarnation => {
                plan.older.push(record.id);
            }
            Ok(Some(stored)) if stored.revision > record.revision => plan.older.push(record.id),
            Ok(Some(stored)) if stored.revision == record.revision => plan.same += 1,
            Ok(Some(stored)) => plan.advance.push((record, stored.revision)),
            Err(StoreError::Corrupt { .. }) => plan.unreadable.push(record.id),
            Err(e) => return Err(e),
        }
    }
    Ok(plan)
}

/// Writes what `plan` adds and advances, each by compare-and-swap on what
/// the plan read (a target changed since fails with `Conflict`), with its
/// events. Returns how many records were written.
pub async fn apply(target: &dyn Store, plan: &Plan) -> Result<usize, StoreError> {
    let mut written = 0;
    for record in &plan.add {
        target.put(record, None, None).await?;
        written += 1;
    }
    for (record, found) in &plan.advance {
        target.put(record, Some(*found), None).await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use tokend_core::Timestamp;

    use super::*;
    use crate::{MemoryStore, conformance::record, fault::FaultStore};

    async fn stored(store: &dyn Store, id: &str) -> Connection {
        store
            .get(&ConnectionId::new(id).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Invariant: a restore never lowers a revision and writes with events.
    /// A connection refreshed since the backup (revision 5 in the target,
    /// 3 in the backup) and one re-created since (another incarnation) are
    /// held back; one behind the backup is advanced and one missing added,
    /// each with its event; one at the same revision is left alone. Before,
    /// `restore --force` wrote every record of the backup over the target's
    /// with no revision check and no event.
    #[tokio::test]
    async fn a_restore_never_moves_a_connection_back_and_logs_what_it_writes() {
        let target = FaultStore::new(MemoryStore::new());
        for (id, revision) in [("refreshed", 5), ("behind", 2), ("same", 4)] {
            let mut r = record(id, 1);
            target.put(&r, None, None).await.unwrap();
            while r.revision < revision {
                let expected = r.revision;
                r = r.next_revision(Timestamp::from_unix_millis(10));
                target.put(&r, Some(expected), None).await.unwrap();
            }
        }
        let mut recreated = record("recreated", 1);
        recreated.incarnation = 99;
        target.put(&recreated, None, None).await.unwrap();
        let before = target.event_bounds().await.unwrap().last;

        let backup = vec![
            record("refreshed", 3),
            record("behind", 6),
            record("same", 4),
            record("recreated", 8),
            record("missing", 2),
        ];
        let plan = plan(&target, backup).await.unwrap();
        let ids = |v: &[ConnectionId]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&plan.older), ["refreshed", "recreated"]);
        assert_eq!(plan.same, 1);
        assert_eq!(plan.held_back(), 2);
        assert_eq!(apply(&target, &plan).await.unwrap(), 2);

        assert_eq!(stored(&target, "refreshed").await.revision, 5, "kept");
        assert_eq!(stored(&target, "recreated").await.incarnation, 99, "kept");
        assert_eq!(stored(&target, "behind").await.revision, 6, "advanced");
        assert_eq!(stored(&target, "missing").await.revision, 2, "added");
        let after = target.event_bounds().await.unwrap().last;
        let events = target.read_events(before, after, 10).await.unwrap();
        let mut touched: Vec<_> = events
            .iter()
            .map(|e| e.event.connection_id.clone())
            .collect();
        touched.sort();
        assert_eq!(touched, ["behind", "missing"], "one event per write");
    }

    /// A target record that cannot be read is never overwritten: it may
    /// hold a newer grant than the backup's.
    #[tokio::test]
    async fn a_restore_never_writes_over_an_unreadable_record() {
        let target = FaultStore::new(MemoryStore::new());
        target.put(&record("broken", 7), None, None).await.unwrap();
        target.garble(&ConnectionId::new("broken").unwrap());
        let plan = plan(&target, vec![record("broken", 9)]).await.unwrap();
        assert_eq!(plan.unreadable.len(), 1);
        assert_eq!(apply(&target, &plan).await.unwrap(), 0);
        assert_eq!(
            target
                .inner()
                .get(&ConnectionId::new("broken").unwrap())
                .await
                .unwrap()
                .unwrap()
                .revision,
            7
        );
    }
}
