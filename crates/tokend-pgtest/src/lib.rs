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
//!
//! [`Cluster::dedicated_tls`] starts a cluster that accepts TCP connections
//! only over TLS, with a server certificate for `localhost` and `127.0.0.1`
//! issued by a CA generated for it (its PEM is handed back, to verify with).

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
    /// The server's certificate and key, for a cluster that requires TLS.
    tls: Option<ServerTls>,
}

/// Where a TLS cluster's certificates are.
#[derive(Debug, Clone)]
struct ServerTls {
    /// The CA that issued the server's certificate (PEM).
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// The common name of the CA a TLS cluster's certificate is issued by.
pub const TLS_CA_NAME: &str = "tokend-pgtest CA";

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

/// A new CA: its parameters and key, to issue certificates with.
fn new_ca(common_name: &str) -> Result<(rcgen::CertificateParams, rcgen::KeyPair), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    Ok((params, key))
}

/// A freshly generated CA certificate (PEM) named `common_name`, related to
/// no cluster: to check that a client trusting it refuses a TLS cluster's
/// server (use [`TLS_CA_NAME`] for one whose name matches the real issuer's,
/// so only the signature tells them apart). The file is removed on drop.
///
/// # Panics
/// When the certificate cannot be made or written.
pub fn unrelated_ca_file(common_name: &str) -> tempfile::NamedTempFile {
    let made = new_ca(common_name).and_then(|(params, key)| {
        params
            .self_signed(&key)
            .map(|c| c.pem())
            .map_err(|e| format!("CA certificate: {e}"))
    });
    let pem = match made {
        Ok(pem) => pem,
        Err(e) => panic!("test CA: {e}"),
    };
    let mut file = match tempfile::Builder::new()
        .prefix("tokend-unrelated-ca-")
        .suffix(".pem")
        .tempfile()
    {
        Ok(f) => f,
        Err(e) => panic!("test CA file: {e}"),
    };
    if let Err(e) = std::io::Write::write_all(&mut file, pem.as_bytes()) {
        panic!("test CA file: {e}");
    }
    file
}

/// Makes a CA and a server certificate for `localhost` and `127.0.0.1`
/// under `dir`: `ca.crt`, `server.crt` and `server.key` (mode 0600, and the
/// server's user's, as PostgreSQL insists).
fn write_server_tls(dir: &Path, run_as: Option<&str>) -> Result<ServerTls, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };

    let (ca_params, ca_key) = new_ca(TLS_CA_NAME)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| format!("CA certificate: {e}"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| format!("server certificate: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| format!("server key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("server certificate: {e}"))?;

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tls = ServerTls {
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("server.crt"),
        key_file: dir.join("server.key"),
    };
    let write = |path: &Path, contents: &str, mode: u32| -> Result<(), String> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, contents.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // The mode asked for at creation is masked by the umask: set it.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&tls.ca_file, &ca_cert.pem(), 0o644)?;
    write(&tls.cert_file, &cert.pem(), 0o644)?;
    write(&tls.key_file, &key.serialize_pem(), 0o600)?;
    if let Some(user) = run_as {
        // The server reads them as its own user, and refuses a key it
        // does not own (or root does not, with mode 0640).
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!("cannot hand {} to the {user} user", dir.display()));
        }
    }
    Ok(tls)
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

    /// psql against `c` with `sslmode`, whatever the environment says.
    fn psql_with_sslmode(c: &Cluster, sslmode: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(c.bin.join("psql"))
            .env("PGSSLMODE", sslmode)
            .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &c.port.to_string(), "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    #[test]
    fn a_tls_cluster_serves_tls_only_with_a_private_key_only_it_reads() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};

        let (c, ca) = Cluster::dedicated_tls();
        assert_eq!(c.ca_file(), Some(ca.as_path()));
        let pem = std::fs::read_to_string(&ca).expect("CA file");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

        let key = c.tls.as_ref().expect("tls").key_file.clone();
        let meta = std::fs::metadata(&key).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let data_owner = std::fs::metadata(c.data_dir()).expect("data dir").uid();
        assert_eq!(meta.uid(), data_owner, "the key is the server's user's");

        // Over TLS: the session says so.
        let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        assert_eq!(c.psql("postgres", sql).expect("psql over TLS"), "t");
        assert_eq!(psql_with_sslmode(&c, "require", sql).expect("TLS"), "t");
        // In plaintext: refused by pg_hba.conf.
        let refused = psql_with_sslmode(&c, "disable", "SELECT 1").expect_err("plaintext");
        assert!(refused.contains("no pg_hba.conf entry"), "{refused}");

        // The database helpers work on it too, and the URL asks no sslmode.
        let url = c.database("tls");
        assert!(!url.contains("sslmode"), "{url}");
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    }

    #[test]
    fn a_plaintext_cluster_keeps_its_url() {
        let c = cluster();
        assert!(c.ca_file().is_none());
        assert!(c.url("x").ends_with("/x?sslmode=disable"));
        assert_eq!(
            c.url_for_host("x", "localhost"),
            format!("postgres://postgres@localhost:{}/x", c.port())
        );
    }
}
