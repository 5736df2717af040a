//! The request bounds layer. Without it, a caller that declares a large
//! message and never sends its last bytes keeps that buffer forever, and
//! thousands of such streams exhaust memory. This layer, in front of every
//! service, caps the requests in progress, gives each body a deadline,
//! checks its gRPC framing ([`super::framing`]), and charges every buffered
//! byte to a budget shared by all requests of its class: tokend's own
//! services, or the unauthenticated ones (health, reflection), which have
//! their own small budget, pending cap and message cap, so filling those
//! never starves tokend's callers. It also counts each connection's open
//! streams, for the idle timeout and shedding ([`super::conns`]).

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

use super::{
    conns::{Connections, peer_of},
    framing::Framing,
    trailers::{Refusal, Tracked, Witness},
};
use crate::error::ServiceError;

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
    pub(crate) fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// How much is taken now (one atomic load).
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
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

/// Adds [`RequestBounds`] in front of a service. One `Arc`: the service
/// is cloned for every request.
#[derive(Clone, Debug)]
pub(crate) struct RequestBoundsLayer(Arc<Shared>);

/// What every request's bounds share.
#[derive(Debug)]
struct Shared {
    /// Requests to tokend's services.
    authenticated: Class,
    /// Requests to every other service (health, reflection).
    unauthenticated: Class,
    body_timeout: Duration,
    conns: Arc<Connections>,
    witness: Witness,
}

/// The bounds of one class of requests, and the limit names their
/// refusals carry.
#[derive(Debug)]
struct Class {
    pending: Arc<Quota>,
    budget: Arc<Quota>,
    max_message: usize,
    pending_limit: &'static str,
    budget_limit: &'static str,
    /// tokend's services: their requests are unary, so a body's refusal
    /// is what the call answers. The others (reflection) are streaming
    /// and end a failed request stream quietly: the refusal is put in
    /// their trailers.
    authenticated: bool,
}

impl RequestBoundsLayer {
    pub(crate) fn new(
        limits: &tokend_config::limits::Limits,
        conns: Arc<Connections>,
        witness: Witness,
    ) -> Self {
        RequestBoundsLayer(Arc::new(Shared {
            authenticated: Class {
                // Shared with the open-mode callers' contention signal.
                pending: Arc::clone(&conns.load.pending),
                budget: Quota::new(limits.max_buffered_request_bytes),
                max_message: tokend_config::limits::MAX_REQUEST_BYTES,
                pending_limit: "max_pending_requests",
                budget_limit: "max_buffered_request_bytes",
                authenticated: true,
            },
            unauthenticated: Class {
                pending: Quota::new(limits.max_unauthenticated_pending_requests),
                budget: Quota::new(limits.max_unauthenticated_buffered_bytes),
                max_message: limits.max_unauthenticated_message_bytes,
                pending_limit: "max_unauthenticated_pending_requests",
                budget_limit: "max_unauthenticated_buffered_bytes",
                authenticated: false,
            },
            body_timeout: limits.request_body_timeout,
            conns,
            witness,
        }))
    }
}

impl Shared {
    /// How long a refused request's body is read: a second, or the body
    /// timeout if that is shorter.
    fn refusal_drain_time(&self) -> Duration {
        self.body_timeout.min(super::refuse::DRAIN_TIME)
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

/// Refuses requests over the pending cap (once their body is read, within
/// bounds: [`super::refuse`]), and bounds each body.
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
        let shared = &*self.bounds.0;
        let class = if super::is_unauthenticated(request.uri().path()) {
            &shared.unauthenticated
        } else {
            &shared.authenticated
        };
        // The stream is open from here to the end of its response.
        let stream = shared.conns.track(&request, class.authenticated);
        if !class.pending.try_take(1) {
            let refusal = ServiceError::Overloaded {
                limit: class.pending_limit,
            }
            .to_status()
            .into_http();
            // Answered once the body is read, up to one message and for a
            // second at most ([`super::refuse`]): unread DATA frames would
            // make h2 end the client's whole connection.
            let (max_message, within) = (class.max_message, shared.refusal_drain_time());
            return Box::pin(async move {
                let _stream = stream;
                super::refuse::after_body(request.into_body(), max_message, within).await;
                Ok(refusal)
            });
        }
        let pending = Pending(Arc::clone(&class.pending));
        let compressed_ok = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() != b"identity");
        let refusal = (!class.authenticated).then(Refusal::default);
        let witness = refusal
            .is_some()
            .then(|| (shared.witness.clone(), peer_of(&request)));
        let bounds = Bounds {
            budget: Arc::clone(&class.budget),
            budget_limit: class.budget_limit,
            timeout: shared.body_timeout,
            framing: Framing::new(class.max_message, compressed_ok),
            refusal: refusal.clone(),
        };
        let request = request.map(|inner| Body::new(bounds.wrap(inner)));
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(pending);
            if stream.is_none() && refusal.is_none() {
                return response;
            }
            response.map(|r| {
                r.map(|body| {
                    Body::new(Tracked {
                        body,
                        _stream: stream,
                        refusal,
                        witness,
                    })
                })
            })
        })
    }
}

/// What a [`BoundedBody`] is held to.
struct Bounds {
    budget: Arc<Quota>,
    budget_limit: &'static str,
    timeout: Duration,
    framing: Framing,
    refusal: Option<Refusal>,
}

impl Bounds {
    fn wrap(self, inner: Body) -> BoundedBody {
        BoundedBody {
            inner,
            budget: self.budget,
            budget_limit: self.budget_limit,
            held: 0,
            framing: Some(self.framing),
            deadline: Some(Instant::now() + self.timeout),
            timer: None,
            timeout: self.timeout,
            refusal: self.refusal,
        }
    }
}

