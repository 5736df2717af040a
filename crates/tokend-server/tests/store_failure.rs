//! A store that refuses writes after a successful refresh must not cost the
//! rotated refresh token: the engine keeps the unpersisted grant and
//! persists it later instead of spending the replaced token again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokend_core::{Clock, Connection, ConnectionId, ProviderName, Timestamp};
use tokend_provider::{HttpSettings, ProviderClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::{
    Engine, EngineSettings,
    config::sandbox_provider,
    engine::Rejected,
    install::{InstallGrant, InstallInput},
};
use tokend_store::{Lease, ListQuery, MemoryStore, Store, StoreError};

/// A `MemoryStore` whose record writes fail while `broken` is set.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    broken: AtomicBool,
}

#[async_trait]
impl Store for FlakyStore {
    async fn get(&self, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.inner.get(id).await
    }
    async fn put(&self, record: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.inner.put(record, expected).await
    }
    async fn delete(&self, id: &ConnectionId, expected: Option<u64>) -> Result<bool, StoreError> {
        self.inner.delete(id, expected).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Connection>, StoreError> {
        self.inner.list(query).await
    }
    async fn try_acquire_refresh_lease(
        &self,
        id: &ConnectionId,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner
            .try_acquire_refresh_lease(id, holder, ttl, now)
            .await
    }
    async fn release_refresh_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release_refresh_lease(lease).await
    }
}

#[tokio::test]
async fn a_refused_write_keeps_the_rotated_grant_for_later() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let cfg = sandbox.config();
    let provider = sandbox_provider(
        "sandbox",
        &sandbox.token_url(),
        &cfg.client_id,
        &cfg.client_secret,
    )
    .unwrap();
    let store = Arc::new(FlakyStore::default());
    let clock = Clock::system();
    let engine = Engine::new(
        store.clone(),
        vec![provider],
        ProviderClient::new(&HttpSettings::default(), clock.clone()).unwrap(),
        clock,
        EngineSettings {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(100),
            background_refresh: false,
            ..Default::default()
        },
    );
    let issued = sandbox.issue_tokens("acct-disk", &["crm"]);
    let id = ConnectionId::new("disk").unwrap();
    engine
        .install(InstallInput {
            provider: ProviderName::new("sandbox").unwrap(),
            connection_id: Some(id.clone()),
            account_id: Some("acct-disk".into()),
            grant: InstallGrant::Import {
                access_token: SecretString::from(issued.access_token.clone()),
                refresh_token: Some(SecretString::from(issued.refresh_token.clone())),
                expires_in: Duration::from_secs(1800),
                scopes: vec![],
                token_type: "Bearer".into(),
            },
        })
        .await
        .unwrap();

    // The provider rotates the refresh token, then the disk refuses the write.
    store.broken.store(true, Ordering::SeqCst);
    let err = engine
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("storage"), "{err}");
    assert_eq!(sandbox.account_stats("acct-disk").refresh_grants_ok, 1);
    // Nothing unpersisted was handed out: the store still has the old token.
    let stored = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.tokens.access_token.expose_secret(),
        issued.access_token
    );

    // The disk recovers. The next refresh persists the kept grant instead of
    // spending the dead refresh token (which strict rotation would reject).
    store.broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (fresh, refreshed) = engine
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .unwrap();
    assert!(refreshed);
    assert_eq!(sandbox.account_stats("acct-disk").invalid_grant, 0);
    assert_eq!(
        sandbox.account_stats("acct-disk").refresh_requests,
        1,
        "the kept grant was persisted without another provider call"
    );
    assert!(sandbox.access_token_is_live(fresh.tokens.access_token.expose_secret()));
    // And its refresh token is the live one.
    engine
        .force_refresh(&id, Rejected::Unspecified)
        .await
        .expect("refreshes with the kept token");
    assert_eq!(sandbox.account_stats("acct-disk").invalid_grant, 0);
}
