//! The PostgreSQL `Store`: connection records, fenced refresh leases and
//! the event log in one database that several tokend replicas share.
//!
//! Every change is one SQL transaction: the record's compare-and-swap on
//! `(incarnation, revision)`, checked against the newest lease's fence, and
//! the change's events, numbered under the log's row lock so the sequence
//! is contiguous and in commit order fleet-wide. Tokens are sealed by
//! tokend's own keys before they are sent (`tokend_store::backend::encode`):
//! the database never sees a plaintext secret.
//!
//! The committed end of the log reaches every replica through
//! `LISTEN/NOTIFY`, with a periodic read as a fallback (`listen.rs`).

mod binding;
mod clock;
mod keys;
mod listen;
pub mod migrate;
mod options;
mod store;
mod timed;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokend_store::{StoreError, Watermark, crypto::Keyring};

pub use migrate::{MIGRATIONS, SCHEMA_VERSION};
pub use options::{PgOptions, Tls};

/// What can go wrong reaching or preparing the database. Never carries the
/// URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database: {0}")]
    Db(String),
    #[error("database connection pool: {0}")]
    Pool(String),
    #[error("database configuration: {0}")]
    Config(String),
    #[error(
        "the database's schema is at version {found}, newer than this tokend knows ({known}): upgrade tokend before pointing it at this database"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error(
        "the database's schema is at version {found} and this tokend needs {needed}: run `tokend migrate` first"
    )]
    SchemaTooOld { found: i32, needed: i32 },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Db(describe(&e)),
            deadpool_postgres::PoolError::Timeout(_) => {
                PgError::Pool("timed out waiting for a database connection".into())
            }
            other => PgError::Pool(other.to_string()),
        }
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A driver error in words: the server's SQLSTATE and message when it sent
/// one (they name tables and ids, never parameters' values), else the
/// driver's own description.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// The PostgreSQL store. Cheap to clone: the pool and state are shared.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    keys: std::sync::RwLock<Arc<Keyring>>,
    log_id: u64,
    /// The highest sequence number known committed, from this replica's
    /// own commits, notifications and periodic reads.
    watermark: Arc<Watermark>,
    /// Follows the log's committed end; stopped when the store is dropped.
    listener: tokio::task::JoinHandle<()>,
    /// The longest one store call may take (`timed.rs`).
    call_timeout: std::time::Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects, checks the schema version (see [`migrate`]), re-seals
    /// records sealed before the binding (`binding.rs`, once per database)
    /// and starts following the event log. Fails when the database is unreachable or
    /// its schema is not the one this build needs.
    pub async fn connect(options: &PgOptions, keys: Keyring) -> Result<Self, PgError> {
        let config = options.driver_config()?;
        let tls = options.connector()?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A pooled connection is checked (an empty query, within
                // `recycle_timeout`) before it is handed out: one that went
                // silent while idle is replaced, not waited on.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        // Every idle connection may have gone silent at once (a network
        // blip): a call then checks each in turn before it opens a new one,
        // so one check may take only a quarter of the call's time limit.
        let recycle_timeout = (options.call_timeout() / 4)
            .min(options.connect_timeout)
            .max(std::time::Duration::from_millis(100));
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(recycle_timeout))
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        migrate::check(&client).await?;
        binding::upgrade_records(&mut client, &keys).await?;
        // Before anything is sealed: refuses keys that lack one the
        // records use, and records the active key.
        keys::reconcile(&mut client, &keys).await?;
        let row = client
            .query_one("SELECT log_id, last_seq FROM tokend_log", &[])
            .await?;
        let log_id = row.get::<_, i64>(0) as u64;
        let last = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        drop(client);
        let watermark = Arc::new(Watermark::new(last));
        let listener = tokio::spawn(listen::follow(
            listen::Follow {
                config,
                tls,
                pool: pool.clone(),
                poll_interval: options.poll_interval,
                call_timeout: options.call_timeout(),
            },
            Arc::clone(&watermark),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                keys: std::sync::RwLock::new(Arc::new(keys)),
                log_id,
                watermark,
                listener,
                call_timeout: options.call_timeout(),
            }),
        })
    }

    /// Applies the embedded migrations the database lacks (`tokend
    /// migrate`). Returns the versions applied; empty when up to date.
    pub async fn migrate(options: &PgOptions) -> Result<Vec<i32>, PgError> {
        let mut client = connect_one(options).await?;
        migrate::migrate(&mut client).await
    }

    /// The database's schema version (0 when never migrated).
    pub async fn schema_version(options: &PgOptions) -> Result<i32, PgError> {
        let client = connect_one(options).await?;
        migrate::current_version(&client).await
    }

    /// Writes records exactly as another store keeps them (`(id, sealed
    /// bytes)`, as `Store::export_sealed` gives them), after checking that
    /// each one opens with this store's keys, so the wrong key file fails
    /// before anything is written. One transaction: all or nothing. Records
    /// already present are replaced. No events are appended: the copy
    /// starts this log afresh.
    pub async fn import_sealed(&self, records: &[(String, Vec<u8>)]) -> Result<usize, StoreError> {
        let keys = self.keys();
        let mut rows = Vec::with_capacity(records.len());
        for (id, bytes) in records {
            let record = tokend_store::backend::decode(id.as_bytes(), bytes, &keys)?;
            if record.id.as_str() != id {
                return Err(StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("the record inside is {}", record.id),
                });
            }
            rows.push(record);
        }
        let mut client = self.inner.pool.get().await.map_err(PgError::from)?;
        let tx = client.transaction().await.map_err(PgError::from)?;
        // Every key these records use is recorded with them.
        keys::record_for_import(
            &tx,
            &keys,
            records
                .iter()
                .flat_map(|(_, bytes)| tokend_store::backend::key_ids(bytes)),
        )
        .await?;
        for (record, (_, sealed)) in rows.iter().zip(records) {
            store::upsert_sealed(&tx, record, sealed).await?;
        }
        tx.commit().await.map_err(PgError::from)?;
        Ok(records.len())
    }

    /// What else is using the database now, read through one connection
    /// of its own (so none of this process's): for `tokend store copy`,
    /// which must not copy a store replicas are still writing.
    pub async fn activity(options: &PgOptions) -> Result<Activity, PgError> {
        let client = connect_one(options).await?;
        let sessions = keys::other_sessions(&client).await?;
        let migrated: bool = client
            .query_one("SELECT to_regclass('tokend_leases') IS NOT NULL", &[])
            .await?
            .get(0);
        let live_leases: i64 = if migrated {
            let now_ms = tokend_core::Clock::system().now().unix_millis();
            client
                .query_one(
                    "SELECT count(*) FROM tokend_leases WHERE NOT released AND expires_at_ms > $1",
                    &[&now_ms],
                )
                .await?
                .get(0)
        } else {
            0
        };
        Ok(Activity {
            sessions: u64::try_from(sessions).unwrap_or(0),
            live_leases: u64::try_from(live_leases).unwrap_or(0),
        })
    }

    /// Removes the records `ids` (no events): undoes an import into a
    /// database that held none of them.
    pub async fn remove_imported(&self, ids: &[String]) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await.map_err(PgError::from)?;
        Ok(client
            .execute("DELETE FROM tokend_connections WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(PgError::from)?)
    }

    /// How many connection records the database holds.
    pub async fn count(&self) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await.map_err(PgError::from)?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM tokend_connections", &[])
            .await
            .map_err(PgError::from)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Switches to a new keyring (after `tokend keys rotate`), once the
    /// database's key records accept it: its active key is recorded before
    /// anything is sealed with it.
    pub async fn set_keyring(&self, keys: Keyring) -> Result<(), PgError> {
        let mut client = self.inner.pool.get().await?;
        keys::reconcile(&mut client, &keys).await?;
        *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.inner.keys.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What else uses a database ([`PostgresStore::activity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// Other tokend connections open on it (replicas, tools).
    pub sessions: u64,
    /// Refresh leases held and not yet expired: a refresh in progress.
    pub live_leases: u64,
}

/// One connection outside the pool, driven by its own task.
pub(crate) async fn connect_one(options: &PgOptions) -> Result<tokio_postgres::Client, PgError> {
    let config = options.driver_config()?;
    let (client, connection) = config.connect(options.connector()?).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "database connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod blackhole;
#[cfg(test)]
mod dead_link_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod keys_tests;
