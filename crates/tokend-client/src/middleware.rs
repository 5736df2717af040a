//! Refresh-and-retry for outgoing HTTP, as reqwest-middleware: inject
//! `Authorization: Bearer`, and on a 401 ask tokend for a newer token and
//! retry once. Only idempotent methods are replayed unless the caller opts
//! in, because a replayed write can duplicate data.
//!
//! A replay answered 401 again is [`Error::StillUnauthorized`] by default:
//! a caller that never looks at the status must not take a rejected call
//! for data, and a fresh token that is still refused points at scopes or
//! the provider, not at expiry. `second_401(Second401::Return)` hands the
//! 401 response over instead. A non-idempotent request that is not replayed
//! gets its first 401 response back either way.

use http::{Extensions, Method, StatusCode, header::AUTHORIZATION};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use secrecy::ExposeSecret;

use crate::{Client, Rejected, Token, error::Error};

/// The connection whose token a request should carry, when it differs from
/// the middleware's default: put it in the request's extensions.
#[derive(Clone, Debug)]
pub struct ConnectionId(pub String);

/// What the HTTP helpers do when the replay with a refreshed token is
/// answered 401 again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Second401 {
    /// Fail with [`Error::StillUnauthorized`] (the default).
    #[default]
    Raise,
    /// Hand the second 401 response to the caller.
    Return,
}

/// Authorizes requests with tokens from tokend.
#[derive(Clone)]
pub struct TokendAuth {
    client: Client,
    connection_id: String,
    replay_non_idempotent: bool,
    second_401: Second401,
}

impl TokendAuth {
    /// Tokens of `connection_id` for every request through this middleware.
    pub fn new(client: Client, connection_id: impl Into<String>) -> Self {
        Self {
            client,
            connection_id: connection_id.into(),
            replay_non_idempotent: false,
            second_401: Second401::Raise,
        }
    }

    /// What a 401 to the replay becomes: [`Second401::Raise`] (default) or
    /// [`Second401::Return`].
    pub fn second_401(mut self, second: Second401) -> Self {
        self.second_401 = second;
        self
    }

    /// Also retry POST and PATCH after a 401. Only for APIs where replaying
    /// the write is safe (idempotency keys, upserts).
    pub fn replay_non_idempotent(mut self, yes: bool) -> Self {
        self.replay_non_idempotent = yes;
        self
    }
}

/// Whether a request may be sent twice: idempotent methods (RFC 9110
/// §9.2.2), or any when the caller opted in.
pub(crate) fn may_replay(method: &Method, replay_non_idempotent: bool) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || replay_non_idempotent
}

/// Reaches tokend's typed error inside a `reqwest_middleware::Error`
/// without downcasting by hand.
pub trait MiddlewareErrorExt {
    /// The tokend error this is, if any (`ReconnectRequired`, `Unavailable`...).
    fn tokend(&self) -> Option<&Error>;

    /// Whether the connection needs its user back (the grant is revoked).
    fn is_reconnect_required(&self) -> bool {
        matches!(self.tokend(), Some(Error::ReconnectRequired { .. }))
    }
}

impl MiddlewareErrorExt for reqwest_middleware::Error {
    fn tokend(&self) -> Option<&Error> {
        match self {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

fn authorize(request: &mut Request, token: &Token) -> reqwest_middleware::Result<()> {
    let value = format!("Bearer {}", token.access_token.expose_secret())
        .parse()
        .map_err(|_| {
            reqwest_middleware::Error::middleware(Error::InvalidArgument {
                field: "access_token".into(),
                description: "not valid in an HTTP header".into(),
                reason: String::new(),
            })
        })?;
    request.headers_mut().insert(AUTHORIZATION, value);
    Ok(())
}

#[async_trait::async_trait]
impl Middleware for TokendAuth {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let connection_id = extensions
            .get::<ConnectionId>()
            .map(|c| c.0.clone())
            .unwrap_or_else(|| self.connection_id.clone());
        let token = self
            .client
            .token(&connection_id)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        authorize(&mut request, &token)?;
        // A streaming body cannot be cloned, so cannot be replayed either.
        let replay = if may_replay(request.method(), self.replay_non_idempotent) {
            request.try_clone()
        } else {
            None
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Refresh (or pick up a refresh someone else already made): the next
        // request carries a good token either way.
        let (fresh, _) = self
            .client
            .force_refresh(&connection_id, Rejected::Version(token.version))
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let Some(mut retry) = replay else {
            tracing::debug!(
                connection_id,
                "401 on a non-idempotent request: not replayed"
            );
            return Ok(response);
        };
        authorize(&mut retry, &fresh)?;
        let response = next.run(retry, extensions).await?;
        if response.status() == StatusCode::UNAUTHORIZED && self.second_401 == Second401::Raise {
            // The response (and its connection) is dropped here; no token
            // is in the error.
            return Err(reqwest_middleware::Error::middleware(
                Error::StillUnauthorized {
                    connection_id,
                    status: StatusCode::UNAUTHORIZED.as_u16(),
                },
            ));
        }
        Ok(response)
    }
}
