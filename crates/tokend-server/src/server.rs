//! `run`: wires the engine, the feed, webhooks and the admin listener to the
//! gRPC services and their tower layers, serves until shutdown, then shuts
//! down in one sequence with a deadline at every wait.

use std::{future::Future, sync::Arc};

use tokend_core::Clock;
use tokend_proto::v1::token_service_server::TokenServiceServer;
use tokend_provider::{HttpSettings, ProviderClient, ProviderConfig, ProviderError};
use tokend_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokend_engine::{Engine, EngineSettings, engine, feed, metrics};

/// Everything `run` needs besides the listener and the store.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    pub providers: Vec<ProviderConfig>,
    pub http: HttpSettings,
    pub engine: EngineSettings,
    /// Who may call. Empty: any local process, and the server refuses to
    /// listen anywhere but loopback.
    pub identities: Vec<crate::auth::IdentityConfig>,
    /// Append-only JSON-lines audit log, if any.
    pub audit_log: Option<std::path::PathBuf>,
    /// The audit log's rotation, and lines to stdout.
    pub audit: crate::audit::AuditOptions,
    /// Server-side TLS; with a client CA, mutual TLS.
    pub tls: Option<crate::config::TlsSection>,
    /// Transport bounds.
    pub limits: tokend_config::limits::Limits,
    /// Serve plaintext on a non-loopback address (behind a TLS-terminating
    /// proxy on the same host, say). Off: such a listener without `tls` is
    /// refused.
    pub allow_plaintext: bool,
    /// Event log retention and feed pacing.
    pub events: feed::EventSettings,
    /// Webhook endpoints fed from the event log.
    pub webhooks: Vec<Arc<crate::webhooks::WebhookConfig>>,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`), if any.
    pub admin: Option<crate::admin::AdminListener>,
    /// Key rotation progress, kept current by whoever runs re-encryption.
    pub key_rotation: Option<metrics::KeyRotationMetrics>,
    /// For benchmarks only: no per-call span and no per-call metrics, to
    /// measure what they cost. `tokend serve` never sets it.
    #[doc(hidden)]
    pub without_call_observability: bool,
    /// For tests only: the clock this machine would give (`Clock::system()`
    /// when `None`); `Clock::off_by` plays a machine whose wall clock is
    /// off. `tokend serve` never sets it.
    #[doc(hidden)]
    pub system_clock: Option<Clock>,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot set up the provider HTTP client: {0}")]
    Provider(#[from] ProviderError),
    #[error("cannot load connections: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("grpc transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(
        "refusing to listen on {0} with no caller identities configured: configure [[identities]] or listen on loopback"
    )]
    OpenOnNetwork(std::net::SocketAddr),
    #[error(
        "refusing to serve plaintext on {0}: API keys and access tokens would cross the network in the clear; configure [tls], listen on loopback, or set allow_plaintext = true (e.g. behind a TLS-terminating proxy on this host)"
    )]
    PlaintextOnNetwork(std::net::SocketAddr),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// The store can write nothing any more (sled: its writer thread
    /// died): the server stopped rather than fail every write while ready.
    #[error("the store failed: {0}")]
    StoreBroken(String),
    /// A shared store's clock, which every replica keeps, could not be read
    /// at start.
    #[error("cannot read the database's clock (the fleet's clock): {0}")]
    FleetClock(StoreError),
}

/// Serves tokend on `listener` until `shutdown` resolves.
///
/// On shutdown, health turns NOT_SERVING first, watch streams end cleanly,
/// in-flight calls finish, and refreshes already started are completed and
/// persisted before this returns (so the store can be reopened at once).
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_with_tasks(listener, store, config, shutdown, |_, _| {}).await
}

/// [`run`], with more tasks owned by the server: `spawn` starts them on the
/// server's tracker with its shutdown token, and shutdown waits for them
/// (within the grace period) like for every other task.
pub async fn run_with_tasks(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
    spawn: impl FnOnce(&TaskTracker, &CancellationToken),
) -> Result<(), ServerError> {
    let limits = config.limits.clone();
    let authenticator = crate::auth::Authenticator::new(&config.identities, &limits)?;
    // Pending requests and calling connections: the request bounds layer
    // and the connection registry count them, open mode's rates read them.
    let load = crate::transport::load::Load::new(&limits);
    authenticator.share_load(Arc::clone(&load));
    let addr = listener.local_addr().ok();
    if authenticator.is_open() {
        match addr {
            Some(a) if !a.ip().is_loopback() => return Err(ServerError::OpenOnNetwork(a)),
            _ => tracing::warn!(
                "no caller identities configured: any local process may call; listening on loopback only"
            ),
        }
    }
    if let Some(a) = addr
        && !a.ip().is_loopback()
        && config.tls.is_none()
    {
        if !config.allow_plaintext {
            return Err(ServerError::PlaintextOnNetwork(a));
        }
        tracing::warn!(
            addr = %a,
            "serving plaintext on a non-loopback address (allow_plaintext = true): API keys and tokens cross the network in the clear unless a proxy on this host terminates TLS"
        );
    }
    let (audit_log, audit_writer) = match &config.audit_log {
        Some(path) => {
            let (log, writer) =
                crate::audit::AuditLog::open(path, &config.audit).map_err(ServerError::Audit)?;
            (log, Some(writer))
        }
        None => (crate::audit::AuditLog::disabled(), None),
    };
    // On a shared store, the database's clock is the fleet's: anchored
    // there before anything is stamped, and followed (not the machine's).
    let local = config.system_clock.clone().unwrap_or_else(Clock::system);
    let (clock, fleet_clock) = engine::anchor_clock(store.as_ref(), local)
        .await
        .map_err(ServerError::FleetClock)?;
    let client = ProviderClient::new(&config.http, clock.clone())?;
    let mut settings = config.engine;
    // Shutdown never cuts short a refresh that is at the provider.
    settings.shutdown_grace = settings
        .shutdown_grace
        .max(engine::shutdown_grace_for(config.http.request_timeout));
    let grace = settings.shutdown_grace;
    let engine = Engine::new(
        store,
        config.providers,
        Arc::new(client),
        clock.clone(),
        settings,
    );
    engine.metrics().register(
        "tokend_audit_records_dropped",
        "Audit records dropped because the writer's queue was full",
        audit_log.dropped_total(),
    );
    if let Some(keys) = &config.key_rotation {
        engine.metrics().register_key_rotation(keys);
    }
    let feed = feed::Feed::start(
        engine.store(),
        config.events.clone(),
        clock.clone(),
        engine.tasks(),
        engine.shutdown_token(),
    )
    .await?;
    let webhooks = crate::webhooks::Webhooks::start(
        config.webhooks.clone(),
        Arc::clone(&feed),
        clock.clone(),
        &engine,
    )
    .await
    .map_err(ServerError::Webhooks)?;
    // The feed and the webhooks' start positions first: events written by
    // the engine's start-up refreshes are then delivered too.
    // On a shared store, other replicas' changes reach this cache through
    // the log: followed from before the engine loads, so none falls between.
    let followed_from = feed.last();
    let loaded = engine.start().await?;
    engine
        .tasks()
        .spawn(Arc::clone(&engine).watch_wall_clock(fleet_clock));
    if engine.store().shared() {
        engine
            .tasks()
            .spawn(Arc::clone(&engine).follow_other_replicas(Arc::clone(&feed), followed_from));
    }
    if let Some(listener) = config.admin.clone() {
        engine.tasks().spawn(crate::admin::serve(
            listener,
            crate::console::Console {
                engine: Arc::clone(&engine),
                feed: Arc::clone(&feed),
                metrics: Arc::clone(engine.metrics()),
                auth: authenticator.clone(),
                audit: audit_log.clone(),
                gate: Arc::default(),
            },
            engine.shutdown_token().clone(),
        ));
    }
    spawn(engine.tasks(), engine.shutdown_token());
    tracing::info!(
        addr = %addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
        connections = loaded,
        providers = ?engine.provider_names().map(|p| p.as_str()).collect::<Vec<_>>(),
        "tokend serving"
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TokenServiceServer<crate::service::TokenServiceImpl>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokend_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    // grpcurl 1.8 and other older tools only speak v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokend_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let cancel = engine.shutdown_token().clone();

    // Authentication and the per-caller rate limit run first, as an
    // interceptor: nothing unauthenticated reaches the service or engine.
    let refusals = audit_log.clone();
    let refusal_clock = clock.clone();
    let edge = crate::malformed::EdgeRefusalsLayer::new(audit_log.clone(), clock.clone());
    let witness = crate::transport::trailers::Witness {
        audit: audit_log.clone(),
        clock: clock.clone(),
    };
    // The interceptor marks an unauthenticated request; the layer behind it
    // answers it once its body is read (crate::transport::refuse).
    let answer_refused = crate::transport::refuse::AnswerRefusedLayer {
        within: limits
            .request_body_timeout
            .min(crate::transport::refuse::DRAIN_TIME),
    };
    let token_service = tonic::service::interceptor::InterceptedService::new(
        tower::Layer::layer(
            &answer_refused,
            TokenServiceServer::new(
                crate::service::TokenServiceImpl::new(
                    Arc::clone(&engine),
                    feed,
                    webhooks,
                    audit_log,
                )
                .with_stream_limits(&limits),
            )
            .max_decoding_message_size(tokend_config::limits::MAX_REQUEST_BYTES),
        ),
        move |request| authenticator.intercept(request, &refusals, &refusal_clock),
    );

    let signal = {
        let cancel = cancel.clone();
        let health = health.clone();
        let broken = engine.store().broken();
        async move {
            // A store that cannot write any more stops the server: serving
            // on would fail every write while reporting ready.
            tokio::select! {
                () = shutdown => {}
                why = store_broke(broken) => tracing::error!(
                    reason = %why,
                    "the store cannot write any more: shutting down"
                ),
            }
            tracing::info!(
                "shutting down: health NOT_SERVING, ending watch streams, finishing in-flight calls"
            );
            health
                .set_not_serving::<TokenServiceServer<crate::service::TokenServiceImpl>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            cancel.cancel();
        }
    };

    let enforce = limits.enforce;
    let observe_calls = !config.without_call_observability;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(server_tls(tls)?.timeout(limits.handshake_timeout))
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        tracing::info!(mutual = tls.client_ca_file.is_some(), "serving over TLS");
    }
    if enforce {
        builder = builder
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_size);
    }
    let max_connections = if enforce {
        let fds = tokend_config::limits::fd_limit();
        let n = limits.connections_for(fds);
        if let Some(fds) = fds
            && (n as u64).saturating_add(tokend_config::limits::RESERVED_FDS as u64) > fds
        {
            tracing::warn!(
                max_connections = n,
                fd_limit = fds,
                "limits.max_connections leaves too few file descriptors; accept will back off when they run out"
            );
        }
        n
    } else {
        usize::MAX
    };
    // Every connection, with its open streams: for the idle timeout, the
    // per-peer cap and shedding at the connection cap.
    let conns = if enforce {
        crate::transport::conns::Connections::new(
            limits.max_connections_per_peer,
            Some(limits.idle_timeout),
            load,
        )
    } else {
        crate::transport::conns::Connections::new(usize::MAX, None, load)
    };
    conns.metrics.register(engine.metrics());
    let all_conns = Arc::clone(&conns);
    let incoming = crate::transport::incoming::incoming(
        listener,
        max_connections,
        enforce.then_some(limits.handshake_timeout),
        Arc::clone(&conns),
    );
    let serving = builder
        // Detects dead watchers behind NATs and load balancers, and peers
        // stalled in the middle of a header block.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // A span per call: the method, and the connection and code once
        // the service knows them (`crate::service::audit`).
        .trace_fn(move |req| {
            if !observe_calls {
                return tracing::Span::none();
            }
            // DEBUG: at the default `info` it costs nothing; `RUST_LOG=
            // tokend_server=debug` (or a tracing exporter) turns it on.
            let span = tracing::debug_span!(
                "rpc",
                path = %req.uri().path(),
                connection_id = tracing::field::Empty,
                code = tracing::field::Empty,
            );
            crate::trace_context::continue_caller_trace(&span, req.headers());
            span
        })
        // Outermost: counts every call by the code it finally got.
        .layer(tower::util::option_layer(observe_calls.then(|| {
            crate::rpc_metrics::RpcMetricsLayer::new(Arc::clone(engine.metrics()))
        })))
        // Rewrites and audits the refusals of everything below.
        .layer(edge)
        // Bounds what any request may hold: time, bytes, a place in line.
        .layer(tower::util::option_layer(enforce.then(|| {
            crate::transport::body::RequestBoundsLayer::new(&limits, conns, witness)
        })))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token_service)
        .serve_with_incoming_shutdown(incoming, signal);
    // Shutdown (`shutdown.rs`): the signal above turned health NOT_SERVING
    // and cancelled; open calls drain within the grace, the engine flushes
    // pending grants and joins its tasks within its own, then the writers.
    let result =
        crate::shutdown::drain_calls(serving, &cancel, grace, || all_conns.close_all()).await;

    // Let refreshes already talking to a provider finish and persist, and
    // every other task end, within the grace period.
    engine.shutdown().await;
    // The service (and its audit log handle) is gone with the server: the
    // writer drains its queue and ends.
    if let Some(writer) = audit_writer {
        crate::shutdown::join_writer(
            "audit log",
            move || writer.join(),
            crate::shutdown::WRITER_DEADLINE,
        )
        .await;
    }
    tracing::info!("tokend stopped");
    result.map_err(ServerError::from)?;
    let broken = engine.store().broken().borrow().clone();
    match broken {
        Some(why) => Err(ServerError::StoreBroken(why)),
        None => Ok(()),
    }
}

/// Resolves with the reason once `broken` says the store broke; never for
/// a store that cannot break.
async fn store_broke(mut broken: tokio::sync::watch::Receiver<Option<String>>) -> String {
    let why = broken
        .wait_for(Option::is_some)
        .await
        .map(|why| why.clone().unwrap_or_default());
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await,
    }
}

/// The TLS settings from PEM files. Client certificates are optional even
/// with a client CA, so API-key callers can connect too; a presented
/// certificate must chain to the CA.
fn server_tls(
    tls: &crate::config::TlsSection,
) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let identity =
        tonic::transport::Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(config)
}
