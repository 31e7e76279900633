//! The server's one error type and its single mapping to gRPC status codes.

use ragd_core::ErrorKind;
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A pipeline failed.
    #[error(transparent)]
    Engine(#[from] ragd_engine::Error),
    /// Too many requests in flight.
    #[error("the server is busy ({0}); retry later")]
    Busy(&'static str),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A worker task failed (panicked or was cancelled).
    #[error("worker failed: {0}")]
    Worker(String),
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) => ErrorKind::InvalidInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Engine(e) => e.kind(),
            Self::Busy(_) => ErrorKind::Overloaded,
            Self::ShuttingDown => ErrorKind::Unavailable,
            Self::Worker(_) => ErrorKind::Internal,
        }
    }
}

/// The one place errors become statuses. Internal failures are logged and answered with a
/// generic message: their details (paths, OS errors) are not the caller's business.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        let code = match kind {
            ErrorKind::InvalidInput => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Overloaded => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::StorageFull => Code::ResourceExhausted,
            ErrorKind::Internal => Code::Internal,
        };
        match kind {
            ErrorKind::Internal => {
                tracing::error!(error = %e, "internal error");
                Status::new(code, "internal error (see the server log)")
            }
            ErrorKind::StorageFull => {
                tracing::error!(error = %e, "disk full");
                Status::new(code, "the server's disk is full; retry once space is freed")
            }
            _ => Status::new(code, short(&e.to_string())),
        }
    }
}

/// Longest status message sent, in bytes. Messages may quote what the caller sent (an id, a
/// name); quoting a megabyte back would make the error larger than gRPC's header limit.
const MAX_MESSAGE_BYTES: usize = 512;

/// `msg`, cut to [`MAX_MESSAGE_BYTES`] at a character boundary with a marker when cut.
fn short(msg: &str) -> String {
    if msg.len() <= MAX_MESSAGE_BYTES {
        return msg.to_string();
    }
    let kept = ragd_core::truncate_utf8(msg, MAX_MESSAGE_BYTES);
    format!("{kept}… ({} bytes cut)", msg.len() - kept.len())
}

/// Shorthand for a bad request.
pub fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes_and_internals_do_not_leak() {
        let s: Status = invalid("top_k must be 1..=1000").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "top_k must be 1..=1000");
        let s: Status = Error::Busy("decoder").into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = Error::ShuttingDown.into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = Error::Engine(ragd_models::Error::DeadlineExceeded.into()).into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s: Status =
            Error::Engine(ragd_store::Error::CollectionNotFound("x".into()).into()).into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = Error::Worker("/secret/path: boom".into()).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"));
        let full = std::io::Error::from_raw_os_error(28);
        let s: Status = Error::Engine(
            ragd_store::Error::Io {
                context: "writing /secret/docstore.redb".into(),
                source: full,
            }
            .into(),
        )
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("disk is full") && !s.message().contains("secret"));
    }

    #[test]
    fn messages_that_quote_input_are_cut() {
        let id = "é".repeat(1 << 19);
        let s: Status = Error::NotFound(format!("no document {id:?}")).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().len() < 600, "{}", s.message().len());
        assert!(s.message().starts_with("no document \"é") && s.message().ends_with("bytes cut)"));
    }
}
