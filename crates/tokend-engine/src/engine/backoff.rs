//! When to try again: per-connection backoff after a failed refresh, and a
//! per-provider breaker for failures that are the provider's, not the
//! connection's (`invalid_client`, rate limits).

use std::{sync::Mutex, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokend_core::{ErrorClass, LastError, Timestamp};

use super::EngineSettings;

/// Retry bookkeeping of one connection, in memory only: after a restart a
/// connection gets one immediate attempt, which is what an operator expects.
#[derive(Default)]
pub(crate) struct RetryState {
    backoff: Option<ExponentialBackoff>,
    /// No provider call for this connection before this time.
    pub(crate) not_before: Option<Timestamp>,
    /// Consecutive failed attempts.
    pub(crate) attempts: u32,
    /// What the last attempt failed with, replayed to callers during backoff.
    pub(crate) last_failure: Option<super::Failure>,
    /// Since when the refresh has been in doubt (the provider may have
    /// rotated the grant without tokend reading the answer), if it is.
    pub(crate) in_doubt_since: Option<Timestamp>,
    /// Retries made since the doubt began.
    doubt_retries: u32,
    /// Consecutive retries after the store failed (see `store_delay`).
    store_retries: u32,
}

/// The first retry of a refresh left in doubt comes within this (jittered):
/// a rotated-out refresh token the provider still honours for a grace
/// period must be presented again before the grace ends.
pub(crate) const IN_DOUBT_FIRST_RETRY: Duration = Duration::from_secs(1);
/// The shortest wait between two retries of an in-doubt refresh.
const IN_DOUBT_MIN_RETRY: Duration = Duration::from_millis(200);

impl RetryState {
    /// The delay before retrying a refresh left in doubt at `now`, whatever
    /// the access token's remaining life. The first retry comes within
    /// [`IN_DOUBT_FIRST_RETRY`], jittered, even for a strictly rotating
    /// provider (so a lost grant is known at once). Later ones double, but
    /// stay inside the provider's rotation `grace` while it lasts; after it,
    /// the usual backoff for `class`.
    pub(crate) fn in_doubt_delay(
        &mut self,
        now: Timestamp,
        grace: Duration,
        class: ErrorClass,
        retry_after: Option<Duration>,
        settings: &EngineSettings,
    ) -> Duration {
        let since = *self.in_doubt_since.get_or_insert(now);
        self.doubt_retries = self.doubt_retries.saturating_add(1);
        let usual = self.next_delay(class, retry_after, settings);
        let jittered = |d: Duration| {
            d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
                .max(IN_DOUBT_MIN_RETRY)
        };
        if self.doubt_retries == 1 {
            return jittered(IN_DOUBT_FIRST_RETRY);
        }
        let grace_end = since.saturating_add(grace);
        if now >= grace_end {
            return usual;
        }
        let step =
            IN_DOUBT_FIRST_RETRY.saturating_mul(1 << self.doubt_retries.min(16).saturating_sub(1));
        // Half of what is left, so another retry still fits in the grace.
        let left = grace_end.duration_since(now) / 2;
        jittered(step.min(left).min(usual.max(IN_DOUBT_FIRST_RETRY)))
    }

    /// The delay before retrying after the *store* failed a refresh (its
    /// lease, the read under it, a write) or refused a grant, which then
    /// stays pending: `pending_retry_min` doubling to `pending_retry_max`
    /// (1 s by default), jittered.
    ///
    /// Invariant (issue 25, `pg-stop`): a store failure is not the
    /// provider's. It neither grows the provider's backoff (`attempts`,
    /// the exponential state) nor touches the breaker, so a connection is
    /// served again within a second or so of the store's return, however
    /// long the outage was.
    pub(crate) fn store_delay(&mut self, settings: &EngineSettings) -> Duration {
        self.store_retries = self.store_retries.saturating_add(1);
        let step = settings
            .pending_retry_min
            .saturating_mul(1 << self.store_retries.min(16).saturating_sub(1))
            .min(settings.pending_retry_max);
        // Replicas that failed together do not come back in step.
        step.mul_f64(0.5 + rand::random::<f64>() / 2.0)
            .max(Duration::from_millis(10))
    }

    /// The delay before the next attempt after a failure of `class`.
    pub(crate) fn next_delay(
        &mut self,
        class: ErrorClass,
        retry_after: Option<Duration>,
        settings: &EngineSettings,
    ) -> Duration {
        self.attempts += 1;
        let backoff = self.backoff.get_or_insert_with(|| {
            ExponentialBuilder::default()
                .with_min_delay(settings.backoff_min)
                .with_max_delay(settings.backoff_max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build()
        });
        // Jitter may push a delay past the cap; the cap wins.
        let exponential = backoff
            .next()
            .unwrap_or(settings.backoff_max)
            .min(settings.backoff_max);
        provider_delay(class, retry_after, exponential, settings)
    }
}

/// The delay a failure of `class` calls for, given the exponential step.
fn provider_delay(
    class: ErrorClass,
    retry_after: Option<Duration>,
    exponential: Duration,
    settings: &EngineSettings,
) -> Duration {
    let retry_after = retry_after.map(|d| d.min(settings.max_retry_after));
    let delay = match class {
        // The provider said when: believe it (within reason).
        ErrorClass::RateLimited => retry_after.unwrap_or(exponential),
        ErrorClass::ClientMisconfigured => exponential.max(settings.misconfigured_retry),
        ErrorClass::Transient => exponential.max(retry_after.unwrap_or_default()),
        // Revoked connections are not retried at all; still a finite delay.
        ErrorClass::Revoked => settings.backoff_max,
    };
    // `Retry-After: 0` or a date in the past must not become a tight loop.
    delay.max(settings.backoff_min)
}

/// Whether a failure class is about the provider as a whole: every
/// connection of that provider would get the same answer.
pub(crate) fn provider_wide(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::ClientMisconfigured | ErrorClass::RateLimited
    )
}

/// What the breaker lets a refresh do.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Call the provider.
    Call,
    /// Call the provider as the one probe after an open period; report the
    /// outcome with `probe_done`.
    Probe,
    /// Do not call: the provider is failing for everyone.
    Reject {
        error: LastError,
        retry_after: Duration,
    },
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    /// No calls until `until`; then one probe.
    Open {
        until: Timestamp,
        error: LastError,
    },
    /// One probe is out; everyone else waits for it.
    Probing {
        error: LastError,
    },
}

