//! tokend's engine: serves tokens from memory, refreshes each connection at
//! most once at a time, persists every grant before anyone sees it, keeps
//! replicas coherent, and keeps the event feed. No transport: the edge
//! (tokend-server) turns its calls into RPCs and its [`EngineError`]s into
//! gRPC statuses.

// Errors travel the cold path; boxing them would only add allocations.
#![allow(clippy::result_large_err)]

pub mod engine;
pub mod error;
pub mod feed;
pub mod hub;
pub mod metrics;
pub mod scheduler;

pub use engine::{Engine, EngineSettings};
pub use error::EngineError;
