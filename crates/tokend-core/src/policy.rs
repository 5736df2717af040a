//! When to refresh: the per-provider buffer, capped for short-lived tokens.

use std::time::Duration;

use crate::{clock::Timestamp, token::TokenSet};

/// Decides when a token set is due for renewal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefreshPolicy {
    /// Renew this long before expiry (per provider; default 5 minutes).
    pub buffer: Duration,
    /// ... but never more than this fraction of the token's lifetime, so a
    /// 60-second token is not refreshed on every read.
    pub max_buffer_fraction: f64,
    /// Refresh at least this often, however long the access token lives:
    /// for providers whose refresh tokens die unused (Google after six
    /// months, Intuit 100 days, Xero 60 days), so a quiet tenant keeps its
    /// grant.
    pub keepalive: Option<Duration>,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            buffer: Duration::from_secs(300),
            max_buffer_fraction: 0.5,
            keepalive: None,
        }
    }
}

impl RefreshPolicy {
    /// The effective buffer for this token set.
    pub fn buffer_for(&self, tokens: &TokenSet) -> Duration {
        self.buffer_for_lifetime(tokens.lifetime())
    }

    fn buffer_for_lifetime(&self, lifetime: Duration) -> Duration {
        let fraction = self.max_buffer_fraction.clamp(0.0, 1.0);
        self.buffer.min(lifetime.mul_f64(fraction))
    }

    /// When the background refresher should renew this token set.
    pub fn refresh_due_at(&self, tokens: &TokenSet) -> Timestamp {
        self.due_at(tokens.expires_at, tokens.obtained_at)
    }

    /// [`Self::refresh_due_at`] from the two instants alone (what a store's
    /// secret-free summary of a record keeps).
    pub fn due_at(&self, expires_at: Timestamp, obtained_at: Timestamp) -> Timestamp {
        let before_expiry = expires_at
            .saturating_sub(self.buffer_for_lifetime(expires_at.duration_since(obtained_at)));
        match self.keepalive {
            Some(k) => before_expiry.min(obtained_at.saturating_add(k)),
            None => before_expiry,
        }
    }

    /// Whether the grant must be exercised now to stay alive, though the
    /// access token is still good (see `keepalive`).
    pub fn keepalive_due(&self, tokens: &TokenSet, now: Timestamp) -> bool {
        self.keepalive
            .is_some_and(|k| now >= tokens.obtained_at.saturating_add(k))
    }

    /// Whether a reader needing `min_ttl` must wait for a refresh first.
    pub fn needs_refresh(&self, tokens: &TokenSet, now: Timestamp, min_ttl: Duration) -> bool {
        let ttl = tokens.ttl(now);
        ttl.is_zero() || ttl < self.buffer_for(tokens).max(min_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16: with a keepalive, a grant whose access token outlives it
    /// is due by then; without one, only expiry counts.
    #[test]
    fn keepalive_caps_the_due_time() {
        let day = 86_400_000;
        let tokens = TokenSet {
            access_token: secrecy::SecretString::from("a"),
            refresh_token: None,
            token_type: "Bearer".into(),
            scopes: vec![],
            obtained_at: Timestamp::from_unix_millis(0),
            expires_at: Timestamp::from_unix_millis(90 * day),
        };
        let plain = RefreshPolicy::default();
        assert_eq!(
            plain.refresh_due_at(&tokens),
            Timestamp::from_unix_millis(90 * day - 300_000)
        );
        assert!(!plain.keepalive_due(&tokens, Timestamp::from_unix_millis(89 * day)));
        let kept = RefreshPolicy {
            keepalive: Some(Duration::from_secs(30 * 86_400)),
            ..RefreshPolicy::default()
        };
        assert_eq!(
            kept.refresh_due_at(&tokens),
            Timestamp::from_unix_millis(30 * day)
        );
        assert!(!kept.keepalive_due(&tokens, Timestamp::from_unix_millis(29 * day)));
        assert!(kept.keepalive_due(&tokens, Timestamp::from_unix_millis(30 * day)));
        // A short-lived token is due before its keepalive anyway.
        let short = TokenSet {
            expires_at: Timestamp::from_unix_millis(1_800_000),
            ..tokens
        };
        assert_eq!(
            kept.refresh_due_at(&short),
            Timestamp::from_unix_millis(1_500_000)
        );
    }

    fn tokens(lifetime_secs: i64) -> TokenSet {
        TokenSet {
            access_token: "a".into(),
            refresh_token: None,
            token_type: "Bearer".into(),
            scopes: vec![],
            expires_at: Timestamp::from_unix_millis(lifetime_secs * 1000),
            obtained_at: Timestamp::from_unix_millis(0),
        }
    }

    #[test]
    fn buffer_is_capped_for_short_lived_tokens() {
        let p = RefreshPolicy::default();
        assert_eq!(p.buffer_for(&tokens(1800)), Duration::from_secs(300));
        assert_eq!(p.buffer_for(&tokens(60)), Duration::from_secs(30));
        assert_eq!(
            p.refresh_due_at(&tokens(1800)),
            Timestamp::from_unix_millis(1500 * 1000)
        );
    }

    #[test]
    fn needs_refresh_uses_the_larger_of_buffer_and_min_ttl() {
        let p = RefreshPolicy::default();
        let t = tokens(1800);
        let at = |s: i64| Timestamp::from_unix_millis(s * 1000);
        assert!(!p.needs_refresh(&t, at(1000), Duration::ZERO));
        assert!(p.needs_refresh(&t, at(1501), Duration::ZERO));
        assert!(p.needs_refresh(&t, at(1000), Duration::from_secs(900)));
        assert!(p.needs_refresh(&t, at(2000), Duration::ZERO));
        // An expired token whose lifetime is unknown (zero) still needs one.
        assert!(p.needs_refresh(&tokens(0), at(0), Duration::ZERO));
    }
}
