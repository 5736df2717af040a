//! What the scheduler, the connections gauge and filtered listing need of a
//! connection, without its secrets: a [`Summary`], and the counts per
//! provider and status. Backends keep these beside the sealed record so a
//! process with a million connections can start, schedule and count without
//! opening a single token.

use std::collections::BTreeMap;

use tokend_core::{Connection, ConnectionId, ProviderName, Status, Timestamp};

/// A connection's secret-free facts: enough to schedule its refresh, count
/// it in the gauge and filter a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub id: ConnectionId,
    pub provider: ProviderName,
    pub status: Status,
    pub expires_at: Timestamp,
    pub obtained_at: Timestamp,
}

impl Summary {
    pub fn of(c: &Connection) -> Self {
        Summary {
            id: c.id.clone(),
            provider: c.provider.clone(),
            status: c.status,
            expires_at: c.tokens.expires_at,
            obtained_at: c.tokens.obtained_at,
        }
    }

    /// The compact form kept in the sled index (the id is the key):
    /// version, expiry, obtained-at, status, provider.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let provider = self.provider.as_str().as_bytes();
        let mut out = Vec::with_capacity(18 + provider.len());
        out.push(1);
        out.extend_from_slice(&self.expires_at.unix_millis().to_be_bytes());
        out.extend_from_slice(&self.obtained_at.unix_millis().to_be_bytes());
        out.push(status_byte(self.status));
        out.extend_from_slice(provider);
        out
    }

    /// Reads [`Summary::to_bytes`]; `None` for bytes this build did not write.
    pub(crate) fn from_bytes(id: &[u8], bytes: &[u8]) -> Option<Summary> {
        if bytes.len() < 19 || bytes[0] != 1 {
            return None;
        }
        let millis = |at: usize| {
            <[u8; 8]>::try_from(&bytes[at..at + 8])
                .ok()
                .map(i64::from_be_bytes)
                .map(Timestamp::from_unix_millis)
        };
        let status = match bytes[17] {
            0 => Status::Active,
            1 => Status::ReconnectRequired,
            _ => return None,
        };
        Some(Summary {
            id: ConnectionId::new(std::str::from_utf8(id).ok()?).ok()?,
            provider: ProviderName::new(std::str::from_utf8(&bytes[18..]).ok()?).ok()?,
            status,
            expires_at: millis(1)?,
            obtained_at: millis(9)?,
        })
    }
}

fn status_byte(s: Status) -> u8 {
    match s {
        Status::Active => 0,
        Status::ReconnectRequired => 1,
    }
}

/// How many connections there are per provider and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census(pub BTreeMap<(ProviderName, Status), u64>);

impl Census {
    pub fn add(&mut self, provider: &ProviderName, status: Status) {
        *self.0.entry((provider.clone(), status)).or_default() += 1;
    }

    /// `(provider, status, count)` with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (&ProviderName, Status, u64)> {
        self.0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((p, s), n)| (p, *s, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        let s = Summary {
            id: ConnectionId::new("hubspot-1").unwrap(),
            provider: ProviderName::new("hubspot").unwrap(),
            status: Status::ReconnectRequired,
            expires_at: Timestamp::from_unix_millis(1_800_000_123),
            obtained_at: Timestamp::from_unix_millis(-5),
        };
        let bytes = s.to_bytes();
        assert_eq!(Summary::from_bytes(b"hubspot-1", &bytes), Some(s));
        assert_eq!(Summary::from_bytes(b"hubspot-1", &bytes[..10]), None);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(Summary::from_bytes(b"hubspot-1", &bad), None);
        let mut bad = bytes;
        bad[17] = 7;
        assert_eq!(Summary::from_bytes(b"hubspot-1", &bad), None);
        assert_eq!(Summary::from_bytes(b"", &[1; 30]), None);
    }
}
