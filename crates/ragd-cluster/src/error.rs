//! The cluster crate's one error type.

use ragd_core::ErrorKind;

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong publishing or fetching a generation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store URL, option or generation id that cannot work.
    #[error("{0}")]
    InvalidInput(String),
    /// Nothing published under that name.
    #[error("{0}")]
    NotFound(String),
    /// The object store failed (unreachable, refused, throttled past its retries).
    #[error("object store {url}: {context}: {source}")]
    Store {
        /// The store, as configured.
        url: String,
        /// What was being done.
        context: String,
        /// object_store's error (boxed: it is large, and errors travel by value).
        source: Box<object_store::Error>,
    },
    /// etcd failed on every endpoint (unreachable, no leader, refused).
    #[error("etcd: {0}")]
    Etcd(String),
    /// What the store holds is not what its manifest says: a missing, short or altered
    /// object, or a manifest that does not parse.
    #[error("published generation {what}: {reason}")]
    Corrupt {
        /// The object or generation.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The local collection failed (its snapshot, or opening a fetched copy).
    #[error(transparent)]
    Local(#[from] ragd_store::Error),
}

impl Error {
    /// The kind of failure, for status and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Store { source, .. } => match **source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                _ => ErrorKind::Unavailable,
            },
            Self::Etcd(_) => ErrorKind::Unavailable,
            Self::Corrupt { .. } => ErrorKind::Internal,
            Self::Io { source, .. } if is_full(source) => ErrorKind::StorageFull,
            Self::Io { .. } => ErrorKind::Internal,
            Self::Local(e) => e.kind(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}
