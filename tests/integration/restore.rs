//! Issue 25, item 6: `tokend restore` into a data dir that already holds
//! connections, against a real server's data and the sandbox's strict
//! rotation.

use std::process::Output;

use secrecy::ExposeSecret as _;
use tokend_store::Store as _;

use crate::harness::{TestServer, force, get};

fn tokend(args: &[&str], endpoint: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .env("TOKEND_ENDPOINT", endpoint)
        .env_remove("TOKEND_API_KEY")
        .env_remove("TOKEND_KEYS")
        .env_remove("TOKEND_KEY_FILE")
        .env_remove("TOKEND_DATA_DIR")
        .output()
        .expect("tokend runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stored refresh token of `id`.
async fn stored_refresh_token(server: &TestServer, id: &str) -> String {
    let store = server.open_store();
    let record = store
        .get(&tokend_core::ConnectionId::new(id).expect("id"))
        .await
        .expect("get")
        .expect("present");
    record
        .tokens
        .refresh_token
        .expect("refresh token")
        .expose_secret()
        .to_owned()
}

/// Invariants: a restore over a data dir never lowers a revision. A
/// connection refreshed since the backup (the backup's refresh token is
/// dead under strict rotation) makes `restore --force` refuse, naming it
/// and writing nothing; `--skip-older` restores the rest and keeps it as
/// it is; what is restored is written with its events. Afterwards the
/// refreshed connection still refreshes at the provider. Before,
/// `restore --force` wrote the backup's records over the dir's with no
/// revision check and no event, bringing back the dead refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_never_brings_back_a_rotated_refresh_token() {
    let mut server = TestServer::start().await;
    for id in ["refreshed", "kept", "deleted"] {
        server.import(id, &format!("acct-{id}"), 1800).await;
    }
    let dir = tempfile::tempdir().expect("dir");
    let backup = dir.path().join("tokend.backup");
    let out = tokend(
        &["backup", "--to", backup.to_str().expect("path")],
        &server.endpoint(),
    );
    assert!(out.status.success(), "{}", text(&out));

    // After the backup: one connection refreshed (the sandbox rotates its
    // refresh token; the backed-up one is dead), one deleted.
    let mut client = server.client().await;
    client
        .force_refresh(force("refreshed"))
        .await
        .expect("refresh");
    client
        .delete_connection(tokend_proto::v1::DeleteConnectionRequest {
            connection_id: "deleted".into(),
            force: false,
        })
        .await
        .expect("delete");
    server.stop().await;
    let live = stored_refresh_token(&server, "refreshed").await;
    let events_before = server
        .open_store()
        .event_bounds()
        .await
        .expect("bounds")
        .last;

    let key_file = dir.path().join("tokend.keys");
    std::fs::write(&key_file, server.keys_json()).expect("key file");
    let data = server.data_path();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            backup.to_str().expect("path"),
            "--data-dir",
            data.to_str().expect("path"),
            "--key-file",
            key_file.to_str().expect("path"),
            "--force",
        ];
        args.extend_from_slice(extra);
        tokend(&args, &server.endpoint())
    };
    let refused = restore(&[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("1 connection(s) are older in the backup")
            && text(&refused).contains("refreshed")
            && text(&refused).contains("--skip-older"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        stored_refresh_token(&server, "refreshed").await,
        live,
        "nothing written"
    );

    let out = restore(&["--skip-older"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restored 1 connections")
            && text(&out).contains("1 added")
            && text(&out).contains("1 already as backed up"),
        "{}",
        text(&out)
    );
    assert_eq!(
        stored_refresh_token(&server, "refreshed").await,
        live,
        "the newer record is kept"
    );
    // The restored connection came with its event.
    let store = server.open_store();
    let last = store.event_bounds().await.expect("bounds").last;
    let events = store
        .read_events(events_before, last, 10)
        .await
        .expect("events");
    assert_eq!(
        events
            .iter()
            .map(|e| e.event.connection_id.as_str())
            .collect::<Vec<_>>(),
        ["deleted"]
    );
    drop(store);

    // Served again: every connection serves, and the refreshed one still
    // refreshes at the provider (its live refresh token was kept).
    server.restart().await;
    let mut client = server.client().await;
    for id in ["refreshed", "kept", "deleted"] {
        client
            .get_token(get(id))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    client
        .force_refresh(force("refreshed"))
        .await
        .expect("the kept refresh token is live at the provider");
}
