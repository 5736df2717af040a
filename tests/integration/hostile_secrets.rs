//! Provider error bodies never echo a secret (issue 24, item 10).
//!
//! A real `tokend serve` process, every outbound request of which goes to a
//! catch-all proxy unless it is for loopback, talks to the sandbox, which
//! answers each token request with an error body repeating the request's
//! secrets (refresh token, code, PKCE verifier, client secret, the Basic
//! credentials) in one encoding after another. Everywhere that error can
//! surface is then read: `GetConnection`, `ListConnections`, the per
//! connection watch, the event feed replayed, the webhook deliveries, the
//! console pages, the Install and ForceRefresh statuses, the log and every
//! file in the data dir. No secret is found in any form, and the proxy saw
//! no connection at all.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use prost::Message as _;
use tokend_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tokend_sandbox::{Echo, Fault, Sandbox, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::proxy::CatchAllProxy;

/// A client secret with every character the encodings treat differently,
/// a space and a non-ASCII letter among them.
const CLIENT_SECRET: &str = "cs/Sëcret+Wn4=~*'()!\"Zq8-Lp0 Vb6\\wX";

fn refresh_token(i: usize) -> String {
    format!("rt/Ünï+cøde=~*'()!\"\\-{i:02}-5f3aK9xQ2mZ7wV")
}

fn code(i: usize) -> String {
    format!("co/Dé+{i:02}=~*'()!\"-Hq2Lm8Zp4KxRt")
}

fn verifier(i: usize) -> String {
    format!("Vq7Kp2Xw-{i:02}-Lm9Rt4Zc8Nb3Jd6Hf1Gs5Qa0Wy7Ue2Io.~_Px")
}

/// What must never be seen: for each secret, each encoding the sandbox
/// can echo it in, as windows worth 8 bytes of the secret (so half a
/// secret, or a secret cut short, is found too), lowercased.
struct Needles {
    by_len: HashMap<usize, HashMap<Vec<u8>, String>>,
}

impl Needles {
    fn new(secrets: &[(String, String)], client_id: &str) -> Needles {
        let mut by_len: HashMap<usize, HashMap<Vec<u8>, String>> = HashMap::new();
        let mut add = |form: &[u8], len: usize, what: &str| {
            let len = len.min(form.len());
            for piece in form.windows(len) {
                by_len
                    .entry(len)
                    .or_default()
                    .insert(piece.to_ascii_lowercase(), what.to_owned());
            }
        };
        for (name, secret) in secrets {
            for echo in Echo::ALL {
                if echo == Echo::Request {
                    continue;
                }
                let form = echo.apply(secret);
                let len = (8 * form.len()).div_ceil(secret.len()).max(8);
                add(form.as_bytes(), len, &format!("{name} as {echo:?}"));
            }
        }
        // The Basic credentials as sent (RFC 6749 §2.3.1) and unencoded,
        // from where the secret starts (the client id is no secret).
        for pair in [
            format!(
                "{}:{}",
                Echo::Form.apply(client_id),
                Echo::Form.apply(CLIENT_SECRET)
            ),
            format!("{client_id}:{CLIENT_SECRET}"),
        ] {
            let skip = (client_id.len() + 1).div_ceil(3) * 4;
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                let form = engine.encode(&pair);
                add(&form.as_bytes()[skip..], 11, "the Basic credentials");
            }
        }
        Needles { by_len }
    }

    /// What of the secrets `haystack` holds.
    fn found(&self, haystack: &[u8]) -> Vec<String> {
        let lower = haystack.to_ascii_lowercase();
        let mut found = HashSet::new();
        for (&len, set) in &self.by_len {
            for piece in lower.windows(len) {
                if let Some(what) = set.get(piece) {
                    found.insert(format!("{what}: {:?}", String::from_utf8_lossy(piece)));
                }
            }
        }
        let mut found: Vec<String> = found.into_iter().collect();
        found.sort();
        found
    }
}

/// Everything read back, by where it came from.
#[derive(Default)]
struct Seen {
    places: Vec<(String, Vec<u8>)>,
}

impl Seen {
    fn add(&mut self, place: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.places.push((place.into(), bytes.into()));
    }

