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

    // And back, into a fresh data dir a server can then serve.
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
