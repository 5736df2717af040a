//! A TCP proxy between the brokers and PostgreSQL that can partition them:
//! while partitioned it forwards nothing and closes nothing, as a network
//! that drops packets silently. Bytes read meanwhile are held and delivered
//! after the partition heals; new connections wait for it too.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};

/// A running proxy; it stops accepting when dropped (open connections end
/// with their sockets).
pub struct Proxy {
    pub addr: SocketAddr,
    partitioned: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (partitioned, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let healed = watching.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let mut healed_first = healed.clone();
                    wait_healed(&mut healed_first).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, healed.clone()),
                        pump(server_read, client_write, healed),
                    );
                });
            }
        });
        Ok(Proxy {
            addr,
            partitioned,
            task,
        })
    }

    /// Starts (true) or heals (false) the partition.
    pub fn partition(&self, on: bool) {
        self.partitioned.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_healed(partitioned: &mut watch::Receiver<bool>) {
    // An error means the proxy is gone: stop holding anything back.
    let _ = partitioned.wait_for(|on| !on).await;
}

/// Copies one direction, holding bytes while partitioned.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut partitioned: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_healed(&mut partitioned).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read just before the partition began: held until it heals.
        wait_healed(&mut partitioned).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
