//! The connection record: everything tokend keeps about one OAuth grant.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    id::{ConnectionId, ProviderName},
    token::TokenSet,
};

/// Whether tokend can still obtain tokens for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Tokens are served and refreshed.
    Active,
    /// The provider revoked the grant; only a new install revives it. The
    /// provider's words are in `Connection::last_error`.
    ReconnectRequired,
}

impl Status {
    /// As in metrics labels and the store's columns: `active`,
    /// `reconnect_required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::ReconnectRequired => "reconnect_required",
        }
    }

    /// The status [`Status::as_str`] names, if it names one.
    pub fn parse(s: &str) -> Option<Status> {
        [Status::Active, Status::ReconnectRequired]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// Why a connection became `ReconnectRequired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconnectCause {
    /// The provider refused the grant: revoked by the user or portal.
    Revoked,
    /// The provider refused a refresh token that a refresh whose outcome
    /// was lost (a crash mid-refresh) may have spent: lost in flight.
    RotationLost,
    /// No refresh token to renew with.
    NoRefreshToken,
    /// The grant stands but needs the user's (or an administrator's)
    /// consent again, e.g. after new scopes (Microsoft AADSTS65001).
    ConsentRequired,
    /// The grant stands but the user must sign in interactively first:
    /// multi-factor authentication or a conditional-access policy
    /// (Microsoft AADSTS50076).
    InteractionRequired,
}

impl ReconnectCause {
    /// The `ErrorInfo` metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectCause::Revoked => "REVOKED",
            ReconnectCause::RotationLost => "ROTATION_LOST",
            ReconnectCause::NoRefreshToken => "NO_REFRESH_TOKEN",
            ReconnectCause::ConsentRequired => "CONSENT_REQUIRED",
            ReconnectCause::InteractionRequired => "INTERACTION_REQUIRED",
        }
    }
}

/// How a provider failure is classified. Each class has exactly one
/// behaviour in the refresh engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// `invalid_grant`, HubSpot `BAD_REFRESH_TOKEN`: the grant is dead.
    Revoked,
    /// `invalid_client`, `unauthorized_client`: tokend's client credentials
    /// are wrong; not the connection's fault.
    ClientMisconfigured,
    /// HTTP 429: wait for `Retry-After`.
    RateLimited,
    /// 5xx, timeouts, connection errors, malformed bodies: back off and retry.
    Transient,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Revoked => "revoked",
            ErrorClass::ClientMisconfigured => "client_misconfigured",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Transient => "transient",
        }
    }
}

/// The last provider failure, kept for operators. Never holds a secret: the
/// provider layer truncates messages and strips what tokend sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub class: ErrorClass,
    /// The provider's code: `invalid_grant`, `BAD_REFRESH_TOKEN`, `http_503`.
    pub code: String,
    pub message: String,
    pub correlation_id: Option<String>,
    pub http_status: Option<u16>,
    pub at: Timestamp,
}

