//! Typed errors, mapped back from gRPC status codes and `ErrorInfo`, so
//! callers match on variants instead of parsing messages. The vocabulary is
//! the one every tokend SDK shares (docs/sdks.md, "One vocabulary in four SDKs").

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// The message tonic gives a call that ran out of the client's deadline
/// (`tonic::TimeoutExpired`, surfaced as `CANCELLED`).
const TONIC_TIMEOUT: &str = "Timeout expired";

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
    /// left), or tokend's storage is (`reason` says which: e.g.
    /// `PROVIDER_UNAVAILABLE`, `STORAGE_UNAVAILABLE`, `SHUTTING_DOWN`).
    /// Retry after `retry_after` when given; the client does not retry it
    /// by itself.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
        reason: String,
    },
    /// A malformed field. `reason` is the broker's (`INVALID_ARGUMENT`,
    /// `MALFORMED_REQUEST`, `AUTHORIZATION_CODE_REJECTED`), empty when the
    /// client itself refused the value.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: String,
        description: String,
        reason: String,
    },
    /// An install would replace another account's grant without `replace`
    /// (reason `CONNECTION_ID_TAKEN`).
    #[error("connection {connection_id} already exists: {message}")]
    AlreadyExists {
        connection_id: String,
        message: String,
    },
    /// A concurrent change won (reason `CONCURRENT_MODIFICATION`): read
    /// again and retry if the change still makes sense.
    #[error("aborted by a concurrent change: {message}")]
    Aborted {
        connection_id: String,
        message: String,
    },
    /// The call ran out of time: the client's own deadline
    /// (`ClientBuilder::timeout`) or the broker's `DEADLINE_EXCEEDED`.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded { message: String },
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    #[error("unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// The provider rejected tokend's client credentials (operator problem).
    #[error("provider misconfigured: {message}")]
    ProviderMisconfigured { message: String },
    /// The broker cannot read the stored record (sealed with a key it
    /// lacks, or damaged; reason `RECORD_UNREADABLE`, with `code`
    /// `FAILED_PRECONDITION` or `DATA_LOSS`). An operator problem.
    #[error("record of connection {connection_id} unreadable: {message}")]
    RecordUnreadable {
        connection_id: String,
        code: Code,
        message: String,
    },
    /// A rate limit or stream cap (`reason`, e.g. `CALLER_RATE_LIMITED`);
    /// retry after `retry_after` when given.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
        reason: String,
    },
    /// An event cursor the broker no longer covers (older than its
    /// retention, or from another data dir). Resync from
    /// `list_connections`, then resume from `oldest_cursor` (or live).
    #[error("event cursor expired: {message}")]
    CursorExpired {
        oldest_cursor: String,
        message: String,
    },
    /// The broker could not be reached (down, restarting, network), after
    /// the client's transport retries.
    #[error("cannot reach tokend: {message}")]
    Transport { message: String },
    /// Any other status.
    #[error("tokend answered {code:?}: {message}")]
    Other {
        code: Code,
        message: String,
        reason: String,
    },
    /// The upstream API answered 401 (`status`) again to the replay with a
    /// freshly refreshed token: the token is not the problem (scopes, the
    /// provider's side). Raised by the reqwest middleware and the tower
    /// layer unless built with `second_401(Second401::Return)`, which hands
    /// over the 401 response instead.
    #[error("upstream rejected the refreshed token for connection {connection_id} (HTTP {status})")]
    StillUnauthorized { connection_id: String, status: u16 },
}

impl Error {
    /// The grant or the connection is gone: its cached token must go too.
    pub(crate) fn means_gone(&self) -> bool {
        matches!(
            self,
            Error::ReconnectRequired { .. } | Error::NotFound { .. }
        )
    }

