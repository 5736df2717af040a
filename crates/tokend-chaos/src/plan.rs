//! What one run is (a fault, a rotation, a store, a load) and what it
//! found.

use std::time::Duration;

use crate::faults::Fault;

/// What one run is.
pub struct Plan {
    pub fault: Fault,
    /// Seconds a rotated-out refresh token stays valid; 0 is strict.
    pub grace_secs: u64,
    pub duration: Duration,
    pub connections: usize,
    pub replicas: usize,
    pub postgres: bool,
    pub bin: std::path::PathBuf,
    /// Concurrent callers, and the share of their calls that force a refresh.
    pub callers: usize,
    pub force_share: f64,
}

impl Plan {
    pub fn rotation(&self) -> String {
        if self.grace_secs == 0 {
            "strict".into()
        } else {
            format!("grace {} s", self.grace_secs)
        }
    }

    pub fn store(&self) -> String {
        if self.postgres {
            format!("PostgreSQL, {} replicas", self.replicas)
        } else {
            "sled".into()
        }
    }
}

/// One run's figures.
#[derive(Debug, Default)]
pub struct Report {
    /// Strikes of the fault (kills, lost answers, outages...).
    pub strikes: u64,
    pub refreshes: u64,
    pub invalid_grants: u64,
    /// Lost answers that hid a grant, by the sandbox's count.
    pub hidden_grants: u64,
    pub calls_ok: u64,
    pub calls_failed: u64,
    pub stalled: u64,
    pub acked_lost: u64,
    pub backwards: u64,
    pub lost_rotation_lost: u64,
    /// Connections lost with another cause (`REVOKED`: a lie here, since
    /// the sandbox revokes nothing) or whose refreshed token was refused.
    pub lost_other: Vec<String>,
    /// Access tokens `ForceRefresh` handed out that the provider refused
    /// (already expired): served as fresh, though the grant was fine.
    pub stale_tokens: Vec<String>,
    /// Connections still failing a minute after the run without being
    /// marked lost.
    pub unavailable: Vec<String>,
    /// Connections that answered UNAVAILABLE at the first final refresh
    /// (after the settle) and recovered later.
    pub slow_to_recover: u64,
    /// How long after the settle the last of them recovered (about).
    pub recovery_secs: f64,
    /// Connections a caller was told to reconnect (FAILED_PRECONDITION), or
    /// the event log announced `RECONNECT_REQUIRED` (to watchers and
    /// webhooks), that were fine at the end: an application would have sent
    /// its user to authorize again for nothing.
    pub false_alarms: u64,
    /// Of those, the ones a caller was told about.
    pub false_alarms_told: u64,
    /// Seconds spent starting up (processes, installs) and checking after
    /// the strikes.
    pub setup_secs: f64,
    pub check_secs: f64,
}

impl Report {
    pub fn lost(&self) -> u64 {
        self.lost_rotation_lost + self.lost_other.len() as u64
    }
}
