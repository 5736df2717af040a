//! The PostgreSQL store against a real, throwaway PostgreSQL cluster.

use secrecy::SecretString;
use tokend_store::{Store, conformance, crypto::Keyring};

use super::*;

fn options(url: String) -> PgOptions {
    PgOptions::new(SecretString::from(url))
}

async fn fresh_store(prefix: &str) -> (PostgresStore, PgOptions) {
    let url = tokend_pgtest::cluster().database(prefix);
    let options = options(url);
    PostgresStore::migrate(&options).await.expect("migrate");
    let store = PostgresStore::connect(&options, Keyring::ephemeral())
        .await
        .expect("connect");
    (store, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite() {
    conformance::run_all(|| async { fresh_store("conformance").await.0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_schema_it_does_not_know_and_one_not_migrated() {
    let url = tokend_pgtest::cluster().database("schema");
    let options = options(url);
    let never = PostgresStore::connect(&options, Keyring::ephemeral()).await;
    assert!(
        matches!(never, Err(PgError::SchemaTooOld { found: 0, .. })),
        "{:?}",
        never.err()
    );
    assert_eq!(
        PostgresStore::migrate(&options).await.expect("migrate"),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert!(
        PostgresStore::migrate(&options)
            .await
            .expect("again")
            .is_empty()
    );
    let mut client = connect_one(&options).await.expect("client");
    client
        .execute(
            "INSERT INTO tokend_schema (version, name) VALUES ($1, 'from the future')",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .expect("insert");
    let newer = PostgresStore::connect(&options, Keyring::ephemeral()).await;
    assert!(
        matches!(newer, Err(PgError::SchemaTooNew { .. })),
        "{:?}",
        newer.err()
    );
    let migrating = migrate::migrate(&mut client).await;
    assert!(matches!(migrating, Err(PgError::SchemaTooNew { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_records_written_at_the_previous_schema() {
    let url = tokend_pgtest::cluster().database("upgrade");
    let options = options(url);
    let mut client = connect_one(&options).await.expect("client");
    migrate::migrate_to(&mut client, SCHEMA_VERSION - 1)
        .await
        .expect("previous schema");
    // A record as a build at the previous schema wrote it.
    let keys = Keyring::ephemeral();
    let record = conformance::record("from-v1", 3);
    let sealed = tokend_store::backend::encode(&record, &keys);
    client
        .execute(
            "INSERT INTO tokend_connections (id, provider, status, incarnation, revision, sealed)
             VALUES ($1, 'sandbox', 'active', $2, 3, $3)",
            &[&"from-v1", &(record.incarnation as i64), &sealed],
        )
        .await
        .expect("old record");
    assert!(matches!(
        PostgresStore::connect(&options, Keyring::ephemeral()).await,
        Err(PgError::SchemaTooOld { .. })
    ));
    assert_eq!(
        PostgresStore::migrate(&options).await.expect("migrate"),
        vec![SCHEMA_VERSION]
    );
    let store = PostgresStore::connect(&options, keys)
        .await
        .expect("connect");
    let back = store
        .get(&record.id)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(back.revision, 3);
    // And it changes with its event, like any record.
    let mut next = back.next_revision(back.updated_at);
    next.account_id = "changed".into();
    store.put(&next, Some(3), None).await.expect("put");
    let bounds = store.event_bounds().await.expect("bounds");
    assert_eq!(bounds.oldest, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_never_sees_a_secret() {
    let (store, options) = fresh_store("sealed").await;
    let record = conformance::record("secretive", 1);
    store.put(&record, None, None).await.expect("put");
    let client = connect_one(&options).await.expect("client");
    let dump: String = client
        .query_one(
            "SELECT string_agg(convert_from(sealed, 'UTF8'), '') FROM tokend_connections",
            &[],
        )
        .await
        .expect("dump")
        .get(0);
    assert!(dump.contains("secretive"), "the record is there");
    for secret in ["at-secretive-1", "rt-secretive-1", "rt-secretive-prev"] {
        assert!(!dump.contains(secret), "{secret} reached the database");
    }
    let events: Option<String> = client
        .query_one("SELECT string_agg(body, '') FROM tokend_events", &[])
        .await
        .expect("events")
        .get(0);
    assert!(!events.unwrap_or_default().contains("at-secretive"));
    assert!(!format!("{options:?}").contains("postgres://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_commit_reaches_the_watermark() {
    let (a, options) = fresh_store("notify").await;
    let b = PostgresStore::connect(&options, Keyring::ephemeral())
        .await
        .expect("second replica");
    let mut seen_by_b = b.event_watermark();
    a.put(&conformance::record("n1", 1), None, None)
        .await
        .expect("put");
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        seen_by_b.wait_for(|w| *w >= 1),
    )
    .await
    .expect("b learns of a's event")
    .expect("watermark");
}
