//! Old backups (restored only when trusted, and bound on the way in) and
//! unreadable records (replaced or deleted only when forced).

use super::*;

/// A backup file holding `records` as `tokend backup` writes one, with the
/// header's store format `format_version`.
fn write_backup(path: &Path, format_version: u32, records: &[(&str, Vec<u8>)]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut text = serde_json::json!({
        "kind": "tokend backup",
        "version": 1,
        "format_version": format_version,
        "records": records.len(),
        "created_at": "2026-01-01T00:00:00Z",
    })
    .to_string();
    for (id, sealed) in records {
        text.push('\n');
        text.push_str(
            &serde_json::json!({"connection_id": id, "sealed": b64.encode(sealed)}).to_string(),
        );
    }
    text.push('\n');
    std::fs::write(path, text).expect("backup");
}

/// Guards the upgrade path of issue 24 item 2 through backups: a backup
/// from before the binding (format 3, records sealed unbound) is refused
/// by `tokend restore` unless the operator vouches for the file with
/// `--trust-unbound-backup`; then its records are re-sealed under the
/// binding on the way in, every field intact. A record forged in the old
/// form under a key made with the binding is refused even then, and
/// nothing is written.
#[test]
fn an_old_backup_is_restored_only_when_trusted_and_comes_back_bound() {
    use secrecy::ExposeSecret as _;
    use tokend_store::{Store as _, crypto::KeyFile};
    let dir = tempfile::tempdir().expect("dir");
    let restore = |backup: &Path, data: &Path, keys: &Path, trust: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
        command
            .arg("restore")
            .arg("--from")
            .arg(backup)
            .arg("--data-dir")
            .arg(data)
            .arg("--key-file")
            .arg(keys)
            .env_remove("TOKEND_KEYS");
        if trust {
            command.arg("--trust-unbound-backup");
        }
        command.output().expect("restore")
    };
    // A key file from before the binding (no `bound` flag).
    let mut old_keys = KeyFile::generate();
    old_keys.keys[0].bound = false;
    let old_key_path = dir.path().join("old.keys");
    old_keys.save(&old_key_path).expect("key file");
    let record = tokend_store::conformance::record("from-2025", 4);
    let unbound =
        tokend_store::backend::encode_unbound(&record, &old_keys.keyring().expect("keys"));
    let backup = dir.path().join("old.backup");
    write_backup(&backup, 3, &[("from-2025", unbound)]);

    let data = dir.path().join("data");
    let untrusted = restore(&backup, &data, &old_key_path, false);
    assert_eq!(untrusted.status.code(), Some(2), "{}", stderr(&untrusted));
    assert!(
        stderr(&untrusted).contains("--trust-unbound-backup"),
        "{}",
        stderr(&untrusted)
    );
    assert!(!data.join("db").exists(), "nothing written");

    let trusted = restore(&backup, &data, &old_key_path, true);
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let store = tokend_store::SledStore::open(&data, old_keys.keyring().expect("keys"))
        .expect("restored store");
    let page = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let back = store.get(&record.id).await.expect("opens").expect("kept");
            let page = store.export_sealed(None, 10).await.expect("export");
            (back, page)
        });
    let (back, page) = page;
    assert_eq!(
        (&back.provider, &back.params),
        (&record.provider, &record.params)
    );
    assert_eq!(
        back.tokens
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        record
            .tokens
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
    );
    let stored: serde_json::Value = serde_json::from_slice(&page.records[0].1).expect("json");
    assert_eq!(stored["schema"], 2, "re-sealed under the binding");
    drop(store);

    // Forged in the old form under a key made with the binding: refused.
    let new_keys = KeyFile::generate();
    let new_key_path = dir.path().join("new.keys");
    new_keys.save(&new_key_path).expect("key file");
    let mut forged = record.clone();
    forged.params = [("subdomain".to_owned(), ATTACKER.to_owned())].into();
    let forged = tokend_store::backend::encode_unbound(&forged, &new_keys.keyring().expect("keys"));
    let backup = dir.path().join("forged.backup");
    write_backup(&backup, 3, &[("from-2025", forged)]);
    let other = dir.path().join("other");
    let refused = restore(&backup, &other, &new_key_path, true);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("does not open"),
        "{}",
        stderr(&refused)
    );
    assert!(!other.join("db").exists(), "nothing written");
}

