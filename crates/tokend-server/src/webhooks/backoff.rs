//! Retry delays: exponential from `initial` to `max`, with jitter in the
//! upper half (so each gap is at least the previous one's lower bound and
//! the gaps grow), never sooner than the endpoint's `Retry-After`.

use std::time::Duration;

/// The longest `Retry-After` honoured; a longer one is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait before attempt `failures + 1`, `jitter` in `[0, 1)`.
pub fn delay(
    failures: u32,
    retry_after: Option<Duration>,
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let jittered = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(r) => jittered.max(r.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn gaps_grow_up_to_the_cap_whatever_the_jitter() {
        let max = Duration::from_secs(60);
        // Below the cap, the shortest next gap is at least the longest
        // previous one.
        for failures in 1..6 {
            let longest = delay(failures, None, S, max, 0.999);
            let next_shortest = delay(failures + 1, None, S, max, 0.0);
            assert!(next_shortest >= longest, "attempt {failures}");
        }
        assert_eq!(delay(1, None, S, max, 0.0), Duration::from_millis(500));
        assert_eq!(delay(30, None, S, max, 0.0), Duration::from_secs(30));
        assert!(delay(30, None, S, max, 0.999) <= max);
    }

    #[test]
    fn retry_after_is_honoured_within_reason() {
        let max = Duration::from_secs(60);
        assert_eq!(
            delay(1, Some(Duration::from_secs(20)), S, max, 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(
            delay(1, Some(Duration::from_secs(86_400)), S, max, 0.0),
            MAX_RETRY_AFTER
        );
        assert_eq!(
            delay(3, Some(Duration::ZERO), S, max, 0.0),
            Duration::from_secs(2)
        );
    }
}
