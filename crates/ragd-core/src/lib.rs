//! Domain types shared by every ragd crate.
//!
//! This crate owns the vocabulary the others speak: the [`ErrorKind`] that tells a caller's
//! mistake from the server's, and (as the indexing and answer pipelines land) documents, chunks,
//! hits and citations, and the run-time choice of CPU kernels ([`cpu`]). It has no I/O and no
//! threads; every other crate may depend on it.

use serde::{Deserialize, Serialize};

pub mod cpu;
mod document;
pub mod scratch;
pub use document::{
    ChunkSpan, DocumentInput, MAX_METADATA_BYTES, MAX_METADATA_KEYS, MAX_TITLE_BYTES, Metadata,
    check_bounds, content_hash, metadata_text, truncate_utf8,
};

/// What kind of failure an error is, independent of which crate raised it.
///
/// Every crate's error enum exposes `kind()`; the gRPC layer maps each kind to exactly one status
/// code, and the CLI maps it to an exit code. User errors (`InvalidInput`, `NotFound`,
/// `AlreadyExists`, `FailedPrecondition`) carry messages meant for the person who sent the request; `Internal` ones do
/// not leak details over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong: empty, too long, out of range, malformed.
    InvalidInput,
    /// Something the request names does not exist (a collection, a document, a model file).
    NotFound,
    /// Something the request would create exists already.
    AlreadyExists,
    /// The request is valid but not here: a write sent to a read replica (the message names
    /// the writer).
    FailedPrecondition,
    /// A bounded queue is full; the caller may retry later.
    Overloaded,
    /// A dependency is not ready (a worker thread is gone, the service is shutting down).
    Unavailable,
    /// The request ran out of time.
    DeadlineExceeded,
    /// The disk the data lives on is full; the caller may retry once space is freed.
    StorageFull,
    /// A bug or an environment failure (I/O, corrupt file) the caller cannot fix.
    Internal,
}

/// Seconds since the Unix epoch (0 on a clock set before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ErrorKind {
    /// True when the caller can fix the request; such messages are safe to show them verbatim.
    pub fn is_user_error(self) -> bool {
        matches!(
            self,
            Self::InvalidInput | Self::NotFound | Self::AlreadyExists | Self::FailedPrecondition
        )
    }
}

/// A model's role in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// Turns text into vectors (BERT-family sentence encoder).
    Encoder,
    /// Writes answers (causal language model).
    Decoder,
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Encoder => "encoder",
            Self::Decoder => "decoder",
        })
    }
}

/// Number format of the encoder's matrix products. A collection records the one its vectors
/// were made with, so that queries are embedded the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// 8-bit integer weights (one scale per output channel) and activations (one scale per
    /// block of 64 values) in the linear layers; normalisation, softmax, GELU and residuals stay
    /// f32.
    Int8,
}

impl Precision {
    /// `"f32"` or `"int8"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(format!(
                "unknown encoder precision {other:?} (expected \"f32\" or \"int8\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_the_four_caller_kinds() {
        let user: Vec<_> = [
            ErrorKind::InvalidInput,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Overloaded,
            ErrorKind::Unavailable,
            ErrorKind::DeadlineExceeded,
            ErrorKind::StorageFull,
            ErrorKind::Internal,
        ]
        .into_iter()
        .filter(|k| k.is_user_error())
        .collect();
        assert_eq!(
            user,
            [
                ErrorKind::InvalidInput,
                ErrorKind::NotFound,
                ErrorKind::AlreadyExists,
                ErrorKind::FailedPrecondition
            ]
        );
    }

    #[test]
    fn precisions_parse_print_and_serialize_alike() {
        for p in [Precision::F32, Precision::Int8] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).ok(),
                Some(format!("\"{}\"", p.name()))
            );
        }
        assert!(
            "fp16"
                .parse::<Precision>()
                .unwrap_err()
                .contains("\"fp16\"")
        );
    }

    #[test]
    fn roles_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&ModelRole::Encoder).ok().as_deref(),
            Some("\"encoder\"")
        );
    }
}
