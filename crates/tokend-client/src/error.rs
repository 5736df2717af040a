//! Typed errors, mapped back from gRPC status codes and `ErrorInfo`, so
//! callers match on variants instead of parsing messages.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// What a tokend call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The grant is revoked; the customer must reconnect. `provider_error`
    /// is the provider's code, e.g. `invalid_grant`.
    #[error("connection {connection_id} requires reconnecting ({provider_error})")]
    ReconnectRequired {
        connection_id: String,
        reason: String,
        provider_error: String,
        /// Why: `REVOKED` (the user or portal revoked the grant),
        /// `ROTATION_LOST` (lost in a refresh cut off by a crash), or
        /// `NO_REFRESH_TOKEN`, `CONSENT_REQUIRED` or `INTERACTION_REQUIRED`
        /// (the user must consent or sign in again); empty from brokers that
        /// do not say.
        cause: String,
    },
    #[error("connection {connection_id} not found")]
    NotFound { connection_id: String },
    /// The provider is failing (for `get_token`: and no valid token is
    /// left); retry after
    /// `retry_after` when given.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("invalid {field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    #[error("unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// The provider rejected tokend's client credentials (operator problem).
    #[error("provider misconfigured: {message}")]
    ProviderMisconfigured { message: String },
    /// A rate limit or stream cap; retry after `retry_after` when given.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    /// An event cursor the broker no longer covers (older than its
    /// retention, or from another data dir). Resync from
    /// `list_connections`, then resume from `oldest_cursor` (or live).
    #[error("event cursor expired: {message}")]
    CursorExpired {
        oldest_cursor: String,
        message: String,
    },
    /// The broker could not be reached (down, restarting, network).
    #[error("cannot reach tokend: {message}")]
    Transport { message: String },
    /// Any other status.
    #[error("tokend answered {code:?}: {message}")]
    Other { code: Code, message: String },
    /// The upstream API still answered 401 after one refresh.
    #[error("upstream rejected the refreshed token for connection {connection_id}")]
    StillUnauthorized { connection_id: String },
}

impl Error {
    /// The grant or the connection is gone: its cached token must go too.
    pub(crate) fn means_gone(&self) -> bool {
        matches!(
            self,
            Error::ReconnectRequired { .. } | Error::NotFound { .. }
        )
    }

    /// Maps a status from tokend.
    pub fn from_status(status: &tonic::Status) -> Self {
        let info = status.get_details_error_info();
        let reason = info.as_ref().map(|i| i.reason.as_str()).unwrap_or("");
        let meta = |key: &str| {
            info.as_ref()
                .and_then(|i| i.metadata.get(key).cloned())
                .unwrap_or_default()
        };
        let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
        let message = status.message().to_owned();
        match (status.code(), reason) {
            (Code::FailedPrecondition, "RECONNECT_REQUIRED") => Error::ReconnectRequired {
                connection_id: meta("connection_id"),
                reason: meta("provider_message"),
                provider_error: meta("provider_error"),
                cause: meta("cause"),
            },
            (Code::FailedPrecondition, "PROVIDER_MISCONFIGURED") => {
                Error::ProviderMisconfigured { message }
            }
            (Code::NotFound, _) => Error::NotFound {
                connection_id: meta("connection_id"),
            },
            (Code::InvalidArgument, _) => {
                let violation = status
                    .get_details_bad_request()
                    .and_then(|b| b.field_violations.into_iter().next());
                Error::InvalidArgument {
                    field: violation
                        .as_ref()
                        .map(|v| v.field.clone())
                        .unwrap_or_else(|| meta("field")),
                    description: violation.map(|v| v.description).unwrap_or(message),
                }
            }
            (Code::OutOfRange, "CURSOR_EXPIRED") => Error::CursorExpired {
                oldest_cursor: meta("oldest_cursor"),
                message,
            },
            (Code::PermissionDenied, _) => Error::PermissionDenied { message },
            (Code::Unauthenticated, _) => Error::Unauthenticated { message },
            (Code::ResourceExhausted, _) => Error::ResourceExhausted {
                message,
                retry_after,
            },
            // UNAVAILABLE without tokend's ErrorInfo comes from the transport:
            // the broker is down or restarting.
            (Code::Unavailable, "") => Error::Transport { message },
            (Code::Unavailable, _) => Error::Unavailable {
                message,
                retry_after,
            },
            (code, _) => Error::Other { code, message },
        }
    }

    /// Whether retrying the same call later may succeed: transport trouble
    /// while the broker restarts.
    pub fn is_transient_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::from_status(&status)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Transport {
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn status(code: Code, reason: &str, metadata: &[(&str, &str)]) -> tonic::Status {
        let metadata: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let mut details = ErrorDetails::with_error_info(reason, "tokend.dev", metadata);
        if code == Code::Unavailable {
            details.set_retry_info(Some(Duration::from_secs(3)));
        }
        tonic::Status::with_error_details(code, "message", details)
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        assert!(matches!(
            Error::from_status(&status(Code::FailedPrecondition, "RECONNECT_REQUIRED", &[("connection_id", "c"), ("provider_error", "invalid_grant")])),
            Error::ReconnectRequired { connection_id, provider_error, .. } if connection_id == "c" && provider_error == "invalid_grant"
        ));
        assert!(matches!(
            Error::from_status(&status(Code::Unavailable, "PROVIDER_UNAVAILABLE", &[])),
            Error::Unavailable { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            Error::from_status(&tonic::Status::unavailable("connection refused")),
            Error::Transport { .. }
        ));
        assert!(matches!(
            Error::from_status(&status(Code::InvalidArgument, "INVALID_ARGUMENT", &[("field", "min_ttl_seconds")])),
            Error::InvalidArgument { field, .. } if field == "min_ttl_seconds"
        ));
        assert!(matches!(
            Error::from_status(&status(
                Code::FailedPrecondition,
                "PROVIDER_MISCONFIGURED",
                &[]
            )),
            Error::ProviderMisconfigured { .. }
        ));
        assert!(matches!(
            Error::from_status(&status(Code::NotFound, "CONNECTION_NOT_FOUND", &[("connection_id", "x")])),
            Error::NotFound { connection_id } if connection_id == "x"
        ));
        assert!(matches!(
            Error::from_status(&tonic::Status::permission_denied("no")),
            Error::PermissionDenied { .. }
        ));
    }
}
