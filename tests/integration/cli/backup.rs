//! The data dir across restarts: `serve --sandbox` keeps its grants, and
//! `backup` under load restores every connection.

/// Issue 11. Invariant: `serve --sandbox` keeps the sandbox's grants in the
/// data dir, so a connection installed before a restart still refreshes
/// after it (a provider that forgot its grants would kill every one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sandbox_keeps_its_grants_across_a_restart() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, http) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--sandbox", "--listen", &grpc.to_string()])
            .args(["--sandbox-listen", &http.to_string(), "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
        command.args(args).args(["--endpoint", &grpc.to_string()]);
        command
    };
    let ready = || async {
        crate::harness::eventually(std::time::Duration::from_secs(20), || {
            cli(&["token", "get", "none"])
                .output()
                .is_ok_and(|o| o.status.code() == Some(3))
        })
        .await
    };
    let mut first = start();
    assert!(ready().await, "first start");
    let body = reqwest::Client::new()
        .post(format!("http://{http}/sandbox/tokens"))
        .header("content-type", "application/json")
        .body(r#"{"account_id":"acct-restart","scopes":["crm"]}"#)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let issued: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let out = cli(&["install", "--provider", "sandbox", "--connection-id", "r-1"])
        .args(["--account-id", "acct-restart", "--expires-in", "1800"])
        .env(
            "TOKEND_IMPORT_ACCESS_TOKEN",
            issued["access_token"].as_str().unwrap(),
        )
        .env(
            "TOKEND_IMPORT_REFRESH_TOKEN",
            issued["refresh_token"].as_str().unwrap(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM: a graceful stop, as an operator restarts it.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();

    let mut second = start();
    assert!(ready().await, "second start");
    let out = cli(&["token", "refresh", "r-1"]).output().unwrap();
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        out.status.success(),
        "the pre-restart refresh token still works: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = std::fs::read_to_string(data.join("sandbox-state.json")).unwrap();
    assert!(!state.contains(issued["refresh_token"].as_str().unwrap()));
}

/// Issue 11. Invariants: `tokend backup` takes a snapshot from a running
/// server under load (tokens sealed: none appears in the file); `tokend
/// restore` refuses a data dir that holds connections unless forced, and a
/// key file that does not open the backup, writing nothing; and a server
/// on the restored dir serves every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_every_connection() {
    use tokend_proto::v1 as pb;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, http) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (dir.path().join("first"), dir.path().join("second"));
    let keys = first_dir.join("tokend.keys");
    let state = dir.path().join("sandbox-state.json");
    let serve = |data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--sandbox", "--listen", &grpc.to_string()])
            .args(["--sandbox-listen", &http.to_string(), "--sandbox-state"])
            .arg(&state)
            .arg("--key-file")
            .arg(&keys)
            .arg("--data-dir")
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let tokend = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
        command.args(args).env("TOKEND_ENDPOINT", grpc.to_string());
        command.output().unwrap()
    };
    let connect = || async {
        for _ in 0..200 {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
            {
                return pb::token_service_client::TokenServiceClient::new(c);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("tokend did not start");
    };
    let mut first = serve(&first_dir);
    let mut client = connect().await;
    let http_client = reqwest::Client::new();
    let mut access_tokens = Vec::new();
    for i in 0..30 {
        let body = http_client
            .post(format!("http://{http}/sandbox/tokens"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"account_id":"acct-b{i}","scopes":["crm"]}}"#))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let issued: serde_json::Value = serde_json::from_slice(&body).unwrap();
        access_tokens.push(issued["access_token"].as_str().unwrap().to_owned());
        client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: format!("b-{i}"),
                account_id: format!("acct-b{i}"),
                grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                    access_token: issued["access_token"].as_str().unwrap().into(),
                    refresh_token: issued["refresh_token"].as_str().unwrap().into(),
                    expires_in_seconds: 1800,
                    ..Default::default()
                })),
                replace: false,
                params: Default::default(),
                force: false,
            })
            .await
            .unwrap();
    }
    // Load: refreshes while the backup streams.
    let load = {
        let mut client = client.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let _ = client
                    .force_refresh(pb::ForceRefreshRequest {
                        connection_id: format!("b-{}", round % 30),
                        rejected: None,
                    })
                    .await;
            }
        })
    };
    let backup = dir.path().join("tokend.backup");
    let out = tokend(&["backup", "--to", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.await.unwrap();
    let text = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(text.lines().count(), 31, "a header and 30 records");
    for token in &access_tokens {
        assert!(
            !text.contains(token.as_str()),
            "a token in plaintext in the backup"
        );
    }
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();

    // A key file that does not open the backup: refused, nothing written.
    let wrong_keys = dir.path().join("wrong.keys");
    tokend_store::crypto::KeyFile::generate()
        .save(&wrong_keys)
        .unwrap();
    let out = tokend(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        second_dir.to_str().unwrap(),
        "--key-file",
        wrong_keys.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not open"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let restore = |force: bool| {
        let mut args = vec![
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            second_dir.to_str().unwrap(),
            "--key-file",
            keys.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        tokend(&args)
    };
    let out = restore(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restore(false);
    assert_eq!(out.status.code(), Some(2), "a non-empty dir needs --force");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(restore(true).status.success());

    let mut second = serve(&second_dir);
    let mut client = connect().await;
    for i in 0..30 {
        client
            .get_token(pb::GetTokenRequest {
                connection_id: format!("b-{i}"),
                min_ttl_seconds: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("b-{i} does not serve after restore: {e:?}"));
    }
    let _ = second.kill();
    let _ = second.wait();
}
