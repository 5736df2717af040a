//! Tampered stored metadata cannot redirect a refresh token (issue 24, item 2).
//!
//! A real `tokend serve` with two providers: the test's sandbox, reached by
//! a per-connection template (`http://{host}:PORT/oauth/token`), and one
//! whose token URL is a non-loopback host. Every non-loopback request goes
//! to a catch-all proxy, which records it. A stored record is then
//! repointed (to the other provider, or to another host through its
//! params), through an edited backup or by a database writer, and the proxy
//! must see nothing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Sandbox, SandboxConfig};
use tonic::{Code, transport::Channel};

use crate::proxy::CatchAllProxy;

const SECRET: &str = "sealing-sandbox-secret";
/// The host an attacker would like a refresh token sent to.
const ATTACKER: &str = "attacker.example";

/// The connections every test installs: two to repoint, one left alone.
const REPOINTED: &str = "repointed";
const REHOSTED: &str = "rehosted";
const BYSTANDER: &str = "bystander";

/// A `tokend serve` child (sled, or PostgreSQL when `database_url` is set)
/// whose outbound non-loopback requests all go to a catch-all proxy.
struct Broker {
    sandbox: Sandbox,
    proxy: CatchAllProxy,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    database_url: Option<String>,
    child: Option<Child>,
}

impl Broker {
    async fn start(database_url: Option<String>) -> Broker {
        let sandbox = Sandbox::start(SandboxConfig {
            client_secret: SECRET.into(),
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox");
        let proxy = CatchAllProxy::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let store = if database_url.is_some() {
            "[store]\nkind = \"postgres\"\n\n"
        } else {
            ""
        };
        let template = sandbox.token_url().replacen("127.0.0.1", "{host}", 1);
        assert!(template.contains("{host}"), "{template}");
        // Both hosts are listed values of `host` (two data centres an
        // operator allows), so the host rule of item 1 would let a stored
        // `host` of either through: only the binding stops a repointed one.
        std::fs::write(
            dir.path().join("tokend.toml"),
            format!(
                "{store}[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{template}\"\n\
                 client_id = \"{client}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
                 min_refresh_interval_secs = 0\n\
                 param_values = {{ host = [\"127.0.0.1\", \"{ATTACKER}\"] }}\n\n\
                 [providers.elsewhere]\npreset = \"sandbox\"\n\
                 token_url = \"https://{ATTACKER}/token\"\n\
                 client_id = \"{client}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
                 min_refresh_interval_secs = 0\n",
                client = sandbox.config().client_id,
            ),
        )
        .expect("config");
        tokend_store::crypto::KeyFile::generate()
            .save(&dir.path().join("tokend.keys"))
            .expect("key file");
        let mut broker = Broker {
            sandbox,
            proxy,
            dir,
            addr: crate::process::free_addr(),
            database_url,
            child: None,
        };
        if broker.database_url.is_some() {
            let out = broker
                .command()
                .arg("migrate")
                .arg("--config")
                .arg(broker.config())
                .output()
                .expect("tokend migrate");
            assert!(out.status.success(), "{}", stderr(&out));
        }
        broker.serve().await;
        broker
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tokend.toml")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("tokend.keys")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tokend.log")).unwrap_or_default()
    }

    /// `tokend` with this broker's environment: the proxy for every
    /// non-loopback host, the client secret, the database URL; nothing
    /// from the environment the tests run in.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("OTEL_") || k.starts_with("TOKEND_") || k.ends_with("_proxy") {
                command.env_remove(k);
            }
        }
        command
            .envs(self.proxy.env())
            .env("SANDBOX_CLIENT_SECRET", SECRET)
            .env("TOKEND_ENDPOINT", self.addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        if let Some(url) = &self.database_url {
            command.env("TOKEND_DATABASE_URL", url);
        }
        command
    }

    async fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tokend.log"))
            .expect("log");
        let child = self
            .command()
            .arg("serve")
            .arg("--config")
            .arg(self.config())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--key-file")
            .arg(self.key_file())
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tokend serve starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = self
                .client()
                .get_connection(pb::GetConnectionRequest {
                    connection_id: "readiness-probe".into(),
                })
                .await;
            if matches!(probe, Err(ref s) if s.code() == Code::NotFound) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tokend not ready: {probe:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and waits for the process to end.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("endpoint")
                .connect_lazy(),
        )
    }

