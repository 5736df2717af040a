//! Callers: who is calling (API key or client certificate), what they may
//! do (permission classes over connection-id prefixes), and how fast.

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tokend_core::ConnectionId;
use tonic::{Request, Status};

use crate::{
    error::ServiceError,
    transport::{load::Load, refuse::Refused},
};

pub use tokend_config::identity::{
    AuthConfigError, Grant, IdentityConfig, Permission, check_identities,
};

/// An authenticated caller, attached to each request by [`Authenticator`].
#[derive(Debug)]
pub struct Caller {
    pub name: String,
    grants: Vec<Compiled>,
    limiter: DefaultDirectRateLimiter,
    max_watch_streams: usize,
    open_watch_streams: AtomicUsize,
    /// Installs this caller may have running at once (`[limits]
    /// max_installs_per_caller`), and how many it has.
    max_installs: usize,
    running_installs: AtomicUsize,
}

/// Which connections a permission reaches: what a listing walks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every connection.
    All,
    /// The ids starting with one of `prefixes`, and the exact `ids`.
    Only {
        prefixes: Vec<String>,
        ids: Vec<String>,
    },
}

/// Which connections a grant entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(raw: &str, identity: &str) -> Pattern {
        if raw == "*" {
            Pattern::All
        } else if let Some(prefix) = raw.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else if raw.ends_with(['-', '_', '.', ':', '/']) {
            tracing::warn!(
                identity,
                grant = raw,
                "grant read as the prefix {raw:?}*; write it with the `*`"
            );
            Pattern::Prefix(raw.to_owned())
        } else {
            Pattern::Exact(raw.to_owned())
        }
    }

    fn matches(&self, id: &ConnectionId) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(p) => id.as_str().starts_with(p.as_str()),
            Pattern::Exact(e) => id.as_str() == e,
        }
    }
}

/// A grant with its patterns parsed once.
#[derive(Debug)]
struct Compiled {
    permissions: Vec<Permission>,
    patterns: Vec<Pattern>,
}

/// A caller reads the event feed as far as its `tokens` grants reach.
impl tokend_engine::feed::Reach for Caller {
    fn may_read(&self, id: &ConnectionId) -> bool {
        self.may(Permission::Tokens, Some(id))
    }

    fn may_read_all(&self) -> bool {
        self.may_everywhere(Permission::Tokens)
    }
}

impl Caller {
    fn new(config: &IdentityConfig, max_installs: usize) -> Self {
        let rate = NonZeroU32::new(config.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        Caller {
            name: config.name.clone(),
            grants: config
                .grants
                .iter()
                .map(|g| Compiled {
                    permissions: g.permissions.clone(),
                    patterns: g
                        .connections
                        .iter()
                        .map(|c| Pattern::parse(c, &config.name))
                        .collect(),
                })
                .collect(),
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            max_watch_streams: config.max_watch_streams,
            open_watch_streams: AtomicUsize::new(0),
            max_installs: max_installs.max(1),
            running_installs: AtomicUsize::new(0),
        }
    }

    /// The caller of a server without configured identities, one per
    /// client connection: any process on this machine, allowed everything
    /// (the server then listens on loopback only), with its own rate and
    /// watch-stream limits so one process cannot starve the others.
    fn local(requests_per_second: u32, max_watch_streams: usize, max_installs: usize) -> Self {
        Self::new(
            &IdentityConfig {
                name: "local".into(),
                api_key_sha256: None,
                cert_sha256: None,
                grants: vec![Grant {
                    permissions: vec![Permission::Admin],
                    connections: vec!["*".into()],
                }],
                requests_per_second,
                max_watch_streams,
            },
            max_installs,
        )
    }

    /// Whether this caller may use `permission` on connection `id` (`None`:
    /// on some connection, as for listing).
    pub fn may(&self, permission: Permission, id: Option<&ConnectionId>) -> bool {
        self.grants.iter().any(|g| {
            g.permissions.iter().any(|p| p.allows(permission))
                && match id {
                    None => true,
                    Some(id) => g.patterns.iter().any(|p| p.matches(id)),
                }
        })
    }

    /// Which connections `permission` reaches for this caller, from the
    /// grants that hold it.
    pub fn reach(&self, permission: Permission) -> Reach {
        let mut prefixes = Vec::new();
        let mut ids = Vec::new();
        for grant in &self.grants {
            if !grant.permissions.iter().any(|p| p.allows(permission)) {
                continue;
            }
            for pattern in &grant.patterns {
                match pattern {
                    Pattern::All => return Reach::All,
                    Pattern::Prefix(p) => prefixes.push(p.clone()),
                    Pattern::Exact(e) => ids.push(e.clone()),
                }
            }
        }
        Reach::Only { prefixes, ids }
    }

    /// Whether this caller holds `permission` over every connection.
    pub fn may_everywhere(&self, permission: Permission) -> bool {
        self.grants.iter().any(|g| {
            g.permissions.iter().any(|p| p.allows(permission)) && g.patterns.contains(&Pattern::All)
        })
    }

    pub fn authorize(
        &self,
        permission: Permission,
        id: Option<&ConnectionId>,
    ) -> Result<(), ServiceError> {
        if self.may(permission, id) {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied {
                caller: self.name.clone(),
                permission,
                connection: id.cloned(),
            })
        }
    }

