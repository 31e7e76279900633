//! Prometheus metrics (prometheus-client) and their HTTP endpoint (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message as _;
use std::collections::HashSet;
use std::sync::Arc;

/// Labels of an RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/ragd.v1.Search/Search`, …
    pub method: String,
    /// gRPC status code name (`OK`, `INVALID_ARGUMENT`, …).
    pub code: String,
}

/// Labels of an RPC's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// The `method` label of calls to paths the server does not serve.
pub const OTHER_METHOD: &str = "other";

/// Every RPC path the server serves (`/ragd.v1.Search/Search`, health, both reflection versions),
/// read from the descriptor sets it registers: the values the `method` label may take.
pub fn served_methods() -> HashSet<String> {
    let sets = [
        ragd_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut out = HashSet::new();
    for bytes in sets {
        // Compiled into the binary by the build: a set that does not decode is a build bug, and
        // its methods are then simply counted as `other`.
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    out.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    out
}

/// Every metric the server exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RpcLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub inflight: Gauge,
    pub queued: Gauge,
    pub documents_acknowledged: Counter,
    pub documents_failed: Counter,
    pub tokens_generated: Counter,
    pub answers_refused: Counter,
    pub query_cache: Family<CacheLabels, Counter>,
    pub publishes: Family<ResultLabels, Counter>,
    /// Read replica: published generations fetched and swapped in, by result.
    pub replica_loads: Family<ResultLabels, Counter>,
    /// Read replica: 1 while the last poll reached the source (`pointer`: etcd, `store`: the
    /// object store), else 0.
    pub replica_source_up: Family<SourceLabels, Gauge>,
    /// Read replica: Unix time of the last poll that found every pointed generation served.
    pub replica_last_sync: Gauge,
}

/// Labels of a source a read replica follows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `pointer` (etcd) or `store` (object storage).
    pub source: &'static str,
}

/// Labels of an operation that succeeds or fails.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a query-vector cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ragd");
        let requests = Family::<RpcLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let inflight = Gauge::default();
        let queued = Gauge::default();
        let documents_acknowledged = Counter::default();
        let documents_failed = Counter::default();
        let tokens_generated = Counter::default();
        let answers_refused = Counter::default();
        let query_cache = Family::<CacheLabels, Counter>::default();
        let publishes = Family::<ResultLabels, Counter>::default();
        let replica_loads = Family::<ResultLabels, Counter>::default();
        let replica_source_up = Family::<SourceLabels, Gauge>::default();
        let replica_last_sync = Gauge::default();
        registry.register(
            "grpc_requests",
            "RPCs finished, by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_seconds",
            "Time to the response (first message for streams)",
            latency.clone(),
        );
        registry.register(
            "inflight_jobs",
            "Admitted jobs, running or waiting for a worker",
            inflight.clone(),
        );
        registry.register(
            "queued_jobs",
            "Admitted jobs waiting for a worker",
            queued.clone(),
        );
        registry.register(
            "documents_acknowledged",
            "Documents stored durably",
            documents_acknowledged.clone(),
        );
        registry.register(
            "documents_failed",
            "Documents refused (parse errors, limits)",
            documents_failed.clone(),
        );
        registry.register(
            "tokens_generated",
            "Answer tokens generated",
            tokens_generated.clone(),
        );
        registry.register(
            "answers_refused",
            "Answers declined (nothing relevant or unsupported)",
            answers_refused.clone(),
        );
        registry.register(
            "query_cache_lookups",
            "Search query vectors looked up in their collection's cache, by outcome",
            query_cache.clone(),
        );
        registry.register(
            "generations_published",
            "Collection generations published to object storage (publish.url), by result",
            publishes.clone(),
        );
        registry.register(
            "replica_generations_loaded",
            "Read replica: published generations fetched, verified and swapped in, by result",
            replica_loads.clone(),
        );
        registry.register(
            "replica_source_up",
            "Read replica: 1 when its last poll reached the source (pointer: etcd, store: object storage); it serves what it has while 0",
            replica_source_up.clone(),
        );
        registry.register(
            "replica_last_sync_timestamp_seconds",
            "Read replica: Unix time of the last poll that found every pointed generation served",
            replica_last_sync.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            inflight,
            queued,
            documents_acknowledged,
            documents_failed,
            tokens_generated,
            answers_refused,
            query_cache,
            publishes,
            replica_loads,
            replica_source_up,
            replica_last_sync,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the server takes requests now (readiness for proxies and orchestrators).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves `GET /metrics` and `GET /ready` (200 `ready` while `ready()` holds, else 503 `not
/// ready`: a read replica before it has loaded what the pointers name, any server once it is
/// stopping) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Ready,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/ready",
            axum::routing::get(move || {
                let ok = ready();
                async move {
                    if ok {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_label_takes_only_served_methods() {
        let m = served_methods();
        for path in [
            "/ragd.v1.Search/Search",
            "/ragd.v1.Answer/AskStream",
            "/ragd.v1.Documents/IngestStream",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(m.contains(path), "{path} missing from {m:?}");
        }
        assert!(!m.contains("/ragd.v1.Search/Nope") && m.len() < 64, "{m:?}");
    }
}
