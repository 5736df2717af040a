//! Hostile bytes: requests that are not valid protobuf get INVALID_ARGUMENT
//! with reason MALFORMED_REQUEST (issue 10, item 5), and the server keeps
//! serving.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::harness::{TestServer, bad_fields, get, reason};

/// Sends bytes as they are, and never decodes a reply (none is expected).
#[derive(Clone, Copy, Default)]
pub(crate) struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_not_internal() {
    let server = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let cases: [(&str, Vec<u8>); 3] = [
        // Field 1 (connection_id), length 2, bytes that are not UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        // Field 1 with the varint wire type where a string belongs.
        ("wrong wire type", vec![0x08, 0x01]),
        // Field 1 claims 100 bytes, 1 follows.
        ("truncated length", vec![0x0a, 0x64, 0x61]),
    ];
    for (what, bytes) in cases {
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary(
                tonic::Request::new(bytes),
                http::uri::PathAndQuery::from_static("/tokend.v1.TokenService/GetToken"),
                Raw,
            )
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert_eq!(reason(&status), "MALFORMED_REQUEST", "{what}");
        assert_eq!(bad_fields(&status), ["request"], "{what}");
    }
    // Still serving: a well-formed call gets its ordinary answer.
    let mut client = server.client().await;
    let err = client.get_token(get("nobody")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
