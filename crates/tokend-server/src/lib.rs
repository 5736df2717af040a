//! tokend's server: the gRPC service over the refresh engine, with health,
//! reflection and graceful shutdown, started by [`run`].

// Errors here travel the cold path and end as `tonic::Status`, itself ~180
// bytes; boxing them would only add allocations.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub use tokend_config::locate as config_check;
mod console;
mod convert;
mod error;
pub use tokend_config::limits;
mod malformed;
pub use tokend_config::ranges;
mod readiness;
mod rpc_metrics;
mod server;
pub(crate) mod service;
mod shutdown;
mod trace_context;
mod transport;
pub mod webhooks;

pub use error::{ERROR_DOMAIN, ServiceError};
pub use server::{ServerConfig, ServerError, run, run_with_tasks};
pub use tokend_config::limits::MAX_REQUEST_BYTES;
pub use tokend_engine::{Engine, EngineSettings, engine, feed, metrics};
