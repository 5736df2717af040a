//! Test harness: a real tokend on 127.0.0.1:0 over a temporary sled
//! database, with the sandbox provider over real HTTP, and gRPC clients.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tempfile::TempDir;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::{EngineSettings, ServerConfig, config::sandbox_provider};
use tokend_store::SledStore;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;

pub type Client = TokenServiceClient<InterceptedService<Channel, ApiKey>>;

/// Attaches an API key (if any) to every request.
#[derive(Clone, Default)]
pub struct ApiKey(pub Option<String>);

impl Interceptor for ApiKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            let value = key
                .parse()
                .map_err(|_| tonic::Status::internal("bad test key"))?;
            request.metadata_mut().insert("x-api-key", value);
        }
        Ok(request)
    }
}

/// Knobs a test may turn; defaults are tokend's own.
#[derive(Clone, Default)]
pub struct Options {
    pub sandbox: SandboxConfig,
    pub engine: EngineSettings,
    /// Caller identities; empty means the open, loopback-only mode.
    pub identities: Vec<tokend_server::auth::IdentityConfig>,
    /// The key `client()` sends (an admin's, when identities are set).
    pub client_key: Option<String>,
    pub tls: Option<tokend_server::config::TlsSection>,
    /// The provider's floor between unconditional ForceRefresh calls; most
    /// tests force refreshes back to back, so none unless set.
    pub min_refresh_interval: Option<Duration>,
    /// Transport bounds; tokend's defaults unless set.
    pub limits: Option<tokend_server::limits::Limits>,
    /// Event log retention and pacing; tokend's defaults unless set.
    pub events: Option<tokend_server::feed::EventSettings>,
    /// Webhook endpoints.
    pub webhooks: Vec<Arc<tokend_server::webhooks::WebhookConfig>>,
    /// Serve the admin listener (metrics, health) on a free loopback port.
    pub admin: bool,
    /// Lines added to the `[providers.sandbox]` TOML table (a preset, its
    /// keys): the provider is then resolved from TOML as `tokend serve`
    /// does, with the sandbox's URL and credentials.
    pub provider_toml: Option<String>,
}

