//! ragd's gRPC service (package `ragd.v1`): tonic handlers as thin adapters over the engine,
//! one error→status mapping, `grpc.health.v1`, server reflection, API-key auth, optional TLS,
//! Prometheus metrics, background checkpoints and a graceful shutdown that loses no
//! acknowledged write.

mod error;
mod metrics;
mod replica;
mod services;
pub mod settings;
mod state;

pub use error::Error;
pub use settings::{Overrides, ReplicaOverrides, Settings, SettingsError};

/// The services `grpc.health.v1` reports on ("" is the server as a whole).
pub(crate) const HEALTH_SERVICES: &[&str] = &[
    "ragd.v1.Collections",
    "ragd.v1.Documents",
    "ragd.v1.Search",
    "ragd.v1.Answer",
    "ragd.v1.Admin",
    "",
];

use metrics::{MethodLabels, Metrics, ResultLabels, RpcLabels};
use ragd_engine::{Engine, EngineConfig, GeneratorOptions, ModelOptions};
use ragd_proto::v1 as pb;
use services::Services;
use state::State;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::service::Interceptor;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("loading models: {0}")]
    Models(#[from] ragd_engine::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error(
        "the data directory {dir} is in use by another ragd server (pid {holder}); stop it or give this one another data_dir"
    )]
    DataDirInUse { dir: String, holder: String },
}

/// A server with its models loaded and its port bound, ready to serve.
pub struct Bound {
    state: Arc<State>,
    /// The data directory's lock, held until `serve` returns.
    data_lock: std::fs::File,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addr", &self.local_addr())
            .finish()
    }
}

/// Loads the models named by `settings` and binds the listening sockets.
pub async fn bind(settings: Settings) -> Result<Bound, StartError> {
    settings.validate()?;
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::Io {
        context: format!("creating {}", settings.data_dir.display()),
        source,
    })?;
    let data_lock = lock_data_dir(&settings.data_dir)?;
    let models = settings.models_dir();
    let engine = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || load_engine(&models, &s))
            .await
            .map_err(|e| StartError::Io {
                context: "loading models".into(),
                source: std::io::Error::other(e.to_string()),
            })??
    };
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| StartError::Io {
            context: format!("binding {}", settings.listen),
            source,
        })?;
    if let Ok(addr) = listener.local_addr()
        && exposed_without_keys(addr, settings.api_keys.0.len())
    {
        tracing::warn!(
            %addr,
            "listening beyond loopback without API keys: anyone who can reach this address can read, change and delete every collection; set RAGD_API_KEYS"
        );
    }
    let metrics_listener = if settings.metrics_listen.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&settings.metrics_listen)
                .await
                .map_err(|source| StartError::Io {
                    context: format!("binding {}", settings.metrics_listen),
                    source,
                })?,
        )
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(State::new(settings, engine, shutdown_rx, Metrics::new()));
    Ok(Bound {
        state,
        data_lock,
        listener,
        metrics_listener,
        shutdown_tx,
    })
}

