//! A failed provider call, classified, and what is left of an answer that
//! could not be used.

use std::time::Duration;

use secrecy::SecretString;
use tokend_core::{ErrorClass, LastError, Timestamp};

/// A failed provider call, classified. `message` is truncated and stripped of
/// every secret tokend sent, so it is safe to log, store and return.
#[derive(Clone, Debug, thiserror::Error)]
#[error("provider {class} error {code}: {message}", class = class.as_str())]
pub struct ProviderError {
    pub class: ErrorClass,
    /// `invalid_grant`, `BAD_REFRESH_TOKEN`, `http_503`, `timeout`, ...
    pub code: String,
    pub message: String,
    pub http_status: Option<u16>,
    pub correlation_id: Option<String>,
    /// From `Retry-After`, when the provider sent one.
    pub retry_after: Option<Duration>,
    /// Set when the provider answered 2xx but the answer could not be used
    /// (failed validation, too large, cut off): the provider may have
    /// rotated the grant all the same.
    pub salvage: Option<Salvage>,
    /// Set when the request may have reached the provider but no answer
    /// came back (a timeout or reset after sending): the provider may have
    /// rotated the grant.
    pub unanswered: bool,
}

/// What is left of a 2xx token answer that failed validation.
#[derive(Clone, Debug)]
pub struct Salvage {
    /// The refresh token the answer carried, when it could still be read:
    /// with a rotating provider it is the only live one, so the engine
    /// persists it before anything else.
    pub refresh_token: Option<SecretString>,
}

impl ProviderError {
    /// Whether the provider may have acted on the request (rotated the
    /// grant) although tokend has no answer it can use: the refresh is *in
    /// doubt*. True for a timeout or reset after sending, an unreadable 2xx,
    /// and any non-2xx that is not a definitive refusal (5xx from an edge
    /// included). False for what is proven to precede sending (DNS, connect,
    /// TLS handshake) and for 4xx answers, which refuse the request itself.
    pub fn in_doubt(&self) -> bool {
        self.unanswered
            || self.salvage.is_some()
            || self.http_status.is_some_and(|s| match s {
                200..=299 => false,
                // Request Timeout, and nginx's client-closed: an edge gave up.
                408 | 499 => true,
                400..=499 => false,
                _ => true,
            })
    }

    /// The record an operator sees in `GetConnection`.
    pub fn to_last_error(&self, at: Timestamp) -> LastError {
        LastError {
            class: self.class,
            code: self.code.clone(),
            message: self.message.clone(),
            correlation_id: self.correlation_id.clone(),
            http_status: self.http_status,
            at,
        }
    }
}
