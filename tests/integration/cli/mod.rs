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

mod backup;
mod setup;
