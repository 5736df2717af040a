//! The admin HTTP listener, apart from gRPC: `/metrics` (Prometheus text
//! format), `/healthz` (the process answers), `/readyz` (the store is open,
//! the keys loaded and the first scan of connections done, and the store
//! answers now and its writer lives, `readiness.rs`; not while shutting
//! down), and the read-only console (`/`, `console.rs`), which
//! asks for an admin identity. None of them shows a secret.

use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use tokend_engine::metrics::Metrics;

/// A bound admin socket, handed to the server, which serves it once.
#[derive(Clone, Debug, Default)]
pub struct AdminListener(Arc<Mutex<Option<std::net::TcpListener>>>);

impl AdminListener {
    /// Binds `addr` now, so a port of 0 is known before the server starts.
    pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<(Self, std::net::SocketAddr)> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        Ok((AdminListener(Arc::new(Mutex::new(Some(listener)))), bound))
    }

    fn take(&self) -> Option<std::net::TcpListener> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    engine: Arc<tokend_engine::engine::Engine>,
    readiness: Arc<crate::readiness::Readiness>,
    cancel: CancellationToken,
}

/// Serves the admin routes until `cancel` fires.
pub(crate) async fn serve(
    listener: AdminListener,
    console: crate::console::Console,
    cancel: CancellationToken,
) {
    let metrics = Arc::clone(&console.metrics);
    let engine = Arc::clone(&console.engine);
    let Some(listener) = listener.take() else {
        return;
    };
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the admin listener");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        console.gate.set_port(addr.port());
        tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz");
    }
    let pages = Router::new()
        .route("/", get(crate::console::index))
        .route("/connections/{id}", get(crate::console::connection))
        .with_state(console);
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Admin {
            metrics,
            readiness: Arc::new(crate::readiness::Readiness::new(engine.store())),
            engine: Arc::clone(&engine),
            cancel: cancel.clone(),
        })
        .merge(pages);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(cancel.cancelled_owned())
    .await
    {
        tracing::error!(error = %e, "the admin listener failed");
    }
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    // A store that cannot count now leaves the gauge at its last counts.
    if let Err(e) = admin.engine.update_gauges().await {
        tracing::warn!(error = %e, "counting connections for /metrics failed");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

/// Served only once the server is up (the engine has scheduled every
/// connection before this listener starts), until shutdown begins, while
/// the store answers and its writer lives (`readiness.rs`).
async fn ready(State(admin): State<Admin>) -> axum::response::Response {
    if admin.cancel.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match admin.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}
