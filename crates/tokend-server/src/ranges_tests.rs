//! The ranges table against the real schema and the real resolvers.

use std::path::Path;

use crate::config::FileConfig;
use tokend_config::ranges::*;

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env(var: &str) -> Option<String> {
    match var {
        "S" => Some("s3cret".into()),
        "HOOK_SECRET" => Some(HOOK_SECRET.into()),
        _ => None,
    }
}

/// A config file that sets `range`'s key to `value`, in an otherwise valid
/// table of its kind.
fn file_setting(range: &Range, value: u128) -> String {
    let name = range.key.rsplit('.').next().unwrap_or(range.key);
    let line = format!("{name} = {value}\n");
    match range.key.split_once('.') {
        None => line,
        Some(("identities", _)) => format!(
            "[[identities]]\nname = \"svc\"\napi_key_sha256 = \"{}\"\ngrants = [{{ permissions = [\"tokens\"], connections = [\"a-\"] }}]\n{line}",
            "0".repeat(64)
        ),
        Some(("webhooks", _)) => {
            // Room for the largest first retry delay.
            let room = if name == "retry_max_secs" {
                ""
            } else {
                "retry_max_secs = 86400\n"
            };
            format!(
                "[[webhooks]]\nname = \"h\"\nurl = \"https://hooks.example.com/\"\nsecret_env = \"HOOK_SECRET\"\n{room}{line}"
            )
        }
        Some(("providers", _)) => format!(
            "[providers.p]\ntoken_url = \"https://id.example.com/token\"\nclient_id = \"a\"\nclient_secret_env = \"S\"\n{line}"
        ),
        Some((section, _)) => format!("[{section}]\n{line}"),
    }
}

/// What `tokend check-config` would say about the file.
fn problems_of(text: &str) -> Result<Vec<String>, String> {
    let file = FileConfig::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())?;
    Ok(crate::config::problems(
        &file,
        "127.0.0.1:50051".parse().unwrap(),
        env,
    ))
}

/// Issue 24, item 12. Invariant: every numeric key is accepted at both
/// bounds of its range and refused just outside them and at 2^64 - 1,
/// with one problem that names the key, the value and the range, by the
/// same checks `serve` runs.
#[test]
fn every_numeric_key_is_refused_outside_its_range_and_accepted_inside() {
    // Every failure, so one run lists every key that misbehaves.
    let mut refused_inside = Vec::new();
    let mut accepted_outside = Vec::new();
    let mut badly_refused = Vec::new();
    for range in ALL {
        for value in [range.min, range.max] {
            let text = file_setting(range, value.into());
            if problems_of(&text) != Ok(vec![]) {
                refused_inside.push(format!("{} = {value}: {:?}", range.key, problems_of(&text)));
            }
        }
        let mut outside = vec![u128::from(range.max) + 1, u128::from(u64::MAX)];
        if range.min > 0 {
            outside.push(u128::from(range.min) - 1);
        }
        for value in outside {
            let text = file_setting(range, value);
            let problems = match problems_of(&text) {
                Ok(problems) => problems,
                // A value beyond the field's type (2^64 - 1 in a u32) is
                // refused by the parser, which names the line and column.
                Err(parse) => {
                    if !(parse.contains("invalid") && parse.contains(&format!("{value}"))) {
                        badly_refused.push(format!("{} = {value}: {parse}", range.key));
                    }
                    continue;
                }
            };
            let wanted = format!(
                "{} = {value} is out of range: allowed {} to {}",
                range.name(),
                range.min,
                range.max
            );
            if problems.is_empty() {
                accepted_outside.push(format!("{} = {value}", range.key));
            } else if problems.len() != 1 || !problems[0].contains(&wanted) {
                badly_refused.push(format!("{} = {value}: {problems:?}", range.key));
            }
        }
    }
    assert!(
        refused_inside.is_empty() && accepted_outside.is_empty() && badly_refused.is_empty(),
        "accepted out of range: {accepted_outside:#?}\nrefused without naming key, value and range: {badly_refused:#?}\nrefused within range: {refused_inside:#?}"
    );
}

