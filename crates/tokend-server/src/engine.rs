//! The refresh engine: serves tokens from memory, refreshes each connection
//! at most once at a time (singleflight), classifies failures, persists
//! before publishing, and drives the background refresher.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use dashmap::DashMap;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use secrecy::ExposeSecret;
use tokend_core::{
    Clock, Connection, ConnectionId, ErrorClass, LastError, ProviderName, Status, Timestamp,
    TokenSet,
};
use tokend_provider::{ProviderClient, ProviderConfig, ProviderError};
use tokend_store::{Lease, Store, StoreError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    ServiceError,
    hub::{Event, EventKind, WatchHub},
    scheduler::Scheduler,
};

/// Tunables of the engine; defaults suit production.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// How long a refresh lease is held at most (covers one provider call).
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
        }
    }
}

/// Why a refresh did not produce a token. Cloneable: every waiter of a
/// shared flight receives the same failure.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// The provider failed (transient, rate limited or misconfigured); the
    /// connection stays ACTIVE and is retried after `retry_after`.
    Provider {
        provider: ProviderName,
        error: LastError,
        retry_after: Option<Duration>,
    },
    /// The grant is revoked: the connection is RECONNECT_REQUIRED.
    Revoked(ConnectionId, Option<LastError>),
    /// The connection's provider is not in the configuration any more.
    UnknownProvider(ProviderName),
    NotFound(ConnectionId),
    /// Writing the new token set failed; it was not handed out.
    Store(Arc<str>),
    Contended(ConnectionId),
    /// The refresh task died (panic or shutdown).
    Aborted,
}

