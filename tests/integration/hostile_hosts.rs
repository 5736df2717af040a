//! Templated hosts cannot be steered (issue 24, item 1). A real `tokend
//! serve` process with the Zoho preset sends every outbound request through
//! a catch-all proxy that records its target: a caller's `params` value
//! must never choose the host that receives the client secret, a refresh
//! token or a signed client assertion. `check-config` refuses templates
//! whose placeholder could choose a host's registrable domain.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::{harness::bad_fields, proxy::CatchAllProxy};

/// The environment variable holding the Zoho client secret.
const SECRET_ENV: &str = "TOKEND_HOSTILE_HOSTS_SECRET";

/// A `tokend serve` process whose outbound requests all go to `proxy`.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
}

impl Serve {
    /// Starts tokend on `config` over `dir/data` and waits until it serves.
    async fn start(dir: &Path, config: &str, proxy: &CatchAllProxy) -> Serve {
        let path = dir.join("tokend.toml");
        std::fs::write(&path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = dir.join(format!("tokend-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("NO_COLOR", "1")
            .env(SECRET_ENV, "zoho-client-secret-must-stay-home")
            .envs(proxy.env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("tokend serve starts");
        let serve = Serve {
            child,
            addr,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while serve.client().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "tokend did not start: {}",
                serve.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn client(&self) -> Option<TokenServiceClient<Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        Some(TokenServiceClient::new(channel))
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider section for Zoho, with `extra` lines in the table.
fn zoho(extra: &str) -> String {
    format!(
        "[providers.zoho]\npreset = \"zoho\"\nclient_id = \"tokend-hostile\"\nclient_secret_env = \"{SECRET_ENV}\"\n{extra}\n"
    )
}

/// An Install of `provider` by code exchange, with `params`.
fn code_install(provider: &str, id: &str, params: &[(&str, &str)]) -> pb::InstallRequest {
    pb::InstallRequest {
        provider: provider.into(),
        connection_id: id.into(),
        account_id: String::new(),
        grant: Some(pb::install_request::Grant::AuthorizationCode(
            pb::AuthorizationCode {
                code: "a-single-use-code".into(),
                redirect_uri: String::new(),
                code_verifier: String::new(),
            },
        )),
        replace: false,
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        force: false,
    }
}

/// `dc` values a hostile caller might try: another registrable domain,
/// one under a listed value, a path, a percent-encoded dot, case, a
/// trailing dot, IP addresses, user info, a port, a fragment, a dot that
/// IDNA maps to `.`, and values no data centre has.
const HOSTILE_DC: &[&str] = &[
    "attacker.example",
    "com.attacker.example",
    "com.au.attacker.example",
    "eu/..",
    "eu/../../attacker.example",
    "com%2eattacker",
    "com%2Eattacker.example",
    "ATTACKER.EXAMPLE",
    "EU",
    "eu.",
    "attacker.example.",
    "127.0.0.1",
    "1.2.3.4",
    "[::1]",
    "user@attacker.example",
    "attacker.example:443",
    "eu#.attacker.example",
    "eu?.attacker.example",
    "eu\u{3002}attacker\u{3002}example",
    "eu attacker.example",
    "",
    "ca",
    "uk",
];

/// Installs `provider` by code exchange with every hostile `dc`, and
/// returns each one not refused as INVALID_ARGUMENT on `params.dc` (with
/// what came back instead).
async fn hostile_installs(
    client: &mut TokenServiceClient<Channel>,
    provider: &str,
) -> Vec<(&'static str, String)> {
    let mut wrong = Vec::new();
    for (i, dc) in HOSTILE_DC.iter().enumerate() {
        let answer = client
            .install(code_install(provider, &format!("h-{i}"), &[("dc", dc)]))
            .await;
        match answer {
            Err(e)
                if e.code() == Code::InvalidArgument
                    && bad_fields(&e) == ["params.dc"]
                    && e.message().contains("must be one of com, eu") => {}
            Err(e) => wrong.push((*dc, format!("{:?}: {}", e.code(), e.message()))),
            Ok(_) => wrong.push((*dc, "installed".to_owned())),
        }
    }
    wrong
}

/// Invariant (issue 24, item 1): a caller's `params.dc` cannot choose the
/// host the Zoho client secret is sent to. Every hostile value is refused
/// with INVALID_ARGUMENT on `params.dc` before any provider call, and the
/// catch-all proxy sees zero requests; a listed data centre reaches
/// `accounts.zoho.eu` through the same proxy, so the wiring is proven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hosts_a_callers_dc_never_chooses_where_the_client_secret_goes() {
    let proxy = CatchAllProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &zoho(""), &proxy).await;
    let mut client = serve.client().await.unwrap();

    let wrong = hostile_installs(&mut client, "zoho").await;
    let seen = proxy.seen();
    println!(
        "hosts reached by {} hostile installs: {} {seen:?}",
        HOSTILE_DC.len(),
        seen.len()
    );
    assert!(
        seen.is_empty() && proxy.reached("attacker").is_empty(),
        "hostile installs reached the network: {seen:?}"
    );
    assert!(
        wrong.is_empty(),
        "not refused as INVALID_ARGUMENT params.dc: {wrong:#?}"
    );

    // A data centre Zoho has: the code exchange goes out (and the proxy
    // answers 502), so the proxy sees what tokend sends.
    let err = client
        .install(code_install("zoho", "z-eu", &[("dc", "eu")]))
        .await
        .expect_err("the proxy answers 502");
    assert_ne!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        proxy.seen(),
        ["accounts.zoho.eu:443"],
        "the listed data centre, and nothing else"
    );
    serve.stop();
}

/// Invariant (issue 24, item 1): a stored connection whose parameters no
/// longer pass (the list that allowed them was removed from the config) is
/// never sent anywhere: its refresh is refused with a clear, non-secret
/// error naming the parameter, and the proxy sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hosts_a_stored_connection_whose_host_no_longer_passes_is_sent_nowhere() {
    let proxy = CatchAllProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    // An operator once listed another data centre.
    let serve = Serve::start(
        dir.path(),
        &zoho("[providers.zoho.param_values]\ndc = [\"retired.example\"]"),
        &proxy,
    )
    .await;
    let mut client = serve.client().await.unwrap();
    client
        .install(pb::InstallRequest {
            provider: "zoho".into(),
            connection_id: "old".into(),
            account_id: "acct-old".into(),
            grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                access_token: "at-old-0001".into(),
                refresh_token: "rt-old-0001-must-stay-home".into(),
                expires_in_seconds: 3600,
                scopes: vec![],
                token_type: String::new(),
            })),
            replace: false,
            params: [("dc".to_owned(), "retired.example".to_owned())].into(),
            force: false,
        })
        .await
        .expect("imported: no provider call");
    serve.stop();

