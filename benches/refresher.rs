//! The background refresher against a sandbox that takes 50 ms per token
//! request, with `refresh_concurrency` 8 (the default) and 64. A million
//! tokens of 30 minutes need about 560 refreshes a second.
//!
//! Two measurements:
//!
//! - Capacity: 4,000 connections all due at once; the rate is grants
//!   refreshed over the time from start to the last one.
//! - Sustained: N connections whose refreshes fall due uniformly over a
//!   window of W seconds (N = 560 × W, so 560 due a second), starting a few
//!   seconds after the server has loaded them. Once a second the bench reads
//!   the refresher's backlog (`tokend_refresher_backlog`: due and not
//!   finished) from the admin listener's `/metrics`, and the sandbox's count
//!   of refresh grants; it reports the rate achieved over the window, the
//!   backlog's mean, p99 and max over the window's samples, the start delay
//!   (due to start) from `tokend_refresher_start_delay_seconds`, and whether
//!   every connection was refreshed by the end of a drain period (up to
//!   15 s; not waited for when the backlog plainly cannot drain in it, as
//!   with 8 at 50 ms: 160/s).
//!
//! Each connection holds a real sandbox grant, written straight into the
//! store before the server starts.
//!
//! Run: `cargo bench --bench refresher` (`REFRESHER_SUSTAINED_SECS=30` for
//! a shorter window; default 60).

#[path = "support.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use secrecy::SecretString;
use tokend_core::{Clock, Connection, RefreshPolicy, Status, Timestamp};
use tokend_sandbox::{Fault, Sandbox, SandboxConfig};
use tokend_server::{admin::AdminListener, limits::Limits};
use tokend_store::{SledStore, Store, crypto::Keyring};

const CONNECTIONS: usize = 4_000;
const PROVIDER_LATENCY: Duration = Duration::from_millis(50);

/// Refreshes due a second in the sustained run: a million connections with
/// 30-minute tokens.
const SUSTAINED_RATE: usize = 560;
/// The access tokens' lifetime in the sustained run; with the default 5
/// minute buffer (under half the lifetime) each is due 5 minutes before it
/// expires.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Concurrent writers seeding the store (its writer group-commits them).
const SEED_TASKS: usize = 64;
/// From the end of seeding to the first due refresh: the server's start-up
/// (load and schedule every record, overdue ones spread over 2 s) must be
/// over first.
const LEAD: Duration = Duration::from_secs(6);
/// After the window, how long the bench waits at most for the backlog to
/// drain.
const DRAIN: Duration = Duration::from_secs(15);

fn main() {
    support::bench_main(run());
}

