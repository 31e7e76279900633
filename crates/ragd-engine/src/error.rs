//! The engine's one error type.

use ragd_core::ErrorKind;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a pipeline (per-document problems are reported, not raised).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong (bad glob, missing path, impossible settings).
    #[error("{0}")]
    InvalidInput(String),
    /// The collection store failed.
    #[error(transparent)]
    Store(#[from] ragd_store::Error),
    /// Publishing or fetching a generation failed.
    #[error(transparent)]
    Cluster(#[from] ragd_cluster::Error),
    /// A model failed.
    #[error(transparent)]
    Model(#[from] ragd_models::Error),
    /// The job was stopped: its caller left or the server is stopping.
    #[error("the job was stopped (its caller left or the server is stopping)")]
    Cancelled,
    /// The job ran past its caller's deadline and was stopped.
    #[error("the deadline passed before the job finished")]
    DeadlineExceeded,
    /// A read replica was asked for a collection it does not serve (not published, or not
    /// loaded yet).
    #[error("{}", not_served_message(name, serving))]
    NotServed {
        /// The collection asked for.
        name: String,
        /// What the replica serves.
        serving: Vec<String>,
    },
    /// A write reached a read replica, which serves published generations only.
    #[error("{}", read_only_message(writer))]
    ReadOnly {
        /// Where writes go (the writer's address), when the replica was told.
        writer: String,
    },
    /// Reading input failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The kind of failure, for status and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::Store(e) => e.kind(),
            Self::Model(e) => e.kind(),
            Self::Cluster(e) => e.kind(),
            Self::Cancelled => ErrorKind::Unavailable,
            Self::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Self::ReadOnly { .. } => ErrorKind::FailedPrecondition,
            Self::NotServed { .. } => ErrorKind::NotFound,
            Self::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn read_only_message(writer: &str) -> String {
    let head = "this server is a read replica serving published generations; it takes no writes";
    if writer.is_empty() {
        format!("{head}: send them to the writer that publishes the collections")
    } else {
        format!("{head}: send them to the writer at {writer}")
    }
}

fn not_served_message(name: &str, serving: &[String]) -> String {
    if serving.is_empty() {
        format!(
            "this read replica serves no collection yet, so not {name:?}: it has not loaded a published generation (is the writer publishing, and are the pointers in etcd?)"
        )
    } else {
        format!(
            "this read replica does not serve collection {name:?} (it serves {}); collections are created on the writer and reach replicas once published",
            serving.join(", ")
        )
    }
}
