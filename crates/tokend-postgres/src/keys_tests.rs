//! Issue 25, item 5 on PostgreSQL: the key records replicas share, against
//! a real, throwaway cluster.

use secrecy::SecretString;
use tokend_store::{Store, conformance, crypto::KeyFile};

use super::*;

async fn fresh(prefix: &str) -> PgOptions {
    let options = PgOptions::new(SecretString::from(
        tokend_pgtest::cluster().database(prefix),
    ));
    PostgresStore::migrate(&options).await.expect("migrate");
    options
}

async fn recorded_ids(options: &PgOptions) -> Vec<i64> {
    let client = connect_one(options).await.expect("client");
    client
        .query("SELECT key_id FROM tokend_keys ORDER BY key_id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Invariant: a replica whose keys lack the key the records are sealed
/// with (a key file made afresh numbers its key 1 too) refuses to start,
/// naming the key and where its keys came from, and writes nothing. Before,
/// it started, sealed new installs with a key only it had, and overwrote
/// the records it could not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_key_the_records_use_refuses_to_start() {
    let options = fresh("keys_refuse").await;
    let fleet = KeyFile::generate();
    {
        let store = PostgresStore::connect(&options, fleet.keyring().expect("keys"))
            .await
            .expect("connect");
        store
            .put(&conformance::record("sealed-1", 1), None, None)
            .await
            .expect("put");
    }
    assert_eq!(recorded_ids(&options).await, [1]);
    let stray = KeyFile::generate().keyring().expect("keys").with_origin(
        tokend_store::crypto::KeyOrigin::File("/var/lib/tokend/tokend.keys".into()),
    );
    let refused = PostgresStore::connect(&options, stray)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("sealed with key 1"), "{refused}");
    assert!(refused.contains("/var/lib/tokend/tokend.keys"), "{refused}");
    let store = PostgresStore::connect(&options, fleet.keyring().expect("keys"))
        .await
        .expect("the fleet's keys");
    let id = tokend_core::ConnectionId::new("sealed-1").expect("id");
    assert!(store.get(&id).await.expect("readable").is_some());
}

/// Invariant: while another replica is connected, a replica with another
/// key under a recorded id is refused even though no record uses that key
/// yet: the running replica may seal with the recorded key at any moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_cannot_take_over_a_recorded_id_while_a_replica_runs() {
    let options = fresh("keys_takeover").await;
    let running = PostgresStore::connect(&options, KeyFile::generate().keyring().expect("keys"))
        .await
        .expect("first replica");
    let refused = PostgresStore::connect(&options, KeyFile::generate().keyring().expect("keys"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("another key under id 1"), "{refused}");
    drop(running);
}

/// Invariant: a database from before key records records, at the first
/// connect after migration 7, the keys its records use (proven by a record
/// that opens); keys that open none of them are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_key_records_records_the_keys_its_records_use() {
    let options = fresh("keys_bootstrap").await;
    let fleet = KeyFile::generate();
    let sealed = tokend_store::backend::encode(
        &conformance::record("before", 1),
        &fleet.keyring().expect("keys"),
    );
    {
        let client = connect_one(&options).await.expect("client");
        client
            .execute(
                "INSERT INTO tokend_connections (id, provider, status, incarnation, revision, sealed)
                 VALUES ('before', 'sandbox', 'active', 1, 1, $1)",
                &[&sealed],
            )
            .await
            .expect("record");
        client
            .execute("UPDATE tokend_sealing SET binding = 2", &[])
            .await
            .expect("bound already");
    }
    let refused = PostgresStore::connect(&options, KeyFile::generate().keyring().expect("keys"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("store: 1 of its records"), "{refused}");
    assert!(recorded_ids(&options).await.is_empty(), "nothing recorded");
    PostgresStore::connect(&options, fleet.keyring().expect("keys"))
        .await
        .expect("the keys that sealed it");
    assert_eq!(recorded_ids(&options).await, [1]);
}
