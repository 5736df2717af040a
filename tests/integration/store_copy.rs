//! `tokend store copy` between a real server's sled data dir and a real
//! PostgreSQL database, both ways, verified by the command and again here.

use secrecy::{ExposeSecret as _, SecretString};
use tokend_store::Store as _;

use crate::harness::TestServer;

fn copy(from: &str, to: &str, keys: &str, url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["store", "copy", "--from", from, "--to", to])
        .env("TOKEND_KEYS", keys)
        .env("COPY_DATABASE_URL", url)
        .env_remove("TOKEND_KEY_FILE")
        .output()
        .expect("tokend runs")
}

/// Guards: every connection crosses from sled to PostgreSQL and back with
/// its tokens intact; a non-empty target is refused and left untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_connection_from_sled_to_postgres_and_back() {
    let mut server = TestServer::start().await;
    let mut issued = Vec::new();
    for i in 0..30 {
        let (_, tokens) = server
            .import(&format!("copy-{i:02}"), &format!("acct-{i}"), 1800)
            .await;
        issued.push(tokens);
    }
    server.stop().await;
    let keys = server.keys_json();
    let url = tokend_pgtest::cluster().database("copy");
    let sled_dir = format!("sled:{}", server.data_path().display());

    let out = copy(&sled_dir, "env:COPY_DATABASE_URL", &keys, &url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copied 30 connection(s)"), "{stdout}");
    assert!(!stdout.contains("postgres://"), "the URL is never printed");

    // Read the database independently of the command.
    let options = tokend_postgres::PgOptions::new(SecretString::from(url.clone()));
    let keyring = tokend_store::crypto::KeyFile::parse(keys.as_bytes())
        .and_then(|k| k.keyring())
        .expect("keys");
    let pg = tokend_postgres::PostgresStore::connect(&options, keyring)
        .await
        .expect("connect");
    for (i, tokens) in issued.iter().enumerate() {
        let id = tokend_core::ConnectionId::new(format!("copy-{i:02}")).expect("id");
        let record = pg.get(&id).await.expect("get").expect("copied");
        assert_eq!(
            record.tokens.access_token.expose_secret(),
            tokens.access_token
        );
        assert_eq!(
            record
                .tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            Some(tokens.refresh_token.clone())
        );
    }

    // Copying again into the now full database is refused.
    let again = copy(&sled_dir, "env:COPY_DATABASE_URL", &keys, &url);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds 30"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // And back, into a fresh data dir a server can then serve, once this
    // test's own reader is gone (a live source is refused).
    drop(pg);
    until_no_session(&options).await;
    let back = tempfile::tempdir().expect("dir");
    let back_dir = back.path().join("data");
    let out = copy(
        "env:COPY_DATABASE_URL",
        &format!("sled:{}", back_dir.display()),
        &keys,
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyring = tokend_store::crypto::KeyFile::parse(keys.as_bytes())
        .and_then(|k| k.keyring())
        .expect("keys");
    let sled = tokend_store::SledStore::open(&back_dir, keyring).expect("open the copy");
    let page = sled.export_sealed(None, 100).await.expect("export");
    assert_eq!(page.records.len(), 30);
    let first = sled
        .get(&tokend_core::ConnectionId::new("copy-00").expect("id"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        first.tokens.access_token.expose_secret(),
        issued[0].access_token
    );
}

/// Waits until no tokend connection but the copy's own is open on the
/// database (a dropped store's connections close a moment after the drop).
async fn until_no_session(options: &tokend_postgres::PgOptions) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokend_postgres::PostgresStore::activity(options)
        .await
        .expect("activity")
        .sessions
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "connections still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Issue 25, item 6. Invariant: a live database is never copied: one a
/// replica is connected to, or with a refresh lease held (a refresh in
/// progress), is refused before anything is read, and no target is
/// created. A copy of a live store misses what is written during it, and
/// serving it would bring back refresh tokens rotated since. Before, the
/// copy went ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_database_is_not_copied() {
    let url = tokend_pgtest::cluster().database("copy_live");
    let options = tokend_postgres::PgOptions::new(SecretString::from(url.clone()));
    tokend_postgres::PostgresStore::migrate(&options)
        .await
        .expect("migrate");
    let keys = tokend_store::crypto::KeyFile::generate();
    let keys_json = serde_json::to_string(&keys).expect("keys");
    let replica = tokend_postgres::PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("a running replica");
    replica
        .put(&tokend_store::conformance::record("live-1", 1), None, None)
        .await
        .expect("put");
    let target = tempfile::tempdir().expect("dir");
    let target_dir = target.path().join("data");
    let to = format!("sled:{}", target_dir.display());

    let refused = copy("env:COPY_DATABASE_URL", &to, &keys_json, &url);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("other tokend connection(s) open"),
        "{stderr}"
    );
    assert!(!target_dir.exists(), "nothing created");

    // The replica stopped while a refresh held its lease: still live.
    replica
        .try_acquire_refresh_lease(
            &tokend_core::ConnectionId::new("live-1").expect("id"),
            "replica-1",
            std::time::Duration::from_secs(300),
            tokend_core::Clock::system().now(),
        )
        .await
        .expect("lease")
        .expect("granted");
    drop(replica);
    until_no_session(&options).await;
    let refused = copy("env:COPY_DATABASE_URL", &to, &keys_json, &url);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("1 refresh lease(s) held"), "{stderr}");
    assert!(!target_dir.exists(), "nothing created");

    // Once quiet, the copy goes through.
    let client = tokend_postgres::PostgresStore::connect(&options, keys.keyring().expect("keys"))
        .await
        .expect("connect");
    let lease = tokend_store::Lease {
        id: tokend_core::ConnectionId::new("live-1").expect("id"),
        holder: "replica-1".into(),
        fence: 1,
        expires_at: tokend_core::Clock::system().now(),
        in_doubt: false,
    };
    client
        .release_refresh_lease(&lease, false)
        .await
        .expect("release");
    drop(client);
    until_no_session(&options).await;
    let out = copy("env:COPY_DATABASE_URL", &to, &keys_json, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 1 connection(s)"));
}