impl Failure {
    fn into_service_error(self) -> ServiceError {
        match self {
            Failure::Provider {
                provider,
                error,
                retry_after,
            } => {
                if error.class == ErrorClass::ClientMisconfigured {
                    ServiceError::ProviderMisconfigured {
                        provider: provider.to_string(),
                        last_error: Some(error),
                    }
                } else {
                    ServiceError::ProviderUnavailable {
                        provider: provider.to_string(),
                        last_error: Some(error),
                        retry_after,
                    }
                }
            }
            Failure::Revoked(id, last_error) => ServiceError::ReconnectRequired { id, last_error },
            Failure::UnknownProvider(p) => ServiceError::ProviderMisconfigured {
                provider: p.to_string(),
                last_error: None,
            },
            Failure::NotFound(id) => ServiceError::NotFound(id),
            Failure::Store(m) => ServiceError::Store(StoreError::Backend(m.to_string())),
            Failure::Contended(id) => ServiceError::Contended(id),
            Failure::Aborted => ServiceError::ShuttingDown,
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Connection>, Failure>>>;

/// Retry bookkeeping of one connection, in memory only: after a restart a
/// connection gets one immediate attempt, which is what an operator expects.
#[derive(Default)]
struct RetryState {
    backoff: Option<ExponentialBackoff>,
    /// No provider call for this connection before this time.
    not_before: Option<Timestamp>,
    /// Consecutive failed attempts.
    attempts: u32,
    /// What the last attempt failed with, replayed to callers during backoff.
    last_failure: Option<Failure>,
}

/// In-memory state of one connection.
struct Slot {
    /// The newest record this process knows. A std `RwLock`: held only to
    /// clone an `Arc`, never across an `.await`, so readers never wait on I/O.
    record: RwLock<Arc<Connection>>,
    /// The refresh in flight, with its generation so only its own task
    /// clears it.
    flight: Mutex<Option<(u64, Flight)>>,
    retry: Mutex<RetryState>,
    /// A token set the provider issued but the store refused to persist.
    /// With a rotating provider it holds the only live refresh token, so the
    /// next attempt persists it instead of calling the provider.
    pending: Mutex<Option<PendingGrant>>,
}

/// An unpersisted refresh result and the refresh token it replaced.
struct PendingGrant {
    replaced: Option<secrecy::SecretString>,
    tokens: tokend_core::TokenSet,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments that leave the value
    // consistent, so a poisoned lock's data is still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    fn new(record: Arc<Connection>) -> Self {
        Self {
            record: RwLock::new(record),
            flight: Mutex::new(None),
            retry: Mutex::new(RetryState::default()),
            pending: Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<Connection> {
        Arc::clone(&self.record.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the cached record unless it is older than what is cached.
    /// A record of another incarnation always replaces: it was read from the
    /// store after the cached one was deleted there.
    fn advance(&self, record: Arc<Connection>) -> Arc<Connection> {
        let mut guard = self.record.write().unwrap_or_else(|p| p.into_inner());
        if record.incarnation != guard.incarnation || record.revision >= guard.revision {
            *guard = record;
        }
        Arc::clone(&guard)
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

/// The broker's state: the store, the providers, and per-connection memory.
pub struct Engine {
    /// The source of truth; every token change is durable here first.
    pub(crate) store: Arc<dyn Store>,
    /// Provider settings by configured name.
    providers: HashMap<ProviderName, Arc<ProviderConfig>>,
    /// Token-endpoint client with one shared connection pool.
    pub(crate) client: ProviderClient,
    /// The one source of "now" for expiry decisions.
    pub(crate) clock: Clock,
    /// Per-connection memory, sharded so readers of different connections
    /// never contend and the read path takes no global lock.
    slots: DashMap<ConnectionId, Arc<Slot>>,
    /// Bumped by every delete; a loader that raced with one retries, so a
    /// deleted record is never cached again.
    delete_epoch: AtomicU64,
    /// Source of flight generations.
    flight_gen: AtomicU64,
    /// Change feed for `WatchConnection`.
    pub(crate) hub: WatchHub,
    /// When each connection is next due for a background refresh.
    pub(crate) scheduler: Scheduler,
    /// This process's name when taking refresh leases.
    holder: String,
    /// Refresh tasks, awaited at shutdown so no write is cut off.
    pub(crate) tasks: TaskTracker,
    /// Recent install requests, to answer retried code installs.
    pub(crate) recent_installs: crate::install::RecentInstalls,
    /// One async mutex per in-progress install fingerprint.
    pub(crate) install_gates: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    pub(crate) settings: EngineSettings,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Vec<ProviderConfig>,
        client: ProviderClient,
        clock: Clock,
        settings: EngineSettings,
    ) -> Arc<Self> {
        let holder = format!(
            "tokend-{}-{}",
            std::process::id(),
            clock.now().unix_millis()
        );
        Arc::new(Self {
            store,
            providers: providers
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            client,
            clock,
            slots: DashMap::new(),
            delete_epoch: AtomicU64::new(0),
            flight_gen: AtomicU64::new(0),
            hub: WatchHub::default(),
            scheduler: Scheduler::default(),
            holder,
            tasks: TaskTracker::new(),
            recent_installs: Default::default(),
            install_gates: DashMap::new(),
            settings,
        })
    }

    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<ProviderConfig>> {
        self.providers.get(name)
    }

    pub fn provider_names(&self) -> impl Iterator<Item = &ProviderName> {
        self.providers.keys()
    }

    // ---- reading -------------------------------------------------------

    /// The connection's slot, loading it from the store on first use.
    async fn slot(&self, id: &ConnectionId) -> Result<Arc<Slot>, ServiceError> {
        if let Some(slot) = self.slots.get(id) {
            return Ok(Arc::clone(&slot));
        }
        loop {
            let epoch = self.delete_epoch.load(Ordering::SeqCst);
            let record = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
            let mut inserted = false;
            let slot = Arc::clone(&self.slots.entry(id.clone()).or_insert_with(|| {
                inserted = true;
                Arc::new(Slot::new(Arc::new(record)))
            }));
            // A slot someone else inserted is theirs to check.
            if !inserted || self.delete_epoch.load(Ordering::SeqCst) == epoch {
                return Ok(slot);
            }
            // A delete ran meanwhile: what we cached may be gone. Remove only
            // the slot this call inserted.
            self.slots.remove_if(id, |_, s| Arc::ptr_eq(s, &slot));
        }
    }

    /// The cached record (loading it if needed).
    pub async fn cached(&self, id: &ConnectionId) -> Result<Arc<Connection>, ServiceError> {
        Ok(self.slot(id).await?.current())
    }

    /// Caches a record written by this process and returns the newest known.
    fn cache(&self, record: Connection) -> Arc<Connection> {
        let record = Arc::new(record);
        match self.slots.get(&record.id) {
            Some(slot) => slot.advance(record),
            None => Arc::clone(
                self.slots
                    .entry(record.id.clone())
                    .or_insert_with(|| Arc::new(Slot::new(Arc::clone(&record))))
                    .value(),
            )
            .advance(record),
        }
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
    async fn active(
        &self,
        slot: &Slot,
        id: &ConnectionId,
    ) -> Result<Arc<Connection>, ServiceError> {
        let current = slot.current();
        if current.status == Status::Active {
            return Ok(current);
        }
        let latest = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        let latest = slot.advance(Arc::new(latest));
        match latest.status {
            Status::Active => Ok(latest),
            Status::ReconnectRequired => Err(reconnect_required(&latest)),
        }
    }

    /// A valid access token with at least `min_ttl` left, refreshing first
    /// (once, shared with every concurrent caller) when needed. Writes
    /// nothing itself: only a refresh writes.
    pub async fn get_token(
        self: &Arc<Self>,
        id: &ConnectionId,
        min_ttl: Duration,
    ) -> Result<Arc<Connection>, ServiceError> {
        let slot = self.slot(id).await?;
        let mut current = self.active(&slot, id).await?;
        let provider = self
            .provider_of(&current)
            .map_err(Failure::into_service_error)?;
        let policy = provider.refresh_policy;
        if !policy.needs_refresh(&current.tokens, self.clock.now(), min_ttl) {
            return Ok(current);
        }
        // A refresh cannot give more than the provider grants, less the
        // refresh buffer: refuse rather than refresh on every call.
        if current.last_refresh_at.is_some() {
            let grantable = current
                .tokens
                .lifetime()
                .saturating_sub(policy.buffer_for(&current.tokens));
            if min_ttl > grantable {
                return Err(min_ttl_too_long(
                    min_ttl,
                    grantable,
                    current.tokens.lifetime(),
                ));
            }
        }
        // Two rounds at most: a refresh may hand back a newer record written
        // by someone else (a re-install, another replica) that itself needs
        // refreshing.
        for _ in 0..2 {
            match self.refresh_once(&slot, &current).await {
                Ok(fresh) => {
                    if fresh.status != Status::Active {
                        return Err(reconnect_required(&fresh));
                    }
                    if !policy.needs_refresh(&fresh.tokens, self.clock.now(), min_ttl) {
                        return Ok(fresh);
                    }
                    let progressed = fresh.version > current.version;
                    current = fresh;
                    if !progressed {
                        break;
                    }
                }
                Err(failure) => {
                    // While the current token is still valid, provider
                    // trouble is not the caller's problem.
                    let hideable = matches!(
                        failure,
                        Failure::Provider { .. } | Failure::Store(_) | Failure::Contended(_)
                    );
                    if hideable && !current.tokens.ttl(self.clock.now()).is_zero() {
                        return Ok(current);
                    }
                    return Err(failure.into_service_error());
                }
            }
        }
        let ttl = current.tokens.ttl(self.clock.now());
        if ttl.is_zero() {
            return Err(ServiceError::ProviderUnavailable {
                provider: provider.name.to_string(),
                last_error: current.last_error.clone(),
                retry_after: Some(self.settings.backoff_min),
            });
        }
        if ttl < min_ttl {
            let lifetime = current.tokens.lifetime();
            return Err(min_ttl_too_long(min_ttl, lifetime, lifetime));
        }
        Ok(current)
    }

    /// Replaces a token the caller saw rejected upstream. Returns the token
    /// and whether the provider was called.
    pub async fn force_refresh(
        self: &Arc<Self>,
        id: &ConnectionId,
        rejected: Rejected,
    ) -> Result<(Arc<Connection>, bool), ServiceError> {
        let slot = self.slot(id).await?;
        let mut current = self.active(&slot, id).await?;
        let stale = match &rejected {
            Rejected::AccessToken(token) => current.tokens.access_token_is(token),
            Rejected::Version(v) => {
                if *v > current.version {
                    // Another replica may have written a newer version.
                    if let Some(latest) = self.store.get(id).await? {
                        current = slot.advance(Arc::new(latest));
                    }
                    if *v > current.version {
                        return Err(ServiceError::invalid(
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
            Rejected::Unspecified => true,
        };
        if !stale {
            return Ok((current, false));
        }
        match self.refresh_once(&slot, &current).await {
            Ok(fresh) if fresh.status != Status::Active => Err(reconnect_required(&fresh)),
            Ok(fresh) => {
                let refreshed = fresh.version > current.version;
                Ok((fresh, refreshed))
            }
            // The current token was rejected upstream: handing it back would
            // not help, so every failure is the caller's answer here.
            Err(failure) => Err(failure.into_service_error()),
        }
    }

    /// Joins or starts the refresh of `base`, unless the connection is
    /// backing off after a failure, in which case that failure is returned
    /// without calling the provider.
    async fn refresh_once(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        base: &Arc<Connection>,
    ) -> Result<Arc<Connection>, Failure> {
        {
            let retry = lock(&slot.retry);
            let now = self.clock.now();
            if let (Some(not_before), Some(failure)) = (retry.not_before, &retry.last_failure)
                && not_before > now
            {
                let mut failure = failure.clone();
                if let Failure::Provider { retry_after, .. } = &mut failure {
                    *retry_after = Some(not_before.duration_since(now));
                }
                return Err(failure);
            }
        }
        self.flight(slot, base.version).await
    }

    /// The singleflight: one refresh task per connection, shared by every
    /// caller that finds the token stale while it runs.
    fn flight(self: &Arc<Self>, slot: &Arc<Slot>, base_version: u64) -> Flight {
        let mut guard = lock(&slot.flight);
        if let Some((_, flight)) = guard.as_ref() {
            return flight.clone();
        }
        // Checked under the flight lock: a flight that finished between the
        // caller's read and now has already cached its result.
        let current = slot.current();
        if current.version > base_version {
            return futures::future::ready(Ok(current)).boxed().shared();
        }
        let generation = self.flight_gen.fetch_add(1, Ordering::Relaxed);
        let engine = Arc::clone(self);
        let task_slot = Arc::clone(slot);
        // A task, not a future polled by the first caller: if that caller
        // goes away, the refresh still completes and is persisted.
        let handle = self.tasks.spawn(async move {
            // Dropped when the task ends, even by panicking, so a failed
            // flight can never stay attached to the slot.
            let _clear = ClearFlight {
                slot: Arc::clone(&task_slot),
                generation,
            };
            engine.refresh(&task_slot, &current.id, base_version).await
        });
        let shared = async move { handle.await.unwrap_or(Err(Failure::Aborted)) }
            .boxed()
            .shared();
        *guard = Some((generation, shared.clone()));
        shared
    }

    // ---- refreshing ----------------------------------------------------

    /// One refresh attempt; failures that are not the provider's (the store
    /// refusing a write) also back off, so a broken disk cannot turn into a
    /// provider call per request.
    async fn refresh(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<Arc<Connection>, Failure> {
        let result = self.refresh_attempt(slot, id, base_version).await;
        if let Err(failure @ (Failure::Store(_) | Failure::Contended(_))) = &result {
            self.back_off(slot, id, ErrorClass::Transient, None, |_| failure.clone());
        }
        result
    }

    /// Puts a connection into backoff after a failed attempt: no provider
    /// call before the delay passes (callers get `failure(delay)` meanwhile)
    /// and a background retry scheduled then. Returns the delay.
    fn back_off(
        &self,
        slot: &Slot,
        id: &ConnectionId,
        class: ErrorClass,
        retry_after: Option<Duration>,
        failure: impl FnOnce(Duration) -> Failure,
    ) -> Duration {
        let not_before;
        let delay;
        {
            let mut retry = lock(&slot.retry);
            delay = retry.next_delay(class, retry_after, &self.settings);
            not_before = self.clock.now().saturating_add(delay);
            retry.not_before = Some(not_before);
            retry.last_failure = Some(failure(delay));
        }
        self.scheduler.schedule(id, not_before);
        delay
    }

    /// Lease, re-read, call the provider (or persist a pending grant), and
    /// persist the outcome.
    async fn refresh_attempt(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<Arc<Connection>, Failure> {
        let lease = match self.acquire_lease(id, base_version).await? {
            LeaseOutcome::Granted(lease) => lease,
            LeaseOutcome::Superseded(newer) => return Ok(slot.advance(Arc::new(*newer))),
        };
        let result = self.refresh_leased(slot, id, base_version).await;
        if let Err(e) = self.store.release_refresh_lease(&lease).await {
            tracing::warn!(connection_id = %id, error = %e, "releasing refresh lease failed");
        }
        result
    }

    /// The part of a refresh done while holding the lease.
    async fn refresh_leased(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<Arc<Connection>, Failure> {
        // Read under the lease: another writer (or the previous lease
        // holder) may have refreshed, rotated or revoked it since the caller
        // looked.
        let record = self.load_latest(id).await?;
        if record.version > base_version {
            return Ok(slot.advance(Arc::new(record)));
        }
        if record.status == Status::ReconnectRequired {
            let last = record.last_error.clone();
            slot.advance(Arc::new(record));
            return Err(Failure::Revoked(id.clone(), last));
        }
        let provider = self.provider_of(&record)?;
        // A token set the store refused earlier is still the newest grant:
        // persist it rather than spend its replaced refresh token again.
        let pending = lock(&slot.pending).take();
        if let Some(pending) = pending {
            let still_current = match (&pending.replaced, &record.tokens.refresh_token) {
                (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                (None, None) => true,
                _ => false,
            };
            if still_current {
                tracing::info!(connection_id = %record.id, "persisting a refresh result the store refused earlier");
                return self.commit(slot, record, pending.tokens, None).await;
            }
        }
        let Some(refresh_token) = record.tokens.refresh_token.clone() else {
            let error = LastError {
                class: ErrorClass::Revoked,
                code: "no_refresh_token".into(),
                message: "the connection has no refresh token; install it again".into(),
                correlation_id: None,
                http_status: None,
                at: self.clock.now(),
            };
            return self.mark_reconnect_required(slot, record, error).await;
        };
        let attempt = lock(&slot.retry).attempts + 1;
        tracing::debug!(connection_id = %record.id, provider = %provider.name, attempt, "refreshing");
        match self.client.refresh(&provider, &refresh_token).await {
            Ok(grant) => {
                self.commit(slot, record, grant.tokens, grant.correlation_id)
                    .await
            }
            Err(error) => self.fail(slot, record, &provider, error, attempt).await,
        }
    }

    async fn load_latest(&self, id: &ConnectionId) -> Result<Connection, Failure> {
        match self.store.get(id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(Failure::NotFound(id.clone())),
            Err(e) => Err(Failure::Store(e.to_string().into())),
        }
    }

    /// Takes the cross-replica refresh lease, or waits for its holder's
    /// result.
    async fn acquire_lease(
        &self,
        id: &ConnectionId,
        base_version: u64,
    ) -> Result<LeaseOutcome, Failure> {
        let store_err = |e: StoreError| Failure::Store(e.to_string().into());
        loop {
            let now = self.clock.now();
            if let Some(lease) = self
                .store
                .try_acquire_refresh_lease(id, &self.holder, self.settings.lease_ttl, now)
                .await
                .map_err(store_err)?
            {
                return Ok(LeaseOutcome::Granted(lease));
            }
            // Another replica is refreshing: wait for its write, or for its
            // lease to run out if it died.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let latest = self.load_latest(id).await?;
            if latest.version > base_version {
                return Ok(LeaseOutcome::Superseded(Box::new(latest)));
            }
        }
    }

    /// Persists a successful refresh (durably), then caches and announces it.
    /// If the store keeps refusing, the token set is kept as the slot's
    /// pending grant and not handed out.
    async fn commit(
        &self,
        slot: &Arc<Slot>,
        mut base: Connection,
        tokens: TokenSet,
        correlation_id: Option<String>,
    ) -> Result<Arc<Connection>, Failure> {
        let now = self.clock.now();
        let mut store_failures = 0;
        for _ in 0..8 {
            let next = base.with_refreshed_tokens(tokens.clone(), now);
            match self.store.put(&next, Some(base.revision)).await {
                Ok(()) => {
                    let next = slot.advance(Arc::new(next));
                    *lock(&slot.retry) = RetryState::default();
                    self.schedule(&next);
                    tracing::info!(
                        connection_id = %next.id,
                        version = next.version,
                        ttl_secs = next.tokens.ttl(now).as_secs(),
                        rotated = next.previous_refresh_token.is_some()
                            && !next.tokens.same_refresh_token(&base.tokens),
                        correlation_id = correlation_id.as_deref().unwrap_or(""),
                        "token refreshed"
                    );
                    self.publish(EventKind::TokenRotated, &next);
                    return Ok(next);
                }
                Err(StoreError::Conflict { .. }) => {
                    let latest = self.load_latest(&base.id).await?;
                    if latest.supersedes(&base) {
                        // A re-install (or another replica) replaced the
                        // grant while we refreshed the old one: theirs wins.
                        tracing::warn!(connection_id = %base.id, "refresh result superseded by a concurrent write");
                        return Ok(slot.advance(Arc::new(latest)));
                    }
                    // Only metadata changed: apply our tokens on top of it.
                    base = latest;
                }
                Err(e) => {
                    store_failures += 1;
                    tracing::error!(connection_id = %base.id, error = %e, attempt = store_failures, "persisting refreshed tokens failed; not handing them out");
                    if store_failures >= 3 {
                        *lock(&slot.pending) = Some(PendingGrant {
                            replaced: base.tokens.refresh_token.clone(),
                            tokens,
                        });
                        return Err(Failure::Store(e.to_string().into()));
                    }
                    tokio::time::sleep(Duration::from_millis(100 << store_failures)).await;
                }
            }
        }
        Err(Failure::Contended(base.id))
    }

    /// Handles a provider failure according to its class.
    async fn fail(
        &self,
        slot: &Arc<Slot>,
        record: Connection,
        provider: &ProviderConfig,
        error: ProviderError,
        attempt: u32,
    ) -> Result<Arc<Connection>, Failure> {
        let now = self.clock.now();
        let last = error.to_last_error(now);
        tracing::warn!(
            connection_id = %record.id,
            provider = %provider.name,
            error_class = error.class.as_str(),
            code = %error.code,
            http_status = error.http_status.unwrap_or(0),
            correlation_id = error.correlation_id.as_deref().unwrap_or(""),
            attempt,
            ttl_secs = record.tokens.ttl(now).as_secs(),
            "refresh failed"
        );
        if error.class == ErrorClass::Revoked {
            // Another writer may have rotated the token since we read it:
            // only a refusal of the token still stored means revocation.
            let latest = self.load_latest(&record.id).await?;
            if latest.supersedes(&record) {
                let latest = slot.advance(Arc::new(latest));
                return match latest.status {
                    Status::Active => Ok(latest),
                    Status::ReconnectRequired => Err(Failure::Revoked(
                        latest.id.clone(),
                        latest.last_error.clone(),
                    )),
                };
            }
            return self.mark_reconnect_required(slot, latest, last).await;
        }

        let delay = self.back_off(slot, &record.id, error.class, error.retry_after, |delay| {
            Failure::Provider {
                provider: provider.name.clone(),
                error: last.clone(),
                retry_after: Some(delay),
            }
        });
        if error.class == ErrorClass::ClientMisconfigured {
            tracing::error!(
                provider = %provider.name,
                code = %error.code,
                "the provider rejected tokend's client credentials; check client_id and client_secret"
            );
        }
        // Record the failure for operators. Losing this race to another
        // writer is harmless: theirs is newer.
        let mut next = record.next_revision(now);
        next.last_error = Some(last.clone());
        match self.store.put(&next, Some(record.revision)).await {
            Ok(()) => {
                let next = slot.advance(Arc::new(next));
                self.publish(EventKind::RefreshFailed, &next);
            }
            Err(e) => {
                tracing::debug!(connection_id = %record.id, error = %e, "recording last error skipped")
            }
        }
        Err(Failure::Provider {
            provider: provider.name.clone(),
            error: last,
            retry_after: Some(delay),
        })
    }

    /// Marks a connection RECONNECT_REQUIRED (once), stops refreshing it and
    /// tells watchers.
    async fn mark_reconnect_required(
        &self,
        slot: &Arc<Slot>,
        mut record: Connection,
        error: LastError,
    ) -> Result<Arc<Connection>, Failure> {
        for _ in 0..5 {
            if record.status == Status::ReconnectRequired {
                let record = slot.advance(Arc::new(record));
                return Err(Failure::Revoked(
                    record.id.clone(),
                    record.last_error.clone(),
                ));
            }
            let mut next = record.next_revision(self.clock.now());
            next.status = Status::ReconnectRequired;
            next.last_error = Some(error.clone());
            match self.store.put(&next, Some(record.revision)).await {
                Ok(()) => {
                    let written = next.revision;
                    let next = slot.advance(Arc::new(next));
                    if next.revision != written || next.status != Status::ReconnectRequired {
                        // A re-install landed right after our write: it
                        // stands, and there is nothing to announce.
                        return Ok(next);
                    }
                    self.scheduler.unschedule(&next.id);
                    *lock(&slot.retry) = RetryState::default();
                    tracing::warn!(
                        connection_id = %next.id,
                        provider = %next.provider,
                        code = %error.code,
                        correlation_id = error.correlation_id.as_deref().unwrap_or(""),
                        "connection revoked by the provider; reconnect required"
                    );
                    self.publish(EventKind::StatusChanged, &next);
                    return Err(Failure::Revoked(next.id.clone(), Some(error)));
                }
                Err(StoreError::Conflict { .. }) => {
                    let latest = self.load_latest(&record.id).await?;
                    if latest.supersedes(&record) {
                        // Re-installed meanwhile: the new grant stands.
                        return Ok(slot.advance(Arc::new(latest)));
                    }
                    record = latest;
                }
                Err(e) => return Err(Failure::Store(e.to_string().into())),
            }
        }
        Err(Failure::Contended(record.id))
    }

    // ---- changes from installs and deletes -----------------------------

    /// Caches, schedules and announces a record written by `Install`.
    pub(crate) fn installed(
        &self,
        record: Connection,
        previous: Option<&Connection>,
    ) -> Arc<Connection> {
        let id = record.id.clone();
        let record = self.cache(record);
        if let Some(slot) = self.slots.get(&id) {
            *lock(&slot.retry) = RetryState::default();
        }
        self.schedule(&record);
        match previous {
            Some(p) if p.status != record.status => self.publish(EventKind::StatusChanged, &record),
            Some(_) => self.publish(EventKind::TokenRotated, &record),
            None => {}
        }
        record
    }

    /// Deletes a connection; watchers get a DELETED event.
    pub async fn delete(&self, id: &ConnectionId) -> Result<(), ServiceError> {
        let existing = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        if !self.store.delete(id, None).await? {
            return Err(ServiceError::NotFound(id.clone()));
        }
        self.delete_epoch.fetch_add(1, Ordering::SeqCst);
        self.slots.remove(id);
        self.scheduler.unschedule(id);
        tracing::info!(connection_id = %id, "connection deleted");
        self.publish(EventKind::Deleted, &Arc::new(existing));
        Ok(())
    }

    fn publish(&self, kind: EventKind, record: &Arc<Connection>) {
        self.hub.publish(Event {
            kind,
            connection: Arc::clone(record),
            at: self.clock.now(),
        });
    }

    // ---- background refresher ------------------------------------------

    /// Schedules the next background refresh of an ACTIVE connection, never
    /// sooner than MIN_REFRESH_INTERVAL from now: a provider granting
    /// absurdly short tokens must not cause a refresh loop.
    fn schedule(&self, record: &Connection) {
        self.schedule_no_sooner_than(record, MIN_REFRESH_INTERVAL);
    }

    /// Schedules `record`'s refresh when its policy says, but at least
    /// `gap` from now. Unschedules connections that are not ACTIVE; returns
    /// false when the connection's provider is not configured.
    fn schedule_no_sooner_than(&self, record: &Connection, gap: Duration) -> bool {
        if record.status != Status::Active {
            self.scheduler.unschedule(&record.id);
            return true;
        }
        let Some(provider) = self.providers.get(&record.provider) else {
            return false;
        };
        let due = provider
            .refresh_policy
            .refresh_due_at(&record.tokens)
            .max(self.clock.now().saturating_add(gap));
        self.scheduler.schedule(&record.id, due);
        true
    }

    /// Loads every record at start-up: caches it and schedules its refresh.
    /// Overdue ones are spread over a few seconds instead of all at once.
    pub async fn load_all(&self) -> Result<usize, StoreError> {
        let mut after = None;
        let mut count = 0;
        loop {
            let page = self
                .store
                .list(&tokend_store::ListQuery {
                    after: after.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for record in page {
                count += 1;
                let spread = Duration::from_millis(spread_millis(&record.id));
                if !self.schedule_no_sooner_than(&record, spread) {
                    tracing::warn!(connection_id = %record.id, provider = %record.provider, "connection's provider is not configured; not refreshing it");
                }
                self.cache(record);
            }
        }
        Ok(count)
    }

    /// Runs due background refreshes until `cancel` fires.
    pub async fn run_refresher(self: Arc<Self>, cancel: CancellationToken) {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.settings.background_concurrency.max(1),
        ));
        loop {
            let now = self.clock.now();
            for id in self.scheduler.pop_due(now) {
                let engine = Arc::clone(&self);
                let permits = Arc::clone(&permits);
                self.tasks.spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    engine.background_refresh(&id).await;
                });
            }
            let wait = self
                .scheduler
                .earliest()
                .map(|t| t.duration_since(self.clock.now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.scheduler.changed() => {}
                _ = cancel.cancelled() => break,
            }
        }
        // Refreshes popped but still waiting for a permit give up.
        permits.close();
    }

    async fn background_refresh(self: &Arc<Self>, id: &ConnectionId) {
        let Ok(slot) = self.slot(id).await else {
            return;
        };
        let current = slot.current();
        if current.status != Status::Active {
            return;
        }
        let Some(provider) = self.providers.get(&current.provider) else {
            return;
        };
        let now = self.clock.now();
        if !provider
            .refresh_policy
            .needs_refresh(&current.tokens, now, Duration::ZERO)
        {
            // A reader refreshed it already.
            self.schedule(&current);
            return;
        }
        // `pop_due` removed the entry: every outcome must put one back
        // unless the connection is gone or revoked.
        match self.refresh_once(&slot, &current).await {
            Ok(fresh) => self.schedule(&fresh),
            Err(Failure::Revoked(..) | Failure::NotFound(_) | Failure::Aborted) => {}
            Err(Failure::Provider {
                retry_after: Some(delay),
                ..
            }) => self.scheduler.schedule(id, now.saturating_add(delay)),
            Err(_) => self.scheduler.schedule(
                id,
                now.saturating_add(self.settings.backoff_max.min(Duration::from_secs(30))),
            ),
        }
    }
}

/// Clears a slot's flight when its task ends, however it ends.
struct ClearFlight {
    slot: Arc<Slot>,
    generation: u64,
}

impl Drop for ClearFlight {
    fn drop(&mut self) {
        let mut flight = lock(&self.slot.flight);
        if flight.as_ref().is_some_and(|(g, _)| *g == self.generation) {
            *flight = None;
        }
    }
}

enum LeaseOutcome {
    Granted(Lease),
    /// Another holder wrote a newer version while we waited.
    Superseded(Box<Connection>),
}

impl RetryState {
    /// The delay before the next attempt after a failure of `class`.
    fn next_delay(
        &mut self,
        class: ErrorClass,
        retry_after: Option<Duration>,
        settings: &EngineSettings,
    ) -> Duration {
        self.attempts += 1;
        let backoff = self.backoff.get_or_insert_with(|| {
            ExponentialBuilder::default()
                .with_min_delay(settings.backoff_min)
                .with_max_delay(settings.backoff_max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build()
        });
        // Jitter may push a delay past the cap; the cap wins.
        let exponential = backoff
            .next()
            .unwrap_or(settings.backoff_max)
            .min(settings.backoff_max);
        let retry_after = retry_after.map(|d| d.min(settings.max_retry_after));
        let delay = match class {
            // The provider said when: believe it (within reason).
            ErrorClass::RateLimited => retry_after.unwrap_or(exponential),
            ErrorClass::ClientMisconfigured => exponential.max(settings.misconfigured_retry),
            ErrorClass::Transient => exponential.max(retry_after.unwrap_or_default()),
            // Revoked connections are not retried at all; this is unreachable
            // in practice but must still be a finite delay.
            ErrorClass::Revoked => settings.backoff_max,
        };
        // `Retry-After: 0` or a date in the past must not become a tight loop.
        delay.max(settings.backoff_min)
    }
}

/// The shortest time between two scheduled background refreshes of one
/// connection.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A stable 0..2000 ms offset per connection, so connections overdue at
/// start-up are not all refreshed in the same instant.
fn spread_millis(id: &ConnectionId) -> u64 {
    id.as_str()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 2000
}

fn reconnect_required(record: &Connection) -> ServiceError {
    ServiceError::ReconnectRequired {
        id: record.id.clone(),
        last_error: record.last_error.clone(),
    }
}

fn min_ttl_too_long(min_ttl: Duration, grantable: Duration, lifetime: Duration) -> ServiceError {
    ServiceError::invalid(
        "min_ttl_seconds",
        format!(
            "{} s is more than tokend can promise: the provider grants {} s tokens, \
             renewed {} s before expiry",
            min_ttl.as_secs(),
            lifetime.as_secs(),
            lifetime.saturating_sub(grantable).as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let settings = EngineSettings {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        let mut retry = RetryState::default();
        let delays: Vec<_> = (0..10)
            .map(|_| retry.next_delay(ErrorClass::Transient, None, &settings))
            .collect();
        assert!(delays[0] >= Duration::from_secs(1) && delays[0] <= Duration::from_secs(2));
        assert!(delays[5] > delays[0]);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(120)));
        assert_eq!(
            retry.next_delay(
                ErrorClass::RateLimited,
                Some(Duration::from_secs(7)),
                &settings
            ),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry.next_delay(
                ErrorClass::RateLimited,
                Some(Duration::from_secs(10 * 24 * 3600)),
                &settings
            ),
            settings.max_retry_after
        );
        assert!(
            retry.next_delay(ErrorClass::ClientMisconfigured, None, &settings)
                >= settings.misconfigured_retry
        );
    }

    #[test]
    fn spread_is_stable_and_bounded() {
        let id = ConnectionId::new("hubspot-123").unwrap();
        assert_eq!(spread_millis(&id), spread_millis(&id));
        assert!(spread_millis(&id) < 2000);
    }
}
