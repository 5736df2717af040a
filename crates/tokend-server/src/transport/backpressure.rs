//! Which client connections cannot take more bytes right now, so watch
//! streams stop producing for them.
//!
//! hyper buffers up to 400 KiB per HTTP/2 stream for a peer whose socket is
//! not drained (tonic does not let that be configured), and a hostile
//! client can advertise flow-control windows large enough for all of it:
//! 64 streams on one connection that never reads held ~25 MiB. So each
//! accepted connection ([`super::incoming::Conn`]) records here whether its
//! last write found the socket full, and a watch stream's body hands hyper
//! nothing more while it is: what HTTP/2 buffers for one stream stays about
//! one chunk, and the stream's own outbox fills, which cuts it off after
//! the stall timeout.

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Waker},
};

use dashmap::DashMap;

/// One connection's write side.
#[derive(Default)]
pub(crate) struct WriteState {
    blocked: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl WriteState {
    /// The socket took no bytes: the peer is not reading.
    pub(crate) fn set_blocked(&self) {
        self.blocked.store(true, Ordering::SeqCst);
    }

    /// The socket took bytes again: wakes the streams that waited. One
    /// plain load on every write while nothing is blocked.
    pub(crate) fn set_writable(&self) {
        if self.blocked.load(Ordering::Relaxed) && self.blocked.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiting {
            w.wake();
        }
    }

    /// Whether the connection is blocked; if so, `cx` is woken when it is
    /// not any more (or it closes).
    pub(crate) fn poll_blocked(&self, cx: &Context<'_>) -> bool {
        if !self.blocked.load(Ordering::SeqCst) {
            return false;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        drop(waiting);
        // Writable again between the first check and the registration.
        self.blocked.load(Ordering::SeqCst)
    }
}

/// Open connections by (local, remote) address: unique per TCP connection
/// on this host, whichever listener accepted it.
static CONNECTIONS: LazyLock<DashMap<(SocketAddr, SocketAddr), Arc<WriteState>>> =
    LazyLock::new(DashMap::new);

/// A connection's entry; dropping it (the connection closing) removes it.
pub(crate) struct Registration {
    key: Option<(SocketAddr, SocketAddr)>,
    pub(crate) state: Arc<WriteState>,
}

impl Registration {
    pub(crate) fn new(local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Self {
        let state = Arc::new(WriteState::default());
        let key = local.zip(remote);
        if let Some(key) = key {
            CONNECTIONS.insert(key, Arc::clone(&state));
        }
        Registration { key, state }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            CONNECTIONS.remove_if(&key, |_, s| Arc::ptr_eq(s, &self.state));
        }
        // Nothing will be written any more: let waiting streams see the end.
        self.state.wake();
    }
}

/// The write side of the connection a request came on, if it is one of
/// ours (tests that serve without the accept loop have none).
pub(crate) fn of_request<T>(request: &tonic::Request<T>) -> Option<Arc<WriteState>> {
    let key = request.local_addr().zip(request.remote_addr())?;
    CONNECTIONS.get(&key).map(|s| Arc::clone(&s))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Wake, Waker},
    };

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Invariant: a stream that finds its connection blocked is woken
    /// once it is writable again, and only registered while blocked; the
    /// registry forgets a connection when it closes.
    #[test]
    fn blocked_connections_wake_their_streams_when_writable() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&waker);
        let local = "127.0.0.1:1".parse().ok();
        let remote = "127.0.0.1:2".parse().ok();
        let reg = Registration::new(local, remote);
        assert!(!reg.state.poll_blocked(&cx));
        reg.state.set_blocked();
        assert!(reg.state.poll_blocked(&cx));
        assert!(reg.state.poll_blocked(&cx), "registered once");
        reg.state.set_writable();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!reg.state.poll_blocked(&cx));
        assert!(CONNECTIONS.contains_key(&(local.unwrap(), remote.unwrap())));
        drop(reg);
        assert!(!CONNECTIONS.contains_key(&(local.unwrap(), remote.unwrap())));
    }
}
