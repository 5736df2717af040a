//! The accept loop. tonic's own retries a failed `accept` at once, so a
//! process out of file descriptors spins at 100% CPU; this one caps open
//! connections, backs off on `EMFILE`/`ENFILE` (one warning per interval)
//! and cuts connections that do not finish their handshake in time. With
//! [`super::conns`] it also caps each remote peer, closes connections idle
//! past the idle timeout, and at the cap closes the longest idle one to
//! make room rather than make the newcomer wait.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::conns::{Connections, Registration};

/// Bytes a plaintext HTTP/2 client sends first: the 24-byte preface and
/// the header of its SETTINGS frame. Under TLS these are the first bytes of
/// the ClientHello, and the TLS handshake has its own deadline.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// Longest pause between two accept attempts while out of descriptors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How often "out of file descriptors" is logged while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// At the cap with no connection to shed, how often to look again.
const SHED_RETRY: Duration = Duration::from_millis(50);

/// The accepted connections, as tonic's `serve_with_incoming` wants them.
/// Holds at most `max_connections` at once: past that, a new connection
/// closes the longest idle one ([`Connections::shed_one`]), or waits for
/// a slot if every connection is serving tokend's services.
pub(crate) fn incoming(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Option<Duration>,
    conns: Arc<Connections>,
) -> impl Stream<Item = io::Result<Conn>> + Send {
    let state = Accept {
        listener,
        slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
        handshake_timeout,
        conns,
        backoff: Duration::ZERO,
        warned_at: None,
        failures: 0,
        refused_at: None,
        refused: 0,
    };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await?;
        Some((Ok(conn), state))
    })
}

struct Accept {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Option<Duration>,
    conns: Arc<Connections>,
    backoff: Duration,
    warned_at: Option<Instant>,
    /// Failed accepts since the last warning.
    failures: u64,
    /// When the per-peer cap was last logged, and refusals since.
    refused_at: Option<Instant>,
    refused: u64,
}

impl Accept {
    /// The next connection, or `None` if the slots are gone (never).
    async fn next(&mut self) -> Option<Conn> {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = Duration::ZERO;
                    if self.conns.peer_full(peer) {
                        self.refuse(peer);
                        continue;
                    }
                    let slot = self.slot().await?;
                    // Token replies are small and latency-sensitive.
                    let _ = stream.set_nodelay(true);
                    let registration = self.conns.admit(peer);
                    return Some(Conn::new(
                        stream,
                        slot,
                        registration,
                        self.handshake_timeout,
                    ));
                }
                Err(e) if out_of_resources(&e) => {
                    self.failures += 1;
                    let now = Instant::now();
                    if self.warned_at.is_none_or(|t| now - t >= WARN_EVERY) {
                        tracing::warn!(
                            error = %e,
                            failed_accepts = self.failures,
                            "cannot accept connections: out of file descriptors or memory; backing off (raise `ulimit -n` or lower limits.max_connections)"
                        );
                        self.warned_at = Some(now);
                        self.failures = 0;
                    }
                    self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), MAX_BACKOFF);
                    tokio::time::sleep(self.backoff).await;
                }
                // The client gave up between SYN and accept: nothing to do.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }

    /// A free slot: at once, or after closing the longest idle connection.
    async fn slot(&mut self) -> Option<OwnedSemaphorePermit> {
        loop {
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => return Some(slot),
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => {}
            }
            self.conns.shed_one();
            tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => return slot.ok(),
                () = tokio::time::sleep(SHED_RETRY) => {}
            }
        }
    }

    /// Closes a connection over its peer's cap, with one warning per
    /// interval.
    fn refuse(&mut self, peer: std::net::SocketAddr) {
        self.conns.metrics.closed("peer_cap");
        self.refused += 1;
        let now = Instant::now();
        if self.refused_at.is_none_or(|t| now - t >= WARN_EVERY) {
            tracing::warn!(
                peer = %peer.ip(),
                refused = self.refused,
                "refusing connections: the peer holds limits.max_connections_per_peer connections"
            );
            self.refused_at = Some(now);
            self.refused = 0;
        }
    }
}

