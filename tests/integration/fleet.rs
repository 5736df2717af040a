//! Real `tokend serve` processes sharing one PostgreSQL database (a
//! throwaway cluster), against the sandbox provider over real HTTP: the
//! single refresh across replicas, failover after SIGKILL, and fencing of a
//! SIGSTOPped lease holder.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::future::join_all;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Fault, Rotation, Sandbox, SandboxConfig};
use tokend_store::crypto::KeyFile;
use tonic::transport::Channel;

use crate::harness::{force, get, import_request};
use crate::process::free_addr;

const SECRET: &str = "fleet-sandbox-secret";

/// `n` replicas and the sandbox they refresh against.
struct Fleet {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    config: PathBuf,
    db_url: String,
    keys: String,
    addrs: Vec<SocketAddr>,
    procs: Vec<Option<Child>>,
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {pid}");
}

impl Fleet {
    async fn start(n: usize, rotation: Rotation, lease_secs: u64) -> Fleet {
        let grace = match rotation {
            Rotation::Grace(s) => s,
            _ => 0,
        };
        let sandbox = Sandbox::start(SandboxConfig {
            client_secret: SECRET.into(),
            rotation,
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox");
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("tokend.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nkind = \"postgres\"\nrefresh_lease_secs = {lease_secs}\n\n\
                 [providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{}\"\n\
                 client_id = \"{}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
                 rotation_grace_secs = {grace}\nmin_refresh_interval_secs = 0\n",
                sandbox.token_url(),
                sandbox.config().client_id,
            ),
        )
        .expect("config");
        let db_url = tokend_pgtest::cluster().database("fleet");
        let keys = serde_json::to_string(&KeyFile::generate()).expect("keys");
        let mut fleet = Fleet {
            sandbox,
            dir,
            config,
            db_url,
            keys,
            addrs: (0..n).map(|_| free_addr()).collect(),
            procs: (0..n).map(|_| None).collect(),
        };
        let migrated = fleet
            .command()
            .arg("migrate")
            .arg("--config")
            .arg(&fleet.config)
            .output()
            .expect("tokend migrate runs");
        assert!(
            migrated.status.success(),
            "tokend migrate: {}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        for i in 0..n {
            fleet.spawn(i);
        }
        for i in 0..n {
            fleet.wait_ready(i).await;
        }
        fleet
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
        cmd.env("TOKEND_DATABASE_URL", &self.db_url)
            .env("TOKEND_KEYS", &self.keys)
            .env("SANDBOX_CLIENT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("replica-{i}.log"))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .expect("log");
        let child = self
            .command()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addrs[i].to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-{i}")))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tokend serve starts");
        self.procs[i] = Some(child);
    }

    async fn client(&self, i: usize) -> TokenServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addrs[i]))
            .expect("endpoint")
            .connect_lazy();
        TokenServiceClient::new(channel)
    }

    async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = self.client(i).await;
            let probe = c
                .get_connection(pb::GetConnectionRequest {
                    connection_id: "fleet-readiness-probe".into(),
                })
                .await;
            if matches!(probe, Err(ref s) if s.code() == tonic::Code::NotFound) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} not ready: {probe:?}\n{}",
                self.log_text(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn child(&self, i: usize) -> &Child {
        self.procs[i].as_ref().expect("running")
    }

    async fn install(&self, i: usize, id: &str, expires_in: i64) {
        let issued = self
            .sandbox
            .issue_tokens(&format!("acct-{id}"), &["crm.objects.contacts.read"]);
        self.client(i)
            .await
            .install(import_request(
                id,
                &format!("acct-{id}"),
                &issued,
                expires_in,
            ))
            .await
            .expect("install");
    }

    async fn version(&self, i: usize, id: &str) -> u64 {
        self.client(i)
            .await
            .get_connection(pb::GetConnectionRequest {
                connection_id: id.into(),
            })
            .await
            .expect("get connection")
            .into_inner()
            .connection
            .expect("connection")
            .version
    }

    /// Waits until replica `i` has the connection (installed elsewhere).
    async fn wait_known(&self, i: usize, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = self.client(i).await;
        while c
            .get_connection(pb::GetConnectionRequest {
                connection_id: id.into(),
            })
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "replica {i} never saw {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            if let Some(child) = &self.procs[i] {
                // A stopped process must be continued to die cleanly.
                signal(child, libc::SIGCONT);
            }
            self.kill(i);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replica_processes_refresh_an_expired_token_once_for_1000_callers() {
    let fleet = Fleet::start(3, Rotation::Strict, 30).await;
    let before = fleet.sandbox.stats().token_requests;
    // Installed already expired: the background refreshers of all three
    // replicas want it at once, and so do 1,000 callers. The provider is
    // slow, so every one of them arrives while the refresh is out.
    fleet.sandbox.inject(Fault::Latency {
        delay: Duration::from_secs(3),
        count: 1,
    });
    fleet.install(0, "fleet-sf", 0).await;
    for i in 1..3 {
        fleet.wait_known(i, "fleet-sf").await;
    }
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(fleet.client(i).await);
    }
    let results = join_all((0..1000).map(|i| {
        let mut c = clients[i % 3].clone();
        async move {
            c.get_token(get("fleet-sf"))
                .await
                .map(|r| r.into_inner().token.expect("token").access_token)
        }
    }))
    .await;
    let tokens: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| r.expect("every caller gets a token"))
        .collect();
    let calls = fleet.sandbox.stats().token_requests - before;
    assert_eq!(
        calls, 1,
        "1,000 callers on 3 processes: {calls} provider calls"
    );
    assert_eq!(tokens.len(), 1, "every caller got the one refreshed token");
}

