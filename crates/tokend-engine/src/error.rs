//! What the engine fails with, typed, with no transport in it: the edge
//! (tokend-server's `error.rs`) maps each variant to a gRPC status, and is
//! the only place that does.

use std::{borrow::Cow, time::Duration};

use std::sync::Arc;

use tokend_core::{Connection, ConnectionId, ErrorClass, LastError, ProviderName, ReconnectCause};
use tokend_provider::ProviderError;
use tokend_store::StoreError;

/// Everything the engine (and the event feed) can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The field's name, or a path into a map (`params.dc`).
        field: Cow<'static, str>,
        description: String,
    },
    #[error("connection {0} not found")]
    NotFound(ConnectionId),
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
    /// An event cursor the log no longer covers: older than retention, or
    /// from another log (a restored data dir).
    #[error(
        "the event cursor has expired ({detail}); resync from ListConnections, then resume from the oldest cursor {oldest_cursor}"
    )]
    CursorExpired {
        detail: &'static str,
        oldest_cursor: String,
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

/// Why a refresh did not produce a token. Cloneable: every waiter of a
/// shared flight receives the same failure, still typed.
#[derive(Clone, Debug)]
pub enum Failure {
    /// The provider failed (transient, rate limited or misconfigured); the
    /// connection stays ACTIVE and is retried after `retry_after`.
    Provider {
        provider: ProviderName,
        error: LastError,
        retry_after: Option<Duration>,
    },
    /// The grant is dead: the connection is RECONNECT_REQUIRED.
    Revoked(Arc<Connection>),
    /// The connection's provider is not in the configuration any more.
    UnknownProvider(ProviderName),
    NotFound(ConnectionId),
    /// The store refused or failed; nothing was handed out. A grant the
    /// provider issued is kept pending and persisted later.
    Store {
        error: StoreError,
        retry_after: Duration,
    },
    /// Concurrent writers kept winning.
    Contended(ConnectionId),
    /// The refresh task panicked: a bug.
    Panicked,
    /// The refresh task was dropped at shutdown.
    ShuttingDown,
}

/// The one mapping of a refresh failure to what the caller is told.
impl From<Failure> for EngineError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Provider {
                provider,
                error,
                retry_after,
            } => {
                if error.class == ErrorClass::ClientMisconfigured {
                    EngineError::ProviderMisconfigured {
                        provider: provider.to_string(),
                        last_error: Some(error),
                    }
                } else {
                    EngineError::ProviderUnavailable {
                        provider: provider.to_string(),
                        last_error: Some(error),
                        retry_after,
                    }
                }
            }
            Failure::Revoked(record) => EngineError::reconnect_required(&record),
            Failure::UnknownProvider(p) => EngineError::ProviderMisconfigured {
                provider: p.to_string(),
                last_error: None,
            },
            Failure::NotFound(id) => EngineError::NotFound(id),
            // A record that cannot be decoded is DATA_LOSS on every path.
            Failure::Store {
                error: error @ StoreError::Corrupt { .. },
                ..
            } => EngineError::Store(error),
            Failure::Store {
                error: error @ (StoreError::Conflict { .. } | StoreError::Fenced { .. }),
                ..
            } => EngineError::Store(error),
            Failure::Store { error, retry_after } => {
                EngineError::StorageUnavailable { error, retry_after }
            }
            Failure::Contended(id) => EngineError::Contended(id),
            Failure::Panicked => EngineError::Internal("refresh task panicked"),
            Failure::ShuttingDown => EngineError::ShuttingDown,
        }
    }
}

impl EngineError {
    pub fn invalid(field: impl Into<Cow<'static, str>>, description: impl Into<String>) -> Self {
        EngineError::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// A RECONNECT_REQUIRED answer for `record`.
    pub fn reconnect_required(record: &Connection) -> Self {
        EngineError::ReconnectRequired {
            id: record.id.clone(),
            last_error: record.last_error.clone(),
            cause: record.reconnect_cause,
        }
    }

    /// A `min_ttl_seconds` no refresh can satisfy.
    pub fn min_ttl_too_long(min_ttl: Duration, grantable: Duration, lifetime: Duration) -> Self {
        EngineError::invalid(
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
            ErrorClass::Revoked => EngineError::CodeRejected(last),
            ErrorClass::ClientMisconfigured => EngineError::ProviderMisconfigured {
                provider: provider.to_string(),
                last_error: Some(last),
            },
            ErrorClass::RateLimited | ErrorClass::Transient => EngineError::ProviderUnavailable {
                provider: provider.to_string(),
                last_error: Some(last),
                // The caller retries the whole install: say when.
                retry_after: Some(e.retry_after.unwrap_or(Duration::from_secs(1))),
            },
        }
    }
}
