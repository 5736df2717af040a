//! OpenTelemetry export from a real `tokend serve` process to an OTLP/gRPC
//! receiver in this test: a GetToken that carries a W3C `traceparent` and
//! triggers a refresh shows up as the caller's trace, rpc → refresh →
//! provider call, and the provider sees the trace continue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokend_proto::v1 as pb;

/// The caller's trace and span, as its own tracer would send them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        }
    })
}

fn every_value(attrs: &[KeyValue]) -> impl Iterator<Item = String> + '_ {
    attrs.iter().filter_map(|kv| match kv.value.as_ref() {
        Some(AnyValue {
            value: Some(Value::StringValue(s)),
        }) => Some(s.clone()),
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issue 14. Invariants: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a call's
/// `traceparent` makes tokend's per-call span a child of the caller's span,
/// the refresh it starts is that span's child and the provider call the
/// refresh's; the provider receives a `traceparent` naming the provider-call
/// span; and no exported attribute holds a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_through_a_refresh_into_the_provider_call() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let served = crate::process::Served::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
    ])
    .await;
    let mut client = served.client();

    // Not due for the background refresher (1000 s left), but short of the
    // 1200 s the caller asks for: the GetToken itself refreshes.
    let issued = served.install("traced", 1000).await;
    let mut call = tonic::Request::new(pb::GetTokenRequest {
        connection_id: "traced".into(),
        min_ttl_seconds: 1200,
    });
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
            .parse()
            .expect("metadata"),
    );
    let served_token = client
        .get_token(call)
        .await
        .expect("get token")
        .into_inner()
        .token
        .expect("token");
    assert_ne!(
        served_token.access_token, issued.access_token,
        "it refreshed"
    );

    let named = |name: &str| -> Option<Received> {
        receiver
            .0
            .lock()
            .expect("lock")
            .iter()
            .find(|r| r.span.name == name && hex(&r.span.trace_id) == TRACE_ID)
            .cloned()
    };
    let arrived = crate::harness::eventually(Duration::from_secs(20), || {
        ["rpc", "refresh", "provider_call"]
            .iter()
            .all(|n| named(n).is_some())
    })
    .await;
    let spans = receiver.0.lock().expect("lock").clone();
    assert!(
        arrived,
        "spans of the caller's trace did not all arrive: {:?}\n{}",
        spans
            .iter()
            .map(|r| (&r.span.name, hex(&r.span.trace_id)))
            .collect::<Vec<_>>(),
        served.log_text()
    );
    let rpc = named("rpc").expect("rpc");
    let refresh = named("refresh").expect("refresh");
    let provider_call = named("provider_call").expect("provider_call");

    assert_eq!(rpc.service, "tokend");
    assert_eq!(
        hex(&rpc.span.parent_span_id),
        CALLER_SPAN,
        "the call continues the caller's span"
    );
    assert_eq!(
        string_attr(&rpc.span.attributes, "path").as_deref(),
        Some("/tokend.v1.TokenService/GetToken")
    );
    assert_eq!(
        string_attr(&rpc.span.attributes, "connection_id").as_deref(),
        Some("traced")
    );
    assert_eq!(
        refresh.span.parent_span_id, rpc.span.span_id,
        "the refresh is a child of the call that started it"
    );
    let refresh_attrs: HashMap<&str, String> = ["connection_id", "provider", "outcome"]
        .into_iter()
        .filter_map(|k| string_attr(&refresh.span.attributes, k).map(|v| (k, v)))
        .collect();
    assert_eq!(
        refresh_attrs.get("connection_id").map(String::as_str),
        Some("traced")
    );
    assert_eq!(
        refresh_attrs.get("provider").map(String::as_str),
        Some("sandbox")
    );
    assert!(refresh_attrs.contains_key("outcome"), "{refresh_attrs:?}");
    assert_eq!(
        provider_call.span.parent_span_id, refresh.span.span_id,
        "the provider call is a child of the refresh"
    );

    // The provider saw the trace continue, from the provider-call span.
    let expected = format!("00-{TRACE_ID}-{}-01", hex(&provider_call.span.span_id));
    let seen = served.sandbox.trace_parents();
    assert!(
        seen.contains(&expected),
        "the provider got {seen:?}, not {expected}"
    );

    // No secret in any exported attribute or event.
    let secrets = [
        issued.access_token.as_str(),
        issued.refresh_token.as_str(),
        served_token.access_token.as_str(),
    ];
    for r in &spans {
        let events = r
            .span
            .events
            .iter()
            .flat_map(|e| every_value(&e.attributes));
        for value in every_value(&r.span.attributes).chain(events) {
            for secret in secrets {
                assert!(
                    !value.contains(secret),
                    "span {} exports a secret in {value:?}",
                    r.span.name
                );
            }
        }
    }
    serving.abort();
}
