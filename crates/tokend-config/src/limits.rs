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

/// Largest request message accepted; tokend's requests are a few KiB.
pub const MAX_REQUEST_BYTES: usize = crate::ranges::REQUEST_MESSAGE_BYTES as usize;

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
    /// (bursts of the same size) while the server is contended
    /// ([`the server's `Load::contended``]); with spare capacity a
    /// connection may use all of it. It keeps one connection from taking
    /// the whole server when others want some.
    pub open_requests_per_second_per_peer: u32,
    /// Watch streams (WatchConnection and WatchConnections) open at once
    /// over all callers: with `watch_buffer_bytes`, what they may buffer.
    pub max_watch_streams: usize,
    /// Encoded bytes one watch stream may queue for a client that has not
    /// taken them yet.
    pub watch_buffer_bytes: usize,
    /// How long a watch stream's queue may stay full (its client reading
    /// nothing) before the stream is cut off with its last cursor.
    pub watch_stall_timeout: Duration,
    /// Installs one caller (an identity; in open mode, a client connection)
    /// may have running at once. An install runs in the engine until the
    /// provider answers, even after its caller gives up, and holds its
    /// caller's slot until then. Between 1 and [`MAX_INSTALLS_PER_CALLER`].
    pub max_installs_per_caller: usize,
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
            max_watch_streams: 1024,
            watch_buffer_bytes: 16 << 10,
            watch_stall_timeout: Duration::from_secs(30),
            max_installs_per_caller: DEFAULT_INSTALLS_PER_CALLER,
            idle_timeout: Duration::from_secs(300),
            max_connections_per_peer: 128,
            max_unauthenticated_pending_requests: 1024,
            max_unauthenticated_buffered_bytes: 256 << 10,
            max_unauthenticated_message_bytes: 4 << 10,
            enforce: true,
        }
    }
}

/// Installs one caller may have running, unless configured: enough for a
/// busy onboarding flow, few enough that abandoned installs to a provider
/// that never answers hold few sockets.
pub const DEFAULT_INSTALLS_PER_CALLER: usize = 16;

/// The highest `max_installs_per_caller` accepted
/// ([`crate::ranges::MAX_INSTALLS_PER_CALLER`]).
pub const MAX_INSTALLS_PER_CALLER: usize = crate::ranges::MAX_INSTALLS_PER_CALLER.max as usize;

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
    pub max_watch_streams: Option<usize>,
    pub watch_buffer_bytes: Option<usize>,
    pub watch_stall_timeout_ms: Option<u64>,
    pub max_installs_per_caller: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections_per_peer: Option<usize>,
    pub max_unauthenticated_pending_requests: Option<usize>,
    pub max_unauthenticated_buffered_bytes: Option<usize>,
    pub max_unauthenticated_message_bytes: Option<usize>,
}

