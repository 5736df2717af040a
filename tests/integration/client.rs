//! The Rust client against a real broker and sandbox: middleware through
//! token expiries, no replay of non-idempotent writes, restarts, the local
//! cache, and typed errors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use tokend_client::{Client, Error, Rejected, WatchEventKind, middleware::TokendAuth};
use tokend_sandbox::{Rotation, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Options, TestServer, background_off};

async fn client(server: &TestServer) -> Client {
    Client::builder(server.endpoint())
        .cache_margin(Duration::from_secs(30))
        .connect()
        .await
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_keeps_a_worker_running_through_expiries_and_a_rotation() {
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            access_token_lifetime: Duration::from_secs(1),
            rotation: Rotation::Strict,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    server.import("worker", "acct-worker", 1).await;
    let tokend = client(&server).await;
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokendAuth::new(tokend.clone(), "worker"))
        .build();

    let started = tokio::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut rotated = false;
    // 6 s of calls over 1-second tokens: at least 5 expiries.
    while started.elapsed() < Duration::from_secs(6) {
        if !rotated && started.elapsed() > Duration::from_secs(3) {
            // A server-side rotation in the middle of the run.
            tokend
                .force_refresh("worker", Rejected::Unconditional)
                .await
                .expect("forced rotation");
            rotated = true;
        }
        match http.get(server.sandbox.api_url()).send().await {
            Ok(r) if r.status().is_success() => ok += 1,
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    assert!(ok > 100);
    let stats = server.sandbox.account_stats("acct-worker");
    assert!(
        stats.refresh_grants_ok >= 5,
        "at least 5 expiries crossed: {stats:?}"
    );
    assert_eq!(stats.invalid_grant, 0);
}

/// An upstream API that answers 401 to everything, counting requests.
async fn always_401() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                if sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = sock
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (format!("http://{addr}/api"), hits)
}

#[tokio::test]
async fn a_post_that_gets_401_is_not_replayed_unless_opted_in() {
    let server = TestServer::start_with(background_off()).await;
    server.import("writer", "acct-writer", 1800).await;
    let tokend = client(&server).await;
    let (url, hits) = always_401().await;
    let http = |replay: bool| {
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(TokendAuth::new(tokend.clone(), "writer").replay_non_idempotent(replay))
            .build()
    };

    // POST: sent once, the 401 comes back, and the token was still refreshed
    // for the next request.
    let before = server.sandbox.account_stats("acct-writer").refresh_requests;
    let r = http(false)
        .post(&url)
        .body("{}")
        .send()
        .await
        .expect("a response");
    assert_eq!(r.status(), 401);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a POST is not replayed");
    assert_eq!(
        server.sandbox.account_stats("acct-writer").refresh_requests,
        before + 1
    );

    // GET: replayed once with the new token, then a clear error.
    let err = http(false).get(&url).send().await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "one retry");
    assert!(
        err.to_string().contains("rejected the refreshed token"),
        "{err}"
    );

    // POST with opt-in: replayed once too.
    http(true).post(&url).body("{}").send().await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_and_resumes_the_watch() {
    let mut server = TestServer::start().await;
    server.import("survivor", "acct-survivor", 1800).await;
    let tokend = client(&server).await;
    let mut watch = tokend.watch("survivor");
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.kind, WatchEventKind::Snapshot);

    server.restart_same_port().await;

    // Calls ride out the restart, and the stream re-subscribes by itself,
    // yielding the current state again.
    tokend
        .get_token("survivor", Duration::ZERO)
        .await
        .expect("reconnected");
    let resumed = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch resumes")
        .unwrap()
        .unwrap();
    assert_eq!(resumed.kind, WatchEventKind::Snapshot);
    assert_eq!(resumed.connection.version, first.connection.version);
    tokend
        .force_refresh("survivor", Rejected::Unconditional)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("events flow after the resume")
        .unwrap()
        .unwrap();
    assert_eq!(next.kind, WatchEventKind::TokenRotated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_asks_the_broker_about_once_per_token_lifetime() {
    let mut server = TestServer::start_with(background_off()).await;
    server.import("cached", "acct-cached", 1800).await;
    let tokend = client(&server).await;
    let calls = (0..1000).map(|_| {
        let tokend = tokend.clone();
        tokio::spawn(async move { tokend.token("cached").await })
    });
    for c in futures::future::join_all(calls).await {
        assert!(c.unwrap().is_ok());
    }
    server.stop().await;
    let audit = std::fs::read_to_string(server.audit_log_path()).unwrap();
    let broker_calls = audit
        .lines()
        .filter(|l| {
            l.contains("\"rpc\":\"GetToken\"") && l.contains("\"connection_id\":\"cached\"")
        })
        .count();
    assert!(
        broker_calls <= 2,
        "{broker_calls} GetToken calls for 1000 requests"
    );
    assert!(broker_calls >= 1);
}

/// Issue 15. Invariants: the client's token cache holds at most its
/// capacity of connections, dropping the least recently used; a dropped
/// connection's next token comes from the broker again, and a recently used
/// one is still served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_is_bounded_and_drops_the_least_recently_used() {
    let mut server = TestServer::start_with(background_off()).await;
    for i in 0..10 {
        server
            .import(&format!("lru-{i}"), &format!("acct-lru-{i}"), 1800)
            .await;
    }
    let tokend = Client::builder(server.endpoint())
        .cache_capacity(3)
        .connect()
        .await
        .expect("client");
    for i in 0..10 {
        tokend.token(&format!("lru-{i}")).await.expect("token");
        assert!(tokend.cached_connections() <= 3);
    }
    assert_eq!(tokend.cached_connections(), 3);
    // lru-9 is cached; lru-0 was dropped long ago.
    tokend.token("lru-9").await.expect("token");
    tokend.token("lru-0").await.expect("token");
    server.stop().await;
    let audit = std::fs::read_to_string(server.audit_log_path()).unwrap();
    let calls = |id: &str| {
        audit
            .lines()
            .filter(|l| {
                l.contains("\"rpc\":\"GetToken\"")
                    && l.contains(&format!("\"connection_id\":\"{id}\""))
            })
            .count()
    };
    assert_eq!(calls("lru-9"), 1, "served from the cache the second time");
    assert_eq!(calls("lru-0"), 2, "asked the broker again after eviction");
}

#[tokio::test]
async fn errors_are_typed() {
    let server = TestServer::start_with(background_off()).await;
    server.import("typed", "acct-typed", 1800).await;
    let tokend = client(&server).await;
    assert!(matches!(
        tokend.get_token("missing", Duration::ZERO).await,
        Err(Error::NotFound { connection_id }) if connection_id == "missing"
    ));
    assert!(matches!(
        tokend.get_token("not valid", Duration::ZERO).await,
        Err(Error::InvalidArgument { field, .. }) if field == "connection_id"
    ));
    server.sandbox.revoke_account("acct-typed");
    let err = tokend
        .force_refresh("typed", Rejected::Unconditional)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ReconnectRequired { provider_error, .. } if provider_error == "invalid_grant"),
        "{err:?}"
    );
    // A broker that is not there: a transport error after the retries.
    let nowhere = Client::builder("http://127.0.0.1:9")
        .transport_retries(1)
        .connect()
        .await
        .unwrap();
    assert!(matches!(
        nowhere.get_token("x", Duration::ZERO).await,
        Err(Error::Transport { .. })
    ));
}

