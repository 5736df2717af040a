//! A real tokend in-process (sled in a temp dir) with the sandbox provider,
//! for the contract tests, and an upstream API that refuses every token.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tempfile::TempDir;
use tokend_client::{Client, Install};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tokend_server::{EngineSettings, ServerConfig, auth::IdentityConfig, config::sandbox_provider};
use tokend_store::SledStore;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::oneshot,
};

/// A running broker; dropped, it shuts down.
pub struct Broker {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    data_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Broker {
    /// Open mode (loopback, no identities), background refresher off.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    pub async fn start_with(identities: Vec<IdentityConfig>) -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox starts");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let keys = tokend_store::crypto::KeyFile::generate();
        let store = SledStore::open(data_dir.path(), keys.keyring().expect("keys")).expect("store");
        let cfg = sandbox.config();
        let provider = sandbox_provider(
            "sandbox",
            &sandbox.token_url(),
            &cfg.client_id,
            &cfg.client_secret,
        )
        .expect("sandbox provider");
        let config = ServerConfig {
            providers: vec![provider],
            engine: EngineSettings {
                background_refresh: false,
                ..Default::default()
            },
            identities,
            audit_log: Some(data_dir.path().join("audit.log")),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(tokend_server::run(
            listener,
            Arc::new(store),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Broker {
            sandbox,
            addr,
            data_dir,
            shutdown: Some(tx),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::builder(self.endpoint())
            .connect()
            .await
            .expect("client")
    }

    /// Installs sandbox-issued tokens for `account` as connection `id`,
    /// valid for 30 minutes as far as tokend knows.
    pub async fn import(&self, client: &Client, id: &str, account: &str) {
        self.import_expiring(client, id, account, Duration::from_secs(1800))
            .await;
    }

    /// Installs sandbox-issued tokens with `left` of validity.
    pub async fn import_expiring(&self, client: &Client, id: &str, account: &str, left: Duration) {
        let issued = self.sandbox.issue_tokens(account, &["crm"]);
        client
            .install(
                Install::new("sandbox")
                    .connection_id(id)
                    .account_id(account)
                    .access_token(issued.access_token)
                    .refresh_token(issued.refresh_token)
                    .expires_in(left),
            )
            .await
            .expect("install");
    }

    /// How many calls of `rpc` for `connection_id` the audit log holds.
    pub fn audited(&self, rpc: &str, connection_id: &str) -> usize {
        std::fs::read_to_string(self.data_dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains(&format!("\"rpc\":\"{rpc}\""))
                    && l.contains(&format!("\"connection_id\":\"{connection_id}\""))
            })
            .count()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An upstream API answering every request `401` with body `refused`,
/// counting the requests it got.
pub async fn refusing_api() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                if sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = sock
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused")
                        .await;
                }
            });
        }
    });
    (format!("http://{addr}/api"), hits)
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
