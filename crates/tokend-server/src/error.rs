//! The server's error type and the one place errors become gRPC statuses.

use std::{collections::HashMap, time::Duration};

use tokend_core::{ConnectionId, LastError};
use tokend_engine::EngineError;
use tokend_store::StoreError;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error tokend returns.
pub const ERROR_DOMAIN: &str = "tokend.dev";

/// Everything a tokend RPC can fail with. Each variant has exactly one gRPC
/// mapping, in [`ServiceError::to_status`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// What the engine refused or failed with.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A request whose bytes are not a valid message of its type.
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// The code says "unauthenticated"; the message says what to send.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("caller {caller} lacks {permission:?} permission{}", connection.as_ref().map(|c| format!(" on connection {c}")).unwrap_or_default())]
    PermissionDenied {
        caller: String,
        permission: tokend_config::identity::Permission,
        connection: Option<ConnectionId>,
    },
    #[error("caller {caller} exceeded its request rate")]
    RateLimited { caller: String },
    #[error("caller {caller} already has {max} watch streams open")]
    TooManyWatchStreams { caller: String, max: usize },
    /// The caller already has its cap of installs running (they finish in
    /// the engine even when the caller gave up on them).
    #[error("caller {caller} already has {max} installs running; retry when one finishes")]
    TooManyInstalls { caller: String, max: usize },
    /// A server-wide transport bound ([`tokend_config::limits::Limits`]) is reached.
    #[error("the server is at its {limit} limit; retry shortly")]
    Overloaded { limit: &'static str },
    /// The request's body did not arrive within the body timeout.
    #[error("the request body did not arrive within {}", humanize(*.0))]
    RequestTimeout(Duration),
    /// A watch stream's client took nothing for the whole stall grace: the
    /// stream was cut off. It resumes after `cursor` (WatchConnections) or
    /// with a fresh snapshot (WatchConnection).
    #[error(
        "this watch stream's client read nothing for {}: the stream was cut off; resume after the last cursor received (WatchConnection: subscribe again)",
        humanize(*stalled)
    )]
    SubscriberTooSlow {
        cursor: Option<String>,
        stalled: Duration,
    },
}

impl ServiceError {
    /// An INVALID_ARGUMENT naming `field`: the edge's request checks and
    /// the engine's say it the same way.
    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        description: impl Into<String>,
    ) -> Self {
        EngineError::invalid(field, description).into()
    }

    /// The gRPC status for this error: code, lowercase message, and
    /// `google.rpc.ErrorInfo` / `RetryInfo` / `BadRequest` details.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        let info = |reason: &str, metadata: HashMap<String, String>| {
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
        };
        let (code, details) = match self {
            ServiceError::Engine(e) => engine_status(e, &info),
            ServiceError::MalformedRequest(detail) => {
                let mut d = info("MALFORMED_REQUEST", HashMap::new());
                d.add_bad_request_violation("request", detail.clone());
                (Code::InvalidArgument, d)
            }
            ServiceError::SubscriberTooSlow { cursor, .. } => {
                let mut d = info(
                    "SUBSCRIBER_TOO_SLOW",
                    cursor
                        .iter()
                        .map(|c| ("cursor".to_owned(), c.clone()))
                        .collect(),
                );
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::Unavailable, d)
            }
            ServiceError::Unauthenticated(_) => (
                Code::Unauthenticated,
                info("UNAUTHENTICATED", HashMap::new()),
            ),
            ServiceError::PermissionDenied {
                caller,
                permission,
                connection,
            } => {
                let mut m = HashMap::from([
                    ("caller".into(), caller.clone()),
                    (
                        "permission".into(),
                        format!("{permission:?}").to_lowercase(),
                    ),
                ]);
                if let Some(c) = connection {
                    m.insert("connection_id".into(), c.to_string());
                }
                (Code::PermissionDenied, info("PERMISSION_DENIED", m))
            }
            ServiceError::RateLimited { caller } => {
                let mut d = info(
                    "CALLER_RATE_LIMITED",
                    HashMap::from([("caller".into(), caller.clone())]),
                );
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::ResourceExhausted, d)
            }
            ServiceError::TooManyWatchStreams { caller, max } => (
                Code::ResourceExhausted,
                info(
                    "TOO_MANY_WATCH_STREAMS",
                    HashMap::from([
                        ("caller".into(), caller.clone()),
                        ("max_watch_streams".into(), max.to_string()),
                    ]),
                ),
            ),
            ServiceError::TooManyInstalls { caller, max } => {
                let mut d = info(
                    "TOO_MANY_INSTALLS",
                    HashMap::from([
                        ("caller".into(), caller.clone()),
                        ("max_installs".into(), max.to_string()),
                    ]),
                );
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::ResourceExhausted, d)
            }
            ServiceError::Overloaded { limit } => {
                let mut d = info(
                    "SERVER_OVERLOADED",
                    HashMap::from([("limit".into(), (*limit).into())]),
                );
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::ResourceExhausted, d)
            }
            ServiceError::RequestTimeout(_) => (
                Code::DeadlineExceeded,
                info("REQUEST_BODY_TIMEOUT", HashMap::new()),
            ),
        };
        Status::with_error_details(code, message, details)
    }
}

