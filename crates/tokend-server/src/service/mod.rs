//! The `tokend.v1.TokenService` gRPC implementation: authorises, validates
//! (`validate.rs`), calls the engine, converts results, and audits. Errors
//! leave through `ServiceError::to_status` only.

mod list;
mod outbox;
mod streams;
mod token;
mod validate;
mod watch;
mod watch_all;

use std::{pin::Pin, sync::Arc};

use tokend_proto::v1::{self as pb, token_service_server::TokenService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use tokend_engine::{
    Engine,
    feed::{Feed, Reader},
};

use crate::{
    auth::{self, Caller, Permission},
    convert,
    error::ServiceError,
    webhooks::Webhooks,
};
use validate::{check_size, connection_id};

/// The gRPC service: a thin layer over the engine.
pub struct TokenServiceImpl {
    /// Does the work; shared with the background refresher.
    engine: Arc<Engine>,
    /// The event log's reader, shared by every WatchConnections stream.
    feed: Arc<Feed>,
    /// Webhook deliveries, for their status.
    webhooks: Arc<Webhooks>,
    /// Where every call is recorded.
    audit_log: crate::audit::AuditLog,
    /// The server-wide watch-stream cap and each stream's buffer bounds.
    streams: streams::StreamBounds,
}

impl TokenServiceImpl {
    pub fn new(
        engine: Arc<Engine>,
        feed: Arc<Feed>,
        webhooks: Arc<Webhooks>,
        audit_log: crate::audit::AuditLog,
    ) -> Self {
        Self {
            engine,
            feed,
            webhooks,
            audit_log,
            streams: streams::StreamBounds::default(),
        }
    }

    /// Applies `limits`' watch-stream bounds (the defaults otherwise).
    pub fn with_stream_limits(mut self, limits: &tokend_config::limits::Limits) -> Self {
        self.streams = streams::StreamBounds::new(limits);
        self
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// The stream `WatchConnections` returns.
pub type FeedStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ConnectionEvent, Status>> + Send>>;

/// The stream `WatchConnection` returns.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchConnectionResponse, Status>> + Send>>;

impl TokenServiceImpl {
    /// Writes the audit record of one call.
    fn audit<T>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        connection_id: Option<&str>,
        result: &Result<T>,
    ) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.to_status();
                let reason = tonic_types::StatusExt::get_details_error_info(&status)
                    .map(|i| i.reason)
                    .unwrap_or_default();
                Err((crate::error::code_name(status.code()), reason))
            }
        };
        let span = tracing::Span::current();
        if let Some(id) = connection_id {
            span.record("connection_id", id);
        }
        span.record(
            "code",
            match &outcome {
                Ok(()) => "ok",
                Err((code, _)) => code,
            },
        );
        self.audit_log
            .record(self.engine.now(), &caller.name, rpc, connection_id, outcome);
    }

    fn connection_pb(&self, c: &tokend_core::Connection) -> pb::Connection {
        let live = convert::Live {
            next_refresh_at: self.engine.next_due(&c.id),
            provider_trouble: self.engine.provider_trouble(&c.provider),
        };
        convert::connection(c, live)
    }

    /// One page of the connections `caller` may see (`list.rs`).
    async fn list(
        &self,
        caller: &Caller,
        req: pb::ListConnectionsRequest,
    ) -> Result<pb::ListConnectionsResponse> {
        let params = validate::list_params(&req)?;
        let (records, more) = list::page(&self.engine, caller, params).await?;
        let next_page_token = match records.last() {
            Some(last) if more => validate::page_token_encode(&last.id),
            _ => String::new(),
        };
        Ok(pb::ListConnectionsResponse {
            connections: records.iter().map(|c| self.connection_pb(c)).collect(),
            next_page_token,
        })
    }
}

