//! The `tokend.v1.TokenService` gRPC implementation: validates requests,
//! calls the engine, and converts results. Errors leave through
//! `ServiceError::to_status` only.

use std::{pin::Pin, sync::Arc, time::Duration};

use base64::Engine as _;
use secrecy::SecretString;
use tokend_core::{ConnectionId, ProviderName, Status as ConnStatus};
use tokend_proto::v1::{self as pb, token_service_server::TokenService};
use tokend_store::ListQuery;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    MAX_REQUEST_BYTES, ServiceError,
    auth::{self, Caller, Permission},
    convert,
    engine::{Engine, Rejected},
    hub::EventKind,
    install::{InstallGrant, InstallInput},
};

/// Largest `min_ttl_seconds` accepted (a day): no provider issues longer
/// tokens that need brokering.
const MAX_MIN_TTL: i64 = 24 * 3600;
/// Largest imported `expires_in_seconds` (400 days).
const MAX_IMPORT_TTL: i64 = 400 * 24 * 3600;
const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_ACCOUNT_ID_LEN: usize = 256;
const MAX_SCOPES: usize = 200;
const DEFAULT_PAGE_SIZE: i32 = 100;
const MAX_PAGE_SIZE: i32 = 1000;

/// The gRPC service: a thin layer over the engine.
pub struct TokenServiceImpl {
    /// Does the work; shared with the background refresher.
    engine: Arc<Engine>,
    /// Where every call is recorded.
    audit_log: crate::audit::AuditLog,
    /// Fires at shutdown so watch streams end cleanly instead of holding the
    /// server open.
    shutdown: CancellationToken,
}

