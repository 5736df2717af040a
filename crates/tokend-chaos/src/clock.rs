//! Wall-clock steps for the brokers, as NTP makes them, without touching
//! the host's clock (which needs CAP_SYS_TIME and would step every process
//! on the machine): a small `LD_PRELOAD` library, built here with the
//! system's C compiler, adds an offset to `CLOCK_REALTIME` (and its coarse
//! variant) in `clock_gettime`, the call behind Rust's `SystemTime::now`.
//! The monotonic clocks are untouched, as in a real step. Each replica reads
//! its own offset from an 8-byte file it maps at start, so the harness steps
//! a running broker's clock by rewriting that file in place.
//!
//! On PostgreSQL tokend keeps the database's clock, not the machine's
//! (`tokend_core::Clock` anchored at `Store::fleet_now` at start, followed
//! forward every second), so a step should change what a broker decides
//! neither while it runs nor once it restarts on the stepped clock: the
//! mode strikes both. On sled tokend follows the machine's wall clock
//! forward every second.

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The interposer. `clock_gettime` is resolved through `dlsym(RTLD_NEXT)`,
/// so every other clock goes to glibc (and its vDSO) unchanged.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static const volatile int64_t *offset_ns;

__attribute__((constructor)) static void chaos_clock_init(void) {
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    const char *path = getenv("TOKEND_CHAOS_CLOCK_FILE");
    if (path == NULL) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) offset_ns = p;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (real_clock_gettime == NULL) {
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
        if (real_clock_gettime == NULL) return -1;
    }
    int rc = real_clock_gettime(id, ts);
    if (rc != 0 || offset_ns == NULL) return rc;
    if (id != CLOCK_REALTIME && id != CLOCK_REALTIME_COARSE) return rc;
    int64_t off = __atomic_load_n(offset_ns, __ATOMIC_RELAXED);
    int64_t nsec = (int64_t)ts->tv_nsec + off % 1000000000;
    int64_t sec = (int64_t)ts->tv_sec + off / 1000000000;
    if (nsec < 0) { nsec += 1000000000; sec -= 1; }
    if (nsec >= 1000000000) { nsec -= 1000000000; sec += 1; }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)nsec;
    return rc;
}
"#;

/// The shim and the replicas' offset files.
#[derive(Clone, Debug)]
pub struct ClockStep {
    library: PathBuf,
    dir: PathBuf,
}

impl ClockStep {
    /// Builds the shim in `dir` (with `cc`) and creates `replicas` offset
    /// files, all at zero.
    pub fn build(dir: &Path, replicas: usize) -> anyhow::Result<ClockStep> {
        let source = dir.join("clockstep.c");
        let library = dir.join("libclockstep.so");
        std::fs::write(&source, SHIM)?;
        let out = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .context("cannot run the C compiler (cc) to build the clock-step shim")?;
        if !out.status.success() {
            bail!(
                "building the clock-step shim failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let step = ClockStep {
            library,
            dir: dir.to_owned(),
        };
        for r in 0..replicas {
            std::fs::write(step.file(r), 0i64.to_ne_bytes())?;
        }
        step.check()?;
        Ok(step)
    }

    fn file(&self, replica: usize) -> PathBuf {
        self.dir.join(format!("clock-{replica}"))
    }

    /// Makes `cmd` (a broker) run on replica `replica`'s clock.
    pub fn apply(&self, cmd: &mut Command, replica: usize) {
        cmd.env("LD_PRELOAD", &self.library)
            .env("TOKEND_CHAOS_CLOCK_FILE", self.file(replica));
    }

    /// Sets replica `replica`'s wall clock to the true time plus `secs`.
    /// Written in place: the file is mapped by the running broker, and
    /// truncating it would fault its reads.
    pub fn set(&self, replica: usize, secs: i64) -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.file(replica))?;
        file.write_all_at(&secs.saturating_mul(1_000_000_000).to_ne_bytes(), 0)?;
        Ok(())
    }

    /// Proves the shim steps a real process's wall clock: `date +%s` under
    /// it, one hour ahead, must say so.
    fn check(&self) -> anyhow::Result<()> {
        let probe = self.dir.join("clock-probe");
        std::fs::write(&probe, 3600i64.saturating_mul(1_000_000_000).to_ne_bytes())?;
        let out = Command::new("date")
            .arg("+%s")
            .env("LD_PRELOAD", &self.library)
            .env("TOKEND_CHAOS_CLOCK_FILE", &probe)
            .output()
            .context("cannot run date")?;
        let shown: i64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("date +%s under the shim")?;
        let now = i64::try_from(
            std::time::UNIX_EPOCH
                .elapsed()
                .context("the clock is before 1970")?
                .as_secs(),
        )?;
        if !(3590..=3610).contains(&(shown - now)) {
            bail!(
                "the clock-step shim does not work: date says {shown}, expected about {}",
                now + 3600
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    fn now_secs() -> i64 {
        i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_secs()).unwrap()
    }

    /// The shim steps a running process's wall clock (Python's
    /// `time.time()`, `clock_gettime(CLOCK_REALTIME)` as in Rust) by the
    /// offset in its file, including a step written while it runs.
    #[test]
    fn the_shim_steps_a_running_process_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let step = ClockStep::build(dir.path(), 1).unwrap();
        step.set(0, -7200).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import sys, time\nprint(int(time.time()), flush=True)\nsys.stdin.readline()\nprint(int(time.time()), flush=True)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
        step.apply(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let before: i64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        assert!((before - (now_secs() - 7200)).abs() < 60, "{before}");
        // Running, waiting on stdin: step its clock forward.
        step.set(0, 7200).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let after: i64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        assert!((after - (now_secs() + 7200)).abs() < 60, "{after}");
        child.wait().unwrap();
    }
}
