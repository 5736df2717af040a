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

#[cfg(test)]
mod tests {
    use super::*;

    /// The partition holds bytes back without closing anything, and they
    /// arrive once it heals, as after a real network partition.
    #[tokio::test]
    async fn a_partition_holds_bytes_until_it_heals() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start(upstream.local_addr().unwrap()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut server, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 5];

        client.write_all(b"hello").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        proxy.partition(true);
        client.write_all(b"held!").await.unwrap();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let mut probe = [0u8; 5];
        assert!(
            matches!(server.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing crosses a partition"
        );
        proxy.partition(false);
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"held!");

        // And back the other way, on the same connection.
        server.write_all(b"reply").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"reply");
    }
}