impl TokenServiceImpl {
    async fn watch_connection_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::WatchConnectionRequest>,
    ) -> Result<Response<WatchStream>> {
        let gate = crate::transport::backpressure::of_request(&request);
        let id = connection_id(&request.into_inner().connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        let permit = (
            caller.open_watch_stream()?,
            self.streams.open()?,
            tokend_engine::metrics::Subscriber::start(self.engine.metrics(), "watch_connection"),
        );
        let rx =
            watch::WatchTask::start(&self.engine, id, self.streams.outbox, gate, permit).await?;
        Ok(Response::new(Box::pin(rx)))
    }

    async fn watch_connections_inner(
        &self,
        caller: &Arc<Caller>,
        req: pb::WatchConnectionsRequest,
        gate: Option<Arc<crate::transport::backpressure::WriteState>>,
    ) -> Result<Response<FeedStream>> {
        caller.authorize(Permission::Tokens, None)?;
        let (filter, cursor) = validate::watch_all(&req)?;
        let permit = (
            caller.open_watch_stream()?,
            self.streams.open()?,
            tokend_engine::metrics::Subscriber::start(self.engine.metrics(), "watch_connections"),
        );
        let reader = Reader::Caller(Arc::clone(caller) as Arc<dyn tokend_engine::feed::Reach>);
        let sealed = !reader.sees_everything();
        let cursor = match cursor {
            Some(presented) => Some(self.feed.open(presented, sealed).await?),
            None => None,
        };
        let position = self
            .feed
            .start_position(cursor, req.from_oldest)
            .await
            .map_err(|e| self.feed.service_error(e, sealed))?;
        let rx = watch_all::FeedTask::start(
            Arc::clone(&self.feed),
            reader,
            filter,
            position,
            self.engine.tasks(),
            self.engine.shutdown_token().clone(),
            self.streams.outbox,
            gate,
            permit,
        );
        Ok(Response::new(Box::pin(rx)))
    }

    fn list_webhooks_inner(&self, caller: &Caller) -> Result<pb::ListWebhooksResponse> {
        if !caller.may_everywhere(Permission::Admin) {
            return Err(ServiceError::PermissionDenied {
                caller: caller.name.clone(),
                permission: Permission::Admin,
                connection: None,
            });
        }
        Ok(pb::ListWebhooksResponse {
            webhooks: self.webhooks.status(),
        })
    }

    async fn install_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::InstallRequest>,
    ) -> Result<Response<pb::InstallResponse>> {
        let input = validate::install_input(&self.engine, request.into_inner())?;
        // The id is known up front when named or derivable from the
        // account; otherwise only a caller allowed to install anywhere may
        // let the provider's answer decide it.
        match input.known_connection_id() {
            Some(id) => caller.authorize(Permission::Install, Some(&id))?,
            None if caller.may_everywhere(Permission::Install) => {}
            None => {
                return Err(ServiceError::PermissionDenied {
                    caller: caller.name.clone(),
                    permission: Permission::Install,
                    connection: None,
                });
            }
        }
        // One of the caller's install slots, held by the engine-owned task
        // until the install ends, even if this call is abandoned.
        let slot = caller.start_install()?;
        let outcome = self.engine.install_holding(input, slot).await?;
        Ok(Response::new(pb::InstallResponse {
            connection: Some(self.connection_pb(&outcome.connection)),
            created: outcome.created,
            replayed: outcome.replayed,
        }))
    }

    async fn get_connection_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::GetConnectionResponse>> {
        let id = connection_id(&request.into_inner().connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        // Operators read the store itself, not this process's cache.
        let record = self.engine.stored(&id).await?;
        Ok(Response::new(pb::GetConnectionResponse {
            connection: Some(self.connection_pb(&record)),
        }))
    }

    async fn list_connections_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>> {
        caller.authorize(Permission::Tokens, None)?;
        Ok(Response::new(
            self.list(caller, request.into_inner()).await?,
        ))
    }

    async fn delete_connection_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>> {
        let request = request.into_inner();
        let id = connection_id(&request.connection_id)?;
        caller.authorize(Permission::Admin, Some(&id))?;
        self.engine.delete(&id, request.force).await?;
        Ok(Response::new(pb::DeleteConnectionResponse {}))
    }
}

/// The stream `ExportConnections` returns.
pub type ExportStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ExportConnectionsResponse, Status>> + Send>>;

/// Records per `ExportConnections` message.
const EXPORT_PAGE: usize = 256;

impl TokenServiceImpl {
    /// Pages through the store lazily: one page read per message sent, so
    /// a backup of any size holds one page in memory.
    fn export(&self, caller: &Caller) -> Result<ExportStream> {
        if !caller.may_everywhere(Permission::Admin) {
            return Err(ServiceError::PermissionDenied {
                caller: caller.name.clone(),
                permission: Permission::Admin,
                connection: None,
            });
        }
        let engine = Arc::clone(&self.engine);
        let pages = futures::stream::unfold(Some(None::<String>), move |after| {
            let engine = Arc::clone(&engine);
            async move {
                let after = after?;
                match engine.export_sealed(after.as_deref(), EXPORT_PAGE).await {
                    Ok(page) if page.records.is_empty() && after.is_some() => None,
                    Ok(page) => {
                        let next = (page.records.len() == EXPORT_PAGE)
                            .then(|| page.records.last().map(|(id, _)| id.clone()));
                        let message = pb::ExportConnectionsResponse {
                            records: page
                                .records
                                .into_iter()
                                .map(|(connection_id, sealed)| pb::SealedRecord {
                                    connection_id,
                                    sealed,
                                })
                                .collect(),
                            format_version: page.format_version,
                        };
                        Some((Ok(message), next.flatten().map(Some)))
                    }
                    Err(e) => Some((Err(ServiceError::from(e).to_status()), None)),
                }
            }
        });
        Ok(Box::pin(pages))
    }
}

