//! The refresh engine: serves tokens from memory, refreshes each connection
//! at most once at a time, persists every grant before anyone sees it, and
//! never drops one the store has not accepted.
//!
//! One concern per file: `slot` (per-connection memory), `flight` (the
//! singleflight), `refresh` (intent → provider → write-ahead → commit),
//! `persist` (durable before visible, pending grants), `keeper` (a pending
//! grant's lease and write retries), `backoff` (retry
//! delays and the per-provider breaker), `refresher` (the background
//! refresher and start-up), `install` (code exchange and import).

mod backoff;
mod coherence;
mod delete;
mod failure;
mod flight;
mod install;
mod keeper;
mod lease;
mod persist;
mod recent_installs;
mod refresh;
mod refresher;
mod settings;
mod slot;
#[cfg(test)]
mod tests;
mod wall_clock;
pub use wall_clock::anchor_clock;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokend_core::{
    Clock, Connection, ConnectionId, LastError, ProviderName, ReconnectCause, Status, Timestamp,
};
use tokend_provider::{ProviderConfig, TokenEndpoint};
use tokend_store::{ListQuery, Store};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use install::{InstallGrant, InstallInput, InstallOutcome};
pub use lease::shutdown_grace_for;

use crate::{
    error::{EngineError, Failure},
    hub::{Event, EventKind, Subscription, WatchHub},
    scheduler::Scheduler,
};
use backoff::Breaker;
use flight::Ended;
use slot::{Slot, Slots};

pub use settings::{DEFAULT_CACHE_CAPACITY, EngineSettings};

impl From<Ended> for Failure {
    fn from(e: Ended) -> Self {
        match e {
            Ended::Panicked => Failure::Panicked,
            Ended::Cancelled => Failure::ShuttingDown,
        }
    }
}

/// What a `ForceRefresh` caller says was rejected upstream.
pub enum Rejected {
    AccessToken(String),
    Version(u64),
    Unspecified,
}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::AccessToken(_) => f.write_str("AccessToken([REDACTED])"),
            Rejected::Version(v) => write!(f, "Version({v})"),
            Rejected::Unspecified => f.write_str("Unspecified"),
        }
    }
}

/// Counters of what the engine did that operators and the chaos suite ask
/// about. Monotonic for the life of the process.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Connections marked RECONNECT_REQUIRED because an in-doubt refresh's
    /// token was refused (`ROTATION_LOST`).
    pub rotation_lost: std::sync::atomic::AtomicU64,
    /// Connections whose previous refresh token saved them.
    pub recovered_with_previous: std::sync::atomic::AtomicU64,
    /// Refresh intents of an earlier run found at start.
    pub in_doubt_at_start: std::sync::atomic::AtomicU64,
    /// Prompt retries of refreshes left in doubt (no usable answer).
    pub in_doubt_retries: std::sync::atomic::AtomicU64,
    /// Leases this process found taken over (or released) while its
    /// refresh still ran under them: the refresh's write is fenced.
    pub leases_lost: std::sync::atomic::AtomicU64,
    /// Expired leases of other processes (dead replicas) this process
    /// released and took the refresh over from.
    pub leases_taken_over: std::sync::atomic::AtomicU64,
}

