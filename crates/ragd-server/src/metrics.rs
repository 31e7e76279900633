//! Prometheus metrics (prometheus-client) and their HTTP endpoint (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
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
