//! The background refresher's timetable: when each connection is next due.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use tokend_core::{ConnectionId, Timestamp};
use tokio::sync::Notify;

#[derive(Default)]
struct Timetable {
    /// Ordered by due time, for "what is next".
    queue: BTreeSet<(Timestamp, ConnectionId)>,
    /// Each connection's entry in `queue`, so rescheduling replaces it.
    due: HashMap<ConnectionId, Timestamp>,
}

/// Due times of background refreshes. One entry per connection: scheduling
/// again moves it. A std `Mutex`: operations are O(log n) and never await.
#[derive(Default)]
pub struct Scheduler {
    table: Mutex<Timetable>,
    /// Wakes the refresher when an entry may have become the earliest.
    notify: Notify,
}

impl Scheduler {
    fn table(&self) -> std::sync::MutexGuard<'_, Timetable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn schedule(&self, id: &ConnectionId, at: Timestamp) {
        let mut t = self.table();
        if let Some(old) = t.due.insert(id.clone(), at) {
            t.queue.remove(&(old, id.clone()));
        }
        t.queue.insert((at, id.clone()));
        let earliest = t.queue.first().is_some_and(|(first, _)| *first == at);
        drop(t);
        if earliest {
            self.notify.notify_one();
        }
    }

    pub fn unschedule(&self, id: &ConnectionId) {
        let mut t = self.table();
        if let Some(old) = t.due.remove(id) {
            t.queue.remove(&(old, id.clone()));
        }
    }

    /// When `id` is next due, if it is scheduled.
    pub fn next_due(&self, id: &ConnectionId) -> Option<Timestamp> {
        self.table().due.get(id).copied()
    }

    pub fn earliest(&self) -> Option<Timestamp> {
        self.table().queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns every connection due at or before `now`, with
    /// when it was due.
    pub fn pop_due(&self, now: Timestamp) -> Vec<(Timestamp, ConnectionId)> {
        let mut t = self.table();
        let mut out = Vec::new();
        while let Some((at, _)) = t.queue.first() {
            if *at > now {
                break;
            }
            if let Some((at, id)) = t.queue.pop_first() {
                t.due.remove(&id);
                out.push((at, id));
            }
        }
        out
    }

    /// Wakes the refresher to look again (the clock jumped forward).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves when the timetable may have a new earliest entry.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table().due.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokend_core::Clock;

    use super::*;

    fn id(s: &str) -> ConnectionId {
        ConnectionId::new(s).unwrap()
    }

    #[test]
    fn rescheduling_replaces_and_pop_due_is_ordered() {
        let s = Scheduler::default();
        let t = |ms| Timestamp::from_unix_millis(ms);
        s.schedule(&id("a"), t(300));
        s.schedule(&id("b"), t(100));
        s.schedule(&id("a"), t(50));
        assert_eq!(s.len(), 2);
        assert_eq!(s.earliest(), Some(t(50)));
        assert_eq!(s.pop_due(t(100)), vec![(t(50), id("a")), (t(100), id("b"))]);
        assert!(s.is_empty());
        s.schedule(&id("c"), t(10));
        s.unschedule(&id("c"));
        assert_eq!(s.next_due(&id("c")), None);
        assert!(s.pop_due(t(1000)).is_empty());
    }

    /// Expiry-driven scheduling against tokio's paused clock: nothing is due
    /// until the clock passes the refresh time, with no real sleeping.
    #[tokio::test(start_paused = true)]
    async fn due_times_follow_the_paused_clock() {
        let clock = Clock::starting_at(Timestamp::from_unix_millis(0));
        let s = Scheduler::default();
        // A 30-minute token with a 5-minute buffer is due at minute 25.
        s.schedule(
            &id("hubspot-1"),
            Timestamp::from_unix_millis(25 * 60 * 1000),
        );
        tokio::time::advance(Duration::from_secs(24 * 60)).await;
        assert!(s.pop_due(clock.now()).is_empty());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            s.pop_due(clock.now()),
            vec![(Timestamp::from_unix_millis(25 * 60 * 1000), id("hubspot-1"))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_entry_wakes_the_waiter() {
        let s = std::sync::Arc::new(Scheduler::default());
        let waiter = {
            let s = std::sync::Arc::clone(&s);
            tokio::spawn(async move { s.changed().await })
        };
        tokio::task::yield_now().await;
        s.schedule(&id("x"), Timestamp::from_unix_millis(5));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
