//! The schema, embedded and versioned: `tokend migrate` applies what is
//! missing; opening a store checks the version and refuses a schema newer
//! than this build knows, or older than it needs.

use tokio_postgres::Client;

use crate::PgError;

/// One schema change, applied in one transaction.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only: a released migration never
/// changes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "records and leases",
        sql: include_str!("migrations/0001_records_and_leases.sql"),
    },
    Migration {
        version: 2,
        name: "event log",
        sql: include_str!("migrations/0002_event_log.sql"),
    },
    Migration {
        version: 3,
        name: "reader claims",
        sql: include_str!("migrations/0003_reader_claims.sql"),
    },
    Migration {
        version: 4,
        name: "status index",
        sql: include_str!("migrations/0004_status_index.sql"),
    },
    Migration {
        version: 5,
        name: "sealing binding",
        sql: include_str!("migrations/0005_sealing_binding.sql"),
    },
    Migration {
        version: 6,
        name: "unreleased leases index",
        sql: include_str!("migrations/0006_live_leases_index.sql"),
    },
    Migration {
        version: 7,
        name: "key records",
        sql: include_str!("migrations/0007_key_records.sql"),
    },
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Held while migrating, so replicas started together migrate once.
pub(crate) const MIGRATION_LOCK: i64 = 0x746f_6b65_6e64_0001;

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS tokend_schema (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The database's schema version: 0 when tokend never migrated it.
pub async fn current_version(client: &Client) -> Result<i32, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tokend_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM tokend_schema", &[])
        .await?;
    Ok(row.get(0))
}

/// Refuses a schema this build cannot use.
pub async fn check(client: &Client) -> Result<(), PgError> {
    match current_version(client).await? {
        v if v == SCHEMA_VERSION => Ok(()),
        v if v > SCHEMA_VERSION => Err(PgError::SchemaTooNew {
            found: v,
            known: SCHEMA_VERSION,
        }),
        v => Err(PgError::SchemaTooOld {
            found: v,
            needed: SCHEMA_VERSION,
        }),
    }
}

/// Applies every migration up to `target` not yet applied, each in its
/// own transaction, under an advisory lock. Returns the versions applied.
pub async fn migrate_to(client: &mut Client, target: i32) -> Result<Vec<i32>, PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply(client, target).await;
    // Unlocked even when a migration failed; a lost connection unlocks too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

/// Applies every migration not yet applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    migrate_to(client, SCHEMA_VERSION).await
}

async fn apply(client: &mut Client, target: i32) -> Result<Vec<i32>, PgError> {
    client.batch_execute(SCHEMA_TABLE).await?;
    let current = current_version(client).await?;
    if current > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO tokend_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}
