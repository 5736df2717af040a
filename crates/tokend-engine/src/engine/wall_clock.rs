//! Watches the wall clock tokend follows: on a store replicas share, the
//! fleet's (the database's, `Store::fleet_now`), which the clock is anchored
//! to at start; otherwise the machine's. A suspend or a clock step moves it
//! under the monotonic clock tokend counts with. Every second the engine's
//! clock is compared with it and moves forward when it is ahead (never
//! back), and the background refresher wakes to take what became due.

use std::{sync::Arc, time::Duration};

use tokend_core::{Clock, Timestamp, WALL_JUMP_TOLERANCE, WallJump};
use tokend_store::{Store, StoreError};

use super::Engine;

/// How often the wall clock is compared with tokend's. On a shared store
/// each comparison is one `SELECT clock_timestamp()` per replica, a
/// statement that costs the database a few microseconds: once a second
/// keeps the bound on serving a token past its expiry after a suspend (or
/// a step of the fleet's clock) at about a second, as it was with the
/// machine's clock, for one cheap round trip per replica per second.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A reading of the fleet's clock is good to half its round trip (when it
/// was taken on the database's side is not known better). One whose round
/// trip took longer than this is not used: its error could pass for a jump.
const MAX_ROUND_TRIP: Duration = WALL_JUMP_TOLERANCE;

/// Readings tried at start-up for one whose round trip is short enough,
/// and the pause after one that failed.
const ANCHOR_TRIES: usize = 3;
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// One reading of the store's clock and how long it took to get, or
/// `None` when the store has no clock of its own.
async fn read_fleet(store: &dyn Store) -> Result<Option<(Timestamp, Duration)>, StoreError> {
    let asked = tokio::time::Instant::now();
    let now = store.fleet_now().await?;
    Ok(now.map(|now| (now, asked.elapsed())))
}

/// At start-up, before anything was stamped with it: `local` (the
/// machine's clock) anchored at the fleet's time when `store` has a clock
/// of its own, `local` unchanged otherwise. The flag says which: the wall
/// clock watcher then follows the fleet's clock, not the machine's.
///
/// Invariant (issue 25, item 11, `clock-step`): on a shared store every
/// replica's "now" is the database's, so a lease or an expiry one replica
/// stamps is compared by the others on the same time; a replica whose
/// wall clock is off neither takes over live leases (ahead) nor serves
/// tokens the others stamped expired (behind). A store that cannot tell
/// its time is an error: serving on the machine's clock instead is what
/// this guards against.
pub async fn anchor_clock(store: &dyn Store, local: Clock) -> Result<(Clock, bool), StoreError> {
    let mut tries = 0;
    let (fleet, round_trip) = loop {
        tries += 1;
        match read_fleet(store).await {
            Ok(None) => return Ok((local, false)),
            Ok(Some((fleet, took))) if took <= MAX_ROUND_TRIP || tries == ANCHOR_TRIES => {
                break (fleet, took);
            }
            Ok(Some(_)) => {}
            Err(e) if tries == ANCHOR_TRIES => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "reading the database's clock failed; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    let off_ms = local
        .now()
        .unix_millis()
        .saturating_sub(fleet.unix_millis());
    if off_ms.unsigned_abs() > WALL_JUMP_TOLERANCE.as_millis() as u64 {
        tracing::warn!(
            off_ms,
            "this machine's wall clock differs from the database's (positive: ahead); tokend keeps the database's time, the fleet's clock"
        );
    }
    tracing::info!(
        round_trip_ms = round_trip.as_millis() as u64,
        "clock anchored at the database's time"
    );
    Ok((local.anchored_at(fleet), true))
}

impl Engine {
    /// Compares the clock with the wall clock it follows (the fleet's when
    /// `fleet`, see [`anchor_clock`]) every second until shutdown.
    pub async fn watch_wall_clock(self: Arc<Self>, fleet: bool) {
        let mut behind = false;
        let mut failing = false;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.cancel.cancelled() => return,
            }
            let jump = if fleet {
                tokio::select! {
                    jump = self.check_fleet_clock(&mut failing) => jump,
                    _ = self.cancel.cancelled() => return,
                }
            } else {
                self.clock.check_wall()
            };
            self.wall_clock_checked(jump, &mut behind);
        }
    }

    /// One comparison with the fleet's clock. A reading that fails, or
    /// took too long to be trusted, is no jump: the clock keeps the offset
    /// it had. `failing` logs a failing clock once, not every second.
    async fn check_fleet_clock(&self, failing: &mut bool) -> Option<WallJump> {
        match read_fleet(self.store.as_ref()).await {
            Ok(Some((fleet, took))) if took <= MAX_ROUND_TRIP => {
                *failing = false;
                self.clock.observe_wall(fleet)
            }
            Ok(_) => None,
            Err(e) => {
                if !*failing {
                    tracing::warn!(
                        error = %e,
                        "cannot read the database's clock; keeping tokend's as it is"
                    );
                }
                *failing = true;
                None
            }
        }
    }

    /// Acts on one comparison; `behind` remembers that the wall clock was
    /// behind last time, so a step back is logged once, not every second.
    pub(super) fn wall_clock_checked(&self, jump: Option<WallJump>, behind: &mut bool) {
        match jump {
            Some(WallJump::Forward(by)) => {
                *behind = false;
                tracing::warn!(
                    jump_ms = by.as_millis() as u64,
                    "the wall clock (the database's on a shared store) is ahead of the monotonic clock (a suspend or a clock step): following it, so no token is served past its expiry"
                );
                self.scheduler.wake();
            }
            Some(WallJump::Backward(by)) => {
                if !*behind {
                    tracing::warn!(
                        jump_ms = by.as_millis() as u64,
                        "the wall clock (the database's on a shared store) stepped back: tokend's clock does not follow (it never goes back)"
                    );
                }
                *behind = true;
            }
            None => *behind = false,
        }
    }
}
