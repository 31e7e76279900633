//! What every handler shares: settings, the engine, admission control, metrics and the
//! shutdown signal. Blocking work (the engine's calls: indexes, tokenizers, DocStore) runs on
//! tokio's blocking pool behind a bounded number of permits, never on the async workers; the
//! encoder and the decoder live on threads that own them, and those blocking tasks queue work
//! for them over bounded channels (requests from different calls share the encoder's batches).

use crate::error::Error;
use crate::settings::Settings;
use ragd_engine::{AnswerConfig, Cancel, Engine};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Semaphore, watch};

/// Shared server state.
pub struct State {
    pub settings: Settings,
    pub engine: Engine,
    inflight: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Parent of every job's [`Cancel`]: cancelled when shutdown's grace period ends, so no
    /// job outlives the server.
    pub jobs: Cancel,
    pub metrics: crate::metrics::Metrics,
    /// Set on a read replica.
    pub replica: Option<Arc<crate::replica::ReplicaStatus>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("data_dir", &self.settings.data_dir)
            .finish()
    }
}

/// The answer settings of `settings`.
pub fn answer_config(settings: &Settings) -> AnswerConfig {
    let a = &settings.answer;
    AnswerConfig {
        min_relevance: a.min_relevance,
        max_prompt_tokens: a.max_prompt_tokens,
        max_sources: a.max_sources,
        min_lexical: a.min_lexical,
        source_bytes: a.source_bytes,
        strategy: a.strategy,
        unsupported: a.unsupported,
        min_support: a.min_support,
        min_extract: a.min_extract,
        on_question: a.on_question,
        second_hop: a.second_hop,
        ..AnswerConfig::default()
    }
}

impl State {
    pub fn new(
        settings: Settings,
        engine: Engine,
        shutdown: watch::Receiver<bool>,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(settings.limits.max_inflight));
        let workers = Arc::new(Semaphore::new(settings.limits.worker_count()));
        let replica = crate::replica::status_for(&settings);
        Self {
            replica,
            settings,
            engine,
            inflight,
            workers,
            shutdown,
            jobs: Cancel::new(),
            metrics,
        }
    }

    /// True once shutdown has begun.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `f` on the blocking pool, at most `limits.workers` jobs at a time. Up to
    /// `limits.max_inflight` admitted jobs exist at once (running or waiting for a worker, in
    /// arrival order); beyond that the request is refused at once (RESOURCE_EXHAUSTED). A job
    /// whose caller goes away while it waits is dropped without running.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<T, Error> + Send + 'static,
    {
        self.job(None, move |s, _| f(s)).await
    }

    /// [`State::blocking`] for long jobs (ingest, rebuild), which get a [`Cancel`] to check as
    /// they go: it stops them when the caller goes away (this future is dropped), at `deadline`,
    /// or when the server's shutdown grace period ends.
    pub async fn job<T, F>(self: &Arc<Self>, deadline: Option<Instant>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&State, &Cancel) -> Result<T, Error> + Send + 'static,
    {
        if self.stopping() {
            return Err(Error::ShuttingDown);
        }
        let admitted = Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| Error::Busy("too many requests in flight"))?;
        let _inflight = GaugeGuard::new(&self.metrics.inflight);
        let worker = {
            let _queued = GaugeGuard::new(&self.metrics.queued);
            Arc::clone(&self.workers)
                .acquire_owned()
                .await
                .map_err(|_| Error::ShuttingDown)?
        };
        let cancel = self.jobs.child(deadline);
        let _stop_when_dropped = CancelOnDrop(cancel.clone());
        let state = Arc::clone(self);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _in = span.enter();
            let _permits = (admitted, worker);
            f(&state, &cancel)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }
}

/// Cancels a job when the future waiting for it is dropped (its caller went away).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Holds a gauge one higher for its lifetime (also when the future holding it is dropped).
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
