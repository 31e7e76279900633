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
    /// Several, comma-separated (read replicas): each command connects to one of them chosen
    /// at random, moving on to the next when one does not answer; `bench load` spreads its
    /// calls over all of them.
    #[arg(long, env = "RAGD_SERVER")]
    pub(crate) server: Option<String>,
    /// API key sent as `authorization: Bearer <key>`.
    #[arg(long, env = "RAGD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
}

/// A connected client and the runtime that drives it.
pub(crate) struct Remote {
    pub(crate) rt: tokio::runtime::Runtime,
    /// The connection to the server this command talks to.
    pub(crate) channel: Channel,
    /// Its URL.
    pub(crate) url: String,
    /// Connections to every server given that answered, `channel`'s first.
    pub(crate) all: Vec<Channel>,
    key: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// The URLs of `--server`: one, or several separated by commas.
pub(crate) fn server_urls(spec: &str) -> Result<Vec<String>> {
    let urls: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        anyhow::bail!("--server {spec:?} names no server (expected http://host:port[,http://…])");
    }
    Ok(urls)
}

/// `items` rotated by a random amount: each process starts at a different server.
fn rotated<T>(mut items: Vec<T>) -> Vec<T> {
    use std::hash::{BuildHasher, Hasher};
    if items.len() > 1 {
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let k = (r % items.len() as u64) as usize;
        items.rotate_left(k);
    }
    items
}

/// How long connecting to one server may take before the next is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Remote {
    /// Connects to the server `spec` names, or to one of several (see [`ServerFlags`]).
    pub(crate) fn connect(flags: &ServerFlags, spec: &str) -> Result<Self> {
        Self::connect_to(flags, spec, false)
    }

    /// Connects to every server `spec` names that answers (at least one).
    pub(crate) fn connect_all(flags: &ServerFlags, spec: &str) -> Result<Self> {
        Self::connect_to(flags, spec, true)
    }

    fn connect_to(flags: &ServerFlags, spec: &str, all: bool) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let mut endpoints = Vec::new();
        for url in server_urls(spec)? {
            let e = Endpoint::from_shared(url.clone())
                .with_context(|| {
                    format!("{url:?} is not a server URL like http://127.0.0.1:50051")
                })?
                .connect_timeout(CONNECT_TIMEOUT);
            endpoints.push((url, e));
        }
        let mut connected = Vec::new();
        let mut failures = Vec::new();
        for (url, endpoint) in rotated(endpoints) {
            match rt.block_on(endpoint.connect()) {
                Ok(c) => {
                    connected.push((url, c));
                    if !all {
                        break;
                    }
                }
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        let Some((url, channel)) = connected.first().cloned() else {
            return Err(CallFailed {
                code: tonic::Code::Unavailable,
                message: format!("cannot connect to {}", failures.join("; ")),
            }
            .into());
        };
        let key = flags
            .api_key
            .as_ref()
            .map(|k| MetadataValue::try_from(format!("Bearer {k}")))
            .transpose()
            .context("the API key must be printable ASCII")?;
        Ok(Self {
            rt,
            channel,
            url,
            all: connected.into_iter().map(|(_, c)| c).collect(),
            key,
        })
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
