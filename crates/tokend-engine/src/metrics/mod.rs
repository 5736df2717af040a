//! What tokend counts, as Prometheus metrics, served on the admin listener
//! (`admin.rs`).
//!
//! `prometheus-client`, the Prometheus project's own Rust client, with a
//! registry per server rather than a process-global recorder (the `metrics`
//! facade's model): tests and benches run several servers in one process,
//! and each must read its own figures. Labels are bounded by providers ×
//! codes × classes: never a connection id or an account id.

mod keys;
mod steps;
mod store;

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use keys::KeyRotationMetrics;
pub use store::MeteredStore;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds left on a served token: "served with < 120 s left" is one bucket.
const TTL_BUCKETS: [f64; 5] = [60.0, 120.0, 300.0, 600.0, 1800.0];

/// Static strings: labelling a call allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub provider: String,
    /// `success`, `failure`, `reconnect_required`, `breaker_open`.
    pub outcome: String,
    /// The error class (`transient`, `rate_limited`, `client_misconfigured`,
    /// `revoked`, `store`, ...), empty on success.
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub provider: String,
    /// `2xx`, `4xx`, `5xx`, or `none` (no answer: timeout, connection).
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub provider: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: String,
    /// `ok`, `conflict`, `fenced`, `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The endpoint's name from the config (an operator's word, bounded).
    pub webhook: String,
    /// `delivered` or `failed` (an attempt that will be retried).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// `watch_connection` or `watch_connections`.
    pub stream: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Refresh outcomes per minute, for the console's chart: the last hour.
#[derive(Default)]
pub struct History {
    /// `(unix minute, succeeded, failed)`, oldest first.
    minutes: std::collections::VecDeque<(i64, u64, u64)>,
    /// Per provider since start: `(succeeded, failed)`.
    pub by_provider: std::collections::BTreeMap<String, (u64, u64)>,
}

impl History {
    fn record(&mut self, provider: &str, ok: bool, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000);
        match self.minutes.back_mut() {
            Some((m, a, b)) if *m == minute => {
                if ok {
                    *a += 1
                } else {
                    *b += 1
                }
            }
            _ => self
                .minutes
                .push_back((minute, u64::from(ok), u64::from(!ok))),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _, _)| *m <= minute - 60)
        {
            self.minutes.pop_front();
        }
        let totals = self.by_provider.entry(provider.to_owned()).or_default();
        if ok { totals.0 += 1 } else { totals.1 += 1 }
    }

    /// The last 60 minutes up to `now_ms`, oldest first, empty minutes
    /// included: `(succeeded, failed)`.
    pub fn last_hour(&self, now_ms: i64) -> Vec<(u64, u64)> {
        let now = now_ms.div_euclid(60_000);
        (now - 59..=now)
            .map(|m| {
                self.minutes
                    .iter()
                    .find(|(at, _, _)| *at == m)
                    .map_or((0, 0), |(_, a, b)| (*a, *b))
            })
            .collect()
    }
}

