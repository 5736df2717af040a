//! Who holds the connection slots, and what each connection is doing. The
//! accept loop registers every connection here; the request bounds layer
//! counts each connection's open streams (from a request's arrival to the
//! end of its response). From those counts:
//!
//! - a connection with no open stream for `idle_timeout` is closed; HTTP/2
//!   PINGs do not count as activity, only streams do;
//! - when every slot is taken, the connection idle the longest is closed to
//!   make room (then one whose only streams are unauthenticated services'),
//!   so idle connections opened first cannot lock a new caller out;
//! - one non-loopback peer (an IPv4 address, an IPv6 /64) holds at most
//!   `max_connections_per_peer`. Loopback peers all share one address and
//!   cannot be told apart, so they have no per-peer cap; idle shedding still
//!   protects them;
//! - how many connections have a call to tokend open, which open mode's
//!   contention signal reads ([`super::load`]).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use futures::task::AtomicWaker;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokio::time::Instant;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::load::Load;

/// Every open connection, by the peer's address.
#[derive(Debug)]
pub(crate) struct Connections {
    by_peer: DashMap<SocketAddr, Arc<ConnState>>,
    /// Open connections per non-loopback peer (see [`peer_key`]).
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    max_per_peer: usize,
    /// `None`: idle connections are kept.
    pub(crate) idle_timeout: Option<Duration>,
    /// Activity stamps are milliseconds since this instant.
    epoch: Instant,
    /// `tokend_connections_open`, `tokend_connections_closed_total`.
    pub(crate) metrics: ConnMetrics,
    /// Pending tokend requests and the connections calling tokend: what
    /// open mode's fairness reads ([`super::load`]).
    pub(crate) load: Arc<Load>,
}

/// Open connections, and those closed or refused by the bounds here.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnMetrics {
    open: Gauge,
    closed: Family<Why, Counter>,
}

/// Why the server closed a connection: `idle` (the idle timeout), `shed`
/// (to make room at the connection cap) or `peer_cap` (refused at accept).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Why {
    reason: &'static str,
}

impl ConnMetrics {
    pub(crate) fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&Why { reason }).inc();
    }

    /// Adds these to the server's `/metrics`.
    pub(crate) fn register(&self, metrics: &tokend_engine::metrics::Metrics) {
        metrics.register(
            "tokend_connections_open",
            "Client connections open",
            self.open.clone(),
        );
        metrics.register(
            "tokend_connections_closed",
            "Client connections the server closed: idle past limits.idle_timeout_secs, shed at limits.max_connections, or refused over limits.max_connections_per_peer",
            self.closed.clone(),
        );
    }
}

/// One connection's activity, shared by its socket and its requests.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Requests whose response has not ended.
    streams: AtomicUsize,
    /// Those of them to tokend's own (authenticated) services.
    authenticated: AtomicUsize,
    /// When a stream last started or ended (or the connection was
    /// accepted), in ms since [`Connections::epoch`].
    last_active: AtomicU64,
    /// Set to close the connection: its reads end, its writes fail.
    closing: AtomicBool,
    /// Told when `authenticated` leaves or reaches zero.
    load: Arc<Load>,
    /// The task driving the connection, woken when it is told to close.
    pub(crate) waker: AtomicWaker,
}

impl ConnState {
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Tells the connection to end (and wakes the task driving it).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Connections {
    pub(crate) fn new(
        max_per_peer: usize,
        idle_timeout: Option<Duration>,
        load: Arc<Load>,
    ) -> Arc<Self> {
        Arc::new(Connections {
            load,
            by_peer: DashMap::new(),
            per_peer: Mutex::new(HashMap::new()),
            max_per_peer,
            idle_timeout,
            epoch: Instant::now(),
            metrics: ConnMetrics::default(),
        })
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_millis(stamp)
    }

    /// Whether `peer` already holds its share of connections.
    pub(crate) fn peer_full(&self, peer: SocketAddr) -> bool {
        let Some(key) = peer_key(peer.ip()) else {
            return false;
        };
        let counts = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&key).copied().unwrap_or(0) >= self.max_per_peer
    }

