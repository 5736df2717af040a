//! Tests of the config file: presets, provider tables, secrets, and the
//! numeric keys read straight off the file.

use std::{path::Path, time::Duration};

use secrecy::ExposeSecret;
use tokend_provider::{ClientAuth, Dialect};

use crate::*;

fn messages(problems: Vec<Problem>) -> Vec<String> {
    problems.into_iter().map(|p| p.message).collect()
}

fn parse(text: &str) -> FileConfig {
    FileConfig::parse(text, Path::new("test.toml")).unwrap()
}

#[test]
fn hubspot_preset_fills_in_the_endpoint_and_dialect() {
    let cfg = parse(
        r#"
            listen = "127.0.0.1:6000"
            [providers.hubspot]
            preset = "hubspot"
            client_id = "abc"
            client_secret_env = "HS_SECRET"
            redirect_uri = "https://app.example.com/cb"
            "#,
    );
    let providers = cfg
        .providers(|k| (k == "HS_SECRET").then(|| "s3cret".to_owned()))
        .unwrap();
    let p = &providers[0];
    assert_eq!(p.token_url.as_str(), HUBSPOT_TOKEN_URL);
    assert_eq!(p.dialect, Dialect::Hubspot);
    assert_eq!(p.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(p.default_lifetime, Duration::from_secs(1800));
    assert_eq!(p.client_secret.expose_secret(), "s3cret");
    assert_eq!(p.account_id_field.as_deref(), Some("hub_id"));
    assert!(
        p.extra_params
            .contains(&("redirect_uri".into(), "https://app.example.com/cb".into()))
    );
    assert!(!format!("{p:?}").contains("s3cret"));
}

/// Issue 16: the presets with quirks fill in their endpoint, dialect,
/// body and account field; a table's own keys win; a separate
/// refresh_url and a nested token path are read and checked.
/// Issue 16: `private_key_jwt` and mutual TLS read their keys from 0600
/// files (or the environment), never from the config; each method's
/// material is required by it and refused elsewhere.
#[test]
fn private_key_jwt_and_mutual_tls_read_their_keys_from_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tokend".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let key_file = write("key.pem", &key.serialize_pem(), 0o600);
    let cert_file = write("cert.pem", &cert.pem(), 0o644);
    let open_key = write("open-key.pem", &key.serialize_pem(), 0o644);
    let ok = parse(&format!(
        r#"
            [providers.jwt]
            token_url = "https://id.example.com/token"
            client_id = "tokend"
            client_auth = "private_key_jwt"
            private_key_file = "{key_file}"
            jwt_algorithm = "ES256"
            jwt_key_id = "k1"
            [providers.mtls]
            token_url = "https://id.example.com/token"
            client_id = "tokend"
            client_auth = "tls_client_auth"
            tls_client_cert_file = "{cert_file}"
            tls_client_key_file = "{key_file}"
            tls_ca_file = "{cert_file}"
            "#
    ));
    let providers = ok.providers(|_| None).unwrap();
    let jwt = providers.iter().find(|p| p.name.as_str() == "jwt").unwrap();
    assert_eq!(jwt.client_auth, ClientAuth::PrivateKeyJwt);
    assert!(jwt.request.client_assertion.is_some());
    let mtls = providers
        .iter()
        .find(|p| p.name.as_str() == "mtls")
        .unwrap();
    assert_eq!(mtls.client_auth, ClientAuth::TlsClientAuth);
    assert!(mtls.request.tls.as_ref().unwrap().has_client_certificate());
    let shown = format!("{providers:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    let head = "token_url = \"https://id.example.com/token\"\nclient_id = \"tokend\"";
    for (body, expected) in [
        (
            "client_auth = \"private_key_jwt\"".to_owned(),
            "private_key",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\njwt_algorithm = \"RS256\""
            ),
            "not a PEM",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{open_key}\"\njwt_algorithm = \"ES256\""
            ),
            "readable by group or others",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\njwt_algorithm = \"HS256\""
            ),
            "not one of",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key_file = \"{key_file}\"\nclient_secret_env = \"S\""
            ),
            "give it no client secret",
        ),
        (
            format!("client_secret_env = \"S\"\nprivate_key_file = \"{key_file}\""),
            "are for client_auth",
        ),
        (
            "client_auth = \"tls_client_auth\"".to_owned(),
            "needs tls_client_cert_file",
        ),
        (
            format!("client_secret_env = \"S\"\ntls_client_cert_file = \"{cert_file}\""),
            "set both",
        ),
        (
            format!("client_secret_env = \"S\"\ntls_ca_file = \"{key_file}\""),
            "roots",
        ),
    ] {
        let cfg = parse(&format!("[providers.p]\n{head}\n{body}\n"));
        let err = cfg.providers(|_| Some("s".into())).unwrap_err().to_string();
        assert!(err.contains(expected), "{body}: {err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
}

#[test]
fn quirky_presets_and_request_and_response_shapes() {
    use tokend_provider::RequestBody;
    let cfg = parse(
        r#"
            [providers.slack]
            preset = "slack"
            client_id = "a"
            client_secret_env = "S"
            token_path = "authed_user"
            [providers.github]
            preset = "github"
            client_id = "a"
            client_secret_env = "S"
            [providers.notion]
            preset = "notion"
            client_id = "a"
            client_secret_env = "S"
            [providers.custom]
            token_url = "https://id.example.com/oauth/token"
            refresh_url = "https://id.example.com/oauth/refresh"
            body = "json"
            dialect = "slack"
            account_id_field = "org.id"
            client_id = "a"
            client_secret_env = "S"
            "#,
    );
    let providers = cfg.providers(|_| Some("s".to_owned())).unwrap();
    let by = |n: &str| providers.iter().find(|p| p.name.as_str() == n).unwrap();
    let slack = by("slack");
    assert_eq!(slack.dialect, Dialect::Slack);
    assert_eq!(slack.response.token_path, ["authed_user"]);
    assert_eq!(slack.account_id_field.as_deref(), Some("team.id"));
    assert_eq!(slack.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(by("github").dialect, Dialect::Github);
    assert_eq!(by("github").default_lifetime, Duration::from_secs(28_800));
    let notion = by("notion");
    assert_eq!(notion.request.body, RequestBody::Json);
    assert_eq!(notion.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(notion.account_id_field.as_deref(), Some("workspace_id"));
    let custom = by("custom");
    assert_eq!(
        custom.request.refresh_url.as_ref().map(|u| u.as_str()),
        Some("https://id.example.com/oauth/refresh")
    );
    assert_eq!(custom.request.body, RequestBody::Json);
    assert_eq!(custom.dialect, Dialect::Slack);
    assert_eq!(custom.account_id_field.as_deref(), Some("org.id"));
    let v3 = parse(
        r#"
            [providers.hubspot]
            preset = "hubspot"
            api_version = "v3"
            client_id = "a"
            client_secret_env = "S"
            "#,
    );
    assert_eq!(
        v3.providers(|_| Some("s".to_owned())).unwrap()[0]
            .token_url
            .as_str(),
        "https://api.hubapi.com/oauth/v3/token"
    );
    let keepalive = parse(
        r#"
            [providers.google]
            token_url = "https://oauth2.googleapis.com/token"
            keepalive_days = 150
            client_id = "a"
            client_secret_env = "S"
            "#,
    );
    assert_eq!(
        keepalive.providers(|_| Some("s".to_owned())).unwrap()[0]
            .refresh_policy
            .keepalive,
        Some(Duration::from_secs(150 * 86_400))
    );
    let presets = parse(
        r#"
            [providers.google]
            preset = "google"
            client_id = "a"
            client_secret_env = "S"
            [providers.xero]
            preset = "xero"
            client_id = "a"
            client_secret_env = "S"
            [providers.zendesk]
            preset = "zendesk"
            client_id = "a"
            client_secret_env = "S"
            [providers.shopify]
            preset = "shopify"
            client_id = "a"
            client_secret_env = "S"
            [providers.zoho]
            preset = "zoho"
            client_id = "a"
            client_secret_env = "S"
            [providers.microsoft]
            preset = "microsoft"
            client_id = "a"
            client_secret_env = "S"
            [providers.atlassian]
            preset = "atlassian"
            client_id = "a"
            client_secret_env = "S"
            "#,
    );
    let providers = presets.providers(|_| Some("s".to_owned())).unwrap();
    let by = |n: &str| providers.iter().find(|p| p.name.as_str() == n).unwrap();
    assert_eq!(
        by("google").refresh_policy.keepalive,
        Some(Duration::from_secs(150 * 86_400))
    );
    assert_eq!(by("xero").rotation_grace, Duration::from_secs(1800));
    assert_eq!(by("atlassian").rotation_grace, Duration::from_secs(600));
    assert_eq!(by("microsoft").rotation_grace, Duration::from_secs(86_400));
    assert_eq!(by("zendesk").connection_params(), ["subdomain"]);
    assert_eq!(by("shopify").connection_params(), ["shop"]);
    assert_eq!(by("zoho").connection_params(), ["dc"]);
    assert_eq!(by("zoho").dialect, Dialect::Zoho);
    assert_eq!(by("microsoft").dialect, Dialect::Microsoft);
    let eu = [("dc".to_owned(), "eu".to_owned())].into();
    assert_eq!(
        by("zoho").for_connection(&eu).unwrap().token_url.as_str(),
        "https://accounts.zoho.eu/oauth/v2/token"
    );
    let acme = [("subdomain".to_owned(), "acme".to_owned())].into();
    assert_eq!(
        by("zendesk")
            .for_connection(&acme)
            .unwrap()
            .token_url
            .as_str(),
        "https://acme.zendesk.com/oauth/tokens"
    );
    let public = parse(
        r#"
            [providers.mcp]
            token_url = "https://mcp.example.com/token"
            client_auth = "none"
            client_id = "tokend"
            "#,
    );
    let mcp = &public.providers(|_| None).unwrap()[0];
    assert_eq!(mcp.client_auth, ClientAuth::None);
    let with_secret = parse(
        r#"
            [providers.mcp]
            token_url = "https://mcp.example.com/token"
            client_auth = "none"
            client_id = "tokend"
            client_secret_env = "S"
            "#,
    );
    let refused = with_secret.providers(|_| Some("s".into())).unwrap_err();
    assert!(refused.to_string().contains("public client"), "{refused}");
    for bad in [
        "headers = { Authorization = \"Bearer x\" }",
        "headers = { \"bad name\" = \"x\" }",
        "query_params = { t = \"{Bad}\" }",
        "api_version = \"v3\"",
        "keepalive_days = 0",
        "refresh_url = \"ftp://x/y\"",
        "token_path = \"a..b\"",
        "body = \"xml\"",
    ] {
        let text = format!(
            "[providers.p]\ntoken_url = \"https://x/t\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n{bad}\n"
        );
        let refused = FileConfig::parse(&text, Path::new("t.toml"))
            .map_err(|e| e.to_string())
            .and_then(|c| c.providers(|_| Some("s".into())).map_err(|e| e.to_string()));
        assert!(refused.is_err(), "{bad} accepted");
    }
}

#[test]
fn identities_and_tls_parse() {
    let cfg = parse(
        r#"
            audit_log = "/var/log/tokend/audit.log"
            [tls]
            cert_file = "server.pem"
            key_file = "server.key"
            client_ca_file = "clients-ca.pem"
            [[identities]]
            name = "billing"
            api_key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            grants = [{ permissions = ["tokens"], connections = ["tenant-a-"] }]
            "#,
    );
    assert_eq!(cfg.identities.len(), 1);
    assert_eq!(cfg.identities[0].requests_per_second, 200);
    assert!(cfg.tls.unwrap().client_ca_file.is_some());
}

#[test]
fn secrets_in_the_file_itself_are_refused() {
    let err = FileConfig::parse(
        "[providers.x]\nclient_id = \"a\"\nclient_secret = \"inline\"\ntoken_url = \"https://x\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("client_secret"), "{err}");
    assert!(!err.to_string().contains("inline"), "{err}");
}

#[test]
fn missing_secret_env_is_a_clear_error() {
    let cfg = parse(
        "[providers.x]\nclient_id = \"a\"\ntoken_url = \"https://x\"\nclient_secret_env = \"NOPE\"\n",
    );
    let err = cfg.providers(|_| None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider x: client_secret_env: environment variable NOPE is not set"
    );
    let err = cfg.providers(|_| Some(String::new())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider x: client_secret_env: environment variable NOPE is set but empty"
    );
}

/// Issue 11. Invariant: every parse error names the file, line, column
/// and table, and an inline secret says what to do instead.
#[test]
fn parse_errors_say_where_and_how_to_fix() {
    let err = |text: &str| {
        FileConfig::parse(text, Path::new("/etc/tokend.toml"))
            .unwrap_err()
            .to_string()
    };
    let typo = err(
        "listen = \"127.0.0.1:1\"\n\n[providers.hubspot]\nclient_id = \"a\"\nclient_secret_evn = \"X\"\n",
    );
    assert!(
            typo.starts_with("invalid config file /etc/tokend.toml:5:1: in [providers.hubspot]: unknown field `client_secret_evn`"),
            "{typo}"
        );
    let wrong_type = err("[providers.x]\nclient_id = \"a\"\ndefault_lifetime_secs = \"300\"\n");
    assert!(
        wrong_type.contains(":3:25: in [providers.x]: invalid type: string \"300\", expected u64"),
        "{wrong_type}"
    );
    let unclosed = err("[providers.x\nclient_id = \"a\"\n");
    assert!(
        unclosed.starts_with("invalid config file /etc/tokend.toml:1:"),
        "{unclosed}"
    );
    let inline = err("[providers.x]\nclient_id = \"a\"\nclient_secret = \"hunter2\"\n");
    assert!(inline.contains(":3:1: in [providers.x]: client_secret is not allowed: secrets never go in the config file; use client_secret_env"), "{inline}");
    assert!(!inline.contains("hunter2"));
}

/// Issue 11. Invariant: check-config lists every problem, not the first.
#[test]
fn every_problem_is_listed() {
    let cfg = parse(
        r#"
            [limits]
            max_concurrent_streams = 0
            [providers.a]
            client_id = "a"
            token_url = "https://a"
            client_secret_env = "A_SECRET"
            [providers.b]
            client_id = "b"
            client_secret_env = "B_SECRET"
            [[identities]]
            name = "svc"
            grants = []
            "#,
    );
    let problems =
        messages(cfg.located_problems("0.0.0.0:50051".parse().unwrap(), |_| None, Vec::new()));
    let all = problems.join("\n");
    assert!(
        all.contains("provider a: client_secret_env: environment variable A_SECRET is not set"),
        "{all}"
    );
    assert!(all.contains("provider b: token_url is required"), "{all}");
    // Issue 26: the second problem of b's table too, not only the first.
    assert!(
        all.contains("provider b: client_secret_env: environment variable B_SECRET is not set"),
        "{all}"
    );
    assert!(
        all.contains("limits.max_concurrent_streams = 0 is out of range"),
        "{all}"
    );
    // Every problem of the identity too: no key and no grants.
    assert!(all.contains("identity svc: set api_key_sha256"), "{all}");
    assert!(all.contains("identity svc: has no grants"), "{all}");
    assert!(all.contains("without [tls]"), "{all}");
    assert_eq!(problems.len(), 7, "{all}");
    assert!(
        messages(FileConfig::default().located_problems(
            "127.0.0.1:50051".parse().unwrap(),
            |_| None,
            Vec::new()
        ))
        .is_empty()
    );
}

/// Issue 11. Invariant: a secret file others can read is refused unless
/// the operator says so.
#[test]
fn readable_secret_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "[providers.x]\nclient_id = \"a\"\ntoken_url = \"https://x\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    );
    let err = parse(&text).providers(|_| None).unwrap_err().to_string();
    assert!(
        err.contains("readable by group or others (mode 644)"),
        "{err}"
    );
    let allowed = parse(&format!("{text}allow_readable_secret_file = true\n"));
    assert_eq!(
        allowed.providers(|_| None).unwrap()[0]
            .client_secret
            .expose_secret(),
        "s3cret"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(parse(&text).providers(|_| None).is_ok());
}

#[test]
fn refresh_concurrency_is_bounded() {
    assert_eq!(parse("").refresh_concurrency().unwrap(), None);
    assert_eq!(
        parse("refresh_concurrency = 64")
            .refresh_concurrency()
            .unwrap(),
        Some(64)
    );
    assert_eq!(
        parse("").cache_capacity().unwrap(),
        crate::DEFAULT_CACHE_CAPACITY
    );
    assert_eq!(
        parse("cache_capacity = 2000000").cache_capacity().unwrap(),
        2_000_000
    );
    let e = parse("cache_capacity = 10").cache_capacity().unwrap_err();
    assert!(e.to_string().contains("cache_capacity"), "{e}");
    for bad in ["refresh_concurrency = 0", "refresh_concurrency = 5000"] {
        let e = parse(bad).refresh_concurrency().unwrap_err().to_string();
        assert!(e.contains("refresh_concurrency"), "{e}");
    }
}
