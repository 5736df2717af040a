//! The steady load: many callers asking for tokens and forcing refreshes,
//! recording the highest token version every connection acknowledged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

/// What the load saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Calls slower than 10 s.
    pub stalled: AtomicU64,
}

/// Connections a caller was told to reconnect (`FAILED_PRECONDITION`, as
/// `RECONNECT_REQUIRED` is sent), by index.
pub struct Told(pub Vec<AtomicBool>);

impl Told {
    pub fn new(n: usize) -> Self {
        Self((0..n).map(|_| AtomicBool::new(false)).collect())
    }
}

/// Highest acknowledged version per connection.
pub struct Acked(pub Vec<AtomicU64>);

impl Acked {
    pub fn new(n: usize) -> Self {
        Self((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|v| v.load(Ordering::SeqCst)).collect()
    }
}

pub fn connection_id(i: usize) -> String {
    format!("chaos-{i}")
}

/// Runs `workers` callers until `stop` is set; `force_share` of their
/// calls are ForceRefresh.
pub async fn run(
    channel: Channel,
    acked: Arc<Acked>,
    tally: Arc<Tally>,
    told: Arc<Told>,
    stop: Arc<AtomicBool>,
    workers: usize,
    force_share: f64,
) {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut client = TokenServiceClient::new(channel.clone());
        let (acked, tally, told, stop) = (
            Arc::clone(&acked),
            Arc::clone(&tally),
            Arc::clone(&told),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (i, force) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..acked.0.len()),
                        rng.random_bool(force_share),
                    )
                };
                let id = connection_id(i);
                let started = tokio::time::Instant::now();
                let version = if force {
                    let seen = acked.0[i].load(Ordering::SeqCst);
                    client
                        .force_refresh(pb::ForceRefreshRequest {
                            connection_id: id,
                            rejected: Some(pb::force_refresh_request::Rejected::RejectedVersion(
                                seen,
                            )),
                        })
                        .await
                        .map(|r| r.into_inner().token.map_or(0, |t| t.version))
                } else {
                    client
                        .get_token(pb::GetTokenRequest {
                            connection_id: id,
                            min_ttl_seconds: 0,
                        })
                        .await
                        .map(|r| r.into_inner().token.map_or(0, |t| t.version))
                };
                if started.elapsed() > Duration::from_secs(10) {
                    tally.stalled.fetch_add(1, Ordering::Relaxed);
                }
                match version {
                    Ok(v) => {
                        acked.0[i].fetch_max(v, Ordering::SeqCst);
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        if status.code() == tonic::Code::FailedPrecondition {
                            told.0[i].store(true, Ordering::Relaxed);
                        }
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        // Down or restarting: do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