/// Issue 17: after a revocation, the middleware's error says
/// ReconnectRequired without a downcast, and the client's cache no longer
/// hands out the revoked connection's token; a watch that hears the
/// revocation empties the cache too.
#[tokio::test]
async fn a_revoked_connection_leaves_no_cached_token_and_a_plain_error() {
    use tokend_client::middleware::MiddlewareErrorExt as _;
    let server = TestServer::start_with(background_off()).await;
    server.import("revoked", "acct-revoked", 1800).await;
    server.import("watched", "acct-watched", 1800).await;
    let tokend = client(&server).await;
    tokend.token("revoked").await.expect("cached");
    tokend.token("watched").await.expect("cached");
    let (url, _) = always_401().await;
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokendAuth::new(tokend.clone(), "revoked"))
        .build();
    server.sandbox.revoke_account("acct-revoked");
    let err = http.get(&url).send().await.unwrap_err();
    assert!(err.is_reconnect_required(), "{err}");
    assert!(
        matches!(err.tokend(), Some(Error::ReconnectRequired { cause, .. }) if cause == "REVOKED"),
        "{err}"
    );
    let again = tokend.token("revoked").await.unwrap_err();
    assert!(
        matches!(again, Error::ReconnectRequired { .. }),
        "the revoked token is not served from the cache: {again:?}"
    );

    // A watch hears the revocation (another caller's refresh) and the
    // cached token goes at once.
    let mut events = tokend.watch("watched");
    let first = events.next().await.unwrap().unwrap();
    assert!(!first.reconnect_required());
    server.sandbox.revoke_account("acct-watched");
    let other = client(&server).await;
    other
        .force_refresh("watched", Rejected::Unconditional)
        .await
        .unwrap_err();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if event.reconnect_required() {
            break;
        }
    }
    let err = tokend.token("watched").await.unwrap_err();
    assert!(
        matches!(err, Error::ReconnectRequired { .. }),
        "the watch emptied the cache: {err:?}"
    );
}

