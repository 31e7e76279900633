//! `--server URL`: commands that talk to a running `ragd serve` over gRPC instead of opening the
//! data directory.

use anyhow::{Context, Result};
use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Where the server is.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ServerFlags {
    /// Talk to this ragd server (e.g. http://127.0.0.1:50051) instead of the data directory.
    #[arg(long, env = "RAGD_SERVER")]
    pub(crate) server: Option<String>,
    /// API key sent as `authorization: Bearer <key>`.
    #[arg(long, env = "RAGD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
}

/// A connected client and the runtime that drives it.
pub(crate) struct Remote {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) channel: Channel,
    key: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Remote {
    pub(crate) fn connect(flags: &ServerFlags, url: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("{url:?} is not a server URL like http://127.0.0.1:50051"))?;
        let channel = rt.block_on(endpoint.connect()).map_err(|e| CallFailed {
            code: tonic::Code::Unavailable,
            message: format!("cannot connect to {url}: {e}"),
        })?;
        let key = flags
            .api_key
            .as_ref()
            .map(|k| MetadataValue::try_from(format!("Bearer {k}")))
            .transpose()
            .context("the API key must be printable ASCII")?;
        Ok(Self { rt, channel, key })
    }

    /// `msg` as a request with the API key attached.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(k) = &self.key {
            r.metadata_mut().insert("authorization", k.clone());
        }
        r
    }
}

/// A call the server refused or could not take, kept typed so that the exit code can tell a
/// retryable failure from a permanent one.
#[derive(Debug)]
pub(crate) struct CallFailed {
    pub(crate) code: tonic::Code,
    pub(crate) message: String,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for CallFailed {}

/// Exit code for a failure that may succeed when retried (server unreachable, overloaded,
/// shutting down, out of time): EX_TEMPFAIL.
pub(crate) const EXIT_RETRY: u8 = 75;

/// The exit code for an error: [`EXIT_RETRY`] for a transient gRPC failure, else 1.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    use tonic::Code;
    match e.downcast_ref::<CallFailed>().map(|c| c.code) {
        Some(Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded) => EXIT_RETRY,
        _ => 1,
    }
}

/// A gRPC status as a CLI error: the code and the server's message.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    CallFailed {
        code: s.code(),
        message: s.message().to_string(),
    }
    .into()
}