impl TokenServiceImpl {
    /// The one shape of every RPC: the caller (the interceptor attached it),
    /// the request's size, the RPC's own work, one audit record naming the
    /// connection (the reply's, for an install whose id was derived, else
    /// the request's), and the status mapping. `work` gets the caller and
    /// the request once both checks pass.
    async fn handle<Req, Resp, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        requested_id: impl FnOnce(&Req) -> Option<String>,
        work: impl FnOnce(Arc<Caller>, Request<Req>) -> Fut,
    ) -> std::result::Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: Audited,
        Fut: std::future::Future<Output = Result<Response<Resp>>>,
    {
        let caller = auth::caller(&request)?;
        let requested = requested_id(request.get_ref());
        let result = match check_size(request.get_ref()) {
            Err(e) => Err(e),
            Ok(()) => work(Arc::clone(&caller), request).await,
        };
        let named = result
            .as_ref()
            .ok()
            .and_then(|r| r.get_ref().connection_id())
            .or(requested);
        self.audit(&caller, rpc, named.as_deref(), &result);
        result.map_err(Status::from)
    }
}

/// The connection a reply names, for the audit record: an install's, whose
/// id may be derived from the grant; `None` for every other reply (the
/// request's id is recorded).
trait Audited {
    fn connection_id(&self) -> Option<String> {
        None
    }
}

impl Audited for pb::InstallResponse {
    fn connection_id(&self) -> Option<String> {
        self.connection.as_ref().map(|c| c.connection_id.clone())
    }
}

impl Audited for pb::GetTokenResponse {}
impl Audited for pb::ForceRefreshResponse {}
impl Audited for pb::GetConnectionResponse {}
impl Audited for pb::ListConnectionsResponse {}
impl Audited for pb::DeleteConnectionResponse {}
impl Audited for pb::ListWebhooksResponse {}
impl Audited for WatchStream {}
impl Audited for ExportStream {}
impl Audited for FeedStream {}

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    type WatchConnectionStream = WatchStream;
    type ExportConnectionsStream = ExportStream;
    type WatchConnectionsStream = FeedStream;

    async fn watch_connections(
        &self,
        request: Request<pb::WatchConnectionsRequest>,
    ) -> std::result::Result<Response<FeedStream>, Status> {
        self.handle(
            "WatchConnections",
            request,
            |_| None,
            |caller, request| async move {
                let gate = crate::transport::backpressure::of_request(&request);
                self.watch_connections_inner(&caller, request.into_inner(), gate)
                    .await
            },
        )
        .await
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> std::result::Result<Response<pb::ListWebhooksResponse>, Status> {
        self.handle(
            "ListWebhooks",
            request,
            |_| None,
            |caller, _| async move { self.list_webhooks_inner(&caller).map(Response::new) },
        )
        .await
    }

    async fn export_connections(
        &self,
        request: Request<pb::ExportConnectionsRequest>,
    ) -> std::result::Result<Response<ExportStream>, Status> {
        self.handle(
            "ExportConnections",
            request,
            |_| None,
            |caller, _| async move { self.export(&caller).map(Response::new) },
        )
        .await
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> std::result::Result<Response<pb::GetTokenResponse>, Status> {
        self.handle(
            "GetToken",
            request,
            |r| Some(r.connection_id.clone()),
            |caller, request| async move { self.get_token_inner(&caller, request).await },
        )
        .await
    }

    async fn force_refresh(
        &self,
        request: Request<pb::ForceRefreshRequest>,
    ) -> std::result::Result<Response<pb::ForceRefreshResponse>, Status> {
        self.handle(
            "ForceRefresh",
            request,
            |r| Some(r.connection_id.clone()),
            |caller, request| async move { self.force_refresh_inner(&caller, request).await },
        )
        .await
    }

    async fn watch_connection(
        &self,
        request: Request<pb::WatchConnectionRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        self.handle(
            "WatchConnection",
            request,
            |r| Some(r.connection_id.clone()),
            |caller, request| async move { self.watch_connection_inner(&caller, request).await },
        )
        .await
    }

    async fn install(
        &self,
        request: Request<pb::InstallRequest>,
    ) -> std::result::Result<Response<pb::InstallResponse>, Status> {
        self.handle(
            "Install",
            request,
            |r| Some(r.connection_id.clone()).filter(|id| !id.is_empty()),
            |caller, request| async move { self.install_inner(&caller, request).await },
        )
        .await
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> std::result::Result<Response<pb::GetConnectionResponse>, Status> {
        self.handle(
            "GetConnection",
            request,
            |r| Some(r.connection_id.clone()),
            |caller, request| async move { self.get_connection_inner(&caller, request).await },
        )
        .await
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> std::result::Result<Response<pb::ListConnectionsResponse>, Status> {
        self.handle(
            "ListConnections",
            request,
            |_| None,
            |caller, request| async move { self.list_connections_inner(&caller, request).await },
        )
        .await
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> std::result::Result<Response<pb::DeleteConnectionResponse>, Status> {
        self.handle(
            "DeleteConnection",
            request,
            |r| Some(r.connection_id.clone()),
            |caller, request| async move { self.delete_connection_inner(&caller, request).await },
        )
        .await
    }
}