/// Takes `<data_dir>/.lock` exclusively for this process (released by the OS when it exits,
/// however it exits) and writes its pid there, so a second server on the same directory stops
/// at once with a message naming the first, instead of failing collection by collection.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(".lock");
    let io = |source| StartError::Io {
        context: format!("locking {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0).map_err(io)?;
            f.rewind().map_err(io)?;
            writeln!(f, "{}", std::process::id()).map_err(io)?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            Err(StartError::DataDirInUse {
                dir: dir.display().to_string(),
                holder: holder.trim().chars().take(20).collect(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// True when `addr` is reachable from other machines and no API key guards it.
fn exposed_without_keys(addr: SocketAddr, keys: usize) -> bool {
    keys == 0 && !addr.ip().is_loopback()
}

/// The engine over the data directory: the encoder on its own thread (its queue holds one
/// request per admitted call, so admission control, not the queue, is what refuses work) and
/// the decoder's session pool.
fn load_engine(models_dir: &std::path::Path, s: &Settings) -> Result<Engine, StartError> {
    let config = EngineConfig {
        answer: state::answer_config(s),
        ..EngineConfig::new(&s.data_dir)
    };
    let role = if s.replica.enabled {
        ragd_engine::Role::Replica {
            writer: s.replica.writer.trim().to_string(),
        }
    } else {
        ragd_engine::Role::Writer
    };
    let opts = ModelOptions {
        encoder_queue: s.limits.max_inflight,
        decoder: Some(GeneratorOptions {
            sessions: s.decoder.sessions,
            context: s.decoder.context,
            queue: s.decoder.queue,
            ..GeneratorOptions::default()
        }),
        decoder_name: s.decoder.name.clone(),
        model_server: s.decoder.model_server(),
        encoder_server: s.encoder.server(),
        reranker: s.reranker.name.trim().to_string(),
    };
    Ok(Engine::load(config, models_dir, &opts)?.with_role(role))
}

impl Bound {
    /// The gRPC address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The metrics address actually bound, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then stops accepting, ends ingest streams at a batch
    /// boundary, lets other calls finish within the grace period, and checkpoints every open
    /// collection.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Bound {
            state,
            data_lock: _data_lock,
            listener,
            metrics_listener,
            shutdown_tx,
        } = self;
        let addr = listener.local_addr().map_err(|source| StartError::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        let settings = state.settings.clone();
        let services = Services {
            state: Arc::clone(&state),
        };
        let auth = ApiKeys::new(&settings.api_keys.0);
        let limit = settings.limits.max_message_bytes;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // A replica is NOT_SERVING until it has loaded what the pointers name.
        let initially = if state.replica.is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        for name in HEALTH_SERVICES {
            health_reporter.set_service_status(*name, initially).await;
        }
        let follower = match &state.replica {
            Some(status) => Some(replica::Follower::new(
                Arc::clone(&state),
                Arc::clone(status),
            )?),
            None => None,
        };
        // Both reflection versions: grpcurl ≥ 1.9 asks v1, older tools (and grpcio's
        // reflection client) v1alpha.
        let reflect = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ragd_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflect()
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let reflection_alpha = reflect()
            .build_v1alpha()
            .map_err(|e| StartError::Reflection(e.to_string()))?;

        let mut builder = Server::builder().layer(MetricsLayer {
            metrics: state.metrics.clone(),
            methods: Arc::new(metrics::served_methods()),
        });
        if !settings.tls.cert.as_os_str().is_empty() {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| StartError::Io {
                    context: format!("reading {}", p.display()),
                    source,
                })
            };
            let identity = Identity::from_pem(read(&settings.tls.cert)?, read(&settings.tls.key)?);
            builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        let router = builder
            .add_service(health_service)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                reflection,
                auth.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                reflection_alpha,
                auth.clone(),
            ))
            .add_service(pb::collections_server::CollectionsServer::with_interceptor(
                services.clone(),
                auth.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                pb::documents_server::DocumentsServer::new(services.clone())
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
                auth.clone(),
            ))
            .add_service(pb::search_server::SearchServer::with_interceptor(
                services.clone(),
                auth.clone(),
            ))
            .add_service(pb::answer_server::AnswerServer::with_interceptor(
                services.clone(),
                auth.clone(),
            ))
            .add_service(pb::admin_server::AdminServer::with_interceptor(
                services, auth,
            ));

        // Background checkpoints bound how much a restart replays; each is followed by
        // publishing what changed when `publish.url` is set.
        let ticker_state = Arc::clone(&state);
        let interval = Duration::from_secs_f64(settings.checkpoint_interval_seconds);
        let publisher = settings
            .publish
            .store()
            .map_err(|e| SettingsError(format!("setting `publish.url`: {e}")))?;
        let pointer = settings
            .publish
            .etcd()
            .map_err(|e| SettingsError(format!("setting `publish.etcd`: {e}")))?;
        let keep = settings.publish.keep;
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
            t.tick().await;
            let mut published = HashMap::new();
            loop {
                t.tick().await;
                let s = Arc::clone(&ticker_state);
                let _ = tokio::task::spawn_blocking(move || s.engine.checkpoint_all()).await;
                if let Some(store) = &publisher {
                    let to = Rollout {
                        etcd: pointer.as_ref(),
                        keep,
                    };
                    publish_changed(&ticker_state, store, to, &mut published).await;
                }
            }
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = shutdown_tx.send(true);
            let _ = stop_tx.send(true);
        });
        let follower = follower.map(|f| tokio::spawn(f.run(stop_rx.clone(), health_reporter)));
        let metrics_task = metrics_listener.map(|l| {
            let mut rx = stop_rx.clone();
            tracing::info!(
                "metrics on http://{}/metrics",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            );
            let ready: metrics::Ready = {
                let state = Arc::clone(&state);
                Arc::new(move || {
                    !state.stopping() && state.replica.as_ref().is_none_or(|r| r.ready())
                })
            };
            tokio::spawn(metrics::serve(
                l,
                state.metrics.clone(),
                ready,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ))
        });

        tracing::info!("listening on {addr}");
        // TCP_NODELAY: a unary reply is one small write, and with Nagle plus the peer's delayed
        // ACK every call would wait ~40 ms for it (measured: lexical search p50 48 ms → 2 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut rx = stop_rx.clone();
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        tokio::pin!(serve);
        let mut rx = stop_rx;
        let grace = Duration::from_secs_f64(settings.shutdown_grace_seconds);
        let result = tokio::select! {
            r = &mut serve => r.map_err(StartError::from),
            _ = async {
                let _ = rx.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("calls still running after the grace period; closing them");
                Ok(())
            }
        };
        // Jobs still running (a long ingest, a rebuild) stop at their next check.
        state.jobs.cancel();
        // Awaited, not only aborted: the ticker holds the engine (and so every open collection's
        // files and locks) until its future is dropped, which abort alone leaves to a later poll.
        ticker.abort();
        let _ = ticker.await;
        if let Some(mut f) = follower {
            // It stops at its next wait and revokes its etcd lease; one busy downloading is
            // cut (its lease then expires by itself).
            if tokio::time::timeout(Duration::from_secs(5), &mut f)
                .await
                .is_err()
            {
                f.abort();
                let _ = f.await;
            }
        }
        if let Some(m) = metrics_task {
            m.abort();
        }
        let s = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || s.engine.checkpoint_all()).await;
        tracing::info!("stopped");
        result
    }
}

