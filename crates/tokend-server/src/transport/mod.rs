//! What stands between the socket and the gRPC services: the accept loop
//! with its connection caps, handshake deadline and idle timeout, the
//! connection registry, and the request bounds layer with its body
//! deadline, byte budgets and framing checks. The numbers come from
//! [`tokend_config::limits::Limits`].

pub(crate) mod backpressure;
pub(crate) mod body;
pub(crate) mod conns;
pub(crate) mod framing;
pub(crate) mod incoming;
pub mod load;
pub(crate) mod refuse;
pub(crate) mod trailers;

/// Whether `path` names a service that takes no credentials (health,
/// reflection, or none of tokend's): its requests get the small
/// unauthenticated budgets, so they cannot starve tokend's callers.
pub(crate) fn is_unauthenticated(path: &str) -> bool {
    !path.starts_with("/tokend.v1.")
}
