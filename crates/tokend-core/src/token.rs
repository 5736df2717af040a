//! Token sets: the secrets tokend guards, and how it compares them without
//! keeping or printing them.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// One grant's tokens as obtained from the provider at `obtained_at`.
///
/// Secrets are `SecretString`s: their `Debug` prints `[REDACTED]`, and reading
/// one takes an explicit `expose_secret()`, which is easy to audit.
#[derive(Clone, Debug)]
pub struct TokenSet {
    pub access_token: SecretString,
    /// `None` for grants without one (client-credentials style imports).
    pub refresh_token: Option<SecretString>,
    /// Usually `Bearer`.
    pub token_type: String,
    pub scopes: Vec<String>,
    pub expires_at: Timestamp,
    pub obtained_at: Timestamp,
}

impl TokenSet {
    /// Time left before the access token expires; zero once expired.
    pub fn ttl(&self, now: Timestamp) -> Duration {
        self.expires_at.duration_since(now)
    }

    /// The lifetime the provider granted this access token.
    pub fn lifetime(&self) -> Duration {
        self.expires_at.duration_since(self.obtained_at)
    }

    /// Whether `token` is this set's access token.
    pub fn access_token_is(&self, token: &str) -> bool {
        // Comparing digests keeps the comparison time independent of where
        // the strings first differ.
        fingerprint(self.access_token.expose_secret()) == fingerprint(token)
    }

    /// Whether this set holds the same refresh token as `other`.
    pub fn same_refresh_token(&self, other: &TokenSet) -> bool {
        match (&self.refresh_token, &other.refresh_token) {
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// SHA-256 of a secret, hex encoded: safe to compare, store or log as an
/// identity of the secret without revealing it.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(access: &str, refresh: Option<&str>) -> TokenSet {
        TokenSet {
            access_token: SecretString::from(access),
            refresh_token: refresh.map(SecretString::from),
            token_type: "Bearer".into(),
            scopes: vec![],
            expires_at: Timestamp::from_unix_millis(61_000),
            obtained_at: Timestamp::from_unix_millis(1_000),
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = set("at-secret-value", Some("rt-secret-value"));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("at-secret-value"), "{dbg}");
        assert!(!dbg.contains("rt-secret-value"), "{dbg}");
    }

    #[test]
    fn ttl_and_lifetime() {
        let s = set("a", None);
        assert_eq!(s.lifetime(), Duration::from_secs(60));
        assert_eq!(
            s.ttl(Timestamp::from_unix_millis(31_000)),
            Duration::from_secs(30)
        );
        assert_eq!(s.ttl(Timestamp::from_unix_millis(99_000)), Duration::ZERO);
    }

    #[test]
    fn comparisons() {
        let s = set("a", Some("r1"));
        assert!(s.access_token_is("a"));
        assert!(!s.access_token_is("b"));
        assert!(s.same_refresh_token(&set("x", Some("r1"))));
        assert!(!s.same_refresh_token(&set("x", Some("r2"))));
        assert!(!s.same_refresh_token(&set("x", None)));
        assert_eq!(fingerprint("abc").len(), 64);
    }
}
