//! Transport bounds: how many connections, streams, bytes and seconds any
//! caller may hold, with every default in this one place.
//!
//! Together they bound the server's memory whatever callers send (see
//! SECURITY.md, "Attacks and the limits that stop them"):
//! buffered request bytes ≤ `max_buffered_request_bytes`, requests being
//! read or handled ≤ `max_pending_requests`, connections ≤
//! `max_connections`, and a stalled request or handshake is cut after its
//! timeout.
//!
//! The services that take no credentials (health, reflection) have their
//! own, smaller, pending cap, byte budget and message cap
//! (`max_unauthenticated_*`), on top of those; a connection with no open
//! stream is closed after `idle_timeout`.

use std::time::Duration;

use serde::Deserialize;

/// The transport bounds the server enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections. `None`: derived from the file-descriptor
    /// limit at start ([`Limits::connections_for`]).
    pub max_connections: Option<usize>,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// Requests being received or handled at once, over all connections.
    /// Watch streams count only until their first reply.
    pub max_pending_requests: usize,
    /// Bytes of incomplete request bodies held at once, over all requests.
    pub max_buffered_request_bytes: usize,
    /// Time from a request's headers to the end of its body.
    pub request_body_timeout: Duration,
    /// Time for a new connection to send the HTTP/2 preface (or the TLS
    /// handshake to finish).
    pub handshake_timeout: Duration,
    /// HTTP/2 PINGs on idle connections, and how long to wait for the ack.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Largest header block a request may send.
    pub max_header_list_size: u32,
    /// Open mode (no identities): watch streams one client connection may
    /// hold.
    pub open_watch_streams_per_peer: usize,
    /// Open mode: requests per second one client connection may make
    /// (bursts of the same size). A backend multiplexes all its calls over
    /// one connection, so this is high: it keeps one connection from taking
    /// the whole server (~15-20k cached GetToken/s on 2 cores).
    pub open_requests_per_second_per_peer: u32,
    /// A connection with no open stream for this long is closed. HTTP/2
    /// PINGs are not activity.
    pub idle_timeout: Duration,
    /// Connections one non-loopback peer (an IPv4 address, an IPv6 /64)
    /// may hold. Loopback peers cannot be told apart and are not capped.
    pub max_connections_per_peer: usize,
    /// Requests being received or handled at once by the services that
    /// take no credentials (health, reflection), apart from
    /// `max_pending_requests`.
    pub max_unauthenticated_pending_requests: usize,
    /// Bytes of incomplete request bodies those services hold at once,
    /// apart from `max_buffered_request_bytes`.
    pub max_unauthenticated_buffered_bytes: usize,
    /// Largest request message those services accept.
    pub max_unauthenticated_message_bytes: usize,
    /// Whether the bounds above are enforced at all. Only benchmarks that
    /// measure what the bounds cost turn this off; the file cannot.
    pub enforce: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_concurrent_streams: 100,
            max_pending_requests: 16_384,
            max_buffered_request_bytes: 32 << 20,
            request_body_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_header_list_size: 16 << 10,
            open_watch_streams_per_peer: 64,
            open_requests_per_second_per_peer: 5000,
            idle_timeout: Duration::from_secs(300),
            max_connections_per_peer: 128,
            max_unauthenticated_pending_requests: 1024,
            max_unauthenticated_buffered_bytes: 256 << 10,
            max_unauthenticated_message_bytes: 4 << 10,
            enforce: true,
        }
    }
}

/// Connections allowed when nothing is configured and the descriptor limit
/// is high.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Descriptors kept for everything but client connections: the store,
/// provider sockets, the audit log, the listener.
pub const RESERVED_FDS: usize = 128;

impl Limits {
    /// No bounds: what the server did before they existed. For benchmarks.
    pub fn unenforced() -> Self {
        Limits {
            enforce: false,
            ..Limits::default()
        }
    }

    /// The connection cap for a process allowed `fd_limit` descriptors:
    /// the configured one, else [`DEFAULT_MAX_CONNECTIONS`] lowered so the
    /// connections leave [`RESERVED_FDS`] free. A configured cap above that
    /// is kept (the operator decided) and accept backs off on `EMFILE`.
    pub fn connections_for(&self, fd_limit: Option<u64>) -> usize {
        if let Some(n) = self.max_connections {
            return n.max(1);
        }
        let room = fd_limit
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
            .map_or(DEFAULT_MAX_CONNECTIONS, |l| l.saturating_sub(RESERVED_FDS));
        DEFAULT_MAX_CONNECTIONS.min(room).max(16)
    }
}

