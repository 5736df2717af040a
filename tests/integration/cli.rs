//! The `tokend` client subcommands against a real broker: text and JSON
//! output, and secrets printed by `token get` only.

use std::process::Output;

use crate::harness::TestServer;

/// Runs the built `tokend` CLI against `server`, with no API key.
pub(crate) async fn tokend(server: &TestServer, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .args(args)
        .env("TOKEND_ENDPOINT", server.endpoint())
        .env_remove("TOKEND_API_KEY");
    tokio::task::spawn_blocking(move || command.output().expect("tokend runs"))
        .await
        .expect("join")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_work_and_print_secrets_only_for_token_get() {
    let server = TestServer::start().await;
    let issued = server.sandbox.issue_tokens("acct-cli", &["crm"]);

    // Install by import, token through the environment.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .args([
            "install",
            "--provider",
            "sandbox",
            "--connection-id",
            "cli-1",
            "--account-id",
            "acct-cli",
            "--expires-in",
            "1800",
            "--json",
        ])
        .env("TOKEND_ENDPOINT", server.endpoint())
        .env("TOKEND_IMPORT_ACCESS_TOKEN", &issued.access_token)
        .env("TOKEND_IMPORT_REFRESH_TOKEN", &issued.refresh_token);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(installed["created"], true);
    assert!(!stdout(&out).contains(&issued.access_token));

    // token get: the access token alone on stdout.
    let out = tokend(&server, &["token", "get", "cli-1"]).await;
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), issued.access_token);

    // token refresh: metadata only.
    let out = tokend(&server, &["token", "refresh", "cli-1", "--json"]).await;
    let refreshed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(refreshed["refreshed"], true);
    assert_eq!(refreshed["version"], "2");
    assert!(!stdout(&out).contains("sbx_"));

    // connections list/show: no secret, human and JSON.
    let out = tokend(&server, &["connections", "list"]).await;
    assert!(stdout(&out).contains("cli-1"));
    let out = tokend(&server, &["connections", "show", "cli-1", "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["status"], "CONNECTION_STATUS_ACTIVE");
    assert_eq!(shown["version"], "2");
    assert!(!stdout(&out).contains("sbx_"));

    // Errors: a clear message and a failing exit code.
    let out = tokend(&server, &["token", "get", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = tokend(&server, &["connections", "delete", "cli-1"]).await;
    assert!(out.status.success());
    let out = tokend(&server, &["connections", "show", "cli-1"]).await;
    assert!(!out.status.success());
}

/// Issue 10, item 10. Invariant: everything under the data dir is private
/// (dirs 0700, files 0600), including files an older version left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_data_dir_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stale = data.join("left-open.log");
    std::fs::write(&stale, "old").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tokend serve starts");
    let audit = data.join("audit.log");
    let up =
        crate::harness::eventually(std::time::Duration::from_secs(20), || audit.exists()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the server started and opened its audit log");
    let mut stack = vec![data.clone()];
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "the database, the key file and the audit log were checked"
    );
}

/// Starts `tokend serve` on `data` with stderr to a file; returns the child
/// and the log path once the server says it is serving (or has exited).
async fn serve_logging(data: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("tokend serve starts");
    crate::harness::eventually(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("tokend serving"))
    })
    .await;
    child
}

/// Issue 11. Invariants: logs go to stderr with no ANSI colour codes when
/// stderr is not a terminal, and print addresses plainly; a second server
/// on the same data dir is refused with a message that says why, not a raw
/// OS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_plainly_and_refuses_a_second_instance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("first.log");
    let mut first = serve_logging(&data, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a redirected log: {text}"
    );
    assert!(text.contains("addr=127.0.0.1:"), "{text}");
    assert!(!text.contains("addr=Some("), "{text}");

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("runs");
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another tokend process"), "{err}");
    assert!(!err.contains("WouldBlock"), "{err}");
}

