//! The upgrade of a database's records to binding 2 (migration 5): every
//! record sealed the old way is re-sealed with its secrets bound to its
//! provider, account, params and metadata, once, by the first replica that
//! connects, under the migration lock; then the marker says 2 and the old
//! form is refused (`tokend_store::backend::decode`). A record that does
//! not open stops the upgrade (and the connect) with the marker left at 1.

use tokend_store::{backend::upgrade, crypto::Keyring};

use crate::{PgError, migrate::MIGRATION_LOCK};

/// The binding every record is sealed with once upgraded.
const BOUND: i32 = 2;

/// Records re-sealed per transaction.
const PAGE: i64 = 500;

async fn binding(client: &tokio_postgres::Client) -> Result<i32, PgError> {
    Ok(client
        .query_one("SELECT binding FROM tokend_sealing", &[])
        .await?
        .get(0))
}

/// Re-seals the records sealed before the binding, unless the database is
/// upgraded already. Replicas connecting together wait on the migration
/// lock, and all but the first find the work done.
pub(crate) async fn upgrade_records(
    client: &mut deadpool_postgres::Client,
    keys: &Keyring,
) -> Result<(), PgError> {
    if binding(client).await? >= BOUND {
        return Ok(());
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = reseal(client, keys).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn reseal(client: &mut deadpool_postgres::Client, keys: &Keyring) -> Result<(), PgError> {
    if binding(client).await? >= BOUND {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut resealed = 0u64;
    let mut after = String::new();
    loop {
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, sealed FROM tokend_connections WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
                &[&after, &PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        for row in &rows {
            let id: &str = row.get(0);
            match upgrade(id.as_bytes(), row.get(1), keys) {
                Ok(None) => {}
                Ok(Some(bound)) => {
                    tx.execute(
                        "UPDATE tokend_connections SET sealed = $2 WHERE id = $1",
                        &[&id, &bound],
                    )
                    .await?;
                    resealed += 1;
                }
                // The marker stays 1 and this page is rolled back: a wrong
                // key file must not leave every record unreadable for good,
                // and a record forged in the old form must not be let in.
                Err(e) => {
                    return Err(PgError::Config(format!(
                        "the upgrade to binding {BOUND} re-seals every record, and one does not open ({e}); start with the fleet's key file (or TOKEND_KEYS), or remove that connection with the tokend that wrote it"
                    )));
                }
            }
        }
        tx.commit().await?;
    }
    client
        .execute("UPDATE tokend_sealing SET binding = $1", &[&BOUND])
        .await?;
    tracing::info!(
        resealed,
        took_ms = started.elapsed().as_millis() as u64,
        "sealed records bound to their provider, account and params"
    );
    Ok(())
}
