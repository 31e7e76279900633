//! ragd's gRPC API, package `ragd.v1`, generated from `proto/ragd/v1/*.proto` at build time,
//! the codec, and the one conversion layer between its messages and the engine's types
//! ([`convert`]), which the server and the CLI's client mode share.

pub mod codec;
pub mod convert;

/// Messages and service stubs of `ragd.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("ragd.v1");
}

/// The encoded file descriptor set of `ragd.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ragd_v1_descriptor");