/// Refreshes per second with `concurrency` background refreshes at once.
async fn rate(concurrency: usize) -> f64 {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let store = SledStore::open(&dir.path().join("db"), Keyring::ephemeral()).expect("store");
    // Two minutes left: inside the refresh buffer, so every one is due.
    let expires_at = Timestamp::from_unix_millis(Clock::system().now().unix_millis() + 120_000);
    for i in 0..CONNECTIONS {
        let id = format!("r{i:05}");
        let issued = sandbox.issue_tokens(&id, &["crm"]);
        let mut c = tokend_store::conformance::record(&id, 1);
        c.account_id = id.clone();
        c.tokens.access_token = SecretString::from(issued.access_token);
        c.tokens.refresh_token = Some(SecretString::from(issued.refresh_token));
        c.tokens.expires_at = expires_at;
        c.status = Status::Active;
        c.reconnect_cause = None;
        c.last_error = None;
        c.previous_refresh_token = None;
        store.put(&c, None, None).await.expect("seed");
    }
    sandbox.inject(Fault::Latency {
        delay: PROVIDER_LATENCY,
        count: u32::MAX,
    });
    let started = Instant::now();
    let (_channel, _, _stop, _server) = support::start_configured(
        &sandbox,
        Arc::new(store),
        dir.path(),
        Limits::default(),
        None,
        |c| {
            c.engine.background_refresh = true;
            c.engine.background_concurrency = concurrency;
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while sandbox.stats().refresh_grants_ok < CONNECTIONS as u64 {
        assert!(Instant::now() < deadline, "the refresher stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    CONNECTIONS as f64 / started.elapsed().as_secs_f64()
}

/// The sustained window's length, from `REFRESHER_SUSTAINED_SECS`.
fn window() -> Duration {
    Duration::from_secs(
        std::env::var("REFRESHER_SUSTAINED_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&s: &u64| s > 0)
            .unwrap_or(60),
    )
}

/// A connection holding a fresh sandbox grant for `id`, its refresh due at
/// `due` under the default policy.
fn due_connection(sandbox: &Sandbox, id: &str, due: Timestamp) -> Connection {
    let buffer = RefreshPolicy::default().buffer;
    let expires_at = due.saturating_add(buffer);
    let obtained_at = expires_at.saturating_sub(TOKEN_LIFETIME);
    assert_eq!(
        RefreshPolicy::default().due_at(expires_at, obtained_at),
        due
    );
    let issued = sandbox.issue_tokens(id, &["crm"]);
    let mut c = tokend_store::conformance::record(id, 1);
    c.account_id = id.to_owned();
    c.tokens.access_token = SecretString::from(issued.access_token);
    c.tokens.refresh_token = Some(SecretString::from(issued.refresh_token));
    c.tokens.obtained_at = obtained_at;
    c.tokens.expires_at = expires_at;
    c.status = Status::Active;
    c.reconnect_cause = None;
    c.last_error = None;
    c.previous_refresh_token = None;
    c
}

/// What one scrape of `/metrics` shows of the refresher.
#[derive(Default)]
struct Scrape {
    backlog: f64,
    /// `tokend_refresher_start_delay_seconds`: (upper bound, cumulative
    /// count) per bucket, `+Inf` last.
    delay_buckets: Vec<(f64, f64)>,
    delay_sum: f64,
    delay_count: f64,
    /// `tokend_refreshes_total` whose outcome is not `success`.
    refresh_failures: f64,
}

/// The value of a line of the text exposition.
fn sample_value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(http: &reqwest::Client, admin: std::net::SocketAddr) -> Scrape {
    let body = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let mut out = Scrape::default();
    let mut saw_backlog = false;
    for line in body.lines() {
        if line.starts_with("tokend_refresher_backlog ") {
            saw_backlog = true;
            out.backlog = sample_value(line);
        } else if let Some(rest) =
            line.strip_prefix("tokend_refresher_start_delay_seconds_bucket{le=\"")
        {
            let le = rest.split('"').next().unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            out.delay_buckets.push((bound, sample_value(line)));
        } else if line.starts_with("tokend_refresher_start_delay_seconds_sum") {
            out.delay_sum = sample_value(line);
        } else if line.starts_with("tokend_refresher_start_delay_seconds_count") {
            out.delay_count = sample_value(line);
        } else if line.starts_with("tokend_refreshes_total{")
            && !line.contains("outcome=\"success\"")
        {
            out.refresh_failures += sample_value(line);
        }
    }
    assert!(
        saw_backlog && !out.delay_buckets.is_empty(),
        "/metrics shows no tokend_refresher_backlog or tokend_refresher_start_delay_seconds"
    );
    out
}

/// The upper bound of the bucket holding the `q` quantile of a histogram.
fn bucket_quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> f64 {
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * count)
        .map_or(f64::NAN, |(bound, _)| *bound)
}

/// The `q` quantile of `samples` (nearest rank).
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// The sustained run's figures for one concurrency.
struct Sustained {
    connections: usize,
    /// Refreshes granted during the window, per second.
    window_rate: f64,
    backlog_mean: f64,
    backlog_p99: f64,
    backlog_max: f64,
    /// The backlog at the window's end.
    backlog_end: f64,
    delay_mean: f64,
    /// The upper bound of the p99's bucket.
    delay_p99: f64,
    /// Refreshes not started by the end (their delay is not in the histogram).
    not_started: f64,
    refreshed: u64,
    failures: f64,
    /// Seconds after the window's end when the last connection was
    /// refreshed, if every one was within the drain period.
    drained_after: Option<f64>,
    /// How long before the first due refresh the server had loaded.
    margin: Duration,
    seeding: Duration,
}

/// Seeds `SUSTAINED_RATE × window` connections due uniformly over the
/// window, starts the server with `concurrency`, and samples once a second
/// through the window and the drain.
async fn sustained(concurrency: usize, window: Duration) -> Sustained {
    let n = SUSTAINED_RATE * window.as_secs() as usize;
    let sandbox = Arc::new(
        Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let store =
        Arc::new(SledStore::open(&dir.path().join("db"), Keyring::ephemeral()).expect("store"));
    let clock = Clock::system();
    let seeding_started = Instant::now();
    // Seeding takes a few seconds at most (group commit); the window opens
    // LEAD after that estimate, checked below against when the server is up.
    let seed_estimate = Duration::from_millis(1_000 + n as u64 / 10);
    let window_start = clock.now().saturating_add(seed_estimate + LEAD);
    let window_start_instant = seeding_started + seed_estimate + LEAD;
    let step = window.as_secs_f64() / n as f64;
    let per_task = n.div_ceil(SEED_TASKS);
    let seeders = (0..SEED_TASKS).map(|t| {
        let store = Arc::clone(&store);
        let sandbox = Arc::clone(&sandbox);
        tokio::spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(n) {
                let offset = Duration::from_secs_f64(step * (i as f64 + 0.5));
                let c = due_connection(
                    &sandbox,
                    &format!("s{i:06}"),
                    window_start.saturating_add(offset),
                );
                store.put(&c, None, None).await.expect("seed");
            }
        })
    });
    for s in join_all(seeders).await {
        s.expect("seeder");
    }
    let seeding = seeding_started.elapsed();
    sandbox.inject(Fault::Latency {
        delay: PROVIDER_LATENCY,
        count: u32::MAX,
    });
    let (admin, admin_addr) = AdminListener::bind(([127, 0, 0, 1], 0).into()).expect("admin");
    let store: Arc<dyn Store> = store;
    let (_channel, _, stop, server) =
        support::start_configured(&sandbox, store, dir.path(), Limits::default(), None, |c| {
            c.engine.background_refresh = true;
            c.engine.background_concurrency = concurrency;
            c.admin = Some(admin);
        })
        .await;
    let http = reqwest::Client::new();
    // The admin listener answers once the engine has loaded every record.
    loop {
        let ready = http
            .get(format!("http://{admin_addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let margin = window_start_instant.saturating_duration_since(Instant::now());
    if margin < Duration::from_secs(2) {
        eprintln!(
            "refresher: warning: the server was ready only {:.1} s before the first due refresh (seeding took {:.1} s); the window's start is not clean",
            margin.as_secs_f64(),
            seeding.as_secs_f64()
        );
    }
    let at = |k: u64| tokio::time::Instant::from_std(window_start_instant + Duration::from_secs(k));
    let window_secs = window.as_secs();
    tokio::time::sleep_until(at(0)).await;
    let refreshed_at_start = sandbox.stats().refresh_grants_ok;
    let mut backlog = Vec::with_capacity(window_secs as usize);
    let mut refreshed_at_end = refreshed_at_start;
    let mut backlog_end = 0.0;
    let mut drained_after = None;
    let mut last = Scrape::default();
    for k in 1..=window_secs + DRAIN.as_secs() {
        tokio::time::sleep_until(at(k)).await;
        last = scrape(&http, admin_addr).await;
        let refreshed = sandbox.stats().refresh_grants_ok;
        if k <= window_secs {
            backlog.push(last.backlog);
        }
        if k == window_secs {
            refreshed_at_end = refreshed;
            backlog_end = last.backlog;
        }
        if k >= window_secs && refreshed >= n as u64 && last.backlog == 0.0 {
            drained_after = Some((k - window_secs) as f64);
            break;
        }
        // A backlog that cannot drain in time at the rate just achieved:
        // waiting would show nothing more.
        let achieved = (refreshed_at_end - refreshed_at_start) as f64 / window.as_secs_f64();
        if k == window_secs && backlog_end > 1.5 * achieved * DRAIN.as_secs_f64() {
            break;
        }
    }
    let refreshed = sandbox.stats().refresh_grants_ok;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    Sustained {
        connections: n,
        window_rate: (refreshed_at_end - refreshed_at_start) as f64 / window.as_secs_f64(),
        backlog_mean: backlog.iter().sum::<f64>() / backlog.len().max(1) as f64,
        backlog_p99: quantile(&backlog, 0.99),
        backlog_max: backlog.iter().copied().fold(0.0, f64::max),
        backlog_end,
        delay_mean: last.delay_sum / last.delay_count.max(1.0),
        delay_p99: bucket_quantile(&last.delay_buckets, last.delay_count, 0.99),
        not_started: n as f64 - last.delay_count,
        refreshed,
        failures: last.refresh_failures,
        drained_after,
        margin,
        seeding,
    }
}

async fn run() {
    println!(
        "refresher: {CONNECTIONS} connections due at once, provider latency {} ms",
        PROVIDER_LATENCY.as_millis()
    );
    println!("| refresh_concurrency | refreshes/s | bound: concurrency / latency |");
    println!("|---|---|---|");
    for concurrency in [8, 64] {
        let r = rate(concurrency).await;
        println!(
            "| {concurrency} | {r:.0} | {:.0} |",
            concurrency as f64 / PROVIDER_LATENCY.as_secs_f64()
        );
    }
    let window = window();
    println!();
    println!(
        "refresher, sustained: {} connections due uniformly over {} s ({SUSTAINED_RATE}/s), provider latency {} ms, sampled once a second",
        SUSTAINED_RATE * window.as_secs() as usize,
        window.as_secs(),
        PROVIDER_LATENCY.as_millis()
    );
    println!(
        "| refresh_concurrency | refreshes/s over the window | backlog mean | backlog p99 | backlog max | backlog at window end | start delay mean | start delay p99 | all refreshed by end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for concurrency in [64, 8] {
        let s = sustained(concurrency, window).await;
        let delay_p99 = if s.delay_p99.is_finite() {
            format!("≤ {} s", s.delay_p99)
        } else {
            "> 300 s".to_owned()
        };
        let delay_p99 = if s.not_started > 0.0 {
            format!(
                "{delay_p99} (of started; {:.0} never started)",
                s.not_started
            )
        } else {
            delay_p99
        };
        let done = match s.drained_after {
            Some(after) => format!("yes, {after:.0} s after the window"),
            None if s.backlog_end > 1.5 * s.window_rate * DRAIN.as_secs_f64() => format!(
                "no: {} of {} (at {:.0}/s the backlog needs ~{:.0} s more; not waited for)",
                s.refreshed,
                s.connections,
                s.window_rate,
                s.backlog_end / s.window_rate.max(1.0)
            ),
            None => format!(
                "no: {} of {} after a {} s drain",
                s.refreshed,
                s.connections,
                DRAIN.as_secs()
            ),
        };
        println!(
            "| {concurrency} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} s | {delay_p99} | {done} |",
            s.window_rate,
            s.backlog_mean,
            s.backlog_p99,
            s.backlog_max,
            s.backlog_end,
            s.delay_mean,
        );
        notes.push(format!(
            "concurrency {concurrency}: seeded in {:.1} s, server ready {:.1} s before the first due refresh, {:.0} refreshes failed",
            s.seeding.as_secs_f64(),
            s.margin.as_secs_f64(),
            s.failures
        ));
    }
    for note in notes {
        println!("- {note}");
    }
}
