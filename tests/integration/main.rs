//! tokend's integration tests: one binary, real server, real HTTP provider.

mod harness;
mod refresh;
mod rpc;
mod watch;
