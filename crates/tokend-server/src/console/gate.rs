//! Who may reach the console, and how often one may try to log in.
//!
//! - With identities, a login is an `admin` identity's API key. Key checks
//!   are rate limited per client address (IPv6 by /64) and over all
//!   addresses, as token buckets with a small burst. Only a failed login
//!   spends a token, but every login is refused while its address's bucket
//!   (or the global one) is empty: a flood of wrong keys gets `429` with
//!   `Retry-After` and is never checked, and an admin who logs in and clicks
//!   around spends nothing. Each failure and each refusal is an audit line,
//!   grouped like other refusals (one line, then a `repeated` count per
//!   interval), so a flood writes a bounded number of lines.
//! - Open (no identities), only loopback peers are served, and only when the
//!   request names this listener as a loopback host (`localhost`,
//!   `127.0.0.1`, `[::1]`) with its port: a page on another site that
//!   rebinds its DNS name to 127.0.0.1 names its own host, and gets `421`.
//!
//! The bounds are fixed (`PEER_*`, `GLOBAL_*`): the keys they protect are
//! at least 128 random bits, so they exist to bound the checks and the
//! audit lines, not to make guessing slow.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use axum::http::{HeaderMap, Uri, header};
use tokio::time::Instant;

/// Failed logins one address may make at once, and the pace its allowance
/// comes back at (10 a minute).
pub(crate) const PEER_BURST: f64 = 10.0;
pub(crate) const PEER_REFILL: Duration = Duration::from_secs(6);
/// Failed logins over all addresses: a burst, then 2 a second.
pub(crate) const GLOBAL_BURST: f64 = 30.0;
pub(crate) const GLOBAL_REFILL: Duration = Duration::from_millis(500);
/// Addresses tracked at once. Past that, buckets that have refilled are
/// forgotten; an address that still finds no room is held to the global
/// bucket alone.
const MAX_PEERS: usize = 4096;

/// A token bucket: `burst` tokens, one more every `refill`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64, refill: Duration) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
    }

    /// `None` if a token is there, else how long until one is.
    fn wait(&mut self, now: Instant, burst: f64, refill: Duration) -> Option<Duration> {
        self.refill(now, burst, refill);
        (self.tokens < 1.0).then(|| refill.mul_f64(1.0 - self.tokens))
    }

    fn spend(&mut self, now: Instant, burst: f64, refill: Duration) {
        self.refill(now, burst, refill);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// The login limiter and the listener's own port.
#[derive(Debug)]
pub(crate) struct Gate {
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    global: Mutex<Bucket>,
    /// The admin listener's port, once bound.
    port: OnceLock<u16>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            peers: Mutex::default(),
            global: Mutex::new(Bucket::full(GLOBAL_BURST, Instant::now())),
            port: OnceLock::new(),
        }
    }
}

impl Gate {
    /// Notes the port the admin listener is bound to.
    pub(crate) fn set_port(&self, port: u16) {
        let _ = self.port.set(port);
    }

    /// `None` if `peer` may try a key now, else how long until it may.
    pub(crate) fn wait(&self, peer: SocketAddr) -> Option<Duration> {
        let now = Instant::now();
        let key = crate::transport::conns::peer_prefix(peer.ip());
        let own = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .get_mut(&key)
                .and_then(|b| b.wait(now, PEER_BURST, PEER_REFILL))
        };
        let global = self.global.lock().unwrap_or_else(|p| p.into_inner()).wait(
            now,
            GLOBAL_BURST,
            GLOBAL_REFILL,
        );
        own.max(global)
    }

    /// Spends one failed login of `peer`'s and of the global allowance.
    pub(crate) fn failed(&self, peer: SocketAddr) {
        let now = Instant::now();
        let key = crate::transport::conns::peer_prefix(peer.ip());
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
                peers.retain(|_, b| {
                    b.refill(now, PEER_BURST, PEER_REFILL);
                    b.tokens < PEER_BURST
                });
            }
            if peers.len() < MAX_PEERS || peers.contains_key(&key) {
                peers
                    .entry(key)
                    .or_insert_with(|| Bucket::full(PEER_BURST, now))
                    .spend(now, PEER_BURST, PEER_REFILL);
            }
        }
        self.global.lock().unwrap_or_else(|p| p.into_inner()).spend(
            now,
            GLOBAL_BURST,
            GLOBAL_REFILL,
        );
    }

    /// Whether the request names this listener as a loopback host with its
    /// port, in `Host` and in the URI's authority (HTTP/2), wherever given;
    /// at least one must be.
    pub(crate) fn names_loopback(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Some(&port) = self.port.get() else {
            return false;
        };
        let host = headers.get(header::HOST).map(|h| h.to_str().ok());
        let authority = uri.authority().map(|a| Some(a.as_str()));
        if host.is_none() && authority.is_none() {
            return false;
        }
        [host, authority]
            .into_iter()
            .flatten()
            .all(|named| named.is_some_and(|n| is_loopback_authority(n, port)))
    }
}

