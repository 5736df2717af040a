//! File + flags + env → one resolved configuration, or every problem:
//! what `tokend serve` and `tokend check-config` both call, so a file one
//! refuses the other refuses too.

use std::net::SocketAddr;

use crate::{FileConfig, Problem, locate::split_joined};

impl FileConfig {
    /// Every problem `tokend serve` would stop at, and some it would only
    /// warn about, without serving: each provider (secret resolvable,
    /// secret file private, URL), the limits, the identities, the TLS
    /// files, and whether the listen address is safe. Empty: all good.
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
