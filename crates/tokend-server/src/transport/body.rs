//! The request bounds layer. Without it, a caller that declares a large
//! message and never sends its last bytes keeps that buffer forever, and
//! thousands of such streams exhaust memory. This layer, in front of every
//! service, caps the requests in progress, gives each body a deadline, and
//! charges every buffered byte to one budget shared by all requests.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::ServiceError;

/// Adds [`RequestBounds`] in front of a service.
#[derive(Clone, Debug)]
pub(crate) struct RequestBoundsLayer {
    pending: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    body_timeout: Duration,
}

impl RequestBoundsLayer {
    pub(crate) fn new(limits: &crate::limits::Limits) -> Self {
        RequestBoundsLayer {
            pending: Arc::new(Semaphore::new(limits.max_pending_requests)),
            budget: Arc::new(Semaphore::new(limits.max_buffered_request_bytes)),
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
        let Ok(pending) = Arc::clone(&self.bounds.pending).try_acquire_owned() else {
            let refusal = ServiceError::Overloaded {
                limit: "max_pending_requests",
            }
            .to_status()
            .into_http();
            return Box::pin(async move { Ok(refusal) });
        };
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
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    /// Until the end of the body; `None` once it arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl BoundedBody {
    fn new(inner: Body, budget: Arc<Semaphore>, timeout: Duration) -> Self {
        BoundedBody {
            inner,
            budget,
            held: None,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timeout,
        }
    }

    /// Charges `n` more bytes, or says the server holds too many.
    fn charge(&mut self, n: usize) -> Result<(), Status> {
        if n == 0 {
            return Ok(());
        }
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        match Arc::clone(&self.budget).try_acquire_many_owned(permits) {
            Ok(p) => {
                match &mut self.held {
                    Some(held) => held.merge(p),
                    None => self.held = Some(p),
                }
                Ok(())
            }
            Err(_) => Err(ServiceError::Overloaded {
                limit: "max_buffered_request_bytes",
            }
            .to_status()),
        }
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
                    return Poll::Ready(Some(Err(refused)));
                }
                if this.inner.is_end_stream() {
                    this.deadline = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let Some(deadline) = &mut this.deadline else {
                    return Poll::Pending;
                };
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.deadline = None;
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
        let budget = Arc::new(Semaphore::new(1000));
        let mut body = BoundedBody::new(
            streaming(vec![Bytes::from(vec![0; 600])], true),
            Arc::clone(&budget),
            Duration::from_secs(10),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 600);
        assert_eq!(budget.available_permits(), 400);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        drop(body);
        assert_eq!(budget.available_permits(), 1000);
    }

    /// Invariant: the bytes held by all bodies never exceed the budget; the
    /// body over it is refused RESOURCE_EXHAUSTED, not buffered.
    #[tokio::test(start_paused = true)]
    async fn bodies_share_one_budget() {
        let budget = Arc::new(Semaphore::new(1000));
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