/// A request body with a deadline and checked framing, the bytes of whose
/// incomplete message are charged to its class's budget until the message
/// completes or the request is dropped.
struct BoundedBody {
    inner: Body,
    budget: Arc<Quota>,
    budget_limit: &'static str,
    /// Bytes taken from `budget`: the incomplete message's, given back as
    /// it completes or on drop.
    held: usize,
    /// `None` once the body has ended (or was refused).
    framing: Option<Framing>,
    /// When the whole body must have arrived; `None` once it has.
    deadline: Option<Instant>,
    /// The timer, made only when the body has to be waited for (most
    /// requests arrive whole in their first frame).
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    /// Where a refusal is kept for the response's trailers, if anywhere.
    refusal: Option<Refusal>,
}

impl BoundedBody {
    /// Follows `data`'s framing and charges the bytes of the message it
    /// leaves incomplete, or says why not. Complete messages go straight to
    /// the decoder and are not charged, so a whole small request (a health
    /// check, a GetToken) is never refused for the budget.
    fn take(&mut self, data: &[u8]) -> Result<(), Status> {
        let Some(framing) = &mut self.framing else {
            return Ok(());
        };
        framing.feed(data).map_err(|f| f.to_error().to_status())?;
        let partial = framing.partial();
        if partial <= self.held {
            self.budget.give_back(self.held - partial);
        } else if !self.budget.try_take(partial - self.held) {
            return Err(ServiceError::Overloaded {
                limit: self.budget_limit,
            }
            .to_status());
        }
        self.held = partial;
        Ok(())
    }

    /// The body has ended: whether it ended between messages.
    fn end(&mut self) -> Result<(), Status> {
        self.deadline = None;
        self.timer = None;
        match self.framing.take() {
            Some(framing) => framing.finish().map_err(|f| f.to_error().to_status()),
            None => Ok(()),
        }
    }

    /// Stops following the body after a refusal, and reports it.
    fn fail(&mut self, refusal: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.deadline = None;
        self.timer = None;
        self.framing = None;
        if let Some(kept) = &self.refusal {
            let _ = kept.set(refusal.clone());
        }
        Poll::Ready(Some(Err(refusal)))
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
                    && let Err(refused) = this.take(data)
                {
                    return this.fail(refused);
                }
                if this.inner.is_end_stream()
                    && let Err(refused) = this.end()
                {
                    return this.fail(refused);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => match this.end() {
                Ok(()) => Poll::Ready(None),
                Err(refused) => this.fail(refused),
            },
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
                this.fail(ServiceError::RequestTimeout(this.timeout).to_status())
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

    /// One gRPC message of `len` bytes, prefix included, cut to `send`.
    fn message(len: usize, send: usize) -> Bytes {
        let mut m = vec![0u8];
        m.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        m.resize(5 + len, 0x0a);
        m.truncate(send);
        Bytes::from(m)
    }

    fn bounded(body: Body, budget: &Arc<Quota>, max_message: usize) -> BoundedBody {
        Bounds {
            budget: Arc::clone(budget),
            budget_limit: "max_buffered_request_bytes",
            timeout: Duration::from_secs(10),
            framing: Framing::new(max_message, false),
            refusal: None,
        }
        .wrap(body)
    }

    /// Invariant: a body that stops short is cut at its deadline, and its
    /// bytes go back to the budget when the request is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_and_returns_its_bytes() {
        let budget = Quota::new(1000);
        let mut body = bounded(
            streaming(vec![message(900, 600)], true),
            &budget,
            usize::MAX,
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
        let mut a = bounded(
            streaming(vec![message(900, 700)], true),
            &budget,
            usize::MAX,
        );
        let mut b = bounded(
            streaming(vec![message(900, 700)], true),
            &budget,
            usize::MAX,
        );
        a.frame().await.unwrap().unwrap();
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop(a);
        let mut c = bounded(
            streaming(vec![message(695, 700)], false),
            &budget,
            usize::MAX,
        );
        c.frame().await.unwrap().unwrap();
        assert!(c.frame().await.is_none(), "a complete body ends normally");
    }

    /// Issue 24, item 11. Invariant: a framing fault is INVALID_ARGUMENT
    /// (`MALFORMED_REQUEST`), whether it shows in a frame (a bad flag) or
    /// only at the end (a body cut inside a message or its prefix), and a
    /// declared length over the class's cap is refused from the prefix.
    #[tokio::test(start_paused = true)]
    async fn framing_faults_are_invalid_argument() {
        let budget = Quota::new(1 << 20);
        let reason = |s: &Status| {
            tonic_types::StatusExt::get_details_error_info(s)
                .map(|i| i.reason)
                .unwrap_or_default()
        };
        let cases = [
            ("flag 2", vec![Bytes::from_static(&[2, 0, 0, 0, 1, 0])]),
            ("compressed", vec![Bytes::from_static(&[1, 0, 0, 0, 1, 0])]),
            ("3-byte prefix", vec![Bytes::from_static(&[0, 0, 0])]),
            ("short message", vec![message(10, 9)]),
            (
                "prefix split over frames, then cut",
                vec![message(10, 2), Bytes::from_static(&[0, 0])],
            ),
        ];
        for (what, chunks) in cases {
            let mut body = bounded(streaming(chunks, false), &budget, 4096);
            let err = loop {
                match body.frame().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e,
                    None => panic!("{what}: accepted"),
                }
            };
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert_eq!(reason(&err), "MALFORMED_REQUEST", "{what}");
            assert!(body.frame().await.is_none(), "{what}: one refusal");
        }
        let mut big = bounded(streaming(vec![message(5000, 20)], true), &budget, 4096);
        let err = big.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("is 5000 bytes"), "{}", err.message());
        drop(big);
        assert_eq!(budget.available(), 1 << 20);
    }
}
