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
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

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

    /// Sends `signal` (SIGSTOP, SIGCONT...) to the child.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) on our own child, which we have not reaped yet
        // (its pid cannot have been reused).
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after
    /// it). Returns whether the child exited by itself.
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<bool> {
        self.signal(libc::SIGTERM)?;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reap();
        Ok(false)
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
    /// Where the brokers reach that database, if not there directly (a TCP
    /// proxy that can partition them from it).
    pub broker_database_url: Option<String>,
    /// `[store] refresh_lease_secs`, if set.
    pub lease_secs: Option<u64>,
    /// `[http] request_timeout_secs`, if set.
    pub request_timeout_secs: Option<u64>,
    /// The brokers' wall clocks can be stepped: an `LD_PRELOAD` library and
    /// one offset file per replica (`clock.rs`).
    pub clock: Option<crate::clock::ClockStep>,
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
        let mut store = String::new();
        if self.database_url.is_some() {
            // Short leases: a killed replica's refreshes are taken over fast.
            let lease = self.lease_secs.unwrap_or(3);
            store = format!("[store]\nkind = \"postgres\"\nrefresh_lease_secs = {lease}\n\n");
        } else if let Some(lease) = self.lease_secs {
            store = format!("[store]\nrefresh_lease_secs = {lease}\n\n");
        }
        if let Some(timeout) = self.request_timeout_secs {
            store.push_str(&format!("[http]\nrequest_timeout_secs = {timeout}\n\n"));
        }
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
        if let Some(url) = self
            .broker_database_url
            .as_ref()
            .or(self.database_url.as_ref())
        {
            cmd.env("TOKEND_DATABASE_URL", url);
        }
        if let Some(clock) = &self.clock {
            clock.apply(&mut cmd, replica);
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

/// Waits (up to 30 s) until the broker behind `client` answers.
pub async fn wait_ready(client: &mut TokenServiceClient<Channel>) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            matches!(
                client
                    .get_connection(pb::GetConnectionRequest {
                        connection_id: "chaos-readiness-probe".into(),
                    })
                    .await,
                Err(s) if s.code() == tonic::Code::NotFound
            )
        }
    })
    .await
    .context("tokend did not come back")
}