    /// Reserves one watch stream slot; the guard frees it.
    pub fn open_watch_stream(self: &Arc<Self>) -> Result<WatchSlot, ServiceError> {
        let open = self.open_watch_streams.fetch_add(1, Ordering::SeqCst);
        if open >= self.max_watch_streams {
            self.open_watch_streams.fetch_sub(1, Ordering::SeqCst);
            return Err(ServiceError::TooManyWatchStreams {
                caller: self.name.clone(),
                max: self.max_watch_streams,
            });
        }
        Ok(WatchSlot(Arc::clone(self)))
    }

    /// Reserves one of this caller's install slots; the guard frees it.
    /// The engine-owned install task holds it, so a caller that gives up
    /// on its installs (while the provider does not answer) gets its slots
    /// back only as they finish, not by walking away.
    pub fn start_install(self: &Arc<Self>) -> Result<InstallSlot, ServiceError> {
        let running = self.running_installs.fetch_add(1, Ordering::SeqCst);
        if running >= self.max_installs {
            self.running_installs.fetch_sub(1, Ordering::SeqCst);
            return Err(ServiceError::TooManyInstalls {
                caller: self.name.clone(),
                max: self.max_installs,
            });
        }
        Ok(InstallSlot(Arc::clone(self)))
    }
}

/// A caller's running install; dropping it frees the slot.
pub struct InstallSlot(Arc<Caller>);

