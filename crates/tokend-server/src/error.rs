//! The server's error type and the one place errors become gRPC statuses.

use std::{collections::HashMap, time::Duration};

use tokend_core::{Connection, ConnectionId, ErrorClass, LastError, ProviderName, ReconnectCause};
use tokend_provider::ProviderError;
use tokend_store::StoreError;

use crate::engine::Failure;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error tokend returns.
pub const ERROR_DOMAIN: &str = "tokend.dev";

/// Everything a tokend RPC can fail with. Each variant has exactly one gRPC
/// mapping, in [`ServiceError::to_status`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The field's name, or a path into a map (`params.dc`).
        field: std::borrow::Cow<'static, str>,
        description: String,
    },
    #[error("connection {0} not found")]
    NotFound(ConnectionId),
    /// A request whose bytes are not a valid message of its type.
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// The grant is revoked; only a new install revives the connection.
    #[error("connection {id} requires reconnecting")]
    ReconnectRequired {
        id: ConnectionId,
        last_error: Option<LastError>,
        cause: Option<ReconnectCause>,
    },
    /// The provider rejected tokend's own client credentials.
    #[error("provider {provider} rejected tokend's client credentials")]
    ProviderMisconfigured {
        provider: String,
        last_error: Option<LastError>,
    },
    /// The provider failed transiently: a refresh or a code exchange could
    /// not be made. (A GetToken only gets this with no valid token left;
    /// a ForceRefresh may get it while the old token is still valid.)
    #[error(
        "provider {provider} is unavailable: {}{}",
        last_error.as_ref().map_or_else(|| "the call failed".to_owned(), |e| format!("{} ({})", e.message, e.code)),
        retry_after.map(|d| format!("; retry after {} s", d.as_secs().max(1))).unwrap_or_default()
    )]
    ProviderUnavailable {
        provider: String,
        last_error: Option<LastError>,
        retry_after: Option<Duration>,
    },
    /// An authorization code the provider refused during install.
    #[error("the provider rejected the authorization code: {}", .0.message)]
    CodeRejected(LastError),
    /// Re-installing a connection under a different provider.
    #[error("connection {id} belongs to provider {existing}, not {requested}")]
    ProviderMismatch {
        id: ConnectionId,
        existing: String,
        requested: String,
    },
    /// The connection id holds another account's grant.
    #[error(
        "connection {id} holds account {account_id:?}; name the connection_id and set replace to replace it"
    )]
    ConnectionIdTaken {
        id: ConnectionId,
        account_id: String,
    },
    /// An install or delete would replace a stored record that cannot be
    /// read, and the request did not set `force`.
    #[error(
        "connection {0}'s stored record cannot be read (sealed with a key this server lacks, or damaged) and may hold the only copy of its grant; start tokend with the key file that sealed it, or set force to replace or delete it"
    )]
    RecordUnreadable(ConnectionId),
    /// Concurrent writers kept winning; the caller may retry.
    #[error("connection {0} is being modified concurrently, retry")]
    Contended(ConnectionId),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A bug (a task panicked); the caller may retry.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The code says "unauthenticated"; the message says what to send.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("caller {caller} lacks {permission:?} permission{}", connection.as_ref().map(|c| format!(" on connection {c}")).unwrap_or_default())]
    PermissionDenied {
        caller: String,
        permission: crate::auth::Permission,
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
    /// A server-wide transport bound ([`crate::limits::Limits`]) is reached.
    #[error("the server is at its {limit} limit; retry shortly")]
    Overloaded { limit: &'static str },
    /// The request's body did not arrive within the body timeout.
    #[error("the request body did not arrive within {}", humanize(*.0))]
    RequestTimeout(Duration),
    /// An event cursor the log no longer covers: older than retention, or
    /// from another log (a restored data dir).
    #[error(
        "the event cursor has expired ({detail}); resync from ListConnections, then resume from the oldest cursor {oldest_cursor}"
    )]
    CursorExpired {
        detail: &'static str,
        oldest_cursor: String,
    },
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
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed while persisting a refresh; the grant is kept and
    /// retried, and nothing was handed out.
    #[error("storage unavailable: {error}")]
    StorageUnavailable {
        error: StoreError,
        retry_after: Duration,
    },
}

