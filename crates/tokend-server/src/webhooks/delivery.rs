//! One endpoint's delivery task: reads the feed after its saved cursor,
//! sends each event its filter selects until the endpoint acknowledges it
//! (retrying with backoff, never skipping), then moves the cursor on.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokend_core::{Clock, Event};
use tokend_proto::v1 as pb;
use tokend_store::{SavedCursor, Store};
use tokend_webhook::{Outcome, Sender};
use tokio_util::sync::CancellationToken;

use super::{WebhookConfig, backoff, status::State};
use crate::{
    convert,
    feed::{Feed, FeedError},
};

/// Events taken from the feed at once.
const BATCH: usize = 64;
/// How long an idle task waits on the feed before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// An endpoint's config and live state, shared with the status report.
pub struct Endpoint {
    pub config: Arc<WebhookConfig>,
    state: Mutex<State>,
}

impl Endpoint {
    pub fn new(config: Arc<WebhookConfig>) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self, last: u64, feed: &Feed) -> pb::WebhookStatus {
        let state = self.state().clone();
        let cursor = feed.cursor(state.position).encode();
        state.to_pb(
            &self.config.name,
            tokend_webhook::redacted(&self.config.url),
            cursor,
            last,
        )
    }
}

/// The task and what it holds.
pub struct Delivery {
    pub endpoint: Arc<Endpoint>,
    pub feed: Arc<Feed>,
    pub store: Arc<dyn Store>,
    pub sender: Sender,
    pub clock: Clock,
    pub cancel: CancellationToken,
}

impl Delivery {
    fn name(&self) -> &str {
        &self.endpoint.config.name
    }