/// The numeric fields of `struct_name` as written in `source`.
fn numeric_fields(source: &str, struct_name: &str) -> Vec<String> {
    let start = source
        .find(&format!("pub struct {struct_name} {{"))
        .unwrap_or_else(|| panic!("{struct_name} not found"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("struct ends")];
    body.lines()
        .filter_map(|line| {
            let (name, ty) = line.trim().strip_prefix("pub ")?.split_once(": ")?;
            let ty = ty.trim_end_matches(',');
            let ty = ty
                .strip_prefix("Option<")
                .and_then(|t| t.strip_suffix('>'))
                .unwrap_or(ty);
            let numeric = [
                "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
                "isize", "f32", "f64",
            ];
            numeric.contains(&ty).then(|| name.to_owned())
        })
        .collect()
}

/// Issue 24, item 12. Invariant: no numeric key of the file's schema is
/// without a range, and the table names no key the schema lacks, so a key
/// added later cannot skip the check.
#[test]
fn every_numeric_key_of_the_schema_has_a_range() {
    let schema = [
        (
            include_str!("../../tokend-config/src/file.rs"),
            "FileConfig",
            "",
        ),
        (
            include_str!("../../tokend-config/src/file.rs"),
            "HttpSection",
            "http.",
        ),
        (
            include_str!("../../tokend-config/src/file.rs"),
            "StoreSection",
            "store.",
        ),
        (
            include_str!("../../tokend-config/src/file.rs"),
            "ProviderSection",
            "providers.*.",
        ),
        (
            include_str!("../../tokend-config/src/limits.rs"),
            "LimitsSection",
            "limits.",
        ),
        (
            include_str!("../../tokend-config/src/events.rs"),
            "EventsSection",
            "events.",
        ),
        (
            include_str!("../../tokend-config/src/webhook.rs"),
            "WebhookSection",
            "webhooks.*.",
        ),
        (
            include_str!("../../tokend-config/src/identity.rs"),
            "IdentityConfig",
            "identities.*.",
        ),
    ];
    let mut keys = Vec::new();
    for (source, name, prefix) in schema {
        for field in numeric_fields(source, name) {
            keys.push(format!("{prefix}{field}"));
        }
    }
    assert!(keys.len() >= 30, "the schema was read: {keys:?}");
    for key in &keys {
        assert!(
            ALL.iter().any(|r| r.key == key),
            "{key} has no range in ranges::ALL"
        );
    }
    for range in ALL {
        assert!(
            keys.iter().any(|k| k == range.key),
            "{} is in ranges::ALL but not in the schema",
            range.key
        );
        assert!(range.min <= range.max, "{}", range.key);
    }
}

/// Issue 24, item 12. Invariant: every default lies inside its key's
/// range, so the ranges refuse nothing tokend would pick itself.
#[test]
fn every_default_lies_inside_its_range() {
    let limits = tokend_config::limits::Limits::default();
    let http = tokend_provider::HttpSettings::default();
    let audit = crate::audit::AuditOptions::default();
    let events = tokend_engine::feed::EventSettings::default();
    let engine = tokend_engine::EngineSettings::default();
    let secs = |d: std::time::Duration| d.as_secs();
    let millis = |d: std::time::Duration| d.as_millis() as u64;
    let defaults = [
        (REFRESH_CONCURRENCY, engine.background_concurrency as u64),
        (
            CACHE_CAPACITY,
            tokend_engine::engine::DEFAULT_CACHE_CAPACITY as u64,
        ),
        (AUDIT_MAX_BYTES, audit.max_bytes),
        (AUDIT_KEEP, audit.keep as u64),
        (HTTP_CONNECT_TIMEOUT_SECS, secs(http.connect_timeout)),
        (HTTP_REQUEST_TIMEOUT_SECS, secs(http.request_timeout)),
        (HTTP_MAX_RESPONSE_BYTES, http.max_response_bytes as u64),
        (
            MAX_CONNECTIONS,
            limits.connections_for(tokend_config::limits::fd_limit()) as u64,
        ),
        (MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams.into()),
        (MAX_PENDING_REQUESTS, limits.max_pending_requests as u64),
        (
            MAX_BUFFERED_REQUEST_BYTES,
            limits.max_buffered_request_bytes as u64,
        ),
        (REQUEST_BODY_TIMEOUT_MS, millis(limits.request_body_timeout)),
        (HANDSHAKE_TIMEOUT_MS, millis(limits.handshake_timeout)),
        (KEEPALIVE_INTERVAL_SECS, secs(limits.keepalive_interval)),
        (KEEPALIVE_TIMEOUT_SECS, secs(limits.keepalive_timeout)),
        (MAX_HEADER_LIST_SIZE, limits.max_header_list_size.into()),
        (
            OPEN_WATCH_STREAMS_PER_PEER,
            limits.open_watch_streams_per_peer as u64,
        ),
        (
            OPEN_REQUESTS_PER_SECOND_PER_PEER,
            limits.open_requests_per_second_per_peer.into(),
        ),
        (EVENTS_RETENTION_SECS, secs(events.retention)),
        (EVENTS_MAX_EVENTS, events.max_events),
        (STORE_REFRESH_LEASE_SECS, secs(engine.lease_ttl)),
        (
            WEBHOOK_RETRY_INITIAL_MS,
            millis(crate::webhooks::WebhookConfig::DEFAULT_RETRY_INITIAL),
        ),
        (
            WEBHOOK_RETRY_MAX_SECS,
            secs(crate::webhooks::WebhookConfig::DEFAULT_RETRY_MAX),
        ),
        (
            WEBHOOK_FAILING_AFTER_SECS,
            secs(crate::webhooks::WebhookConfig::DEFAULT_FAILING_AFTER),
        ),
        (
            WEBHOOK_TIMEOUT_SECS,
            secs(tokend_webhook::SenderSettings::default().timeout),
        ),
        (
            PROVIDER_MIN_REFRESH_INTERVAL_SECS,
            secs(tokend_provider::ProviderConfig::DEFAULT_MIN_REFRESH_INTERVAL),
        ),
        (
            PROVIDER_REFRESH_BUFFER_SECS,
            secs(tokend_core::RefreshPolicy::default().buffer),
        ),
    ];
    for (range, value) in defaults {
        assert!(range.check(value).is_ok(), "{} default {value}", range.key);
    }
}
