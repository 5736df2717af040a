//! What `ListWebhooks` shows of one endpoint: kept in memory by its
//! delivery task, with the failing-since time also saved in the store.

use tokend_core::Timestamp;
use tokend_proto::v1 as pb;

use crate::convert::timestamp;

/// One endpoint's delivery state.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The last sequence number delivered or skipped by the filter.
    pub position: u64,
    pub failing_since: Option<Timestamp>,
    /// Set once `failing_after` has passed since `failing_since`.
    pub failing: bool,
    pub last_error: Option<String>,
    pub last_success_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub delivered: u64,
    /// The fence of this replica's claim on the endpoint (0: never held).
    pub fence: u64,
    /// Until when the claim is held, if it is.
    pub claimed_until: Option<Timestamp>,
}

impl State {
    pub fn to_pb(&self, name: &str, url: String, cursor: String, last: u64) -> pb::WebhookStatus {
        let state = if self.failing {
            pb::WebhookState::Failing
        } else if self.consecutive_failures > 0 {
            pb::WebhookState::Retrying
        } else {
            pb::WebhookState::Healthy
        };
        pb::WebhookStatus {
            name: name.to_owned(),
            url,
            state: state as i32,
            cursor,
            delivered_sequence: self.position,
            behind: last.saturating_sub(self.position),
            failing_since: self.failing_since.map(timestamp),
            last_error: self.last_error.clone().unwrap_or_default(),
            last_success_at: self.last_success_at.map(timestamp),
            next_attempt_at: self.next_attempt_at.map(timestamp),
            consecutive_failures: self.consecutive_failures,
            delivered_since_start: self.delivered,
        }
    }
}