    /// Registers a connection from `peer`; it stays registered until the
    /// returned value is dropped.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Registration {
        let key = peer_key(peer.ip());
        if let Some(key) = key {
            *self
                .per_peer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default() += 1;
        }
        let state = Arc::new(ConnState {
            streams: AtomicUsize::new(0),
            authenticated: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.stamp()),
            closing: AtomicBool::new(false),
            load: Arc::clone(&self.load),
            waker: AtomicWaker::new(),
        });
        self.by_peer.insert(peer, Arc::clone(&state));
        self.metrics.open.inc();
        Registration {
            conns: Arc::clone(self),
            peer,
            key,
            state,
        }
    }

    /// Closes the connection idle the longest: first among those with no
    /// open stream, then among those whose open streams are all to
    /// unauthenticated services. Connections serving tokend's own
    /// services are never shed. Whether one was found.
    pub(crate) fn shed_one(&self) -> bool {
        let mut victim: Option<(bool, u64, Arc<ConnState>)> = None;
        for entry in &self.by_peer {
            let state = entry.value();
            if state.closing() {
                continue;
            }
            let busy = state.streams.load(Ordering::Acquire) > 0;
            if busy && state.authenticated.load(Ordering::Acquire) > 0 {
                continue;
            }
            let since = state.last_active.load(Ordering::Acquire);
            if victim
                .as_ref()
                .is_none_or(|(b, s, _)| (busy, since) < (*b, *s))
            {
                victim = Some((busy, since, Arc::clone(state)));
            }
        }
        match victim {
            Some((busy, _, state)) => {
                tracing::debug!(
                    with_unauthenticated_streams = busy,
                    "connection cap reached: closing the connection idle the longest"
                );
                state.close();
                self.metrics.closed("shed");
                true
            }
            None => false,
        }
    }

    /// Closes every connection: at the end of shutdown's drain, the calls
    /// still open are cut off (their handlers are dropped with the
    /// connection's task). How many were open.
    pub(crate) fn close_all(&self) -> usize {
        let mut closed = 0;
        for entry in &self.by_peer {
            if !entry.value().closing() {
                entry.value().close();
                self.metrics.closed("shutdown");
                closed += 1;
            }
        }
        closed
    }

    /// When the connection must be closed for idleness if nothing happens
    /// before; `None` while a stream is open (or without idle timeout).
    pub(crate) fn idle_deadline(&self, state: &ConnState) -> Option<Instant> {
        let timeout = self.idle_timeout?;
        if state.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.instant(state.last_active.load(Ordering::Acquire)) + timeout)
    }

    /// Counts a request of `request`'s connection as an open stream until
    /// the returned guard is dropped.
    pub(crate) fn track<B>(
        &self,
        request: &http::Request<B>,
        authenticated: bool,
    ) -> Option<StreamGuard> {
        let peer = peer_of(request)?;
        let state = Arc::clone(self.by_peer.get(&peer)?.value());
        state.streams.fetch_add(1, Ordering::AcqRel);
        if authenticated && state.authenticated.fetch_add(1, Ordering::AcqRel) == 0 {
            state.load.connection_active();
        }
        state.last_active.store(self.stamp(), Ordering::Release);
        Some(StreamGuard {
            epoch: self.epoch,
            state,
            authenticated,
        })
    }

    #[cfg(test)]
    pub(crate) fn state(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        self.by_peer.get(&peer).map(|e| Arc::clone(e.value()))
    }
}

/// A connection's place in [`Connections`], given back on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    conns: Arc<Connections>,
    peer: SocketAddr,
    key: Option<IpAddr>,
    pub(crate) state: Arc<ConnState>,
}

impl Registration {
    pub(crate) fn conns(&self) -> &Connections {
        &self.conns
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.metrics.open.dec();
        self.conns
            .by_peer
            .remove_if(&self.peer, |_, s| Arc::ptr_eq(s, &self.state));
        if let Some(key) = self.key {
            let mut counts = self
                .conns
                .per_peer
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// An open stream, counted on its connection until dropped.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    epoch: Instant,
    state: Arc<ConnState>,
    authenticated: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let stamp = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.state.last_active.store(stamp, Ordering::Release);
        if self.authenticated && self.state.authenticated.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.load.connection_idle();
        }
        self.state.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address of the client that sent `request`, over TCP or TLS.
pub(crate) fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    match extensions.get::<TcpConnectInfo>() {
        Some(info) => info.remote_addr(),
        None => extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr()),
    }
}

/// What the per-peer cap counts a peer as: its IPv4 address, or its IPv6
/// /64 (one host commonly has a whole /64); `None` for loopback, whose
/// peers cannot be told apart.
fn peer_key(ip: IpAddr) -> Option<IpAddr> {
    let ip = peer_prefix(ip);
    (!ip.is_loopback()).then_some(ip)
}

