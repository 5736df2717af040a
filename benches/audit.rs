//! Where the audit writer saturates: callers record as fast as they can
//! for a few seconds, at rising paced rates and then unpaced; the figures
//! are records written and dropped per second. Dropped records are counted
//! (`tokend_audit_records_dropped_total`), never silent.
//!
//! Run: `cargo bench --bench audit`

use std::time::{Duration, Instant};

use tokend_core::Timestamp;
use tokend_server::audit::{AuditLog, AuditOptions};

const SECONDS: f64 = 2.0;
const CALLERS: usize = 2;

fn main() {
    println!(
        "audit writer: {CALLERS} caller threads, {SECONDS} s per rate, one record per GetToken"
    );
    println!("| offered /s | written /s | dropped /s |");
    println!("|---|---|---|");
    for offered in [50_000u64, 100_000, 200_000, 400_000, 0] {
        let (written, dropped) = measure(offered);
        let label = if offered == 0 {
            "unpaced".to_owned()
        } else {
            offered.to_string()
        };
        println!("| {label} | {written:.0} | {dropped:.0} |");
    }
}

/// Records offered at `per_second` in all (0: as fast as possible); the
/// rates written and dropped.
fn measure(per_second: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.log");
    let options = AuditOptions {
        max_bytes: 1 << 40,
        ..AuditOptions::default()
    };
    let (log, writer) = AuditLog::open(&path, &options).expect("audit log");
    let dropped = log.dropped_total();
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(SECONDS);
    std::thread::scope(|s| {
        for t in 0..CALLERS {
            let log = log.clone();
            s.spawn(move || {
                let mut sent = 0u64;
                let per_thread = per_second / CALLERS as u64;
                while started.elapsed() < run_for {
                    log.record(
                        Timestamp::from_unix_millis(1_700_000_000_000),
                        "billing-service",
                        "GetToken",
                        Some(&format!("hubspot-portal-{t}-{}", sent % 1000)),
                        Ok(()),
                    );
                    sent += 1;
                    if per_thread > 0 {
                        // Paced: wait for this record's slot.
                        let due = Duration::from_secs_f64(sent as f64 / per_thread as f64);
                        while started.elapsed() < due {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(log);
    writer.join();
    let lines = std::fs::read_to_string(&path)
        .expect("read")
        .lines()
        .count();
    (lines as f64 / elapsed, dropped.get() as f64 / elapsed)
}