    fn text(&self, prefix: &str) -> String {
        self.places
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A webhook endpoint that answers 204 to everything and keeps the bodies.
async fn webhook_receiver() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: the head, then content-length bytes.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    keep.lock()
                        .unwrap()
                        .push(buf[head_end..head_end + len].to_vec());
                    buf.drain(..head_end + len);
                    if socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// `tokend serve`, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    async fn start(sandbox: &Sandbox, webhook: SocketAddr, proxy: &CatchAllProxy) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tokend.toml");
        std::fs::write(
            &config,
            format!(
                "[providers.sandbox]\npreset = \"sandbox\"\ntoken_url = \"{}\"\n\
                 client_id = \"{}\"\nclient_secret_env = \"SANDBOX_CLIENT_SECRET\"\n\
                 client_auth = \"both\"\nmin_refresh_interval_secs = 0\n\n\
                 [[webhooks]]\nname = \"echo\"\nurl = \"http://{webhook}/hook\"\n\
                 secret_env = \"TOKEND_WEBHOOK_SECRET\"\nretry_initial_ms = 100\n",
                sandbox.token_url(),
                sandbox.config().client_id,
            ),
        )
        .unwrap();
        let (addr, admin) = (free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("SANDBOX_CLIENT_SECRET", CLIENT_SECRET)
            .env(
                "TOKEND_WEBHOOK_SECRET",
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD
                        .encode(b"tokend-webhook-test-secret-32-by")
                ),
            )
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") || k == "TOKEND_KEYS" {
                command.env_remove(k);
            }
        }
        for (k, v) in proxy.env() {
            command.env(k, v);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("tokend.log")).unwrap())
            .spawn()
            .expect("tokend serve starts");
        let served = Served {
            child,
            addr,
            admin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = served
                .client()
                .get_connection(pb::GetConnectionRequest {
                    connection_id: "readiness-probe".into(),
                })
                .await;
            if matches!(probe, Err(ref s) if s.code() == tonic::Code::NotFound) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tokend not ready: {probe:?}\n{}",
                served.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    }

    fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect_lazy(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tokend.log")).unwrap_or_default()
    }
}

/// A status's message, details and metadata, as bytes to search.
fn status_bytes(status: &tonic::Status) -> Vec<u8> {
    let mut out = status.message().as_bytes().to_vec();
    out.extend_from_slice(status.details());
    out.extend_from_slice(format!("{:?}", status.metadata()).as_bytes());
    out
}

