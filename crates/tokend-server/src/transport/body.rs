//! The request bounds layer. Without it, a caller that declares a large
//! message and never sends its last bytes keeps that buffer forever, and
//! thousands of such streams exhaust memory. This layer, in front of every
//! service, caps the requests in progress, gives each body a deadline, and
//! charges every buffered byte to one budget shared by all requests.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::ServiceError;

/// A count of something held (requests, bytes) with a ceiling, taken
/// without waiting. Plain atomics: unlike a tokio `Semaphore`, giving back
/// takes no lock, and every request takes and gives back. Aligned to its
/// own cache line, away from the `Arc`'s reference counts.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Quota {
    used: AtomicUsize,
    max: usize,
}

impl Quota {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Quota {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `n` if that stays within the ceiling.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.max - self.used.load(Ordering::Acquire)
    }
}

/// One place among the pending requests, given back on drop.
struct Pending(Arc<Quota>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.give_back(1);
    }
}

/// Adds [`RequestBounds`] in front of a service.
#[derive(Clone, Debug)]
pub(crate) struct RequestBoundsLayer {
    pending: Arc<Quota>,
    budget: Arc<Quota>,
    body_timeout: Duration,
}

impl RequestBoundsLayer {
    pub(crate) fn new(limits: &crate::limits::Limits) -> Self {
        RequestBoundsLayer {
            pending: Quota::new(limits.max_pending_requests),
            budget: Quota::new(limits.max_buffered_request_bytes),
            body_timeout: limits.request_body_timeout,
        }
    }
}

impl<S> Layer<S> for RequestBoundsLayer {
    type Service = RequestBounds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBounds {
            inner,
            bounds: self.clone(),
        }
    }
}

/// Refuses requests over the pending cap at once, and bounds each body.
#[derive(Clone, Debug)]
pub(crate) struct RequestBounds<S> {
    inner: S,
    bounds: RequestBoundsLayer,
}

impl<S> Service<http::Request<Body>> for RequestBounds<S>
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !self.bounds.pending.try_take(1) {
            let refusal = ServiceError::Overloaded {
                limit: "max_pending_requests",
            }
            .to_status()
            .into_http();
            return Box::pin(async move { Ok(refusal) });
        }
        let pending = Pending(Arc::clone(&self.bounds.pending));
        let budget = Arc::clone(&self.bounds.budget);
        let timeout = self.bounds.body_timeout;
        let request = request.map(|body| Body::new(BoundedBody::new(body, budget, timeout)));
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(pending);
            response
        })
    }
}

/// A request body with a deadline, whose buffered bytes are charged to the
/// shared budget until the request is dropped.
struct BoundedBody {
    inner: Body,
    budget: Arc<Quota>,
    /// Bytes taken from `budget`, given back on drop.
    held: usize,
    /// When the whole body must have arrived; `None` once it has.
    deadline: Option<Instant>,
    /// The timer, made only when the body has to be waited for (most
    /// requests arrive whole in their first frame).
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl BoundedBody {
    fn new(inner: Body, budget: Arc<Quota>, timeout: Duration) -> Self {
        BoundedBody {
            inner,
            budget,
            held: 0,
            deadline: Some(Instant::now() + timeout),
            timer: None,
            timeout,
        }
    }

    /// Charges `n` more bytes, or says the server holds too many.
    fn charge(&mut self, n: usize) -> Result<(), Status> {
        if self.budget.try_take(n) {
            self.held += n;
            Ok(())
        } else {
            Err(ServiceError::Overloaded {
                limit: "max_buffered_request_bytes",
            }
            .to_status())
        }
    }
}

impl Drop for BoundedBody {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl HttpBody for BoundedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(refused) = this.charge(data.len())
                {
                    this.deadline = None;
                    this.timer = None;
                    return Poll::Ready(Some(Err(refused)));
                }
                if this.inner.is_end_stream() {
                    this.deadline = None;
                    this.timer = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.deadline = None;
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.timer = None;
                Poll::Ready(Some(Err(
                    ServiceError::RequestTimeout(this.timeout).to_status()
                )))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tonic::Code;

    use super::*;

    fn streaming(chunks: Vec<Bytes>, then_hang: bool) -> Body {
        let items =
            futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, Status>(Frame::data(c))));
        if then_hang {
            Body::new(StreamBody::new(futures::StreamExt::chain(
                items,
                futures::stream::pending(),
            )))
        } else {
            Body::new(StreamBody::new(items))
        }
    }

    /// Invariant: a body that stops short is cut at its deadline, and its
    /// bytes go back to the budget when the request is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_and_returns_its_bytes() {
        let budget = Quota::new(1000);
        let mut body = BoundedBody::new(
            streaming(vec![Bytes::from(vec![0; 600])], true),
            Arc::clone(&budget),
            Duration::from_secs(10),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 600);
        assert_eq!(budget.available(), 400);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        drop(body);
        assert_eq!(budget.available(), 1000);
    }

    /// Invariant: the bytes held by all bodies never exceed the budget; the
    /// body over it is refused RESOURCE_EXHAUSTED, not buffered.
    #[tokio::test(start_paused = true)]
    async fn bodies_share_one_budget() {
        let budget = Quota::new(1000);
        let mut a = BoundedBody::new(
            streaming(vec![Bytes::from(vec![0; 700])], true),
            Arc::clone(&budget),
            Duration::from_secs(10),
        );
        let mut b = BoundedBody::new(
            streaming(vec![Bytes::from(vec![0; 700])], true),
            Arc::clone(&budget),
            Duration::from_secs(10),
        );
        a.frame().await.unwrap().unwrap();
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop(a);
        let mut c = BoundedBody::new(
            streaming(vec![Bytes::from(vec![0; 700])], false),
            Arc::clone(&budget),
            Duration::from_secs(10),
        );
        c.frame().await.unwrap().unwrap();
        assert!(c.frame().await.is_none(), "a complete body ends normally");
    }
}
