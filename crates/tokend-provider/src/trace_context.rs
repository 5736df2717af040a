//! W3C trace context to providers: a provider call carries the current
//! span's `traceparent`, so a caller's trace continues into the token
//! endpoint's own logs and traces.
//!
//! The binary installs the propagator only when OTLP export is on; without
//! it nothing is added to the request.

use opentelemetry::propagation::Injector;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `request` with the current span's trace context headers, if any.
pub(crate) fn with_current_trace(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return request;
    }
    let mut headers = Headers(Vec::new());
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers)
    });
    headers
        .0
        .into_iter()
        .fold(request, |request, (name, value)| {
            request.header(name, value)
        })
}

/// The headers a propagator writes, collected before they join the request.
struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}
