//! The server's clock: wall time anchored at start (on a shared store, the
//! database's time: the fleet's clock), advanced by tokio's monotonic clock
//! (so expiry logic is testable with `tokio::time::pause()`), and moved
//! forward when the wall clock it follows is seen ahead (suspend, NTP step).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
/// It reads the system wall clock at construction, and from then on adds
/// `tokio::time::Instant` elapsed time. That makes "now" monotonic within a
/// process and lets tests drive expiry with `tokio::time::pause()` and
/// `advance()` instead of sleeping. Callers never see absolute times alone:
/// replies carry `expires_in` computed from this clock when they are sent.
///
/// The monotonic clock stops while the machine is suspended, and an NTP step
/// moves the wall clock under it: [`Clock::check_wall`], called every second
/// by the server, compares the two. When the wall clock is ahead, "now"
/// moves forward to it (shared by every clone), so no token is served past
/// its real expiry; when it is behind, "now" stays (it never goes back, so
/// no expired token looks valid again).
///
/// On a store several replicas share, the wall clock that counts is the
/// fleet's (the database's), not the machine's: the server re-anchors the
/// clock there at start ([`Clock::anchored_at`]) and then feeds the
/// fleet's readings to [`Clock::observe_wall`] instead of calling
/// [`Clock::check_wall`].
#[derive(Clone, Debug)]
pub struct Clock {
    /// Wall time at `base_instant`, in Unix milliseconds.
    base_wall: i64,
    /// The tokio instant matching `base_wall`.
    base_instant: tokio::time::Instant,
    /// Milliseconds the wall clock was seen ahead of the monotonic reading
    /// (a suspend, an NTP step forward), added to every reading.
    ahead_ms: Arc<AtomicI64>,
    /// Added to the system wall clock wherever this clock reads it: zero,
    /// but in tests that play a machine whose clock is off
    /// ([`Clock::off_by`]).
    wall_skew_ms: i64,
}

/// A wall-clock jump [`Clock::check_wall`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WallJump {
    /// The wall clock was ahead by this much: "now" followed it.
    Forward(Duration),
    /// The wall clock was behind by this much: "now" did not follow.
    Backward(Duration),
}

/// Differences below this between the wall clock and the monotonic reading
/// are drift and rounding, not a jump.
pub const WALL_JUMP_TOLERANCE: Duration = Duration::from_millis(500);

impl Clock {
    /// A clock anchored at the current system time.
    pub fn system() -> Self {
        Self::starting_at(system_wall())
    }

    /// [`Clock::system`] on a machine whose wall clock is off by
    /// `skew_ms` (negative: behind), as after a wrong NTP step: it starts
    /// there, and [`Clock::check_wall`] reads the skewed wall clock. For
    /// tests of a replica whose clock is off.
    pub fn off_by(skew_ms: i64) -> Self {
        Self {
            wall_skew_ms: skew_ms,
            ..Self::starting_at(skewed(system_wall(), skew_ms))
        }
    }

    /// A clock that reads `start` now and advances with tokio time.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            base_wall: start.0,
            base_instant: tokio::time::Instant::now(),
            ahead_ms: Arc::default(),
            wall_skew_ms: 0,
        }
    }

    /// This clock, anchored anew at `fleet` (the fleet's time, read from a
    /// shared store) instead of the machine's wall clock. For start-up
    /// only, before anything was stamped with it: unlike every later
    /// correction this one may go back. The returned clock shares nothing
    /// with `self`'s earlier clones.
    pub fn anchored_at(self, fleet: Timestamp) -> Self {
        Self {
            wall_skew_ms: self.wall_skew_ms,
            ..Self::starting_at(fleet)
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(self.base_wall)
            .saturating_add(self.base_instant.elapsed())
            .saturating_add(Duration::from_millis(
                u64::try_from(self.ahead_ms.load(Ordering::Relaxed)).unwrap_or(0),
            ))
    }

    /// Compares "now" with the system wall clock; see [`Clock::observe_wall`].
    pub fn check_wall(&self) -> Option<WallJump> {
        self.observe_wall(skewed(system_wall(), self.wall_skew_ms))
    }

    /// Compares "now" with the wall clock reading `wall`. Ahead by more
    /// than [`WALL_JUMP_TOLERANCE`]: "now" moves forward to it. Behind by
    /// more: "now" stays. Returns the jump seen, if any.
    pub fn observe_wall(&self, wall: Timestamp) -> Option<WallJump> {
        let now = self.now();
        if wall.duration_since(now) > WALL_JUMP_TOLERANCE {
            let jump = wall.duration_since(now);
            let ms = i64::try_from(jump.as_millis()).unwrap_or(i64::MAX);
            self.ahead_ms.fetch_add(ms, Ordering::Relaxed);
            Some(WallJump::Forward(jump))
        } else if now.duration_since(wall) > WALL_JUMP_TOLERANCE {
            Some(WallJump::Backward(now.duration_since(wall)))
        } else {
            None
        }
    }
}

