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

mod echoes;
