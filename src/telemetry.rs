//! Logs and traces: the log lines on stderr, and, for `serve`, OpenTelemetry
//! trace export over OTLP/gRPC when the standard `OTEL_*` variables ask for
//! it (off by default).
//!
//! Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER=otlp`
//! (then to the default `http://localhost:4317`); `OTEL_SDK_DISABLED=true`
//! and `OTEL_TRACES_EXPORTER=none` turn it off. The exporter reads the rest
//! (headers, timeout, compression, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) itself. With export on,
//! a call's `traceparent` is honoured and passed on to the provider.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the environment asks of trace export, resolved once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Export {
    Off,
    /// OTLP over gRPC; `None` is the exporter's default endpoint.
    Otlp {
        endpoint: Option<String>,
    },
}

impl Export {
    /// Reads the standard variables through `var`.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Export::Off);
        }
        let asked_for_otlp = match set("OTEL_TRACES_EXPORTER") {
            None => false,
            Some(v) => match v.trim() {
                "none" => return Ok(Export::Off),
                "otlp" => true,
                other => anyhow::bail!(
                    "OTEL_TRACES_EXPORTER={other} is not supported: tokend exports traces with \"otlp\" (or \"none\")"
                ),
            },
        };
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if endpoint.is_none() && !asked_for_otlp {
            return Ok(Export::Off);
        }
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol
            && p.trim() != "grpc"
        {
            anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported: tokend exports OTLP over gRPC; set it to \"grpc\" and point the endpoint at the collector's gRPC port (4317)"
            );
        }
        Ok(Export::Otlp { endpoint })
    }
}

/// The installed subscriber; [`Telemetry::shutdown`] flushes exported spans.
pub(crate) struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. Must run inside the tokio runtime:
    /// the OTLP exporter's channel lives on it.
    pub(crate) fn init(log_json: bool, export: Export) -> anyhow::Result<Self> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Logs go to stderr, so stdout carries only what a command prints (a
        // token, JSON); colours only when a person is looking.
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = if log_json {
            logs.json().with_filter(filter).boxed()
        } else {
            use std::io::IsTerminal as _;
            logs.with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter)
                .boxed()
        };
        let tracer = match export {
            Export::Off => None,
            Export::Otlp { endpoint } => Some(tracer_provider(endpoint)?),
        };
        let spans = tracer.as_ref().map(|provider| {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("tokend"))
                // tokend's own spans at every level (the per-call span is
                // DEBUG), and its log lines from INFO up as span events;
                // nothing from libraries, whose spans could hold anything.
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    meta.target().starts_with("tokend")
                        && (meta.is_span() || *meta.level() <= tracing::Level::INFO)
                }))
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init()
            .context("cannot install the log subscriber")?;
        if tracer.is_some() {
            tracing::info!("exporting traces over OTLP/gRPC");
        }
        Ok(Self { tracer })
    }

    /// Sends the spans not yet exported, within [`FLUSH_DEADLINE`].
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.tracer
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_DEADLINE)
        {
            tracing::warn!(error = %e, "not every span reached the OTLP collector");
        }
    }
}

fn tracer_provider(endpoint: Option<String>) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .context("cannot set up the OTLP trace exporter")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("tokend");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::args::VERSION,
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::Export;

    fn resolve(vars: &[(&str, &str)]) -> anyhow::Result<Export> {
        Export::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_is_off_unless_asked_for() {
        assert_eq!(resolve(&[]).unwrap(), Export::Off);
        assert_eq!(
            resolve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(),
            Export::Off
        );
    }

    #[test]
    fn an_endpoint_turns_export_on_and_the_traces_one_wins() {
        assert_eq!(
            resolve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap(),
            Export::Otlp {
                endpoint: Some("http://c:4317".into())
            }
        );
        assert_eq!(
            resolve(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ])
            .unwrap(),
            Export::Otlp {
                endpoint: Some("http://t:4317".into())
            }
        );
        assert_eq!(
            resolve(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap(),
            Export::Otlp { endpoint: None }
        );
    }

    #[test]
    fn the_standard_switches_turn_it_off() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert_eq!(
            resolve(&[on, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            Export::Off
        );
        assert_eq!(
            resolve(&[on, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            Export::Off
        );
    }

    #[test]
    fn what_tokend_cannot_do_is_an_error_that_says_so() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let e = resolve(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("over gRPC") && e.contains("4317"), "{e}");
        let e = resolve(&[("OTEL_TRACES_EXPORTER", "zipkin")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("zipkin"), "{e}");
        assert_eq!(
            resolve(&[on, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]).unwrap(),
            Export::Otlp {
                endpoint: Some("http://c:4318".into())
            }
        );
    }
}