impl LimitsSection {
    /// The limits, defaults filled in. A value outside its range
    /// ([`crate::ranges`]) is refused, every such key named.
    pub fn resolve(&self) -> Result<Limits, String> {
        use crate::ranges as r;
        let d = Limits::default();
        let mut problems = Vec::new();
        let mut check = |range: r::Range, v: Option<u64>| {
            range.check_opt(v).unwrap_or_else(|e| {
                problems.push(e);
                None
            })
        };
        let wide = |v: Option<usize>| v.map(|v| v as u64);
        let max_connections = check(r::MAX_CONNECTIONS, wide(self.max_connections));
        let streams = check(
            r::MAX_CONCURRENT_STREAMS,
            self.max_concurrent_streams.map(u64::from),
        );
        let pending = check(r::MAX_PENDING_REQUESTS, wide(self.max_pending_requests));
        let buffered = check(
            r::MAX_BUFFERED_REQUEST_BYTES,
            wide(self.max_buffered_request_bytes),
        );
        let body_ms = check(r::REQUEST_BODY_TIMEOUT_MS, self.request_body_timeout_ms);
        let handshake_ms = check(r::HANDSHAKE_TIMEOUT_MS, self.handshake_timeout_ms);
        let interval = check(r::KEEPALIVE_INTERVAL_SECS, self.keepalive_interval_secs);
        let timeout = check(r::KEEPALIVE_TIMEOUT_SECS, self.keepalive_timeout_secs);
        let headers = check(
            r::MAX_HEADER_LIST_SIZE,
            self.max_header_list_size.map(u64::from),
        );
        let watch = check(
            r::OPEN_WATCH_STREAMS_PER_PEER,
            wide(self.open_watch_streams_per_peer),
        );
        let rate = check(
            r::OPEN_REQUESTS_PER_SECOND_PER_PEER,
            self.open_requests_per_second_per_peer.map(u64::from),
        );
        let max_watch = check(r::MAX_WATCH_STREAMS, wide(self.max_watch_streams));
        let watch_buffer = check(r::WATCH_BUFFER_BYTES, wide(self.watch_buffer_bytes));
        let stall_ms = check(r::WATCH_STALL_TIMEOUT_MS, self.watch_stall_timeout_ms);
        let installs = check(
            r::MAX_INSTALLS_PER_CALLER,
            wide(self.max_installs_per_caller),
        );
        let idle_secs = check(r::IDLE_TIMEOUT_SECS, self.idle_timeout_secs);
        let per_peer = check(
            r::MAX_CONNECTIONS_PER_PEER,
            wide(self.max_connections_per_peer),
        );
        let unauth_pending = check(
            r::MAX_UNAUTHENTICATED_PENDING_REQUESTS,
            wide(self.max_unauthenticated_pending_requests),
        );
        let unauth_buffered = check(
            r::MAX_UNAUTHENTICATED_BUFFERED_BYTES,
            wide(self.max_unauthenticated_buffered_bytes),
        );
        let unauth_message = check(
            r::MAX_UNAUTHENTICATED_MESSAGE_BYTES,
            wide(self.max_unauthenticated_message_bytes),
        );
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        // The unauthenticated services' budget holds at least one message
        // of the largest size they accept.
        let unauth_budget =
            unauth_buffered.map_or(d.max_unauthenticated_buffered_bytes, |v| v as usize);
        let unauth_message =
            unauth_message.map_or(d.max_unauthenticated_message_bytes, |v| v as usize);
        if unauth_budget < unauth_message {
            return Err(format!(
                "limits.max_unauthenticated_buffered_bytes ({unauth_budget}) must be at least limits.max_unauthenticated_message_bytes ({unauth_message})"
            ));
        }
        // Every value is now within its range, which fits its type.
        let count = |v: Option<u64>, default: usize| {
            v.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        let small = |v: Option<u64>, default: u32| {
            v.map_or(default, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        Ok(Limits {
            max_connections: max_connections.map(|v| count(Some(v), 0)),
            max_concurrent_streams: small(streams, d.max_concurrent_streams),
            max_pending_requests: count(pending, d.max_pending_requests),
            max_buffered_request_bytes: count(buffered, d.max_buffered_request_bytes),
            request_body_timeout: body_ms.map_or(d.request_body_timeout, Duration::from_millis),
            handshake_timeout: handshake_ms.map_or(d.handshake_timeout, Duration::from_millis),
            keepalive_interval: interval.map_or(d.keepalive_interval, Duration::from_secs),
            keepalive_timeout: timeout.map_or(d.keepalive_timeout, Duration::from_secs),
            max_header_list_size: small(headers, d.max_header_list_size),
            open_watch_streams_per_peer: count(watch, d.open_watch_streams_per_peer),
            open_requests_per_second_per_peer: small(rate, d.open_requests_per_second_per_peer),
            max_watch_streams: count(max_watch, d.max_watch_streams),
            watch_buffer_bytes: count(watch_buffer, d.watch_buffer_bytes),
            watch_stall_timeout: stall_ms.map_or(d.watch_stall_timeout, Duration::from_millis),
            max_installs_per_caller: count(installs, d.max_installs_per_caller),
            idle_timeout: idle_secs.map_or(d.idle_timeout, Duration::from_secs),
            max_connections_per_peer: count(per_peer, d.max_connections_per_peer),
            max_unauthenticated_pending_requests: count(
                unauth_pending,
                d.max_unauthenticated_pending_requests,
            ),
            max_unauthenticated_buffered_bytes: unauth_budget,
            max_unauthenticated_message_bytes: unauth_message,
            enforce: true,
        })
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
    fn the_section_fills_in_defaults_and_refuses_values_out_of_range() {
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
        assert_eq!(
            err,
            "limits.max_concurrent_streams = 0 is out of range: allowed 1 to 10000"
        );
    }

    /// Invariant: the watch-stream keys have a default and a range, and a
    /// value outside it is refused with the key named.
    #[test]
    fn the_watch_stream_keys_are_range_checked() {
        let d = Limits::default();
        assert_eq!(d.max_watch_streams, 1024);
        assert_eq!(d.watch_buffer_bytes, 16 << 10);
        assert_eq!(d.watch_stall_timeout, Duration::from_secs(30));
        let set = LimitsSection {
            max_watch_streams: Some(1),
            watch_buffer_bytes: Some(16 << 20),
            watch_stall_timeout_ms: Some(100),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(set.max_watch_streams, 1);
        assert_eq!(set.watch_buffer_bytes, 16 << 20);
        assert_eq!(set.watch_stall_timeout, Duration::from_millis(100));
        for (section, key) in [
            (
                LimitsSection {
                    max_watch_streams: Some(0),
                    ..Default::default()
                },
                "limits.max_watch_streams = 0",
            ),
            (
                LimitsSection {
                    max_watch_streams: Some(1_000_001),
                    ..Default::default()
                },
                "limits.max_watch_streams = 1000001",
            ),
            (
                LimitsSection {
                    watch_buffer_bytes: Some(4095),
                    ..Default::default()
                },
                "limits.watch_buffer_bytes = 4095",
            ),
            (
                LimitsSection {
                    watch_buffer_bytes: Some((16 << 20) + 1),
                    ..Default::default()
                },
                "limits.watch_buffer_bytes = 16777217",
            ),
            (
                LimitsSection {
                    watch_stall_timeout_ms: Some(99),
                    ..Default::default()
                },
                "limits.watch_stall_timeout_ms = 99",
            ),
            (
                LimitsSection {
                    watch_stall_timeout_ms: Some(u64::MAX),
                    ..Default::default()
                },
                "limits.watch_stall_timeout_ms = 18446744073709551615",
            ),
        ] {
            let err = section.resolve().unwrap_err();
            assert!(err.starts_with(key), "{err}");
            assert!(err.contains("out of range"), "{err}");
        }
    }

    /// Issue 24, install cap. Invariant: the key has one default and a
    /// documented range; a value outside it is refused with the key named.
    #[test]
    fn the_install_cap_has_a_default_and_a_range() {
        let resolved = |n| {
            LimitsSection {
                max_installs_per_caller: n,
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(
            resolved(None).unwrap().max_installs_per_caller,
            DEFAULT_INSTALLS_PER_CALLER
        );
        assert_eq!(resolved(Some(1)).unwrap().max_installs_per_caller, 1);
        assert_eq!(
            resolved(Some(MAX_INSTALLS_PER_CALLER))
                .unwrap()
                .max_installs_per_caller,
            MAX_INSTALLS_PER_CALLER
        );
        for bad in [0, MAX_INSTALLS_PER_CALLER + 1] {
            let err = resolved(Some(bad)).unwrap_err();
            assert!(err.contains("limits.max_installs_per_caller"), "{err}");
        }
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
        use crate::ranges as r;
        for range in [
            r::IDLE_TIMEOUT_SECS,
            r::MAX_CONNECTIONS_PER_PEER,
            r::MAX_UNAUTHENTICATED_PENDING_REQUESTS,
            r::MAX_UNAUTHENTICATED_BUFFERED_BYTES,
            r::MAX_UNAUTHENTICATED_MESSAGE_BYTES,
        ] {
            let key = range.key.trim_start_matches("limits.");
            for bad in [range.min - 1, range.max + 1] {
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
