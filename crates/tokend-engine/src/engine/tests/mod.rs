//! The engine's state machine, tested without sockets or disks: a
//! `MemoryStore` behind a fault-injecting `FaultStore`, a `ScriptedProvider`,
//! and tokio's paused clock (no sleeps). Each test names the invariant it
//! guards; each fails on the engine as it was before the rebuild.

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokend_core::{Clock, ConnectionId, EventType, ProviderName, ReconnectCause, Status};
use tokend_provider::{
    ClientAuth, Dialect, ProviderConfig, TokenEndpoint,
    scripted::{ScriptRotation, ScriptedProvider, Step},
};
use tokend_store::{
    MemoryStore, Store,
    fault::{Fault, FaultStore, Op},
};

use super::{Engine, EngineSettings, InstallGrant, InstallInput, Rejected};
use crate::{error::EngineError, hub::EventKind};

type Faulty = FaultStore<MemoryStore>;

struct Fx {
    engine: Arc<Engine>,
    store: Arc<Faulty>,
    provider: Arc<ScriptedProvider>,
    id: ConnectionId,
}

fn provider_config(grace: Duration, floor: Duration) -> ProviderConfig {
    ProviderConfig {
        name: ProviderName::new("p").unwrap(),
        token_url: "http://127.0.0.1:1/token".parse().unwrap(),
        client_id: "id".into(),
        client_secret: "secret".into(),
        client_auth: ClientAuth::ClientSecretPost,
        extra_params: vec![],
        default_lifetime: Duration::from_secs(1800),
        refresh_policy: Default::default(),
        dialect: Dialect::Rfc6749,
        account_id_field: None,
        rotation_grace: grace,
        min_refresh_interval: floor,
        request: Default::default(),
        response: Default::default(),
        grant: Default::default(),
        scopes: vec![],
    }
}

fn settings() -> EngineSettings {
    EngineSettings {
        background_refresh: false,
        ..Default::default()
    }
}

/// One replica of a fleet sharing `store` and `provider`: background
/// refresh on, its own node name, leases of `lease_ttl`.
fn replica(
    store: &Arc<FaultStore<MemoryStore>>,
    provider: &Arc<ScriptedProvider>,
    clock: &Clock,
    node: &str,
    lease_ttl: Duration,
) -> Arc<Engine> {
    Engine::new(
        store.clone(),
        vec![provider_config(Duration::ZERO, Duration::ZERO)],
        provider.clone(),
        clock.clone(),
        EngineSettings {
            background_refresh: true,
            lease_ttl,
            node: node.into(),
            ..settings()
        },
    )
}

struct Setup {
    rotation: ScriptRotation,
    grace: Duration,
    floor: Duration,
    settings: EngineSettings,
    store: Option<Arc<dyn Store>>,
    endpoint: Option<Arc<dyn TokenEndpoint>>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            rotation: ScriptRotation::Strict,
            grace: Duration::ZERO,
            floor: Duration::ZERO,
            settings: settings(),
            store: None,
            endpoint: None,
        }
    }
}

async fn fixture(setup: Setup) -> Fx {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), setup.rotation));
    let engine = Engine::new(
        setup.store.unwrap_or_else(|| store.clone()),
        vec![provider_config(setup.grace, setup.floor)],
        setup.endpoint.unwrap_or_else(|| provider.clone()),
        clock,
        setup.settings,
    );
    engine.start().await.unwrap();
    let id = ConnectionId::new("c1").unwrap();
    let fx = Fx {
        engine,
        store,
        provider,
        id,
    };
    fx.import("c1").await;
    fx
}

impl Fx {
    async fn import(&self, id: &str) {
        let (access, refresh) = self.provider.issue();
        self.engine
            .install(import_input(id, &access, Some(&refresh)))
            .await
            .unwrap();
    }

