//! GetToken and ForceRefresh: their fields, the engine call, and the reply,
//! the only place an access token is copied into one. With the handler
//! shape (`mod.rs`), the engine's `get_token` and the slot, the whole
//! cache-hit walk.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use tokend_core::{Connection, Timestamp};
use tokend_engine::engine::Rejected;
use tokend_proto::v1 as pb;
use tonic::{Request, Response};

use super::{
    Result, TokenServiceImpl,
    validate::{MAX_MIN_TTL, MAX_TOKEN_LEN, connection_id},
};
use crate::{
    auth::{Caller, Permission},
    convert::{reconnect_cause, status, timestamp},
    error::ServiceError,
};

impl TokenServiceImpl {
    pub(super) async fn get_token_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>> {
        let req = request.into_inner();
        let id = connection_id(&req.connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        let min_ttl = min_ttl(req.min_ttl_seconds)?;
        let record = self.engine.get_token(&id, min_ttl).await?;
        let token = access_token(&record, self.engine.now());
        self.engine
            .metrics()
            .served_ttl
            .observe(token.expires_in_seconds as f64);
        let mut response = Response::new(pb::GetTokenResponse { token: Some(token) });
        if record.status != tokend_core::Status::Active {
            // A still-valid token of a connection whose grant was lost in
            // transit: served, with the truth beside it.
            status_metadata(&record, response.metadata_mut());
        }
        Ok(response)
    }

    pub(super) async fn force_refresh_inner(
        &self,
        caller: &Arc<Caller>,
        request: Request<pb::ForceRefreshRequest>,
    ) -> Result<Response<pb::ForceRefreshResponse>> {
        let req = request.into_inner();
        let id = connection_id(&req.connection_id)?;
        caller.authorize(Permission::Tokens, Some(&id))?;
        let rejected = rejected(req.rejected)?;
        let (record, refreshed) = self.engine.force_refresh(&id, rejected).await?;
        let token = access_token(&record, self.engine.now());
        self.engine
            .metrics()
            .served_ttl
            .observe(token.expires_in_seconds as f64);
        Ok(Response::new(pb::ForceRefreshResponse {
            token: Some(token),
            refreshed,
        }))
    }
}

/// `GetTokenRequest.min_ttl_seconds`.
fn min_ttl(raw: i64) -> Result<Duration> {
    if !(0..=MAX_MIN_TTL).contains(&raw) {
        return Err(ServiceError::invalid(
            "min_ttl_seconds",
            format!("must be between 0 and {MAX_MIN_TTL}"),
        ));
    }
    Ok(Duration::from_secs(raw as u64))
}

/// `ForceRefreshRequest.rejected`.
fn rejected(raw: Option<pb::force_refresh_request::Rejected>) -> Result<Rejected> {
    Ok(match raw {
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
    })
}

/// The access token reply. `now` should be read just before sending, so
/// `expires_in_seconds` is relative to when the caller receives it.
fn access_token(c: &Connection, now: Timestamp) -> pb::AccessToken {
    pb::AccessToken {
        connection_id: c.id.to_string(),
        access_token: c.tokens.access_token.expose_secret().to_owned(),
        token_type: c.tokens.token_type.clone(),
        expires_at: Some(timestamp(c.tokens.expires_at)),
        expires_in_seconds: c.tokens.ttl(now).as_secs() as i64,
        scopes: c.tokens.scopes.clone(),
        account_id: c.account_id.clone(),
        version: c.version,
    }
}

/// Response metadata naming a connection's status and reconnect cause
/// (`tokend-connection-status: RECONNECT_REQUIRED`,
/// `tokend-reconnect-cause: ROTATION_LOST`), for a token served from a
/// connection that is not ACTIVE.
fn status_metadata(c: &Connection, metadata: &mut tonic::metadata::MetadataMap) {
    let status = status(c.status).as_str_name();
    let status = status.trim_start_matches("CONNECTION_STATUS_");
    if let Ok(v) = status.parse() {
        metadata.insert("tokend-connection-status", v);
    }
    if let Some(cause) = c.reconnect_cause {
        let cause = reconnect_cause(cause).as_str_name();
        if let Ok(v) = cause.trim_start_matches("RECONNECT_CAUSE_").parse() {
            metadata.insert("tokend-reconnect-cause", v);
        }
    }
}
