//! Tests of the config's per-connection hosts (issue 24, item 1): presets'
//! lists of values, the file's extensions to them, and the templates the
//! config refuses.

use std::{collections::BTreeMap, path::Path};

use super::FileConfig;

fn providers(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    FileConfig::parse(text, Path::new("t.toml"))
        .map_err(|e| e.to_string())?
        .providers(env)
        .map(|p| p.iter().map(|p| p.name.to_string()).collect())
        .map_err(|e| e.to_string())
}

fn provider(text: &str) -> tokend_provider::ProviderConfig {
    FileConfig::parse(text, Path::new("t.toml"))
        .unwrap()
        .providers(|_| Some("s".to_owned()))
        .unwrap()
        .remove(0)
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Invariant: the Zoho preset's `dc` takes only Zoho's data centres (plus
/// what the file adds), so no value sends the client secret to a host
/// outside Zoho's domains.
#[test]
fn the_zoho_preset_lists_its_data_centres_and_the_file_extends_them() {
    let zoho = provider(
        r#"
        [providers.zoho]
        preset = "zoho"
        client_id = "a"
        client_secret_env = "S"
        "#,
    );
    assert_eq!(zoho.request.param_values["dc"], super::ZOHO_DATA_CENTRES);
    for dc in super::ZOHO_DATA_CENTRES {
        zoho.check_param("dc", dc).unwrap();
        let url = zoho.for_connection(&params(&[("dc", dc)])).unwrap();
        assert_eq!(
            url.token_url.as_str(),
            format!("https://accounts.zoho.{dc}/oauth/v2/token")
        );
    }
    for bad in [
        "attacker.example",
        "com.attacker.example",
        "ATTACKER.EXAMPLE",
        "EU",
        "eu.",
        "eu/..",
        "com%2eattacker",
        "127.0.0.1",
        "ca",
    ] {
        let e = zoho.check_param("dc", bad).unwrap_err();
        assert!(e.contains("must be one of com, eu"), "{bad}: {e}");
        assert!(!e.contains(bad), "the value is not quoted: {e}");
        assert!(
            zoho.for_connection(&params(&[("dc", bad)])).is_err(),
            "{bad}"
        );
    }

    let extended = provider(
        r#"
        [providers.zoho]
        preset = "zoho"
        client_id = "a"
        client_secret_env = "S"
        [providers.zoho.param_values]
        dc = ["uk", "eu"]
        "#,
    );
    assert_eq!(
        extended.request.param_values["dc"]
            .last()
            .map(String::as_str),
        Some("uk")
    );
    extended.check_param("dc", "uk").unwrap();
    extended.check_param("dc", "com").unwrap();
    extended.check_param("dc", "attacker.example").unwrap_err();
}

/// Invariant: a placeholder without a list is one DNS label under the
/// provider's fixed domain.
#[test]
fn unlisted_host_placeholders_take_one_label() {
    let zendesk = provider(
        r#"
        [providers.zendesk]
        preset = "zendesk"
        client_id = "a"
        client_secret_env = "S"
        "#,
    );
    zendesk.check_param("subdomain", "acme").unwrap();
    zendesk.check_param("subdomain", "Acme-2").unwrap();
    for bad in [
        "evil.example",
        "acme.evil",
        "a..b",
        "-a",
        "acme.",
        "a/b",
        "",
    ] {
        assert!(zendesk.check_param("subdomain", bad).is_err(), "{bad}");
    }
    // Path and query placeholders keep taking dotted values.
    let path = provider(
        r#"
        [providers.ms]
        token_url = "https://login.example.com/{tenant}/oauth2/token"
        client_id = "a"
        client_secret_env = "S"
        "#,
    );
    path.check_param("tenant", "contoso.example.com").unwrap();
    assert!(path.check_param("tenant", "a/b").is_err());
}

/// Invariant: `check-config` and `serve` refuse a template whose
/// placeholder could choose a host's registrable domain, naming the key;
/// a list of values makes it acceptable.
#[test]
fn templates_that_could_choose_the_registrable_domain_are_refused() {
    let env = |_: &str| Some("s".to_owned());
    for (key, url) in [
        ("token_url", "https://{host}/token"),
        ("token_url", "https://auth.{tld}/token"),
        ("token_url", "https://{name}.co.uk/token"),
        ("token_url", "http://{host}:8080/token"),
        ("refresh_url", "https://{host}/refresh"),
    ] {
        let line = format!("{key} = \"{url}\"");
        let token_url = if key == "token_url" {
            String::new()
        } else {
            "token_url = \"https://id.example.com/token\"".to_owned()
        };
        let e = providers(
            &format!(
                "[providers.p]\n{line}\n{token_url}\nclient_id = \"a\"\nclient_secret_env = \"S\"\n"
            ),
            env,
        )
        .unwrap_err();
        assert!(e.starts_with("provider p: "), "{e}");
        assert!(e.contains(key) && e.contains("param_values."), "{url}: {e}");
    }
    for bad in [
        "https://{sub}:{port}/token",
        "https://x.example.com/token#{f}",
        "https://{u}@x.example.com/token",
    ] {
        let e = providers(
            &format!("[providers.p]\ntoken_url = \"{bad}\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n"),
            env,
        )
        .unwrap_err();
        assert!(e.contains("placeholder"), "{bad}: {e}");
    }
    // Listed values make it explicit, and each is checked.
    let listed = "[providers.p]\ntoken_url = \"https://auth.{tld}/token\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n[providers.p.param_values]\ntld = [\"example.com\", \"example.eu\"]\n";
    providers(listed, env).unwrap();
    for (values, why) in [
        ("[]", "empty"),
        ("[\"a/b\"]", "must be letters"),
        (
            "[\"example.com\"]\nother = [\"x\"]",
            "no template names {other}",
        ),
    ] {
        let text = format!(
            "[providers.p]\ntoken_url = \"https://auth.{{tld}}/token\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n[providers.p.param_values]\ntld = {values}\n"
        );
        let e = providers(&text, env).unwrap_err();
        assert!(e.contains(why), "{values}: {e}");
    }
    // A preset's list goes with the preset's URL.
    providers(
        "[providers.z]\npreset = \"zoho\"\ntoken_url = \"https://accounts.example.com/token\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n",
        env,
    )
    .unwrap();
}

/// Invariant: a per-connection `jwt_audience` obeys the URLs' host rule and
/// is filled per connection, so a signed assertion names only an audience
/// under the provider's domain.
#[test]
fn a_templated_jwt_audience_follows_the_host_rule() {
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let text = |audience: &str| {
        format!(
            "[providers.p]\ntoken_url = \"https://{{org}}.idp.example.com/token\"\nclient_id = \"a\"\nclient_auth = \"private_key_jwt\"\nprivate_key_env = \"K\"\njwt_algorithm = \"ES256\"\njwt_audience = \"{audience}\"\n"
        )
    };
    let env = |_: &str| Some(key.clone());
    for bad in ["https://{aud}/", "https://{org}.{tld}/"] {
        let e = providers(&text(bad), env).unwrap_err();
        assert!(
            e.contains("jwt_audience") && e.contains("param_values."),
            "{bad}: {e}"
        );
    }
    let p = FileConfig::parse(&text("https://{org}.idp.example.com"), Path::new("t.toml"))
        .unwrap()
        .providers(env)
        .unwrap()
        .remove(0);
    assert_eq!(p.connection_params(), ["org"]);
    assert!(
        p.for_connection(&params(&[("org", "evil.example")]))
            .is_err()
    );
    let acme = p.for_connection(&params(&[("org", "acme")])).unwrap();
    let signer = acme.request.client_assertion.as_ref().unwrap();
    assert!(format!("{signer:?}").contains("https://acme.idp.example.com/"));
}
