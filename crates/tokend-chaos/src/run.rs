//! One run: a sandbox and the brokers as processes, connections installed,
//! steady load, a strike of the fault every few seconds with a check after
//! each, then a settle and a final check of every grant.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use rand::Rng;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::{Channel, Endpoint};

use crate::{
    check::{announced_reconnect, compare, final_check},
    faults::{Fault, Rig},
    load::{self, Acked, Tally, Told, connection_id},
    plan::{Plan, Report},
    process::{Scenario, free_addr, wait_ready, wait_until},
};

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new().prefix("tokend-chaos-").tempdir()?;
    let (lease_secs, request_timeout_secs) = plan.fault.settings();
    let database_url = plan.postgres.then(|| {
        tokend_pgtest::cluster().database(&format!(
            "chaos_{}_{}",
            plan.fault.name(),
            plan.grace_secs
        ))
    });
    let proxy = match (&database_url, plan.fault) {
        (Some(_), Fault::PgPartition) => {
            let port = tokend_pgtest::cluster().port();
            Some(crate::proxy::Proxy::start(([127, 0, 0, 1], port).into()).await?)
        }
        _ => None,
    };
    let broker_database_url = match (&database_url, &proxy) {
        (Some(url), Some(proxy)) => {
            let direct = format!("127.0.0.1:{}", tokend_pgtest::cluster().port());
            anyhow::ensure!(url.contains(&direct), "unexpected database URL shape");
            Some(url.replacen(&direct, &proxy.addr.to_string(), 1))
        }
        _ => None,
    };
    let clock = match plan.fault {
        Fault::ClockStep => Some(crate::clock::ClockStep::build(dir.path(), plan.replicas)?),
        _ => None,
    };
    let scenario = Scenario {
        bin: plan.bin.clone(),
        dir: dir.path().to_owned(),
        sandbox: free_addr()?,
        grpc: (0..plan.replicas)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?,
        admin: (0..plan.replicas)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?,
        grace_secs: plan.grace_secs,
        token_lifetime_secs: 2,
        database_url,
        broker_database_url,
        lease_secs,
        request_timeout_secs,
        clock: clock.clone(),
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
    install(&mut client, &http, &sandbox_url, plan.connections).await?;

    let acked = Arc::new(Acked::new(plan.connections));
    let tally = Arc::new(Tally::default());
    let told = Arc::new(Told::new(plan.connections));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load::run(
        channel.clone(),
        Arc::clone(&acked),
        Arc::clone(&tally),
        Arc::clone(&told),
        Arc::clone(&stop),
        plan.callers,
        plan.force_share,
    ));
    let mut report = Report {
        setup_secs: started.elapsed().as_secs_f64(),
        ..Report::default()
    };
    let mut seen = vec![0u64; plan.connections];
    let mut window = crate::window::Window::default();
    let end = tokio::time::Instant::now() + plan.duration;
    loop {
        let pause = Duration::from_millis(rand::rng().random_range(plan.fault.pause()));
        let last = tokio::time::Instant::now() + pause >= end;
        tokio::time::sleep(if last {
            end.saturating_duration_since(tokio::time::Instant::now())
        } else {
            pause
        })
        .await;
        // Whatever was acknowledged before the strike must survive it.
        let before = acked.snapshot();
        let mut rig = Rig {
            scenario: &scenario,
            config: &config,
            brokers: &mut brokers,
            clients: &mut clients,
            runs: &mut runs,
            http: &http,
            sandbox_url: &sandbox_url,
            proxy: proxy.as_ref(),
            clock: clock.as_ref(),
            window: &mut window,
        };
        plan.fault
            .strike(&mut rig)
            .await
            .with_context(|| format!("{} strike", plan.fault.name()))?;
        report.strikes += 1;
        if plan.replicas > 1 {
            // What another replica acknowledged reaches replica 0's cache
            // through the event log within milliseconds.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        compare(plan, &mut client, &before, &mut seen, &mut report).await?;
        if last {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    let checking = std::time::Instant::now();
    // No fault outlives the run (a latency burst not yet consumed).
    let _ = http
        .delete(format!("{sandbox_url}/sandbox/faults"))
        .send()
        .await;
    // Settle: refreshes in doubt at the last strike are retried.
    tokio::time::sleep(Duration::from_secs(5)).await;
    compare(plan, &mut client, &acked.snapshot(), &mut seen, &mut report).await?;
    let lost = final_check(
        &mut client,
        &http,
        &sandbox_url,
        plan.connections,
        &mut report,
    )
    .await?;
    let announced = announced_reconnect(&mut client).await?;
    for i in (0..plan.connections).filter(|i| !lost.contains(i)) {
        let told = told.0[i].load(Ordering::Relaxed);
        if told || announced.contains(&connection_id(i)) {
            report.false_alarms += 1;
        }
        if told {
            report.false_alarms_told += 1;
        }
    }
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
    report.hidden_grants = stats["lost_answers_granted"].as_u64().unwrap_or(0);
    report.calls_ok = tally.ok.load(Ordering::Relaxed);
    report.calls_failed = tally.failed.load(Ordering::Relaxed);
    report.stalled = tally.stalled.load(Ordering::Relaxed);
    report.check_secs = checking.elapsed().as_secs_f64();
    if plan.fault == Fault::Kill {
        for admin in &scenario.admin {
            window.scrape(&http, *admin).await;
        }
        window.print(&format!("{} ({})", plan.fault.name(), plan.rotation()));
    }
    drop(brokers);
    if std::env::var_os("TOKEND_CHAOS_KEEP").is_some() {
        eprintln!("logs kept in {}", dir.keep().display());
    }
    Ok(report)
}

/// Imports `n` grants the sandbox minted.
async fn install(
    client: &mut TokenServiceClient<Channel>,
    http: &reqwest::Client,
    sandbox_url: &str,
    n: usize,
) -> anyhow::Result<()> {
    for i in 0..n {
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
                force: false,
            })
            .await
            .with_context(|| format!("install {i}"))?;
    }
    Ok(())
}
