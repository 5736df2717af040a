//! The crash harness behind `scripts/chaos.sh`: runs a real `tokend serve`
//! against a real `tokend sandbox` (separate processes) under steady load,
//! SIGKILLs the broker at random moments, restarts it on the same data dir,
//! and checks that no acknowledged token is lost, no version goes back, and
//! no grant is lost except, with strict rotation, one in flight at a kill,
//! which must be reported as `ROTATION_LOST`, never as `REVOKED`.
//!
//! With `--replicas N --store postgres`, N brokers share one PostgreSQL
//! database (a throwaway cluster, `tokend-pgtest`), the load is spread over
//! all of them, and each kill takes a random replica.

mod load;
mod process;
mod window;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use load::{Acked, Tally, connection_id};
use process::{Scenario, free_addr, wait_until};
use rand::Rng;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::{Channel, Endpoint};

struct Args {
    minutes: f64,
    connections: usize,
    bin: std::path::PathBuf,
    replicas: usize,
    postgres: bool,
    /// Concurrent callers of the load, and the share of their calls that
    /// force a refresh: together they set the refresh rate.
    callers: usize,
    force_share: f64,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        minutes: 1.0,
        connections: 200,
        bin: std::env::var_os("TOKEND_BIN")
            .map(Into::into)
            .unwrap_or_else(|| "target/debug/tokend".into()),
        replicas: 1,
        postgres: false,
        callers: 32,
        force_share: 0.2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--minutes" => out.minutes = value.parse().context("--minutes")?,
            "--connections" => out.connections = value.parse().context("--connections")?,
            "--tokend" => out.bin = value.into(),
            "--replicas" => out.replicas = value.parse().context("--replicas")?,
            "--callers" => out.callers = value.parse().context("--callers")?,
            "--force-share" => out.force_share = value.parse().context("--force-share")?,
            "--store" => {
                out.postgres = match value.as_str() {
                    "postgres" => true,
                    "sled" => false,
                    other => bail!("--store {other}: sled or postgres"),
                }
            }
            other => bail!(
                "unknown flag {other}; use --minutes N --connections N --tokend PATH --replicas N --store sled|postgres --callers N --force-share 0.2"
            ),
        }
    }
    if !out.minutes.is_finite()
        || out.minutes <= 0.0
        || out.connections == 0
        || out.replicas == 0
        || out.callers == 0
    {
        bail!("--minutes, --connections, --replicas and --callers must be positive");
    }
    if !(0.0..=1.0).contains(&out.force_share) {
        bail!("--force-share is a share of calls, from 0 to 1");
    }
    if out.replicas > 1 && !out.postgres {
        bail!("--replicas above 1 needs --store postgres (sled is one process's)");
    }
    Ok(out)
}