    /// Delivers from `position` (see [`Self::resume`]) until shutdown.
    pub async fn run(self, mut position: u64) {
        loop {
            let events = match self
                .feed
                .next(position, BATCH, IDLE_WAIT, &self.cancel)
                .await
            {
                Ok(events) => events,
                Err(FeedError::ShuttingDown) => return,
                Err(FeedError::Expired { oldest, .. }) => {
                    // The endpoint was down longer than the log keeps
                    // events: say so loudly, and go on with what is left.
                    tracing::error!(
                        webhook = self.name(),
                        from_sequence = position + 1,
                        to_sequence = oldest.seq,
                        "webhook endpoint fell behind the event log's retention: these events were pruned before delivery; continuing with the oldest retained"
                    );
                    self.endpoint.state().last_error = Some(format!(
                        "events {}..={} were pruned before delivery",
                        position + 1,
                        oldest.seq
                    ));
                    position = oldest.seq;
                    self.save(position).await;
                    continue;
                }
                Err(FeedError::Store(e)) => {
                    tracing::warn!(webhook = self.name(), error = %e, "reading the event log failed; retrying");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let before = position;
            for event in events {
                if self.endpoint.config.filter.matches(&event) && !self.deliver(&event).await {
                    return;
                }
                position = event.seq;
                self.endpoint.state().position = position;
            }
            if position != before {
                self.save(position).await;
            }
        }
    }

    /// Where to start: the saved cursor; on the first run, the end of the
    /// log (saved at once, so everything after this start is delivered);
    /// with a cursor from another log, its oldest event. `None` at
    /// shutdown. Called before the server takes requests or refreshes.
    pub async fn resume(&self) -> Option<u64> {
        loop {
            let saved = self.store.load_cursor(self.name()).await;
            let start = match &saved {
                Ok(Some(c)) => {
                    let cursor = self.feed.cursor(c.seq);
                    let cursor = crate::feed::Cursor {
                        log_id: c.log_id,
                        ..cursor
                    };
                    match self.feed.start_position(Some(cursor), false).await {
                        Ok(p) => Ok(p),
                        Err(FeedError::Expired { oldest, detail }) => {
                            tracing::error!(
                                webhook = self.name(),
                                reason = detail,
                                "the webhook's saved cursor is not in this event log: continuing with the oldest retained event"
                            );
                            Ok(oldest.seq)
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(None) => self.feed.start_position(None, false).await,
                Err(e) => Err(FeedError::Store(e.clone())),
            };
            match start {
                Ok(position) => {
                    {
                        let mut state = self.endpoint.state();
                        state.position = position;
                        if let Ok(Some(c)) = &saved {
                            state.failing_since = c.failing_since;
                            state.last_error = c.last_error.clone();
                        }
                    }
                    if !matches!(saved, Ok(Some(_))) {
                        self.save(position).await;
                    }
                    tracing::info!(webhook = self.name(), url = %tokend_webhook::redacted(&self.endpoint.config.url), from_sequence = position, "webhook delivery started");
                    return Some(position);
                }
                Err(e) => {
                    tracing::warn!(webhook = self.name(), error = %e, "cannot read the webhook's cursor; retrying");
                    if self.pause(Duration::from_secs(1)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends `event` until the endpoint acknowledges it. False at shutdown.
    async fn deliver(&self, event: &Event) -> bool {
        let cursor = self.feed.cursor(event.seq).encode();
        let message = convert::event(event, cursor.clone());
        let body = match serde_json::to_vec(&message) {
            Ok(b) => b,
            Err(e) => {
                // Cannot happen for these types; never drop silently.
                tracing::error!(webhook = self.name(), error = %e, sequence = event.seq, "cannot encode an event; skipping it");
                return true;
            }
        };
        let config = &self.endpoint.config;
        let mut failures = 0u32;
        loop {
            let now = self.clock.now();
            let attempt = tokend_webhook::Delivery {
                url: &config.url,
                secret: &config.secret,
                id: &cursor,
                timestamp: now.unix_millis().div_euclid(1000),
                body: &body,
            };
            let outcome = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                outcome = self.sender.send(attempt) => outcome,
            };
            match outcome {
                Outcome::Delivered => {
                    self.delivered(event.seq);
                    return true;
                }
                Outcome::Failed { error, retry_after } => {
                    failures += 1;
                    let delay = backoff::delay(
                        failures,
                        retry_after,
                        config.retry_initial,
                        config.retry_max,
                        rand::random::<f64>(),
                    );
                    self.failed(event.seq, &error, failures, delay).await;
                    if self.pause(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    fn delivered(&self, seq: u64) {
        let now = self.clock.now();
        let mut state = self.endpoint.state();
        if state.failing_since.is_some() {
            tracing::info!(
                webhook = self.name(),
                failures = state.consecutive_failures,
                "webhook endpoint recovered"
            );
        }
        state.position = seq;
        state.failing_since = None;
        state.failing = false;
        state.last_error = None;
        state.consecutive_failures = 0;
        state.next_attempt_at = None;
        state.last_success_at = Some(now);
        state.delivered += 1;
    }

    async fn failed(&self, seq: u64, error: &str, failures: u32, delay: Duration) {
        let now = self.clock.now();
        let newly_failing;
        let persist_failing_since;
        {
            let mut state = self.endpoint.state();
            let since = *state.failing_since.get_or_insert(now);
            persist_failing_since = failures == 1;
            state.last_error = Some(error.to_owned());
            state.consecutive_failures = failures;
            state.next_attempt_at = Some(now.saturating_add(delay));
            let failing = now.duration_since(since) >= self.endpoint.config.failing_after;
            newly_failing = failing && !state.failing;
            state.failing = failing;
        }
        if newly_failing {
            tracing::error!(
                webhook = self.name(),
                error,
                sequence = seq,
                "webhook endpoint failing: deliveries keep being retried, nothing is dropped"
            );
        } else {
            tracing::warn!(
                webhook = self.name(),
                error,
                sequence = seq,
                attempt = failures,
                retry_in_ms = delay.as_millis() as u64,
                "webhook delivery failed; retrying"
            );
        }
        if persist_failing_since || newly_failing {
            let position = self.endpoint.state().position;
            self.save(position).await;
        }
    }

    /// Saves the cursor (and the failure state) under the endpoint's name.
    async fn save(&self, position: u64) {
        let state = self.endpoint.state().clone();
        let cursor = SavedCursor {
            log_id: self.feed.cursor(0).log_id,
            seq: position,
            failing_since: state.failing_since,
            last_error: state.last_error,
            updated_at: self.clock.now(),
        };
        if let Err(e) = self.store.save_cursor(self.name(), &cursor).await {
            // Only costs redelivery after a restart.
            tracing::warn!(webhook = self.name(), error = %e, "saving the webhook cursor failed");
        }
    }

    /// Sleeps `d`; true when shutdown came first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}