/// The soft limit on open file descriptors, if it can be read.
pub fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `[limits]` as written; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_connections: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
    pub max_pending_requests: Option<usize>,
    pub max_buffered_request_bytes: Option<usize>,
    pub request_body_timeout_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub keepalive_interval_secs: Option<u64>,
    pub keepalive_timeout_secs: Option<u64>,
    pub max_header_list_size: Option<u32>,
    pub open_watch_streams_per_peer: Option<usize>,
    pub open_requests_per_second_per_peer: Option<u32>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections_per_peer: Option<usize>,
    pub max_unauthenticated_pending_requests: Option<usize>,
    pub max_unauthenticated_buffered_bytes: Option<usize>,
    pub max_unauthenticated_message_bytes: Option<usize>,
}

/// The accepted range of each key added for issue 24 (items 3 and 4):
/// `(key, min, max)`. Outside it, `check-config` and `serve` refuse the
/// file, naming the key.
pub const TRANSPORT_RANGES: [(&str, u64, u64); 5] = [
    ("idle_timeout_secs", 1, 86_400),
    ("max_connections_per_peer", 1, 1 << 20),
    ("max_unauthenticated_pending_requests", 1, 1 << 20),
    ("max_unauthenticated_buffered_bytes", 4 << 10, 1 << 30),
    (
        "max_unauthenticated_message_bytes",
        256,
        crate::MAX_REQUEST_BYTES as u64,
    ),
];

/// `v` for `key` if it lies in its [`TRANSPORT_RANGES`] entry.
fn ranged<T: Copy + TryInto<u64> + std::fmt::Display>(
    key: &str,
    v: Option<T>,
    default: T,
) -> Result<T, String> {
    let Some(v) = v else {
        return Ok(default);
    };
    let (_, min, max) = TRANSPORT_RANGES
        .iter()
        .find(|(k, ..)| *k == key)
        .copied()
        .unwrap_or((key, 0, u64::MAX));
    match v.try_into() {
        Ok(n) if (min..=max).contains(&n) => Ok(v),
        _ => Err(format!(
            "limits.{key} = {v} is out of range: it must be between {min} and {max}"
        )),
    }
}

