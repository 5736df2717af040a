//! File + flags + env → one resolved configuration, or every problem:
//! what `tokend serve` and `tokend check-config` both call, so a file one
//! refuses the other refuses too.

use std::net::SocketAddr;

use tokend_provider::ProviderConfig;

use crate::{
    audit::AuditOptions,
    error::{ConfigError, Problem},
    events::EventSettings,
    file::FileConfig,
    limits::Limits,
    locate::split_joined,
};

/// The problems of the sections a crate above this one resolves: the
/// server's `[[webhooks]]` (each message naming its webhook) and the
/// binary's `[store]` options for PostgreSQL (each at its key).
#[derive(Debug, Default)]
pub struct Outside {
    pub webhooks: Vec<String>,
    pub store: Vec<Problem>,
}

/// The configuration `tokend serve` runs with: every value checked and
/// every default filled in.
#[derive(Debug)]
pub struct Resolved {
    pub providers: Vec<ProviderConfig>,
    pub limits: Limits,
    pub audit: AuditOptions,
    pub cache_capacity: usize,
    /// `None`: the engine's default.
    pub refresh_concurrency: Option<usize>,
    pub events: EventSettings,
}

/// The one resolution of a config file, for `tokend serve` and `tokend
/// check-config` alike: `file` (as written, the flags' `listen` applied)
/// with secrets read through `env`, and the `outside` sections' problems.
/// Every problem of every table, each with its key path, or the resolved
/// values; a file one command refuses the other refuses too.
pub fn resolve(
    file: &FileConfig,
    listen: SocketAddr,
    env: impl Fn(&str) -> Option<String>,
    outside: Outside,
) -> Result<Resolved, Vec<Problem>> {
    let mut problems = file.located_problems(listen, &env, outside.webhooks);
    for problem in outside.store {
        // A range it refused is listed already, by `check_ranges`.
        if !problems.iter().any(|p| p.message == problem.message) {
            problems.push(problem);
        }
    }
    let unexpected = |e: ConfigError| {
        vec![Problem {
            key: Vec::new(),
            message: e.to_string(),
        }]
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    // Each of these was checked above: an error here is a check missing
    // from `located_problems`, still refused.
    Ok(Resolved {
        providers: file.providers(&env).map_err(unexpected)?,
        limits: file.limits().map_err(unexpected)?,
        audit: file.audit_options().map_err(unexpected)?,
        cache_capacity: file.cache_capacity().map_err(unexpected)?,
        refresh_concurrency: file.refresh_concurrency().map_err(unexpected)?,
        events: file
            .events
            .resolve()
            .map_err(|e| unexpected(ConfigError::Invalid(e)))?,
    })
}

impl FileConfig {
    /// Every problem `tokend serve` would stop at, without serving, one a
    /// problem (every problem of every table, not the first of each), each
    /// with the key path it is about: each provider (secret resolvable,
    /// secret file private, URL), the limits, the identities, the TLS
    /// files, whether the listen address is safe, and `webhook_problems`
    /// (the server resolves `[[webhooks]]`). Empty: all good.
    pub fn located_problems(
        &self,
        listen: SocketAddr,
        env: impl Fn(&str) -> Option<String>,
        webhook_problems: Vec<String>,
    ) -> Vec<Problem> {
        let mut located = Vec::new();
        for (name, section) in &self.providers {
            if let Err(faults) = section.resolve_all(name, &env) {
                for fault in faults {
                    let mut key = vec!["providers".to_owned(), name.clone()];
                    key.extend(fault.key);
                    let message = format!("provider {name}: {}", fault.reason);
                    located.push(Problem { key, message });
                }
            }
        }
        for problem in self.other_problems(listen, webhook_problems) {
            located.extend(split_joined(&problem).into_iter().map(|message| Problem {
                key: self.key_named(&message),
                message,
            }));
        }
        located
    }

    /// What `check-config` warns about without refusing: `serve` only
    /// warns about these too.
    pub fn warnings(&self) -> Vec<Problem> {
        self.providers
            .iter()
            .filter_map(|(name, section)| {
                let fault = section.plain_http_warning()?;
                let mut key = vec!["providers".to_owned(), name.clone()];
                key.extend(fault.key);
                let message = format!("provider {name}: {}", fault.reason);
                Some(Problem { key, message })
            })
            .collect()
    }

    /// The key path a problem of a section without its own keyed checks
    /// is about, from the prefix its resolver writes: `identity NAME: `
    /// or `webhook "NAME": ` (the table's entry), then `KEY = VALUE` as
    /// [`crate::ranges::Range::check`] writes it.
    fn key_named(&self, message: &str) -> Vec<String> {
        let mut key = Vec::new();
        let mut rest = message;
        for (prefix, table) in [("identity ", "identities"), ("webhook ", "webhooks")] {
            let Some((name, tail)) = message
                .strip_prefix(prefix)
                .and_then(|m| m.split_once(": "))
            else {
                continue;
            };
            let name = name.trim_matches('"');
            let index = if table == "identities" {
                self.identities.iter().position(|i| i.name == name)
            } else {
                self.webhooks.iter().position(|w| w.name == name)
            };
            if let Some(index) = index {
                key = vec![table.to_owned(), index.to_string()];
                rest = tail;
            }
        }
        // `KEY = VALUE ...` or `KEY: ...`.
        let end = [rest.find(" = "), rest.find(": ")]
            .into_iter()
            .flatten()
            .min();
        if let Some(path) = end.map(|i| &rest[..i])
            && !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
        {
            key.extend(path.split('.').map(str::to_owned));
        }
        key
    }

    /// The problems of every section but the providers'.
    fn other_problems(&self, listen: SocketAddr, webhook_problems: Vec<String>) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.limits() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.check_ranges() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.events.resolve() {
            problems.push(e);
        }
        if let Err(e) = self.audit_options() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.refresh_concurrency() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.cache_capacity() {
            problems.push(e.to_string());
        }
        problems.extend(webhook_problems);
        problems.extend(
            crate::identity::check_identities(&self.identities)
                .iter()
                .map(ToString::to_string),
        );
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert_file", Some(&tls.cert_file)),
                ("tls.key_file", Some(&tls.key_file)),
                ("tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path
                    && let Err(e) = std::fs::read(path)
                {
                    problems.push(format!("{key}: cannot read {}: {e}", path.display()));
                }
            }
        }
        if !listen.ip().is_loopback() {
            if self.identities.is_empty() {
                problems.push(format!(
                    "listen = {listen} with no [[identities]]: an open server only listens on loopback; configure identities or listen on 127.0.0.1"
                ));
            } else if self.tls.is_none() && !self.allow_plaintext {
                problems.push(format!(
                    "listen = {listen} without [tls]: API keys and tokens would cross the network in the clear; configure [tls] or set allow_plaintext = true"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
