//! Read replica mode: follow the generations a writer publishes and serve them.
//!
//! A poll looks at every collection's pointer in etcd (`/ragd/<c>/current`; without etcd, the
//! newest generation of each collection in the object store) — when an etcd watch reports that a
//! pointer moved, else every `replica.poll_seconds` — and for each one that names a
//! generation this replica does not serve yet, downloads it into a scratch directory of the data
//! directory (every file's size and sha256 checked, `publish.json` against the pointer's
//! digest), opens and verifies it there, and swaps it in ([`Engine::serve_published`]). A
//! generation that fails to load is refused and the one served so far kept; it is tried again
//! after [`RETRY_REFUSED`]. While etcd or the store cannot be reached the replica keeps serving
//! what it has and says so (Admin Info, `ragd_replica_source_up`).
//!
//! In etcd the replica keeps `/ragd/<c>/replicas/<name>` = the generation it serves, under a
//! lease renewed by its own task, so the writer never prunes a generation a live replica
//! serves, and a replica that dies releases its generations when the lease runs out.

use crate::metrics::{ResultLabels, SourceLabels};
use crate::settings::Settings;
use crate::state::State;
use ragd_engine::Engine;
use ragd_engine::cluster::{Etcd, GenerationId, GenerationStore};
use ragd_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How long a generation that failed to load is left alone before it is tried again.
pub const RETRY_REFUSED: Duration = Duration::from_secs(30);

/// What a replica reports about itself (Admin Info), shared between its poller and the
/// handlers.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    writer: String,
    pointer_reachable: bool,
    store_reachable: bool,
    last_sync: Option<Instant>,
    last_error: String,
    ready: bool,
    since: HashMap<String, u64>,
}