impl LimitsSection {
    /// The limits, defaults filled in. Zero is refused where it would stop
    /// the server from serving anything.
    pub fn resolve(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("limits.{name} must be positive"))
            } else {
                Ok(v)
            }
        };
        let ms = |name: &str, v: Option<u64>, default: Duration| {
            v.map_or(Ok(default), |v| {
                positive(name, v).map(Duration::from_millis)
            })
        };
        let secs = |name: &str, v: Option<u64>, default: Duration| {
            v.map_or(Ok(default), |v| positive(name, v).map(Duration::from_secs))
        };
        let count = |name: &str, v: Option<usize>, default: usize| {
            v.map_or(Ok(default), |v| positive(name, v as u64).map(|_| v))
        };
        Ok(Limits {
            max_connections: self
                .max_connections
                .map(|v| count("max_connections", Some(v), v))
                .transpose()?,
            max_concurrent_streams: count(
                "max_concurrent_streams",
                self.max_concurrent_streams.map(|v| v as usize),
                d.max_concurrent_streams as usize,
            )? as u32,
            max_pending_requests: count(
                "max_pending_requests",
                self.max_pending_requests,
                d.max_pending_requests,
            )?,
            max_buffered_request_bytes: count(
                "max_buffered_request_bytes",
                self.max_buffered_request_bytes,
                d.max_buffered_request_bytes,
            )?
            .max(crate::MAX_REQUEST_BYTES),
            request_body_timeout: ms(
                "request_body_timeout_ms",
                self.request_body_timeout_ms,
                d.request_body_timeout,
            )?,
            handshake_timeout: ms(
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                d.handshake_timeout,
            )?,
            keepalive_interval: secs(
                "keepalive_interval_secs",
                self.keepalive_interval_secs,
                d.keepalive_interval,
            )?,
            keepalive_timeout: secs(
                "keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                d.keepalive_timeout,
            )?,
            max_header_list_size: count(
                "max_header_list_size",
                self.max_header_list_size.map(|v| v as usize),
                d.max_header_list_size as usize,
            )? as u32,
            open_watch_streams_per_peer: count(
                "open_watch_streams_per_peer",
                self.open_watch_streams_per_peer,
                d.open_watch_streams_per_peer,
            )?,
            open_requests_per_second_per_peer: count(
                "open_requests_per_second_per_peer",
                self.open_requests_per_second_per_peer.map(|v| v as usize),
                d.open_requests_per_second_per_peer as usize,
            )? as u32,
            idle_timeout: Duration::from_secs(ranged(
                "idle_timeout_secs",
                self.idle_timeout_secs,
                d.idle_timeout.as_secs(),
            )?),
            max_connections_per_peer: ranged(
                "max_connections_per_peer",
                self.max_connections_per_peer,
                d.max_connections_per_peer,
            )?,
            max_unauthenticated_pending_requests: ranged(
                "max_unauthenticated_pending_requests",
                self.max_unauthenticated_pending_requests,
                d.max_unauthenticated_pending_requests,
            )?,
            max_unauthenticated_buffered_bytes: self.unauthenticated_budget()?,
            max_unauthenticated_message_bytes: ranged(
                "max_unauthenticated_message_bytes",
                self.max_unauthenticated_message_bytes,
                d.max_unauthenticated_message_bytes,
            )?,
            enforce: true,
        })
    }

    /// The unauthenticated services' byte budget: in range, and room for
    /// at least one message of the largest size they accept.
    fn unauthenticated_budget(&self) -> Result<usize, String> {
        let d = Limits::default();
        let budget = ranged(
            "max_unauthenticated_buffered_bytes",
            self.max_unauthenticated_buffered_bytes,
            d.max_unauthenticated_buffered_bytes,
        )?;
        let message = self
            .max_unauthenticated_message_bytes
            .unwrap_or(d.max_unauthenticated_message_bytes);
        if budget < message {
            return Err(format!(
                "limits.max_unauthenticated_buffered_bytes ({budget}) must be at least limits.max_unauthenticated_message_bytes ({message})"
            ));
        }
        Ok(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_everything_else() {
        let limits = Limits::default();
        assert_eq!(limits.connections_for(None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            limits.connections_for(Some(1 << 20)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(limits.connections_for(Some(1024)), 1024 - RESERVED_FDS);
        assert_eq!(limits.connections_for(Some(64)), 16);
        let configured = Limits {
            max_connections: Some(5000),
            ..Limits::default()
        };
        assert_eq!(configured.connections_for(Some(1024)), 5000);
    }

    #[test]
    fn the_section_fills_in_defaults_and_refuses_zero() {
        let limits = LimitsSection::default().resolve().unwrap();
        assert_eq!(limits, Limits::default());
        let set = LimitsSection {
            request_body_timeout_ms: Some(500),
            max_concurrent_streams: Some(8),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(set.request_body_timeout, Duration::from_millis(500));
        assert_eq!(set.max_concurrent_streams, 8);
        let err = LimitsSection {
            max_concurrent_streams: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(err, "limits.max_concurrent_streams must be positive");
    }

    /// Issue 24, items 3 and 4. Invariant: the new keys have defaults, take
    /// values in their documented range, and refuse others naming the key.
    #[test]
    fn transport_keys_are_refused_out_of_range_by_name() {
        let set = LimitsSection {
            idle_timeout_secs: Some(30),
            max_connections_per_peer: Some(8),
            max_unauthenticated_pending_requests: Some(16),
            max_unauthenticated_buffered_bytes: Some(65536),
            max_unauthenticated_message_bytes: Some(1024),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(set.idle_timeout, Duration::from_secs(30));
        assert_eq!(set.max_connections_per_peer, 8);
        assert_eq!(set.max_unauthenticated_pending_requests, 16);
        assert_eq!(set.max_unauthenticated_buffered_bytes, 65536);
        assert_eq!(set.max_unauthenticated_message_bytes, 1024);
        let refused = |section: LimitsSection, key: &str| {
            let err = section.resolve().unwrap_err();
            assert!(err.contains(&format!("limits.{key}")), "{err}");
        };
        for (key, min, max) in TRANSPORT_RANGES {
            for bad in [min - 1, max + 1] {
                let mut s = LimitsSection::default();
                let v = Some(bad as usize);
                match key {
                    "idle_timeout_secs" => s.idle_timeout_secs = Some(bad),
                    "max_connections_per_peer" => s.max_connections_per_peer = v,
                    "max_unauthenticated_pending_requests" => {
                        s.max_unauthenticated_pending_requests = v
                    }
                    "max_unauthenticated_buffered_bytes" => {
                        s.max_unauthenticated_buffered_bytes = v
                    }
                    "max_unauthenticated_message_bytes" => s.max_unauthenticated_message_bytes = v,
                    other => panic!("untested key {other}"),
                }
                refused(s, key);
            }
        }
        refused(
            LimitsSection {
                max_unauthenticated_buffered_bytes: Some(8192),
                max_unauthenticated_message_bytes: Some(16384),
                ..Default::default()
            },
            "max_unauthenticated_buffered_bytes",
        );
    }
}
