//! The allowed range of every numeric key of the config file, in one
//! table. A value outside its range is refused, with the key, the value
//! and the range named, by `tokend check-config` and `tokend serve` alike:
//! both go through the same resolvers, which check here.
//!
//! Adding a numeric key takes a `pub const` here, listed in [`ALL`], and
//! one `check`/`check_opt` where the key is resolved. The tests fail until
//! both are there: `every_numeric_key_of_the_schema_has_a_range` reads the
//! section structs, and `every_numeric_key_is_refused_outside_its_range_and_accepted_inside`
//! writes each key of [`ALL`] into a file and asks `FileConfig::problems`.

use std::fmt::Display;

/// A numeric key's inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The key as written: `limits.keepalive_interval_secs`, or
    /// `providers.*.rotation_grace_secs` for a key of every table of a
    /// kind (the table's name is in the message's prefix).
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
}

impl Range {
    pub const fn new(key: &'static str, min: u64, max: u64) -> Self {
        Range { key, min, max }
    }

    /// How the key is named in a message: in full, or after the `*.`
    /// when the caller's prefix names the table (`provider hubspot: ...`).
    pub fn name(&self) -> &'static str {
        match self.key.rfind("*.") {
            Some(i) => &self.key[i + 2..],
            None => self.key,
        }
    }

    /// `value`, or why it is refused.
    pub fn check<T: Copy + Display + TryInto<u64>>(&self, value: T) -> Result<T, String> {
        match value.try_into() {
            Ok(v) if (self.min..=self.max).contains(&v) => Ok(value),
            _ => Err(format!(
                "{} = {value} is out of range: allowed {} to {}",
                self.name(),
                self.min,
                self.max
            )),
        }
    }

    /// [`Range::check`] for a key that may be absent.
    pub fn check_opt<T: Copy + Display + TryInto<u64>>(
        &self,
        value: Option<T>,
    ) -> Result<Option<T>, String> {
        value.map(|v| self.check(v)).transpose()
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

// Top level.
pub const REFRESH_CONCURRENCY: Range = Range::new("refresh_concurrency", 1, 1024);
/// Below 1,000 the cache would re-read the store on almost every call;
/// 100 million is ~250 GB of records.
pub const CACHE_CAPACITY: Range = Range::new("cache_capacity", 1_000, 100_000_000);
/// Below 64 KiB a file would hold a handful of lines.
pub const AUDIT_MAX_BYTES: Range = Range::new("audit_max_bytes", 64 * KIB, 64 * GIB);
/// Each rotation renames every kept file: 2^64 of them never ends.
pub const AUDIT_KEEP: Range = Range::new("audit_keep", 0, 1000);

// [http]: calls to token endpoints.
pub const HTTP_CONNECT_TIMEOUT_SECS: Range = Range::new("http.connect_timeout_secs", 1, 5 * MINUTE);
pub const HTTP_REQUEST_TIMEOUT_SECS: Range =
    Range::new("http.request_timeout_secs", 1, 10 * MINUTE);
/// A token answer cut short is a lost grant when the provider rotated the
/// refresh token: the floor holds any real answer (Microsoft's, with an
/// `id_token`, reach several KiB).
pub const HTTP_MAX_RESPONSE_BYTES: Range =
    Range::new("http.max_response_bytes", 16 * KIB, 16 * MIB);

// [limits]: the transport bounds (limits.rs).
/// The largest request message accepted (`limits::MAX_REQUEST_BYTES`):
/// tokend's requests are a few KiB.
pub const REQUEST_MESSAGE_BYTES: u64 = 64 * KIB;
pub const MAX_CONNECTIONS: Range = Range::new("limits.max_connections", 1, 1 << 20);
pub const MAX_CONCURRENT_STREAMS: Range = Range::new("limits.max_concurrent_streams", 1, 10_000);
pub const MAX_PENDING_REQUESTS: Range = Range::new("limits.max_pending_requests", 1, 1 << 20);
/// At least one whole request (`MAX_REQUEST_BYTES`).
pub const MAX_BUFFERED_REQUEST_BYTES: Range = Range::new(
    "limits.max_buffered_request_bytes",
    REQUEST_MESSAGE_BYTES,
    16 * GIB,
);
pub const REQUEST_BODY_TIMEOUT_MS: Range =
    Range::new("limits.request_body_timeout_ms", 100, HOUR * 1000);
pub const HANDSHAKE_TIMEOUT_MS: Range =
    Range::new("limits.handshake_timeout_ms", 100, 10 * MINUTE * 1000);
/// hyper schedules the next PING at `now + interval`: 2^64 - 1 seconds
/// overflows and panics on every connection.
pub const KEEPALIVE_INTERVAL_SECS: Range = Range::new("limits.keepalive_interval_secs", 1, DAY);
pub const KEEPALIVE_TIMEOUT_SECS: Range = Range::new("limits.keepalive_timeout_secs", 1, HOUR);
/// gRPC's own headers (path, content type, deadline, credentials, trace
/// context) need about 1 KiB.
pub const MAX_HEADER_LIST_SIZE: Range = Range::new("limits.max_header_list_size", 4 * KIB, MIB);
pub const OPEN_WATCH_STREAMS_PER_PEER: Range =
    Range::new("limits.open_watch_streams_per_peer", 1, 100_000);
pub const OPEN_REQUESTS_PER_SECOND_PER_PEER: Range =
    Range::new("limits.open_requests_per_second_per_peer", 1, 100_000_000);
/// Watch streams of both RPCs open at once, over all callers.
pub const MAX_WATCH_STREAMS: Range = Range::new("limits.max_watch_streams", 1, 1_000_000);
/// Encoded bytes one watch stream may queue for its client.
pub const WATCH_BUFFER_BYTES: Range = Range::new("limits.watch_buffer_bytes", 4 * KIB, 16 * MIB);
/// How long a full watch outbox is tolerated before the stream is cut.
pub const WATCH_STALL_TIMEOUT_MS: Range =
    Range::new("limits.watch_stall_timeout_ms", 100, HOUR * 1000);
/// Closes a connection with no open stream (PINGs are not activity).
pub const IDLE_TIMEOUT_SECS: Range = Range::new("limits.idle_timeout_secs", 1, DAY);
/// Connections one non-loopback peer (IPv4 address, IPv6 /64) may hold.
pub const MAX_CONNECTIONS_PER_PEER: Range =
    Range::new("limits.max_connections_per_peer", 1, 1 << 20);
/// Health and reflection requests in progress, apart from the rest.
pub const MAX_UNAUTHENTICATED_PENDING_REQUESTS: Range =
    Range::new("limits.max_unauthenticated_pending_requests", 1, 1 << 20);
/// Bytes of incomplete health and reflection messages held at once.
pub const MAX_UNAUTHENTICATED_BUFFERED_BYTES: Range =
    Range::new("limits.max_unauthenticated_buffered_bytes", 4 * KIB, GIB);
/// The largest health or reflection message (a reflection request is a
/// few hundred bytes).
pub const MAX_UNAUTHENTICATED_MESSAGE_BYTES: Range = Range::new(
    "limits.max_unauthenticated_message_bytes",
    256,
    REQUEST_MESSAGE_BYTES,
);
/// Installs one caller may have running at once.
pub const MAX_INSTALLS_PER_CALLER: Range = Range::new("limits.max_installs_per_caller", 1, 10_000);

// [events]: the event log's retention (`crate::feed`).
pub const EVENTS_RETENTION_SECS: Range = Range::new("events.retention_secs", MINUTE, 3650 * DAY);
pub const EVENTS_MAX_EVENTS: Range = Range::new("events.max_events", 1, 1_000_000_000);

// [store]: the PostgreSQL pool and the refresh lease.
pub const STORE_POOL_SIZE: Range = Range::new("store.pool_size", 1, 1000);
pub const STORE_STATEMENT_TIMEOUT_MS: Range =
    Range::new("store.statement_timeout_ms", 100, HOUR * 1000);
pub const STORE_CONNECT_TIMEOUT_MS: Range =
    Range::new("store.connect_timeout_ms", 100, 5 * MINUTE * 1000);
pub const STORE_REFRESH_LEASE_SECS: Range = Range::new("store.refresh_lease_secs", 1, HOUR);
/// Below a second, a busy network's retransmissions would drop healthy
/// connections.
pub const STORE_TCP_USER_TIMEOUT_MS: Range =
    Range::new("store.tcp_user_timeout_ms", 1000, 10 * MINUTE * 1000);
pub const STORE_KEEPALIVE_IDLE_SECS: Range = Range::new("store.keepalive_idle_secs", 1, 2 * HOUR);
pub const STORE_POLL_INTERVAL_MS: Range = Range::new("store.poll_interval_ms", 100, MINUTE * 1000);

// [[identities]].
pub const IDENTITY_REQUESTS_PER_SECOND: Range =
    Range::new("identities.*.requests_per_second", 1, 100_000_000);
/// 0: the identity may not watch.
pub const IDENTITY_MAX_WATCH_STREAMS: Range =
    Range::new("identities.*.max_watch_streams", 0, 100_000);

// [[webhooks]].
pub const WEBHOOK_TIMEOUT_SECS: Range = Range::new("webhooks.*.timeout_secs", 1, 5 * MINUTE);
pub const WEBHOOK_FAILING_AFTER_SECS: Range =
    Range::new("webhooks.*.failing_after_secs", 1, 30 * DAY);
pub const WEBHOOK_RETRY_INITIAL_MS: Range =
    Range::new("webhooks.*.retry_initial_ms", 1, HOUR * 1000);
pub const WEBHOOK_RETRY_MAX_SECS: Range = Range::new("webhooks.*.retry_max_secs", 1, DAY);

// [providers.NAME].
/// At most what an answer's own `expires_in` may say (400 days).
pub const PROVIDER_DEFAULT_LIFETIME_SECS: Range =
    Range::new("providers.*.default_lifetime_secs", 1, 400 * DAY);
pub const PROVIDER_REFRESH_BUFFER_SECS: Range =
    Range::new("providers.*.refresh_buffer_secs", 0, 7 * DAY);
pub const PROVIDER_KEEPALIVE_DAYS: Range = Range::new("providers.*.keepalive_days", 1, 3650);
pub const PROVIDER_ROTATION_GRACE_SECS: Range =
    Range::new("providers.*.rotation_grace_secs", 0, 30 * DAY);
/// 0: no floor between blind `ForceRefresh` calls.
pub const PROVIDER_MIN_REFRESH_INTERVAL_SECS: Range =
    Range::new("providers.*.min_refresh_interval_secs", 0, DAY);

/// Every numeric key of the config file.
pub const ALL: &[Range] = &[
    REFRESH_CONCURRENCY,
    CACHE_CAPACITY,
    AUDIT_MAX_BYTES,
    AUDIT_KEEP,
    HTTP_CONNECT_TIMEOUT_SECS,
    HTTP_REQUEST_TIMEOUT_SECS,
    HTTP_MAX_RESPONSE_BYTES,
    MAX_CONNECTIONS,
    MAX_CONCURRENT_STREAMS,
    MAX_PENDING_REQUESTS,
    MAX_BUFFERED_REQUEST_BYTES,
    REQUEST_BODY_TIMEOUT_MS,
    HANDSHAKE_TIMEOUT_MS,
    KEEPALIVE_INTERVAL_SECS,
    KEEPALIVE_TIMEOUT_SECS,
    MAX_HEADER_LIST_SIZE,
    OPEN_WATCH_STREAMS_PER_PEER,
    OPEN_REQUESTS_PER_SECOND_PER_PEER,
    MAX_WATCH_STREAMS,
    WATCH_BUFFER_BYTES,
    WATCH_STALL_TIMEOUT_MS,
    MAX_INSTALLS_PER_CALLER,
    IDLE_TIMEOUT_SECS,
    MAX_CONNECTIONS_PER_PEER,
    MAX_UNAUTHENTICATED_PENDING_REQUESTS,
    MAX_UNAUTHENTICATED_BUFFERED_BYTES,
    MAX_UNAUTHENTICATED_MESSAGE_BYTES,
    EVENTS_RETENTION_SECS,
    EVENTS_MAX_EVENTS,
    STORE_POOL_SIZE,
    STORE_STATEMENT_TIMEOUT_MS,
    STORE_CONNECT_TIMEOUT_MS,
    STORE_REFRESH_LEASE_SECS,
    STORE_TCP_USER_TIMEOUT_MS,
    STORE_KEEPALIVE_IDLE_SECS,
    STORE_POLL_INTERVAL_MS,
    IDENTITY_REQUESTS_PER_SECOND,
    IDENTITY_MAX_WATCH_STREAMS,
    WEBHOOK_TIMEOUT_SECS,
    WEBHOOK_FAILING_AFTER_SECS,
    WEBHOOK_RETRY_INITIAL_MS,
    WEBHOOK_RETRY_MAX_SECS,
    PROVIDER_DEFAULT_LIFETIME_SECS,
    PROVIDER_REFRESH_BUFFER_SECS,
    PROVIDER_KEEPALIVE_DAYS,
    PROVIDER_ROTATION_GRACE_SECS,
    PROVIDER_MIN_REFRESH_INTERVAL_SECS,
];
