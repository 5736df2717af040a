//! Config ranges, restore and store copy (issue 24, items 12 and 13).
//!
//! Every test runs the real `tokend` binary: `check-config` and `serve`
//! against files with values that used to break serving, `restore` against
//! crafted backup headers, and `restore` and `store copy` under `umask 000`
//! and with the wrong keys.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::TestServer;

fn tokend() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .env("NO_COLOR", "1")
        .env_remove("TOKEND_KEYS")
        .env_remove("TOKEND_KEY_FILE")
        .env_remove("TOKEND_DATA_DIR")
        .env_remove("TOKEND_LISTEN");
    command
}

/// Runs `command` with umask 000, so only tokend itself can make what it
/// creates private.
fn with_open_umask(command: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    }
}

/// A refusal: exit code 2 (a configuration or usage mistake), a message
/// naming `what`, and no panic, abort or signal.
fn assert_refused(out: &Output, what: &str, context: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "{context}: killed by a signal: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("memory allocation"),
        "{context}: {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "{context}: {stderr}");
    assert!(
        stderr.contains(what),
        "{context}: {what} not named: {stderr}"
    );
}

/// `tokend serve` on `config`, waited for at most 30 s: a server that is
/// still running then has accepted the file.
async fn serve_once(config: &Path, data_dir: &Path) -> Output {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokend()
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("tokend serve starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve accepted {} and kept running: {}",
                config.display(),
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(log.path()).unwrap(),
    }
}

/// Issue 24, item 12. Invariant: a value that would break serving (a
/// keepalive interval that panics hyper's PING timer on every connection,
/// a response cap that cuts every token answer and so loses rotated
/// grants, a rotation count no rotation finishes) is refused by
/// `check-config` and by `serve` alike, with exit code 2 and the key
/// named, before `serve` creates anything.
#[tokio::test]
async fn check_config_and_serve_refuse_values_that_break_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[limits]\nkeepalive_interval_secs = 18446744073709551615\n",
            "keepalive_interval_secs = 18446744073709551615 is out of range",
        ),
        (
            "[http]\nmax_response_bytes = 100\n",
            "max_response_bytes = 100 is out of range",
        ),
        (
            "audit_keep = 18446744073709551615\n",
            "audit_keep = 18446744073709551615 is out of range",
        ),
    ];
    for (n, (text, named)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("case-{n}.toml"));
        std::fs::write(&config, text).unwrap();
        let out = tokend()
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_refused(&out, named, &format!("check-config {text}"));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("problem: "),
            "check-config lists it as a problem"
        );

        let data = dir.path().join(format!("data-{n}"));
        let out = serve_once(&config, &data).await;
        assert_refused(&out, named, &format!("serve {text}"));
        assert!(!data.exists(), "serve created its data dir before refusing");
    }
}

/// A backup file whose header claims `records` records, followed by one
/// record line.
fn crafted_backup(path: &Path, records: u64) {
    let header = serde_json::json!({
        "kind": "tokend backup",
        "version": 1,
        "format_version": tokend_store::FORMAT_VERSION,
        "records": records,
        "created_at": "2026-01-01T00:00:00Z",
    });
    std::fs::write(
        path,
        format!("{header}\n{{\"connection_id\":\"a\",\"sealed\":\"AAAA\"}}\n"),
    )
    .unwrap();
}

/// Issue 24, item 13. Invariant: a backup header's record count is checked
/// against the file's size before anything is sized from it: 10^15 (which
/// aborted on a failed allocation) and 2^64 - 1 (which panicked on capacity
/// overflow) are refused with a clear error, exit code 2, and nothing
/// written.
#[test]
fn restore_refuses_record_counts_the_file_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("tokend.keys");
    tokend_store::crypto::KeyFile::generate()
        .save(&keys)
        .unwrap();
    for records in [1_000_000_000_000_000, u64::MAX] {
        let backup = dir.path().join(format!("{records}.backup"));
        crafted_backup(&backup, records);
        let target = dir.path().join("new");
        let out = tokend()
            .arg("restore")
            .arg("--from")
            .arg(&backup)
            .arg("--data-dir")
            .arg(target.join("data"))
            .arg("--key-file")
            .arg(&keys)
            .output()
            .unwrap();
        assert_refused(
            &out,
            &format!("the header claims {records} records"),
            &format!("records = {records}"),
        );
        assert!(!target.exists(), "records = {records}: a dir was created");
    }
}