/// Guards: a replica SIGKILLed while its refresh is at the provider leaves
/// the lease behind; another replica takes over once it runs out and
/// completes the refresh (the provider rotates with a grace period, so the
/// refresh token the dead replica presented still works): 0 connections
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_refresh_is_taken_over_and_nothing_is_lost() {
    let mut fleet = Fleet::start(2, Rotation::Grace(30), 2).await;
    fleet.install(0, "fleet-fo", 1800).await;
    fleet.wait_known(1, "fleet-fo").await;
    let v0 = fleet.version(1, "fleet-fo").await;
    fleet.sandbox.inject(Fault::Latency {
        delay: Duration::from_millis(1500),
        count: 1,
    });
    let mut a = fleet.client(0).await;
    let doomed = tokio::spawn(async move { a.force_refresh(force("fleet-fo")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    fleet.kill(0);
    let _ = doomed.await;

    let mut b = fleet.client(1).await;
    let t0 = Instant::now();
    let refreshed = loop {
        match b.force_refresh(force("fleet-fo")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if t0.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = s;
            }
            Err(s) => panic!(
                "B never took over the refresh: {s:?}\n{}",
                fleet.log_text(1)
            ),
        }
    };
    println!(
        "B completed the refresh {:?} after A was killed",
        t0.elapsed()
    );
    assert!(refreshed.token.is_some());
    assert!(fleet.version(1, "fleet-fo").await > v0);
    // The grant is intact: it refreshes again, and a restarted A serves it.
    b.force_refresh(force("fleet-fo"))
        .await
        .expect("refreshes again");
    fleet.spawn(0);
    fleet.wait_ready(0).await;
    let status = fleet
        .client(0)
        .await
        .get_connection(pb::GetConnectionRequest {
            connection_id: "fleet-fo".into(),
        })
        .await
        .expect("A knows it")
        .into_inner()
        .connection
        .expect("connection");
    assert_eq!(status.status, pb::ConnectionStatus::Active as i32);
}

/// Guards: a lease holder paused (SIGSTOP) past its lease while its
/// provider call is out cannot write when it resumes: the replica that
/// took over wrote under a newer fence, and the stored version never goes
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_lease_holder_cannot_overwrite_its_successor() {
    let fleet = Fleet::start(2, Rotation::Grace(30), 2).await;
    fleet.install(0, "fleet-fence", 1800).await;
    fleet.wait_known(1, "fleet-fence").await;
    fleet.sandbox.inject(Fault::Latency {
        delay: Duration::from_millis(2500),
        count: 1,
    });
    let mut a = fleet.client(0).await;
    let paused = tokio::spawn(async move { a.force_refresh(force("fleet-fence")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(fleet.child(0), libc::SIGSTOP);

    // A's lease (2 s) runs out while it is stopped; B takes over.
    let mut b = fleet.client(1).await;
    let t0 = Instant::now();
    loop {
        match b.force_refresh(force("fleet-fence")).await {
            Ok(_) => break,
            Err(s) if t0.elapsed() < Duration::from_secs(15) => {
                let _ = s;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("B could not refresh: {s:?}"),
        }
    }
    let after_b = fleet.version(1, "fleet-fence").await;
    // A resumes: its provider answer arrives, its write carries the old
    // fence.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(fleet.child(0), libc::SIGCONT);
    let answered = tokio::time::timeout(Duration::from_secs(20), paused)
        .await
        .expect("A answers after SIGCONT")
        .expect("joins");
    println!(
        "A's refresh after SIGCONT: {:?}",
        answered
            .as_ref()
            .map(|_| "a token")
            .map_err(tonic::Status::code)
    );
    let log = fleet.log_text(0);
    assert!(
        log.contains("superseded by a concurrent write"),
        "A's write was refused and it deferred to B's: {log}"
    );
    for i in 0..2 {
        let v = fleet.version(i, "fleet-fence").await;
        assert!(
            v >= after_b,
            "replica {i}: version went back from {after_b} to {v}"
        );
    }
    // The stored grant is B's and still good.
    b.force_refresh(force("fleet-fence"))
        .await
        .expect("still refreshes");
}
