//! Issue 26, item 10: every refusal is answered after the request's body
//! is read, so refusals never cost a client its HTTP/2 connection. The
//! pending cap's refusal (`max_pending_requests`) and the unauthenticated
//! one, at 64 in flight over one connection, come back as clean gRPC
//! statuses with no transport error, and the connection serves the next
//! good call. The reading is bounded: a refused request whose body never
//! comes is answered within about a second.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokend_proto::v1::token_service_client::TokenServiceClient;
use tokend_server::{
    auth::{Grant, IdentityConfig, Permission, sha256_hex},
    limits::Limits,
};
use tokio::time::Instant;
use tonic::Code;

use crate::harness::{ApiKey, Client, Options, TestServer, get, import_request, reason};

const KEY: &str = "refusals-key-0123456789abcdef012345";

/// Calls over one connection, 64 at a time: enough on the old code for h2
/// to end the connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames").
const CALLS: usize = 30_000;
const IN_FLIGHT: usize = 64;

/// What one connection's load got back.
#[derive(Default, Debug)]
struct Tally {
    /// The refusal expected.
    refused: AtomicU64,
    /// Anything else (transport errors are `UNKNOWN`/`UNAVAILABLE`/
    /// `INTERNAL`), the first few kept for the failure message.
    other: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

/// `CALLS` GetToken calls over `client`'s one connection, `IN_FLIGHT` at a
/// time, each expected to be refused with `code` and `why`.
async fn load(client: &Client, code: Code, why: &'static str) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let left = Arc::new(AtomicUsize::new(CALLS));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut client = client.clone();
        let (tally, left) = (Arc::clone(&tally), Arc::clone(&left));
        workers.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                match client.get_token(get("drain-1")).await {
                    Err(e) if e.code() == code && (why.is_empty() || reason(&e) == why) => {
                        tally.refused.fetch_add(1, Ordering::SeqCst)
                    }
                    other => {
                        let mut samples = tally.samples.lock().unwrap();
                        if samples.len() < 5 {
                            samples.push(match other {
                                Ok(_) => "served".into(),
                                Err(e) => format!("{:?}: {}", e.code(), e.message()),
                            });
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

fn assert_only_refusals(tally: &Tally, what: &str) {
    assert_eq!(
        (
            tally.refused.load(Ordering::SeqCst),
            tally.other.load(Ordering::SeqCst)
        ),
        (CALLS as u64, 0),
        "{what}: only clean refusals, no transport error: {:?}",
        tally.samples.lock().unwrap()
    );
}

fn grpc_request(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tokend.v1.TokenService/GetToken"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A raw HTTP/2 connection.
async fn raw(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// A GetToken request whose body never ends, and the time its answer's
/// `grpc-status` took (from its headers: a trailers-only answer). `Err`
/// with the request itself, still open, when no answer came within 5 s: it
/// was not refused but took a pending place and waits for its body (the
/// held requests were not all counted yet when it came, and one of them
/// was refused instead); keeping it open keeps that place taken.
async fn refused_without_body(addr: SocketAddr) -> Result<(String, Duration), Held> {
    let mut client = raw(addr).await;
    let start = Instant::now();
    let (mut answer, mut body) = client.send_request(grpc_request(addr), false).unwrap();
    // A message of 10 bytes declared, 2 sent, the rest never.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 10, 0x0a, 0x06]), false)
        .unwrap();
    let Ok(response) = tokio::time::timeout(Duration::from_secs(5), &mut answer).await else {
        return Err(Held {
            _client: client,
            _streams: vec![(answer, body)],
        });
    };
    let status = response
        .expect("a response")
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Ok((status, start.elapsed()))
}

/// `n` GetToken requests whose bodies never finish, on a raw HTTP/2
/// connection: each holds a place among the pending requests (until the
/// body timeout). Dropped, the connection ends and gives them back.
struct Held {
    _client: h2::client::SendRequest<Bytes>,
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
}

async fn hold_pending(addr: SocketAddr, n: usize) -> Held {
    let mut client = raw(addr).await;
    let mut streams = Vec::new();
    for _ in 0..n {
        client = client.ready().await.unwrap();
        let (answer, mut body) = client.send_request(grpc_request(addr), false).unwrap();
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 10, 0x0a, 0x06]), false)
            .unwrap();
        streams.push((answer, body));
    }
    Held {
        _client: client,
        _streams: streams,
    }
}

/// Invariants: with every pending place taken, 30,000 GetToken calls at 64
/// in flight over one connection are each answered `RESOURCE_EXHAUSTED
/// SERVER_OVERLOADED`, with no transport error, and the same connection
/// serves the next call once places are free; a refused request whose body
/// never ends is answered within about a second (the reading is bounded).
/// Before: the refusal was answered before the body was read, and h2 ended
/// the connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_cap_refusals_keep_the_connection() {
    let server = TestServer::start_with(Options {
        limits: Some(Limits {
            max_pending_requests: 4,
            // The held requests stay held for the whole test.
            request_body_timeout: Duration::from_secs(120),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let issued = server.sandbox.issue_tokens("acct-drain", &[]);
    let client = server.client().await;
    client
        .clone()
        .install(import_request("drain-1", "acct-drain", &issued, 3600))
        .await
        .unwrap();

    let held = hold_pending(server.addr, 4).await;
    // Every place taken: a probe on another connection is refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probes_holding = Vec::new();
    loop {
        // A probe that came before every held request was counted holds a
        // place instead: it is kept open, so the places fill up.
        let answer = match refused_without_body(server.addr).await {
            Ok(answer) => Some(answer),
            Err(holding) => {
                probes_holding.push(holding);
                None
            }
        };
        if let Some((status, waited)) = answer
            && status == "8"
        {
            assert!(
                waited < Duration::from_secs(5),
                "a body that never comes is waited for about a second, not {waited:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held requests take every place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tally = load(&client, Code::ResourceExhausted, "SERVER_OVERLOADED").await;
    assert_only_refusals(&tally, "over the pending cap");

    drop(held);
    drop(probes_holding);
    let mut next = client.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match next.get_token(get("drain-1")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(Instant::now() < deadline, "the held places come back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Invariants: on a server with identities, 30,000 GetToken calls without
/// a key at 64 in flight over one connection are each answered
/// `UNAUTHENTICATED`, with no transport error; a call with the key on the
/// same connection is then served; an unauthenticated request whose body
/// never ends is answered within about a second. Before: the interceptor
/// answered before the body was read, and h2 ended the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_refusals_keep_the_connection() {
    let server = TestServer::start_with(Options {
        identities: vec![IdentityConfig {
            name: "svc".into(),
            api_key_sha256: Some(sha256_hex(KEY.as_bytes())),
            cert_sha256: None,
            grants: vec![Grant {
                permissions: vec![Permission::Admin],
                connections: vec!["*".into()],
            }],
            requests_per_second: 100_000,
            max_watch_streams: 2,
        }],
        client_key: Some(KEY.into()),
        ..Default::default()
    })
    .await;
    let issued = server.sandbox.issue_tokens("acct-drain", &[]);
    let channel = server.channel().await;
    let mut good = TokenServiceClient::with_interceptor(channel.clone(), ApiKey(Some(KEY.into())));
    good.install(import_request("drain-1", "acct-drain", &issued, 3600))
        .await
        .unwrap();

    let Ok((status, waited)) = refused_without_body(server.addr).await else {
        panic!("no answer although the body never ends")
    };
    assert_eq!(status, "16", "UNAUTHENTICATED");
    assert!(
        waited < Duration::from_secs(5),
        "a body that never comes is waited for about a second, not {waited:?}"
    );

    let anonymous: Client = TokenServiceClient::with_interceptor(channel, ApiKey(None));
    let tally = load(&anonymous, Code::Unauthenticated, "").await;
    assert_only_refusals(&tally, "without a key");

    let token = good
        .get_token(get("drain-1"))
        .await
        .expect("the same connection serves the next good call")
        .into_inner();
    assert!(token.token.is_some_and(|t| !t.access_token.is_empty()));
}