    async fn stored_refresh_token(&self) -> String {
        let record = self.store.inner().get(&self.id).await.unwrap().unwrap();
        record
            .tokens
            .refresh_token
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    fn live(&self, refresh_token: &str) -> bool {
        self.provider
            .live_refresh_tokens()
            .iter()
            .any(|t| t == refresh_token)
    }
}

fn import_input(id: &str, access: &str, refresh: Option<&str>) -> InstallInput {
    import_expiring(id, access, refresh, Duration::from_secs(1800))
}

fn import_expiring(
    id: &str,
    access: &str,
    refresh: Option<&str>,
    expires_in: Duration,
) -> InstallInput {
    InstallInput {
        provider: ProviderName::new("p").unwrap(),
        connection_id: Some(ConnectionId::new(id).unwrap()),
        account_id: Some(format!("acct-{id}")),
        grant: InstallGrant::Import {
            access_token: SecretString::from(access.to_owned()),
            refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
            expires_in,
            scopes: vec![],
            token_type: "Bearer".into(),
        },
        replace: false,
        params: Default::default(),
        force: false,
    }
}

/// The variant `e` is, by name (the edge maps each to its gRPC status and
/// reason; tokend-server's error tests check that mapping).
fn reason(e: &EngineError) -> String {
    format!("{e:?}")
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Item 5. Invariant: a new grant means another refresh token, not a higher
/// version. An import keeping the refresh token, landing while a rotating
/// refresh is out, must not make the engine drop the rotated grant.
#[tokio::test(start_paused = true)]
async fn an_import_keeping_the_refresh_token_does_not_discard_a_rotation() {
    let fx = fixture(Setup::default()).await;
    let current = fx.stored_refresh_token().await;
    fx.provider.push(Step::Delay(Duration::from_secs(2)));
    let engine = Arc::clone(&fx.engine);
    let id = fx.id.clone();
    let refresh =
        tokio::spawn(async move { engine.force_refresh(&id, Rejected::Unspecified).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    fx.engine
        .install(import_input("c1", "at-imported", Some(&current)))
        .await
        .unwrap();
    let (_, refreshed) = refresh.await.unwrap().unwrap();
    assert!(refreshed);
    let stored = fx.stored_refresh_token().await;
    assert!(
        fx.live(&stored),
        "the rotated grant was kept, not the dead one"
    );
}

/// Item 6. Invariant: a caller that goes away cannot cancel an install
/// halfway; the retry is answered from what the first attempt persisted,
/// and the per-fingerprint gate is gone afterwards.
#[tokio::test(start_paused = true)]
async fn an_abandoned_install_completes_and_its_retry_is_a_replay() {
    let fx = fixture(Setup::default()).await;
    let (access, refresh) = fx.provider.issue();
    fx.store
        .arm(Op::Put, Fault::Slow(Duration::from_secs(5)), 1);
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        fx.engine
            .install(import_input("c2", &access, Some(&refresh))),
    )
    .await;
    assert!(first.is_err(), "the caller gave up");
    let again = fx
        .engine
        .install(import_input("c2", &access, Some(&refresh)))
        .await
        .unwrap();
    assert!(again.replayed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fx.engine.installer.gates.is_empty(), "no gate leaked");
}

/// Item 8. Invariant: delete is a compare-and-swap, and a deleted
/// connection never comes back into the cache.
#[tokio::test(start_paused = true)]
async fn a_deleted_connection_is_not_cached_again() {
    let fx = fixture(Setup::default()).await;
    let record = fx.store.inner().get(&fx.id).await.unwrap().unwrap();
    let epoch = fx.engine.slots.epoch();
    fx.engine.delete(&fx.id, false).await.unwrap();
    // An install that read before the delete tries to cache its record.
    fx.engine.slots.cache(record, epoch);
    assert!(fx.engine.slots.get(&fx.id).is_none());
    assert!(matches!(
        fx.engine.get_token(&fx.id, Duration::ZERO).await,
        Err(EngineError::NotFound(_))
    ));
}

/// Issue 15. Invariant: start-up schedules every ACTIVE connection from the
/// store's summaries and reads (decrypts) no record: with every record
/// read failing, it still starts, schedules them all and caches none;
/// each loads on first use.
#[tokio::test(start_paused = true)]
async fn start_up_schedules_from_summaries_and_opens_no_record() {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    let make = || {
        Engine::new(
            store.clone(),
            vec![provider_config(Duration::ZERO, Duration::ZERO)],
            provider.clone(),
            clock.clone(),
            settings(),
        )
    };
    let first = make();
    first.start().await.unwrap();
    for i in 0..5 {
        let (access, refresh) = provider.issue();
        first
            .install(import_input(&format!("c{i}"), &access, Some(&refresh)))
            .await
            .unwrap();
    }
    // One revoked: not scheduled.
    let mut revoked = store
        .inner()
        .get(&ConnectionId::new("c4").unwrap())
        .await
        .unwrap()
        .unwrap();
    let expected = revoked.revision;
    revoked = revoked.next_revision(clock.now());
    revoked.status = Status::ReconnectRequired;
    store.put(&revoked, Some(expected), None).await.unwrap();
    drop(first);

    let reads = || store.calls(Op::Get) + store.calls(Op::List);
    let before = reads();
    store.arm_always(Op::Get, Fault::BeforeWrite);
    store.arm_always(Op::List, Fault::BeforeWrite);
    let second = make();
    assert_eq!(second.start().await.unwrap(), 5);
    assert_eq!(
        second.scheduler.len(),
        4,
        "every ACTIVE connection scheduled"
    );
    assert_eq!(second.slots.len(), 0, "nothing loaded at start");
    assert_eq!(reads(), before, "no record read at start");
    store.heal();
    let served = second
        .get_token(&ConnectionId::new("c2").unwrap(), Duration::ZERO)
        .await
        .unwrap();
    assert!(!served.tokens.access_token.expose_secret().is_empty());
    assert_eq!(second.slots.len(), 1, "loaded on first use");
}

/// Issue 16. Invariant: with `keepalive_days`, the background refresher
/// exercises a grant whose access token is still good once the keepalive
/// runs out, so a refresh token that dies unused never does; not before.
#[tokio::test(start_paused = true)]
async fn keepalive_refreshes_an_idle_grant_before_it_dies_unused() {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    let mut config = provider_config(Duration::ZERO, Duration::ZERO);
    config.refresh_policy.keepalive = Some(Duration::from_secs(86_400));
    let engine = Engine::new(
        store,
        vec![config],
        provider.clone(),
        clock.clone(),
        EngineSettings {
            background_refresh: true,
            ..settings()
        },
    );
    engine.start().await.unwrap();
    let (access, refresh) = provider.issue();
    engine
        .install(import_expiring(
            "idle",
            &access,
            Some(&refresh),
            Duration::from_secs(90 * 86_400),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(23 * 3600)).await;
    assert_eq!(provider.calls(), 0, "nothing due before the keepalive");
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    assert!(provider.calls() >= 1, "the idle grant was exercised");
    assert!(
        !provider.live_refresh_tokens().contains(&refresh),
        "and rotated"
    );
}

/// Item 9. Invariant: a lease left by a killed run does not block refreshes
/// after a restart, and that connection is refreshed at once (in doubt).
#[tokio::test(start_paused = true)]
async fn a_lease_left_by_a_killed_run_is_released_at_start() {
    let clock = Clock::system();
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    let provider = Arc::new(ScriptedProvider::new(clock.clone(), ScriptRotation::Strict));
    let make = |store: Arc<Faulty>, provider: Arc<ScriptedProvider>| {
        Engine::new(
            store,
            vec![provider_config(Duration::ZERO, Duration::ZERO)],
            provider,
            clock.clone(),
            settings(),
        )
    };
    let first = make(store.clone(), provider.clone());
    first.start().await.unwrap();
    let (access, refresh) = provider.issue();
    first
        .install(import_input("c1", &access, Some(&refresh)))
        .await
        .unwrap();
    let id = ConnectionId::new("c1").unwrap();
    // The first run dies holding the lease.
    let dead = store
        .try_acquire_refresh_lease(&id, &first.holder, Duration::from_secs(30), clock.now())
        .await
        .unwrap()
        .unwrap();
    drop(first);
    let second = make(store.clone(), provider.clone());
    second.start().await.unwrap();
    let started = tokio::time::Instant::now();
    let (_, refreshed) = second
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not wait for the dead lease"
    );
    // The dead run's fence can no longer write.
    let record = store.inner().get(&id).await.unwrap().unwrap();
    let stale = store
        .put(
            &record.next_revision(clock.now()),
            Some(record.revision),
            Some(dead.fence),
        )
        .await;
    assert!(
        matches!(stale, Err(tokend_store::StoreError::Fenced { .. })),
        "{stale:?}"
    );
}

/// Item 10. Invariant: unconditional ForceRefresh costs at most one
/// provider call per `min_refresh_interval`.
#[tokio::test(start_paused = true)]
async fn unconditional_force_refreshes_have_a_floor() {
    let fx = fixture(Setup {
        floor: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut refreshed_count = 0;
    for _ in 0..50 {
        let (_, refreshed) = fx
            .engine
            .force_refresh(&fx.id, Rejected::Unspecified)
            .await
            .unwrap();
        refreshed_count += usize::from(refreshed);
    }
    assert_eq!(refreshed_count, 1);
    assert_eq!(fx.provider.calls(), 1);
    // A named rejected version is never floored.
    let current = fx.engine.cached(&fx.id).await.unwrap();
    let (_, refreshed) = fx
        .engine
        .force_refresh(&fx.id, Rejected::Version(current.version))
        .await
        .unwrap();
    assert!(refreshed);
}

/// Item 11. Invariant: a provider-wide failure (rate limit, invalid_client)
/// is probed by one connection; the others wait with no provider call and
/// no write, and the breaker's error is visible.
#[tokio::test(start_paused = true)]
async fn a_rate_limited_provider_is_probed_once_not_per_connection() {
    let fx = fixture(Setup::default()).await;
    for i in 2..=20 {
        fx.import(&format!("c{i}")).await;
    }
    fx.provider.push(Step::Fail(ScriptedProvider::rate_limited(
        Duration::from_secs(10),
    )));
    let puts_before = fx.store.calls(Op::Put);
    let mut failures = 0;
    for i in 1..=20 {
        let id = ConnectionId::new(format!("c{i}")).unwrap();
        if let Err(e) = fx.engine.force_refresh(&id, Rejected::Unspecified).await {
            assert_eq!(reason(&e), "ProviderUnavailable", "{e}");
            failures += 1;
        }
    }
    assert_eq!(failures, 20);
    assert_eq!(
        fx.provider.calls(),
        1,
        "one probe, not one call per connection"
    );
    assert_eq!(
        fx.store.calls(Op::Put),
        puts_before,
        "no write per connection"
    );
    assert!(
        fx.engine
            .provider_trouble(&ProviderName::new("p").unwrap())
            .is_some()
    );
    // After Retry-After, one probe succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let id = ConnectionId::new("c7").unwrap();
    let (_, refreshed) = fx
        .engine
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    assert!(
        fx.engine
            .provider_trouble(&ProviderName::new("p").unwrap())
            .is_none()
    );
}

/// A provider whose refresh panics: a bug in tokend's own code path.
struct Panicking;

#[async_trait::async_trait]
impl TokenEndpoint for Panicking {
    async fn refresh(
        &self,
        _: &ProviderConfig,
        _: &SecretString,
    ) -> Result<tokend_provider::TokenGrant, tokend_provider::ProviderError> {
        panic!("bug while refreshing");
    }
    async fn exchange_code(
        &self,
        _: &ProviderConfig,
        _: &SecretString,
        _: &str,
        _: Option<&SecretString>,
    ) -> Result<tokend_provider::TokenGrant, tokend_provider::ProviderError> {
        panic!("bug while exchanging");
    }
}

/// Item 12. Invariant: errors keep their meaning on the way out: a panic
/// is INTERNAL (not SHUTTING_DOWN), an unreadable record is DATA_LOSS on
/// the refresh path as on reads.
#[tokio::test(start_paused = true)]
async fn errors_keep_their_meaning() {
    let fx = fixture(Setup {
        endpoint: Some(Arc::new(Panicking)),
        ..Default::default()
    })
    .await;
    let err = fx
        .engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Internal(_)), "{err}");

    let corrupt: EngineError = super::Failure::store(tokend_store::StoreError::Corrupt {
        id: "c1".into(),
        reason: "does not decrypt".into(),
    })
    .into();
    assert!(matches!(
        corrupt,
        EngineError::Store(tokend_store::StoreError::Corrupt { .. })
    ));
}

/// Item 2, at shutdown. Invariant: shutdown waits (within its grace) for a
/// grant the store refused, and persists it once the store answers again.
#[tokio::test(start_paused = true)]
async fn shutdown_persists_a_pending_grant_within_its_grace() {
    let fx = fixture(Setup::default()).await;
    fx.store.arm_always(Op::Put, Fault::BeforeWrite);
    fx.engine
        .force_refresh(&fx.id, Rejected::Unspecified)
        .await
        .unwrap_err();
    let engine = Arc::clone(&fx.engine);
    let shutdown = tokio::spawn(async move { engine.shutdown().await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!shutdown.is_finished(), "waiting for the store");
    fx.store.heal();
    shutdown.await.unwrap();
    let stored = fx.stored_refresh_token().await;
    assert!(fx.live(&stored), "the pending grant reached the store");
    assert_eq!(fx.provider.calls(), 1);
}

mod edges;
mod in_doubt;
mod leases;
mod replicas;
mod shutdown;
mod store_outage;
mod wall_clock;
mod writes;