/// A running tokend plus the sandbox it talks to.
pub struct TestServer {
    pub sandbox: Sandbox,
    pub addr: std::net::SocketAddr,
    /// The admin listener's address, with `Options::admin`.
    pub admin_addr: Option<std::net::SocketAddr>,
    options: Options,
    data_dir: TempDir,
    /// The encryption keys, kept so a restart can read what was written.
    keys: tokend_store::crypto::KeyFile,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tokend_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let sandbox = Sandbox::start(options.sandbox.clone())
            .await
            .expect("sandbox starts");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer {
            sandbox,
            addr: ([127, 0, 0, 1], 0).into(),
            admin_addr: None,
            options,
            data_dir,
            keys: tokend_store::crypto::KeyFile::generate(),
            shutdown: None,
            task: None,
        };
        server.boot(None).await;
        server
    }

    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().to_owned()
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.data_dir.path().join("audit.log")
    }

    /// The server's keys as `TOKEND_KEYS` JSON, for the CLI.
    pub fn keys_json(&self) -> String {
        serde_json::to_string(&self.keys).expect("keys serialize")
    }

    /// Opens the server's store directly (only while the server is stopped:
    /// sled locks its directory).
    pub fn open_store(&self) -> SledStore {
        SledStore::open(self.data_dir.path(), self.keys.keyring().expect("keys"))
            .expect("store reopens")
    }

    async fn boot(&mut self, addr: Option<std::net::SocketAddr>) {
        let listener = match addr {
            Some(addr) => {
                // The old socket may linger briefly after shutdown.
                let mut attempt = 0;
                loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(_) if attempt < 50 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("cannot rebind {addr}: {e}"),
                    }
                }
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        };
        self.addr = listener.local_addr().expect("addr");
        let store = SledStore::open(self.data_dir.path(), self.keys.keyring().expect("keys"))
            .expect("open store");
        let cfg = self.sandbox.config();
        let mut provider = match &self.options.provider_toml {
            None => sandbox_provider(
                "sandbox",
                &self.sandbox.token_url(),
                &cfg.client_id,
                &cfg.client_secret,
            )
            .expect("sandbox provider"),
            Some(lines) => {
                // `SANDBOX_PORT` in the lines stands for the sandbox's port;
                // lines naming their own token_url keep it.
                let port = self
                    .sandbox
                    .token_url()
                    .parse::<tokend_provider::Url>()
                    .ok()
                    .and_then(|u| u.port())
                    .unwrap_or_default();
                let lines = lines.replace("SANDBOX_PORT", &port.to_string());
                let token_url = if lines.contains("token_url") {
                    String::new()
                } else {
                    format!("token_url = \"{}\"\n", self.sandbox.token_url())
                };
                let text = format!(
                    "[providers.sandbox]\n{lines}\n{token_url}client_id = \"{}\"\nclient_secret_env = \"SANDBOX_SECRET\"\n",
                    cfg.client_id
                );
                tokend_server::config::FileConfig::parse(&text, std::path::Path::new("test.toml"))
                    .expect("provider TOML parses")
                    .providers(|_| Some(cfg.client_secret.clone()))
                    .expect("provider resolves")
                    .remove(0)
            }
        };
        provider.min_refresh_interval = self.options.min_refresh_interval.unwrap_or_default();
        let config = ServerConfig {
            providers: vec![provider],
            engine: self.options.engine.clone(),
            identities: self.options.identities.clone(),
            audit_log: Some(self.audit_log_path()),
            tls: self.options.tls.clone(),
            limits: self.options.limits.clone().unwrap_or_default(),
            events: self.options.events.clone().unwrap_or_default(),
            webhooks: self.options.webhooks.clone(),
            key_rotation: Some(tokend_server::metrics::KeyRotationMetrics::default()),
            ..Default::default()
        };
        let admin = self.options.admin.then(|| {
            let (listener, addr) =
                tokend_server::admin::AdminListener::bind(([127, 0, 0, 1], 0).into())
                    .expect("admin bind");
            self.admin_addr = Some(addr);
            listener
        });
        let config = ServerConfig { admin, ..config };
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(tokend_server::run(
            listener,
            Arc::new(store),
            config,
            async move {
                let _ = rx.await;
            },
        )));
    }

    /// Stops the server gracefully and waits until it has released the store.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task joins")
                .expect("server exits cleanly");
        }
    }

    /// Stops and starts again on the same data dir (new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot(None).await;
    }

    /// Stops and starts again on the same address, as a redeploy does.
    pub async fn restart_same_port(&mut self) {
        self.stop().await;
        self.boot(Some(self.addr)).await;
    }

    /// The Rust client (tokend-client) for this server, sending `key`.
    pub async fn rust_client(&self, key: Option<&str>) -> tokend_client::Client {
        let mut builder = tokend_client::Client::builder(self.endpoint());
        if let Some(key) = key {
            builder = builder.api_key(key);
        }
        builder.connect().await.expect("client connects")
    }

    /// The gRPC endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.addr)).expect("endpoint");
        for _ in 0..50 {
            if let Ok(ch) = endpoint.connect().await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tokend did not accept connections on {}", self.addr);
    }

    pub async fn client(&self) -> Client {
        self.client_with_key(self.options.client_key.as_deref())
            .await
    }

    /// A client sending `key` (or no key).
    pub async fn client_with_key(&self, key: Option<&str>) -> Client {
        TokenServiceClient::with_interceptor(self.channel().await, ApiKey(key.map(str::to_owned)))
    }

    /// Installs a sandbox-issued token set for `account` under `id`, with
    /// `expires_in` seconds left on the access token as far as tokend knows.
    pub async fn import(
        &self,
        id: &str,
        account: &str,
        expires_in: i64,
    ) -> (pb::Connection, tokend_sandbox::IssuedTokens) {
        let issued = self
            .sandbox
            .issue_tokens(account, &["crm.objects.contacts.read"]);
        let mut client = self.client().await;
        let resp = client
            .install(import_request(id, account, &issued, expires_in))
            .await
            .expect("install succeeds")
            .into_inner();
        (resp.connection.expect("connection"), issued)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn import_request(
    id: &str,
    account: &str,
    issued: &tokend_sandbox::IssuedTokens,
    expires_in: i64,
) -> pb::InstallRequest {
    pb::InstallRequest {
        provider: "sandbox".into(),
        connection_id: id.into(),
        account_id: account.into(),
        grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
            access_token: issued.access_token.clone(),
            refresh_token: issued.refresh_token.clone(),
            expires_in_seconds: expires_in,
            scopes: issued.scopes.clone(),
            token_type: String::new(),
        })),
        replace: false,
        params: Default::default(),
        force: false,
    }
}

/// tokend's defaults with the background refresher off, for tests that
/// count provider calls made on demand.
pub fn background_off() -> Options {
    Options {
        engine: EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An unconditional ForceRefresh.
pub fn force(id: &str) -> pb::ForceRefreshRequest {
    pb::ForceRefreshRequest {
        connection_id: id.into(),
        rejected: None,
    }
}

/// GetConnection, unwrapped.
pub async fn connection(client: &mut Client, id: &str) -> pb::Connection {
    client
        .get_connection(pb::GetConnectionRequest {
            connection_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetConnection {id}: {e:?}"))
        .into_inner()
        .connection
        .expect("connection")
}

pub fn get(id: &str) -> pb::GetTokenRequest {
    pb::GetTokenRequest {
        connection_id: id.into(),
        min_ttl_seconds: 0,
    }
}

/// `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// `ErrorInfo.metadata[key]` of a status.
pub fn metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// The `BadRequest` field names of a status.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
