//! The Rust client for tokend: typed calls and errors, deadlines, retries
//! across broker restarts, a local token cache with singleflight, watch
//! streams that resume, and refresh-and-retry middleware for reqwest.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tokend_client::Error> {
//! let tokend = tokend_client::Client::builder("http://127.0.0.1:50051").api_key("KEY").connect().await?;
//! let token = tokend.token("hubspot-portal-123").await?;
//! # Ok(()) }
//! ```

mod error;
pub mod events;
mod install;
pub mod layer;
pub mod middleware;
mod watch;

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use error::Error;
pub use events::{ConnectionEvent, EventFilter, EventStream, EventType};
pub use install::{Install, Installed};
pub use middleware::Second401;
use secrecy::SecretString;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokio::time::Instant;
use tonic::{
    Request,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
pub use watch::{WatchEvent, WatchEventKind};

pub use tokend_proto::v1::{Connection, ConnectionStatus};

/// An access token as tokend handed it out.
#[derive(Clone, Debug)]
pub struct Token {
    pub connection_id: String,
    /// The secret; `expose_secret()` it into an Authorization header only.
    pub access_token: SecretString,
    pub token_type: String,
    /// When it expires by this process's monotonic clock, computed from the
    /// `expires_in_seconds` tokend sent, so clock skew does not matter.
    pub expires_at: Instant,
    pub version: u64,
    pub scopes: Vec<String>,
    pub account_id: String,
    /// Validity left when it was received, for sizing the cache margin.
    received_ttl: Duration,
}

impl Token {
    fn from_pb(t: pb::AccessToken, received: Instant) -> Self {
        Token {
            connection_id: t.connection_id,
            access_token: SecretString::from(t.access_token),
            token_type: t.token_type,
            expires_at: received + Duration::from_secs(t.expires_in_seconds.max(0) as u64),
            version: t.version,
            scopes: t.scopes,
            account_id: t.account_id,
            received_ttl: Duration::from_secs(t.expires_in_seconds.max(0) as u64),
        }
    }

    /// Time left before expiry.
    pub fn ttl(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

/// What a `ForceRefresh` names as rejected upstream.
#[derive(Clone, Debug)]
pub enum Rejected {
    /// The version the token came with (preferred: no secret on the wire).
    Version(u64),
    AccessToken(SecretString),
    /// Refresh whatever is current.
    Unconditional,
}

/// Sends the API key with every call.
#[derive(Clone)]
struct ApiKey(Option<AsciiMetadataValue>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(request)
    }
}

/// Configures a [`Client`].
pub struct ClientBuilder {
    endpoint: String,
    api_key: Option<String>,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    transport_retries: u32,
    cache_margin: Duration,
    cache_capacity: NonZeroUsize,
}

/// Connections whose tokens the client keeps by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

impl ClientBuilder {
    /// Sends `key` as `x-api-key` on every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// TLS with the CA that signed tokend's certificate, and optionally a
    /// client certificate (mutual TLS).
    pub fn tls(mut self, ca_pem: &[u8], domain: &str, client: Option<(&[u8], &[u8])>) -> Self {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(domain);
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        self.tls = Some(tls);
        self
    }

    /// Deadline of every unary call attempt (default 10 s); past it the
    /// call fails with [`Error::DeadlineExceeded`], not retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries of a call that could not reach the broker (default 5, with
    /// exponential backoff from 100 ms), to ride out a restart.
    pub fn transport_retries(mut self, retries: u32) -> Self {
        self.transport_retries = retries;
        self
    }

    /// The cache hands out a token only while more than this is left
    /// (default 30 s, capped at a quarter of the token's lifetime).
    pub fn cache_margin(mut self, margin: Duration) -> Self {
        self.cache_margin = margin;
        self
    }

    /// Most connections whose tokens are cached (default 10,000); past it
    /// the least recently used is dropped (its token zeroized), so a service
    /// touching millions of connections keeps bounded memory. 0 is taken
    /// as 1.
    pub fn cache_capacity(mut self, connections: usize) -> Self {
        self.cache_capacity = NonZeroUsize::new(connections).unwrap_or(NonZeroUsize::MIN);
        self
    }

    /// Builds the client. The channel connects lazily and reconnects by
    /// itself, so a broker that is not up yet is not an error here.
    pub async fn connect(self) -> Result<Client, Error> {
        let url = endpoint_url(&self.endpoint, self.tls.is_some());
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidArgument {
                field: "endpoint".into(),
                description: e.to_string(),
                reason: String::new(),
            })?
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(tls) = self.tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect_lazy();
        let api_key = match self.api_key {
            Some(k) => Some(k.parse().map_err(|_| Error::InvalidArgument {
                field: "api_key".into(),
                description: "not valid in a gRPC header".into(),
                reason: String::new(),
            })?),
            None => None,
        };
        Ok(Client {
            inner: TokenServiceClient::with_interceptor(channel, ApiKey(api_key)),
            endpoint: Arc::from(url),
            timeout: self.timeout,
            retries: self.transport_retries,
            cache_margin: self.cache_margin,
            cache: Arc::new(Mutex::new(lru::LruCache::new(self.cache_capacity))),
        })
    }
}

type Inner = TokenServiceClient<InterceptedService<Channel, ApiKey>>;

/// The endpoint as a URL: `host:port` gets `http://` (or `https://` with
/// TLS); a URL is kept as written. Every tokend client accepts both.
pub fn endpoint_url(endpoint: &str, tls: bool) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// One cached token per connection, each behind its own async mutex: the
/// mutex is the singleflight (one broker call per connection at a time).
/// Bounded: the least recently used connection's slot goes first (a caller
/// still holding it finishes with it; the next call starts a new one).
pub(crate) type Cache = Mutex<lru::LruCache<String, Arc<tokio::sync::Mutex<Option<Token>>>>>;

/// Drops a connection's cached token: after the broker said its grant is
/// gone (or the connection is), the cached token must not be handed out.
pub(crate) fn forget(cache: &Cache, connection_id: &str) {
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop(connection_id);
}

/// A tokend client. Cheap to clone; clones share the channel and the cache.
#[derive(Clone)]
pub struct Client {
    inner: Inner,
    /// The broker's URL, named in transport errors.
    endpoint: Arc<str>,
    /// Deadline of each unary attempt.
    timeout: Duration,
    retries: u32,
    cache_margin: Duration,
    cache: Arc<Cache>,
}

impl Client {
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            api_key: None,
            tls: None,
            timeout: Duration::from_secs(10),
            transport_retries: 5,
            cache_margin: Duration::from_secs(30),
            cache_capacity: NonZeroUsize::new(DEFAULT_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// A client with default settings and no credentials.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::builder(endpoint).connect().await
    }

    /// Runs `call`, retrying with backoff while the broker is unreachable
    /// (no gRPC status: `Transport`). An answer with a status, UNAVAILABLE
    /// with `RetryInfo` included, is returned at once; a deadline is not
    /// retried either.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Inner) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            // The deadline is the client's own too, so a broker that
            // accepts but never answers ends as DeadlineExceeded whatever
            // part of the call hangs.
            let attempt_result =
                match tokio::time::timeout(self.timeout, call(self.inner.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Error::DeadlineExceeded {
                            message: format!(
                                "no answer from {} within {:?}",
                                self.endpoint, self.timeout
                            ),
                        });
                    }
                };
            match attempt_result {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = Error::from_status(&status);
                    if !e.is_transient_transport() || attempt >= self.retries {
                        return Err(match e {
                            Error::Transport { message } => Error::Transport {
                                message: format!("{}: {message}", self.endpoint),
                            },
                            e => e,
                        });
                    }
                    attempt += 1;
                    tracing::debug!(attempt, "tokend unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A token with at least `min_ttl` left, straight from the broker.
    pub async fn get_token(&self, connection_id: &str, min_ttl: Duration) -> Result<Token, Error> {
        let request = pb::GetTokenRequest {
            connection_id: connection_id.into(),
            min_ttl_seconds: min_ttl.as_secs() as i64,
        };
        let received_by = Instant::now();
        let r = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.get_token(request).await }
            })
            .await
            .map_err(|e| self.forget_if_gone(connection_id, e))?;
        let token = r.token.ok_or_else(|| Error::Other {
            code: tonic::Code::Internal,
            message: "reply without a token".into(),
            reason: String::new(),
        })?;
        Ok(Token::from_pb(token, received_by))
    }

    fn cache_slot(&self, connection_id: &str) -> Arc<tokio::sync::Mutex<Option<Token>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = cache.get(connection_id) {
            return Arc::clone(slot);
        }
        let slot = Arc::default();
        cache.put(connection_id.to_owned(), Arc::clone(&slot));
        slot
    }

    /// Passes `e` on, first dropping the connection's cached token when `e`
    /// says the grant or the connection is gone.
    fn forget_if_gone(&self, connection_id: &str, e: Error) -> Error {
        if e.means_gone() {
            forget(&self.cache, connection_id);
        }
        e
    }

    /// How many connections' tokens are cached now.
    pub fn cached_connections(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a cached token may still be handed out: more than the margin
    /// left, the margin being at most a quarter of what it had on arrival.
    fn fresh_enough(&self, token: &Token) -> bool {
        token.ttl() > self.cache_margin.min(token.received_ttl / 4)
    }

    /// A valid token from the local cache, asking the broker only when the
    /// cached one is near expiry. Concurrent callers of one connection share
    /// a single broker call.
    pub async fn token(&self, connection_id: &str) -> Result<Token, Error> {
        let slot = self.cache_slot(connection_id);
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref()
            && self.fresh_enough(t)
        {
            return Ok(t.clone());
        }
        match self.get_token(connection_id, Duration::ZERO).await {
            Ok(token) => {
                *cached = Some(token.clone());
                Ok(token)
            }
            Err(e) => {
                // Callers already waiting on this slot must not find the
                // old token either.
                *cached = None;
                Err(e)
            }
        }
    }

    /// Replaces a token the upstream API rejected. Returns the new token and
    /// whether the provider was called.
    pub async fn force_refresh(
        &self,
        connection_id: &str,
        rejected: Rejected,
    ) -> Result<(Token, bool), Error> {
        let rejected = match rejected {
            Rejected::Version(v) => Some(pb::force_refresh_request::Rejected::RejectedVersion(v)),
            Rejected::AccessToken(t) => {
                use secrecy::ExposeSecret;
                Some(pb::force_refresh_request::Rejected::RejectedAccessToken(
                    t.expose_secret().to_owned(),
                ))
            }
            Rejected::Unconditional => None,
        };
        let request = pb::ForceRefreshRequest {
            connection_id: connection_id.into(),
            rejected,
        };
        let received_by = Instant::now();
        let r = match self
            .call(|mut c| {
                let request = request.clone();
                async move { c.force_refresh(request).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if e.means_gone() {
                    // Empty the slot under its lock, so a caller already
                    // waiting in `token` does not get the old token.
                    let slot = self
                        .cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(connection_id)
                        .cloned();
                    if let Some(slot) = slot {
                        *slot.lock().await = None;
                    }
                }
                return Err(self.forget_if_gone(connection_id, e));
            }
        };
        let token = Token::from_pb(
            r.token.ok_or_else(|| Error::Other {
                code: tonic::Code::Internal,
                message: "reply without a token".into(),
                reason: String::new(),
            })?,
            received_by,
        );
        // The cache must not hand out the rejected token again.
        *self.cache_slot(connection_id).lock().await = Some(token.clone());
        Ok((token, r.refreshed))
    }

    /// Installs (or replaces) a connection, from an authorization code,
    /// imported tokens, or nothing (client credentials): see [`Install`].
    pub async fn install(&self, install: Install) -> Result<Installed, Error> {
        let r = self.install_raw(install.into_request()?).await?;
        Ok(Installed {
            connection: r.connection.ok_or_else(|| Error::Other {
                code: tonic::Code::Internal,
                message: "reply without a connection".into(),
                reason: String::new(),
            })?,
            created: r.created,
            replayed: r.replayed,
        })
    }

    /// The low-level install, with the wire messages as they are (for
    /// tools that pass protobuf through, like the `tokend` CLI). Prefer
    /// [`Client::install`].
    pub async fn install_raw(
        &self,
        request: pb::InstallRequest,
    ) -> Result<pb::InstallResponse, Error> {
        let connection_id = request.connection_id.clone();
        let r = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.install(request).await }
            })
            .await?;
        // A re-install replaces the grant: the cached token is stale.
        if !connection_id.is_empty() {
            forget(&self.cache, &connection_id);
        }
        if let Some(c) = &r.connection {
            forget(&self.cache, &c.connection_id);
        }
        Ok(r)
    }

    pub async fn get_connection(&self, connection_id: &str) -> Result<Connection, Error> {
        let request = pb::GetConnectionRequest {
            connection_id: connection_id.into(),
        };
        let r = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.get_connection(request).await }
            })
            .await
            .map_err(|e| self.forget_if_gone(connection_id, e))?;
        r.connection.ok_or_else(|| Error::Other {
            code: tonic::Code::Internal,
            message: "reply without a connection".into(),
            reason: String::new(),
        })
    }

    /// One page of connections.
    pub async fn list_connections(
        &self,
        request: pb::ListConnectionsRequest,
    ) -> Result<pb::ListConnectionsResponse, Error> {
        self.call(|mut c| {
            let request = request.clone();
            async move { c.list_connections(request).await }
        })
        .await
    }

    pub async fn delete_connection(&self, connection_id: &str) -> Result<(), Error> {
        self.delete_connection_with(pb::DeleteConnectionRequest {
            connection_id: connection_id.into(),
            force: false,
        })
        .await
    }

    /// Deletes a connection as `request` says (`force`: even a record the
    /// broker cannot read, which may hold the only copy of a live grant).
    pub async fn delete_connection_with(
        &self,
        request: pb::DeleteConnectionRequest,
    ) -> Result<(), Error> {
        let connection_id = request.connection_id.clone();
        self.call(|mut c| {
            let request = request.clone();
            async move { c.delete_connection(request).await }
        })
        .await?;
        forget(&self.cache, &connection_id);
        Ok(())
    }

    /// Watches a connection: the current state first, then every change. If
    /// the broker restarts, the stream re-subscribes by itself and yields the
    /// current state again. It ends after `Deleted`, or with the error that
    /// made resubscribing pointless (not found, permission denied, ...).
    pub fn watch(&self, connection_id: &str) -> watch::WatchStream {
        watch::WatchStream::start(
            self.inner.clone(),
            connection_id.to_owned(),
            Arc::downgrade(&self.cache),
        )
    }

    /// Every event of every connection this caller may see, as `filter`
    /// selects: live, or after a cursor with `.resume_after(cursor)`.
    /// Reconnects by itself across broker restarts, resuming after the last
    /// cursor received; `EventStream::cursor` is the position to persist.
    /// A `RECONNECT_REQUIRED` or `DELETED` event drops that connection's
    /// cached token, as a `watch` does.
    pub fn watch_all(&self, filter: EventFilter) -> EventStream {
        EventStream::new(self.inner.clone(), &filter, Arc::downgrade(&self.cache))
    }

    /// Each configured webhook endpoint's delivery state (admin).
    pub async fn list_webhooks(&self) -> Result<Vec<pb::WebhookStatus>, Error> {
        let response = self
            .call(|mut c| async move { c.list_webhooks(pb::ListWebhooksRequest {}).await })
            .await?;
        Ok(response.webhooks)
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint_url;

    #[test]
    fn endpoints_may_be_host_port_or_urls() {
        assert_eq!(
            endpoint_url("127.0.0.1:50051", false),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_url("tokend:443", true), "https://tokend:443");
        assert_eq!(endpoint_url("http://h:1", true), "http://h:1");
        assert_eq!(endpoint_url(" https://h:1 ", false), "https://h:1");
    }
}
