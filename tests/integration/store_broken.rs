//! A store that can write nothing any more (sled's writer thread died)
//! takes the server out of service: `/readyz` stops answering 200 and the
//! server stops with an error, which `tokend serve` turns into exit code 1.

use std::{sync::Arc, time::Duration};

use tokend_server::{ServerConfig, ServerError, admin::AdminListener};
use tokend_store::{SledStore, crypto::Keyring};

/// What `/readyz` answers: its status, or `None` once nothing listens.
async fn readiness(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<u16> {
    http.get(format!("http://{addr}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Issue 25, item 9. Invariant 2's premise (every write is flushed by the
/// one writer thread): when that thread is gone, every write fails, so a
/// server that kept reporting ready would take traffic it can only refuse,
/// and hold every new grant in memory only. It must report not ready and
/// exit non-zero, so its supervisor restarts it.
#[tokio::test]
async fn a_dead_store_writer_fails_readiness_and_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::ephemeral()).unwrap();
    let (admin, admin_addr) = AdminListener::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokend_server::run(
        listener,
        Arc::new(store.clone()),
        ServerConfig {
            admin: Some(admin),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while readiness(&http, admin_addr).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    store.kill_writer();

    // Not ready from then on: 503 while the listener still answers, then
    // no listener at all.
    loop {
        match readiness(&http, admin_addr).await {
            Some(200) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still ready with a dead store writer"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(code) => assert_eq!(code, 503),
            None => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops by itself")
        .unwrap();
    assert!(
        matches!(ended, Err(ServerError::StoreBroken(ref why)) if why.contains("writer thread")),
        "{ended:?}"
    );
    drop(stop);
}
