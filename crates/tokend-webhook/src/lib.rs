//! Webhook delivery parts that know nothing of tokend's events: Standard
//! Webhooks signing (`sign.rs`) and an HTTP sender with the limits a
//! server pushing to operator-configured URLs needs (`sender.rs`).

mod sender;
mod sign;

pub use reqwest::Url;
pub use sender::{Delivery, Outcome, Sender, SenderSettings, check_url, redacted};
pub use sign::{Secret, SecretError, sign};