/// `localhost:PORT`, `127.x.y.z:PORT` or `[::1]:PORT`, exactly.
fn is_loopback_authority(authority: &str, port: u16) -> bool {
    let Some((host, named_port)) = authority.rsplit_once(':') else {
        return false;
    };
    if named_port.parse::<u16>().ok() != Some(port) {
        return false;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    };
    ip.is_some_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40_000)
    }

    /// Invariant: an address gets `PEER_BURST` failed logins, then waits
    /// for the refill; another address is not held by it.
    #[tokio::test(start_paused = true)]
    async fn each_address_has_a_small_burst_then_a_slow_refill() {
        let gate = Gate::default();
        let a = peer("10.0.0.1");
        for _ in 0..PEER_BURST as usize {
            assert_eq!(gate.wait(a), None);
            gate.failed(a);
        }
        let wait = gate.wait(a).expect("the burst is spent");
        assert!(wait <= PEER_REFILL && wait > PEER_REFILL / 2, "{wait:?}");
        assert_eq!(gate.wait(peer("10.0.0.2")), None);
        tokio::time::advance(PEER_REFILL).await;
        assert_eq!(gate.wait(a), None);
        gate.failed(a);
        assert!(gate.wait(a).is_some());
    }

    /// Invariant: a successful login spends nothing.
    #[tokio::test(start_paused = true)]
    async fn only_failures_spend() {
        let gate = Gate::default();
        let a = peer("10.0.0.1");
        for _ in 0..1000 {
            assert_eq!(gate.wait(a), None);
        }
    }

    /// Invariant: many addresses together get `GLOBAL_BURST` failed logins,
    /// then 2 a second.
    #[tokio::test(start_paused = true)]
    async fn all_addresses_share_a_global_budget() {
        let gate = Gate::default();
        let mut allowed = 0;
        for i in 0..200u32 {
            let p = peer(&format!("10.1.{}.{}", i / 250, i % 250));
            if gate.wait(p).is_none() {
                allowed += 1;
                gate.failed(p);
            }
        }
        assert_eq!(allowed, GLOBAL_BURST as usize);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(gate.wait(peer("10.9.9.9")), None);
    }

    /// Invariant: one IPv6 host cannot get a fresh burst per address of its
    /// /64, and the tracked addresses are bounded.
    #[tokio::test(start_paused = true)]
    async fn ipv6_addresses_count_by_their_64_and_tracking_is_bounded() {
        let gate = Gate::default();
        for i in 0..PEER_BURST as u32 {
            gate.failed(peer(&format!("2001:db8::{i:x}")));
        }
        assert!(gate.wait(peer("2001:db8::ffff")).is_some());
        assert_eq!(gate.wait(peer("2001:db8:0:1::1")), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        for i in 0..(MAX_PEERS as u32 + 100) {
            gate.failed(peer(&format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)));
        }
        assert_eq!(gate.peers.lock().unwrap().len(), MAX_PEERS);
    }

    #[test]
    fn only_loopback_names_with_the_port_are_this_listener() {
        for (authority, ok) in [
            ("localhost:9464", true),
            ("LOCALHOST:9464", true),
            ("127.0.0.1:9464", true),
            ("127.0.0.2:9464", true),
            ("[::1]:9464", true),
            ("localhost", false),
            ("127.0.0.1:80", false),
            ("attacker.example:9464", false),
            ("localhost.attacker.example:9464", false),
            ("10.0.0.1:9464", false),
            ("[::ffff:7f00:1]:9464x", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_authority(authority, 9464), ok, "{authority}");
        }
        let gate = Gate::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9464".parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        assert!(!gate.names_loopback(&headers, &uri), "port not known yet");
        gate.set_port(9464);
        assert!(gate.names_loopback(&headers, &uri));
        assert!(
            !gate.names_loopback(&HeaderMap::new(), &uri),
            "no host at all"
        );
        let h2: Uri = "http://attacker.example:9464/".parse().unwrap();
        assert!(
            !gate.names_loopback(&headers, &h2),
            "both must name loopback"
        );
    }
}