/// Everything tokend keeps about one connection.
///
/// Two counters: `version` grows with every change of the token set and is
/// what callers see and hand back to `ForceRefresh`; `revision` grows with
/// every write of the record and is what the store compares and swaps on.
/// `revision >= version` always, so a write that cannot replace a newer
/// revision cannot replace a newer version either.
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: ConnectionId,
    pub provider: ProviderName,
    /// Provider-side account: HubSpot portal id, Salesforce org id, ...
    pub account_id: String,
    pub tokens: TokenSet,
    /// The refresh token this set replaced, kept until the new one has been
    /// used successfully once, so a crash between the provider rotating it
    /// and tokend persisting the answer can be recovered from.
    pub previous_refresh_token: Option<SecretString>,
    pub version: u64,
    pub revision: u64,
    /// Fixed when the connection is created, kept by replacements, new after
    /// a delete and re-create. Compare-and-swap checks it with `revision`, so
    /// a write based on a deleted incarnation can never land on a new one
    /// whose revision counter started again.
    pub incarnation: u64,
    pub status: Status,
    /// Why the status is `ReconnectRequired`; `None` while `Active`.
    pub reconnect_cause: Option<ReconnectCause>,
    pub last_error: Option<LastError>,
    pub last_refresh_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Digest of the install request that produced this token set, so a
    /// retried identical install is recognised and not applied twice.
    pub install_fingerprint: Option<String>,
    /// Parameters given at Install that fill the provider's URL templates
    /// (`subdomain`, `shop`): hostname-safe values, never secret.
    pub params: std::collections::BTreeMap<String, String>,
    /// What the provider's answers said about the connection beside the
    /// tokens (Salesforce's `instance_url`), as the provider's
    /// `metadata_fields` name it. Never secret.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Connection {
    /// A copy with the record counters advanced for the next write.
    pub fn next_revision(&self, now: Timestamp) -> Connection {
        let mut next = self.clone();
        next.revision += 1;
        next.updated_at = now;
        next
    }

    /// Whether this record holds another grant than `base`: another
    /// refresh token (a rotation, a re-install, another replica), or another
    /// incarnation. A version bump alone is not a new grant: an import that
    /// keeps the refresh token changes the version but not the grant. A
    /// writer that finds this after losing a compare-and-swap must use this
    /// record instead of its own result.
    pub fn supersedes(&self, base: &Connection) -> bool {
        self.incarnation != base.incarnation || !self.tokens.same_refresh_token(&base.tokens)
    }

    /// The record after a successful refresh that returned `fresh`.
    ///
    /// Keeps the current refresh token when the provider sent none (many
    /// providers do not rotate), and remembers the replaced one.
    pub fn with_refreshed_tokens(&self, mut fresh: TokenSet, now: Timestamp) -> Connection {
        let mut next = self.next_revision(now);
        if fresh.refresh_token.is_none() {
            fresh.refresh_token = self.tokens.refresh_token.clone();
        }
        if fresh.scopes.is_empty() {
            fresh.scopes = self.tokens.scopes.clone();
        }
        next.previous_refresh_token = if fresh.same_refresh_token(&self.tokens) {
            self.previous_refresh_token.clone()
        } else {
            self.tokens.refresh_token.clone()
        };
        next.tokens = fresh;
        next.version += 1;
        next.status = Status::Active;
        next.reconnect_cause = None;
        next.last_error = None;
        next.last_refresh_at = Some(now);
        next
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn status_names_parse_back() {
        for status in [Status::Active, Status::ReconnectRequired] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("ACTIVE"), None);
        assert_eq!(Status::parse(""), None);
    }

    fn conn() -> Connection {
        Connection {
            id: ConnectionId::new("c1").unwrap(),
            provider: ProviderName::new("sandbox").unwrap(),
            account_id: "acct".into(),
            tokens: TokenSet {
                access_token: "a1".into(),
                refresh_token: Some("r1".into()),
                token_type: "Bearer".into(),
                scopes: vec!["crm".into()],
                expires_at: Timestamp::from_unix_millis(10),
                obtained_at: Timestamp::from_unix_millis(0),
            },
            previous_refresh_token: None,
            version: 3,
            revision: 7,
            incarnation: 42,
            status: Status::Active,
            reconnect_cause: None,
            last_error: None,
            last_refresh_at: None,
            created_at: Timestamp::from_unix_millis(0),
            updated_at: Timestamp::from_unix_millis(0),
            install_fingerprint: None,
            params: Default::default(),
            metadata: Default::default(),
        }
    }

    fn fresh(refresh: Option<&str>) -> TokenSet {
        TokenSet {
            access_token: "a2".into(),
            refresh_token: refresh.map(SecretString::from),
            token_type: "Bearer".into(),
            scopes: vec![],
            expires_at: Timestamp::from_unix_millis(2000),
            obtained_at: Timestamp::from_unix_millis(100),
        }
    }

    #[test]
    fn rotation_keeps_the_previous_refresh_token() {
        let now = Timestamp::from_unix_millis(100);
        let next = conn().with_refreshed_tokens(fresh(Some("r2")), now);
        assert_eq!((next.version, next.revision), (4, 8));
        assert_eq!(
            next.tokens.refresh_token.as_ref().unwrap().expose_secret(),
            "r2"
        );
        assert_eq!(
            next.previous_refresh_token
                .as_ref()
                .unwrap()
                .expose_secret(),
            "r1"
        );
        assert_eq!(next.tokens.scopes, vec!["crm".to_string()]);
        assert_eq!(next.last_refresh_at, Some(now));
    }

    #[test]
    fn a_missing_refresh_token_keeps_the_old_one() {
        let next = conn().with_refreshed_tokens(fresh(None), Timestamp::from_unix_millis(100));
        assert_eq!(
            next.tokens.refresh_token.as_ref().unwrap().expose_secret(),
            "r1"
        );
        assert!(next.previous_refresh_token.is_none());
    }
}
