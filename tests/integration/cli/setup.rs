//! Setting up: `check-config`, `install` with params and client
//! credentials, `register-client`, and `keys init`.

use super::*;

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
