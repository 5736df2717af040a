//! What a response says when its request body was refused. tokend's own
//! services are unary: a body's refusal is what the call answers. The
//! unauthenticated streaming ones (reflection) end a failed request stream
//! quietly, with OK: [`Tracked`] puts the refusal in their trailers, and
//! audits it, since no header shows it to the edge layer
//! ([`crate::malformed`]), which audits the others. It also holds the
//! stream's place among its connection's open streams until the response
//! ends.

use std::{
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokend_core::Clock;
use tonic::{Status, body::Body};

use super::conns::StreamGuard;
use crate::audit::AuditLog;

/// Where a refusal put in trailers is audited: no header shows it to the
/// edge layer ([`crate::malformed`]), which audits the others.
#[derive(Clone)]
pub(crate) struct Witness {
    pub(crate) audit: AuditLog,
    pub(crate) clock: Clock,
}

impl fmt::Debug for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Witness")
    }
}

/// A body's refusal, kept for its response's trailers.
pub(crate) type Refusal = Arc<OnceLock<Status>>;

/// A response body; its stream counts as open on its connection until
/// this is dropped (hyper drops it once the response has ended). Its
/// trailers carry its request body's refusal, if any.
pub(crate) struct Tracked {
    pub(crate) body: Body,
    pub(crate) _stream: Option<StreamGuard>,
    pub(crate) refusal: Option<Refusal>,
    /// Who audits the refusal, and the client's address.
    pub(crate) witness: Option<(Witness, Option<SocketAddr>)>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        let refused = this.refusal.as_ref().and_then(|r| r.get());
        Poll::Ready(match (frame, refused) {
            (Some(Ok(frame)), Some(refused)) if frame.is_trailers() => {
                if let Some((witness, peer)) = &this.witness {
                    witness
                        .audit
                        .refusal(witness.clock.now(), "-", "-", *peer, refused);
                }
                let mut trailers = http::HeaderMap::new();
                Some(match refused.add_header(&mut trailers) {
                    Ok(()) => Ok(Frame::trailers(trailers)),
                    Err(e) => Err(e),
                })
            }
            (frame, _) => frame,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tonic::Code;

    use super::*;
    use crate::error::ServiceError;

    /// Issue 24, item 11. Invariant: a streaming service that ends its
    /// response OK after its request body was refused (reflection does)
    /// answers the refusal in its trailers instead.
    #[tokio::test]
    async fn a_refused_request_body_is_what_a_streaming_response_ends_with() {
        let refused = ServiceError::MalformedRequest("gRPC message flag 2".into()).to_status();
        let refusal = Refusal::default();
        refusal.set(refused).unwrap();
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        let inner = Body::new(StreamBody::new(futures::stream::iter([
            Ok::<_, Status>(Frame::data(Bytes::from_static(b"reply"))),
            Ok(Frame::trailers(ok)),
        ])));
        let witness = Witness {
            audit: AuditLog::disabled(),
            clock: Clock::system(),
        };
        let body = Tracked {
            body: inner,
            _stream: None,
            refusal: Some(refusal),
            witness: Some((witness, None)),
        };
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            tonic_types::StatusExt::get_details_error_info(&status)
                .unwrap()
                .reason,
            "MALFORMED_REQUEST"
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"reply"));
    }
}