/// Every metric of one server.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// For the console; not exported.
    history: Mutex<History>,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: HistogramFamily<MethodLabel>,
    pub refreshes: Family<RefreshLabels, Counter>,
    pub refresh_duration: HistogramFamily<ProviderLabel>,
    pub provider_requests: Family<ProviderCallLabels, Counter>,
    pub provider_duration: HistogramFamily<ProviderLabel>,
    pub served_ttl: Histogram,
    pub refreshes_in_flight: Gauge,
    pub connections: Family<ConnectionLabels, Gauge>,
    /// The label sets `connections` has shown, so one that empties is set
    /// to 0 rather than left at its last count.
    connection_labels: Mutex<std::collections::HashSet<ConnectionLabels>>,
    pub cached_connections: Gauge,
    pub cache_evictions: Counter,
    pub store_operations: Family<StoreLabels, Counter>,
    pub store_duration: HistogramFamily<OperationLabel>,
    pub breaker_open: Family<ProviderLabel, Gauge>,
    pub refresher_backlog: Gauge,
    pub refresher_delay: Histogram,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub subscribers: Family<StreamLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(steps::WindowSteps));
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "tokend_rpc_requests",
            "gRPC calls by method and status code",
            rpc_requests.clone(),
        );
        let rpc_duration = HistogramFamily::<MethodLabel>::new_with_constructor(latency);
        registry.register(
            "tokend_rpc_duration_seconds",
            "Time to answer a gRPC call (to the first response for streams)",
            rpc_duration.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "tokend_refreshes",
            "Refresh attempts by provider, outcome and error class",
            refreshes.clone(),
        );
        let refresh_duration = HistogramFamily::<ProviderLabel>::new_with_constructor(latency);
        registry.register(
            "tokend_refresh_duration_seconds",
            "Time a refresh took, lease to durable write",
            refresh_duration.clone(),
        );
        let provider_requests = Family::<ProviderCallLabels, Counter>::default();
        registry.register(
            "tokend_provider_requests",
            "Token-endpoint calls by provider and HTTP status class",
            provider_requests.clone(),
        );
        let provider_duration = HistogramFamily::<ProviderLabel>::new_with_constructor(latency);
        registry.register(
            "tokend_provider_request_duration_seconds",
            "Token-endpoint call latency",
            provider_duration.clone(),
        );
        let served_ttl = Histogram::new(TTL_BUCKETS);
        registry.register(
            "tokend_served_token_ttl_seconds",
            "Seconds left on the access tokens GetToken and ForceRefresh served",
            served_ttl.clone(),
        );
        let refreshes_in_flight = Gauge::default();
        registry.register(
            "tokend_refreshes_in_flight",
            "Refreshes running now (one per connection at most)",
            refreshes_in_flight.clone(),
        );
        let connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "tokend_connections",
            "Connections in the store, by provider and status (counted when scraped)",
            connections.clone(),
        );
        let cached_connections = Gauge::default();
        registry.register(
            "tokend_connections_cached",
            "Connections held decrypted in this process's memory (at most cache_capacity, plus those in use)",
            cached_connections.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "tokend_connections_evicted",
            "Connections dropped from memory to stay within cache_capacity (read from the store again on use)",
            cache_evictions.clone(),
        );
        let store_operations = Family::<StoreLabels, Counter>::default();
        registry.register(
            "tokend_store_operations",
            "Store writes by operation and outcome",
            store_operations.clone(),
        );
        let store_duration = HistogramFamily::<OperationLabel>::new_with_constructor(latency);
        registry.register(
            "tokend_store_operation_duration_seconds",
            "Store write latency, durable on return",
            store_duration.clone(),
        );
        let breaker_open = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "tokend_provider_breaker_open",
            "1 while a provider's breaker holds refreshes back (429, invalid_client), else 0",
            breaker_open.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "tokend_webhook_deliveries",
            "Webhook delivery attempts by endpoint and outcome",
            webhook_deliveries.clone(),
        );
        let subscribers = Family::<StreamLabel, Gauge>::default();
        registry.register(
            "tokend_stream_subscribers",
            "Open WatchConnection and WatchConnections streams",
            subscribers.clone(),
        );
        let refresher_backlog = Gauge::default();
        registry.register(
            "tokend_refresher_backlog",
            "Background refreshes due and not finished (waiting for a slot or running)",
            refresher_backlog.clone(),
        );
        let refresher_delay = Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]);
        registry.register(
            "tokend_refresher_start_delay_seconds",
            "How late background refreshes start after they were due",
            refresher_delay.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            history: Mutex::default(),
            refresher_backlog,
            refresher_delay,
            breaker_open,
            webhook_deliveries,
            subscribers,
            rpc_requests,
            rpc_duration,
            refreshes,
            refresh_duration,
            provider_requests,
            provider_duration,
            served_ttl,
            refreshes_in_flight,
            connections,
            connection_labels: Mutex::default(),
            cached_connections,
            cache_evictions,
            store_operations,
            store_duration,
        }
    }

    /// Sets the connections gauge to `census` (what the store counts).
    pub fn set_connections(&self, census: &tokend_store::Census) {
        let mut seen = self
            .connection_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut now = std::collections::HashSet::new();
        for (provider, status, n) in census.iter() {
            let labels = ConnectionLabels {
                provider: provider.as_str().to_owned(),
                status: status.as_str().to_owned(),
            };
            self.connections
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            now.insert(labels);
        }
        for gone in seen.difference(&now) {
            self.connections.get_or_create(gone).set(0);
        }
        seen.extend(now);
    }

    /// Registers the key rotation metrics the binary keeps current.
    pub fn register_key_rotation(&self, metrics: &KeyRotationMetrics) {
        metrics.register(&mut self.lock());
    }

    /// Registers a metric owned elsewhere (the audit log's drop counter).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.lock().register(name, help, metric);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.lock());
        out
    }

    /// The console's view of refresh outcomes.
    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a refresh's end.
    pub fn refresh_ended(
        &self,
        provider: &str,
        outcome: &str,
        class: &str,
        took: std::time::Duration,
    ) {
        if outcome != "breaker_open" {
            let now_ms = tokend_core::Clock::system().now().unix_millis();
            self.history()
                .record(provider, outcome == "success", now_ms);
        }
        self.refreshes
            .get_or_create(&RefreshLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
                class: class.to_owned(),
            })
            .inc();
        self.refresh_duration
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a token-endpoint call.
    pub fn provider_call(
        &self,
        provider: &str,
        http_status: Option<u16>,
        took: std::time::Duration,
    ) {
        let status_class = match http_status {
            Some(s) => format!("{}xx", s / 100),
            None => "none".to_owned(),
        };
        self.provider_requests
            .get_or_create(&ProviderCallLabels {
                provider: provider.to_owned(),
                status_class,
            })
            .inc();
        self.provider_duration
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets a provider's breaker gauge.
    pub fn breaker(&self, provider: &str, open: bool) {
        self.breaker_open
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .set(i64::from(open));
    }

    /// Counts a webhook delivery attempt.
    pub fn webhook_attempt(&self, webhook: &str, delivered: bool) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                outcome: if delivered { "delivered" } else { "failed" }.to_owned(),
            })
            .inc();
    }
}

