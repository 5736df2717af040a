//! A real `tokend serve` process on a sled data dir, with the test's
//! sandbox provider configured, for tests of what only the binary does
//! (trace export, key files, signals).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tonic::transport::Channel;

const SECRET: &str = "process-sandbox-secret";

/// A running `tokend serve`; killed when dropped.
pub struct Served {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// A port free right now on loopback.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Served {
    /// Starts the sandbox and `tokend serve` with `env` added, and waits
    /// until it answers.
    pub async fn start(env: &[(&str, String)]) -> Served {
        let sandbox = Sandbox::start(SandboxConfig {
            client_secret: SECRET.into(),
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox");
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("tokend.toml");
        std::fs::write(
            &config,
            format!(
                "[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{}\"\n\
                 client_id = \"{}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n",
                sandbox.token_url(),
                sandbox.config().client_id,
            ),
        )
        .expect("config");
        let addr = free_addr();
        let admin = free_addr();
        let mut command = serve_command(dir.path(), addr, admin);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("tokend.log")).expect("log"))
            .spawn()
            .expect("tokend serve starts");
        let served = Served {
            sandbox,
            addr,
            admin,
            dir,
            child,
        };
        served.wait_ready().await;
        served
    }

    /// Stops the server (SIGKILL), keeping its dir.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The command that started this server, to start it again.
    pub fn serve_command(&self) -> Command {
        serve_command(self.dir.path(), self.addr, self.admin)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tokend.log")).unwrap_or_default()
    }

    pub fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("endpoint")
                .connect_lazy(),
        )
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = self.client();
        loop {
            let probe = client
                .get_connection(pb::GetConnectionRequest {
                    connection_id: "readiness-probe".into(),
                })
                .await;
            if matches!(probe, Err(ref s) if s.code() == tonic::Code::NotFound) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tokend not ready: {probe:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Installs `id` with sandbox tokens that expire in `expires_in` s.
    pub async fn install(&self, id: &str, expires_in: i64) -> tokend_sandbox::IssuedTokens {
        let account = format!("acct-{id}");
        let issued = self
            .sandbox
            .issue_tokens(&account, &["crm.objects.contacts.read"]);
        self.client()
            .install(crate::harness::import_request(
                id, &account, &issued, expires_in,
            ))
            .await
            .expect("install");
        issued
    }
}

impl Served {
    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {pid}");
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// `tokend serve` on `dir`'s config and data dir, with nothing from the
/// environment the tests run in (no `OTEL_*`, no `TOKEND_KEYS`).
fn serve_command(dir: &std::path::Path, addr: SocketAddr, admin: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
    command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("tokend.toml"))
        .args(["--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SANDBOX_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") || k == "TOKEND_KEYS" {
            command.env_remove(k);
        }
    }
    command
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
