//! The gRPC length-prefixed framing of a request body, checked as its bytes
//! arrive: each message is a flag byte (0, or 1 when compressed) and a
//! 4-byte big-endian length. tonic answers a bad flag or a body cut inside
//! a message INTERNAL, with no details; checked here, every framing fault
//! is INVALID_ARGUMENT (`MALFORMED_REQUEST`, audited like undecodable
//! protobuf), and a declared length over the service's message cap is
//! refused before its bytes are buffered.

use crate::error::ServiceError;

/// The flag byte and the 4-byte length in front of every message.
const PREFIX: usize = 5;

/// Where a request body is in its framing.
#[derive(Debug)]
pub(crate) struct Framing {
    /// Largest message the service takes.
    max_message: usize,
    /// Whether the request names a `grpc-encoding` other than identity, so
    /// that flag 1 (compressed) is allowed.
    compressed_ok: bool,
    /// The prefix bytes read so far of the next message.
    prefix: [u8; PREFIX],
    have: usize,
    /// The current message's declared length, and how much of it is still
    /// to come.
    declared: usize,
    remaining: usize,
}

/// What is wrong with a body's framing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A flag byte other than 0 or 1.
    Flag(u8),
    /// Flag 1 with no `grpc-encoding` (or `identity`).
    CompressedWithoutEncoding,
    /// A declared length over the cap.
    TooLarge { size: usize, limit: usize },
    /// The body ended inside a message's 5-byte prefix.
    TruncatedPrefix { have: usize },
    /// The body ended before a message's declared length.
    TruncatedMessage { missing: usize },
}

impl Framing {
    pub(crate) fn new(max_message: usize, compressed_ok: bool) -> Self {
        Framing {
            max_message,
            compressed_ok,
            prefix: [0; PREFIX],
            have: 0,
            declared: 0,
            remaining: 0,
        }
    }

    /// Bytes received of the message not yet complete (its prefix
    /// included); 0 between messages.
    pub(crate) fn partial(&self) -> usize {
        if self.remaining > 0 {
            PREFIX + self.declared - self.remaining
        } else {
            self.have
        }
    }

    /// Follows `data`, the next bytes of the body.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), Fault> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (PREFIX - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < PREFIX {
                break;
            }
            self.have = 0;
            match self.prefix[0] {
                0 => {}
                1 if self.compressed_ok => {}
                1 => return Err(Fault::CompressedWithoutEncoding),
                flag => return Err(Fault::Flag(flag)),
            }
            let [_, a, b, c, d] = self.prefix;
            let size = u32::from_be_bytes([a, b, c, d]) as usize;
            if size > self.max_message {
                return Err(Fault::TooLarge {
                    size,
                    limit: self.max_message,
                });
            }
            self.declared = size;
            self.remaining = size;
        }
        Ok(())
    }

    /// The body has ended: whether it ended between messages.
    pub(crate) fn finish(&self) -> Result<(), Fault> {
        if self.have > 0 {
            Err(Fault::TruncatedPrefix { have: self.have })
        } else if self.remaining > 0 {
            Err(Fault::TruncatedMessage {
                missing: self.remaining,
            })
        } else {
            Ok(())
        }
    }
}

impl Fault {
    /// The refusal, in the contract's terms.
    pub(crate) fn to_error(&self) -> ServiceError {
        match self {
            Fault::TooLarge { size, limit } => ServiceError::invalid(
                "request",
                format!("is {size} bytes; the limit is {limit} bytes"),
            ),
            Fault::Flag(flag) => ServiceError::MalformedRequest(format!(
                "gRPC message flag {flag} (valid flags are 0 and 1)"
            )),
            Fault::CompressedWithoutEncoding => ServiceError::MalformedRequest(
                "gRPC message flagged compressed but no grpc-encoding was sent".to_owned(),
            ),
            Fault::TruncatedPrefix { have } => ServiceError::MalformedRequest(format!(
                "the request body ends inside a message prefix ({have} of 5 bytes)"
            )),
            Fault::TruncatedMessage { missing } => ServiceError::MalformedRequest(format!(
                "the request body ends {missing} bytes short of its message"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![flag];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Invariant: well-framed bodies pass whatever their chunking: split
    /// inside the prefix, inside the message, several messages per chunk.
    #[test]
    fn well_framed_bodies_pass_in_any_chunking() {
        let mut body = message(0, b"hello");
        body.extend(message(0, b""));
        body.extend(message(0, &[7; 300]));
        for chunk in [1, 2, 3, 5, 7, 64, body.len()] {
            let mut f = Framing::new(1024, false);
            for part in body.chunks(chunk) {
                f.feed(part).unwrap();
            }
            f.finish().unwrap();
        }
    }

    /// Invariant: `partial` counts the bytes of the incomplete message
    /// only, prefix included, so completed messages free their share.
    #[test]
    fn partial_counts_the_incomplete_message_only() {
        let mut f = Framing::new(1024, false);
        f.feed(&[0, 0, 0]).unwrap();
        assert_eq!(f.partial(), 3);
        f.feed(&[0, 10, 1, 2]).unwrap();
        assert_eq!(f.partial(), 7);
        f.feed(&[0; 8]).unwrap();
        assert_eq!(f.partial(), 0, "complete");
        f.feed(&message(0, b"abc")[..6]).unwrap();
        assert_eq!(f.partial(), 6);
    }

    /// Invariant: every framing fault is found, at the byte that shows it.
    #[test]
    fn every_framing_fault_is_found() {
        let mut f = Framing::new(1024, false);
        assert_eq!(f.feed(&message(2, b"x")), Err(Fault::Flag(2)));
        let mut f = Framing::new(1024, false);
        assert_eq!(
            f.feed(&[0xff]),
            Ok(()),
            "a lone flag byte is not yet a fault"
        );
        assert_eq!(f.feed(&[0; 4]), Err(Fault::Flag(0xff)));
        let mut f = Framing::new(1024, false);
        assert_eq!(
            f.feed(&message(1, b"x")),
            Err(Fault::CompressedWithoutEncoding)
        );
        let mut f = Framing::new(1024, true);
        assert_eq!(f.feed(&message(1, b"x")), Ok(()), "with grpc-encoding");
        let mut f = Framing::new(1024, false);
        assert_eq!(
            f.feed(&[0, 0, 0, 4, 1]),
            Err(Fault::TooLarge {
                size: 1025,
                limit: 1024
            })
        );
        let mut f = Framing::new(1024, false);
        f.feed(&[0, 0, 0]).unwrap();
        assert_eq!(f.finish(), Err(Fault::TruncatedPrefix { have: 3 }));
        let mut f = Framing::new(1024, false);
        f.feed(&message(0, b"hello")[..8]).unwrap();
        assert_eq!(f.finish(), Err(Fault::TruncatedMessage { missing: 2 }));
    }

    #[test]
    fn faults_are_invalid_argument() {
        for fault in [
            Fault::Flag(9),
            Fault::CompressedWithoutEncoding,
            Fault::TruncatedPrefix { have: 3 },
            Fault::TruncatedMessage { missing: 1 },
            Fault::TooLarge {
                size: 9000,
                limit: 4096,
            },
        ] {
            let status = fault.to_error().to_status();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{fault:?}");
        }
    }
}
