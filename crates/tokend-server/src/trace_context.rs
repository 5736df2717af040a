//! W3C trace context from callers: a call carrying `traceparent` (and
//! `tracestate`) in its gRPC metadata continues the caller's trace.
//!
//! tokend depends on the OpenTelemetry API only; the binary installs the
//! propagator and exporter when OTLP export is on. Without them the global
//! propagator extracts nothing and this is a header lookup per call.

use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header that names the caller's trace and span.
const TRACEPARENT: &str = "traceparent";

/// Makes `span` a child of the caller's span named in `headers`, if any.
pub(crate) fn continue_caller_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    // Fails only when no OpenTelemetry layer is installed: nothing to do.
    let _ = span.set_parent(parent);
}

/// `http::HeaderMap` as the propagator reads it.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
