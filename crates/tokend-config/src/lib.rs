//! tokend's configuration: the TOML file as written (`file`), each
//! provider table resolved (`provider`), secrets read (`secret`), numeric
//! ranges (`ranges`), and every problem placed at its `file:line:col`
//! (`error`, `locate`). `resolve` is the one path from file + flags + env
//! to a resolved configuration, shared by `tokend serve` and `tokend
//! check-config`. No I/O but reading the config file and the files it
//! names; no server types.

pub mod audit;
mod error;
pub mod events;
mod file;
pub mod identity;
pub mod limits;
pub mod locate;
mod provider;
mod provider_parts;
pub mod ranges;
pub mod resolve;
mod secret;
pub mod webhook;

pub use error::{ConfigError, Fault, Problem};
pub use file::*;
pub use provider::sandbox_provider;
pub use secret::read_secret;
pub use tokend_provider::{HUBSPOT_TOKEN_URL, Preset, ZOHO_DATA_CENTRES};

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "config_hosts_tests.rs"]
mod hosts_tests;