    /// Installs `id` at the sandbox (host 127.0.0.1) with a fresh grant.
    async fn install(&self, id: &str) {
        let account = format!("acct-{id}");
        let issued = self.sandbox.issue_tokens(&account, &["crm"]);
        self.client()
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: id.into(),
                account_id: account,
                grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                    access_token: issued.access_token.clone(),
                    refresh_token: issued.refresh_token.clone(),
                    expires_in_seconds: 1800,
                    scopes: issued.scopes.clone(),
                    token_type: String::new(),
                })),
                replace: false,
                params: HashMap::from([("host".to_owned(), "127.0.0.1".to_owned())]),
                force: false,
            })
            .await
            .unwrap_or_else(|e| panic!("install {id}: {e:?}"));
    }

    /// Refresh grants the sandbox gave `id`.
    fn refreshes(&self, id: &str) -> u64 {
        self.sandbox
            .account_stats(&format!("acct-{id}"))
            .refresh_grants_ok
    }

    /// ForceRefresh of every connection: each one's result code.
    async fn force_all(&self) -> Vec<(&'static str, Code)> {
        let mut out = Vec::new();
        for id in [REPOINTED, REHOSTED, BYSTANDER] {
            let code = match self.client().force_refresh(crate::harness::force(id)).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            out.push((id, code));
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Repoints a stored document (JSON): `repointed` to the other provider,
/// `rehosted` to the attacker's host through its `host` param.
fn repoint(id: &str, doc: &mut serde_json::Value) {
    match id {
        REPOINTED => doc["provider"] = "elsewhere".into(),
        REHOSTED => doc["params"]["host"] = ATTACKER.into(),
        _ => {}
    }
}

/// Rewrites the backup file at `path` with [`repoint`] applied to its
/// records, as someone who can edit a backup would.
fn edit_backup(path: &Path) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(path).expect("backup");
    let mut lines = text.lines();
    let mut out = vec![lines.next().expect("header").to_owned()];
    for line in lines {
        let mut record: serde_json::Value = serde_json::from_str(line).expect("line");
        let id = record["connection_id"].as_str().expect("id").to_owned();
        let sealed = b64
            .decode(record["sealed"].as_str().expect("sealed"))
            .expect("base64");
        let mut doc: serde_json::Value = serde_json::from_slice(&sealed).expect("document");
        repoint(&id, &mut doc);
        record["sealed"] = b64.encode(serde_json::to_vec(&doc).expect("json")).into();
        out.push(record.to_string());
    }
    std::fs::write(path, out.join("\n") + "\n").expect("write backup");
}

/// Guards issue 24 item 2 through backups: a backup whose records were
/// repointed (one to another provider, one to another host through its
/// params) is refused by `tokend restore`, which writes nothing; after a
/// restart every connection still refreshes at the sandbox, and the proxy
/// sees no request at all: no refresh token leaves for the attacker's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_backup_cannot_send_a_refresh_token_elsewhere() {
    let mut broker = Broker::start(None).await;
    for id in [REPOINTED, REHOSTED, BYSTANDER] {
        broker.install(id).await;
    }
    let backup = broker.dir.path().join("tokend.backup");
    let out = broker
        .command()
        .args(["backup", "--to"])
        .arg(&backup)
        .output()
        .expect("backup");
    assert!(out.status.success(), "{}", stderr(&out));
    broker.stop();
    edit_backup(&backup);

    let restore = broker
        .command()
        .args(["restore", "--force", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(broker.data_dir())
        .arg("--key-file")
        .arg(broker.key_file())
        .output()
        .expect("restore");
    broker.serve().await;
    let codes = broker.force_all().await;
    assert_eq!(
        broker.proxy.seen(),
        Vec::<String>::new(),
        "a refresh token left for a host the record was repointed to (restore: {})",
        stderr(&restore)
    );
    assert!(!restore.status.success(), "the edited backup was restored");
    assert!(
        stderr(&restore).contains("does not open"),
        "{}",
        stderr(&restore)
    );
    assert_eq!(
        codes,
        [
            (REPOINTED, Code::Ok),
            (REHOSTED, Code::Ok),
            (BYSTANDER, Code::Ok)
        ],
        "nothing was written: every connection refreshes where it was installed"
    );
    for id in [REPOINTED, REHOSTED, BYSTANDER] {
        assert_eq!(broker.refreshes(id), 1, "{id}");
    }
    assert!(broker.proxy.reached(ATTACKER).is_empty());
}

/// Guards issue 24 item 2 against a database writer: records repointed in
/// the PostgreSQL database while tokend is stopped (provider and its column
/// changed, or the `host` param) are unreadable after a restart: GetToken
/// and ForceRefresh answer DATA_LOSS (`RECORD_UNREADABLE`) for those
/// connections only, the bystander refreshes at the sandbox, and the proxy
/// sees no request at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_writer_cannot_send_a_refresh_token_elsewhere() {
    let cluster = tokend_pgtest::cluster();
    let database = cluster.create_database("hostile_sealing");
    let mut broker = Broker::start(Some(cluster.url(&database))).await;
    for id in [REPOINTED, REHOSTED, BYSTANDER] {
        broker.install(id).await;
    }
    broker.stop();
    cluster
        .psql(
            &database,
            &format!(
                "UPDATE tokend_connections SET provider = 'elsewhere',
                   sealed = convert_to(replace(convert_from(sealed, 'UTF8'),
                     '\"provider\":\"sandbox\"', '\"provider\":\"elsewhere\"'), 'UTF8')
                 WHERE id = '{REPOINTED}';
                 UPDATE tokend_connections
                   SET sealed = convert_to(replace(convert_from(sealed, 'UTF8'),
                     '\"host\":\"127.0.0.1\"', '\"host\":\"{ATTACKER}\"'), 'UTF8')
                 WHERE id = '{REHOSTED}';"
            ),
        )
        .expect("repoint");
    let changed = cluster
        .psql(
            &database,
            &format!(
                "SELECT count(*) FROM tokend_connections
                 WHERE convert_from(sealed, 'UTF8') LIKE '%\"elsewhere\"%'
                    OR convert_from(sealed, 'UTF8') LIKE '%{ATTACKER}%'"
            ),
        )
        .expect("count");
    assert_eq!(changed, "2", "both records were repointed");

    broker.serve().await;
    let codes = broker.force_all().await;
    assert_eq!(
        broker.proxy.seen(),
        Vec::<String>::new(),
        "a refresh token left for a host the record was repointed to"
    );
    assert_eq!(
        codes,
        [
            (REPOINTED, Code::DataLoss),
            (REHOSTED, Code::DataLoss),
            (BYSTANDER, Code::Ok)
        ]
    );
    for id in [REPOINTED, REHOSTED] {
        let status = broker
            .client()
            .get_token(crate::harness::get(id))
            .await
            .expect_err("unreadable");
        assert_eq!(status.code(), Code::DataLoss, "{id}");
        assert_eq!(crate::harness::reason(&status), "RECORD_UNREADABLE", "{id}");
    }
    assert_eq!(
        [REPOINTED, REHOSTED, BYSTANDER].map(|id| broker.refreshes(id)),
        [0, 0, 1],
        "only the bystander's refresh reached the sandbox"
    );
    assert!(broker.proxy.reached(ATTACKER).is_empty());
}

mod backups;