/// One mode's figures.
#[derive(Debug, Default)]
struct Report {
    mode: &'static str,
    kills: u64,
    refreshes: u64,
    invalid_grants: u64,
    calls_ok: u64,
    calls_failed: u64,
    stalled: u64,
    acked_lost: u64,
    backwards: u64,
    lost_rotation_lost: u64,
    lost_other: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let half = Duration::from_secs_f64(args.minutes * 60.0 / 2.0);
    let strict = run_mode(&args, "strict", 0, half).await?;
    let grace = run_mode(&args, "grace", 30, half).await?;
    let mut passed = 0;
    let mut failed = 0;
    let mut check = |ok: bool, what: String| {
        println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
        if ok { passed += 1 } else { failed += 1 }
    };
    for r in [&strict, &grace] {
        let per_1000 = if r.kills == 0 {
            0.0
        } else {
            (r.lost_rotation_lost + r.lost_other.len() as u64) as f64 * 1000.0 / r.kills as f64
        };
        println!(
            "{} ({} replica(s) on {}): {} kills, {} refreshes ({} invalid_grant), {} calls ok, {} failed (broker down, or connection lost), {} stalled > 10 s",
            r.mode,
            args.replicas,
            if args.postgres { "PostgreSQL" } else { "sled" },
            r.kills,
            r.refreshes,
            r.invalid_grants,
            r.calls_ok,
            r.calls_failed,
            r.stalled
        );
        println!(
            "{}: lost {} (ROTATION_LOST {}, other {}), {per_1000:.0} per 1,000 kills",
            r.mode,
            r.lost_rotation_lost + r.lost_other.len() as u64,
            r.lost_rotation_lost,
            r.lost_other.len()
        );
        for l in &r.lost_other {
            println!("  lost otherwise: {l}");
        }
        check(
            r.kills >= 2,
            format!("{}: at least 2 kills ({})", r.mode, r.kills),
        );
        check(
            r.acked_lost == 0,
            format!("{}: acknowledged writes lost: {}", r.mode, r.acked_lost),
        );
        check(
            r.backwards == 0,
            format!("{}: versions gone backwards: {}", r.mode, r.backwards),
        );
        check(
            r.lost_other.is_empty(),
            format!(
                "{}: losses not marked ROTATION_LOST: {}",
                r.mode,
                r.lost_other.len()
            ),
        );
    }
    check(
        grace.lost_rotation_lost == 0,
        format!("grace: connections lost: {}", grace.lost_rotation_lost),
    );
    println!("chaos: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_mode(
    args: &Args,
    mode: &'static str,
    grace_secs: u64,
    duration: Duration,
) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new().prefix("tokend-chaos-").tempdir()?;
    let scenario = Scenario {
        bin: args.bin.clone(),
        dir: dir.path().to_owned(),
        sandbox: free_addr()?,
        grpc: (0..args.replicas)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?,
        admin: (0..args.replicas)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?,
        grace_secs,
        token_lifetime_secs: 2,
        database_url: args
            .postgres
            .then(|| tokend_pgtest::cluster().database(&format!("chaos_{mode}"))),
    };
    let http = reqwest::Client::new();
    let sandbox_url = format!("http://{}", scenario.sandbox);
    let _sandbox = scenario.start_sandbox()?;
    wait_until(Duration::from_secs(20), || async {
        http.get(format!("{sandbox_url}/sandbox/stats"))
            .send()
            .await
            .is_ok()
    })
    .await
    .context("the sandbox did not start")?;
    let config = scenario.write_config()?;
    let mut runs = 0;
    let endpoint = |addr: &std::net::SocketAddr| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(15)))
    };
    let mut clients = Vec::new();
    for addr in &scenario.grpc {
        clients.push(TokenServiceClient::new(endpoint(addr)?.connect_lazy()));
    }
    // Replica 0 first: it creates the key file the others seal with.
    let mut brokers = vec![Some(scenario.start_broker(&config, 0, runs)?)];
    wait_ready(&mut clients[0]).await?;
    for (r, client) in clients.iter_mut().enumerate().skip(1) {
        brokers.push(Some(scenario.start_broker(&config, r, runs)?));
        wait_ready(client).await?;
    }
    // The load goes to every replica.
    let channel = Channel::balance_list(
        scenario
            .grpc
            .iter()
            .map(endpoint)
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter(),
    );
    let mut client = clients[0].clone();

    for i in 0..args.connections {
        let body = serde_json::json!({"account_id": format!("acct-{i}"), "scopes": ["crm"]});
        let issued: serde_json::Value = serde_json::from_slice(
            &http
                .post(format!("{sandbox_url}/sandbox/tokens"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        let text = |k: &str| issued[k].as_str().unwrap_or_default().to_owned();
        client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: connection_id(i),
                account_id: format!("acct-{i}"),
                grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                    access_token: text("access_token"),
                    refresh_token: text("refresh_token"),
                    expires_in_seconds: 2,
                    scopes: vec![],
                    token_type: String::new(),
                })),
                replace: false,
                params: Default::default(),
            })
            .await
            .with_context(|| format!("install {i}"))?;
    }

    let acked = Arc::new(Acked::new(args.connections));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        channel.clone(),
        Arc::clone(&acked),
        Arc::clone(&tally),
        Arc::clone(&stop),
        args.callers,
        args.force_share,
    ));
    let mut report = Report {
        mode,
        ..Default::default()
    };
    let mut seen = vec![0u64; args.connections];
    let mut window = window::Window::default();
    let end = tokio::time::Instant::now() + duration;
    loop {
        let pause = Duration::from_millis(rand::rng().random_range(3000..9000));
        let last = tokio::time::Instant::now() + pause >= end;
        tokio::time::sleep(if last {
            end.saturating_duration_since(tokio::time::Instant::now())
        } else {
            pause
        })
        .await;
        // The kill: whatever was acknowledged before it must survive it.
        let before = acked.snapshot();
        let victim = rand::rng().random_range(0..args.replicas);
        window.scrape(&http, scenario.admin[victim]).await;
        if let Some(b) = brokers[victim].take() {
            b.kill();
        }
        report.kills += 1;
        runs += 1;
        brokers[victim] = Some(scenario.start_broker(&config, victim, runs)?);
        wait_ready(&mut clients[victim]).await?;
        if args.replicas > 1 {
            // What another replica acknowledged reaches replica 0's cache
            // through the event log within milliseconds.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        compare(&mut client, &before, &mut seen, &mut report).await?;
        if last {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    // Settle: refreshes in doubt at the last kill are retried at start.
    tokio::time::sleep(Duration::from_secs(5)).await;
    compare(&mut client, &acked.snapshot(), &mut seen, &mut report).await?;
    final_check(
        &mut client,
        &http,
        &sandbox_url,
        args.connections,
        &mut report,
    )
    .await?;
    let stats: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{sandbox_url}/sandbox/stats"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    report.refreshes = stats["refresh_grants_ok"].as_u64().unwrap_or(0);
    report.invalid_grants = stats["invalid_grant"].as_u64().unwrap_or(0);
    report.calls_ok = tally.ok.load(Ordering::Relaxed);
    report.calls_failed = tally.failed.load(Ordering::Relaxed);
    report.stalled = tally.stalled.load(Ordering::Relaxed);
    for admin in &scenario.admin {
        window.scrape(&http, *admin).await;
    }
    window.print(mode);
    drop(brokers);
    Ok(report)
}

async fn wait_ready(client: &mut TokenServiceClient<Channel>) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            matches!(
                client
                    .get_connection(pb::GetConnectionRequest {
                        connection_id: "chaos-readiness-probe".into(),
                    })
                    .await,
                Err(s) if s.code() == tonic::Code::NotFound
            )
        }
    })
    .await
    .context("tokend did not come back")
}

