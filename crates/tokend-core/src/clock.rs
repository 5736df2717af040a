//! The server's clock: wall time anchored once at start, advanced by tokio's
//! monotonic clock, so expiry logic is testable with `tokio::time::pause()`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, by tokend's clock.
///
/// Persisted in records (a monotonic instant would not survive a restart) and
/// converted to protobuf `Timestamp`s at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating instead of overflowing on absurd durations.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(ms))
    }

    /// How long from `earlier` to `self`; zero when `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// tokend's source of "now".
///
/// It reads the system wall clock once, at construction, and from then on
/// adds `tokio::time::Instant` elapsed time. That makes "now" monotonic within
/// a process (an NTP step cannot make a valid token look expired or the other
/// way round) and lets tests drive expiry with `tokio::time::pause()` and
/// `advance()` instead of sleeping. Callers never see absolute times alone:
/// replies carry `expires_in` computed from this clock when they are sent.
#[derive(Clone, Debug)]
pub struct Clock {
    /// Wall time at `base_instant`, in Unix milliseconds.
    base_wall: i64,
    /// The tokio instant matching `base_wall`.
    base_instant: tokio::time::Instant,
}

impl Clock {
    /// A clock anchored at the current system time.
    // The one place tokend reads the system wall clock.
    #[allow(clippy::disallowed_methods)]
    pub fn system() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self::starting_at(Timestamp(wall))
    }

    /// A clock that reads `start` now and advances with tokio time.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            base_wall: start.0,
            base_instant: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(self.base_wall).saturating_add(self.base_instant.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clock_follows_paused_tokio_time() {
        let clock = Clock::starting_at(Timestamp::from_unix_millis(1_000_000));
        assert_eq!(clock.now().unix_millis(), 1_000_000);
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert_eq!(clock.now().unix_millis(), 1_000_000 + 1_800_000);
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_unix_millis(i64::MAX - 5);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)).unix_millis(),
            i64::MAX
        );
        let a = Timestamp::from_unix_millis(10);
        let b = Timestamp::from_unix_millis(20);
        assert_eq!(a.duration_since(b), Duration::ZERO);
        assert_eq!(b.duration_since(a), Duration::from_millis(10));
    }
}