impl Drop for InstallSlot {
    fn drop(&mut self) {
        self.0.running_installs.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A caller's open watch stream; dropping it frees the slot.
pub struct WatchSlot(Arc<Caller>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.open_watch_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves each request's caller from its credentials and applies the
/// caller's rate limit. Runs as a tonic interceptor, before any service
/// code, so an unauthenticated request never reaches the engine.
#[derive(Clone)]
pub struct Authenticator {
    /// By hex SHA-256 of the API key.
    by_api_key: Arc<HashMap<String, Arc<Caller>>>,
    /// By hex SHA-256 of the client certificate.
    by_cert: Arc<HashMap<String, Arc<Caller>>>,
    /// Set when no identities are configured.
    local: Option<Arc<OpenPeers>>,
    /// How much of an unauthenticated request's body is read before it is
    /// refused (`max_unauthenticated_message_bytes`; [`Refused`]).
    refused_message: usize,
}

/// Open mode's callers: one per client connection (address and port), as
/// loopback addresses cannot tell processes apart. Their rate is a share,
/// held to only while the server is contended ([`Load::contended`]): one
/// local service may use whatever capacity nobody else wants.
struct OpenPeers {
    peers: DashMap<Option<SocketAddr>, Arc<Caller>>,
    /// The server's load, once it serves ([`Authenticator::share_load`]);
    /// without it (unit tests) every rate is held to.
    load: OnceLock<Arc<Load>>,
    /// With the limits unenforced (benchmarks): one caller for everyone,
    /// with no effective limit, as before per-connection caps existed.
    everyone: Option<Arc<Caller>>,
    requests_per_second: u32,
    max_watch_streams: usize,
    max_installs: usize,
}

/// Peers remembered before the ones no request or watch stream holds are
/// forgotten.
const MAX_OPEN_PEERS: usize = 4096;

impl OpenPeers {
    fn caller(&self, peer: Option<SocketAddr>) -> Arc<Caller> {
        if let Some(everyone) = &self.everyone {
            return Arc::clone(everyone);
        }
        if let Some(caller) = self.peers.get(&peer) {
            return Arc::clone(&caller);
        }
        if self.peers.len() >= MAX_OPEN_PEERS {
            self.peers.retain(|_, c| Arc::strong_count(c) > 1);
        }
        Arc::clone(
            &self
                .peers
                .entry(peer)
                .or_insert_with(|| {
                    Arc::new(Caller::local(
                        self.requests_per_second,
                        self.max_watch_streams,
                        self.max_installs,
                    ))
                })
                .clone(),
        )
    }
}

/// Hex SHA-256, as identities are configured.
pub fn sha256_hex(bytes: &[u8]) -> String {
    HexDigest::of(bytes).as_str().to_owned()
}

/// Lowercase hex SHA-256 on the stack: the per-call identity lookup
/// allocates nothing (it once formatted 32 strings per call).
struct HexDigest([u8; 64]);

impl HexDigest {
    fn of(bytes: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in Sha256::digest(bytes).iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        HexDigest(out)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Authenticator {
    pub fn new(
        identities: &[IdentityConfig],
        limits: &tokend_config::limits::Limits,
    ) -> Result<Self, AuthConfigError> {
        let mut by_api_key = HashMap::new();
        let mut by_cert = HashMap::new();
        let max_installs = if limits.enforce {
            limits.max_installs_per_caller
        } else {
            usize::MAX
        };
        if let Some(first) = check_identities(identities).into_iter().next() {
            return Err(first);
        }
        for config in identities {
            let caller = Arc::new(Caller::new(config, max_installs));
            if let Some(h) = &config.api_key_sha256 {
                by_api_key.insert(h.to_ascii_lowercase(), Arc::clone(&caller));
            }
            if let Some(h) = &config.cert_sha256 {
                by_cert.insert(h.to_ascii_lowercase(), Arc::clone(&caller));
            }
        }
        let open = identities.is_empty();
        Ok(Self {
            by_api_key: Arc::new(by_api_key),
            by_cert: Arc::new(by_cert),
            local: open.then(|| {
                Arc::new(OpenPeers {
                    peers: DashMap::new(),
                    load: OnceLock::new(),
                    everyone: (!limits.enforce)
                        .then(|| Arc::new(Caller::local(u32::MAX, usize::MAX, usize::MAX))),
                    requests_per_second: limits.open_requests_per_second_per_peer,
                    max_watch_streams: limits.open_watch_streams_per_peer,
                    max_installs,
                })
            }),
            refused_message: limits.max_unauthenticated_message_bytes,
        })
    }

    /// The identity an API key belongs to (the console's login).
    pub fn caller_for_key(&self, key: &str) -> Option<Arc<Caller>> {
        self.by_api_key
            .get(HexDigest::of(key.trim().as_bytes()).as_str())
            .cloned()
    }

    /// Lets open mode's callers see how busy the server is: their rates
    /// then apply only under contention. Every clone shares it.
    pub fn share_load(&self, load: Arc<Load>) {
        if let Some(local) = &self.local {
            let _ = local.load.set(load);
        }
    }

    /// Whether a caller over its rate is refused now: always for
    /// configured identities; in open mode, while the server is contended.
    fn rate_binds(&self) -> bool {
        match &self.local {
            None => true,
            Some(local) => local.load.get().is_none_or(|load| load.contended()),
        }
    }

    /// Whether callers are anonymous (no identities configured).
    pub fn is_open(&self) -> bool {
        self.local.is_some()
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Arc<Caller>, Status> {
        if let Some(local) = &self.local {
            return Ok(local.caller(request.remote_addr()));
        }
        let key = presented_key(request.metadata())
            .map_err(|why| ServiceError::Unauthenticated(why).to_status())?;
        if let Some(key) = key {
            return self
                .by_api_key
                .get(HexDigest::of(key.trim().as_bytes()).as_str())
                .cloned()
                .ok_or_else(|| ServiceError::Unauthenticated("unknown api key").to_status());
        }
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            return self
                .by_cert
                .get(HexDigest::of(leaf.as_ref()).as_str())
                .cloned()
                .ok_or_else(|| {
                    ServiceError::Unauthenticated("unknown client certificate").to_status()
                });
        }
        Err(ServiceError::Unauthenticated(
            "send an api key (x-api-key or authorization: Bearer) or a client certificate",
        )
        .to_status())
    }

    /// The interceptor: identify, rate-limit, attach the caller. Every
    /// refusal is one audit line, with the client's address: failed key
    /// guesses and throttled callers leave a trace. No refusal is answered
    /// here, before the request's body is read: an unauthenticated request
    /// is marked [`Refused`], answered by the transport once its body is
    /// read within bounds ([`crate::transport::refuse`]); a rate refusal is
    /// answered by the service ([`caller`]).
    #[allow(clippy::result_large_err)]
    pub fn intercept(
        &self,
        mut request: Request<()>,
        audit: &crate::audit::AuditLog,
        clock: &tokend_core::Clock,
    ) -> Result<Request<()>, Status> {
        let peer = request.remote_addr();
        let caller = match self.identify(&request) {
            Ok(caller) => caller,
            Err(status) => {
                audit.refusal(clock.now(), "unauthenticated", "-", peer, &status);
                // No caller is attached: should the mark be missed, the
                // service refuses it too ([`caller`]).
                request.extensions_mut().insert(Refused {
                    status,
                    max_message: self.refused_message,
                });
                return Ok(request);
            }
        };
        if caller.limiter.check().is_err() && self.rate_binds() {
            let status = ServiceError::RateLimited {
                caller: caller.name.clone(),
            }
            .to_status();
            audit.refusal(clock.now(), &caller.name, "-", peer, &status);
            // Answered by the service once the request is read
            // ([`caller`]), not here. An answer before the request's DATA
            // frames arrive leaves them unread in h2, whose per-connection
            // budget for small DATA frames then runs out: it ends the whole
            // connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"),
            // and every call in flight on it fails with a transport error.
            request
                .extensions_mut()
                .insert(RateLimited(caller.name.clone()));
            return Ok(request);
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The one API key a call presents, if any: an `x-api-key` or an
/// `authorization: Bearer` (scheme matched case-insensitively, RFC 7235).
/// Two credentials in one call, even equal ones, are refused: which one
/// speaks for the caller must never depend on header order.
fn presented_key(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, &'static str> {
    let mut keys = Vec::new();
    for value in metadata.get_all("x-api-key") {
        keys.push(
            value
                .to_str()
                .map_err(|_| "x-api-key is not printable ASCII")?
                .trim()
                .to_owned(),
        );
    }
    for value in metadata.get_all("authorization") {
        let value = value
            .to_str()
            .map_err(|_| "authorization is not printable ASCII")?
            .trim();
        let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("authorization must use the Bearer scheme");
        }
        keys.push(credential.trim().to_owned());
    }
    match keys.len() {
        0 => Ok(None),
        1 if keys[0].is_empty() => Err("the api key is empty"),
        1 => Ok(keys.pop()),
        _ => Err("send exactly one credential: one x-api-key or one authorization: Bearer header"),
    }
}

/// A request the interceptor refused for its caller's rate (audited
/// there); the service answers it once its message is read.
#[derive(Clone)]
struct RateLimited(String);

/// The caller the interceptor attached, or the interceptor's refusal.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, ServiceError> {
    if let Some(RateLimited(caller)) = request.extensions().get::<RateLimited>() {
        return Err(ServiceError::RateLimited {
            caller: caller.clone(),
        });
    }
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or(ServiceError::Unauthenticated("no caller identity"))
}

#[cfg(test)]
mod tests;
