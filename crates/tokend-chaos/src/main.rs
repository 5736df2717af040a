//! The crash and fault harness behind `scripts/chaos.sh`: runs a real
//! `tokend serve` against a real `tokend sandbox` (separate processes) under
//! steady load, strikes it with a fault every few seconds, and checks that
//! no acknowledged token is lost, no version goes back, and no grant is lost
//! except, with strict rotation, one whose rotation the fault hid, which
//! must be reported as `ROTATION_LOST`, never as `REVOKED`.
//!
//! `--fault kill` (the default) SIGKILLs the broker; `--fault matrix` runs
//! every other mode of `faults.rs` in turn (lost answers, a provider slower
//! than the lease, PostgreSQL stopped or partitioned, a frozen broker, a
//! wall-clock step) and prints RELIABILITY.md's table. With `--replicas N
//! --store postgres`, N brokers share one PostgreSQL database (a throwaway
//! cluster, `tokend-pgtest`) and the load is spread over all of them.

mod check;
mod clock;
mod faults;
mod load;
mod plan;
mod process;
mod proxy;
mod run;
mod window;

use std::time::Duration;

use anyhow::{Context, bail};
use faults::{Fault, MATRIX};
use plan::{Plan, Report};

struct Args {
    duration: Duration,
    connections: usize,
    bin: std::path::PathBuf,
    replicas: usize,
    store: Option<bool>,
    faults: Vec<Fault>,
    rotation: Option<Vec<u64>>,
    /// Concurrent callers of the load, and the share of their calls that
    /// force a refresh: together they set the refresh rate.
    callers: usize,
    force_share: f64,
}

const USAGE: &str = "use --fault kill|matrix|lost-hang|lost-504|lost-reset|slow-provider|pg-stop|pg-partition|sled-stall|clock-step \
     --duration 60s (per fault) | --minutes N, --rotation strict|grace|both, --connections N, --tokend PATH, \
     --replicas N, --store sled|postgres, --callers N, --force-share 0.2";

/// `60s`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = match text.strip_suffix('s') {
        Some(n) => (n, 1.0),
        None => match text.strip_suffix('m') {
            Some(n) => (n, 60.0),
            None => (text, 1.0),
        },
    };
    let secs: f64 = number.parse().context("--duration: 60s, 2m or seconds")?;
    if !secs.is_finite() || secs <= 0.0 || secs * unit > 86_400.0 {
        bail!("--duration must be positive and at most a day");
    }
    Ok(Duration::from_secs_f64(secs * unit))
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        duration: Duration::from_secs(60),
        connections: 200,
        bin: std::env::var_os("TOKEND_BIN")
            .map(Into::into)
            .unwrap_or_else(|| "target/debug/tokend".into()),
        replicas: 1,
        store: None,
        faults: vec![Fault::Kill],
        rotation: None,
        callers: 32,
        force_share: 0.2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--minutes" => {
                out.duration = parse_duration(&format!("{value}m")).context("--minutes")?
            }
            "--duration" => out.duration = parse_duration(&value)?,
            "--connections" => out.connections = value.parse().context("--connections")?,
            "--tokend" => out.bin = value.into(),
            "--replicas" => out.replicas = value.parse().context("--replicas")?,
            "--store" => {
                out.store = Some(match value.as_str() {
                    "postgres" => true,
                    "sled" => false,
                    other => bail!("--store {other}: sled or postgres"),
                })
            }
            "--fault" => {
                out.faults = match value.as_str() {
                    "matrix" => MATRIX.to_vec(),
                    name => vec![
                        Fault::parse(name).with_context(|| format!("--fault {name}; {USAGE}"))?,
                    ],
                }
            }
            "--rotation" => {
                out.rotation = Some(match value.as_str() {
                    "strict" => vec![0],
                    "grace" => vec![30],
                    "both" => vec![0, 30],
                    other => bail!("--rotation {other}: strict, grace or both"),
                })
            }
            "--callers" => out.callers = value.parse().context("--callers")?,
            "--force-share" => out.force_share = value.parse().context("--force-share")?,
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    if out.connections == 0 || out.replicas == 0 || out.callers == 0 {
        bail!("--connections, --replicas and --callers must be positive");
    }
    if !(0.0..=1.0).contains(&out.force_share) {
        bail!("--force-share is a share of calls, from 0 to 1");
    }
    if out.replicas > 1 && out.store != Some(true) {
        bail!("--replicas above 1 needs --store postgres (sled is one process's)");
    }
    Ok(out)
}

