//! A TCP proxy for tests that can go silent: it stops forwarding a
//! connection's bytes in both directions without closing it, as a dead peer
//! or a route that drops packets does. Only the `LISTEN` connections, every
//! connection open now, or every connection from now on.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// One proxied connection.
#[derive(Default)]
struct Link {
    /// The client sent `LISTEN` on it.
    listened: AtomicBool,
    /// Nothing is forwarded any more; the sockets stay open.
    silent: AtomicBool,
}

#[derive(Default)]
struct State {
    links: Mutex<Vec<Arc<Link>>>,
    /// Connections accepted from now on are silent from the start.
    swallow_new: AtomicBool,
}

/// A running proxy to `upstream` on a free loopback port; stops when dropped.
pub(crate) struct Blackhole {
    pub(crate) addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub(crate) async fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let link = Arc::new(Link::default());
                link.silent
                    .store(shared.swallow_new.load(Ordering::SeqCst), Ordering::SeqCst);
                shared.links.lock().expect("links").push(Arc::clone(&link));
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pump(cr, sw, Arc::clone(&link), true),
                        pump(sr, cw, link, false)
                    );
                });
            }
        });
        Blackhole { addr, state, task }
    }

    fn links(&self) -> Vec<Arc<Link>> {
        self.state.links.lock().expect("links").clone()
    }

    /// Connections on which the client has sent `LISTEN`, so far.
    pub(crate) fn listeners(&self) -> usize {
        self.links()
            .iter()
            .filter(|l| l.listened.load(Ordering::SeqCst))
            .count()
    }

    /// Silences the `LISTEN` connections open now; returns how many.
    pub(crate) fn silence_listeners(&self) -> usize {
        let mut n = 0;
        for link in self.links() {
            if link.listened.load(Ordering::SeqCst) {
                link.silent.store(true, Ordering::SeqCst);
                n += 1;
            }
        }
        n
    }

    /// Silences every connection open now; new ones still go through.
    pub(crate) fn silence_open(&self) {
        for link in self.links() {
            link.silent.store(true, Ordering::SeqCst);
        }
    }

    /// Silences every connection, open now or opened later.
    pub(crate) fn silence_all(&self) {
        self.state.swallow_new.store(true, Ordering::SeqCst);
        self.silence_open();
    }

    /// New connections go through again (silenced ones stay silent).
    pub(crate) fn admit_new(&self) {
        self.state.swallow_new.store(false, Ordering::SeqCst);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes; once the link is silent,
/// reads are discarded and nothing is written (the socket stays open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    from_client: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if from_client && buf[..n].windows(7).any(|w| w == b"LISTEN ") {
            link.listened.store(true, Ordering::SeqCst);
        }
        if link.silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
