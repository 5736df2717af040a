//! `/metrics` on the admin listener after a scripted scenario, read with a
//! real Prometheus text parser, and the exact figures it must show.

use std::collections::HashMap;

use prometheus_parse::{Scrape, Value};
use tokend_sandbox::Fault;

use crate::harness::{Options, TestServer, background_off, force, get};

/// The scrape, as the parser reads it.
async fn scrape(server: &TestServer) -> Scrape {
    let addr = server.admin_addr.expect("admin listener");
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    match matching.as_slice() {
        [] => 0.0,
        [one] => match &one.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary"),
        },
        more => panic!("{name} {labels:?} matches {} samples", more.len()),
    }
}

/// Checks that every `tokend_*` metric `text` names is exported; returns
/// how many names it found.
fn names_only_exported(
    text: &str,
    exported: &std::collections::HashSet<&str>,
    file: &str,
) -> usize {
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("tokend_") {
            continue;
        }
        named += 1;
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| word.strip_suffix(suffix))
            .unwrap_or(word);
        assert!(
            exported.contains(word) || exported.contains(base),
            "{file} names {word}, which tokend does not export"
        );
    }
    named
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_scenario_exactly() {
    let (port, deliveries) = crate::webhooks::scripted_receiver(Vec::new()).await;
    let server = TestServer::start_with(Options {
        admin: true,
        webhooks: vec![crate::webhooks::hook(
            "metrics-hook",
            &format!("http://127.0.0.1:{port}/hook"),
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(1),
        )],
        ..background_off()
    })
    .await;
    let mut client = server.client().await;
    for id in ["m-ok", "m-revoked", "m-flaky", "m-limited"] {
        server.import(id, &format!("acct-{id}"), 1800).await;
    }
    // Two cached reads and one successful refresh.
    for _ in 0..2 {
        client.get_token(get("m-ok")).await.expect("cached");
    }
    client.force_refresh(force("m-ok")).await.expect("refresh");
    // A revoked grant.
    server.sandbox.revoke_account("acct-m-revoked");
    client
        .force_refresh(force("m-revoked"))
        .await
        .expect_err("revoked");
    // A 503 (transient), then a 429 (rate limited, opens the breaker).
    server.sandbox.inject(Fault::Status {
        status: 503,
        count: 1,
    });
    client
        .force_refresh(force("m-flaky"))
        .await
        .expect_err("503");
    server.sandbox.inject(Fault::RateLimited {
        retry_after_secs: 30,
        count: 1,
    });
    client
        .force_refresh(force("m-limited"))
        .await
        .expect_err("429");
    // The breaker is open: no provider call.
    client
        .force_refresh(force("m-ok"))
        .await
        .expect_err("breaker open");

    // One open WatchConnection stream.
    let mut watch = client
        .watch_connection(tokend_proto::v1::WatchConnectionRequest {
            connection_id: "m-ok".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("snapshot").expect("snapshot");

    // The webhook has had the installs' events.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deliveries.lock().unwrap().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "webhook deliveries");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let m = scrape(&server).await;
    let sandbox = ("provider", "sandbox");
    let refreshes = |outcome, class| {
        value(
            &m,
            "tokend_refreshes_total",
            &[sandbox, ("outcome", outcome), ("class", class)],
        )
    };
    assert_eq!(refreshes("success", ""), 1.0);
    assert_eq!(refreshes("reconnect_required", "revoked"), 1.0);
    assert_eq!(refreshes("failure", "transient"), 1.0);
    assert_eq!(refreshes("failure", "rate_limited"), 1.0);
    assert_eq!(refreshes("breaker_open", "rate_limited"), 1.0);

    let calls = |class| {
        value(
            &m,
            "tokend_provider_requests_total",
            &[sandbox, ("status_class", class)],
        )
    };
    assert_eq!(calls("2xx"), 1.0);
    assert_eq!(calls("4xx"), 2.0, "invalid_grant and the 429");
    assert_eq!(calls("5xx"), 1.0);

    let connections = |status| value(&m, "tokend_connections", &[sandbox, ("status", status)]);
    assert_eq!(connections("active"), 3.0);
    assert_eq!(connections("reconnect_required"), 1.0);
    assert_eq!(value(&m, "tokend_refreshes_in_flight", &[]), 0.0);
    assert_eq!(value(&m, "tokend_provider_breaker_open", &[sandbox]), 1.0);
    assert_eq!(
        value(
            &m,
            "tokend_stream_subscribers",
            &[("stream", "watch_connection")]
        ),
        1.0
    );
    assert_eq!(value(&m, "tokend_audit_records_dropped_total", &[]), 0.0);
    for exported in [
        "tokend_audit_records_dropped_total",
        "tokend_refresher_backlog",
        "tokend_refresher_start_delay_seconds",
    ] {
        assert!(
            m.samples.iter().any(|s| s.metric == exported),
            "{exported} is exported"
        );
    }
    assert_eq!(value(&m, "tokend_refresher_backlog", &[]), 0.0);

    // Every metric the alert rules and the dashboard name is one tokend
    // exports.
    let exported: std::collections::HashSet<&str> =
        m.samples.iter().map(|s| s.metric.as_str()).collect();
    let rules = include_str!("../../deploy/prometheus/alerts.yml");
    assert!(names_only_exported(rules, &exported, "alerts.yml") >= 7);
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/tokend.json"))
            .expect("the dashboard is JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a query").to_owned())
        .collect();
    assert!(queries.len() >= 15, "{} panel queries", queries.len());
    for query in &queries {
        assert!(
            names_only_exported(query, &exported, "tokend.json") >= 1,
            "{query} names no tokend metric"
        );
    }

    let rpcs = |method, code| {
        value(
            &m,
            "tokend_rpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(rpcs("Install", "ok"), 4.0);
    assert_eq!(rpcs("GetToken", "ok"), 2.0);
    assert_eq!(rpcs("ForceRefresh", "ok"), 1.0);
    assert_eq!(rpcs("ForceRefresh", "failed_precondition"), 1.0);
    assert_eq!(rpcs("ForceRefresh", "unavailable"), 3.0);
    assert_eq!(rpcs("WatchConnection", "ok"), 1.0);

    // Three tokens served, all with about 30 minutes left.
    let ttl = m
        .samples
        .iter()
        .find(|s| s.metric == "tokend_served_token_ttl_seconds")
        .expect("ttl histogram");
    let Value::Histogram(buckets) = &ttl.value else {
        panic!("not a histogram")
    };
    let by_bound: HashMap<String, f64> = buckets
        .iter()
        .map(|b| (b.less_than.to_string(), b.count))
        .collect();
    assert_eq!(by_bound.get("600"), Some(&0.0), "{by_bound:?}");
    assert_eq!(by_bound.get("1800"), Some(&3.0), "{by_bound:?}");

    // Writes were counted: four installs and the refreshes' writes.
    assert_eq!(
        value(
            &m,
            "tokend_store_operations_total",
            &[("operation", "put"), ("outcome", "error")]
        ),
        0.0
    );
    assert!(
        value(
            &m,
            "tokend_store_operations_total",
            &[("operation", "put"), ("outcome", "ok")]
        ) >= 6.0
    );
    let text = reqwest::get(format!(
        "http://{}/metrics",
        server.admin_addr.expect("admin")
    ))
    .await
    .expect("scrape")
    .text()
    .await
    .expect("body");
    assert!(!text.contains("m-ok"), "no connection id in any label");
    assert!(!text.contains("acct-"), "no account id in any label");
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_admin_listener() {
    let server = TestServer::start_with(Options {
        admin: true,
        ..Options::default()
    })
    .await;
    let addr = server.admin_addr.expect("admin");
    for (path, body) in [("healthz", "ok\n"), ("readyz", "ready\n")] {
        let response = reqwest::get(format!("http://{addr}/{path}"))
            .await
            .expect("answers");
        assert!(response.status().is_success(), "{path}");
        assert_eq!(response.text().await.expect("body"), body);
    }
}
