//! The configuration file, as `tokend-config` reads and resolves it, plus
//! the one section only the server resolves: `[[webhooks]]` into
//! [`crate::webhooks::WebhookConfig`].

pub use tokend_config::*;

/// Every problem of `file` (`FileConfig::located_problems`), the
/// webhooks' checked by the server's own resolver.
pub fn located_problems(
    file: &FileConfig,
    listen: std::net::SocketAddr,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<Problem> {
    let webhooks = crate::webhooks::config::check_all(&file.webhooks, &env).1;
    file.located_problems(listen, env, webhooks)
}

/// [`located_problems`], messages only.
pub fn problems(
    file: &FileConfig,
    listen: std::net::SocketAddr,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    located_problems(file, listen, env)
        .into_iter()
        .map(|p| p.message)
        .collect()
}

/// The ranges' tests: they check them through the server's resolvers
/// (`[[webhooks]]`) and against the server's defaults.
#[cfg(test)]
#[path = "ranges_tests.rs"]
mod ranges_tests;