fn html_unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Every string in a JSON document, decoded.
fn json_strings(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Guards: a provider that echoes the secrets it was sent, in any common
/// encoding (raw, form, quote_plus, encodeURIComponent, percent-encoding in
/// either case, hex in either case, base64, base64url, JSON \u escapes,
/// half of each, the request as received), gets none of them repeated by
/// tokend anywhere: GetConnection, ListConnections, watch events, the event
/// feed, webhooks, the console, RPC statuses, the log, the data dir. And a
/// tokend whose every non-loopback request goes to a catch-all proxy sends
/// it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_appear_nowhere_in_any_encoding() {
    let proxy = CatchAllProxy::start().await;
    let sandbox = Sandbox::start(SandboxConfig {
        client_secret: CLIENT_SECRET.into(),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let client_id = sandbox.config().client_id.clone();
    let (webhook, deliveries) = webhook_receiver().await;
    let served = Served::start(&sandbox, webhook, &proxy).await;
    let mut client = served.client();
    let mut seen = Seen::default();
    let watched = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));

    let mut secrets = vec![("the client secret".to_string(), CLIENT_SECRET.to_string())];
    for (i, echo) in Echo::ALL.into_iter().enumerate() {
        secrets.push((format!("refresh token {i}"), refresh_token(i)));
        secrets.push((format!("code {i}"), code(i)));
        secrets.push((format!("verifier {i}"), verifier(i)));
        let id = format!("echo-{i:02}");
        client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: id.clone(),
                account_id: format!("acct-{i:02}"),
                grant: Some(pb::install_request::Grant::TokenImport(pb::TokenImport {
                    access_token: format!("at-{i:02}-access-token"),
                    refresh_token: refresh_token(i),
                    expires_in_seconds: 3600,
                    scopes: vec![],
                    token_type: String::new(),
                })),
                replace: false,
                params: Default::default(),
                force: false,
            })
            .await
            .expect("import");
        // The connection's own watch, from before its refresh fails.
        let mut stream = client
            .watch_connection(pb::WatchConnectionRequest {
                connection_id: id.clone(),
            })
            .await
            .expect("watch")
            .into_inner();
        let keep = watched.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                keep.lock().unwrap().push(event.encode_to_vec());
            }
        });

        sandbox.inject(Fault::EchoSecrets {
            encoding: echo,
            count: 1,
        });
        let refused = client
            .force_refresh(pb::ForceRefreshRequest {
                connection_id: id.clone(),
                rejected: None,
            })
            .await
            .expect_err("the provider refused");
        seen.add(
            format!("status of ForceRefresh {id}"),
            status_bytes(&refused),
        );

        sandbox.inject(Fault::EchoSecrets {
            encoding: echo,
            count: 1,
        });
        let refused = client
            .install(pb::InstallRequest {
                provider: "sandbox".into(),
                connection_id: format!("code-{i:02}"),
                account_id: format!("acct-code-{i:02}"),
                grant: Some(pb::install_request::Grant::AuthorizationCode(
                    pb::AuthorizationCode {
                        code: code(i),
                        redirect_uri: "http://127.0.0.1/callback".into(),
                        code_verifier: verifier(i),
                    },
                )),
                replace: false,
                params: Default::default(),
                force: false,
            })
            .await
            .expect_err("the provider refused");
        seen.add(
            format!("status of Install code-{i:02}"),
            status_bytes(&refused),
        );
    }
    let echoes = Echo::ALL.len();
    assert_eq!(
        sandbox.stats().faults_served,
        2 * echoes as u64,
        "every request met an echo"
    );

    // GetConnection and ListConnections.
    let mut with_error = 0;
    for i in 0..echoes {
        let got = client
            .get_connection(pb::GetConnectionRequest {
                connection_id: format!("echo-{i:02}"),
            })
            .await
            .expect("get")
            .into_inner();
        let error = got
            .connection
            .as_ref()
            .and_then(|c| c.last_error.clone())
            .expect("the failure is kept");
        if i == 0 {
            eprintln!("last_error after an echo: {error:?}");
        }
        with_error += 1;
        seen.add(format!("GetConnection echo-{i:02}"), got.encode_to_vec());
    }
    assert_eq!(with_error, echoes);
    let listed = client
        .list_connections(pb::ListConnectionsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    seen.add("ListConnections", listed.encode_to_vec());

    // The event feed, replayed from the oldest event.
    let mut feed = client
        .watch_connections(pb::WatchConnectionsRequest {
            filter: None,
            resume_after: String::new(),
            from_oldest: true,
        })
        .await
        .expect("feed")
        .into_inner();
    let mut failed_events = HashSet::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_secs(3), feed.message()).await
    {
        if event
            .connection
            .as_ref()
            .is_some_and(|c| c.last_error.is_some())
        {
            failed_events.insert(event.connection_id.clone());
        }
        seen.add("event feed", event.encode_to_vec());
    }
    assert!(
        failed_events.len() >= echoes,
        "the feed carries every failure: {failed_events:?}"
    );
    for event in watched.lock().unwrap().iter() {
        seen.add("WatchConnection", event.clone());
    }
    assert!(
        seen.text("WatchConnection").contains("echo"),
        "the watch streams saw the failures"
    );

    // The webhook deliveries of those events.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = deliveries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter(|v| v["connection"]["lastError"].is_object())
            .filter_map(|v| v["connectionId"].as_str().map(str::to_owned))
            .collect();
        if delivered.len() >= echoes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks delivered failures of {delivered:?} only\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for body in deliveries.lock().unwrap().iter() {
        let value: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let mut strings = String::new();
        json_strings(&value, &mut strings);
        seen.add("webhook delivery", strings);
        seen.add("webhook delivery (as sent)", body.clone());
    }

    // The console: the table and each connection's page.
    let http = reqwest::Client::new();
    let admin = served.admin;
    let mut pages = vec![format!("http://{admin}/")];
    pages.extend((0..echoes).map(|i| format!("http://{admin}/connections/echo-{i:02}")));
    for url in pages {
        let page = http.get(&url).send().await.expect("console");
        assert_eq!(page.status(), 200, "{url}");
        let html = page.text().await.unwrap();
        seen.add(format!("console {url}"), html_unescape(&html));
    }
    assert!(seen.text("console").contains("[redacted]"));

    // The log, and every file tokend wrote.
    seen.add("tokend's log", served.log());
    let mut files = Vec::new();
    files_under(&served.dir.path().join("data"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        seen.add(
            format!("{}", file.display()),
            std::fs::read(&file).unwrap_or_default(),
        );
    }

    let needles = Needles::new(&secrets, &client_id);
    let mut leaks = Vec::new();
    for (place, bytes) in &seen.places {
        for what in needles.found(bytes) {
            leaks.push(format!("{place}: {what}"));
        }
    }
    let places = seen.places.len();
    let bytes: usize = seen.places.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "searched {places} places ({bytes} bytes) for {} secrets in {} encodings: {} found",
        secrets.len(),
        Echo::ALL.len() - 1,
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "secrets echoed back:\n{}",
        leaks.join("\n")
    );
    // The echo's `error_uri` named provider.example: never followed.
    assert_eq!(proxy.reached("provider.example"), Vec::<String>::new());
    assert_eq!(
        proxy.seen(),
        Vec::<String>::new(),
        "no connection left for any other host"
    );
}
