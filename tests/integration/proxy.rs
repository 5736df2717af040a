//! A catch-all HTTP proxy for the hostile tests (issue 24, items 1, 2 and
//! 10): a `tokend serve` process started with `HTTPS_PROXY`/`HTTP_PROXY`
//! pointing here sends every outbound request for a non-loopback host to this
//! proxy instead of the network. The proxy records the target it was asked
//! for (`CONNECT host:port` or an absolute-form URL) and answers 502, so a
//! test can assert that no connection ever left for a host a caller chose.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A running catch-all proxy; it stops when dropped.
pub struct CatchAllProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CatchAllProxy {
    /// Listens on a free loopback port.
    pub async fn start() -> CatchAllProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    // Read the request head (bounded); the target is on its
                    // first line.
                    while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let target = text
                        .lines()
                        .next()
                        .and_then(|line| line.split_whitespace().nth(1))
                        .unwrap_or("<no request line>")
                        .to_string();
                    record.lock().unwrap().push(target);
                    let _ = socket
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        CatchAllProxy { addr, seen, task }
    }

    /// The proxy URL to put in `HTTPS_PROXY` and `HTTP_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a `tokend serve` child needs: every non-loopback
    /// request goes to this proxy; loopback (the sandbox) is reached directly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let url = self.url();
        vec![
            ("HTTPS_PROXY", url.clone()),
            ("HTTP_PROXY", url.clone()),
            ("https_proxy", url.clone()),
            ("http_proxy", url),
            ("NO_PROXY", "127.0.0.1,localhost".to_string()),
            ("no_proxy", "127.0.0.1,localhost".to_string()),
        ]
    }

    /// Every target asked of the proxy so far (`host:port` for CONNECT, the
    /// absolute URL otherwise).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The targets whose host contains `needle`.
    pub fn reached(&self, needle: &str) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|t| t.to_ascii_lowercase().contains(&needle.to_ascii_lowercase()))
            .collect()
    }
}

impl Drop for CatchAllProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