/// Issue 17: the tower layer, on a hyper client over real HTTP: a worker
/// through 1-second tokens (at least 5 expiries) with 0 failed requests; a
/// POST that gets a 401 is not replayed unless opted in; a revoked
/// connection's error says ReconnectRequired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_refreshes_and_retries_like_the_middleware() {
    use http_body_util::{BodyExt as _, Full};
    use tokend_client::layer::TokendAuthLayer;
    use tower::{Service as _, ServiceBuilder, ServiceExt as _};
    let server = TestServer::start_with(Options {
        sandbox: SandboxConfig {
            access_token_lifetime: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    server.import("hyper", "acct-hyper", 1).await;
    let tokend = client(&server).await;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let layer =
        |replay: bool| TokendAuthLayer::new(tokend.clone(), "hyper").replay_non_idempotent(replay);
    let mut authed = ServiceBuilder::new()
        .layer(layer(false))
        .service(hyper.clone());
    let request = |method: &str, url: &str| {
        http::Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };

    let started = tokio::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while started.elapsed() < Duration::from_secs(6) {
        let response = authed
            .ready()
            .await
            .unwrap()
            .call(request("GET", &server.sandbox.api_url()))
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                r.into_body().collect().await.unwrap();
                ok += 1;
            }
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    let stats = server.sandbox.account_stats("acct-hyper");
    assert!(
        stats.refresh_grants_ok >= 5,
        "at least 5 expiries: {stats:?}"
    );

    let (url, hits) = always_401().await;
    let r = authed
        .ready()
        .await
        .unwrap()
        .call(request("POST", &url))
        .await
        .expect("the 401 comes back");
    assert_eq!(r.status(), 401);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a POST is not replayed");
    let mut replaying = ServiceBuilder::new()
        .layer(layer(true))
        .service(hyper.clone());
    let err = replaying
        .ready()
        .await
        .unwrap()
        .call(request("POST", &url))
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "opted in: replayed once");
    assert!(
        matches!(err.tokend(), Some(Error::StillUnauthorized { .. })),
        "{err}"
    );

    server.sandbox.revoke_account("acct-hyper");
    let err = authed
        .ready()
        .await
        .unwrap()
        .call(request("GET", &url))
        .await
        .unwrap_err();
    assert!(err.is_reconnect_required(), "{err}");
}