impl TokenServiceImpl {
    pub fn new(
        engine: Arc<Engine>,
        audit_log: crate::audit::AuditLog,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            engine,
            audit_log,
            shutdown,
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// The stream `WatchConnection` returns.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchConnectionResponse, Status>> + Send>>;

fn connection_id(raw: &str) -> Result<ConnectionId> {
    ConnectionId::new(raw).map_err(|e| ServiceError::invalid("connection_id", e.to_string()))
}

fn provider_name(engine: &Engine, raw: &str) -> Result<ProviderName> {
    let name =
        ProviderName::new(raw).map_err(|e| ServiceError::invalid("provider", e.to_string()))?;
    if engine.provider(&name).is_none() {
        let mut known: Vec<_> = engine.provider_names().map(|p| p.to_string()).collect();
        known.sort();
        return Err(ServiceError::invalid(
            "provider",
            format!("unknown provider {raw:?}; configured: {}", known.join(", ")),
        ));
    }
    Ok(name)
}

/// A secret field: present, bounded, and free of whitespace.
fn secret(field: &'static str, raw: String, required: bool) -> Result<Option<SecretString>> {
    if raw.is_empty() {
        return if required {
            Err(ServiceError::invalid(field, "must not be empty"))
        } else {
            Ok(None)
        };
    }
    if raw.len() > MAX_TOKEN_LEN {
        return Err(ServiceError::invalid(
            field,
            format!("must be at most {MAX_TOKEN_LEN} bytes"),
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ServiceError::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(Some(SecretString::from(raw)))
}

fn printable(field: &'static str, raw: &str, max: usize) -> Result<()> {
    if raw.len() > max {
        return Err(ServiceError::invalid(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn install_input(engine: &Engine, req: pb::InstallRequest) -> Result<InstallInput> {
    let provider = provider_name(engine, &req.provider)?;
    let connection_id = match req.connection_id.as_str() {
        "" => None,
        raw => Some(connection_id(raw)?),
    };
    printable("account_id", &req.account_id, MAX_ACCOUNT_ID_LEN)?;
    let account_id = (!req.account_id.is_empty()).then_some(req.account_id);
    let grant = match req.grant {
        None => {
            return Err(ServiceError::invalid(
                "grant",
                "set authorization_code or token_import",
            ));
        }
        Some(pb::install_request::Grant::AuthorizationCode(c)) => {
            printable("authorization_code.redirect_uri", &c.redirect_uri, 2048)?;
            let code_verifier = secret("authorization_code.code_verifier", c.code_verifier, false)?;
            if let Some(v) = &code_verifier {
                use secrecy::ExposeSecret;
                // RFC 7636 §4.1.
                if !(43..=128).contains(&v.expose_secret().len()) {
                    return Err(ServiceError::invalid(
                        "authorization_code.code_verifier",
                        "must be 43 to 128 characters (RFC 7636)",
                    ));
                }
            }
            InstallGrant::Code {
                code: secret("authorization_code.code", c.code, true)?.unwrap_or_default(),
                redirect_uri: c.redirect_uri,
                code_verifier,
            }
        }
        Some(pb::install_request::Grant::TokenImport(t)) => {
            if account_id.is_none() && connection_id.is_none() {
                return Err(ServiceError::invalid(
                    "account_id",
                    "required for a token import without connection_id",
                ));
            }
            if !(0..=MAX_IMPORT_TTL).contains(&t.expires_in_seconds) {
                return Err(ServiceError::invalid(
                    "token_import.expires_in_seconds",
                    format!("must be between 0 and {MAX_IMPORT_TTL}"),
                ));
            }
            if t.scopes.len() > MAX_SCOPES {
                return Err(ServiceError::invalid(
                    "token_import.scopes",
                    format!("at most {MAX_SCOPES} scopes"),
                ));
            }
            if t.scopes.iter().any(|s| {
                s.is_empty()
                    || s.len() > 256
                    || s.chars().any(|c| c.is_whitespace() || c.is_control())
            }) {
                return Err(ServiceError::invalid(
                    "token_import.scopes",
                    "each scope must be 1 to 256 characters without whitespace",
                ));
            }
            let token_type = match t.token_type.as_str() {
                "" => "Bearer".to_owned(),
                tt if tt.len() <= 32
                    && tt.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    tt.to_owned()
                }
                _ => {
                    return Err(ServiceError::invalid(
                        "token_import.token_type",
                        "must be up to 32 letters, digits or '-'",
                    ));
                }
            };
            InstallGrant::Import {
                access_token: secret("token_import.access_token", t.access_token, true)?
                    .unwrap_or_default(),
                refresh_token: secret("token_import.refresh_token", t.refresh_token, false)?,
                expires_in: Duration::from_secs(t.expires_in_seconds as u64),
                scopes: t.scopes,
                token_type,
            }
        }
    };
    Ok(InstallInput {
        provider,
        connection_id,
        account_id,
        grant,
    })
}

fn page_token_encode(id: &ConnectionId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_str())
}

fn page_token_decode(token: &str) -> Result<Option<ConnectionId>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token", "not a token from a previous response");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let s = String::from_utf8(bytes).map_err(|_| invalid())?;
    ConnectionId::new(s).map(Some).map_err(|_| invalid())
}

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
                Err((code_name(status.code()), reason))
            }
        };
        self.audit_log.record(
            self.engine.clock.now(),
            &caller.name,
            rpc,
            connection_id,
            outcome,
        );
    }

    fn connection_pb(&self, c: &tokend_core::Connection) -> pb::Connection {
        convert::connection(c, self.engine.scheduler.next_due(&c.id))
    }

    /// One page of the connections `caller` may see.
    async fn list(
        &self,
        caller: &Caller,
        req: pb::ListConnectionsRequest,
    ) -> Result<pb::ListConnectionsResponse> {
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                ));
            }
        } as usize;
        let provider = match req.provider.as_str() {
            "" => None,
            raw => Some(
                ProviderName::new(raw)
                    .map_err(|e| ServiceError::invalid("provider", e.to_string()))?,
            ),
        };
        let status = match pb::ConnectionStatus::try_from(req.status) {
            Ok(pb::ConnectionStatus::Unspecified) => None,
            Ok(pb::ConnectionStatus::Active) => Some(ConnStatus::Active),
            Ok(pb::ConnectionStatus::ReconnectRequired) => Some(ConnStatus::ReconnectRequired),
            Err(_) => {
                return Err(ServiceError::invalid(
                    "status",
                    format!("unknown status {}", req.status),
                ));
            }
        };
        // Read store pages until this caller's page is full: connections it
        // may not see are skipped, never shown and never counted.
        let mut after = page_token_decode(&req.page_token)?;
        let mut records = Vec::new();
        let mut exhausted = false;
        while records.len() <= page_size {
            let batch = self
                .engine
                .store
                .list(&ListQuery {
                    after: after.clone(),
                    limit: page_size + 1,
                    provider: provider.clone(),
                    status,
                })
                .await?;
            let Some(last) = batch.last() else {
                exhausted = true;
                break;
            };
            after = Some(last.id.clone());
            let short = batch.len() <= page_size;
            records.extend(
                batch
                    .into_iter()
                    .filter(|c| caller.may(Permission::Tokens, Some(&c.id))),
            );
            if short {
                exhausted = true;
                break;
            }
        }
        let next_page_token = if records.len() > page_size || (!exhausted && !records.is_empty()) {
            records.truncate(page_size);
            records
                .last()
                .map(|c| page_token_encode(&c.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListConnectionsResponse {
            connections: records.iter().map(|c| self.connection_pb(c)).collect(),
            next_page_token,
        })
    }
}