    // The list is gone: the stored value is no longer a Zoho data centre.
    let serve = Serve::start(dir.path(), &zoho(""), &proxy).await;
    let mut client = serve.client().await.unwrap();
    let err = client
        .force_refresh(pb::ForceRefreshRequest {
            connection_id: "old".into(),
            rejected: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "PROVIDER_MISCONFIGURED");
    assert_eq!(
        info.metadata.get("provider_error").map(String::as_str),
        Some("connection_params")
    );
    let message = info.metadata["provider_message"].clone();
    assert!(message.contains("\"dc\" must be one of"), "{message}");
    assert!(!message.contains("must-stay-home"), "no secret: {message}");
    assert_eq!(proxy.seen(), Vec::<String>::new(), "nothing was sent");
    serve.stop();
}

/// Invariant (issue 24, item 1, `jwt_audience`): a signed client assertion
/// whose `aud` is the provider's fixed issuer is a credential the provider
/// accepts; it goes only to hosts the provider lists, never to one a
/// caller's value chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hosts_a_callers_dc_never_receives_a_signed_assertion() {
    let proxy = CatchAllProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = format!(
        "[providers.zoho_jwt]\npreset = \"zoho\"\nclient_id = \"tokend-hostile\"\nclient_auth = \"private_key_jwt\"\nprivate_key_file = \"{}\"\njwt_algorithm = \"ES256\"\njwt_audience = \"https://accounts.zoho.com\"\n",
        key.display()
    );
    let serve = Serve::start(dir.path(), &config, &proxy).await;
    let mut client = serve.client().await.unwrap();
    let wrong = hostile_installs(&mut client, "zoho_jwt").await;
    let seen = proxy.seen();
    println!("hosts reached by hostile installs with an assertion: {seen:?}");
    assert_eq!(seen, Vec::<String>::new(), "no assertion left");
    assert!(
        wrong.is_empty(),
        "not refused as INVALID_ARGUMENT params.dc: {wrong:#?}"
    );
    let err = client
        .install(code_install("zoho_jwt", "j-jp", &[("dc", "jp")]))
        .await
        .expect_err("the proxy answers 502");
    assert_ne!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(proxy.seen(), ["accounts.zoho.jp:443"]);
    serve.stop();
}

