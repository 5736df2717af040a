//! The accept loop. tonic's own retries a failed `accept` at once, so a
//! process out of file descriptors spins at 100% CPU; this one caps open
//! connections, backs off on `EMFILE`/`ENFILE` (one warning per interval)
//! and cuts connections that do not finish their handshake in time.

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
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a plaintext HTTP/2 client sends first: the 24-byte preface and
/// the header of its SETTINGS frame. Under TLS these are the first bytes of
/// the ClientHello, and the TLS handshake has its own deadline.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// Longest pause between two accept attempts while out of descriptors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How often "out of file descriptors" is logged while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The accepted connections, as tonic's `serve_with_incoming` wants them.
/// Holds at most `max_connections` at once: past that, it stops accepting
/// (callers wait in the listen backlog) until one closes.
pub(crate) fn incoming(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Option<Duration>,
) -> impl Stream<Item = io::Result<Conn>> + Send {
    let state = Accept {
        listener,
        slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
        handshake_timeout,
        backoff: Duration::ZERO,
        warned_at: None,
        failures: 0,
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
    backoff: Duration,
    warned_at: Option<Instant>,
    /// Failed accepts since the last warning.
    failures: u64,
}

impl Accept {
    /// The next connection, or `None` if the slots are gone (never).
    async fn next(&mut self) -> Option<Conn> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff = Duration::ZERO;
                    // Token replies are small and latency-sensitive.
                    let _ = stream.set_nodelay(true);
                    return Some(Conn::new(stream, slot, self.handshake_timeout));
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
}

/// Whether an accept error means the process (or system) is out of
/// descriptors or buffers, so retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// An accepted connection: holds its slot until closed, and fails reads
/// once the handshake deadline passes before the handshake bytes arrived.
pub(crate) struct Conn {
    stream: TcpStream,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    /// Armed until [`HANDSHAKE_BYTES`] were read.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
    /// Whether the peer takes what is written (`backpressure.rs`).
    write: super::backpressure::Registration,
}

impl Conn {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        handshake_timeout: Option<Duration>,
    ) -> Self {
        let info = stream.connect_info();
        let write = super::backpressure::Registration::new(info.local_addr(), info.remote_addr());
        Conn {
            stream,
            info,
            _slot: slot,
            deadline: handshake_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            read: 0,
            write,
        }
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
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(polled)
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

    /// A connection that sends nothing is cut at the deadline; one that
    /// sends its handshake bytes is not.
    #[tokio::test]
    async fn silent_connections_are_cut_at_the_handshake_deadline() {
        let (l, addr) = listener().await;
        let mut conns = Box::pin(incoming(l, 8, Some(Duration::from_millis(200))));
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

    /// Invariant: at most `max_connections` are held; the next is accepted
    /// only once one closes.
    #[tokio::test]
    async fn accepting_stops_at_the_connection_cap() {
        let (l, addr) = listener().await;
        let mut conns = Box::pin(incoming(l, 2, None));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _second = conns.next().await.unwrap().unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), conns.next()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted over the cap"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), conns.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))));
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