/// Refuses requests larger than [`MAX_REQUEST_BYTES`] with a precise
/// INVALID_ARGUMENT. (Beyond 4x that, tonic's own decoding limit answers
/// OUT_OF_RANGE before the request is even decoded.)
fn check_size(message: &impl prost::Message) -> std::result::Result<(), Status> {
    let size = message.encoded_len();
    if size > MAX_REQUEST_BYTES {
        return Err(ServiceError::invalid(
            "request",
            format!("is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes"),
        )
        .to_status());
    }
    Ok(())
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

fn watch_event(
    kind: pb::WatchEventType,
    c: &pb::Connection,
    at: tokend_core::Timestamp,
) -> pb::WatchConnectionResponse {
    pb::WatchConnectionResponse {
        event_type: kind as i32,
        connection: Some(c.clone()),
        event_time: Some(convert::timestamp(at)),
    }
}

fn event_type(kind: EventKind) -> pb::WatchEventType {
    match kind {
        EventKind::TokenRotated => pb::WatchEventType::TokenRotated,
        EventKind::StatusChanged => pb::WatchEventType::StatusChanged,
        EventKind::RefreshFailed => pb::WatchEventType::RefreshFailed,
        EventKind::Deleted => pb::WatchEventType::Deleted,
    }
}

impl TokenServiceImpl {
    async fn get_token_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>> {
        let req = request.into_inner();
        let id = connection_id(&req.connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        if !(0..=MAX_MIN_TTL).contains(&req.min_ttl_seconds) {
            return Err(ServiceError::invalid(
                "min_ttl_seconds",
                format!("must be between 0 and {MAX_MIN_TTL}"),
            ));
        }
        let min_ttl = Duration::from_secs(req.min_ttl_seconds as u64);
        let record = self.engine.get_token(&id, min_ttl).await?;
        let token = convert::access_token(&record, self.engine.clock.now());
        Ok(Response::new(pb::GetTokenResponse { token: Some(token) }))
    }

    async fn force_refresh_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::ForceRefreshRequest>,
    ) -> Result<Response<pb::ForceRefreshResponse>> {
        let req = request.into_inner();
        let id = connection_id(&req.connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        let rejected = match req.rejected {
            None => Rejected::Unspecified,
            Some(pb::force_refresh_request::Rejected::RejectedAccessToken(t)) => {
                if t.is_empty() || t.len() > MAX_TOKEN_LEN {
                    return Err(ServiceError::invalid(
                        "rejected_access_token",
                        format!("must be 1 to {MAX_TOKEN_LEN} bytes"),
                    ));
                }
                Rejected::AccessToken(t)
            }
            Some(pb::force_refresh_request::Rejected::RejectedVersion(v)) => Rejected::Version(v),
        };
        let (record, refreshed) = self.engine.force_refresh(&id, rejected).await?;
        let token = convert::access_token(&record, self.engine.clock.now());
        Ok(Response::new(pb::ForceRefreshResponse {
            token: Some(token),
            refreshed,
        }))
    }

    async fn watch_connection_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::WatchConnectionRequest>,
    ) -> Result<Response<WatchStream>> {
        let id = connection_id(&request.into_inner().connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        let slot = caller.open_watch_stream()?;
        // Subscribe before reading: a change landing in between is then
        // delivered, never lost.
        let mut events = self.engine.hub.subscribe(&id);
        let current = match self.engine.cached(&id).await {
            Ok(current) => current,
            Err(e) => {
                drop(events);
                self.engine.hub.release(&id);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let engine = Arc::clone(&self.engine);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Held for the stream's life: frees the caller's slot at the end.
            let _slot = slot;
            let pb_of = |c: &tokend_core::Connection| {
                convert::connection(c, engine.scheduler.next_due(&c.id))
            };
            let mut last_revision = current.revision;
            // The last state sent, for a DELETED event after a lag.
            let mut last_seen = Arc::clone(&current);
            let snapshot = watch_event(
                pb::WatchEventType::Snapshot,
                &pb_of(&current),
                engine.clock.now(),
            );
            let sent = tokio::select! {
                sent = tx.send(Ok(snapshot)) => sent.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if sent {
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                        event = events.recv() => event,
                    };
                    let (out, last) = match message {
                        Ok(event) => {
                            let deleted = event.kind == EventKind::Deleted;
                            if !deleted && event.connection.revision <= last_revision {
                                continue; // already covered by the snapshot
                            }
                            last_revision = event.connection.revision;
                            last_seen = Arc::clone(&event.connection);
                            (
                                Ok(watch_event(
                                    event_type(event.kind),
                                    &pb_of(&event.connection),
                                    event.at,
                                )),
                                deleted,
                            )
                        }
                        Err(RecvError::Lagged(skipped)) => {
                            tracing::debug!(connection_id = %id, skipped, "watcher lagged; resending a snapshot");
                            match engine.store.get(&id).await {
                                Ok(Some(record)) if record.incarnation == last_seen.incarnation => {
                                    last_revision = record.revision;
                                    (
                                        Ok(watch_event(
                                            pb::WatchEventType::Snapshot,
                                            &pb_of(&record),
                                            engine.clock.now(),
                                        )),
                                        false,
                                    )
                                }
                                // Deleted (and maybe re-created) while we
                                // lagged: this stream's connection is gone.
                                Ok(_) => (
                                    Ok(watch_event(
                                        pb::WatchEventType::Deleted,
                                        &pb_of(&last_seen),
                                        engine.clock.now(),
                                    )),
                                    true,
                                ),
                                Err(e) => (Err(ServiceError::from(e).to_status()), true),
                            }
                        }
                        Err(RecvError::Closed) => break,
                    };
                    // A client that stops reading must not hold shutdown up.
                    let sent = tokio::select! {
                        sent = tx.send(out) => sent.is_ok(),
                        _ = shutdown.cancelled() => false,
                    };
                    if !sent || last {
                        break;
                    }
                }
            }
            drop(events);
            engine.hub.release(&id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn install_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::InstallRequest>,
    ) -> Result<Response<pb::InstallResponse>> {
        let input = install_input(&self.engine, request.into_inner())?;
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
        let outcome = self.engine.install(input).await?;
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
        let record = self
            .engine
            .store
            .get(&id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
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
        let id = connection_id(&request.into_inner().connection_id)?;
        caller.authorize(Permission::Admin, Some(&id))?;
        self.engine.delete(&id).await?;
        Ok(Response::new(pb::DeleteConnectionResponse {}))
    }
}

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    type WatchConnectionStream = WatchStream;

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> std::result::Result<Response<pb::GetTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.get_token_inner(&caller, request).await;
        self.audit(&caller, "GetToken", connection_id.as_deref(), &result);
        result.map_err(Status::from)
    }

    async fn force_refresh(
        &self,
        request: Request<pb::ForceRefreshRequest>,
    ) -> std::result::Result<Response<pb::ForceRefreshResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.force_refresh_inner(&caller, request).await;
        self.audit(&caller, "ForceRefresh", connection_id.as_deref(), &result);
        result.map_err(Status::from)
    }

    async fn watch_connection(
        &self,
        request: Request<pb::WatchConnectionRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.watch_connection_inner(&caller, request).await;
        self.audit(
            &caller,
            "WatchConnection",
            connection_id.as_deref(),
            &result,
        );
        result.map_err(Status::from)
    }

    async fn install(
        &self,
        request: Request<pb::InstallRequest>,
    ) -> std::result::Result<Response<pb::InstallResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.install_inner(&caller, request).await;
        self.audit(&caller, "Install", connection_id.as_deref(), &result);
        result.map_err(Status::from)
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> std::result::Result<Response<pb::GetConnectionResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.get_connection_inner(&caller, request).await;
        self.audit(&caller, "GetConnection", connection_id.as_deref(), &result);
        result.map_err(Status::from)
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> std::result::Result<Response<pb::ListConnectionsResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = None::<String>;
        let result = self.list_connections_inner(&caller, request).await;
        self.audit(
            &caller,
            "ListConnections",
            connection_id.as_deref(),
            &result,
        );
        result.map_err(Status::from)
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> std::result::Result<Response<pb::DeleteConnectionResponse>, Status> {
        let caller = auth::caller(&request)?;
        check_size(request.get_ref())?;
        let connection_id = Some(request.get_ref().connection_id.clone());
        let result = self.delete_connection_inner(&caller, request).await;
        self.audit(
            &caller,
            "DeleteConnection",
            connection_id.as_deref(),
            &result,
        );
        result.map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = ConnectionId::new("hubspot-1").unwrap();
        assert_eq!(
            page_token_decode(&page_token_encode(&id)).unwrap(),
            Some(id)
        );
        assert_eq!(page_token_decode("").unwrap(), None);
        assert!(page_token_decode("!!!").is_err());
        assert!(
            page_token_decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a b"))
                .is_err()
        );
    }
}
