//! Event cursors: opaque to callers, a log id and a sequence number inside.
//!
//! Two forms. The plain one (22 characters) is for readers that see every
//! connection. A caller limited to some connections gets sealed ones (80
//! characters): the same position encrypted under the store's keys with a
//! fresh nonce each time, so neither a cursor's value nor whether two
//! cursors differ tells it how far the fleet-wide log has moved.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use tokend_store::crypto::{KeyError, Keyring, Sealed};

/// A position in one event log: "after the event numbered `seq`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub log_id: u64,
    pub seq: u64,
}

impl Cursor {
    /// The opaque form callers see and hand back: 22 URL-safe characters.
    pub fn encode(self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.log_id.to_be_bytes());
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor; `None` for anything [`Self::encode`] cannot have made.
    pub fn decode(s: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).ok()?;
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        let log_id = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(bytes[8..].try_into().ok()?);
        (log_id != 0).then_some(Cursor { log_id, seq })
    }
}

/// The associated data sealed cursors are bound to: no record field can be
/// passed off as a cursor, nor a cursor as a field (a field's associated
/// data starts with a length prefix, never with these bytes).
const SEALED_AS: &[u8] = b"tokend event cursor";
/// Bytes of a sealed cursor: key id, nonce, 16 bytes of position, tag.
const SEALED_LEN: usize = 4 + 24 + 16 + 16;

/// A cursor as a caller handed it back, before it is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    Plain(Cursor),
    Sealed(Vec<u8>),
}

/// Why a sealed cursor cannot be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Sealed with a key the store no longer holds (retired).
    RetiredKey,
    /// Not sealed by this server's keys.
    Forged,
}

impl Presented {
    /// Reads either form; `None` for anything tokend cannot have issued.
    pub fn decode(s: &str) -> Option<Presented> {
        let s = s.trim();
        if s.len() == 22 {
            return Cursor::decode(s).map(Presented::Plain);
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        (bytes.len() == SEALED_LEN).then_some(Presented::Sealed(bytes))
    }
}

impl Cursor {
    /// The sealed form: a fresh nonce each call.
    pub fn seal(self, keys: &Keyring) -> String {
        let mut plain = [0u8; 16];
        plain[..8].copy_from_slice(&self.log_id.to_be_bytes());
        plain[8..].copy_from_slice(&self.seq.to_be_bytes());
        let sealed = keys.seal(SEALED_AS, &plain);
        let mut bytes = Vec::with_capacity(SEALED_LEN);
        bytes.extend_from_slice(&sealed.k.to_be_bytes());
        bytes.extend(STANDARD.decode(&sealed.n).unwrap_or_default());
        bytes.extend(STANDARD.decode(&sealed.c).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Opens what [`Self::seal`] made with `keys` (or an older key of theirs).
    pub fn open(bytes: &[u8], keys: &Keyring) -> Result<Cursor, Unreadable> {
        if bytes.len() != SEALED_LEN {
            return Err(Unreadable::Forged);
        }
        let sealed = Sealed {
            k: u32::from_be_bytes(bytes[..4].try_into().map_err(|_| Unreadable::Forged)?),
            n: STANDARD.encode(&bytes[4..28]),
            c: STANDARD.encode(&bytes[28..]),
        };
        let plain = keys
            .open("event-cursor", SEALED_AS, &sealed)
            .map_err(|e| match e {
                KeyError::UnknownKey { .. } => Unreadable::RetiredKey,
                _ => Unreadable::Forged,
            })?;
        let plain: [u8; 16] = plain.try_into().map_err(|_| Unreadable::Forged)?;
        let log_id = u64::from_be_bytes(plain[..8].try_into().map_err(|_| Unreadable::Forged)?);
        let seq = u64::from_be_bytes(plain[8..].try_into().map_err(|_| Unreadable::Forged)?);
        Ok(Cursor { log_id, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: a sealed cursor opens to its position with the keys that
    /// sealed it, never with others; two seals of one position differ (so
    /// a caller cannot tell whether the log moved); plain and sealed forms
    /// are told apart by shape.
    #[test]
    fn sealed_cursors_round_trip_and_reveal_nothing() {
        let keys = Keyring::ephemeral();
        let c = Cursor {
            log_id: 7,
            seq: 1234,
        };
        let a = c.seal(&keys);
        let b = c.seal(&keys);
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(a.len(), 80);
        let Some(Presented::Sealed(bytes)) = Presented::decode(&a) else {
            panic!("not read as sealed: {a}");
        };
        assert_eq!(Cursor::open(&bytes, &keys), Ok(c));
        assert_eq!(
            Cursor::open(&bytes, &Keyring::ephemeral()),
            Err(Unreadable::Forged),
            "another server's keys (same key id, other key)"
        );
        let mut tampered = bytes.clone();
        tampered[40] ^= 1;
        assert_eq!(Cursor::open(&tampered, &keys), Err(Unreadable::Forged));
        let mut retired = bytes;
        retired[..4].copy_from_slice(&999u32.to_be_bytes());
        assert_eq!(Cursor::open(&retired, &keys), Err(Unreadable::RetiredKey));
        assert_eq!(
            Presented::decode(&c.encode()),
            Some(Presented::Plain(c)),
            "plain cursors still read"
        );
        assert_eq!(Presented::decode(&a[..79]), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            log_id: 0xdead_beef,
            seq: 42,
        };
        let s = c.encode();
        assert_eq!(s.len(), 22);
        assert_eq!(Cursor::decode(&s), Some(c));
        for bad in [
            "",
            "x",
            "not a cursor at all!!!",
            &s[..21],
            &format!("{s}AA"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            Cursor::decode(&Cursor { log_id: 0, seq: 1 }.encode()),
            None,
            "log id 0 is never issued"
        );
    }
}
