//! Webhooks: every configured endpoint gets the events its filter selects,
//! from the same durable log as `WatchConnections`, signed per Standard
//! Webhooks, at least once and in order, with its delivery cursor kept by
//! the store so a restart resumes where it stopped.
//!
//! `config.rs` reads `[[webhooks]]`, `delivery.rs` is one endpoint's task, `backoff.rs` its retry delays,
//! `status.rs` what `ListWebhooks` reports.

mod backoff;
pub mod config;
mod delivery;
mod status;

use std::{sync::Arc, time::Duration};

use tokend_core::Clock;
use tokend_proto::v1 as pb;
use tokend_webhook::Sender;
pub use tokend_webhook::{Secret, SenderSettings, Url, check_url};

use tokend_engine::feed::{EventFilter, Feed};

/// One `[[webhooks]]` endpoint, resolved.
#[derive(Debug)]
pub struct WebhookConfig {
    /// Also the key of its delivery cursor in the store: renaming an
    /// endpoint starts it afresh.
    pub name: String,
    pub url: Url,
    pub secret: Secret,
    pub filter: EventFilter,
    pub sender: SenderSettings,
    /// Failing this long marks the endpoint FAILING (retries go on).
    pub failing_after: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl WebhookConfig {
    pub const DEFAULT_FAILING_AFTER: Duration = Duration::from_secs(3600);
    pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(600);
}

/// Every endpoint's delivery task and status.
pub struct Webhooks {
    endpoints: Vec<Arc<delivery::Endpoint>>,
    feed: Arc<Feed>,
}

impl Webhooks {
    /// Starts one delivery task per endpoint on the engine's tasks, with
    /// its store, shutdown token, holder name and metrics.
    pub async fn start(
        configs: Vec<Arc<WebhookConfig>>,
        feed: Arc<Feed>,
        clock: Clock,
        engine: &tokend_engine::Engine,
    ) -> Result<Arc<Webhooks>, String> {
        let (store, tasks, cancel, holder, metrics) = (
            engine.store(),
            engine.tasks(),
            engine.shutdown_token(),
            engine.holder(),
            Arc::clone(engine.metrics()),
        );
        let mut endpoints = Vec::new();
        for config in configs {
            let sender = Sender::new(&config.sender)?;
            let endpoint = Arc::new(delivery::Endpoint::new(config));
            let delivery = delivery::Delivery {
                endpoint: Arc::clone(&endpoint),
                feed: Arc::clone(&feed),
                store: Arc::clone(&store),
                sender,
                clock: clock.clone(),
                cancel: cancel.clone(),
                holder: holder.to_owned(),
                metrics: Arc::clone(&metrics),
            };
            // Fixed now, before any request or refresh can write an event,
            // so a new endpoint gets everything from this start on.
            if let Some(position) = delivery.resume().await {
                tasks.spawn(delivery.run(position));
            }
            endpoints.push(endpoint);
        }
        Ok(Arc::new(Webhooks { endpoints, feed }))
    }

    /// Each endpoint's state, in config order.
    pub fn status(&self) -> Vec<pb::WebhookStatus> {
        let last = self.feed.last();
        self.endpoints
            .iter()
            .map(|e| e.status(last, &self.feed))
            .collect()
    }
}
