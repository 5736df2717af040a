//! Refusals answered after the request's body is read (issue 26, item 10).
//!
//! A refusal answered before the client's DATA frames arrive leaves them
//! unread in h2, whose per-connection budget for small DATA frames then
//! runs out: it ends the whole connection (GOAWAY ENHANCE_YOUR_CALM
//! "too_many_data_frames") and every call in flight on it fails with a
//! transport error. So the pending cap's refusal ([`super::body`]) and the
//! unauthenticated refusal ([`crate::auth`], through [`AnswerRefusedLayer`])
//! read the body first, then answer. Bounded: the body is read and thrown
//! away frame by frame, never kept, and only up to the refused class's
//! message cap and for at most [`DRAIN_TIME`] (or the body timeout, if
//! shorter); past either the refusal is answered at once, and h2 resets
//! what is left of that stream. A refusal can thus never make the server
//! hold a body, nor hold a stream longer than a second.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Buf as _;
use http_body::Body as HttpBody;
use tonic::{Status, body::Body, server::NamedService};
use tower::{Layer, Service};

/// The longest a refused request's body is waited for.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The gRPC prefix of one message (flag and length).
const PREFIX: usize = 5;

/// Reads `body` to its end and throws it away, but no more than one
/// message of `max_message` bytes (prefix included) and for no longer
/// than `within`. Returns how many bytes it read.
pub(crate) async fn after_body<B>(mut body: B, max_message: usize, within: Duration) -> usize
where
    B: HttpBody + Unpin,
{
    let cap = max_message.saturating_add(PREFIX);
    let mut read = 0usize;
    let drain = async {
        while read <= cap && !body.is_end_stream() {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read = read.saturating_add(data.remaining());
                    }
                }
                // The end, or a body that failed (reset, timed out, over
                // a budget): nothing more to read either way.
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
    read
}

/// A request the interceptor refused, to be answered with `status` once
/// its body is read (up to `max_message` bytes).
#[derive(Clone, Debug)]
pub(crate) struct Refused {
    pub(crate) status: Status,
    pub(crate) max_message: usize,
}

/// Adds [`AnswerRefused`] behind an interceptor that marks refusals with
/// [`Refused`] instead of answering them itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AnswerRefusedLayer {
    pub(crate) within: Duration,
}

impl<S> Layer<S> for AnswerRefusedLayer {
    type Service = AnswerRefused<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnswerRefused {
            inner,
            within: self.within,
        }
    }
}

/// Answers a request marked [`Refused`] after its body, without calling
/// the service; passes every other request on.
#[derive(Clone, Debug)]
pub(crate) struct AnswerRefused<S> {
    inner: S,
    within: Duration,
}

impl<S: NamedService> NamedService for AnswerRefused<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for AnswerRefused<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(Refused {
            status,
            max_message,
        }) = request.extensions_mut().remove::<Refused>()
        {
            let within = self.within;
            return Box::pin(async move {
                after_body(request.into_body(), max_message, within).await;
                Ok(status.into_http())
            });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tokio::time::Instant;

    use super::*;

    fn frames(chunks: usize, size: usize, then_hang: bool) -> Body {
        let items = futures::stream::iter(
            (0..chunks).map(move |_| Ok::<_, Status>(Frame::data(Bytes::from(vec![7u8; size])))),
        );
        if then_hang {
            Body::new(StreamBody::new(futures::StreamExt::chain(
                items,
                futures::stream::pending(),
            )))
        } else {
            Body::new(StreamBody::new(items))
        }
    }

    /// Invariant: a refused body that ends is read to its end, at once.
    #[tokio::test(start_paused = true)]
    async fn a_complete_body_is_read_to_its_end() {
        let start = Instant::now();
        let read = after_body(frames(3, 10, false), 1024, DRAIN_TIME).await;
        assert_eq!(read, 30);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// Invariant: reading stops past the message cap, even if the body goes
    /// on, and the answer does not wait for the time limit.
    #[tokio::test(start_paused = true)]
    async fn reading_stops_past_the_message_cap() {
        let start = Instant::now();
        let read = after_body(frames(1000, 100, true), 1000, DRAIN_TIME).await;
        assert!((1005..=1105).contains(&read), "{read}");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// Invariant: a body that never ends is waited for no longer than the
    /// time limit.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_waited_for_only_so_long() {
        let start = Instant::now();
        let read = after_body(frames(1, 10, true), 1024, DRAIN_TIME).await;
        assert_eq!(read, 10);
        assert_eq!(start.elapsed(), DRAIN_TIME);
    }
}
