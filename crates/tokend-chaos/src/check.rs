//! The checks of a run: every connection's stored version against what
//! callers were acknowledged, every grant at the end (refreshed, and its
//! new token accepted by the provider), and what the event log announced.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

use crate::{
    load::connection_id,
    plan::{Plan, Report},
};

/// Every connection the event log announced `RECONNECT_REQUIRED`, from the
/// oldest retained event to the end of the replay.
pub async fn announced_reconnect(
    client: &mut TokenServiceClient<Channel>,
) -> anyhow::Result<HashSet<String>> {
    let mut stream = client
        .watch_connections(pb::WatchConnectionsRequest {
            filter: Some(pb::EventFilter {
                event_types: vec![pb::EventType::ReconnectRequired as i32],
                ..Default::default()
            }),
            resume_after: String::new(),
            from_oldest: true,
        })
        .await
        .context("WatchConnections")?
        .into_inner();
    let mut announced = HashSet::new();
    while let Some(event) = stream.message().await.context("reading the event log")? {
        if event.caught_up {
            break;
        }
        if event.event_type == pb::EventType::ReconnectRequired as i32 {
            announced.insert(event.connection_id);
        }
    }
    Ok(announced)
}

/// Every connection's stored version against what was acknowledged and
/// what was seen before. A read that fails (the store just came back) is
/// retried for up to 30 s.
pub async fn compare(
    plan: &Plan,
    client: &mut TokenServiceClient<Channel>,
    acked: &[u64],
    seen: &mut [u64],
    report: &mut Report,
) -> anyhow::Result<()> {
    let mode = plan.fault.name();
    for (i, want) in acked.iter().enumerate() {
        let mut tries = 0;
        let c = loop {
            match client
                .get_connection(pb::GetConnectionRequest {
                    connection_id: connection_id(i),
                })
                .await
            {
                Ok(c) => break c.into_inner().connection.context("no connection")?,
                Err(status) if tries < 60 => {
                    tries += 1;
                    if tries == 1 {
                        eprintln!("{mode}: GetConnection {i}: {status:?}; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(status) => {
                    return Err(anyhow::anyhow!("{status:?}"))
                        .with_context(|| format!("GetConnection {i}"));
                }
            }
        };
        if c.version < *want {
            report.acked_lost += 1;
            eprintln!(
                "{mode}: {} acknowledged version {want}, stored {}",
                connection_id(i),
                c.version
            );
        }
        if c.version < seen[i] {
            report.backwards += 1;
            eprintln!(
                "{mode}: {} went back from {} to {}",
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
/// must work at the provider's API. A connection answering UNAVAILABLE
/// (backing off after a fault near the end) is asked again every 2 s for up
/// to a minute; one that fails otherwise is a lost connection, by the cause
/// its error gives. A token the provider refuses is a *stale token* served
/// as fresh; the connection is then refreshed past its version, and is lost
/// only if that fails too.
pub async fn final_check(
    client: &mut TokenServiceClient<Channel>,
    http: &reqwest::Client,
    sandbox_url: &str,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<Vec<usize>> {
    let mut lost = Vec::new();
    let mut waiting: Vec<usize> = (0..n).collect();
    let first = tokio::time::Instant::now();
    let give_up = first + Duration::from_secs(60);
    loop {
        let mut again = Vec::new();
        for &i in &waiting {
            let id = connection_id(i);
            let mut answer = refresh(client, &id, None).await;
            if let Ok(token) = &answer
                && !live(http, sandbox_url, &token.access_token).await
            {
                report.stale_tokens.push(format!(
                    "{id}: version {} served by ForceRefresh, refused by the provider",
                    token.version
                ));
                answer = refresh(client, &id, Some(token.version)).await;
                if let Ok(token) = &answer
                    && !live(http, sandbox_url, &token.access_token).await
                {
                    lost.push(i);
                    report
                        .lost_other
                        .push(format!("{id}: no token the provider accepts"));
                    continue;
                }
            }
            match answer {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    if tokio::time::Instant::now() < give_up {
                        again.push(i);
                    } else {
                        report
                            .unavailable
                            .push(format!("{id}: still UNAVAILABLE: {}", status.message()));
                    }
                }
                Err(status) => {
                    lost.push(i);
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
                }
            }
        }
        if again.is_empty() {
            return Ok(lost);
        }
        report.recovery_secs = first.elapsed().as_secs_f64() + 2.0;
        report.slow_to_recover = report.slow_to_recover.max(again.len() as u64);
        waiting = again;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `ForceRefresh`, unconditional or past `rejected`.
async fn refresh(
    client: &mut TokenServiceClient<Channel>,
    id: &str,
    rejected: Option<u64>,
) -> Result<pb::AccessToken, tonic::Status> {
    client
        .force_refresh(pb::ForceRefreshRequest {
            connection_id: id.to_owned(),
            rejected: rejected.map(pb::force_refresh_request::Rejected::RejectedVersion),
        })
        .await
        .map(|r| r.into_inner().token.unwrap_or_default())
}

/// Whether the provider's API accepts this access token.
async fn live(http: &reqwest::Client, sandbox_url: &str, token: &str) -> bool {
    http.get(format!("{sandbox_url}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}
