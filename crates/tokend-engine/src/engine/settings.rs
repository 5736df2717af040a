//! The engine's tunables, with production defaults in one place.

use std::time::Duration;

pub use tokend_config::DEFAULT_CACHE_CAPACITY;

/// Tunables of the engine; defaults suit production.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// How long a refresh lease lasts unless renewed; the refresh holding
    /// it renews it every third of this while it runs (`lease.rs`), and a
    /// dead holder's is taken over this long after its last renewal.
    pub lease_ttl: Duration,
    /// First retry delay after a transient failure.
    pub backoff_min: Duration,
    /// Longest retry delay after repeated transient failures.
    pub backoff_max: Duration,
    /// Least delay before retrying after the provider rejected tokend's
    /// client credentials: retrying fast cannot fix a configuration.
    pub misconfigured_retry: Duration,
    /// Cap on a provider's `Retry-After`, so a bogus value cannot park a
    /// connection for days.
    pub max_retry_after: Duration,
    /// Background refreshes running at once, to spare providers a burst
    /// after a restart.
    pub background_concurrency: usize,
    /// Whether the background refresher runs at all (tests of the on-demand
    /// path turn it off).
    pub background_refresh: bool,
    /// This node's name in refresh-lease holders. Leases held by an earlier
    /// run of the same node are released at start. Replicas sharing a store
    /// need distinct names.
    pub node: String,
    /// First delay before retrying after the store failed: a refresh's
    /// lease, read or write, or the write of a grant the store refused
    /// (kept pending meanwhile). Doubles, jittered, up to
    /// `pending_retry_max`; apart from the provider's backoff.
    pub pending_retry_min: Duration,
    /// Longest delay between two such retries (1 s), so a connection is
    /// served again, and a pending grant written, within about a second of
    /// the store's return.
    pub pending_retry_max: Duration,
    /// How long shutdown waits for refreshes and unpersisted grants. The
    /// server raises it to [`shutdown_grace_for`] its provider request
    /// timeout, so a refresh at the provider is never cut short.
    pub shutdown_grace: Duration,
    /// Connections kept decrypted in memory at most; others are read from
    /// the store on use (`slot.rs`).
    pub cache_capacity: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            misconfigured_retry: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(900),
            background_concurrency: 8,
            background_refresh: true,
            node: "local".into(),
            pending_retry_min: Duration::from_millis(100),
            pending_retry_max: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}