/// The code and details of what the engine refused or failed with.
fn engine_status(
    e: &EngineError,
    info: &impl Fn(&str, HashMap<String, String>) -> ErrorDetails,
) -> (Code, ErrorDetails) {
    match e {
        EngineError::InvalidArgument { field, description } => {
            let mut d = info(
                "INVALID_ARGUMENT",
                HashMap::from([("field".into(), field.to_string())]),
            );
            d.add_bad_request_violation(field.to_string(), description.clone());
            (Code::InvalidArgument, d)
        }
        EngineError::NotFound(id) => (
            Code::NotFound,
            info(
                "CONNECTION_NOT_FOUND",
                HashMap::from([("connection_id".into(), id.to_string())]),
            ),
        ),
        EngineError::ReconnectRequired {
            id,
            last_error,
            cause,
        } => {
            let mut m = provider_metadata(last_error.as_ref());
            m.insert("connection_id".into(), id.to_string());
            if let Some(cause) = cause {
                m.insert("cause".into(), cause.as_str().into());
            }
            (Code::FailedPrecondition, info("RECONNECT_REQUIRED", m))
        }
        EngineError::ProviderMisconfigured {
            provider,
            last_error,
        } => {
            let mut m = provider_metadata(last_error.as_ref());
            m.insert("provider".into(), provider.clone());
            (Code::FailedPrecondition, info("PROVIDER_MISCONFIGURED", m))
        }
        EngineError::ProviderUnavailable {
            provider,
            last_error,
            retry_after,
        } => {
            let mut m = provider_metadata(last_error.as_ref());
            m.insert("provider".into(), provider.clone());
            let mut d = info("PROVIDER_UNAVAILABLE", m);
            if let Some(delay) = retry_after {
                d.set_retry_info(Some(*delay));
            }
            (Code::Unavailable, d)
        }
        EngineError::CodeRejected(last_error) => {
            let mut d = info(
                "AUTHORIZATION_CODE_REJECTED",
                provider_metadata(Some(last_error)),
            );
            d.add_bad_request_violation("authorization_code.code", last_error.message.clone());
            (Code::InvalidArgument, d)
        }
        EngineError::ProviderMismatch { id, existing, .. } => (
            Code::FailedPrecondition,
            info(
                "PROVIDER_MISMATCH",
                HashMap::from([
                    ("connection_id".into(), id.to_string()),
                    ("provider".into(), existing.clone()),
                ]),
            ),
        ),
        EngineError::ConnectionIdTaken { id, account_id } => (
            Code::AlreadyExists,
            info(
                "CONNECTION_ID_TAKEN",
                HashMap::from([
                    ("connection_id".into(), id.to_string()),
                    ("account_id".into(), account_id.clone()),
                ]),
            ),
        ),
        EngineError::RecordUnreadable(id) => (
            Code::FailedPrecondition,
            info(
                "RECORD_UNREADABLE",
                HashMap::from([("connection_id".into(), id.to_string())]),
            ),
        ),
        EngineError::Contended(id) => (
            Code::Aborted,
            info(
                "CONCURRENT_MODIFICATION",
                HashMap::from([("connection_id".into(), id.to_string())]),
            ),
        ),
        EngineError::CursorExpired {
            detail,
            oldest_cursor,
        } => (
            Code::OutOfRange,
            info(
                "CURSOR_EXPIRED",
                HashMap::from([
                    ("oldest_cursor".into(), oldest_cursor.clone()),
                    ("detail".into(), (*detail).into()),
                ]),
            ),
        ),
        EngineError::ShuttingDown => {
            let mut d = info("SHUTTING_DOWN", HashMap::new());
            d.set_retry_info(Some(Duration::from_secs(1)));
            (Code::Unavailable, d)
        }
        EngineError::Internal(_) => (Code::Internal, info("INTERNAL", HashMap::new())),
        EngineError::Store(StoreError::Corrupt { id, .. }) => (
            Code::DataLoss,
            info(
                "RECORD_UNREADABLE",
                HashMap::from([("connection_id".into(), id.clone())]),
            ),
        ),
        EngineError::Store(StoreError::Conflict { id, .. } | StoreError::Fenced { id, .. }) => (
            Code::Aborted,
            info(
                "CONCURRENT_MODIFICATION",
                HashMap::from([("connection_id".into(), id.to_string())]),
            ),
        ),
        EngineError::Store(StoreError::RevisionNotAdvanced { .. }) => {
            (Code::Internal, info("STORAGE_FAILURE", HashMap::new()))
        }
        EngineError::Store(StoreError::Backend(_)) => {
            let mut d = info("STORAGE_UNAVAILABLE", HashMap::new());
            d.set_retry_info(Some(Duration::from_secs(1)));
            (Code::Unavailable, d)
        }
        EngineError::StorageUnavailable { retry_after, .. } => {
            let mut d = info("STORAGE_UNAVAILABLE", HashMap::new());
            d.set_retry_info(Some(*retry_after));
            (Code::Unavailable, d)
        }
    }
}

