//! Requests refused before any service saw them. tonic's codec answers an
//! undecodable request INTERNAL and an oversized one OUT_OF_RANGE, with no
//! details; this tower layer, in front of every service, turns those into
//! INVALID_ARGUMENT (reason `MALFORMED_REQUEST`, or field `request` with
//! the size), as the contract says for bad input. It also writes the audit
//! line of every such refusal, and of the transport bounds' refusals
//! (overload, body timeout), which no service code sees either.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokend_core::Clock;
use tonic::{Code, Status, body::Body, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use tokend_config::limits::MAX_REQUEST_BYTES;

use crate::{audit::AuditLog, error::ServiceError};

/// What prost's decode errors say first (tonic passes them on verbatim).
const DECODE_FAILURE: &str = "failed to decode Protobuf message";
/// tonic's answer to a body that ends before any message.
const MISSING_MESSAGE: &str = "Missing request message.";
/// tonic's answers to a framing fault (a flag byte other than 0 or 1, or
/// the compressed flag with no `grpc-encoding`) and to a body that ends
/// inside a message. The request bounds layer refuses these first
/// (`transport::framing`); these remain for a server without it.
const BAD_FLAG: &str = "protocol error: received message with ";
const CUT_SHORT: &str = "Unexpected EOF decoding stream.";
/// tonic's answer to a message over its decoding limit.
const TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Adds [`EdgeRefusals`] in front of a service.
#[derive(Clone)]
pub struct EdgeRefusalsLayer {
    audit: AuditLog,
    clock: Clock,
}

impl EdgeRefusalsLayer {
    pub fn new(audit: AuditLog, clock: Clock) -> Self {
        EdgeRefusalsLayer { audit, clock }
    }
}

impl<S> Layer<S> for EdgeRefusalsLayer {
    type Service = EdgeRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeRefusals {
            inner,
            layer: self.clone(),
        }
    }
}

/// Rewrites tonic's refusals of bad requests and audits every refusal made
/// before a service ran.
#[derive(Clone)]
pub struct EdgeRefusals<S> {
    inner: S,
    layer: EdgeRefusalsLayer,
}

impl<S, B> Service<http::Request<B>> for EdgeRefusals<S>
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
        let rpc = rpc_name(request.uri().path());
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        let layer = self.layer.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // Only trailers-only answers (an error before any message)
            // carry `grpc-status` in the headers, which is where these are.
            let Some(status) = Status::from_header_map(response.headers()) else {
                return Ok(response);
            };
            let (status, rewritten) = match remap(&status) {
                Some(better) => (better, true),
                None => (status, false),
            };
            if is_edge_refusal(&status) {
                layer
                    .audit
                    .refusal(layer.clock.now(), "-", rpc, peer, &status);
            }
            Ok(if rewritten {
                status.into_http()
            } else {
                response
            })
        })
    }
}

/// tonic's refusal of an undecodable or oversized request, in the
/// contract's terms; `None` for every other status.
fn remap(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::Internal
            if message.starts_with(DECODE_FAILURE)
                || message.starts_with(BAD_FLAG)
                || message == MISSING_MESSAGE
                || message == CUT_SHORT =>
        {
            Some(ServiceError::MalformedRequest(message.to_owned()).to_status())
        }
        Code::OutOfRange if message.starts_with(TOO_LARGE) => {
            let size = message[TOO_LARGE.len()..]
                .split(' ')
                .next()
                .unwrap_or("more than the limit");
            Some(
                ServiceError::invalid(
                    "request",
                    format!("is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes"),
                )
                .to_status(),
            )
        }
        _ => None,
    }
}

/// Refusals made before the service ran (the service audits its own).
fn is_edge_refusal(status: &Status) -> bool {
    let reason = tonic_types::StatusExt::get_details_error_info(status).map(|i| i.reason);
    match reason.as_deref() {
        Some("MALFORMED_REQUEST" | "SERVER_OVERLOADED" | "REQUEST_BODY_TIMEOUT") => true,
        Some("INVALID_ARGUMENT") => tonic_types::StatusExt::get_details_bad_request(status)
            .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "request")),
        _ => false,
    }
}

/// The method a path names, as the audit log writes it.
fn rpc_name(path: &str) -> &'static str {
    const RPCS: [&str; 8] = [
        "GetToken",
        "ForceRefresh",
        "WatchConnection",
        "Install",
        "GetConnection",
        "ListConnections",
        "DeleteConnection",
        "ExportConnections",
    ];
    let method = path.rsplit('/').next().unwrap_or_default();
    RPCS.into_iter().find(|r| *r == method).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_refusals_become_the_contract_codes() {
        let decode = Status::internal(format!("{DECODE_FAILURE}: invalid wire type"));
        let m = remap(&decode).unwrap();
        assert_eq!(m.code(), Code::InvalidArgument);
        assert!(is_edge_refusal(&m));

        let big = Status::out_of_range(format!(
            "{TOO_LARGE}400000 bytes, the limit is: 65536 bytes"
        ));
        let m = remap(&big).unwrap();
        assert_eq!(m.code(), Code::InvalidArgument);
        assert!(m.message().contains("is 400000 bytes"), "{}", m.message());
        assert!(is_edge_refusal(&m));

        for framing in [
            "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), while sending request",
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            CUT_SHORT,
        ] {
            let m = remap(&Status::internal(framing)).unwrap();
            assert_eq!(m.code(), Code::InvalidArgument, "{framing}");
            assert!(is_edge_refusal(&m));
        }

        assert!(remap(&Status::internal("a bug")).is_none());
        assert!(!is_edge_refusal(
            &ServiceError::invalid("connection_id", "x").to_status()
        ));
    }

    #[test]
    fn paths_name_known_rpcs_only() {
        assert_eq!(rpc_name("/tokend.v1.TokenService/GetToken"), "GetToken");
        assert_eq!(rpc_name("/x/../../etc/passwd"), "-");
    }
}
