//! One endpoint's delivery task: reads the feed after its saved cursor,
//! sends each event its filter selects until the endpoint acknowledges it
//! (retrying with backoff, never skipping), then moves the cursor on.
//!
//! On a store several replicas share, only the replica holding the
//! endpoint's claim (`Store::claim_reader`) delivers, so each event goes out
//! once fleet-wide; the others stand by and take over, from the cursor the
//! holder saved, when its claim runs out (a crash, a pause). The claim is
//! renewed before every attempt, so a holder that lost it stops sending.

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
use tokend_engine::feed::{Feed, FeedError};

use crate::convert;

/// Events taken from the feed at once.
const BATCH: usize = 64;
/// How long an idle task waits on the feed before looking again (and
/// renews its claim).
const IDLE_WAIT: Duration = Duration::from_secs(3);
/// How long a claim on an endpoint lasts unless renewed: a replica that
/// dies stops deliveries for at most this long. Replicas' clocks must agree
/// well within it.
const CLAIM_TTL: Duration = Duration::from_secs(15);
/// A claim is renewed once less than this is left.
const CLAIM_RENEW_WITHIN: Duration = Duration::from_secs(10);
/// How often a standby replica tries to take the claim.
const STANDBY_RETRY: Duration = Duration::from_secs(2);

/// How one delivery ended.
enum Sent {
    Acknowledged,
    /// Another replica holds the endpoint now: stop without moving on.
    ClaimLost,
    ShuttingDown,
}

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
    /// This replica's name in claims.
    pub holder: String,
    pub metrics: Arc<tokend_engine::metrics::Metrics>,
}

impl Delivery {
    fn name(&self) -> &str {
        &self.endpoint.config.name
    }

    /// Takes or renews this replica's claim on the endpoint. `Some(fence)`
    /// while held; `None` while another replica holds it.
    async fn claim(&self) -> Result<Option<u64>, tokend_store::StoreError> {
        let now = self.clock.now();
        {
            let state = self.endpoint.state();
            if let Some(until) = state.claimed_until
                && until.duration_since(now) > CLAIM_RENEW_WITHIN
            {
                return Ok(Some(state.fence));
            }
        }
        let granted = self
            .store
            .claim_reader(self.name(), &self.holder, CLAIM_TTL, now)
            .await?;
        let mut state = self.endpoint.state();
        state.claimed_until = granted.map(|_| now.saturating_add(CLAIM_TTL));
        Ok(granted)
    }

    /// Whether this replica may send now (renewing its claim if need be).
    async fn still_claimed(&self) -> bool {
        match self.claim().await {
            Ok(Some(fence)) => fence == self.endpoint.state().fence,
            Ok(None) => false,
            // The store is unreachable: the claim cannot be renewed, so it
            // holds only until it runs out.
            Err(_) => self
                .endpoint
                .state()
                .claimed_until
                .is_some_and(|until| until > self.clock.now()),
        }
    }

    /// Delivers from `position` (see [`Self::resume`]) until shutdown.
    pub async fn run(self, mut position: u64) {
        loop {
            match self.claim().await {
                Ok(Some(fence)) if fence != self.endpoint.state().fence => {
                    // Taken (at start, or over from another replica): go on
                    // from the cursor the last holder saved.
                    self.endpoint.state().fence = fence;
                    match self.resume().await {
                        Some(p) => position = p,
                        None => return,
                    }
                    tracing::info!(
                        webhook = self.name(),
                        fence,
                        from_sequence = position,
                        "this replica delivers to the webhook endpoint"
                    );
                    self.save(position).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    if self.pause(STANDBY_RETRY).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(webhook = self.name(), error = %e, "cannot claim the webhook endpoint; retrying");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
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
                if self.endpoint.config.filter.matches(&event) {
                    match self.deliver(&event).await {
                        Sent::Acknowledged => {}
                        Sent::ClaimLost => break,
                        Sent::ShuttingDown => return,
                    }
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
                    let cursor = tokend_engine::feed::Cursor {
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

    /// Sends `event` until the endpoint acknowledges it, while this replica
    /// holds the endpoint.
    async fn deliver(&self, event: &Event) -> Sent {
        let cursor = self.feed.cursor(event.seq).encode();
        let message = convert::event(event, cursor.clone());
        let body = match serde_json::to_vec(&message) {
            Ok(b) => b,
            Err(e) => {
                // Cannot happen for these types; never drop silently.
                tracing::error!(webhook = self.name(), error = %e, sequence = event.seq, "cannot encode an event; skipping it");
                return Sent::Acknowledged;
            }
        };
        let config = &self.endpoint.config;
        let mut failures = 0u32;
        loop {
            if !self.still_claimed().await {
                tracing::info!(
                    webhook = self.name(),
                    "another replica delivers to the webhook endpoint now"
                );
                return Sent::ClaimLost;
            }
            let now = self.clock.now();
            let attempt = tokend_webhook::Delivery {
                url: &config.url,
                secret: &config.secret,
                id: &cursor,
                timestamp: now.unix_millis().div_euclid(1000),
                body: &body,
            };
            let outcome = tokio::select! {
                _ = self.cancel.cancelled() => return Sent::ShuttingDown,
                outcome = self.sender.send(attempt) => outcome,
            };
            self.metrics
                .webhook_attempt(self.name(), matches!(outcome, Outcome::Delivered));
            match outcome {
                Outcome::Delivered => {
                    self.delivered(event.seq);
                    return Sent::Acknowledged;
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
                        return Sent::ShuttingDown;
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
            fence: self.endpoint.state().fence,
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
