//! Which connection each recent install request produced: a retried code
//! install is recognised after the single-use code is spent.

use tokend_core::ConnectionId;

/// Which connection each recent install request produced, by fingerprint,
/// so a retried code install whose id came from the provider is recognised
/// even though the single-use code cannot be exchanged again. In memory and
/// bounded: it covers retries after a lost reply, not days later.
#[derive(Default)]
pub(super) struct RecentInstalls {
    /// A std `Mutex`: two map operations, never held across an `.await`.
    inner: std::sync::Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    by_fingerprint: std::collections::HashMap<String, ConnectionId>,
    /// Insertion order, for evicting the oldest.
    order: std::collections::VecDeque<String>,
}

impl RecentInstalls {
    const CAPACITY: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, fingerprint: &str) -> Option<ConnectionId> {
        self.lock().by_fingerprint.get(fingerprint).cloned()
    }

    pub(super) fn remember(&self, fingerprint: String, id: ConnectionId) {
        let mut inner = self.lock();
        if inner
            .by_fingerprint
            .insert(fingerprint.clone(), id)
            .is_none()
        {
            inner.order.push_back(fingerprint);
        }
        while inner.order.len() > Self::CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.by_fingerprint.remove(&old);
            }
        }
    }
}
