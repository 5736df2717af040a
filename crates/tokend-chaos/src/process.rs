//! The processes under test: `tokend sandbox` and `tokend serve`, each a
//! child killed when its handle drops, so a failing harness leaves nothing
//! running.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self { child })
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.reap();
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// How to start the sandbox and the brokers of one scenario.
pub struct Scenario {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub sandbox: SocketAddr,
    /// One address per replica.
    pub grpc: Vec<SocketAddr>,
    /// Each replica's admin listener, scraped for its refresh window.
    pub admin: Vec<SocketAddr>,
    /// Seconds a rotated-out refresh token stays valid; 0 is strict.
    pub grace_secs: u64,
    pub token_lifetime_secs: u64,
    /// The shared PostgreSQL database, if the replicas use one (else each
    /// broker has its sled data dir).
    pub database_url: Option<String>,
}

pub const SANDBOX_SECRET: &str = "sandbox-secret";

impl Scenario {
    pub fn start_sandbox(&self) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("sandbox")
            .arg("--listen")
            .arg(self.sandbox.to_string())
            .arg("--sandbox-token-lifetime-secs")
            .arg(self.token_lifetime_secs.to_string());
        if self.grace_secs > 0 {
            cmd.args([
                "--sandbox-rotation",
                "grace",
                "--sandbox-rotation-grace-secs",
            ])
            .arg(self.grace_secs.to_string());
        }
        Proc::spawn(&mut cmd, &self.dir.join("sandbox.log"))
    }

    /// Writes the brokers' config once (and, on PostgreSQL, migrates the
    /// database with `tokend migrate`).
    pub fn write_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("tokend.toml");
        let store = if self.database_url.is_some() {
            // Short leases: a killed replica's refreshes are taken over fast.
            "[store]\nkind = \"postgres\"\nrefresh_lease_secs = 3\n\n"
        } else {
            ""
        };
        std::fs::write(
            &path,
            format!(
                "{store}[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"http://{}/oauth/token\"\n\
                 client_id = \"sandbox-client\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
                 rotation_grace_secs = {}\nmin_refresh_interval_secs = 0\n",
                self.sandbox, self.grace_secs
            ),
        )?;
        if let Some(url) = &self.database_url {
            let out = Command::new(&self.bin)
                .arg("migrate")
                .arg("--config")
                .arg(&path)
                .env("TOKEND_DATABASE_URL", url)
                .output()
                .context("cannot run tokend migrate")?;
            if !out.status.success() {
                bail!(
                    "tokend migrate failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(path)
    }

    /// Starts replica `replica`'s `tokend serve` on its data dir and port;
    /// `run` numbers its log file. Every replica seals with replica 0's key
    /// file (created by its first start).
    pub fn start_broker(&self, config: &Path, replica: usize, run: usize) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(self.grpc[replica].to_string())
            .arg("--admin-listen")
            .arg(self.admin[replica].to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{replica}")))
            .arg("--key-file")
            .arg(self.dir.join("data-0").join("tokend.keys"))
            .env("SANDBOX_CLIENT_SECRET", SANDBOX_SECRET)
            .env("RUST_LOG", "warn");
        if let Some(url) = &self.database_url {
            cmd.env("TOKEND_DATABASE_URL", url);
        }
        Proc::spawn(
            &mut cmd,
            &self.dir.join(format!("tokend-{replica}-{run}.log")),
        )
    }
}

/// Waits until `ready` answers true, up to `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not ready within {limit:?}")
}
