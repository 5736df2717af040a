//! Issue 26, item 10: open mode shares capacity between client connections
//! without capping one below what the server can serve. A connection's
//! `open_requests_per_second_per_peer` binds only while the server is
//! contended (pending requests at half `max_pending_requests` or more, and
//! a second connection calling); rate refusals never cost a connection its
//! other calls.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokend_proto::v1 as pb;
use tokend_server::limits::Limits;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Client, Options, TestServer, get, import_request, reason};

/// A rate far below what even a debug build serves on one connection.
const RATE: u32 = 50;

/// What one connection's load got back.
#[derive(Default, Debug)]
struct Tally {
    ok: AtomicU64,
    /// `RESOURCE_EXHAUSTED CALLER_RATE_LIMITED` with `RetryInfo`.
    limited: AtomicU64,
    /// Anything else (transport errors are `UNKNOWN`/`UNAVAILABLE`/`INTERNAL`),
    /// the first few kept for the failure message.
    other: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
    fn limited(&self) -> u64 {
        self.limited.load(Ordering::SeqCst)
    }
    fn other(&self) -> u64 {
        self.other.load(Ordering::SeqCst)
    }
}

/// `calls` GetToken calls over `client`'s one connection, `in_flight` at
/// a time.
async fn load(client: &Client, id: &str, in_flight: usize, calls: usize) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let left = Arc::new(AtomicUsize::new(calls));
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = client.clone();
        let (tally, left, id) = (Arc::clone(&tally), Arc::clone(&left), id.to_owned());
        workers.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                match client.get_token(get(&id)).await {
                    Ok(_) => tally.ok.fetch_add(1, Ordering::SeqCst),
                    Err(e)
                        if e.code() == Code::ResourceExhausted
                            && reason(&e) == "CALLER_RATE_LIMITED"
                            && e.get_details_retry_info().is_some() =>
                    {
                        tally.limited.fetch_add(1, Ordering::SeqCst)
                    }
                    Err(e) => {
                        let mut samples = tally.samples.lock().unwrap();
                        if samples.len() < 5 {
                            samples.push(format!("{:?}: {}", e.code(), e.message()));
                        }
                        tally.other.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    tally
}

async fn open_server(max_pending_requests: usize) -> TestServer {
    let server = TestServer::start_with(Options {
        limits: Some(Limits {
            open_requests_per_second_per_peer: RATE,
            max_pending_requests,
            // The held requests below stay held for the whole test.
            request_body_timeout: Duration::from_secs(120),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let issued = server.sandbox.issue_tokens("acct-fair", &[]);
    server
        .client()
        .await
        .install(import_request("fair-1", "acct-fair", &issued, 3600))
        .await
        .unwrap();
    server
}

/// Invariant: with spare capacity, one client connection is not held to
/// `open_requests_per_second_per_peer`, even while another connection has
/// a call open; 64 calls in flight over one connection see no error at
/// all. Before: all but ~50 of the 3,000 calls were RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_client_uses_an_idle_server_beyond_its_share() {
    let server = open_server(Limits::default().max_pending_requests).await;
    // Another connection calling: not contention while the server idles.
    let mut watcher = server.client().await;
    let _watch = watcher
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "fair-1".into(),
        })
        .await
        .expect("watch");

    let one = server.client().await;
    let calls = 3000;
    let tally = load(&one, "fair-1", 64, calls).await;
    assert_eq!(
        (tally.ok(), tally.limited(), tally.other()),
        (calls as u64, 0, 0),
        "60x its rate of {RATE}/s, all served: {:?}",
        tally.samples.lock().unwrap()
    );
}

/// A raw HTTP/2 connection holding `n` GetToken requests whose bodies
/// never finish: each holds a place among the pending requests (until the
/// body timeout), which makes the server deterministically contended.
struct Held {
    _client: h2::client::SendRequest<Bytes>,
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
}

async fn hold_pending(addr: SocketAddr, n: usize) -> Held {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = || {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/tokend.v1.TokenService/GetToken"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let mut client = client.ready().await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..n {
        client = client.ready().await.unwrap();
        let (answer, mut body) = client.send_request(request(), false).unwrap();
        // A message of 10 bytes declared, 2 sent.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 10, 0x0a, 0x06]), false)
            .unwrap();
        streams.push((answer, body));
    }
    // A complete call after them on the same connection: once it is
    // answered, the server has taken every held request before it.
    client = client.ready().await.unwrap();
    let (answer, mut body) = client.send_request(request(), false).unwrap();
    let message = pb::GetTokenRequest {
        connection_id: "fair-1".into(),
        min_ttl_seconds: 0,
    };
    let encoded = prost::Message::encode_to_vec(&message);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    body.send_data(Bytes::from(framed), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the complete call is answered")
        .expect("a response");
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("the response body");
    }
    Held {
        _client: client,
        _streams: streams,
    }
}

/// Invariants: while the server is contended, the connection over its rate
/// is refused (`RESOURCE_EXHAUSTED CALLER_RATE_LIMITED` + `RetryInfo`)
/// and a light connection is served; 30,000 refusals at 64 in flight cost
/// the heavy connection no other call (no transport error);
/// once the contention ends, the heavy connection is served in full again.
/// Before: refusals were answered before the request was read, and h2
/// ended the connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"):
/// the run on the old code got 64 transport errors, every call in flight;
/// and the heavy connection stayed capped on an idle server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_contention_the_connection_over_its_share_is_refused_and_others_served() {
    // Contended from 80 pending; 80 held + 64 in flight + 1 stay below 160.
    let server = open_server(160).await;
    let mut light = server.client().await;
    let _watch = light
        .watch_connection(pb::WatchConnectionRequest {
            connection_id: "fair-1".into(),
        })
        .await
        .expect("watch");
    let held = hold_pending(server.addr, 80).await;

    let heavy = server.client().await;
    let refused_calls = 30_000;
    let tally = load(&heavy, "fair-1", 64, refused_calls).await;
    assert_eq!(
        tally.other(),
        0,
        "only rate refusals, no transport error: {:?}",
        tally.samples.lock().unwrap()
    );
    assert_eq!(tally.ok() + tally.limited(), refused_calls as u64);
    assert!(
        tally.limited() > 0,
        "the connection over its share is refused: {tally:?}"
    );
    assert!(
        tally.ok() >= u64::from(RATE),
        "it keeps its share: {tally:?}"
    );
    for _ in 0..10 {
        light
            .get_token(get("fair-1"))
            .await
            .expect("the light connection is served meanwhile");
    }

    // Contention over: the heavy connection (its bucket empty) is served
    // in full again, once the held requests are gone.
    drop(held);
    let mut probe = heavy.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while probe.get_token(get("fair-1")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held requests are released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = 3000;
    let tally = load(&heavy, "fair-1", 64, calls).await;
    assert_eq!(
        (tally.ok(), tally.limited(), tally.other()),
        (calls as u64, 0, 0),
        "no contention, no cap: {:?}",
        tally.samples.lock().unwrap()
    );
}
