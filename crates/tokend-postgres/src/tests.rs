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
    let url = tokend_pgtest::cluster().database("notify");
    let options = options(url);
    PostgresStore::migrate(&options).await.expect("migrate");
    // Replicas share their keys.
    let keys = tokend_store::crypto::KeyFile::generate();
    let a = PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("connect");
    let b = PostgresStore::connect(&options, keys.keyring().expect("keys"))
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

/// Options verifying the server against `ca` (PEM) only.
fn verify_full(url: String, ca: &std::path::Path) -> PgOptions {
    PgOptions {
        tls: Tls::VerifyFull {
            ca_file: Some(ca.to_path_buf()),
        },
        ..options(url)
    }
}

/// Whether this session of `options` runs over TLS, as the server sees it.
async fn session_uses_tls(options: &PgOptions) -> bool {
    connect_one(options)
        .await
        .expect("client")
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

/// The errors `migrate` (one connection) and `connect` (the pool) give.
async fn refusals(options: &PgOptions) -> [String; 2] {
    let migrate = match PostgresStore::migrate(options).await {
        Err(e @ PgError::Db(_)) => e.to_string(),
        other => panic!("migrate should fail to connect: {other:?}"),
    };
    let connect = match PostgresStore::connect(options, Keyring::ephemeral()).await {
        Err(e @ PgError::Db(_)) => e.to_string(),
        Err(other) => panic!("connect should fail to connect: {other:?}"),
        Ok(_) => panic!("connect should fail to connect"),
    };
    [migrate, connect]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_tls_verified_against_the_given_ca() {
    let (cluster, ca) = tokend_pgtest::Cluster::dedicated_tls();
    for host in ["localhost", "127.0.0.1"] {
        let db = cluster.create_database("tls");
        let options = verify_full(cluster.url_for_host(&db, host), &ca);
        assert_eq!(
            PostgresStore::migrate(&options).await.expect("migrate"),
            (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
            "{host}"
        );
        assert_eq!(
            PostgresStore::schema_version(&options).await.expect("v"),
            SCHEMA_VERSION
        );
        let keys = tokend_store::crypto::KeyFile::generate();
        let a = PostgresStore::connect(&options, keys.keyring().expect("keys"))
            .await
            .expect("connect");
        let record = conformance::record("over-tls", 1);
        a.put(&record, None, None).await.expect("put");
        let back = a.get(&record.id).await.expect("get").expect("stored");
        assert_eq!((back.id.as_str(), back.revision), ("over-tls", 1), "{host}");
        // The event log's follower connects over TLS too.
        let b = PostgresStore::connect(&options, keys.keyring().expect("keys"))
            .await
            .expect("second replica");
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            b.event_watermark().wait_for(|w| *w >= 1),
        )
        .await
        .expect("b learns of a's event")
        .expect("watermark");
        assert!(session_uses_tls(&options).await, "{host}");
    }
    // The options decide TLS: `sslmode=disable` in the URL does not turn
    // it off.
    let db = cluster.create_database("tls_url");
    let url = format!("{}?sslmode=disable", cluster.url_for_host(&db, "localhost"));
    let options = verify_full(url, &ca);
    PostgresStore::migrate(&options).await.expect("migrate");
    assert!(session_uses_tls(&options).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_tls_server_whose_certificate_does_not_verify() {
    let (cluster, ca) = tokend_pgtest::Cluster::dedicated_tls();
    let db = cluster.create_database("tls_bad");
    let url = cluster.url_for_host(&db, "localhost");
    // A CA that issued nothing the server has.
    let unrelated = tokend_pgtest::unrelated_ca_file("some other CA");
    for e in refusals(&verify_full(url.clone(), unrelated.path())).await {
        assert!(
            e.contains("invalid peer certificate") && e.contains("UnknownIssuer"),
            "{e}"
        );
    }
    // One named like the real issuer: only its signature differs.
    let impostor = tokend_pgtest::unrelated_ca_file(tokend_pgtest::TLS_CA_NAME);
    for e in refusals(&verify_full(url.clone(), impostor.path())).await {
        assert!(
            e.contains("invalid peer certificate") && e.contains("BadSignature"),
            "{e}"
        );
    }
    // The system's roots (no CA file) do not know the test CA either.
    let system = PgOptions {
        tls: Tls::VerifyFull { ca_file: None },
        ..options(url)
    };
    for e in refusals(&system).await {
        assert!(e.contains("invalid peer certificate"), "{e}");
    }
    // The right CA, but a host name the certificate does not name (the
    // address is the server's): the name is checked, not just the chain.
    let elsewhere = format!(
        "postgres://postgres@db.example.test:{}/{db}?hostaddr=127.0.0.1",
        cluster.port()
    );
    for e in refusals(&verify_full(elsewhere, &ca)).await {
        assert!(
            e.contains("invalid peer certificate") && e.contains("not valid for name"),
            "{e}"
        );
    }
    // Nothing was written through any of those.
    let good = verify_full(cluster.url_for_host(&db, "localhost"), &ca);
    assert_eq!(PostgresStore::schema_version(&good).await.expect("v"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_by_a_server_requiring_tls() {
    let (cluster, _ca) = tokend_pgtest::Cluster::dedicated_tls();
    let db = cluster.create_database("tls_plain");
    for host in ["localhost", "127.0.0.1"] {
        let plain = PgOptions {
            tls: Tls::Disable,
            ..options(cluster.url_for_host(&db, host))
        };
        for e in refusals(&plain).await {
            assert!(
                e.contains("no pg_hba.conf entry")
                    && e.contains("no encryption")
                    && e.contains("28000"),
                "{e}"
            );
        }
    }
}

/// Keys as a key file made before the binding holds them.
fn pre_binding_keys() -> tokend_store::crypto::KeyFile {
    let mut file = tokend_store::crypto::KeyFile::generate();
    file.keys[0].bound = false;
    file
}

/// The stored document of `id`, as JSON.
async fn stored_json(client: &tokio_postgres::Client, id: &str) -> serde_json::Value {
    let bytes: Vec<u8> = client
        .query_one(
            "SELECT sealed FROM tokend_connections WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0);
    serde_json::from_slice(&bytes).expect("json")
}

async fn binding(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT binding FROM tokend_sealing", &[])
        .await
        .expect("marker")
        .get(0)
}

/// Guards issue 24 item 2 on PostgreSQL: records sealed before the binding
/// (schema 4 and older) are re-sealed by the first connect, with a wrong
/// key file refused first (nothing re-sealed, the marker left at 1); after
/// the upgrade a record written back in the old form (a downgrade) or
/// repointed to another provider or host by a database writer is `Corrupt`
/// for that connection only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_bound_at_connect_and_a_database_writer_cannot_repoint_one() {
    let url = tokend_pgtest::cluster().database("binding");
    let options = options(url);
    let mut client = connect_one(&options).await.expect("client");
    migrate::migrate_to(&mut client, 4)
        .await
        .expect("the schema before the binding");
    let keys = pre_binding_keys();
    let ring = keys.keyring().expect("keys");
    let records: Vec<_> = ["victim", "bystander", "third"]
        .iter()
        .map(|id| conformance::record(id, 2))
        .collect();
    let mut unbound = Vec::new();
    for r in &records {
        let sealed = tokend_store::backend::encode_unbound(r, &ring);
        client
            .execute(
                "INSERT INTO tokend_connections (id, provider, status, incarnation, revision, sealed)
                 VALUES ($1, 'sandbox', 'active', $2, 2, $3)",
                &[&r.id.as_str(), &(r.incarnation as i64), &sealed],
            )
            .await
            .expect("old record");
        unbound.push(sealed);
    }
    assert_eq!(
        PostgresStore::migrate(&options).await.expect("migrate"),
        (5..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(binding(&client).await, 1);
    let wrong = PostgresStore::connect(&options, Keyring::ephemeral()).await;
    assert!(
        matches!(&wrong, Err(PgError::Config(m)) if m.contains("does not open")),
        "{:?}",
        wrong.err()
    );
    assert_eq!(
        binding(&client).await,
        1,
        "nothing upgraded with wrong keys"
    );
    assert_eq!(stored_json(&client, "victim").await["schema"], 1);

    let store = PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("connect upgrades");
    assert_eq!(binding(&client).await, 2);
    for r in &records {
        assert_eq!(stored_json(&client, r.id.as_str()).await["schema"], 2);
        let back = store.get(&r.id).await.expect("get").expect("kept");
        assert_eq!((back.revision, &back.params), (r.revision, &r.params));
    }
    // A second replica finds the work done.
    PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("second replica");

    // The downgrade: the old form written back.
    client
        .execute(
            "UPDATE tokend_connections SET sealed = $2 WHERE id = $1",
            &[&"victim", &unbound[0]],
        )
        .await
        .expect("downgrade");
    let err = store.get(&records[0].id).await.expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // A database writer repoints the third connection's provider and host.
    client
        .execute(
            "UPDATE tokend_connections SET provider = 'attacker',
               sealed = convert_to(replace(replace(convert_from(sealed, 'UTF8'),
                 '\"provider\":\"sandbox\"', '\"provider\":\"attacker\"'),
                 '\"subdomain\":\"acme\"', '\"subdomain\":\"attacker\"'), 'UTF8')
             WHERE id = 'third'",
            &[],
        )
        .await
        .expect("repoint");
    assert_eq!(stored_json(&client, "third").await["provider"], "attacker");
    let err = store.get(&records[2].id).await.expect_err("refused");
    assert!(
        matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("does not decrypt")),
        "{err}"
    );
    assert!(store.get(&records[1].id).await.expect("get").is_some());
    let listed = store
        .list(&tokend_store::ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "only the bystander opens");
}

/// Issue 24, item 6. Invariants: the first id past a prefix is computed
/// byte-wise (ASCII incremented, nothing for an empty prefix), and a
/// prefix listing's bounds are conditions of the primary key's index, so
/// PostgreSQL reads the range only, not the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_listing_is_a_range_of_the_primary_key() {
    use crate::store::{LIST_RANGE, prefix_end};
    assert_eq!(prefix_end("tenant-a-").as_deref(), Some("tenant-a."));
    assert_eq!(prefix_end("az").as_deref(), Some("a{"));
    assert_eq!(prefix_end("a\u{7f}").as_deref(), Some("b"));
    assert_eq!(prefix_end("a\u{e9}").as_deref(), Some("b"));
    assert_eq!(prefix_end(""), None);

    let (store, options) = fresh_store("prefix_range").await;
    for i in 0..300 {
        let id = format!("tenant-{}-{i:03}", if i % 10 == 0 { 'a' } else { 'b' });
        store
            .put(&conformance::record(&id, 1), None, None)
            .await
            .expect("create");
    }
    let client = connect_one(&options).await.expect("client");
    client
        .batch_execute("ANALYZE tokend_connections; SET enable_seqscan = off")
        .await
        .expect("analyze");
    let plan: Vec<String> = client
        .query(
            &format!("EXPLAIN {LIST_RANGE}"),
            &[
                &"",
                &None::<String>,
                &None::<String>,
                &100i64,
                &"tenant-a-",
                &"tenant-a.",
            ],
        )
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    let cond = plan
        .lines()
        .find(|l| l.contains("Index Cond"))
        .unwrap_or_else(|| panic!("no index condition: {plan}"));
    assert!(
        cond.contains("id >=") && cond.contains("id <"),
        "the prefix's bounds are index conditions: {plan}"
    );
    assert!(plan.contains("tokend_connections_pkey"), "{plan}");
}
