//! Validated identifiers: connection ids and provider names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted connection id, in bytes.
pub const MAX_CONNECTION_ID_LEN: usize = 128;
/// Longest accepted provider name, in bytes.
pub const MAX_PROVIDER_NAME_LEN: usize = 64;

/// Why an identifier was rejected; the message names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes, got {len}")]
    TooLong { max: usize, len: usize },
    #[error(
        "may only contain ASCII letters, digits and '.', '_', '-', ':' and must start with a letter or digit"
    )]
    BadCharacter,
}

fn validate(s: &str, max: usize, extra: &[u8]) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max, len: s.len() });
    }
    let bytes = s.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() {
        return Err(IdError::BadCharacter);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(b))
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

/// A connection's id, e.g. `hubspot-portal-123`: 1..=128 bytes of
/// `[A-Za-z0-9._:-]`, starting with a letter or digit, so it is safe in logs,
/// metrics labels, store keys and URLs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

impl ConnectionId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        validate(&s, MAX_CONNECTION_ID_LEN, b"._:-")?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<ConnectionId> for String {
    fn from(id: ConnectionId) -> String {
        id.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A provider's configured name, e.g. `hubspot`: 1..=64 bytes of
/// `[A-Za-z0-9_-]`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderName(String);

impl ProviderName {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        validate(&s, MAX_PROVIDER_NAME_LEN, b"_-")?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProviderName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<ProviderName> for String {
    fn from(p: ProviderName) -> String {
        p.0
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The stable id tokend gives a connection whose installer named none:
/// `<provider>-<account>`, with characters outside the id alphabet replaced
/// by `_`. The same provider and account always give the same id, so a
/// re-install replaces the connection instead of duplicating it.
pub fn derive_connection_id(
    provider: &ProviderName,
    account_id: &str,
) -> Result<ConnectionId, IdError> {
    if account_id.is_empty() {
        return Err(IdError::Empty);
    }
    let account: String = account_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    ConnectionId::new(format!("{provider}-{account}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_validated() {
        assert!(ConnectionId::new("hubspot-portal-123").is_ok());
        assert!(ConnectionId::new("a.b_c:d-e").is_ok());
        assert_eq!(ConnectionId::new(""), Err(IdError::Empty));
        assert_eq!(ConnectionId::new("-x"), Err(IdError::BadCharacter));
        assert_eq!(ConnectionId::new("a b"), Err(IdError::BadCharacter));
        assert_eq!(ConnectionId::new("a/b"), Err(IdError::BadCharacter));
        assert_eq!(ConnectionId::new("é"), Err(IdError::BadCharacter));
        assert!(matches!(
            ConnectionId::new("a".repeat(129)),
            Err(IdError::TooLong { max: 128, len: 129 })
        ));
        assert!(ConnectionId::new("a".repeat(128)).is_ok());
    }

    #[test]
    fn deserializing_rejects_invalid_ids() {
        let bad: Result<ConnectionId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_valid() {
        let p = ProviderName::new("hubspot").unwrap();
        let a = derive_connection_id(&p, "123").unwrap();
        assert_eq!(a.as_str(), "hubspot-123");
        assert_eq!(a, derive_connection_id(&p, "123").unwrap());
        assert_eq!(
            derive_connection_id(&p, "acme corp/eu").unwrap().as_str(),
            "hubspot-acme_corp_eu"
        );
        assert!(derive_connection_id(&p, "").is_err());
        assert!(derive_connection_id(&p, &"x".repeat(200)).is_err());
    }
}