/// Whether an accept error means the process (or system) is out of
/// descriptors or buffers, so retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// An accepted connection: holds its slot and registration until closed,
/// fails reads once the handshake deadline passes before the handshake
/// bytes arrived, and ends (reads see end of file, writes fail) when it
/// has had no open stream for the idle timeout or is shed.
pub(crate) struct Conn {
    stream: TcpStream,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    registration: Registration,
    /// Armed until [`HANDSHAKE_BYTES`] were read.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
    /// Whether the peer takes what is written (`backpressure.rs`).
    write: super::backpressure::Registration,
    /// Fires at the idle deadline as last computed; then it is computed
    /// again from the connection's streams.
    idle: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        registration: Registration,
        handshake_timeout: Option<Duration>,
    ) -> Self {
        let info = stream.connect_info();
        let write = super::backpressure::Registration::new(info.local_addr(), info.remote_addr());
        let idle = registration
            .conns()
            .idle_deadline(&registration.state)
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        Conn {
            stream,
            info,
            _slot: slot,
            registration,
            deadline: handshake_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            read: 0,
            write,
            idle,
        }
    }

    /// Whether the connection is to end now: it was shed, or it has been
    /// idle past the deadline. Otherwise `cx` is woken when that could
    /// change (shedding, or the idle timer).
    fn ending(&mut self, cx: &mut Context<'_>) -> bool {
        let state = &self.registration.state;
        state.waker.register(cx.waker());
        if state.closing() {
            return true;
        }
        let Some(timer) = &mut self.idle else {
            return false;
        };
        while timer.as_mut().poll(cx).is_ready() {
            match self.registration.conns().idle_deadline(state) {
                Some(at) if at <= Instant::now() => {
                    tracing::debug!("closing a connection idle for the idle timeout");
                    state.close();
                    self.registration.conns().metrics.closed("idle");
                    return true;
                }
                Some(at) => timer.as_mut().reset(at),
                // A stream is open: look again one timeout from now.
                None => {
                    let timeout = self.registration.conns().idle_timeout.unwrap_or_default();
                    timer.as_mut().reset(Instant::now() + timeout);
                }
            }
        }
        false
    }

    /// Records whether the socket took the bytes.
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &polled {
            Poll::Pending => self.write.state.set_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.write.state.set_writable(),
            Poll::Ready(_) => {}
        }
        polled
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed: idle, or shed at the connection cap",
    )
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.registration.state.closing() {
            // End of file: hyper ends the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.read += buf.filled().len() - before;
                    if this.read >= HANDSHAKE_BYTES {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.ending(cx) => Poll::Ready(Ok(())),
            Poll::Pending => match &mut this.deadline {
                Some(deadline) => {
                    ready!(deadline.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 handshake within the handshake timeout",
                    )))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.registration.state.closing() {
            return Poll::Ready(Err(closed()));
        }
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        match this.wrote(polled) {
            // A peer that reads nothing still lets the connection end.
            Poll::Pending if this.ending(cx) => Poll::Ready(Err(closed())),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.registration.state.closing() {
            return Poll::Ready(Err(closed()));
        }
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        match this.wrote(polled) {
            // A peer that reads nothing still lets the connection end.
            Poll::Pending if this.ending(cx) => Poll::Ready(Err(closed())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    fn registry(idle: Option<Duration>) -> Arc<Connections> {
        Connections::new(
            100,
            idle,
            crate::transport::load::Load::new(&Default::default()),
        )
    }

    /// A request as the bounds layer sees it, from `client`'s connection.
    fn request_from(client: &TcpStream) -> http::Request<()> {
        let mut r = http::Request::new(());
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(client.local_addr().unwrap()),
        });
        r
    }

    /// A connection that sends nothing is cut at the deadline; one that
    /// sends its handshake bytes is not.
    #[tokio::test]
    async fn silent_connections_are_cut_at_the_handshake_deadline() {
        let (l, addr) = listener().await;
        let mut conns = Box::pin(incoming(
            l,
            8,
            Some(Duration::from_millis(200)),
            registry(None),
        ));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = conns.next().await.unwrap().unwrap();
        let started = Instant::now();
        let err = conn.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));

        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(&[0; HANDSHAKE_BYTES]).await.unwrap();
        let mut conn = conns.next().await.unwrap().unwrap();
        let mut buf = [0; HANDSHAKE_BYTES];
        conn.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        talker.write_all(b"x").await.unwrap();
        assert_eq!(
            conn.read(&mut [0; 8]).await.unwrap(),
            1,
            "no deadline any more"
        );
    }

    /// Invariant: at most `max_connections` are held; while every one
    /// serves tokend's services, the next is accepted only once one closes.
    #[tokio::test]
    async fn accepting_stops_at_the_cap_while_every_connection_is_busy() {
        let (l, addr) = listener().await;
        let registry = registry(None);
        let mut conns = Box::pin(incoming(l, 2, None, Arc::clone(&registry)));
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _second = conns.next().await.unwrap().unwrap();
        let _busy_a = registry.track(&request_from(&a), true).unwrap();
        let _busy_b = registry.track(&request_from(&b), true).unwrap();
        let third = tokio::time::timeout(Duration::from_millis(300), conns.next()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted over the cap"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), conns.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))));
    }

    /// Issue 24, item 3. Invariant: at the cap, a new connection does not
    /// wait behind idle ones: the connection idle the longest is ended
    /// (its reads see end of file), and the newcomer takes its slot.
    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let (l, addr) = listener().await;
        let registry = registry(None);
        let mut conns = Box::pin(incoming(l, 2, None, Arc::clone(&registry)));
        let _a = TcpStream::connect(addr).await.unwrap();
        let mut oldest = conns.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b = TcpStream::connect(addr).await.unwrap();
        let mut newer = conns.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The newer one served a request since: still the oldest goes.
        drop(registry.track(&request_from(&b), true).unwrap());
        let _c = TcpStream::connect(addr).await.unwrap();
        let third = tokio::spawn(async move { conns.next().await.map(|c| c.is_ok()) });
        let read = tokio::time::timeout(Duration::from_secs(5), oldest.read(&mut [0; 8]))
            .await
            .expect("the longest idle connection is ended");
        assert_eq!(read.unwrap(), 0, "end of file");
        assert!(oldest.write(b"x").await.is_err(), "writes fail");
        drop(oldest);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the newcomer takes the freed slot");
        assert_eq!(third.unwrap(), Some(true));
        let still = tokio::time::timeout(Duration::from_millis(100), newer.read(&mut [0; 8])).await;
        assert!(still.is_err(), "the other connection is untouched");
    }

    /// Issue 24, item 3. Invariant: a connection with no open stream for
    /// the idle timeout is ended; while a stream is open it is not, and
    /// the timeout runs again from the stream's end.
    #[tokio::test]
    async fn a_connection_without_streams_ends_at_the_idle_timeout() {
        let (l, addr) = listener().await;
        let idle = Duration::from_millis(300);
        let registry = registry(Some(idle));
        let mut conns = Box::pin(incoming(l, 8, None, Arc::clone(&registry)));
        let client = TcpStream::connect(addr).await.unwrap();
        let mut conn = conns.next().await.unwrap().unwrap();
        let stream = registry.track(&request_from(&client), true).unwrap();
        let open = tokio::time::timeout(3 * idle, conn.read(&mut [0; 8])).await;
        assert!(open.is_err(), "a connection with an open stream is kept");
        drop(stream);
        let ended_from = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut [0; 8]))
            .await
            .expect("ended at the idle timeout");
        assert_eq!(read.unwrap(), 0);
        assert!(ended_from.elapsed() >= idle - Duration::from_millis(50));
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(out_of_resources(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(out_of_resources(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!out_of_resources(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
