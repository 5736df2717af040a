//! Watches the wall clock: a suspend or an NTP step moves it under the
//! monotonic clock tokend counts with. Every second the engine's clock is
//! compared with it and moves forward when it is ahead (never back), and the
//! background refresher wakes to take what became due.

use std::{sync::Arc, time::Duration};

use tokend_core::WallJump;

use super::Engine;

/// How often the wall clock is compared with tokend's.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// Compares the clock with the wall clock every second until shutdown.
    pub async fn watch_wall_clock(self: Arc<Self>) {
        let mut behind = false;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.cancel.cancelled() => return,
            }
            self.wall_clock_checked(self.clock.check_wall(), &mut behind);
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
                    "the wall clock is ahead of the monotonic clock (a suspend or a clock step): following it, so no token is served past its expiry"
                );
                self.scheduler.wake();
            }
            Some(WallJump::Backward(by)) => {
                if !*behind {
                    tracing::warn!(
                        jump_ms = by.as_millis() as u64,
                        "the wall clock stepped back: tokend's clock does not follow (it never goes back)"
                    );
                }
                *behind = true;
            }
            None => *behind = false,
        }
    }
}