/// The address one peer is counted under, wherever tokend counts peers (the
/// connection cap here, the console's login buckets): its IPv4 address
/// (an IPv4-mapped IPv6 address as that IPv4 address), or its IPv6 /64.
pub(crate) fn peer_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn request(peer: SocketAddr) -> http::Request<()> {
        let mut r = http::Request::new(());
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
        r
    }

    /// Invariant: a non-loopback peer holds at most `max_per_peer`
    /// connections (IPv6 counted per /64); loopback peers are not capped;
    /// a closed connection gives its place back.
    #[test]
    fn each_remote_peer_has_its_own_cap() {
        let conns = Connections::new(2, None, Load::new(&Default::default()));
        let a1 = conns.admit(addr("10.0.0.1:1000"));
        let _a2 = conns.admit(addr("10.0.0.1:1001"));
        assert!(conns.peer_full(addr("10.0.0.1:1002")));
        assert!(!conns.peer_full(addr("10.0.0.2:1000")), "another host");
        drop(a1);
        assert!(!conns.peer_full(addr("10.0.0.1:1002")), "a place came back");

        let _b1 = conns.admit(addr("[2001:db8::1]:1"));
        let _b2 = conns.admit(addr("[2001:db8::ffff:2]:1"));
        assert!(
            conns.peer_full(addr("[2001:db8::3]:1")),
            "one /64 is one peer"
        );
        assert!(!conns.peer_full(addr("[2001:db8:0:1::1]:1")));
        let _m = conns.admit(addr("[::ffff:10.0.0.9]:1"));
        let _m2 = conns.admit(addr("10.0.0.9:2"));
        assert!(conns.peer_full(addr("10.0.0.9:3")), "IPv4-mapped is IPv4");

        let local: Vec<_> = (0..10)
            .map(|p| conns.admit(addr(&format!("127.0.0.1:{}", 2000 + p))))
            .collect();
        assert!(!conns.peer_full(addr("127.0.0.1:3000")));
        assert!(!conns.peer_full(addr("[::1]:3000")));
        drop(local);
    }

    /// Invariant: shedding picks a connection with no open stream, idle the
    /// longest; then one with only unauthenticated streams; never one with
    /// a stream to tokend's services.
    #[tokio::test(start_paused = true)]
    async fn shedding_closes_the_longest_idle_and_never_a_busy_caller() {
        let conns = Connections::new(100, None, Load::new(&Default::default()));
        let (p1, p2, p3) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3"),
        );
        let _r1 = conns.admit(p1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _r2 = conns.admit(p2);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _r3 = conns.admit(p3);
        tokio::time::advance(Duration::from_secs(1)).await;
        // p1 serves tokend, p2 only a health watch; p3 is idle.
        let _busy = conns.track(&request(p1), true).unwrap();
        let _health = conns.track(&request(p2), false).unwrap();
        assert!(conns.shed_one());
        assert!(conns.state(p3).unwrap().closing(), "the idle one first");
        assert!(conns.shed_one());
        assert!(conns.state(p2).unwrap().closing(), "then unauthenticated");
        assert!(!conns.shed_one(), "a busy caller is never shed");
        assert!(!conns.state(p1).unwrap().closing());
        let shed = conns
            .metrics
            .closed
            .get_or_create(&Why { reason: "shed" })
            .get();
        assert_eq!(shed, 2, "each shed connection is counted");
        assert_eq!(conns.metrics.open.get(), 3);
    }

    /// Invariant: the idle deadline runs from the end of the last stream;
    /// while a stream is open there is none.
    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_follows_the_last_stream() {
        let conns = Connections::new(
            100,
            Some(Duration::from_secs(60)),
            Load::new(&Default::default()),
        );
        let p = addr("127.0.0.1:1");
        let r = conns.admit(p);
        let start = Instant::now();
        assert_eq!(
            conns.idle_deadline(&r.state),
            Some(start + Duration::from_secs(60))
        );
        let guard = conns.track(&request(p), true).unwrap();
        assert_eq!(conns.idle_deadline(&r.state), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        assert_eq!(
            conns.idle_deadline(&r.state),
            Some(start + Duration::from_secs(160))
        );
        assert!(conns.track(&request(addr("127.0.0.1:9")), true).is_none());
    }
}