fn skewed(wall: Timestamp, skew_ms: i64) -> Timestamp {
    Timestamp(wall.0.saturating_add(skew_ms))
}

/// The system wall clock.
// The one place tokend reads the system wall clock.
#[allow(clippy::disallowed_methods)]
fn system_wall() -> Timestamp {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp(wall)
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

    /// Issue 25, item 11. Invariant: a wall-clock jump never lets a token be
    /// served past its real expiry. Forward (a suspend stops the monotonic
    /// clock; an NTP step): "now" follows, in every clone. Backward: "now"
    /// never goes back, so an expired token never looks valid again.
    #[tokio::test(start_paused = true)]
    async fn now_follows_the_wall_clock_forward_never_back() {
        let clock = Clock::starting_at(Timestamp::from_unix_millis(1_000_000));
        let clone = clock.clone();
        let expiry = Timestamp::from_unix_millis(1_000_000 + 1_800_000);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Drift within the tolerance is not a jump.
        assert_eq!(
            clock.observe_wall(Timestamp::from_unix_millis(1_060_000 + 300)),
            None
        );
        // The machine slept 40 minutes: the monotonic clock missed them.
        let wall = Timestamp::from_unix_millis(1_060_000 + 40 * 60_000);
        assert_eq!(
            clock.observe_wall(wall),
            Some(WallJump::Forward(Duration::from_secs(40 * 60)))
        );
        assert_eq!(clone.now(), wall, "every clone follows");
        assert!(clone.now() > expiry, "the token is seen expired");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now().unix_millis(), wall.unix_millis() + 1000);
        // An NTP step back an hour: "now" stays put.
        let before = clock.now();
        assert_eq!(
            clock.observe_wall(before.saturating_sub(Duration::from_secs(3600))),
            Some(WallJump::Backward(Duration::from_secs(3600)))
        );
        assert_eq!(clock.now(), before);
    }

    /// Issue 25, item 11 (`clock-step`). Invariant: on a shared store a
    /// replica's "now" is the fleet's (the database's), whatever its own
    /// wall clock says, so leases and expiries one replica stamps are
    /// compared by the others on the same time. A replica 120 s ahead or
    /// behind starts on the fleet's time, then follows the fleet forward
    /// (never back), and its own wall clock no longer moves it.
    #[tokio::test(start_paused = true)]
    async fn a_clock_anchored_at_the_fleet_time_ignores_the_machine_wall() {
        let fleet = Clock::system();
        for skew_ms in [-120_000, 120_000] {
            let local = Clock::off_by(skew_ms);
            let seen = local.now().unix_millis() - Clock::system().now().unix_millis();
            assert!((skew_ms - 1000..=skew_ms + 1000).contains(&seen), "{seen}");
            let clock = local.anchored_at(fleet.now());
            assert_eq!(clock.now(), fleet.now(), "starts on the fleet's time");
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(clock.now(), fleet.now(), "advances with it");
            // The fleet's clock steps forward 30 s: followed.
            let ahead = fleet.now().saturating_add(Duration::from_secs(30));
            assert!(matches!(
                clock.observe_wall(ahead),
                Some(WallJump::Forward(_))
            ));
            assert_eq!(clock.now(), ahead);
            // Behind the fleet's reading: stays.
            let before = clock.now();
            assert!(matches!(
                clock.observe_wall(before.saturating_sub(Duration::from_secs(30))),
                Some(WallJump::Backward(_))
            ));
            assert_eq!(clock.now(), before);
        }
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