/// The broker's state: the store, the providers, and per-connection memory.
/// Private fields: the gRPC layer goes through the methods below.
pub struct Engine {
    /// The source of truth; every token change is durable here first.
    store: Arc<dyn Store>,
    /// Provider settings by configured name.
    providers: HashMap<ProviderName, Arc<ProviderConfig>>,
    /// One breaker per configured provider.
    breakers: HashMap<ProviderName, Breaker>,
    /// Token endpoints (the HTTP client in production).
    endpoint: Arc<dyn TokenEndpoint>,
    /// The one source of "now" for expiry decisions.
    clock: Clock,
    slots: Slots,
    /// Change feed for `WatchConnection`.
    hub: Arc<WatchHub>,
    /// When each connection is next due for a background refresh.
    scheduler: Scheduler,
    /// This process's name when taking refresh leases: `node/run`.
    holder: String,
    /// Every task the engine starts (refreshes, installs, the refresher,
    /// watch streams), awaited at shutdown within the grace period.
    tasks: TaskTracker,
    /// Fires at shutdown.
    cancel: CancellationToken,
    installer: install::Installer,
    stats: EngineStats,
    /// What `/metrics` shows.
    metrics: Arc<crate::metrics::Metrics>,
    settings: EngineSettings,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Vec<ProviderConfig>,
        endpoint: Arc<dyn TokenEndpoint>,
        clock: Clock,
        settings: EngineSettings,
    ) -> Arc<Self> {
        let holder = format!(
            "{}/{}-{}",
            settings.node,
            std::process::id(),
            clock.now().unix_millis()
        );
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let store: Arc<dyn Store> = Arc::new(crate::metrics::MeteredStore::new(
            store,
            Arc::clone(&metrics),
        ));
        Arc::new(Self {
            store,
            breakers: providers
                .iter()
                .map(|p| (p.name.clone(), Breaker::default()))
                .collect(),
            providers: providers
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            endpoint,
            clock,
            slots: Slots::new(settings.cache_capacity, metrics.cache_evictions.clone()),
            metrics,
            hub: Arc::default(),
            scheduler: Scheduler::default(),
            holder,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            installer: install::Installer::default(),
            stats: EngineStats::default(),
            settings,
        })
    }

    /// This server's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// This process's name in refresh leases and webhook claims.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<ProviderConfig>> {
        self.providers.get(name)
    }

    pub fn provider_names(&self) -> impl Iterator<Item = &ProviderName> {
        self.providers.keys()
    }

    /// Now, by the server's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// When the background refresher will next renew `id`, if it will.
    pub fn next_due(&self, id: &ConnectionId) -> Option<Timestamp> {
        self.scheduler.next_due(id)
    }

    /// Why the provider is failing for every connection, while its breaker
    /// is open.
    pub fn provider_trouble(&self, provider: &ProviderName) -> Option<LastError> {
        self.breakers.get(provider)?.open_error()
    }

    /// The engine's task tracker: tasks spawned on it (watch streams, the
    /// key watcher) are waited for at shutdown, within the grace period.
    /// The store, shared with the event feed and webhook deliveries.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Fires when the engine shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Subscribes to `id`'s changes; dropping the subscription releases the
    /// channel. Subscribe *before* reading the current state, so no change
    /// can fall between the two.
    pub fn subscribe(&self, id: &ConnectionId) -> Subscription {
        self.hub.subscribe(id)
    }

    /// The record as stored (operators read the store, not this process's
    /// cache).
    pub async fn stored(&self, id: &ConnectionId) -> Result<Connection, EngineError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.clone()))
    }

    /// One page of stored records.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, EngineError> {
        Ok(self.store.list(query).await?)
    }

    /// How a configured provider's connections get their tokens.
    pub fn grant_of(&self, provider: &ProviderName) -> Option<tokend_provider::GrantType> {
        self.providers.get(provider).map(|p| p.grant)
    }

    /// Brings the gauges that are counted rather than kept current up to
    /// date (before `/metrics` is rendered): connections per provider and
    /// status, from the store's counts, and connections in memory.
    pub async fn update_gauges(&self) -> Result<(), EngineError> {
        self.metrics
            .cached_connections
            .set(i64::try_from(self.slots.len()).unwrap_or(i64::MAX));
        let census = self.store.census().await?;
        self.metrics.set_connections(&census);
        Ok(())
    }

    /// One page of stored records exactly as kept (tokens sealed), for a
    /// backup.
    pub async fn export_sealed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<tokend_store::SealedPage, EngineError> {
        Ok(self.store.export_sealed(after, limit).await?)
    }

    // ---- reading -------------------------------------------------------

    async fn slot(&self, id: &ConnectionId) -> Result<Arc<Slot>, EngineError> {
        self.slots
            .load(self.store.as_ref(), id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.clone()))
    }

    /// The cached record (loading it if needed).
    pub async fn cached(&self, id: &ConnectionId) -> Result<Arc<Connection>, EngineError> {
        Ok(self.slot(id).await?.current())
    }

    fn provider_of(&self, record: &Connection) -> Result<Arc<ProviderConfig>, Failure> {
        self.providers
            .get(&record.provider)
            .cloned()
            .ok_or_else(|| Failure::UnknownProvider(record.provider.clone()))
    }

    /// The slot's record, unless the connection is RECONNECT_REQUIRED. A
    /// cached RECONNECT_REQUIRED is checked against the store first: another
    /// replica may have re-installed the connection.
    async fn active(&self, slot: &Slot, id: &ConnectionId) -> Result<Arc<Connection>, EngineError> {
        let current = slot.current();
        if current.status == Status::Active {
            return Ok(current);
        }
        let latest = self.stored(id).await?;
        let latest = slot.advance(Arc::new(latest));
        match latest.status {
            Status::Active => Ok(latest),
            Status::ReconnectRequired => Err(EngineError::reconnect_required(&latest)),
        }
    }

    /// The access token of a connection whose grant was lost in transit
    /// (`RECONNECT_REQUIRED`, cause `ROTATION_LOST`) while it is still
    /// valid for `min_ttl` (at least a second): the provider never revoked
    /// it, and serving it until it expires gives the user time to reconnect
    /// before anything breaks. The record's status says the truth.
    fn valid_after_rotation_lost(&self, slot: &Slot, min_ttl: Duration) -> Option<Arc<Connection>> {
        let current = slot.current();
        let ttl = current.tokens.ttl(self.clock.now());
        (current.status == Status::ReconnectRequired
            && current.reconnect_cause == Some(tokend_core::ReconnectCause::RotationLost)
            && ttl >= min_ttl.max(Duration::from_secs(1)))
        .then_some(current)
    }

    /// A valid access token with at least `min_ttl` left, refreshing first
    /// (once, shared with every concurrent caller) when needed. The read
    /// path writes nothing and takes no global lock.
    pub async fn get_token(
        self: &Arc<Self>,
        id: &ConnectionId,
        min_ttl: Duration,
    ) -> Result<Arc<Connection>, EngineError> {
        let slot = self.slot(id).await?;
        let mut current = match self.active(&slot, id).await {
            Ok(current) => current,
            Err(e) => return self.valid_after_rotation_lost(&slot, min_ttl).ok_or(e),
        };
        let provider = self.provider_of(&current).map_err(EngineError::from)?;
        let policy = provider.refresh_policy;
        if !policy.needs_refresh(&current.tokens, self.clock.now(), min_ttl) {
            return Ok(current);
        }
        // A refresh cannot give more than the provider grants, less the
        // refresh buffer: refuse, before any provider call, rather than
        // refresh on every call. The lifetime is the last one seen (for an
        // import, the provider's configured one), so the answer is stable.
        let grantable = |c: &Connection| {
            c.tokens
                .lifetime()
                .saturating_sub(policy.buffer_for(&c.tokens))
        };
        let too_long = |c: &Connection| {
            EngineError::min_ttl_too_long(min_ttl, grantable(c), c.tokens.lifetime())
        };
        if min_ttl > grantable(&current) {
            return Err(too_long(&current));
        }
        // Two rounds at most: a refresh may hand back a newer record written
        // by someone else (a re-install, another replica) that itself needs
        // refreshing.
        for _ in 0..2 {
            // A caller whose token is still valid never waits for a lease
            // another process holds (a dead replica's lasts `lease_ttl`):
            // it gets that token, and the refresh goes on without it.
            let refreshed = if current.tokens.ttl(self.clock.now()).is_zero() {
                self.refresh_once(&slot, &current).await
            } else {
                match self.refresh_unless_held(&slot, &current).await {
                    Some(refreshed) => refreshed,
                    None => return Ok(current),
                }
            };
            match refreshed {
                Ok(fresh) => {
                    if !policy.needs_refresh(&fresh.tokens, self.clock.now(), min_ttl) {
                        return Ok(fresh);
                    }
                    // The provider's real lifetime is known now.
                    if min_ttl > grantable(&fresh) {
                        return Err(too_long(&fresh));
                    }
                    let progressed = fresh.version > current.version;
                    current = fresh;
                    if !progressed {
                        break;
                    }
                }
                Err(failure) => {
                    // While the current token is still valid, provider or
                    // storage trouble is not the caller's problem.
                    let hideable = matches!(
                        failure,
                        Failure::Provider { .. } | Failure::Store { .. } | Failure::Contended(_)
                    );
                    if hideable && !current.tokens.ttl(self.clock.now()).is_zero() {
                        return Ok(current);
                    }
                    return Err(failure.into());
                }
            }
        }
        let ttl = current.tokens.ttl(self.clock.now());
        if ttl.is_zero() {
            return Err(EngineError::ProviderUnavailable {
                provider: provider.name.to_string(),
                last_error: current.last_error.clone(),
                retry_after: Some(self.settings.backoff_min),
            });
        }
        if ttl < min_ttl {
            return Err(too_long(&current));
        }
        Ok(current)
    }

    /// Replaces a token the caller saw rejected upstream. Returns the token
    /// and whether the provider was called.
    pub async fn force_refresh(
        self: &Arc<Self>,
        id: &ConnectionId,
        rejected: Rejected,
    ) -> Result<(Arc<Connection>, bool), EngineError> {
        let slot = self.slot(id).await?;
        let mut current = self.active(&slot, id).await?;
        let stale = match &rejected {
            Rejected::AccessToken(token) => current.tokens.access_token_is(token),
            Rejected::Version(v) => {
                if *v > current.version {
                    // Another replica may have written a newer version.
                    current = slot.advance(Arc::new(self.stored(id).await?));
                    if *v > current.version {
                        return Err(EngineError::invalid(
                            "rejected_version",
                            format!(
                                "version {v} was never issued; the connection is at version {}",
                                current.version
                            ),
                        ));
                    }
                }
                *v == current.version
            }
            // Naming nothing rejected is a request to refresh now, which
            // costs a provider call and a flushed write: at most one per
            // `min_refresh_interval`.
            Rejected::Unspecified => {
                let interval = self
                    .provider_of(&current)
                    .map_err(EngineError::from)?
                    .min_refresh_interval;
                current
                    .last_refresh_at
                    .is_none_or(|at| at.saturating_add(interval) <= self.clock.now())
            }
        };
        if !stale {
            return Ok((current, false));
        }
        let fresh = self.refresh_once(&slot, &current).await?;
        let refreshed = fresh.version > current.version;
        Ok((fresh, refreshed))
    }

    /// Installs a connection: see [`install::Installer`].
    pub async fn install(
        self: &Arc<Self>,
        input: InstallInput,
    ) -> Result<InstallOutcome, EngineError> {
        install::Installer::install(self, input, ()).await
    }

    /// [`Engine::install`], with `hold` (the caller's install slot) kept by
    /// the engine-owned task until the install ends, however long the
    /// provider takes and whether or not the caller still waits.
    pub async fn install_holding(
        self: &Arc<Self>,
        input: InstallInput,
        hold: impl Send + 'static,
    ) -> Result<InstallOutcome, EngineError> {
        install::Installer::install(self, input, hold).await
    }

    fn publish(&self, kind: EventKind, record: &Arc<Connection>) {
        self.hub.publish(Event {
            kind,
            connection: Arc::clone(record),
            at: self.clock.now(),
        });
    }

    /// Logs and announces that a connection needs reconnecting.
    fn announce_reconnect_required(&self, record: &Arc<Connection>) {
        let error = record.last_error.as_ref();
        tracing::warn!(
            connection_id = %record.id,
            provider = %record.provider,
            cause = record.reconnect_cause.map_or("", ReconnectCause::as_str),
            code = error.map_or("", |e| e.code.as_str()),
            correlation_id = error.and_then(|e| e.correlation_id.as_deref()).unwrap_or(""),
            "connection needs reconnecting"
        );
        if record.reconnect_cause == Some(ReconnectCause::RotationLost) {
            self.stats
                .rotation_lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.publish(EventKind::StatusChanged, record);
    }

    /// Stops everything the engine runs: the refresher, refreshes, installs
    /// and watch streams, waiting at most the shutdown grace; then persists
    /// any grant the store has not accepted yet, logging at ERROR each one
    /// that could not be written.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                grace_secs = self.settings.shutdown_grace.as_secs(),
                "tasks still running at the end of the shutdown grace period"
            );
        }
        self.persist_pending_before_exit(deadline).await;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Tasks hold an `Arc<Engine>`: by now none runs.
        self.cancel.cancel();
    }
}