/// Issue 25 item 5, on a real `tokend serve` over PostgreSQL. Invariant: a
/// record the broker cannot read (here repointed in the database, as a
/// record sealed with a key it lacks would be too) is neither replaced by
/// an Install nor removed by a DeleteConnection, RPC or CLI, unless `force`
/// is set: both answer FAILED_PRECONDITION, reason RECORD_UNREADABLE, and
/// the row's bytes stay as they were. With `force` (`tokend connections
/// delete --force`), they are removed or replaced. Before, both went
/// through unasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_replaced_or_deleted_only_when_forced() {
    let cluster = tokend_pgtest::cluster();
    let database = cluster.create_database("unreadable");
    let mut broker = Broker::start(Some(cluster.url(&database))).await;
    for id in [REPOINTED, REHOSTED] {
        broker.install(id).await;
    }
    broker.stop();
    cluster
        .psql(
            &database,
            "UPDATE tokend_connections SET sealed = convert_to(replace(convert_from(sealed, 'UTF8'),
               '\"provider\":\"sandbox\"', '\"provider\":\"elsewhere\"'), 'UTF8')",
        )
        .expect("make both unreadable");
    let digest = |id: &str| {
        cluster
            .psql(
                &database,
                &format!("SELECT md5(sealed) FROM tokend_connections WHERE id = '{id}'"),
            )
            .expect("md5")
    };
    let before = [digest(REPOINTED), digest(REHOSTED)];
    broker.serve().await;
    let install = |force: bool| {
        let account = format!("acct-{REPOINTED}");
        let issued = broker.sandbox.issue_tokens(&account, &["crm"]);
        let request = pb::InstallRequest {
            provider: "sandbox".into(),
            connection_id: REPOINTED.into(),
            account_id: account,
            grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                access_token: issued.access_token.clone(),
                refresh_token: issued.refresh_token.clone(),
                expires_in_seconds: 1800,
                scopes: issued.scopes.clone(),
                token_type: String::new(),
            })),
            replace: false,
            params: HashMap::from([("host".to_owned(), "127.0.0.1".to_owned())]),
            force,
        };
        (request, issued.access_token)
    };

    // Unasked: refused, through the RPCs and the CLI.
    let refused = broker
        .client()
        .install(install(false).0)
        .await
        .expect_err("install refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(crate::harness::reason(&refused), "RECORD_UNREADABLE");
    let refused = broker
        .client()
        .delete_connection(pb::DeleteConnectionRequest {
            connection_id: REHOSTED.into(),
            force: false,
        })
        .await
        .expect_err("delete refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(crate::harness::reason(&refused), "RECORD_UNREADABLE");
    let out = broker
        .command()
        .args(["connections", "delete", REHOSTED])
        .output()
        .expect("tokend connections delete");
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("force"), "{}", stderr(&out));
    assert_eq!(
        [digest(REPOINTED), digest(REHOSTED)],
        before,
        "both rows as they were"
    );

    // Asked: removed, and replaced by a readable record.
    let out = broker
        .command()
        .args(["connections", "delete", REHOSTED, "--force"])
        .output()
        .expect("tokend connections delete --force");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(REHOSTED), "", "deleted");
    let (request, access_token) = install(true);
    broker
        .client()
        .install(request)
        .await
        .expect("forced install");
    let token = broker
        .client()
        .get_token(crate::harness::get(REPOINTED))
        .await
        .expect("readable again")
        .into_inner()
        .token
        .expect("token");
    assert_eq!(token.access_token, access_token);
}