/// Every connection's stored version against what was acknowledged and
/// what was seen before.
async fn compare(
    client: &mut TokenServiceClient<Channel>,
    acked: &[u64],
    seen: &mut [u64],
    report: &mut Report,
) -> anyhow::Result<()> {
    for (i, want) in acked.iter().enumerate() {
        let c = client
            .get_connection(pb::GetConnectionRequest {
                connection_id: connection_id(i),
            })
            .await
            .with_context(|| format!("GetConnection {i}"))?
            .into_inner()
            .connection
            .context("no connection")?;
        if c.version < *want {
            report.acked_lost += 1;
            eprintln!(
                "{}: {} acknowledged version {want}, stored {}",
                report.mode,
                connection_id(i),
                c.version
            );
        }
        if c.version < seen[i] {
            report.backwards += 1;
            eprintln!(
                "{}: {} went back from {} to {}",
                report.mode,
                connection_id(i),
                seen[i],
                c.version
            );
        }
        seen[i] = seen[i].max(c.version);
    }
    Ok(())
}

/// Is every grant still good? ACTIVE ones must refresh and the new token
/// must work at the provider's API.
async fn final_check(
    client: &mut TokenServiceClient<Channel>,
    http: &reqwest::Client,
    sandbox_url: &str,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    for i in 0..n {
        let id = connection_id(i);
        let refreshed = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.clone(),
                rejected: None,
            })
            .await;
        let token = match refreshed {
            Ok(r) => r
                .into_inner()
                .token
                .map(|t| t.access_token)
                .unwrap_or_default(),
            Err(status) => {
                let cause = tonic_types::StatusExt::get_details_error_info(&status)
                    .and_then(|info| info.metadata.get("cause").cloned())
                    .unwrap_or_default();
                if cause == "ROTATION_LOST" {
                    report.lost_rotation_lost += 1;
                } else {
                    report.lost_other.push(format!(
                        "{id}: {:?} cause {cause:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
                continue;
            }
        };
        let live = http
            .get(format!("{sandbox_url}/api/me"))
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if !live {
            report
                .lost_other
                .push(format!("{id}: refreshed token rejected by the provider"));
        }
    }
    Ok(())
}