/// One provider's breaker. A `ClientMisconfigured` or `RateLimited`
/// answer opens it: other connections of that provider then fail fast,
/// with no provider call and no write, until one probe succeeds.
pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Consecutive openings, for the delay of the next.
    openings: Mutex<u32>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Closed),
            openings: Mutex::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Breaker {
    pub(crate) fn admit(&self, now: Timestamp, settings: &EngineSettings) -> Admission {
        let mut state = lock(&self.state);
        match &*state {
            State::Closed => Admission::Call,
            State::Open { until, error } if *until > now => Admission::Reject {
                error: error.clone(),
                retry_after: until.duration_since(now),
            },
            State::Open { error, .. } => {
                *state = State::Probing {
                    error: error.clone(),
                };
                Admission::Probe
            }
            State::Probing { error } => Admission::Reject {
                error: error.clone(),
                retry_after: settings.backoff_min,
            },
        }
    }

    /// The error and wait, when the breaker would reject a call now;
    /// changes nothing (the probe is taken by [`Breaker::admit`]).
    pub(crate) fn rejecting(
        &self,
        now: Timestamp,
        settings: &EngineSettings,
    ) -> Option<(LastError, Duration)> {
        match &*lock(&self.state) {
            State::Closed => None,
            State::Open { until, error } => {
                (*until > now).then(|| (error.clone(), until.duration_since(now)))
            }
            State::Probing { error } => Some((error.clone(), settings.backoff_min)),
        }
    }

    /// Opens the breaker after a provider-wide failure; returns the delay.
    pub(crate) fn trip(
        &self,
        error: &LastError,
        retry_after: Option<Duration>,
        now: Timestamp,
        settings: &EngineSettings,
    ) -> Duration {
        let openings = {
            let mut o = lock(&self.openings);
            *o = o.saturating_add(1);
            *o
        };
        let exponential = settings
            .backoff_min
            .saturating_mul(1u32 << openings.min(16).saturating_sub(1))
            .min(settings.backoff_max);
        let delay = provider_delay(error.class, retry_after, exponential, settings);
        *lock(&self.state) = State::Open {
            until: now.saturating_add(delay),
            error: error.clone(),
        };
        delay
    }

    /// A call that was not a provider-wide failure: the provider is
    /// answering, so the breaker closes. Returns whether it was open.
    pub(crate) fn close(&self) -> bool {
        let mut state = lock(&self.state);
        let was_open = !matches!(*state, State::Closed);
        *state = State::Closed;
        *lock(&self.openings) = 0;
        was_open
    }

    /// A probe that ended without an answer (its task died): let the next
    /// caller probe.
    pub(crate) fn probe_abandoned(&self, now: Timestamp) {
        let mut state = lock(&self.state);
        if let State::Probing { error } = &*state {
            *state = State::Open {
                until: now,
                error: error.clone(),
            };
        }
    }

    /// The error the breaker is open for, if it is not closed.
    pub(crate) fn open_error(&self) -> Option<LastError> {
        match &*lock(&self.state) {
            State::Closed => None,
            State::Open { error, .. } | State::Probing { error } => Some(error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EngineSettings {
        EngineSettings {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn error(class: ErrorClass) -> LastError {
        LastError {
            class,
            code: "invalid_client".into(),
            message: "bad client".into(),
            correlation_id: None,
            http_status: Some(401),
            at: Timestamp::from_unix_millis(0),
        }
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let settings = settings();
        let mut retry = RetryState::default();
        let delays: Vec<_> = (0..10)
            .map(|_| retry.next_delay(ErrorClass::Transient, None, &settings))
            .collect();
        assert!(delays[0] >= Duration::from_secs(1) && delays[0] <= Duration::from_secs(2));
        assert!(delays[5] > delays[0]);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(120)));
        assert_eq!(
            retry.next_delay(
                ErrorClass::RateLimited,
                Some(Duration::from_secs(7)),
                &settings
            ),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry.next_delay(
                ErrorClass::RateLimited,
                Some(Duration::from_secs(10 * 24 * 3600)),
                &settings
            ),
            settings.max_retry_after
        );
        assert!(
            retry.next_delay(ErrorClass::ClientMisconfigured, None, &settings)
                >= settings.misconfigured_retry
        );
        assert_eq!(
            retry.next_delay(ErrorClass::RateLimited, Some(Duration::ZERO), &settings),
            settings.backoff_min,
            "Retry-After: 0 cannot become a loop"
        );
    }

    /// Issue 25, `pg-stop`. Invariant: store failures are retried on their
    /// own short delay (at most `pending_retry_max`, 1 s), however many in
    /// a row, and leave the provider's backoff where it was: the provider
    /// delay after them is still its first.
    #[test]
    fn store_failures_retry_within_a_second_and_leave_the_provider_backoff_alone() {
        let settings = EngineSettings {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        let mut retry = RetryState::default();
        let delays: Vec<_> = (0..50).map(|_| retry.store_delay(&settings)).collect();
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(1)),
            "{delays:?}"
        );
        assert!(delays[0] <= Duration::from_millis(100), "{delays:?}");
        assert!(delays[49] >= Duration::from_millis(500), "{delays:?}");
        assert_eq!(retry.attempts, 0);
        let provider = retry.next_delay(ErrorClass::Transient, None, &settings);
        assert!(provider <= Duration::from_secs(2), "{provider:?}");
    }

    #[test]
    fn the_breaker_lets_one_probe_through_after_the_open_period() {
        let s = settings();
        let b = Breaker::default();
        let t0 = Timestamp::from_unix_millis(0);
        assert!(matches!(b.admit(t0, &s), Admission::Call));
        let delay = b.trip(
            &error(ErrorClass::RateLimited),
            Some(Duration::from_secs(10)),
            t0,
            &s,
        );
        assert_eq!(delay, Duration::from_secs(10));
        match b.admit(t0.saturating_add(Duration::from_secs(3)), &s) {
            Admission::Reject { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(7))
            }
            other => panic!("{other:?}"),
        }
        let later = t0.saturating_add(delay);
        assert!(matches!(b.admit(later, &s), Admission::Probe));
        assert!(
            matches!(b.admit(later, &s), Admission::Reject { .. }),
            "one probe at a time"
        );
        assert!(b.open_error().is_some());
        assert!(b.close());
        assert!(matches!(b.admit(later, &s), Admission::Call));
        assert!(b.open_error().is_none());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let s = settings();
        let b = Breaker::default();
        let t0 = Timestamp::from_unix_millis(0);
        b.trip(&error(ErrorClass::ClientMisconfigured), None, t0, &s);
        let later = t0.saturating_add(Duration::from_secs(3600));
        assert!(matches!(b.admit(later, &s), Admission::Probe));
        b.probe_abandoned(later);
        assert!(matches!(b.admit(later, &s), Admission::Probe));
    }
}
