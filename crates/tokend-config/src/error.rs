//! Typed configuration errors: why a file could not be loaded
//! ([`ConfigError`]), one problem at its key path ([`Problem`]), one
//! problem of a table ([`Fault`]), and a parse error placed at its
//! `line:col`. None ever holds a secret.

use std::path::PathBuf;

/// Why a configuration could not be loaded. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` starts with `LINE:COLUMN:` when the parser knows where.
    #[error("invalid config file {}:{message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("provider {name}: {reason}")]
    Provider { name: String, reason: String },
    #[error("{0}")]
    Limits(String),
    #[error("{0}")]
    Invalid(String),
}

/// One problem of a config file: the key path it is about (`providers`,
/// `hub`, `token_url`; an array's entry by its index; empty: the file as a
/// whole), and the message `check-config` prints. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: Vec<String>,
    pub message: String,
}

/// A parse error as `LINE:COLUMN: in [TABLE]: what, and how to fix it`.
pub(crate) fn locate(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_owned();
    if message.starts_with("unknown field `client_secret`") {
        message = "client_secret is not allowed: secrets never go in the config file; use client_secret_env (an environment variable's name) or client_secret_file (a 0600 file)".into();
    }
    let Some(span) = e.span() else {
        return format!(" {message}");
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // The table the error is in: the last header above it.
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|header| format!(" in {header}:"))
        .unwrap_or_default();
    format!("{line}:{column}:{table} {message}")
}

/// A problem of one table: the key it is about, in the table (empty: the
/// table itself), and what is wrong. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub key: Vec<String>,
    pub reason: String,
}

/// An error naming the key (in its table) it is about.
pub(crate) type KeyedError = (Vec<String>, String);

/// The problems of one table, collected instead of stopping at the first.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) list: Vec<Fault>,
}

impl Faults {
    pub(crate) fn add(&mut self, key: &[&str], reason: String) {
        let key = key.iter().map(|k| (*k).to_owned()).collect();
        self.list.push(Fault { key, reason });
    }

    /// `r`'s value, or `None` with its error recorded at `key`.
    pub(crate) fn take<T>(&mut self, key: &[&str], r: Result<T, String>) -> Option<T> {
        r.map_err(|reason| self.add(key, reason)).ok()
    }

    /// [`Faults::take`] for an error that names its own key.
    pub(crate) fn take_keyed<T>(&mut self, r: Result<T, (Vec<String>, String)>) -> Option<T> {
        r.map_err(|(key, reason)| self.list.push(Fault { key, reason }))
            .ok()
    }
}