/// `authorization: Bearer <key>` against the configured keys. The scheme is matched without
/// regard to case (RFC 7235); keys are compared as SHA-256 digests in constant time, so neither
/// a key's bytes nor its length show in the time a refusal takes. With no keys configured every
/// call passes.
#[derive(Clone)]
struct ApiKeys(Arc<Vec<[u8; 32]>>);

impl ApiKeys {
    fn new(keys: &[String]) -> Self {
        Self(Arc::new(keys.iter().map(|k| digest(k)).collect()))
    }
}

fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).into()
}

impl Interceptor for ApiKeys {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.0.is_empty() {
            return Ok(req);
        }
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| digest(key.trim()))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <key>`"))?;
        let mut ok = subtle::Choice::from(0u8);
        for k in self.0.iter() {
            ok |= k.ct_eq(&given);
        }
        if bool::from(ok) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid API key"))
        }
    }
}

/// Counts every RPC by method and status code and times it (to the response headers, i.e.
/// the whole call for unary RPCs and the first message for streams). The method label is one of
/// the methods the server serves, or `other`: a client sending made-up paths (authenticated or
/// not: this layer runs before auth and routing) cannot grow the label set.
#[derive(Clone)]
struct MetricsLayer {
    metrics: Metrics,
    methods: Arc<std::collections::HashSet<String>>,
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            methods: Arc::clone(&self.methods),
        }
    }
}

#[derive(Clone)]
struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
    methods: Arc<std::collections::HashSet<String>>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for MetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let method = if self.methods.contains(path) {
            path.to_string()
        } else {
            metrics::OTHER_METHOD.to_string()
        };
        let metrics = self.metrics.clone();
        let started = Instant::now();
        // One span per call, named by its request id (the caller's `x-request-id` when it is
        // a short plain token, else a number of ours): `RAGD_LOG=debug` shows where a call's
        // time went (search, selection, packing, prefill, decode) under it.
        let span = tracing::debug_span!("rpc", method = %method, request_id = %request_id(&req));
        let fut = {
            let _in = span.enter();
            self.inner.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or_else(
                            || "OK".to_string(),
                            |c| format!("{:?}", tonic::Code::from(c)),
                        ),
                    Err(_) => "TRANSPORT_ERROR".to_string(),
                };
                metrics
                    .latency
                    .get_or_create(&MethodLabels {
                        method: method.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .requests
                    .get_or_create(&RpcLabels { method, code })
                    .inc();
                res
            },
            span,
        ))
    }
}

/// The caller's `x-request-id` when it is 1 to 64 characters of `[A-Za-z0-9._-]`, else the next
/// number of this process.
fn request_id<B>(req: &http::Request<B>) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .map_or_else(
            || {
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string()
            },
            str::to_string,
        )
}

/// Where a publish goes after the object store: the etcd pointer, and how many generations
/// are kept.
#[derive(Clone, Copy)]
struct Rollout<'a> {
    etcd: Option<&'a ragd_engine::cluster::Etcd>,
    keep: usize,
}

/// Publishes every collection whose live generation or DocStore sequence moved since this
/// server last published it (`published`: name → (generation, sequence)). A failure is logged
/// and counted; the collection is tried again after the next checkpoint.
async fn publish_changed(
    state: &Arc<State>,
    store: &ragd_engine::cluster::GenerationStore,
    rollout: Rollout<'_>,
    published: &mut HashMap<String, (u64, u64)>,
) {
    let s = Arc::clone(state);
    let listing = match tokio::task::spawn_blocking(move || s.engine.list()).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "listing collections to publish failed");
            return;
        }
        Err(_) => return,
    };
    for stats in listing.open {
        if published.get(&stats.name) == Some(&(stats.generation, stats.seq)) {
            continue;
        }
        let s = Arc::clone(state);
        let name = stats.name.clone();
        let staged = match tokio::task::spawn_blocking(move || s.engine.snapshot(&name)).await {
            Ok(Ok(staged)) => staged,
            Ok(Err(e)) => {
                tracing::warn!(collection = %stats.name, error = %e, "snapshot for publishing failed");
                state
                    .metrics
                    .publishes
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                continue;
            }
            Err(_) => continue,
        };
        let done = (staged.snapshot.manifest.generation, staged.snapshot.seq);
        match store
            .publish(&stats.name, &staged.dir, &staged.snapshot)
            .await
        {
            Ok(r) => {
                if !r.already_published {
                    state
                        .metrics
                        .publishes
                        .get_or_create(&ResultLabels { result: "ok" })
                        .inc();
                }
                let pointed = match rollout.etcd {
                    None => true,
                    Some(etcd) => {
                        let to = r.pointer();
                        let moved = ragd_engine::cluster::point_and_prune(
                            etcd,
                            store,
                            &stats.name,
                            &to,
                            rollout.keep,
                        )
                        .await;
                        if let Err(e) = &moved {
                            tracing::warn!(collection = %stats.name, error = %e, "moving the generation pointer failed; it is tried again after the next checkpoint");
                        }
                        moved.is_ok()
                    }
                };
                if pointed {
                    published.insert(stats.name.clone(), done);
                }
            }
            Err(e) => {
                tracing::warn!(collection = %stats.name, store = store.url(), error = %e, "publishing failed; it is tried again after the next checkpoint");
                state
                    .metrics
                    .publishes
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
            }
        }
        // Removing the staged copy is file system work: off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(staged)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_callers_when_plain_and_ours_otherwise() {
        let with = |v: &str| {
            let mut r = http::Request::new(());
            r.headers_mut().insert("x-request-id", v.parse().unwrap());
            request_id(&r)
        };
        assert_eq!(with("job-42.a_b"), "job-42.a_b");
        for bad in ["has space", "a\"b", &"x".repeat(65)] {
            let id = with(bad);
            assert!(id.parse::<u64>().is_ok(), "{bad:?} -> {id:?}");
        }
        let a: u64 = request_id(&http::Request::new(())).parse().unwrap();
        let b: u64 = request_id(&http::Request::new(())).parse().unwrap();
        assert!(b > a);
    }

    #[test]
    fn only_unguarded_addresses_beyond_loopback_are_exposed() {
        let at = |s: &str| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert!(exposed_without_keys(at("0.0.0.0:50051"), 0));
        assert!(exposed_without_keys(at("[::]:50051"), 0));
        assert!(exposed_without_keys(at("10.1.2.3:50051"), 0));
        assert!(!exposed_without_keys(at("0.0.0.0:50051"), 1));
        assert!(!exposed_without_keys(at("127.0.0.1:50051"), 0));
        assert!(!exposed_without_keys(at("[::1]:50051"), 0));
    }

    #[test]
    fn a_data_directory_serves_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let held = lock_data_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        match lock_data_dir(dir.path()) {
            Err(e @ StartError::DataDirInUse { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
            }
            other => panic!("a second lock was not refused: {other:?}"),
        }
        drop(held);
        assert!(lock_data_dir(dir.path()).is_ok());
    }

    fn call(keys: &mut ApiKeys, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert(
                "authorization",
                h.parse().map_err(|_| tonic::Code::Internal)?,
            );
        }
        keys.call(req).map(drop).map_err(|s| s.code())
    }

    #[test]
    fn api_keys_take_any_case_of_the_scheme_and_only_configured_keys() {
        let mut keys = ApiKeys::new(&["key-one-1234".into(), "a-much-longer-second-key".into()]);
        assert!(call(&mut keys, Some("Bearer key-one-1234")).is_ok());
        assert!(call(&mut keys, Some("bearer key-one-1234")).is_ok());
        assert!(call(&mut keys, Some("BEARER a-much-longer-second-key")).is_ok());
        let refused = Err(tonic::Code::Unauthenticated);
        assert_eq!(call(&mut keys, Some("Bearer key-one-123")), refused);
        assert_eq!(call(&mut keys, Some("Bearer key-one-12345")), refused);
        assert_eq!(call(&mut keys, Some("Basic key-one-1234")), refused);
        assert_eq!(call(&mut keys, Some("key-one-1234")), refused);
        assert_eq!(call(&mut keys, None), refused);
        let mut open = ApiKeys::new(&[]);
        assert!(call(&mut open, None).is_ok());
    }
}