/// The one mapping of a refresh failure to what the caller is told.
impl From<Failure> for ServiceError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Provider {
                provider,
                error,
                retry_after,
            } => {
                if error.class == ErrorClass::ClientMisconfigured {
                    ServiceError::ProviderMisconfigured {
                        provider: provider.to_string(),
                        last_error: Some(error),
                    }
                } else {
                    ServiceError::ProviderUnavailable {
                        provider: provider.to_string(),
                        last_error: Some(error),
                        retry_after,
                    }
                }
            }
            Failure::Revoked(record) => ServiceError::reconnect_required(&record),
            Failure::UnknownProvider(p) => ServiceError::ProviderMisconfigured {
                provider: p.to_string(),
                last_error: None,
            },
            Failure::NotFound(id) => ServiceError::NotFound(id),
            // A record that cannot be decoded is DATA_LOSS on every path.
            Failure::Store {
                error: error @ StoreError::Corrupt { .. },
                ..
            } => ServiceError::Store(error),
            Failure::Store {
                error: error @ (StoreError::Conflict { .. } | StoreError::Fenced { .. }),
                ..
            } => ServiceError::Store(error),
            Failure::Store { error, retry_after } => {
                ServiceError::StorageUnavailable { error, retry_after }
            }
            Failure::Contended(id) => ServiceError::Contended(id),
            Failure::Panicked => ServiceError::Internal("refresh task panicked"),
            Failure::ShuttingDown => ServiceError::ShuttingDown,
        }
    }
}

