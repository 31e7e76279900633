//! Generates the ragd.v1 messages and services from `proto/` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` is needed), and writes the file descriptor set served by reflection.

use prost::Message;
use std::path::PathBuf;

const FILES: &[&str] = &[
    "ragd/v1/collections.proto",
    "ragd/v1/documents.proto",
    "ragd/v1/search.proto",
    "ragd/v1/answer.proto",
    "ragd/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in FILES {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ragd_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::RagdCodec")
        .compile_fds(fds)?;
    Ok(())
}