/// Issue 11. Invariants: an ordinary failure is one line on stderr with no
/// backtrace (even with RUST_BACKTRACE=1), JSON with `--json`, and exits
/// with its class's code; endpoints work as `host:port` or URLs, and an
/// unreachable one is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_with_an_exit_code_by_class() {
    let server = TestServer::start().await;
    let run = |args: Vec<String>| async move {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
        command
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .env_remove("TOKEND_ENDPOINT")
            .env_remove("TOKEND_API_KEY");
        tokio::task::spawn_blocking(move || command.output().expect("runs"))
            .await
            .unwrap()
    };
    let host_port = server.addr.to_string();
    for endpoint in [host_port.clone(), server.endpoint()] {
        let out = run(vec![
            "token".into(),
            "get".into(),
            "nope".into(),
            "--endpoint".into(),
            endpoint.clone(),
        ])
        .await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{endpoint}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: ") && err.contains("nope"), "{err}");
        assert!(
            !err.contains("backtrace") && !err.contains("Caused by"),
            "{err}"
        );
    }
    let out = run(vec![
        "token".into(),
        "get".into(),
        "nope".into(),
        "--json".into(),
        "--endpoint".into(),
        host_port.clone(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    let err: serde_json::Value =
        serde_json::from_slice(&out.stderr).expect("a JSON error on stderr");
    assert_eq!(err["error"]["class"], "not_found");
    assert_eq!(err["error"]["exitCode"], 3);

    // Nothing listens on port 1.
    let out = run(vec![
        "connections".into(),
        "list".into(),
        "--endpoint".into(),
        "127.0.0.1:1".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("http://127.0.0.1:1"),
        "the endpoint is named: {err}"
    );

    let out = run(vec![
        "install".into(),
        "--provider".into(),
        "sandbox".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "usage");
}

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

/// Issue 11. Invariant: `check-config` lists every problem with exit code
/// 2, and says OK (exit 0) for a good file; it never serves.
#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"0.0.0.0:50051\"\n[providers.a]\nclient_id = \"a\"\ntoken_url = \"https://a\"\nclient_secret_env = \"TOKEND_TEST_UNSET_SECRET\"\n[providers.b]\nclient_id = \"b\"\nclient_secret_env = \"X\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .env_remove("TOKEND_LISTEN")
        .env_remove("X")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // Issue 26: b's second problem (its secret) too, not only its first.
    assert_eq!(err.matches("problem: ").count(), 4, "{err}");
    assert!(err.contains("TOKEND_TEST_UNSET_SECRET is not set"), "{err}");
    assert!(err.contains("provider b: client_secret_env"), "{err}");
    assert!(err.contains("provider b: token_url is required"), "{err}");
    assert!(err.contains("no [[identities]]"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[limits]\nmax_concurrent_streams = 50\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check-config", "--config"])
        .arg(&good)
        .env_remove("TOKEND_LISTEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK"
    );
}

/// Issue 16: `tokend install --param NAME=VALUE` fills a per-connection
/// endpoint, and `--client-credentials` installs a client-credentials
/// connection with no code and no token.
#[tokio::test]
async fn install_takes_params_and_client_credentials() {
    let server = TestServer::start_with(crate::harness::Options {
        provider_toml: Some(
            "token_url = \"http://{host}:SANDBOX_PORT/oauth/token\"\ngrant = \"client_credentials\"\nparam_values = { host = [\"127.0.0.1\"] }"
                .into(),
        ),
        ..crate::harness::background_off()
    })
    .await;
    let out = tokend(
        &server,
        &[
            "install",
            "--provider",
            "sandbox",
            "--connection-id",
            "svc",
            "--client-credentials",
            "--param",
            "host=127.0.0.1",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = crate::harness::connection(&mut server.client().await, "svc").await;
    assert_eq!(c.params.get("host").map(String::as_str), Some("127.0.0.1"));
    let bad = tokend(
        &server,
        &[
            "install",
            "--provider",
            "sandbox",
            "--connection-id",
            "x",
            "--client-credentials",
            "--param",
            "nonsense",
        ],
    )
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NAME=VALUE"));
}

/// Issue 16: `tokend register-client` finds an MCP-style server's
/// registration endpoint through its metadata (RFC 8414), registers
/// (RFC 7591), keeps the issued secret in a new 0600 file and prints a
/// provider section that the real config loader takes and that refreshes at
/// the server. A public registration needs no secret file; an existing
/// secret file is never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_client_registers_and_prints_a_working_provider_section() {
    use secrecy::SecretString;
    use std::os::unix::fs::PermissionsExt;
    let sandbox = tokend_sandbox::Sandbox::start(tokend_sandbox::SandboxConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| async move {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
        command.arg("register-client").args(args);
        tokio::task::spawn_blocking(move || command.output().expect("tokend runs"))
            .await
            .expect("join")
    };
    let secret_file = dir.path().join("mcp.secret");
    let confidential = run(vec![
        "--issuer".into(),
        sandbox.base_url(),
        "--provider".into(),
        "mcp".into(),
        "--redirect-uri".into(),
        "http://localhost:3000/callback".into(),
        "--secret-file".into(),
        secret_file.display().to_string(),
    ])
    .await;
    assert!(
        confidential.status.success(),
        "{}",
        String::from_utf8_lossy(&confidential.stderr)
    );
    let section = stdout(&confidential);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(!secret.is_empty());
    assert!(
        !section.contains(&secret),
        "the secret never reaches stdout"
    );
    assert_eq!(
        std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        section.contains("client_auth = \"client_secret_basic\""),
        "{section}"
    );
    assert!(section.contains("revocation_url"), "{section}");

    let public = run(vec![
        "--issuer".into(),
        sandbox.base_url(),
        "--provider".into(),
        "mcp-public".into(),
        "--redirect-uri".into(),
        "http://localhost:3000/callback".into(),
        "--auth-method".into(),
        "none".into(),
    ])
    .await;
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    let public_section = stdout(&public);
    assert!(
        public_section.contains("client_auth = \"none\""),
        "{public_section}"
    );

    // Both sections, as printed, resolve and refresh at the server.
    let config = tokend_server::config::FileConfig::parse(
        &format!("{section}\n{public_section}"),
        std::path::Path::new("registered.toml"),
    )
    .expect("the printed sections parse");
    let providers = config
        .providers(|_| None)
        .expect("the printed sections resolve");
    assert_eq!(providers.len(), 2);
    let client = tokend_provider::ProviderClient::new(
        &tokend_provider::HttpSettings::default(),
        tokend_core::Clock::system(),
    )
    .unwrap();
    for provider in &providers {
        assert!(provider.client_id.starts_with("dyn-"), "{provider:?}");
        let issued = sandbox.issue_tokens("acct", &[]);
        client
            .refresh(provider, &SecretString::from(issued.refresh_token))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", provider.name.as_str()));
    }

    // The secret file is never overwritten; a confidential registration
    // without one is refused before anything is registered.
    for args in [
        vec![
            "--secret-file".to_owned(),
            secret_file.display().to_string(),
        ],
        vec![],
    ] {
        let mut all = vec![
            "--issuer".to_owned(),
            sandbox.base_url(),
            "--provider".into(),
            "again".into(),
            "--redirect-uri".into(),
            "http://localhost:3000/callback".into(),
        ];
        all.extend(args);
        let refused = run(all).await;
        assert_eq!(refused.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--secret-file"));
    }
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
}

/// `tokend keys init` makes a fleet's key file (0600) that `keys rotate`
/// then accepts, and never replaces one that exists: its keys may seal
/// records.
#[test]
fn keys_init_creates_a_key_file_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet/tokend.keys");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .env_remove("TOKEND_KEY_FILE")
            .output()
            .unwrap()
    };
    let file = path.to_str().unwrap();
    let made = run(&["keys", "init", "--key-file", file]);
    assert!(made.status.success(), "{made:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&path).unwrap();
    let again = run(&["keys", "init", "--key-file", file]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaced"));
    assert_eq!(std::fs::read(&path).unwrap(), before, "left as it was");
    let rotated = run(&["keys", "rotate", "--key-file", file]);
    assert!(rotated.status.success(), "{rotated:?}");
}