/// Every dir under `root` (itself excluded) and every file, with its mode.
fn modes_under(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            found.push((
                path.clone(),
                meta.is_dir(),
                meta.permissions().mode() & 0o777,
            ));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

fn assert_private(root: &Path, context: &str) {
    let found = modes_under(root);
    assert!(found.iter().any(|(_, dir, _)| !dir), "{context}: no file");
    for (path, dir, mode) in found {
        let wanted = if dir { 0o700 } else { 0o600 };
        assert_eq!(mode, wanted, "{context}: {} is {mode:o}", path.display());
    }
}

/// A server holding three connections, and `tokend backup` of it in
/// `backup`, run with `umask` 000 (over a stale, world-readable temp file
/// of an earlier run); returned stopped, with its keys as `TOKEND_KEYS`
/// JSON.
async fn three_connections(backup: &Path) -> (TestServer, String) {
    let mut server = TestServer::start().await;
    for i in 0..3 {
        server
            .import(&format!("cfg-{i}"), &format!("acct-{i}"), 1800)
            .await;
    }
    let mut stale = backup.as_os_str().to_owned();
    stale.push(".tmp");
    std::fs::write(&stale, b"stale").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = tokend();
    with_open_umask(&mut command)
        .arg("backup")
        .arg("--to")
        .arg(backup)
        .env("TOKEND_ENDPOINT", server.endpoint())
        .env_remove("TOKEND_API_KEY");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(backup).unwrap().permissions().mode() & 0o777,
        0o600,
        "the backup file"
    );
    server.stop().await;
    let keys = server.keys_json();
    (server, keys)
}

/// Issue 24, item 13. Invariant: `restore` and `store copy` create every
/// dir 0700 and every file 0600 (their own and the database's), parents
/// included, even when started with umask 000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_store_copy_create_private_dirs_and_files_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("tokend.backup");
    let (server, keys) = three_connections(&backup).await;
    let key_file = dir.path().join("tokend.keys");
    tokend_store::crypto::KeyFile::parse(keys.as_bytes())
        .unwrap()
        .save(&key_file)
        .unwrap();

    let restored = dir.path().join("restored");
    let out = with_open_umask(
        tokend()
            .arg("restore")
            .arg("--from")
            .arg(&backup)
            .arg("--data-dir")
            .arg(restored.join("a/data"))
            .arg("--key-file")
            .arg(&key_file),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored 3 connections"));
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o700,
        "the first parent restore created"
    );
    assert_private(&restored, "restore");

    let copied = dir.path().join("copied");
    let out = with_open_umask(
        tokend()
            .args(["store", "copy", "--from"])
            .arg(format!("sled:{}", server.data_path().display()))
            .arg("--to")
            .arg(format!("sled:{}", copied.join("a/data").display()))
            .env("TOKEND_KEYS", &keys),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 3 connection(s)"));
    assert_eq!(
        std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o700,
        "the first parent copy created"
    );
    assert_private(&copied, "store copy");
}