    /// The gRPC code this error stands for: the broker's, `UNAVAILABLE` for
    /// `Transport`, `DEADLINE_EXCEEDED` for the client's own deadline;
    /// `None` for `StillUnauthorized`, which is an upstream HTTP answer.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::ReconnectRequired { .. } | Error::ProviderMisconfigured { .. } => {
                Code::FailedPrecondition
            }
            Error::NotFound { .. } => Code::NotFound,
            Error::Unavailable { .. } | Error::Transport { .. } => Code::Unavailable,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Aborted { .. } => Code::Aborted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::RecordUnreadable { code, .. } | Error::Other { code, .. } => *code,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::CursorExpired { .. } => Code::OutOfRange,
            Error::StillUnauthorized { .. } => return None,
        })
    }

    /// The `ErrorInfo` reason tokend gave, when there is one.
    pub fn reason(&self) -> Option<&str> {
        let reason = match self {
            Error::ReconnectRequired { .. } => "RECONNECT_REQUIRED",
            Error::ProviderMisconfigured { .. } => "PROVIDER_MISCONFIGURED",
            Error::RecordUnreadable { .. } => "RECORD_UNREADABLE",
            Error::CursorExpired { .. } => "CURSOR_EXPIRED",
            Error::AlreadyExists { .. } => "CONNECTION_ID_TAKEN",
            Error::Aborted { .. } => "CONCURRENT_MODIFICATION",
            Error::NotFound { .. } => "CONNECTION_NOT_FOUND",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::Unauthenticated { .. } => "UNAUTHENTICATED",
            Error::Unavailable { reason, .. }
            | Error::InvalidArgument { reason, .. }
            | Error::ResourceExhausted { reason, .. }
            | Error::Other { reason, .. } => reason,
            Error::DeadlineExceeded { .. }
            | Error::Transport { .. }
            | Error::StillUnauthorized { .. } => "",
        };
        (!reason.is_empty()).then_some(reason)
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
            (code, "RECORD_UNREADABLE") => Error::RecordUnreadable {
                connection_id: meta("connection_id"),
                code,
                message,
            },
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
                    reason: reason.to_owned(),
                }
            }
            (Code::AlreadyExists, _) => Error::AlreadyExists {
                connection_id: meta("connection_id"),
                message,
            },
            (Code::Aborted, _) => Error::Aborted {
                connection_id: meta("connection_id"),
                message,
            },
            (Code::DeadlineExceeded, _) => Error::DeadlineExceeded { message },
            (Code::Cancelled, "") if message == TONIC_TIMEOUT => Error::DeadlineExceeded {
                message: "no answer within the client's timeout".into(),
            },
            (Code::OutOfRange, "CURSOR_EXPIRED") => Error::CursorExpired {
                oldest_cursor: meta("oldest_cursor"),
                message,
            },
            (Code::PermissionDenied, _) => Error::PermissionDenied { message },
            (Code::Unauthenticated, _) => Error::Unauthenticated { message },
            (Code::ResourceExhausted, _) => Error::ResourceExhausted {
                message,
                retry_after,
                reason: reason.to_owned(),
            },
            // UNAVAILABLE without tokend's ErrorInfo comes from the transport:
            // the broker is down or restarting.
            (Code::Unavailable, "") => Error::Transport { message },
            (Code::Unavailable, _) => Error::Unavailable {
                message,
                retry_after,
                reason: reason.to_owned(),
            },
            (code, _) => Error::Other {
                code,
                message,
                reason: reason.to_owned(),
            },
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
        assert!(matches!(
            Error::from_status(&status(Code::AlreadyExists, "CONNECTION_ID_TAKEN", &[("connection_id", "t")])),
            Error::AlreadyExists { connection_id, .. } if connection_id == "t"
        ));
        assert!(matches!(
            Error::from_status(&status(Code::Aborted, "CONCURRENT_MODIFICATION", &[("connection_id", "a")])),
            Error::Aborted { connection_id, .. } if connection_id == "a"
        ));
        for code in [Code::DataLoss, Code::FailedPrecondition] {
            let e = Error::from_status(&status(
                code,
                "RECORD_UNREADABLE",
                &[("connection_id", "r")],
            ));
            assert!(
                matches!(&e, Error::RecordUnreadable { connection_id, code: c, .. } if connection_id == "r" && *c == code),
                "{e:?}"
            );
            assert_eq!(e.reason(), Some("RECORD_UNREADABLE"));
        }
        assert!(matches!(
            Error::from_status(&status(Code::DeadlineExceeded, "REQUEST_BODY_TIMEOUT", &[])),
            Error::DeadlineExceeded { .. }
        ));
        // tonic's own deadline (`Endpoint::timeout`) surfaces as CANCELLED.
        assert!(matches!(
            Error::from_status(&tonic::Status::cancelled(TONIC_TIMEOUT)),
            Error::DeadlineExceeded { .. }
        ));
        let other = Error::from_status(&status(Code::Internal, "STORAGE_FAILURE", &[]));
        assert_eq!(other.code(), Some(Code::Internal));
        assert_eq!(other.reason(), Some("STORAGE_FAILURE"));
        let unavailable = Error::from_status(&status(Code::Unavailable, "SHUTTING_DOWN", &[]));
        assert_eq!(unavailable.reason(), Some("SHUTTING_DOWN"));
        assert_eq!(
            Error::Transport {
                message: "x".into()
            }
            .code(),
            Some(Code::Unavailable)
        );
    }
}
