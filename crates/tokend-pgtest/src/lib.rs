//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package, under a temp dir, on a free loopback port,
//! run as the `postgres` user when the tests run as root.
//!
//! One cluster per test process ([`cluster`]), one database per test
//! ([`Cluster::database`]), so tests stay isolated and cheap. A watchdog
//! process stops the cluster and removes its directory when the test process
//! ends, however it ends (panic, SIGKILL included).
//!
//! Missing binaries are an error with the install command in it: tests that
//! need PostgreSQL fail loudly, they are never skipped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

/// What to run when the PostgreSQL binaries are missing.
pub const INSTALL_HINT: &str = "install PostgreSQL's server binaries: `sudo apt-get install -y postgresql` (Debian/Ubuntu); \
     or set TOKEND_PG_BIN to the directory holding initdb and pg_ctl";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Who runs the server's commands: `None` for the current user.
    run_as: Option<&'static str>,
    /// Kept so the directory outlives the cluster; the watchdog removes it.
    _dir: PathBuf,
    /// Stopped and removed on drop (a [`Cluster::dedicated`] one).
    owned: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.stop_immediately();
            let _ = std::fs::remove_dir_all(&self._dir);
        }
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The test process's cluster, started on first use.
///
/// # Panics
/// When PostgreSQL cannot be found or started: the message says why and
/// how to install it.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => c,
        Err(e) => panic!("PostgreSQL for tests: {e}"),
    }
}

/// The directory holding `initdb` and `pg_ctl`: `TOKEND_PG_BIN`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`.
pub fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TOKEND_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(format!(
                "TOKEND_PG_BIN={} holds no initdb; {INSTALL_HINT}",
                dir.display()
            ))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .ok_or_else(|| format!("initdb and pg_ctl not found; {INSTALL_HINT}"))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// A cluster of its own, for a test that stops or restarts the server
    /// (the shared one serves every other test). Stopped and removed when
    /// dropped.
    ///
    /// # Panics
    /// When PostgreSQL cannot be found or started.
    pub fn dedicated() -> Cluster {
        match Cluster::start() {
            Ok(mut c) => {
                c.owned = true;
                c
            }
            Err(e) => panic!("PostgreSQL for tests: {e}"),
        }
    }

    fn start() -> Result<Cluster, String> {
        let bin = find_bin()?;
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("tokend-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let data = dir.join("data");
        if let Some(user) = run_as {
            // initdb refuses to run as root; the data dir must be the
            // postgres user's.
            let status = Command::new("chown")
                .args([&format!("{user}:"), dir.to_str().unwrap_or_default()])
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "cannot hand {} to the {user} user (does it exist? {INSTALL_HINT})",
                    dir.display()
                ));
            }
        }
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let cluster = Cluster {
                bin: bin.clone(),
                data: data.clone(),
                port,
                run_as,
                _dir: dir.clone(),
                owned: false,
            };
            if !data.exists() {
                cluster.run(
                    "initdb",
                    &[
                        "-D",
                        data.to_str().unwrap_or_default(),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ],
                )?;
            }
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.watchdog()?;
                    return Ok(cluster);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Runs one of the cluster's binaries, as the postgres user if need be.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let path = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", path.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' \
             -c max_connections=300 -c fsync=on -c synchronous_commit=on",
            self.port
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(drop)
        .map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\nserver log:\n{log}")
        })
    }

    /// Starts a process that waits for this one to end, then stops the
    /// cluster and removes its directory.
    fn watchdog(&self) -> Result<(), String> {
        let stop = self.command_line(
            "pg_ctl",
            &format!("-D '{}' -m immediate stop", self.data.display()),
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self._dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("cannot start the cluster's watchdog: {e}"))
    }

    fn command_line(&self, program: &str, args: &str) -> String {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => format!("runuser -u {user} -- '{}' {args}", path.display()),
            None => format!("'{}' {args}", path.display()),
        }
    }

    /// The port the cluster listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (for tests that read the server's files).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A connection URL for `database` (trust authentication, loopback).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL as the superuser in `database`, through `psql`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let psql = self.bin.join("psql");
        let out = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A new, empty database with a unique name; returns its URL.
    ///
    /// # Panics
    /// When the database cannot be created.
    pub fn database(&self, prefix: &str) -> String {
        let name = format!(
            "{}_{}_{}",
            prefix.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        )
        .to_lowercase();
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE {name}")) {
            panic!("cannot create test database {name}: {e}");
        }
        self.url(&name)
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`), as a crash.
    pub fn stop_immediately(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .map(drop)
    }

    /// Starts the server again after [`Self::stop_immediately`], on the same
    /// port, and waits until it accepts connections (`pg_ctl -w`).
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_and_answers_in_its_own_database() {
        let c = cluster();
        let url = c.database("pgtest");
        let db = url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .expect("database name");
        assert_eq!(c.psql(db, "SELECT 40 + 2").expect("query"), "42");
    }
}