/// Counts a due background refresh until it is done.
pub struct Backlog(Gauge);

impl Backlog {
    pub fn start(metrics: &Metrics) -> Self {
        metrics.refresher_backlog.inc();
        Backlog(metrics.refresher_backlog.clone())
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts an open stream for as long as it lives.
pub struct Subscriber(Gauge);

impl Subscriber {
    pub fn start(metrics: &Metrics, stream: &str) -> Self {
        let gauge = metrics
            .subscribers
            .get_or_create(&StreamLabel {
                stream: stream.to_owned(),
            })
            .clone();
        gauge.inc();
        Subscriber(gauge)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps the in-flight gauge right however a refresh ends.
pub struct InFlight(Arc<Metrics>);

impl InFlight {
    pub fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.refreshes_in_flight.inc();
        InFlight(Arc::clone(metrics))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.refreshes_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alert rules (deploy/prometheus/alerts.yml) match these exact
    /// strings: counters end in `_total`, bucket bounds print as floats.
    #[test]
    fn the_exposition_has_the_names_the_alert_rules_use() {
        let m = Metrics::new();
        m.served_ttl.observe(90.0);
        m.refresh_ended("p", "success", "", std::time::Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("tokend_served_token_ttl_seconds_bucket{le=\"120.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tokend_served_token_ttl_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tokend_refreshes_total{provider=\"p\",outcome=\"success\",class=\"\"} 1"
            ),
            "{text}"
        );
    }
}
