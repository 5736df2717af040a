//! Undecodable requests are the caller's mistake. tonic's protobuf codec
//! answers them INTERNAL with no details; this tower layer, in front of
//! every service, turns that answer into INVALID_ARGUMENT with ErrorInfo
//! reason `MALFORMED_REQUEST`, as the contract says for malformed input.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::ServiceError;

/// What prost's decode errors say first (tonic passes them on verbatim).
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Adds [`MalformedRequests`] in front of a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct MalformedRequestsLayer;

impl<S> Layer<S> for MalformedRequestsLayer {
    type Service = MalformedRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MalformedRequests { inner }
    }
}

/// Rewrites decode failures of requests into INVALID_ARGUMENT.
#[derive(Clone, Debug)]
pub struct MalformedRequests<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for MalformedRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move { Ok(remap(answer.await?)) })
    }
}

/// The response, or INVALID_ARGUMENT if it reports a request that could not
/// be decoded. Only trailers-only answers (an error before any message)
/// carry `grpc-status` in the headers, which is where decode errors are.
fn remap(response: http::Response<Body>) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == Code::Internal && status.message().starts_with(DECODE_FAILURE) =>
        {
            ServiceError::MalformedRequest(status.message().to_owned())
                .to_status()
                .into_http()
        }
        _ => response,
    }
}
