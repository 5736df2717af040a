//! tokend's integration tests: one binary, real server, real HTTP provider.

mod at_rest;
mod cli;
mod client;
mod console;
mod events;
mod fleet;
mod harness;
mod hostile;
mod key_rotation;
mod malformed;
mod metrics;
mod otlp;
mod process;
mod providers;
mod reflection;
mod refresh;
mod replicas;
mod rpc;
mod security;
mod sockets;
mod store_copy;
mod watch;
mod webhooks;