/// The runs `args` asks for: each fault's duration is split over its
/// rotations.
fn plans(args: &Args) -> Vec<Plan> {
    let mut plans = Vec::new();
    for &fault in &args.faults {
        let rotations = args
            .rotation
            .clone()
            .unwrap_or_else(|| fault.rotations().to_vec());
        let (postgres, replicas) = match fault.postgres() {
            Some(pg) if args.store.is_none_or(|s| s == pg) && args.replicas == 1 => {
                (pg, fault.replicas())
            }
            Some(pg) => (pg, args.replicas),
            None => (args.store.unwrap_or(false), args.replicas),
        };
        for &grace_secs in &rotations {
            plans.push(Plan {
                fault,
                grace_secs,
                duration: args.duration / rotations.len() as u32,
                connections: args.connections,
                replicas: if postgres { replicas } else { 1 },
                postgres,
                bin: args.bin.clone(),
                callers: args.callers,
                force_share: args.force_share,
            });
        }
    }
    plans
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mut done = Vec::new();
    for plan in plans(&args) {
        println!(
            "== {} ({}; {}; {:?})",
            plan.fault.name(),
            plan.rotation(),
            plan.store(),
            plan.duration
        );
        let report = run::run(&plan)
            .await
            .with_context(|| format!("{} ({})", plan.fault.name(), plan.rotation()))?;
        print_run(&plan, &report);
        done.push((plan, report));
    }
    let mut passed = 0;
    let mut failed = 0;
    let mut check = |ok: bool, what: String| {
        println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
        if ok { passed += 1 } else { failed += 1 }
    };
    for (plan, r) in &done {
        let name = format!("{} ({})", plan.fault.name(), plan.rotation());
        check(
            r.strikes >= 2,
            format!("{name}: at least 2 strikes ({})", r.strikes),
        );
        check(
            r.acked_lost == 0,
            format!("{name}: acknowledged writes lost: {}", r.acked_lost),
        );
        check(
            r.backwards == 0,
            format!("{name}: versions gone backwards: {}", r.backwards),
        );
        check(
            r.lost_other.is_empty(),
            format!(
                "{name}: losses not marked ROTATION_LOST: {}",
                r.lost_other.len()
            ),
        );
        check(
            r.unavailable.is_empty(),
            format!(
                "{name}: connections still failing at the end: {}",
                r.unavailable.len()
            ),
        );
        check(
            r.stale_tokens.is_empty(),
            format!(
                "{name}: expired access tokens handed out as fresh: {}",
                r.stale_tokens.len()
            ),
        );
        check(
            r.false_alarms == 0,
            format!(
                "{name}: connections reported RECONNECT_REQUIRED that were fine at the end: {}",
                r.false_alarms
            ),
        );
        if plan.grace_secs > 0 || !plan.fault.may_lose_strict() {
            check(
                r.lost() == 0,
                format!(
                    "{name}: connections lost: {} (none may be, in this mode)",
                    r.lost()
                ),
            );
        }
    }
    print_table(&done);
    println!("chaos: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn print_run(plan: &Plan, r: &Report) {
    let name = format!("{} ({})", plan.fault.name(), plan.rotation());
    let per_1000 = if r.strikes == 0 {
        0.0
    } else {
        r.lost() as f64 * 1000.0 / r.strikes as f64
    };
    println!(
        "{name} on {}: {} strikes, {} refreshes ({} invalid_grant, {} grants hidden by lost answers), {} calls ok, {} failed, {} stalled > 10 s, {} connections announced RECONNECT_REQUIRED that were fine at the end ({} of them also told to a caller)",
        plan.store(),
        r.strikes,
        r.refreshes,
        r.invalid_grants,
        r.hidden_grants,
        r.calls_ok,
        r.calls_failed,
        r.stalled,
        r.false_alarms,
        r.false_alarms_told
    );
    println!(
        "{name}: lost {} (ROTATION_LOST {}, other {}), {per_1000:.0} per 1,000 strikes; {} UNAVAILABLE after the settle (the last recovered {:.0} s later), {} of them for over a minute; setup {:.0} s, checks {:.0} s",
        r.lost(),
        r.lost_rotation_lost,
        r.lost_other.len(),
        r.slow_to_recover,
        r.recovery_secs,
        r.unavailable.len(),
        r.setup_secs,
        r.check_secs
    );
    if !r.stale_tokens.is_empty() {
        println!(
            "{name}: {} expired access tokens handed out as fresh",
            r.stale_tokens.len()
        );
    }
    for l in r
        .lost_other
        .iter()
        .chain(&r.unavailable)
        .chain(&r.stale_tokens)
        .take(20)
    {
        println!("  {l}");
    }
}

/// RELIABILITY.md's table, in Markdown.
fn print_table(done: &[(Plan, Report)]) {
    println!();
    println!(
        "| fault | rotation | store | runs | connections lost | labelled truthfully (`ROTATION_LOST`) | labelled otherwise | told to reconnect, yet fine | expired tokens served | acknowledged writes lost | versions back | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (plan, r) in done {
        let allowed = plan.grace_secs == 0 && plan.fault.may_lose_strict();
        let ok = r.acked_lost == 0
            && r.backwards == 0
            && r.lost_other.is_empty()
            && r.unavailable.is_empty()
            && r.strikes >= 2
            && r.false_alarms == 0
            && r.stale_tokens.is_empty()
            && (allowed || r.lost() == 0);
        println!(
            "| {}: {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            plan.fault.name(),
            plan.fault.describe(),
            plan.rotation(),
            plan.store(),
            r.strikes,
            r.lost(),
            if r.unavailable.is_empty() {
                String::new()
            } else {
                format!(" (+{} unavailable)", r.unavailable.len())
            },
            r.lost_rotation_lost,
            r.lost_other.len(),
            r.false_alarms,
            r.stale_tokens.len(),
            r.acked_lost,
            r.backwards,
            if ok { "pass" } else { "**FAIL**" }
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_minutes() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0.5m").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "s", "-1s", "0", "NaNs", "1h", "1e9s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_fault_has_a_name_that_parses_back() {
        for fault in [Fault::Kill, Fault::Restart].into_iter().chain(MATRIX) {
            assert_eq!(Fault::parse(fault.name()), Some(fault));
        }
        assert_eq!(Fault::parse("matrix"), None);
    }
}
