//! How the binary fails: one line on stderr (one JSON object with
//! `--json`), never a backtrace, and an exit code by class so scripts can
//! tell "not found" from "try again later".

use std::process::ExitCode;

use tokend_client::Error as ClientError;

/// Exit codes, as documented in docs/sdks.md ("The CLI").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anything else.
    Other = 1,
    /// A wrong flag, argument or configuration value (clap uses 2 too).
    Usage = 2,
    NotFound = 3,
    /// The connection needs reconnecting by its customer.
    ReconnectRequired = 4,
    /// The broker or a provider is unavailable: retry later.
    Unavailable = 5,
    /// Unauthenticated or permission denied.
    Denied = 6,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Other => "error",
            Class::Usage => "usage",
            Class::NotFound => "not_found",
            Class::ReconnectRequired => "reconnect_required",
            Class::Unavailable => "unavailable",
            Class::Denied => "denied",
        }
    }
}

/// The class of `error`, from the first cause that says.
pub fn classify(error: &anyhow::Error) -> Class {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::NotFound { .. } => Class::NotFound,
                ClientError::ReconnectRequired { .. } => Class::ReconnectRequired,
                ClientError::Unavailable { .. }
                | ClientError::Transport { .. }
                | ClientError::ResourceExhausted { .. } => Class::Unavailable,
                ClientError::PermissionDenied { .. } | ClientError::Unauthenticated { .. } => {
                    Class::Denied
                }
                ClientError::InvalidArgument { .. } => Class::Usage,
                _ => Class::Other,
            };
        }
        if cause.is::<tokend_server::config::ConfigError>() || cause.is::<UsageError>() {
            return Class::Usage;
        }
        if let Some(e) = cause.downcast_ref::<tokend_server::ServerError>() {
            return match e {
                tokend_server::ServerError::OpenOnNetwork(_)
                | tokend_server::ServerError::PlaintextOnNetwork(_)
                | tokend_server::ServerError::Auth(_)
                | tokend_server::ServerError::Tls(_) => Class::Usage,
                _ => Class::Other,
            };
        }
    }
    Class::Other
}

/// A mistake in how the command was called, found after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints `error` as one line (or JSON) on stderr and gives its exit code.
pub fn report(error: &anyhow::Error, json: bool) -> ExitCode {
    let class = classify(error);
    let message = format!("{error:#}");
    if json {
        eprintln!(
            "{}",
            serde_json::json!({
                "error": { "class": class.name(), "message": message, "exitCode": class as u8 }
            })
        );
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(class as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25, item 9: a server stopped by a broken store exits non-zero
    /// (its supervisor restarts it), never 0 as after a requested stop.
    #[test]
    fn a_broken_store_exits_non_zero() {
        let e = anyhow::Error::new(tokend_server::ServerError::StoreBroken(
            "the store's writer thread panicked".into(),
        ));
        assert_eq!(classify(&e), Class::Other);
        assert_ne!(Class::Other as u8, 0);
    }

    #[test]
    fn each_class_has_its_code() {
        let client = |e: ClientError| classify(&anyhow::Error::new(e).context("token get"));
        assert_eq!(
            client(ClientError::NotFound {
                connection_id: "x".into()
            }),
            Class::NotFound
        );
        assert_eq!(
            client(ClientError::Transport {
                message: "down".into()
            }),
            Class::Unavailable
        );
        assert_eq!(
            client(ClientError::ReconnectRequired {
                connection_id: "x".into(),
                reason: String::new(),
                provider_error: String::new(),
                cause: String::new(),
            }),
            Class::ReconnectRequired
        );
        assert_eq!(
            classify(&anyhow::Error::new(UsageError("bad".into()))),
            Class::Usage
        );
        assert_eq!(classify(&anyhow::anyhow!("disk full")), Class::Other);
    }
}