/// Issue 24, item 13. Invariant: a restore or a copy refused because the
/// keys do not open the records writes nothing: no data dir, no parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restore_or_copy_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("tokend.backup");
    let (server, _keys) = three_connections(&backup).await;
    let wrong = tokend_store::crypto::KeyFile::generate();
    let wrong_file = dir.path().join("wrong.keys");
    wrong.save(&wrong_file).unwrap();

    let target = dir.path().join("restored");
    let out = tokend()
        .arg("restore")
        .arg("--from")
        .arg(&backup)
        .arg("--data-dir")
        .arg(target.join("data"))
        .arg("--key-file")
        .arg(&wrong_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restore with the wrong keys: {stderr}"
    );
    assert!(
        !target.exists(),
        "a refused restore created {}",
        target.display()
    );
    assert!(stderr.contains("does not open"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let target = dir.path().join("copied");
    let out = tokend()
        .args(["store", "copy", "--from"])
        .arg(format!("sled:{}", server.data_path().display()))
        .arg("--to")
        .arg(format!("sled:{}", target.join("data").display()))
        .env("TOKEND_KEYS", serde_json::to_string(&wrong).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "copy with the wrong keys: {stderr}");
    assert!(
        !target.exists(),
        "a refused copy created {}",
        target.display()
    );
    // Refused as the source opens: its records are sealed with a key 1
    // that TOKEND_KEYS does not hold (issue 25, item 5).
    assert!(
        stderr.contains("sealed with key 1") && stderr.contains("TOKEND_KEYS"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 26, item 8: `check-config` lists every problem of a file in one
/// run, each at its `file:line:col` (schema errors, out-of-range values,
/// missing environment variables naming the key), and `serve` refuses
/// every file `check-config` refuses. Before, the first schema error
/// ended the run and semantic problems had no place.
#[test]
fn check_config_lists_every_problem_with_its_place_and_serve_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .env_remove("TOKEND_CONFIG")
            .env_remove("I26_MISSING_SECRET")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("tokend {args:?} kept running: it accepted the file");
            }
            // A plain #[test]: no tokio worker to block.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    let schema = dir.path().join("schema.toml");
    std::fs::write(
        &schema,
        "refresh_concurency = 1\n[store]\npool_sise = 3\n[providers.hub]\npreset = \"hubspot\"\nclient_id = 5\nclient_secret_env = \"I26_MISSING_SECRET\"\n",
    )
    .unwrap();
    let semantic = dir.path().join("semantic.toml");
    std::fs::write(
        &semantic,
        "cache_capacity = 5\n[store]\nrefresh_lease_secs = 0\n[providers.hub]\npreset = \"hubspot\"\nclient_id = \"x\"\nclient_secret_env = \"I26_MISSING_SECRET\"\n",
    )
    .unwrap();
    for (file, places) in [
        (
            &schema,
            &["schema.toml:1:1", "schema.toml:3:1", "schema.toml:6:13"][..],
        ),
        (
            &semantic,
            &[
                "semantic.toml:1:1",
                "semantic.toml:3:1",
                "semantic.toml:7:1",
            ][..],
        ),
    ] {
        let path = file.to_str().unwrap();
        let out = run(&["check-config", "--config", path]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        for place in places {
            assert!(stderr.contains(place), "{place} missing from: {stderr}");
        }
        assert_eq!(
            stderr.matches("problem: ").count(),
            places.len(),
            "{stderr}"
        );
        if file == &semantic {
            assert!(stderr.contains("I26_MISSING_SECRET"), "{stderr}");
            assert!(stderr.contains("client_secret_env"), "{stderr}");
        }
        let data = dir.path().join("data");
        let served = run(&[
            "serve",
            "--config",
            path,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(
            served.status.code(),
            Some(2),
            "serve refuses what check-config refuses: {}",
            String::from_utf8_lossy(&served.stderr)
        );
    }
}

/// Issue 26, item 8: the real `tokend check-config` lists every problem of
/// ONE provider table (an out-of-range value, a missing environment
/// variable naming the key that wants it, a refused header), each once at
/// its key's `file:line:col`, warns at its place about a plain-http
/// token_url, and exits 2. Before, the table's first problem hid the rest.
#[test]
fn check_config_lists_every_problem_of_one_provider_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.toml");
    std::fs::write(
        &file,
        "[providers.hub]\ntoken_url = \"http://auth.example.com/token\"\nclient_id = \"x\"\n  client_secret_env = \"I26_ONE_TABLE_SECRET\"\nmin_refresh_interval_secs = 999999999\n[providers.hub.headers]\nHost = \"h\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check-config", "--config", file.to_str().unwrap()])
        .env_remove("TOKEND_CONFIG")
        .env_remove("I26_ONE_TABLE_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at = |line: &str| format!("{}:{line}: provider hub: ", file.display());
    for (kind, place, words) in [
        (
            "problem",
            "4:3",
            "client_secret_env: environment variable I26_ONE_TABLE_SECRET is not set",
        ),
        (
            "problem",
            "5:1",
            "min_refresh_interval_secs = 999999999 is out of range",
        ),
        (
            "problem",
            "7:1",
            "headers.Host: tokend sets this header itself",
        ),
        (
            "warning",
            "2:1",
            "token_url http://auth.example.com/token is plain http://",
        ),
    ] {
        let wanted = format!("{kind}: {}{words}", at(place));
        assert_eq!(
            stderr.matches(&wanted).count(),
            1,
            "{wanted} once in:\n{stderr}"
        );
    }
    assert_eq!(stderr.matches("problem: ").count(), 3, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

/// Issue 27: serve and check-config share one resolution, so a value serve
/// refuses at start is one check-config refuses, at its `file:line:col`:
/// a refresh lease of 0 seconds on the PostgreSQL store (the database URL
/// set, so the store's options are otherwise complete).
#[test]
fn check_config_refuses_a_zero_refresh_lease_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        "[store]\nkind = \"postgres\"\nrefresh_lease_secs = 0\n",
    )
    .unwrap();
    let out = tokend()
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .env(
            "TOKEND_DATABASE_URL",
            "postgres://tokend@127.0.0.1:1/tokend",
        )
        .output()
        .unwrap();
    assert_refused(&out, "store.refresh_lease_secs = 0", "check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let place = format!("{}:3:1: ", config.display());
    assert!(stderr.contains(&place), "{place} in: {stderr}");
}
