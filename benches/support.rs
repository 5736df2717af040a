//! What the benchmarks share: a tokend as `tokend serve` runs it (every
//! call audited) on a given store (sled, PostgreSQL, or any other
//! `Store`), and a channel to it.

use std::{sync::Arc, time::Duration};

use tokend_proto::v1 as pb;
use tokend_sandbox::Sandbox;
use tokend_server::{EngineSettings, ServerConfig, config::sandbox_provider, limits::Limits};
use tokend_store::Store;
use tonic::transport::Channel;

/// Starts tokend on `store` with `limits`, its audit log in `dir`; with
/// `min_refresh_interval`, unconditional ForceRefresh calls are floored at
/// it (tokend's default otherwise).
#[allow(dead_code)] // Each bench includes this file; not every one uses every helper.
pub async fn start(
    sandbox: &Sandbox,
    store: Arc<dyn Store>,
    dir: &std::path::Path,
    limits: Limits,
    min_refresh_interval: Option<Duration>,
) -> Started {
    start_configured(sandbox, store, dir, limits, min_refresh_interval, |_| {}).await
}

/// What [`start`] returns: a channel, the address, the stop sender and the
/// server task.
pub type Started = (
    Channel,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tokend_server::ServerError>>,
);

/// [`start`], with `tweak` applied to the server's config last.
pub async fn start_configured(
    sandbox: &Sandbox,
    store: Arc<dyn Store>,
    dir: &std::path::Path,
    limits: Limits,
    min_refresh_interval: Option<Duration>,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Started {
    let cfg = sandbox.config();
    let mut provider = sandbox_provider(
        "sandbox",
        &sandbox.token_url(),
        &cfg.client_id,
        &cfg.client_secret,
    )
    .expect("provider");
    if let Some(floor) = min_refresh_interval {
        provider.min_refresh_interval = floor;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = ServerConfig {
        providers: vec![provider],
        audit_log: Some(dir.join("audit.log")),
        engine: EngineSettings {
            background_refresh: false,
            ..Default::default()
        },
        limits,
        ..Default::default()
    };
    tweak(&mut config);
    let server = tokio::spawn(tokend_server::run(listener, store, config, async move {
        let _ = stopped.await;
    }));
    let channel = loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            break ch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (channel, addr, stop, server)
}

/// An Install importing a token set the sandbox issued for account `id`,
/// with `expires_in` seconds left on the access token.
#[allow(dead_code)] // Each bench includes this file; not every one uses every helper.
pub fn import_request(sandbox: &Sandbox, id: &str, expires_in: i64) -> pb::InstallRequest {
    let issued = sandbox.issue_tokens(id, &["crm"]);
    pb::InstallRequest {
        provider: "sandbox".into(),
        connection_id: id.into(),
        account_id: id.into(),
        grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_in_seconds: expires_in,
            scopes: issued.scopes,
            token_type: String::new(),
        })),
        replace: false,
        params: Default::default(),
        force: false,
    }
}

/// A bench's `main`: logs as `tokend serve` does (a fmt subscriber at
/// `info`), written to a sink, and `run` on a multi-thread runtime.
#[allow(dead_code)] // Each bench includes this file; not every one uses every helper.
pub fn bench_main<F: std::future::Future<Output = ()>>(run: F) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run);
}

/// `n` HTTP/2 connections to `addr` (one `Channel` each, Nagle off).
#[allow(dead_code)] // Each bench includes this file; not every one uses every helper.
pub async fn channels(addr: std::net::SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect"),
        );
    }
    out
}
