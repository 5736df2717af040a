//! A bare tonic unary server for benchmarks to measure tokend against: it
//! decodes a `GetTokenRequest` and answers a prebuilt `GetTokenResponse`,
//! through the same tonic transport, with accepted sockets as tokend leaves
//! them (TCP_NODELAY). And a bytes codec for load generators that send
//! pre-encoded requests.
#![allow(dead_code)] // Each bench includes this file; not every one uses every item.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use tokend_proto::v1 as pb;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// The echo's method path.
pub const PATH: &str = "/bench.Echo/GetToken";

/// Bytes in, bytes out: the load generator sends pre-encoded requests and
/// reads replies without decoding them, so neither side's figure includes
/// the client's protobuf work.
#[derive(Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The bare server: decodes a GetTokenRequest, answers a prebuilt
/// GetTokenResponse (the size of tokend's), nothing else.
#[derive(Clone)]
pub struct Echo {
    reply: Arc<pb::GetTokenResponse>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

struct EchoUnary(Arc<pb::GetTokenResponse>);

impl tonic::server::UnaryService<pb::GetTokenRequest> for EchoUnary {
    type Response = pb::GetTokenResponse;
    type Future = std::future::Ready<Result<tonic::Response<pb::GetTokenResponse>, Status>>;
    fn call(&mut self, _request: tonic::Request<pb::GetTokenRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new((*self.0).clone())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let reply = Arc::clone(&self.reply);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(EchoUnary(reply), request).await)
        })
    }
}

pub async fn start(reply: pb::GetTokenResponse) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = accept_nodelay(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Echo {
                reply: Arc::new(reply),
            })
            .serve_with_incoming(incoming),
    );
    addr
}

/// Accepted sockets with Nagle off, as tokend's accept loop leaves them.
fn accept_nodelay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, listener))
    })
}
