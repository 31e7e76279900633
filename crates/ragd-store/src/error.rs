//! The store's one error type.

use ragd_core::ErrorKind;
use std::path::PathBuf;

/// Result alias for the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a collection on disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A collection name that cannot be a directory name.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Settings that cannot work together.
    #[error("invalid collection settings: {0}")]
    InvalidSettings(String),
    /// A request the store refuses (wrong vector size, duplicate ids in one batch, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// No such collection.
    #[error("collection {0:?} does not exist (create it with `ragd collections create {0}`)")]
    CollectionNotFound(String),
    /// The collection exists already.
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// Another process holds the collection open.
    #[error(
        "collection {0:?} is open in another process (a running server or ingest); stop it or go through it"
    )]
    InUse(String),
    /// A file that does not hold what the manifest says.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// redb failed.
    #[error("docstore: {0}")]
    Db(#[from] redb::Error),
    /// tantivy failed.
    #[error("lexical index: {0}")]
    Lexical(#[from] tantivy::TantivyError),
    /// hnsw_rs failed.
    #[error("vector index: {0}")]
    Vector(String),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record that does not deserialize.
    #[error("{context}: {source}")]
    Json {
        /// What was being read.
        context: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl Error {
    /// The kind of failure, for status and exit codes.
    pub fn kind(&self) -> ErrorKind {
        if self.is_storage_full() {
            return ErrorKind::StorageFull;
        }
        match self {
            Self::InvalidName { .. } | Self::InvalidSettings(_) | Self::InvalidInput(_) => {
                ErrorKind::InvalidInput
            }
            Self::CollectionNotFound(_) => ErrorKind::NotFound,
            Self::CollectionExists(_) => ErrorKind::AlreadyExists,
            Self::InUse(_) | Self::Db(redb::Error::PreviousIo) => ErrorKind::Unavailable,
            Self::Corrupt { .. }
            | Self::Db(_)
            | Self::Lexical(_)
            | Self::Vector(_)
            | Self::Io { .. }
            | Self::Json { .. } => ErrorKind::Internal,
        }
    }

    /// True when the disk is full (ENOSPC, or EDQUOT: over quota) anywhere in the cause chain.
    pub fn is_storage_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(e.raw_os_error(), Some(28 | 122))
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            if c.downcast_ref::<std::io::Error>().is_some_and(full) {
                return true;
            }
            cause = c.source();
        }
        // Some dependencies keep only the text of their I/O error (hnsw_rs's dump, redb's).
        let text = self.to_string();
        text.contains("No space left on device")
            || text.contains("os error 28)")
            || text.contains("Disk quota exceeded")
    }

    /// True when this failure may have left the collection's open handles unusable: redb
    /// refuses every later operation after an I/O error ("close and re-open the database"), and
    /// a tantivy writer or an HNSW dump that failed half way is not to be trusted either. The
    /// collection must be closed and opened again, which replays the DocStore's log.
    pub fn needs_reopen(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Vector(_) => true,
            Self::Db(e) => matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
            Self::Lexical(_) => self.is_storage_full() || self.to_string().contains("os error"),
            _ => self.is_storage_full(),
        }
    }

    /// Adapter for `map_err` on I/O results.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// Adapter for `map_err` on JSON results.
    pub(crate) fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let context = context.into();
        move |source| Self::Json { context, source }
    }
}

// redb has one error type per operation; all of them fold into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<tantivy::query::QueryParserError> for Error {
    fn from(e: tantivy::query::QueryParserError) -> Self {
        Self::InvalidInput(format!("lexical query: {e}"))
    }
}
