//! Event cursors: opaque to callers, a log id and a sequence number inside.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

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

#[cfg(test)]
mod tests {
    use super::*;

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