/// A gRPC code as metrics labels and audit records name it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// `d` as people write it: "10s", "500ms".
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The provider's side of a failure, as `ErrorInfo` metadata.
fn provider_metadata(last_error: Option<&LastError>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let Some(e) = last_error {
        m.insert("error_class".into(), e.class.as_str().into());
        m.insert("provider_error".into(), e.code.clone());
        m.insert("provider_message".into(), e.message.clone());
        if let Some(c) = &e.correlation_id {
            m.insert("provider_correlation_id".into(), c.clone());
        }
        if let Some(s) = e.http_status {
            m.insert("provider_http_status".into(), s.to_string());
        }
    }
    m
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use tokend_core::ReconnectCause;
    use tonic_types::StatusExt as _;

    use super::*;

    #[test]
    fn each_error_maps_to_its_code_and_reason() {
        let id = ConnectionId::new("c1").unwrap();
        let cases: Vec<(ServiceError, Code, &str)> = vec![
            (
                ServiceError::invalid("connection_id", "bad"),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                EngineError::NotFound(id.clone()).into(),
                Code::NotFound,
                "CONNECTION_NOT_FOUND",
            ),
            (
                ServiceError::MalformedRequest("invalid wire type".into()),
                Code::InvalidArgument,
                "MALFORMED_REQUEST",
            ),
            (
                EngineError::ReconnectRequired {
                    id: id.clone(),
                    last_error: None,
                    cause: Some(ReconnectCause::RotationLost),
                }
                .into(),
                Code::FailedPrecondition,
                "RECONNECT_REQUIRED",
            ),
            (
                EngineError::Store(StoreError::Corrupt {
                    id: "c1".into(),
                    reason: "field access_token does not decrypt".into(),
                })
                .into(),
                Code::DataLoss,
                "RECORD_UNREADABLE",
            ),
            (
                EngineError::StorageUnavailable {
                    error: StoreError::Backend("disk gone".into()),
                    retry_after: Duration::from_millis(200),
                }
                .into(),
                Code::Unavailable,
                "STORAGE_UNAVAILABLE",
            ),
            (
                EngineError::Internal("refresh task panicked").into(),
                Code::Internal,
                "INTERNAL",
            ),
            (
                EngineError::RecordUnreadable(id.clone()).into(),
                Code::FailedPrecondition,
                "RECORD_UNREADABLE",
            ),
            (
                ServiceError::Unauthenticated("no key"),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                ServiceError::PermissionDenied {
                    caller: "svc".into(),
                    permission: crate::auth::Permission::Tokens,
                    connection: Some(id.clone()),
                },
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (
                ServiceError::RateLimited {
                    caller: "svc".into(),
                },
                Code::ResourceExhausted,
                "CALLER_RATE_LIMITED",
            ),
            (
                ServiceError::TooManyWatchStreams {
                    caller: "svc".into(),
                    max: 2,
                },
                Code::ResourceExhausted,
                "TOO_MANY_WATCH_STREAMS",
            ),
            (
                ServiceError::SubscriberTooSlow {
                    cursor: Some("c".into()),
                    stalled: Duration::from_secs(30),
                },
                Code::Unavailable,
                "SUBSCRIBER_TOO_SLOW",
            ),
            (
                ServiceError::TooManyInstalls {
                    caller: "svc".into(),
                    max: 16,
                },
                Code::ResourceExhausted,
                "TOO_MANY_INSTALLS",
            ),
        ];
        for (error, code, reason) in cases {
            let status = error.to_status();
            assert_eq!(status.code(), code, "{error}");
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
        }
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let status = ServiceError::from(EngineError::ProviderUnavailable {
            provider: "p".into(),
            last_error: None,
            retry_after: Some(Duration::from_secs(7)),
        })
        .to_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(7))
        );
    }

    /// The operator is told the truth: a grant lost in transit is
    /// ROTATION_LOST, a revoked one REVOKED, in the ErrorInfo's `cause`.
    #[test]
    fn reconnect_required_names_its_cause() {
        for (cause, name) in [
            (ReconnectCause::RotationLost, "ROTATION_LOST"),
            (ReconnectCause::Revoked, "REVOKED"),
        ] {
            let status = ServiceError::from(EngineError::ReconnectRequired {
                id: ConnectionId::new("c1").unwrap(),
                last_error: None,
                cause: Some(cause),
            })
            .to_status();
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.metadata.get("cause").map(String::as_str), Some(name));
        }
    }
}
