//! Generated protobuf types and gRPC stubs for `tokend.v1`, their proto3 JSON
//! mapping (serde, by pbjson), plus the encoded descriptor set that server
//! reflection serves. Nothing hand-written lives here.

/// The `tokend.v1` package: messages, `token_service_client` and `token_service_server`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tokend.v1");
    include!(concat!(env!("OUT_DIR"), "/tokend.v1.serde.rs"));
}

/// Well-known types (`Timestamp`), with their JSON mapping.
pub use pbjson_types;

/// Encoded `FileDescriptorSet` of `tokend.v1` and its imports, for
/// `tonic-reflection` (v1 and v1alpha).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokend_descriptor");
