//! The SDK contract shared by the four tokend SDKs (docs/sdks.md, "One
//! vocabulary in four SDKs"), checked for the Rust client against a real broker on
//! 127.0.0.1:0 and the sandbox provider over real HTTP.

mod broker;
mod errors;
mod install;
mod second_401;
