//! Where the strict-rotation window goes: how long each step between a
//! provider's answer and the durable write of the grant it holds takes, as
//! process-wide histograms the admin listener exports
//! (`tokend_refresh_window_seconds{step}`).
//!
//! A strict provider kills the old refresh token as it answers; until the
//! new one is on disk, a crash loses the grant. The steps, in order:
//! - `answer_wait`: from sending the request to the answer's headers (the
//!   provider rotates somewhere in there; only the part after it is in the
//!   window, and no one can tell which from here);
//! - `answer_read`: the answer's body, from its headers to its last byte;
//! - `parse`: the answer decoded and checked;
//! - the store's put (sled): `wal_write` (from the put's start until the
//!   sealed record is appended to the write-ahead log: safe from a crash of
//!   the process) and `wal_sync` (until that append is fdatasync'd: safe
//!   from a power cut); then `queue` (sent to the writer thread, until it
//!   starts on it), `apply` (sealed, checked and swapped in), `fsync`
//!   (until the flush covering it is over), `ack` (until the caller hears
//!   of it);
//! - `commit`: from the provider call's return to the grant's write
//!   returning durable (the engine's part, then the whole put).
//!
//! Process-wide, unlike the server's per-server registry: the steps are
//! timed in the provider client and in the store, which know nothing of the
//! server. Several servers in one process (tests) share these figures;
//! nothing asserts on them. Recording is a few relaxed atomic adds.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// A step of the strict-rotation window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    AnswerWait,
    AnswerRead,
    Parse,
    WalWrite,
    WalSync,
    Queue,
    Apply,
    Fsync,
    Ack,
    Commit,
}

impl Step {
    /// Every step, in the order they end.
    pub const ALL: [Step; 10] = [
        Step::AnswerWait,
        Step::AnswerRead,
        Step::Parse,
        Step::WalWrite,
        Step::WalSync,
        Step::Queue,
        Step::Apply,
        Step::Fsync,
        Step::Ack,
        Step::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::AnswerWait => "answer_wait",
            Step::AnswerRead => "answer_read",
            Step::Parse => "parse",
            Step::WalWrite => "wal_write",
            Step::WalSync => "wal_sync",
            Step::Queue => "queue",
            Step::Apply => "apply",
            Step::Fsync => "fsync",
            Step::Ack => "ack",
            Step::Commit => "commit",
        }
    }
}

/// Bucket upper bounds, in seconds: 25 µs to 5 s, fine around the
/// milliseconds an fsync takes.
pub const BOUNDS: [f64; 24] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_35, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002,
    0.003, 0.005, 0.007_5, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 5.0,
];

struct Histogram {
    /// Per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }
}

static STEPS: [Histogram; Step::ALL.len()] = [const { Histogram::new() }; Step::ALL.len()];

/// Records that `step` took `took`.
pub fn record(step: Step, took: Duration) {
    let h = &STEPS[step as usize];
    let secs = took.as_secs_f64();
    let bucket = BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BOUNDS.len());
    h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    h.sum_nanos.fetch_add(
        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// One step's figures so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// How many fell in each bucket: at most `BOUNDS[i]` (and above the
    /// bound before), then one more for above every bound.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_secs: f64,
}

/// What `step` has recorded so far in this process.
pub fn snapshot(step: Step) -> Snapshot {
    let h = &STEPS[step as usize];
    let counts: Vec<u64> = h
        .buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    Snapshot {
        count: counts.iter().sum(),
        counts,
        sum_secs: h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_lands_in_its_bucket() {
        let before = snapshot(Step::Ack);
        record(Step::Ack, Duration::from_micros(1_200));
        record(Step::Ack, Duration::from_secs(60));
        let after = snapshot(Step::Ack);
        assert_eq!(after.count - before.count, 2);
        let added: Vec<u64> = after
            .counts
            .iter()
            .zip(&before.counts)
            .map(|(a, b)| a - b)
            .collect();
        let bucket = BOUNDS.iter().position(|b| *b == 0.001_5).unwrap();
        assert_eq!(added[bucket], 1, "1.2 ms is in (1 ms, 1.5 ms]");
        assert_eq!(added[BOUNDS.len()], 1, "a minute is above every bound");
        assert_eq!(added.iter().sum::<u64>(), 2);
    }
}
