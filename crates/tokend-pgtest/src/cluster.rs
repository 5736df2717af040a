//! The throwaway cluster: finding the binaries, `initdb` and `pg_ctl` as
//! the right user, the watchdog, and a database per test.

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
    pub(crate) bin: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) port: u16,
    /// Who runs the server's commands: `None` for the current user.
    pub(crate) run_as: Option<&'static str>,
    /// Kept so the directory outlives the cluster; the watchdog removes it.
    pub(crate) _dir: PathBuf,
    /// Stopped and removed on drop (a [`Cluster::dedicated`] one).
    pub(crate) owned: bool,
    /// The server's certificate and key, for a cluster that requires TLS.
    pub(crate) tls: Option<ServerTls>,
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

pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub(crate) fn is_root() -> bool {
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

    /// A dedicated cluster (stopped and removed when dropped) that requires
    /// TLS on every TCP connection: `pg_hba.conf` has a `hostssl` line and
    /// no `host` one, so a plaintext client is refused. Its certificate
    /// names `localhost` and `127.0.0.1` and is issued by a CA made for this
    /// cluster alone; returns the cluster and that CA's certificate (PEM),
    /// which lives as long as the cluster.
    ///
    /// # Panics
    /// When PostgreSQL cannot be found or started, or the certificates
    /// cannot be made.
    pub fn dedicated_tls() -> (Cluster, PathBuf) {
        match Cluster::start_with(true) {
            Ok(mut c) => {
                c.owned = true;
                let ca = c.ca_file().map(Path::to_path_buf).unwrap_or_default();
                (c, ca)
            }
            Err(e) => panic!("PostgreSQL with TLS for tests: {e}"),
        }
    }

    /// The CA certificate (PEM) of a [`Cluster::dedicated_tls`] cluster;
    /// `None` for a plaintext one.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    fn start() -> Result<Cluster, String> {
        Cluster::start_with(false)
    }

    fn start_with(tls: bool) -> Result<Cluster, String> {
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
        let tls = if tls {
            Some(write_server_tls(&dir.join("tls"), run_as)?)
        } else {
            None
        };
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
                tls: tls.clone(),
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
                if cluster.tls.is_some() {
                    // TLS or nothing over TCP: no `host` line, so a
                    // plaintext client matches no entry and is refused.
                    // (Rewriting the file in place keeps its owner.)
                    std::fs::write(
                        data.join("pg_hba.conf"),
                        "# tokend-pgtest: TCP clients must use TLS.\n\
                         local all all trust\n\
                         hostssl all all 127.0.0.1/32 trust\n",
                    )
                    .map_err(|e| format!("cannot write pg_hba.conf: {e}"))?;
                }
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
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' \
             -c max_connections=300 -c fsync=on -c synchronous_commit=on",
            self.port
        );
        if let Some(tls) = &self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                tls.cert_file.display(),
                tls.key_file.display()
            ));
        }
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

    /// A connection URL for `database` (trust authentication, loopback):
    /// with `?sslmode=disable` for a plaintext cluster, and with no
    /// `sslmode` for a TLS one (see [`Self::url_for_host`]).
    pub fn url(&self, database: &str) -> String {
        match self.tls {
            None => format!(
                "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
                self.port
            ),
            Some(_) => self.url_for_host(database, "127.0.0.1"),
        }
    }

    /// A connection URL for `database` naming the server as `host` (say
    /// `localhost` or `127.0.0.1`, both in a TLS cluster's certificate),
    /// with no `sslmode`: the client's own settings decide TLS.
    pub fn url_for_host(&self, database: &str, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser in `database`, through `psql`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let psql = self.bin.join("psql");
        let mut cmd = Command::new(&psql);
        if self.tls.is_some() {
            // The server requires TLS; psql need not verify it here.
            cmd.env("PGSSLMODE", "require");
        }
        let out = cmd
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
        self.url(&self.create_database(prefix))
    }

    /// A new, empty database with a unique name; returns the name (for
    /// [`Self::url_for_host`]).
    ///
    /// # Panics
    /// When the database cannot be created.
    pub fn create_database(&self, prefix: &str) -> String {
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
        name
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

use crate::tls::{ServerTls, write_server_tls};
