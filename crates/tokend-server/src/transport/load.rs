//! How busy tokend's own services are right now: the signal open mode's
//! per-connection rate limit waits for (issue 26, item 10).
//!
//! In open mode every client connection is its own caller, with
//! `open_requests_per_second_per_peer`. That limit is for sharing: it
//! refuses a connection only while the server is contended, that is while
//! tokend's pending requests (the request bounds layer's count) are at
//! least half of `max_pending_requests` and at least two connections have
//! a tokend call open. With spare capacity, or nobody else waiting, one
//! connection may use all of it. Both reads are plain atomic loads, and
//! the counts are kept with atomics where the bounds layer already counts.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::body::Quota;

/// The pending count of tokend's services and the connections calling
/// them, shared by the bounds layer, the connection registry and the
/// open-mode callers.
#[derive(Debug)]
pub struct Load {
    /// tokend's requests being received or handled (`max_pending_requests`).
    pub(crate) pending: Arc<Quota>,
    /// Client connections with at least one call to tokend's services open.
    active: AtomicUsize,
    /// Pending requests from which the server counts as contended.
    contended_at: usize,
}

impl Load {
    pub fn new(limits: &tokend_config::limits::Limits) -> Arc<Self> {
        Arc::new(Load {
            pending: Quota::new(limits.max_pending_requests),
            active: AtomicUsize::new(0),
            contended_at: (limits.max_pending_requests / 2).max(1),
        })
    }

    /// Whether connections must keep to their share now: pending requests
    /// at half the cap or more, and more than one connection calling.
    pub fn contended(&self) -> bool {
        self.pending.used() >= self.contended_at && self.active.load(Ordering::Relaxed) >= 2
    }

    /// A connection opened its first tokend call.
    pub(crate) fn connection_active(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection's last open tokend call ended.
    pub(crate) fn connection_idle(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: contention needs both a busy server (half the pending
    /// cap) and a second connection calling.
    #[test]
    fn contention_needs_a_busy_server_and_a_second_connection() {
        let load = Load::new(&tokend_config::limits::Limits {
            max_pending_requests: 8,
            ..Default::default()
        });
        load.connection_active();
        assert!(load.pending.try_take(4));
        assert!(!load.contended(), "one connection alone is never held back");
        load.connection_active();
        assert!(load.contended(), "busy, and another connection waits");
        load.pending.give_back(1);
        assert!(!load.contended(), "below half the cap: spare capacity");
        assert!(load.pending.try_take(1));
        load.connection_idle();
        assert!(!load.contended());
    }
}
