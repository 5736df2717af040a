//! `[[webhooks]]` in the config file, and its resolution into
//! [`WebhookConfig`]: URL checked (https, or http to loopback), secret
//! read from an env var or a private file, filter validated, names unique.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokend_webhook::{Secret, SenderSettings};

use super::WebhookConfig;
use tokend_engine::feed::EventFilter;

pub use tokend_config::webhook::{FilterSection, WebhookSection};

/// Resolves every webhook; the error names the webhook and the key, every
/// problem of every webhook joined by "; " (`check_all` lists them apart).
pub fn resolve(
    sections: &[WebhookSection],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<Arc<WebhookConfig>>, String> {
    let (configs, problems) = check_all(sections, env);
    if problems.is_empty() {
        Ok(configs)
    } else {
        Err(problems.join("; "))
    }
}

/// Every webhook that resolves, and every problem of those that do not,
/// each naming its webhook (`webhook "NAME": KEY ...`): one run of
/// `check-config` lists them all.
pub fn check_all(
    sections: &[WebhookSection],
    env: &impl Fn(&str) -> Option<String>,
) -> (Vec<Arc<WebhookConfig>>, Vec<String>) {
    let mut names = HashSet::new();
    let mut problems = Vec::new();
    let configs = sections
        .iter()
        .filter_map(|s| resolve_one(s, &mut names, env, &mut problems))
        .collect();
    (configs, problems)
}

/// One webhook, or `None` with its problems pushed onto `problems`.
fn resolve_one<'a>(
    s: &'a WebhookSection,
    names: &mut HashSet<&'a str>,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<Arc<WebhookConfig>> {
    let name = s.name.as_str();
    let before = problems.len();
    let mut fail = |reason: String| problems.push(format!("webhook {name:?}: {reason}"));
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        fail("name must be 1 to 64 of A-Z a-z 0-9 - _".into());
    } else if !names.insert(name) {
        fail("another webhook has this name".into());
    }
    let url = tokend_webhook::check_url(&s.url).map_err(&mut fail).ok();
    let secret = tokend_config::read_secret(
        "secret",
        s.secret_env.as_deref(),
        s.secret_file.as_deref(),
        s.allow_readable_secret_file,
        env,
    )
    .map_err(&mut fail)
    .ok()
    .and_then(|secret| {
        Secret::parse(&secret)
            .map_err(|e| fail(format!("secret: {e}")))
            .ok()
    });
    let f = &s.filter;
    let filter = EventFilter::parse(
        &f.providers,
        &f.connection_id_prefixes,
        &f.event_types,
        &f.statuses,
    )
    .map_err(|e| fail(format!("filter.{}: {}", e.field, e.description)))
    .ok();
    use tokend_config::ranges as r;
    let mut secs = |range: r::Range, v: Option<u64>, d: Duration| -> Option<Duration> {
        range
            .check_opt(v)
            .map_err(&mut fail)
            .ok()
            .map(|v| v.map_or(d, Duration::from_secs))
    };
    let retry_max = secs(
        r::WEBHOOK_RETRY_MAX_SECS,
        s.retry_max_secs,
        WebhookConfig::DEFAULT_RETRY_MAX,
    );
    let defaults = SenderSettings::default();
    let timeout = secs(r::WEBHOOK_TIMEOUT_SECS, s.timeout_secs, defaults.timeout);
    let failing_after = secs(
        r::WEBHOOK_FAILING_AFTER_SECS,
        s.failing_after_secs,
        WebhookConfig::DEFAULT_FAILING_AFTER,
    );
    let retry_initial = r::WEBHOOK_RETRY_INITIAL_MS
        .check_opt(s.retry_initial_ms)
        .map_err(&mut fail)
        .ok()
        .map(|v| v.map_or(WebhookConfig::DEFAULT_RETRY_INITIAL, Duration::from_millis));
    if let (Some(initial), Some(max)) = (retry_initial, retry_max)
        && max < initial
    {
        fail("retry_initial_ms must be at most retry_max_secs".into());
    }
    if problems.len() > before {
        return None;
    }
    Some(Arc::new(WebhookConfig {
        name: name.to_owned(),
        url: url?,
        secret: secret?,
        filter: filter?,
        sender: SenderSettings {
            timeout: timeout?,
            connect_timeout: defaults.connect_timeout.min(timeout?),
            ..defaults
        },
        failing_after: failing_after?,
        retry_initial: retry_initial?,
        retry_max: retry_max?,
    }))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<Arc<WebhookConfig>>, String> {
        #[derive(Deserialize)]
        struct File {
            webhooks: Vec<WebhookSection>,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        resolve(&file.webhooks, &|var| {
            (var == "HOOK_SECRET").then(|| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned())
        })
    }

    #[test]
    fn a_full_webhook_resolves() {
        let hooks = parse(
            r#"
            [[webhooks]]
            name = "billing"
            url = "https://billing.example.com/hooks"
            secret_env = "HOOK_SECRET"
            filter = { providers = ["hubspot"], event_types = ["reconnect_required", "RECOVERED"] }
            retry_initial_ms = 200
            "#,
        )
        .unwrap();
        let h = &hooks[0];
        assert_eq!(h.name, "billing");
        assert_eq!(h.filter.types.len(), 2);
        assert_eq!(h.retry_initial, Duration::from_millis(200));
        assert!(!format!("{h:?}").contains("MfKQ9r8"), "no secret in Debug");
    }

    /// check-config lists every problem of every webhook in one run, not
    /// the first (before: one per run).
    #[test]
    fn every_problem_of_every_webhook_is_listed() {
        #[derive(Deserialize)]
        struct File {
            webhooks: Vec<WebhookSection>,
        }
        let file: File = toml::from_str(
            r#"
            [[webhooks]]
            name = "a"
            url = "http://a.example/"
            secret_env = "MISSING"
            timeout_secs = 0
            [[webhooks]]
            name = "b"
            url = "https://b.example/"
            secret_env = "HOOK_SECRET"
            filter = { event_types = ["nope"] }
            retry_initial_ms = 60000
            retry_max_secs = 1
            "#,
        )
        .unwrap();
        let (configs, problems) = check_all(&file.webhooks, &|var| {
            (var == "HOOK_SECRET").then(|| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned())
        });
        assert!(configs.is_empty());
        let joined = problems.join("\n");
        assert_eq!(problems.len(), 5, "{joined}");
        for (hook, key) in [
            ("\"a\"", "https"),
            ("\"a\"", "MISSING"),
            ("\"a\"", "timeout_secs"),
            ("\"b\"", "filter.event_types"),
            ("\"b\"", "retry_initial_ms must be at most retry_max_secs"),
        ] {
            assert!(
                problems.iter().any(|p| p.contains(hook) && p.contains(key)),
                "{hook} {key} missing from:\n{joined}"
            );
        }
    }

    #[test]
    fn each_mistake_names_the_webhook_and_the_key() {
        let base = |extra: &str| {
            format!(
                "[[webhooks]]\nname = \"h\"\nurl = \"https://x.example/\"\nsecret_env = \"HOOK_SECRET\"\n{extra}"
            )
        };
        let cases = [
            (
                "[[webhooks]]\nname = \"h\"\nurl = \"http://x.example/\"\nsecret_env = \"HOOK_SECRET\"\n".to_owned(),
                "https",
            ),
            (
                "[[webhooks]]\nname = \"h\"\nurl = \"https://x.example/\"\nsecret_env = \"NOPE\"\n".to_owned(),
                "secret_env: environment variable NOPE is not set",
            ),
            (base("filter = { event_types = [\"exploded\"] }"), "filter.event_types"),
            (base("filter = { statuses = [\"dead\"] }"), "filter.statuses"),
            (format!("{}\n{}", base(""), base("")), "another webhook has this name"),
            (base("retry_initial_ms = 0"), "retry_initial_ms"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(
                err.starts_with("webhook \"h\"") || err.contains("webhooks"),
                "{err}"
            );
        }
    }
}
