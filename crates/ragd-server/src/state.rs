//! What every handler shares: settings, the models, open collections, admission control and
//! the shutdown signal. Blocking work (indexes, tokenizers, DocStore) runs on tokio's blocking
//! pool behind a bounded number of permits, never on the async workers; the encoder and the
//! decoder live on threads that own them, and those blocking tasks queue work for them over
//! bounded channels (requests from different calls share the encoder's batches).

use crate::error::Error;
use crate::settings::Settings;
use ragd_engine::{AnswerConfig, Cancel};
use ragd_models::{EmbedderHandle, Generator};
use ragd_store::Collection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use tokio::sync::{Semaphore, watch};

/// Shared server state.
pub struct State {
    pub settings: Settings,
    pub embedder: EmbedderHandle,
    pub generator: Generator,
    pub answer: AnswerConfig,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Serialises collection creation and deletion.
    lifecycle: Mutex<()>,
    inflight: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Parent of every job's [`Cancel`]: cancelled when shutdown's grace period ends, so no
    /// job outlives the server.
    pub jobs: Cancel,
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("data_dir", &self.settings.data_dir)
            .finish()
    }
}

impl State {
    pub fn new(
        settings: Settings,
        embedder: EmbedderHandle,
        generator: Generator,
        shutdown: watch::Receiver<bool>,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let answer = AnswerConfig {
            min_relevance: settings.answer.min_relevance,
            max_prompt_tokens: settings.answer.max_prompt_tokens,
            max_sources: settings.answer.max_sources,
            min_lexical: settings.answer.min_lexical,
            source_bytes: settings.answer.source_bytes,
            strategy: settings.answer.strategy,
            unsupported: settings.answer.unsupported,
            min_support: settings.answer.min_support,
            min_extract: settings.answer.min_extract,
            on_question: settings.answer.on_question,
            second_hop: settings.answer.second_hop,
            ..AnswerConfig::default()
        };
        let inflight = Arc::new(Semaphore::new(settings.limits.max_inflight));
        let workers = Arc::new(Semaphore::new(settings.limits.worker_count()));
        Self {
            settings,
            embedder,
            generator,
            answer,
            collections: RwLock::new(HashMap::new()),
            lifecycle: Mutex::new(()),
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
        tokio::task::spawn_blocking(move || {
            let _permits = (admitted, worker);
            f(&state, &cancel)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }

    /// The open collection `name`, opening it on first use (NOT_FOUND when absent). A handle
    /// that an I/O error left unusable (a full disk) is dropped and the collection opened
    /// again, so it recovers once the cause is gone, without a restart.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>, Error> {
        if let Some(c) = self.open_map().get(name).cloned()
            && !c.needs_reopen()
        {
            return Ok(c);
        }
        let _l = self.lifecycle();
        // A statement of its own: the read guard must be gone before the write below.
        let cached = self.open_map().get(name).cloned();
        if let Some(c) = cached {
            if !c.needs_reopen() {
                return Ok(c);
            }
            tracing::info!(
                collection = name,
                "reopening the collection after an I/O error"
            );
            self.open_map_mut().remove(name);
            // Requests still holding the old handle finish on it; the DocStore's file lock is
            // released with the last of them, and until then the open below is UNAVAILABLE.
            drop(c);
        }
        let c = Arc::new(Collection::open(&self.settings.data_dir, name)?);
        ragd_engine::check_encoder(&c.settings()?, &self.embedder)?;
        self.open_map_mut().insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    // The lifecycle lock and the map guard no invariant a panic could break halfway (a panic
    // while opening a damaged collection is caught in the store anyway), so a poisoned lock is
    // taken as it is: one failed request never disables the others.
    fn lifecycle(&self) -> MutexGuard<'_, ()> {
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn open_map(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Collection>>> {
        self.collections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn open_map_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Collection>>> {
        self.collections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a collection with the server's encoder.
    pub fn create(
        &self,
        name: &str,
        settings: &ragd_store::CollectionSettings,
    ) -> Result<Arc<Collection>, Error> {
        let _l = self.lifecycle();
        let c = Arc::new(Collection::create(&self.settings.data_dir, name, settings)?);
        self.open_map_mut().insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    /// Deletes a collection (requests holding it finish on their open handle).
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let _l = self.lifecycle();
        let removed = self.open_map_mut().remove(name);
        drop(removed);
        Collection::delete(&self.settings.data_dir, name)?;
        Ok(())
    }

    /// Names of every collection on disk.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        Ok(Collection::list(&self.settings.data_dir)?)
    }

    /// Checkpoints every open collection that has unsaved writes.
    pub fn checkpoint_all(&self) {
        let open: Vec<Arc<Collection>> = self.open_map().values().cloned().collect();
        for c in open {
            if c.needs_reopen() {
                // Checkpointing it would only fail again; the next request reopens it, and
                // the open replays what this handle had not checkpointed.
                continue;
            }
            if let Err(e) = c.checkpoint() {
                tracing::error!(collection = c.name(), error = %e, "checkpoint failed");
            }
        }
    }

    /// The answer settings for requests.
    pub fn answer_config(&self) -> &AnswerConfig {
        &self.answer
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
