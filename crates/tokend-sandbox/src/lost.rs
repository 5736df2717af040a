//! The lost-answer fault: the token request is handled in full (a refresh
//! rotates its token exactly as for a delivered answer), then the answer is
//! lost: replaced by an error status or a cut-off 200 body, or the TCP
//! connection is reset with no answer at all, after an optional hang.
//!
//! A reset needs the connection itself: every accepted socket is wrapped in a
//! [`Severable`] whose [`Line`] the handler reaches through the connection
//! info. Severing makes every later read and write of that socket fail, so
//! hyper drops the connection without writing a byte, and a zero linger turns
//! the close into a TCP RST.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::OAuthError;
use crate::{Dialect, LostAnswer};

/// One connection's kill switch, shared by its socket wrapper and the
/// handlers of the requests that arrive on it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Line(Arc<AtomicBool>);

impl Line {
    /// From now on the connection fails every read and write: hyper drops
    /// it without sending what it was about to.
    pub(crate) fn sever(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn severed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Sockets whose close can be made a TCP reset.
pub(crate) trait ZeroLinger {
    /// Sets `SO_LINGER` to zero: the close sends RST, not FIN.
    fn zero_linger(&self);
}

impl ZeroLinger for TcpStream {
    fn zero_linger(&self) {
        if let Err(err) = self.set_zero_linger() {
            tracing::debug!(%err, "sandbox: could not set SO_LINGER 0");
        }
    }
}

impl ZeroLinger for tokio_rustls::server::TlsStream<TcpStream> {
    fn zero_linger(&self) {
        self.get_ref().0.zero_linger();
    }
}

/// An accepted connection that its [`Line`] can cut.
pub(crate) struct Severable<Io> {
    io: Io,
    line: Line,
    lingered: bool,
}

impl<Io: ZeroLinger> Severable<Io> {
    pub(crate) fn new(io: Io) -> Self {
        Self {
            io,
            line: Line::default(),
            lingered: false,
        }
    }

    pub(crate) fn line(&self) -> Line {
        self.line.clone()
    }

    pub(crate) fn get_ref(&self) -> &Io {
        &self.io
    }

    /// Whether the line was cut; the first time, also arms the reset.
    fn cut(&mut self) -> bool {
        if !self.line.severed() {
            return false;
        }
        if !self.lingered {
            self.io.zero_linger();
            self.lingered = true;
        }
        true
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "lost-answer fault")
}

impl<Io: AsyncRead + ZeroLinger + Unpin> AsyncRead for Severable<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + ZeroLinger + Unpin> AsyncWrite for Severable<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Loses a handled request's answer: waits `hang`, then serves `answer`
/// instead of what the request earned.
pub(crate) async fn serve(
    dialect: Dialect,
    answer: LostAnswer,
    hang: Duration,
    line: &Line,
) -> Response {
    tokio::time::sleep(hang).await;
    match answer {
        LostAnswer::Reset => {
            line.sever();
            // Never written: the severed socket fails the write and hyper
            // drops the connection.
            Response::new(Body::empty())
        }
        // A 200 whose body is cut off: the grant is in no readable answer.
        LostAnswer::Status(200) => crate::answer::truncated_token_response(),
        LostAnswer::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            OAuthError::server_error(status).into_response(dialect)
        }
    }
}