impl ServiceError {
    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        description: impl Into<String>,
    ) -> Self {
        ServiceError::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// A RECONNECT_REQUIRED answer for `record`.
    pub fn reconnect_required(record: &Connection) -> Self {
        ServiceError::ReconnectRequired {
            id: record.id.clone(),
            last_error: record.last_error.clone(),
            cause: record.reconnect_cause,
        }
    }

    /// A `min_ttl_seconds` no refresh can satisfy.
    pub fn min_ttl_too_long(min_ttl: Duration, grantable: Duration, lifetime: Duration) -> Self {
        ServiceError::invalid(
            "min_ttl_seconds",
            format!(
                "{} s is more than tokend can promise: the provider grants {} s tokens, \
                 renewed {} s before expiry",
                min_ttl.as_secs(),
                lifetime.as_secs(),
                lifetime.saturating_sub(grantable).as_secs()
            ),
        )
    }

    /// An authorization-code exchange the provider refused or failed.
    pub fn code_exchange_failed(
        provider: &ProviderName,
        e: &ProviderError,
        now: tokend_core::Timestamp,
    ) -> Self {
        let last = e.to_last_error(now);
        match e.class {
            ErrorClass::Revoked => ServiceError::CodeRejected(last),
            ErrorClass::ClientMisconfigured => ServiceError::ProviderMisconfigured {
                provider: provider.to_string(),
                last_error: Some(last),
            },
            ErrorClass::RateLimited | ErrorClass::Transient => ServiceError::ProviderUnavailable {
                provider: provider.to_string(),
                last_error: Some(last),
                // The caller retries the whole install: say when.
                retry_after: Some(e.retry_after.unwrap_or(Duration::from_secs(1))),
            },
        }
    }

    /// The gRPC status for this error: code, lowercase message, and
    /// `google.rpc.ErrorInfo` / `RetryInfo` / `BadRequest` details.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        let info = |reason: &str, metadata: HashMap<String, String>| {
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
        };
        let (code, details) = match self {
            ServiceError::InvalidArgument { field, description } => {
                let mut d = info(
                    "INVALID_ARGUMENT",
                    HashMap::from([("field".into(), field.to_string())]),
                );
                d.add_bad_request_violation(field.to_string(), description.clone());
                (Code::InvalidArgument, d)
            }
            ServiceError::MalformedRequest(detail) => {
                let mut d = info("MALFORMED_REQUEST", HashMap::new());
                d.add_bad_request_violation("request", detail.clone());
                (Code::InvalidArgument, d)
            }
            ServiceError::NotFound(id) => (
                Code::NotFound,
                info(
                    "CONNECTION_NOT_FOUND",
                    HashMap::from([("connection_id".into(), id.to_string())]),
                ),
            ),
            ServiceError::ReconnectRequired {
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
            ServiceError::ProviderMisconfigured {
                provider,
                last_error,
            } => {
                let mut m = provider_metadata(last_error.as_ref());
                m.insert("provider".into(), provider.clone());
                (Code::FailedPrecondition, info("PROVIDER_MISCONFIGURED", m))
            }
            ServiceError::ProviderUnavailable {
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
            ServiceError::CodeRejected(last_error) => {
                let mut d = info(
                    "AUTHORIZATION_CODE_REJECTED",
                    provider_metadata(Some(last_error)),
                );
                d.add_bad_request_violation("authorization_code.code", last_error.message.clone());
                (Code::InvalidArgument, d)
            }
            ServiceError::ProviderMismatch { id, existing, .. } => (
                Code::FailedPrecondition,
                info(
                    "PROVIDER_MISMATCH",
                    HashMap::from([
                        ("connection_id".into(), id.to_string()),
                        ("provider".into(), existing.clone()),
                    ]),
                ),
            ),
            ServiceError::ConnectionIdTaken { id, account_id } => (
                Code::AlreadyExists,
                info(
                    "CONNECTION_ID_TAKEN",
                    HashMap::from([
                        ("connection_id".into(), id.to_string()),
                        ("account_id".into(), account_id.clone()),
                    ]),
                ),
            ),
            ServiceError::RecordUnreadable(id) => (
                Code::FailedPrecondition,
                info(
                    "RECORD_UNREADABLE",
                    HashMap::from([("connection_id".into(), id.to_string())]),
                ),
            ),
            ServiceError::Contended(id) => (
                Code::Aborted,
                info(
                    "CONCURRENT_MODIFICATION",
                    HashMap::from([("connection_id".into(), id.to_string())]),
                ),
            ),
            ServiceError::CursorExpired {
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
            ServiceError::ShuttingDown => {
                let mut d = info("SHUTTING_DOWN", HashMap::new());
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::Unavailable, d)
            }
            ServiceError::Internal(_) => (Code::Internal, info("INTERNAL", HashMap::new())),
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
            ServiceError::Store(StoreError::Corrupt { id, .. }) => (
                Code::DataLoss,
                info(
                    "RECORD_UNREADABLE",
                    HashMap::from([("connection_id".into(), id.clone())]),
                ),
            ),
            ServiceError::Store(
                StoreError::Conflict { id, .. } | StoreError::Fenced { id, .. },
            ) => (
                Code::Aborted,
                info(
                    "CONCURRENT_MODIFICATION",
                    HashMap::from([("connection_id".into(), id.to_string())]),
                ),
            ),
            ServiceError::Store(StoreError::RevisionNotAdvanced { .. }) => {
                (Code::Internal, info("STORAGE_FAILURE", HashMap::new()))
            }
            ServiceError::Store(StoreError::Backend(_)) => {
                let mut d = info("STORAGE_UNAVAILABLE", HashMap::new());
                d.set_retry_info(Some(Duration::from_secs(1)));
                (Code::Unavailable, d)
            }
            ServiceError::StorageUnavailable { retry_after, .. } => {
                let mut d = info("STORAGE_UNAVAILABLE", HashMap::new());
                d.set_retry_info(Some(*retry_after));
                (Code::Unavailable, d)
            }
        };
        Status::with_error_details(code, message, details)
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
                ServiceError::NotFound(id.clone()),
                Code::NotFound,
                "CONNECTION_NOT_FOUND",
            ),
            (
                ServiceError::MalformedRequest("invalid wire type".into()),
                Code::InvalidArgument,
                "MALFORMED_REQUEST",
            ),
            (
                ServiceError::ReconnectRequired {
                    id: id.clone(),
                    last_error: None,
                    cause: Some(ReconnectCause::RotationLost),
                },
                Code::FailedPrecondition,
                "RECONNECT_REQUIRED",
            ),
            (
                ServiceError::Store(StoreError::Corrupt {
                    id: "c1".into(),
                    reason: "field access_token does not decrypt".into(),
                }),
                Code::DataLoss,
                "RECORD_UNREADABLE",
            ),
            (
                ServiceError::RecordUnreadable(id.clone()),
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
        let status = ServiceError::ProviderUnavailable {
            provider: "p".into(),
            last_error: None,
            retry_after: Some(Duration::from_secs(7)),
        }
        .to_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(7))
        );
    }
}