/// `tokend check-config` on `provider`'s lines: its exit code and stderr.
fn check_config(provider: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(&path, provider).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env(SECRET_ENV, "s")
        .env_remove("TOKEND_LISTEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Invariant (issue 24, item 1): `tokend check-config` refuses, naming the
/// provider, the key and the placeholder, every template whose placeholder
/// could choose the registrable domain of a host that receives secrets
/// (`https://{host}/token`, `https://auth.{tld}/token`, a public suffix
/// like `{name}.co.uk`, a templated `jwt_audience`), and accepts them once
/// the placeholder's values are listed.
#[test]
fn hostile_hosts_check_config_refuses_templates_that_could_choose_the_domain() {
    let section = |lines: &str| {
        format!("[providers.p]\nclient_id = \"a\"\nclient_secret_env = \"{SECRET_ENV}\"\n{lines}\n")
    };
    for (lines, key, placeholder) in [
        (
            "token_url = \"https://{host}/token\"",
            "token_url",
            "{host}",
        ),
        (
            "token_url = \"https://auth.{tld}/token\"",
            "token_url",
            "{tld}",
        ),
        (
            "token_url = \"https://{name}.co.uk/token\"",
            "token_url",
            "{name}",
        ),
        (
            "token_url = \"https://id.example.com/token\"\nrefresh_url = \"https://{host}/refresh\"",
            "refresh_url",
            "{host}",
        ),
        (
            "token_url = \"https://id.example.com:{port}/token\"",
            "token_url",
            "{port}",
        ),
    ] {
        let (code, err) = check_config(&section(lines));
        assert_eq!(code, Some(2), "{lines}: {err}");
        assert!(
            err.contains("provider p: ") && err.contains(key) && err.contains(placeholder),
            "{lines}: {err}"
        );
    }
    let (code, err) = check_config(&section(
        "token_url = \"https://auth.{tld}/token\"\n[providers.p.param_values]\ntld = [\"example.com\", \"example.eu\"]",
    ));
    assert_eq!(code, Some(0), "a listed placeholder is explicit: {err}");
    let (code, err) = check_config(&section(
        "token_url = \"https://{subdomain}.zendesk.com/oauth/tokens\"",
    ));
    assert_eq!(code, Some(0), "left of a fixed domain: {err}");
    let (code, err) = check_config(&zoho(""));
    assert_eq!(code, Some(0), "the preset lists its data centres: {err}");

    // A per-connection audience obeys the same rule.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let jwt = |audience: &str| {
        format!(
            "[providers.p]\nclient_id = \"a\"\ntoken_url = \"https://{{org}}.idp.example.com/token\"\nclient_auth = \"private_key_jwt\"\nprivate_key_file = \"{}\"\njwt_algorithm = \"ES256\"\njwt_audience = \"{audience}\"\n",
            key.display()
        )
    };
    let (code, err) = check_config(&jwt("https://{aud}/"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("jwt_audience") && err.contains("{aud}"),
        "{err}"
    );
    let (code, err) = check_config(&jwt("https://{org}.idp.example.com/"));
    assert_eq!(code, Some(0), "{err}");
}
