//! The PostgreSQL side of the key records (`tokend_store::key_records`,
//! migration 7's `tokend_keys`): reconciled at every connect, under the
//! migration lock so replicas connecting together take turns, and extended
//! by imports in their own transaction.
//!
//! Replicas share the table, so a change that could contradict a running
//! replica (a recorded key id taken over by another key, or a key
//! forgotten) is made only while no other tokend is connected: a replica
//! still sealing with the recorded key would otherwise write records the
//! table no longer vouches for.

use std::collections::{BTreeMap, BTreeSet};

use tokend_store::{
    StoreError,
    backend::{decode, key_ids},
    crypto::{KeyMatch, Keyring, Sealed},
    key_records::{self, Change, InUse, Recorded},
};

use crate::{PgError, migrate::MIGRATION_LOCK};

/// Rows read per page when scanning the records.
const PAGE: i64 = 1000;

pub(crate) async fn load(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Recorded, PgError> {
    let mut recorded = Recorded::new();
    for row in client
        .query("SELECT key_id, check_value FROM tokend_keys", &[])
        .await?
    {
        let id = u32::try_from(row.get::<_, i64>(0))
            .map_err(|_| PgError::Config("a key record's id is out of range".into()))?;
        let check: Sealed = serde_json::from_str(row.get(1))
            .map_err(|_| PgError::Config(format!("key {id}'s record is unreadable")))?;
        recorded.insert(id, check);
    }
    Ok(recorded)
}

/// How many other tokend processes are connected to this database now
/// (every tokend connection names itself `tokend`).
pub(crate) async fn other_sessions(client: &tokio_postgres::Client) -> Result<i64, PgError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'tokend'
               AND pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .get(0))
}

/// Per key id among `wanted` (all when `None`): how many records use it,
/// and (for a first recording) whether one of a few of them opens.
async fn scan(
    client: &tokio_postgres::Client,
    wanted: Option<&BTreeSet<u32>>,
    keys: &Keyring,
) -> Result<InUse, PgError> {
    let mut found = InUse::default();
    let mut tried = BTreeMap::<u32, usize>::new();
    let mut after = String::new();
    loop {
        let rows = client
            .query(
                "SELECT id, sealed FROM tokend_connections WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &PAGE],
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok(found);
        };
        after = last.get(0);
        for row in &rows {
            let id: &str = row.get(0);
            let bytes: &[u8] = row.get(1);
            let mut ids = key_ids(bytes);
            ids.sort_unstable();
            ids.dedup();
            for key_id in ids {
                if wanted.is_some_and(|w| !w.contains(&key_id)) {
                    continue;
                }
                *found.records.entry(key_id).or_default() += 1;
                let attempts = tried.entry(key_id).or_default();
                if wanted.is_none()
                    && !found.opened.contains(&key_id)
                    && *attempts < key_records::SAMPLES_PER_KEY
                {
                    *attempts += 1;
                    if decode(id.as_bytes(), bytes, keys).is_ok() {
                        found.opened.insert(key_id);
                    }
                }
            }
        }
    }
}

fn refused(e: key_records::Refused) -> PgError {
    PgError::Config(e.to_string())
}

/// Makes the database's key records fit `keys` before this replica seals
/// anything, or refuses its keys (`tokend_store::key_records`).
pub(crate) async fn reconcile(
    client: &mut deadpool_postgres::Client,
    keys: &Keyring,
) -> Result<(), PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = reconcile_locked(client, keys).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn reconcile_locked(
    client: &mut deadpool_postgres::Client,
    keys: &Keyring,
) -> Result<(), PgError> {
    let recorded = load(&*client).await?;
    let any_record = client
        .query_one("SELECT EXISTS (SELECT 1 FROM tokend_connections)", &[])
        .await?
        .get::<_, bool>(0);
    let changes = if recorded.is_empty() && any_record {
        let found = scan(client, None, keys).await?;
        key_records::first_records(&found, keys).map_err(refused)?
    } else {
        let unheld: BTreeSet<u32> = recorded
            .iter()
            .filter(|(id, check)| keys.verify_key_check(**id, check) != KeyMatch::Holds)
            .map(|(id, _)| *id)
            .collect();
        let counts = if unheld.is_empty() {
            InUse::default()
        } else {
            scan(client, Some(&unheld), keys).await?
        };
        key_records::reconcile(&recorded, keys, |id| {
            Ok(counts.records.get(&id).copied().unwrap_or(0))
        })
        .map_err(refused)?
    };
    let contradicts = |c: &Change| match c {
        Change::Record(id, _) => recorded.contains_key(id),
        Change::Forget(_) => true,
    };
    let others = if changes.iter().any(contradicts) {
        other_sessions(client).await?
    } else {
        0
    };
    let tx = client.transaction().await?;
    for change in &changes {
        match change {
            Change::Record(id, _) if others > 0 && recorded.contains_key(id) => {
                return Err(PgError::Config(format!(
                    "refusing to start: the database records another key under id {id} (no record uses it yet), and {others} other tokend connection(s) are open, which may seal with it: give this replica the fleet's keys{}",
                    match keys.origin() {
                        tokend_store::crypto::KeyOrigin::File(p)
                        | tokend_store::crypto::KeyOrigin::NewFile(p) =>
                            format!(" (not those of {})", p.display()),
                        _ => String::new(),
                    }
                )));
            }
            Change::Record(id, check) => {
                let json = serde_json::to_string(check)
                    .map_err(|e| PgError::Config(format!("key record: {e}")))?;
                tx.execute(
                    "INSERT INTO tokend_keys (key_id, check_value) VALUES ($1, $2)
                     ON CONFLICT (key_id) DO UPDATE SET check_value = EXCLUDED.check_value,
                       recorded_at = now()",
                    &[&i64::from(*id), &json],
                )
                .await?;
                tracing::info!(key_id = id, "key recorded in the database");
            }
            Change::Forget(id) if others > 0 => {
                tracing::info!(
                    key_id = id,
                    "no record uses key {id}, which these keys lack; it stays recorded while other replicas are connected"
                );
            }
            Change::Forget(id) => {
                tx.execute(
                    "DELETE FROM tokend_keys WHERE key_id = $1",
                    &[&i64::from(*id)],
                )
                .await?;
                tracing::info!(
                    key_id = id,
                    "key forgotten by the database: the keys lack it and no record uses it"
                );
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Records, in `tx`, the keys of records being imported (they opened with
/// `keys`) that the database does not record yet.
pub(crate) async fn record_for_import(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &Keyring,
    key_ids: impl IntoIterator<Item = u32>,
) -> Result<(), StoreError> {
    let recorded = load(tx).await.map_err(StoreError::from)?;
    for change in key_records::for_import(&recorded, keys, key_ids) {
        if let Change::Record(id, check) = change {
            let json = serde_json::to_string(&check)
                .map_err(|e| StoreError::Backend(format!("key record: {e}")))?;
            tx.execute(
                "INSERT INTO tokend_keys (key_id, check_value) VALUES ($1, $2)
                 ON CONFLICT (key_id) DO NOTHING",
                &[&i64::from(id), &json],
            )
            .await
            .map_err(|e| StoreError::from(PgError::from(e)))?;
        }
    }
    Ok(())
}
