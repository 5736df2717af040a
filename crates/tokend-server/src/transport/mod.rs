//! What stands between the socket and the gRPC services: the accept loop
//! with its connection cap and handshake deadline, and the request bounds
//! layer with its body deadline and byte budget. The numbers come from
//! [`crate::limits::Limits`].

pub(crate) mod backpressure;
pub(crate) mod body;
pub(crate) mod incoming;
