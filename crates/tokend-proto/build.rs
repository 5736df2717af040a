//! Compiles `proto/` with protox (pure Rust, so no system `protoc`) into prost
//! types, tonic stubs, their proto3 JSON mapping (pbjson) and the encoded
//! descriptor set served by reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let proto_file = proto_root.join("tokend/v1/tokend.proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let vendor_root = manifest_dir.join("vendor");
    println!("cargo:rerun-if-changed={}", vendor_root.display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file(&proto_file)?;

    // Reflection also serves the google.rpc detail messages, so grpcurl can
    // print ErrorInfo, RetryInfo and BadRequest instead of raw bytes.
    let mut reflection = protox::Compiler::new([&proto_root, &vendor_root])?;
    reflection.include_imports(true).include_source_info(true);
    reflection.open_file(&proto_file)?;
    reflection.open_file(vendor_root.join("google/rpc/error_details.proto"))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tokend_descriptor.bin"),
        reflection.encode_file_descriptor_set(),
    )?;

    // Well-known types from pbjson-types, so every message also gets the
    // proto3 JSON mapping (webhook bodies, `--json` output) from pbjson.
    let descriptors = compiler.encode_file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(compiler.file_descriptor_set())?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".tokend.v1"])?;
    Ok(())
}
