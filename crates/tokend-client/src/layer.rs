//! Refresh-and-retry as a `tower::Layer`, for hyper, tonic and any other
//! tower-based HTTP client: the same rules as the reqwest middleware.
//!
//! A request gets `Authorization: Bearer` with the connection's token. An
//! answer of HTTP 401, or a gRPC `UNAUTHENTICATED` (`grpc-status: 16` in the
//! headers of a trailers-only response), makes tokend refresh the token
//! (`ForceRefresh` with the rejected version) and the request is sent once
//! more. Only idempotent methods are replayed unless the caller opts in
//! (gRPC calls are all POSTs); a replayed request's body is buffered in
//! memory first, so it can be sent twice. A replay rejected again is
//! [`Error::StillUnauthorized`] unless built with
//! `second_401(Second401::Return)`, as in the reqwest middleware.
//!
//! ```no_run
//! # async fn demo(tokend: tokend_client::Client) {
//! use tower::ServiceBuilder;
//! use tokend_client::layer::TokendAuthLayer;
//! let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<http_body_util::Full<bytes::Bytes>>();
//! let client = ServiceBuilder::new()
//!     .layer(TokendAuthLayer::new(tokend, "hubspot-portal-123"))
//!     .service(http);
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::BodyExt as _;
use secrecy::ExposeSecret as _;

use crate::{
    Client, Rejected, Token,
    error::Error,
    middleware::{ConnectionId, Second401, may_replay},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Adds [`TokendAuthService`] around a service.
#[derive(Clone)]
pub struct TokendAuthLayer {
    client: Client,
    connection_id: String,
    replay_non_idempotent: bool,
    second_401: Second401,
}

impl TokendAuthLayer {
    /// Tokens of `connection_id` for every request (a request may name
    /// another with a [`ConnectionId`] extension).
    pub fn new(client: Client, connection_id: impl Into<String>) -> Self {
        Self {
            client,
            connection_id: connection_id.into(),
            replay_non_idempotent: false,
            second_401: Second401::Raise,
        }
    }

    /// What a rejection of the replay becomes: [`Second401::Raise`]
    /// (default) or [`Second401::Return`] (the response is handed over).
    pub fn second_401(mut self, second: Second401) -> Self {
        self.second_401 = second;
        self
    }

    /// Also replay POST and PATCH (and so gRPC calls) after a rejection.
    /// Only for calls where a second delivery is safe.
    pub fn replay_non_idempotent(mut self, yes: bool) -> Self {
        self.replay_non_idempotent = yes;
        self
    }
}

impl<S> tower::Layer<S> for TokendAuthLayer {
    type Service = TokendAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokendAuthService {
            inner,
            auth: self.clone(),
        }
    }
}

/// Authorizes requests with tokens from tokend; see the module docs.
#[derive(Clone)]
pub struct TokendAuthService<S> {
    inner: S,
    auth: TokendAuthLayer,
}

/// What the service fails with: tokend's answer, typed (a
/// `ReconnectRequired` among them), or the inner service's own error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError<E> {
    #[error(transparent)]
    Tokend(#[from] Error),
    /// The request body could not be read for buffering.
    #[error("cannot buffer the request body for a replay: {0}")]
    Body(BoxError),
    #[error(transparent)]
    Service(E),
}

impl<E> AuthError<E> {
    /// The tokend error, if that is what this is.
    pub fn tokend(&self) -> Option<&Error> {
        match self {
            AuthError::Tokend(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the connection needs its user back (the grant is revoked).
    pub fn is_reconnect_required(&self) -> bool {
        matches!(self, AuthError::Tokend(Error::ReconnectRequired { .. }))
    }
}

fn authorize<B>(request: &mut Request<B>, token: &Token) -> Result<(), Error> {
    let value = HeaderValue::from_str(&format!("Bearer {}", token.access_token.expose_secret()))
        .map_err(|_| Error::InvalidArgument {
            field: "access_token".into(),
            description: "not valid in an HTTP header".into(),
            reason: String::new(),
        })?;
    request.headers_mut().insert(AUTHORIZATION, value);
    Ok(())
}

/// An HTTP 401, or a gRPC UNAUTHENTICATED answered without a body.
fn rejected<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"16")
}

impl<S, B, RB> tower::Service<Request<B>> for TokendAuthService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = AuthError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(AuthError::Service)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was made ready serves this call; the clone
        // stays for the next (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let connection_id = request
                .extensions()
                .get::<ConnectionId>()
                .map_or_else(|| auth.connection_id.clone(), |c| c.0.clone());
            let token = auth.client.token(&connection_id).await?;
            let replay = may_replay(request.method(), auth.replay_non_idempotent);
            let (parts, body) = request.into_parts();
            let (mut first, again) = if replay {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| AuthError::Body(e.into()))?
                    .to_bytes();
                let again = Request::from_parts(parts.clone(), B::from(bytes.clone()));
                (Request::from_parts(parts, B::from(bytes)), Some(again))
            } else {
                (Request::from_parts(parts, body), None)
            };
            authorize(&mut first, &token)?;
            let response = inner.call(first).await.map_err(AuthError::Service)?;
            if !rejected(&response) {
                return Ok(response);
            }
            // Refresh (or pick up a refresh someone else made): the next
            // request carries a good token either way.
            let (fresh, _) = auth
                .client
                .force_refresh(&connection_id, Rejected::Version(token.version))
                .await?;
            let Some(mut again) = again else {
                tracing::debug!(
                    connection_id,
                    "rejected non-idempotent request: not replayed"
                );
                return Ok(response);
            };
            authorize(&mut again, &fresh)?;
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(AuthError::Service)?;
            let response = inner.call(again).await.map_err(AuthError::Service)?;
            if rejected(&response) && auth.second_401 == Second401::Raise {
                // A gRPC UNAUTHENTICATED counts as HTTP 401.
                return Err(AuthError::Tokend(Error::StillUnauthorized {
                    connection_id,
                    status: StatusCode::UNAUTHORIZED.as_u16(),
                }));
            }
            Ok(response)
        })
    }
}