impl ReplicaStatus {
    fn new(writer: &str) -> Self {
        Self {
            inner: Mutex::new(StatusInner {
                writer: writer.to_string(),
                ..StatusInner::default()
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut StatusInner)) {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// True once every collection the pointers name was loaded once.
    pub fn ready(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
    }

    /// The status as Admin Info reports it, with what `engine` serves.
    pub fn to_pb(&self, engine: &Engine) -> pb::ReplicaStatus {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        pb::ReplicaStatus {
            writer: s.writer.clone(),
            serving: engine
                .served()
                .into_iter()
                .map(|x| pb::ServedGeneration {
                    since: s.since.get(&x.collection).copied().unwrap_or_default(),
                    collection: x.collection,
                    generation: x.id.to_string(),
                })
                .collect(),
            pointer_reachable: s.pointer_reachable,
            store_reachable: s.store_reachable,
            seconds_since_sync: s.last_sync.map_or(-1.0, |t| t.elapsed().as_secs_f64()),
            last_error: s.last_error.clone(),
            ready: s.ready,
        }
    }
}

/// The status a replica server starts with, when `settings` make it one.
pub fn status_for(settings: &Settings) -> Option<Arc<ReplicaStatus>> {
    settings
        .replica
        .enabled
        .then(|| Arc::new(ReplicaStatus::new(settings.replica.writer.trim())))
}

/// This replica's name in etcd: `replica.name`, or host name and process id.
fn replica_name(settings: &Settings) -> String {
    let given = settings.replica.name.trim();
    if !given.is_empty() {
        return given.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}", std::process::id())
}

/// One collection's target: the generation to serve and, from a pointer, its manifest digest.
struct Target {
    collection: String,
    id: GenerationId,
    digest: Option<String>,
}

/// Follows the pointers and swaps generations in; see the module docs.
pub struct Follower {
    state: Arc<State>,
    status: Arc<ReplicaStatus>,
    store: GenerationStore,
    etcd: Option<Etcd>,
    name: String,
    poll: Duration,
    lease_ttl: i64,
    /// Generations that failed to load, by collection, and when.
    refused: HashMap<String, (GenerationId, Instant)>,
    /// What is registered in etcd, and under which lease.
    registered: HashMap<String, GenerationId>,
    registered_lease: Option<i64>,
}

impl Follower {
    /// The follower of a replica server's `state` (its settings' `[replica]`).
    pub fn new(state: Arc<State>, status: Arc<ReplicaStatus>) -> Result<Self, crate::StartError> {
        let r = &state.settings.replica;
        let bad = |key: &str, e: ragd_engine::cluster::Error| {
            crate::SettingsError(format!("setting `replica.{key}`: {e}"))
        };
        let store = r
            .store()
            .map_err(|e| bad("url", e))?
            .ok_or_else(|| crate::SettingsError("setting `replica.url`: empty".into()))?;
        let etcd = r.etcd().map_err(|e| bad("etcd", e))?;
        Ok(Self {
            name: replica_name(&state.settings),
            poll: Duration::from_secs_f64(r.poll_seconds),
            lease_ttl: r.lease_seconds as i64,
            store,
            etcd,
            status,
            state,
            refused: HashMap::new(),
            registered: HashMap::new(),
            registered_lease: None,
        })
    }

    /// Polls until `stop` turns true. `health` (NOT_SERVING for every service when the server
    /// starts) turns SERVING once every pointed collection has been loaded, and stays so (also
    /// while the sources are unreachable: the replica serves what it has).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, health: HealthReporter) {
        let (lease_tx, lease_rx) = watch::channel(None);
        let keeper = self
            .etcd
            .clone()
            .map(|etcd| tokio::spawn(keep_lease(etcd, self.lease_ttl, lease_tx, stop.clone())));
        let mut watch_failed = false;
        loop {
            // The revision the poll starts from: a pointer moved after it wakes the wait below.
            let revision = match &self.etcd {
                Some(etcd) => etcd.revision().await.ok(),
                None => None,
            };
            let synced = self.poll_once(&lease_rx).await;
            if synced && !self.status.ready() {
                for name in crate::HEALTH_SERVICES {
                    health
                        .set_service_status(*name, ServingStatus::Serving)
                        .await;
                }
                tracing::info!("the replica serves every published collection");
                self.status.update(|s| s.ready = true);
            }
            tokio::select! {
                _ = self.wait_for_change(revision, &mut watch_failed) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Some(k) = keeper {
            let _ = k.await;
        }
    }

    /// Until the next poll: with etcd, until a pointer moves after `revision` (an etcd watch)
    /// or `poll_seconds` pass; without, `poll_seconds`. A watch that fails (etcd going away)
    /// ends the wait at once, so the next poll finds and reports it; after that the replica
    /// polls on the clock until a watch holds again.
    async fn wait_for_change(&self, revision: Option<i64>, failed_before: &mut bool) {
        match (&self.etcd, revision) {
            (Some(etcd), Some(revision)) if !*failed_before => {
                if let Err(e) = etcd.changed_since(revision, self.poll).await {
                    tracing::debug!(error = %e, "watching the pointers failed");
                    *failed_before = true;
                }
            }
            _ => {
                *failed_before = false;
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    /// One look at the pointers; true when every pointed generation is served.
    async fn poll_once(&mut self, lease: &watch::Receiver<Option<i64>>) -> bool {
        let targets = match self.targets().await {
            Ok(t) => t,
            Err((source, e)) => {
                tracing::warn!(source, error = %e, "the replica cannot see the published generations; it keeps serving what it has");
                self.source_up(source, false);
                self.status.update(|s| {
                    match source {
                        "pointer" => s.pointer_reachable = false,
                        _ => s.store_reachable = false,
                    }
                    s.last_error = format!("{source}: {e}");
                });
                return false;
            }
        };
        self.source_up("pointer", true);
        self.status.update(|s| s.pointer_reachable = true);
        let served: HashMap<String, GenerationId> = self
            .state
            .engine
            .served()
            .into_iter()
            .map(|s| (s.collection, s.id))
            .collect();
        let mut all_served = true;
        let mut errors = Vec::new();
        let mut store_up = true;
        for t in &targets {
            if served.get(&t.collection) == Some(&t.id) {
                continue;
            }
            if let Some((id, at)) = self.refused.get(&t.collection)
                && *id == t.id
                && at.elapsed() < RETRY_REFUSED
            {
                all_served = false;
                continue;
            }
            match self.load(t).await {
                Ok(()) => self.loaded("ok"),
                Err(e) => {
                    all_served = false;
                    self.loaded("error");
                    if matches!(
                        e.kind(),
                        ragd_core::ErrorKind::Unavailable | ragd_core::ErrorKind::StorageFull
                    ) {
                        // The store (or the disk) is out of reach: not the generation's fault.
                        store_up = false;
                        tracing::warn!(collection = %t.collection, generation = %t.id, error = %e, "fetching the published generation failed; serving the one held so far");
                    } else {
                        tracing::error!(collection = %t.collection, generation = %t.id, error = %e, "the published generation was refused; serving the one held so far");
                        self.refused
                            .insert(t.collection.clone(), (t.id, Instant::now()));
                    }
                    errors.push(format!("{}/{}: {e}", t.collection, t.id));
                }
            }
        }
        self.source_up("store", store_up);
        let lease = *lease.borrow();
        self.register(lease).await;
        let state = Arc::clone(&self.state);
        let _ = tokio::task::spawn_blocking(move || state.engine.sweep_retired()).await;
        let synced = all_served && !targets.is_empty();
        if synced {
            let now = ragd_core::unix_now();
            self.state.metrics.replica_last_sync.set(now as i64);
        }
        self.status.update(|s| {
            s.store_reachable = store_up;
            s.last_error = errors.join("; ");
            if synced {
                s.last_sync = Some(Instant::now());
            }
        });
        synced
    }

    /// Every collection's target generation; on failure, which source failed.
    async fn targets(&self) -> Result<Vec<Target>, (&'static str, ragd_engine::cluster::Error)> {
        let mut out = Vec::new();
        match &self.etcd {
            Some(etcd) => {
                for c in etcd.collections().await.map_err(|e| ("pointer", e))? {
                    if let Some(cur) = etcd.current(&c).await.map_err(|e| ("pointer", e))? {
                        out.push(Target {
                            collection: c,
                            id: cur.pointer.id,
                            digest: Some(cur.pointer.digest),
                        });
                    }
                }
            }
            None => {
                for c in self.store.collections().await.map_err(|e| ("store", e))? {
                    match self.store.latest(&c).await {
                        Ok(id) => out.push(Target {
                            collection: c,
                            id,
                            digest: None,
                        }),
                        Err(e) if e.kind() == ragd_core::ErrorKind::NotFound => {}
                        Err(e) => return Err(("store", e)),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Downloads, verifies and swaps in one target.
    async fn load(&self, t: &Target) -> Result<(), ragd_engine::Error> {
        let t0 = Instant::now();
        let state = Arc::clone(&self.state);
        let staging = tokio::task::spawn_blocking(move || state.engine.restore_staging())
            .await
            .map_err(worker_failed)??;
        let fetched = self
            .store
            .fetch(
                &t.collection,
                t.id,
                t.digest.as_deref(),
                &staging.path().join(&t.collection),
            )
            .await?;
        let state = Arc::clone(&self.state);
        let (name, id) = (t.collection.clone(), t.id);
        let stats =
            tokio::task::spawn_blocking(move || state.engine.serve_published(&name, staging, id))
                .await
                .map_err(worker_failed)??;
        let now = ragd_core::unix_now();
        self.status.update(|s| {
            s.since.insert(t.collection.clone(), now);
        });
        tracing::info!(
            collection = %t.collection,
            generation = %t.id,
            documents = stats.documents,
            chunks = stats.chunks,
            mb = fetched.bytes as f64 / 1e6,
            download_s = fetched.seconds,
            total_s = t0.elapsed().as_secs_f64(),
            "serving a new published generation"
        );
        Ok(())
    }

    /// Records in etcd, under the current lease, what this replica serves.
    async fn register(&mut self, lease: Option<i64>) {
        let (Some(etcd), Some(lease)) = (&self.etcd, lease) else {
            return;
        };
        if self.registered_lease != Some(lease) {
            self.registered.clear();
            self.registered_lease = Some(lease);
        }
        for s in self.state.engine.served() {
            if self.registered.get(&s.collection) == Some(&s.id) {
                continue;
            }
            match etcd.register(&s.collection, &self.name, lease, s.id).await {
                Ok(()) => {
                    self.registered.insert(s.collection, s.id);
                }
                Err(e) => {
                    tracing::warn!(collection = %s.collection, error = %e, "registering the served generation in etcd failed; tried again at the next poll");
                }
            }
        }
    }

    fn loaded(&self, result: &'static str) {
        self.state
            .metrics
            .replica_loads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn source_up(&self, source: &'static str, up: bool) {
        self.state
            .metrics
            .replica_source_up
            .get_or_create(&SourceLabels { source })
            .set(i64::from(up));
    }
}

/// Holds a lease for this replica's keys: granted, renewed every third of its TTL, granted
/// anew when it expired (the poller then registers again), revoked when the server stops.
async fn keep_lease(
    etcd: Etcd,
    ttl: i64,
    lease_tx: watch::Sender<Option<i64>>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs_f64((ttl as f64 / 3.0).max(0.5));
    let mut lease: Option<i64> = None;
    loop {
        match lease {
            None => match etcd.grant(ttl).await {
                Ok(id) => {
                    lease = Some(id);
                    let _ = lease_tx.send(Some(id));
                }
                Err(e) => tracing::warn!(error = %e, "granting the replica's etcd lease failed"),
            },
            Some(id) => match etcd.keep_alive(id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        lease = id,
                        "the replica's etcd lease expired; taking a new one"
                    );
                    lease = None;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the replica's etcd lease failed"),
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(id) = lease
        && let Err(e) = etcd.revoke(id).await
    {
        tracing::warn!(error = %e, "revoking the replica's etcd lease failed; it expires by itself");
    }
}

fn worker_failed(e: tokio::task::JoinError) -> ragd_engine::Error {
    ragd_engine::Error::Io {
        context: "a replica's blocking task".into(),
        source: std::io::Error::other(e.to_string()),
    }
}
