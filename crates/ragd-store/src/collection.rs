//! `Collection`: one collection directory — the DocStore plus its live index generation — and
//! the operations that keep the two consistent: acknowledged writes, checkpoints, replay on open,
//! and rebuilds into a new generation.
//!
//! Threads: any thread may search (the live generation is behind an `Arc` that a rebuild swaps).
//! Writes, checkpoints and rebuilds serialize on one mutex; they are CPU and disk work and must
//! not run on an async runtime's workers.

use crate::docstore::{
    ChunkRecord, DocRecord, DocStore, DocWrite, LogOp, StoreCounts, WriteOutcome,
};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::generation::{self, Generation, Manifest, gen_dir_name};
use crate::lexical::{LexicalDoc, LexicalHit, SearchFilter};
use crate::settings::{CollectionSettings, validate_name};
use crate::vector::{VectorHit, VectorIndex};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

const DOCSTORE: &str = "docstore.redb";
/// Filters that leave at most this many chunks are scored exactly rather than by a filtered
/// graph walk.
const EXACT_FILTER_MAX: usize = 2048;

/// A consistent copy of a collection made by [`Collection::snapshot`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The copied generation's manifest, as checkpointed for the copy.
    pub manifest: Manifest,
    /// Last DocStore sequence in the copy: the manifest's applied sequence, or later when a
    /// re-chunking rebuild had DocStore-only entries pending (the copy replays them on open).
    pub seq: u64,
    /// Every file of the copy, sorted by path.
    pub files: Vec<SnapshotFile>,
}

/// One file of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Path relative to the copy's directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// How many times a snapshot links the live generation again when a tantivy merge replaced
/// segment files while they were being linked.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// `ragd collections stats`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionStats {
    /// Collection name.
    pub name: String,
    /// Stored documents.
    pub documents: u64,
    /// Live chunks.
    pub chunks: u64,
    /// Chunks replaced or deleted, kept until the next rebuild.
    pub tombstones: u64,
    /// Live index generation.
    pub generation: u64,
    /// Bytes on disk (DocStore and every generation directory).
    pub bytes: u64,
    /// Last DocStore sequence.
    pub seq: u64,
    /// Sequence the live generation has checkpointed.
    pub checkpointed_seq: u64,
    /// The collection's settings.
    pub settings: CollectionSettings,
}

/// What a write did, and where its time went.
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// One outcome per write, in order.
    pub outcomes: Vec<WriteOutcome>,
    /// Seconds in the DocStore transaction (commit and fsync included).
    pub commit_seconds: f64,
    /// Seconds applying it to the HNSW graph and the BM25 writer.
    pub index_seconds: f64,
}

/// What a rebuild produced.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The new generation.
    pub generation: u64,
    /// The generation it replaced.
    pub previous_generation: u64,
    /// Documents in it.
    pub documents: u64,
    /// Chunks in it.
    pub chunks: u64,
    /// Tombstoned chunks dropped from the DocStore.
    pub dropped_tombstones: u64,
    /// DocStore sequence it reflects.
    pub applied_seq: u64,
    /// Wall time of the index build, verification and switch.
    pub seconds: f64,
}

/// How a collection was brought up to date when it was opened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Log entries replayed into the derived indexes.
    pub replayed: u64,
    /// True when the derived indexes could not be replayed (log pruned past them, or settings
    /// changed) and were rebuilt from the DocStore.
    pub rebuilt: bool,
    /// Why the derived indexes were rebuilt, when they were damaged (unreadable, failing their
    /// checksums, disagreeing with the DocStore).
    pub repaired: Option<String>,
}

/// One collection, open.
#[derive(Debug)]
pub struct Collection {
    name: String,
    dir: PathBuf,
    store: DocStore,
    live: RwLock<Arc<Generation>>,
    write: Mutex<()>,
    recovery: Recovery,
    /// Set when an operation failed in a way that may have left the open handles unusable (an
    /// I/O error: a full disk): the owner should drop this handle and open the collection
    /// again, which replays the DocStore's log into fresh indexes.
    broken: AtomicBool,
}

impl Collection {
    /// Creates collection `name` under `data_dir` and opens it. It appears complete or not at
    /// all: it is assembled in a temporary directory and renamed into place.
    pub fn create(data_dir: &Path, name: &str, settings: &CollectionSettings) -> Result<Self> {
        validate_name(name)?;
        settings.validate()?;
        if settings.dim == 0 {
            return Err(Error::InvalidSettings(
                "dim must be the encoder's dimension".into(),
            ));
        }
        let dir = data_dir.join(name);
        if dir.exists() {
            return Err(Error::CollectionExists(name.into()));
        }
        std::fs::create_dir_all(data_dir)
            .map_err(Error::io(format!("creating {}", data_dir.display())))?;
        let tmp = data_dir.join(format!(".creating-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
        let build = || -> Result<()> {
            drop(DocStore::create(&tmp.join(DOCSTORE), name, settings)?);
            drop(Generation::create(
                &tmp.join(gen_dir_name(1)),
                1,
                settings,
                0,
            )?);
            generation::write_current(&tmp, 1)?;
            fsutil::sync_dir(&tmp)
        };
        if let Err(e) = build() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // rename(2) onto an existing non-empty directory fails, so a concurrent create of the
        // same name loses cleanly.
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(if dir.exists() {
                Error::CollectionExists(name.into())
            } else {
                Error::Io {
                    context: format!("creating {}", dir.display()),
                    source: e,
                }
            });
        }
        fsutil::sync_dir(data_dir)?;
        Self::open(data_dir, name)
    }

    /// Opens collection `name`, loads its live generation and replays any DocStore writes the
    /// generation has not checkpointed (or rebuilds it from the DocStore when it cannot replay).
    ///
    /// A damaged file can make a dependency panic rather than fail (a tantivy assertion, redb's
    /// `unreachable!`): the panic is caught here and becomes this collection's `Corrupt` error,
    /// so it never crosses into the caller (a server's other collections, its locks).
    pub fn open(data_dir: &Path, name: &str) -> Result<Self> {
        validate_name(name)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_unguarded(data_dir, name)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Corrupt {
                path: data_dir.join(name),
                reason: format!("damaged: opening it failed with {}", panic_message(&*panic)),
            })
        })
    }

    fn open_unguarded(data_dir: &Path, name: &str) -> Result<Self> {
        let dir = data_dir.join(name);
        if !dir.join(DOCSTORE).is_file() {
            return Err(Error::CollectionNotFound(name.into()));
        }
        // The DocStore is the system of record: if it cannot be opened, nothing is served.
        let store = DocStore::open(&dir.join(DOCSTORE), name)?;
        let settings = store.settings()?;
        if settings.reembedding {
            tracing::warn!(
                collection = %name,
                precision = %settings.encoder_precision,
                "a rebuild to a new encoder precision was interrupted: some chunks still hold \
                 vectors of the previous precision; run the rebuild with this precision again"
            );
        }
        let tombstones = store.tombstones()?;
        // Everything else is derived from it. A generation that cannot be loaded (missing or
        // damaged CURRENT or manifest, a checksum that fails, a dependency that panics on a
        // damaged file) is rebuilt from the DocStore rather than refused.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let current = generation::read_current(&dir)?;
            Generation::load(&dir.join(gen_dir_name(current)), &tombstones)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Corrupt {
                path: dir.clone(),
                reason: format!(
                    "loading the live generation failed with {}",
                    panic_message(&*panic)
                ),
            })
        });
        let generation = match loaded {
            Ok(g) => g,
            Err(e) if repairable(&e) => {
                tracing::warn!(collection = %name, error = %e, "the live generation is damaged; rebuilding it from the docstore");
                let c = Self::repair(dir, name, store, &e)?;
                c.remove_stale_dirs(c.live().number);
                return Ok(c);
            }
            Err(e) => return Err(e),
        };
        let current = generation.number;
        let mut c = Self {
            name: name.into(),
            dir,
            store,
            live: RwLock::new(Arc::new(generation)),
            write: Mutex::new(()),
            recovery: Recovery::default(),
            broken: AtomicBool::new(false),
        };
        if let Err(e) = c.recover(&settings) {
            if !repairable(&e) {
                return Err(e);
            }
            tracing::warn!(collection = %c.name, error = %e, "replaying the log into the live generation failed; rebuilding it from the docstore");
            c.rebuild(|_, _| {})?;
            c.recovery.rebuilt = true;
            c.recovery.repaired = Some(e.to_string());
        }
        // Never serve derived indexes that disagree with the DocStore: whatever the cause (a
        // crash at an unforeseen point, a bug), they are rebuilt from it.
        if !c.recovery.rebuilt
            && let Err(e) = c.verify_counts()
        {
            tracing::warn!(collection = %c.name, error = %e, "derived indexes disagree with the docstore; rebuilding them from it");
            c.rebuild(|_, _| {})?;
            c.recovery.rebuilt = true;
            c.recovery.repaired = Some(e.to_string());
        }
        c.remove_stale_dirs(current);
        Ok(c)
    }

    /// Opens a collection whose live generation cannot be loaded: builds a new generation from
    /// the DocStore under a number no directory uses yet, and points `CURRENT` at it.
    fn repair(dir: PathBuf, name: &str, store: DocStore, damage: &Error) -> Result<Self> {
        let used = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("listing {}", dir.display())))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let n = n
                    .strip_prefix("gen-")
                    .or_else(|| n.strip_prefix(".building-"))?;
                n.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        let number = used.max(generation::read_current(&dir).unwrap_or(0)) + 1;
        let settings = store.settings()?;
        let counts = store.counts()?;
        let (fresh, seq) = build_generation(&store, &dir, number, &settings, counts, |_, _| {})?;
        generation::write_current(&dir, number)?;
        store.drop_tombstoned()?;
        store.prune_log(seq)?;
        Ok(Self {
            name: name.into(),
            dir,
            store,
            live: RwLock::new(Arc::new(fresh)),
            write: Mutex::new(()),
            recovery: Recovery {
                replayed: 0,
                rebuilt: true,
                repaired: Some(damage.to_string()),
            },
            broken: AtomicBool::new(false),
        })
    }

    fn recover(&mut self, settings: &CollectionSettings) -> Result<()> {
        let live = self.live();
        let built = live.settings();
        let compatible = built.encoder == settings.encoder
            && built.dim == settings.dim
            && built.encoder_precision == settings.encoder_precision;
        let replayable = live.applied_seq() >= self.store.log_pruned()?;
        if !compatible || !replayable {
            tracing::warn!(
                collection = %self.name,
                compatible,
                replayable,
                "derived indexes cannot be replayed; rebuilding them from the docstore"
            );
            drop(live);
            self.rebuild(|_, _| {})?;
            self.recovery.rebuilt = true;
            return Ok(());
        }
        let ops = self.store.log_after(live.applied_seq())?;
        if ops.is_empty() {
            return Ok(());
        }
        tracing::info!(collection = %self.name, ops = ops.len(), "replaying docstore log");
        self.recovery.replayed = ops.len() as u64;
        let _w = self.lock()?;
        apply(&self.store, &live, &ops)?;
        self.checkpoint_locked(&live)
    }

    /// Removes leftovers of interrupted rebuilds and generations no longer named by `CURRENT`.
    fn remove_stale_dirs(&self, current: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let live = gen_dir_name(self.live().number.max(current));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with("gen-") && name != live) || name.starts_with(".building-") {
                tracing::info!(collection = %self.name, dir = %name, "removing stale generation");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Names of the collections under `data_dir`, sorted.
    pub fn list(data_dir: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(Error::Io {
                    context: format!("listing {}", data_dir.display()),
                    source: e,
                });
            }
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_ok() && e.path().join(DOCSTORE).is_file() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes collection `name`: refused while another process has it open; the directory
    /// disappears atomically (renamed aside, then removed).
    pub fn delete(data_dir: &Path, name: &str) -> Result<()> {
        validate_name(name)?;
        let dir = data_dir.join(name);
        if !dir.join(DOCSTORE).is_file() {
            return Err(Error::CollectionNotFound(name.into()));
        }
        // Holding the DocStore lock proves nobody else is using it. redb takes its file lock
        // before it reads anything, so a DocStore too damaged to open (an error or a panic) is
        // not in use by anyone either: a damaged collection can still be deleted.
        let path = dir.join(DOCSTORE);
        let lock = match std::panic::catch_unwind(|| DocStore::open(&path, name)) {
            Ok(Ok(store)) => Some(store),
            Ok(Err(Error::InUse(n))) => return Err(Error::InUse(n)),
            Ok(Err(_)) | Err(_) => None,
        };
        let aside = data_dir.join(format!(".deleting-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &aside).map_err(Error::io(format!("deleting {}", dir.display())))?;
        drop(lock);
        fsutil::sync_dir(data_dir)?;
        std::fs::remove_dir_all(&aside).map_err(Error::io(format!("removing {}", aside.display())))
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Settings in force (those of the DocStore; the live generation's manifest records what it
    /// was built with).
    pub fn settings(&self) -> Result<CollectionSettings> {
        self.store.settings()
    }

    /// How the collection was recovered when opened.
    pub fn recovery(&self) -> Recovery {
        self.recovery.clone()
    }

    /// True once an operation failed in a way that may have left this handle unusable (an I/O
    /// error such as a full disk): drop it and open the collection again.
    pub fn needs_reopen(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Passes `r` through, marking the handle for reopening when it failed with an I/O error.
    fn watch<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && e.needs_reopen()
        {
            tracing::warn!(collection = %self.name, error = %e, "an I/O error left the collection needing a reopen");
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// The live generation.
    pub fn live(&self) -> Arc<Generation> {
        match self.live.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, ()>> {
        self.write
            .lock()
            .map_err(|_| Error::Vector("collection write lock poisoned".into()))
    }

    /// DocStore counts.
    pub fn counts(&self) -> Result<StoreCounts> {
        self.store.counts()
    }

    /// Counts, generation and size on disk.
    pub fn stats(&self) -> Result<CollectionStats> {
        let c = self.store.counts()?;
        let live = self.live();
        Ok(CollectionStats {
            name: self.name.clone(),
            documents: c.documents,
            chunks: c.chunks,
            tombstones: c.tombstones,
            generation: live.number,
            bytes: fsutil::dir_size(&self.dir),
            seq: c.seq,
            checkpointed_seq: live.checkpointed_seq(),
            settings: self.store.settings()?,
        })
    }

    /// Stored content hashes, to skip unchanged documents before chunking and embedding.
    pub fn hashes(&self, ids: &[&str]) -> Result<Vec<Option<String>>> {
        self.store.hashes(ids)
    }

    /// A stored document and its raw text.
    pub fn document(&self, id: &str) -> Result<Option<(DocRecord, String)>> {
        self.store.document(id)
    }

    /// Document records (no raw text), `None` where absent.
    pub fn doc_records(&self, ids: &[&str]) -> Result<Vec<Option<DocRecord>>> {
        self.store.doc_records(ids)
    }

    /// Every live chunk id with its vector (exact-search baselines and evaluation).
    pub fn live_vectors(&self) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut out = Vec::new();
        self.store.scan_live(4096, |group| {
            out.extend(group.into_iter().map(|c| (c.id, c.vector)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every stored document id, sorted.
    pub fn document_ids(&self) -> Result<Vec<String>> {
        self.store.document_ids()
    }

    /// Chunk records by id.
    pub fn chunks(&self, ids: &[u64]) -> Result<Vec<(u64, ChunkRecord)>> {
        self.store.chunks(ids)
    }

    /// Stored vectors by chunk id.
    pub fn vectors(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        self.store.vectors(ids)
    }

    /// Commits a batch to the DocStore — the acknowledgement point — and applies it to the live
    /// indexes. Dense search sees the new chunks at once; BM25 after the next [`checkpoint`].
    ///
    /// [`checkpoint`]: Self::checkpoint
    pub fn write(&self, batch: Vec<DocWrite>) -> Result<WriteReport> {
        self.watch(self.write_locked(batch))
    }

    fn write_locked(&self, batch: Vec<DocWrite>) -> Result<WriteReport> {
        let _w = self.lock()?;
        let live = self.live();
        let dim = self.store.settings()?.dim;
        let t0 = Instant::now();
        let behind = live.applied_seq();
        let (outcomes, ops) = self.store.write(batch, dim)?;
        let commit_seconds = t0.elapsed().as_secs_f64();
        // Entries written to the DocStore only (a re-chunking rebuild in progress) lie between
        // what the live generation applied and this batch. They are applied first, in order: the
        // applied sequence must never pass an entry it skipped, because a checkpoint prunes the
        // log up to it and nothing would replay the skipped entries after a crash.
        let ops = match ops.first() {
            Some(first) if first.seq > behind + 1 => self.store.log_after(behind)?,
            _ => ops,
        };
        // The batch is durable now. Should applying it fail, the generation stays behind and the
        // next open replays the log; the caller's documents are safe either way.
        if let Err(e) = apply(&self.store, &live, &ops) {
            tracing::error!(collection = %self.name, error = %e, "applying a committed batch to the indexes failed; it will be replayed on the next open");
            return Err(e);
        }
        Ok(WriteReport {
            outcomes,
            commit_seconds,
            index_seconds: t0.elapsed().as_secs_f64() - commit_seconds,
        })
    }

    /// Makes BM25 see every acknowledged write (a tantivy commit; cheap next to a checkpoint,
    /// which also dumps the HNSW graph). Dense search sees writes at once without it.
    pub fn refresh(&self) -> Result<()> {
        let _w = self.lock()?;
        self.watch(self.live().refresh_lexical())
    }

    /// Makes the live generation durable up to the last write (tantivy commit, HNSW dump,
    /// manifest), so a restart replays nothing before it; also makes BM25 see every write.
    pub fn checkpoint(&self) -> Result<()> {
        let _w = self.lock()?;
        let live = self.live();
        self.watch(self.checkpoint_locked(&live))
    }

    fn checkpoint_locked(&self, live: &Generation) -> Result<()> {
        let c = self.store.counts()?;
        live.checkpoint(c.documents, c.chunks)?;
        self.store.prune_log(live.applied_seq())
    }

    /// The `k` nearest chunks to `query` (dense), with candidate list `ef` (collection default
    /// when `None`).
    pub fn search_dense(
        &self,
        query: &[f32],
        k: usize,
        ef: Option<usize>,
    ) -> Result<Vec<VectorHit>> {
        self.search_dense_filtered(query, k, ef, None)
    }

    /// Dense search among the chunks `filter` lets through (as of the last checkpoint). The
    /// filter is applied inside the graph walk, so `k` hits come back when `k` exist; when the
    /// filter leaves few chunks (where a filtered graph walk can strand), they are scored exactly
    /// instead.
    pub fn search_dense_filtered(
        &self,
        query: &[f32],
        k: usize,
        ef: Option<usize>,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<VectorHit>> {
        let live = self.live();
        let ef = ef.unwrap_or(live.settings().hnsw.ef_search);
        let Some(filter) = filter.filter(|f| !f.is_empty()) else {
            return live.vectors.search(query, k, ef, None);
        };
        let allowed = live.lexical.matching_chunks(filter)?;
        if allowed.len() <= EXACT_FILTER_MAX.max(live.vectors.points() / 50) {
            let ids: Vec<u64> = allowed
                .iter()
                .filter(|id| !live.vectors.is_tombstoned(*id))
                .collect();
            let mut hits: Vec<VectorHit> = self
                .store
                .vectors(&ids)?
                .into_iter()
                .map(|(chunk, v)| VectorHit {
                    chunk,
                    score: crate::vector::dot(query, &v),
                })
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk)));
            hits.truncate(k);
            return Ok(hits);
        }
        let accept = |id: u64| allowed.contains(id);
        live.vectors.search(query, k, ef, Some(&accept))
    }

    /// The `k` best chunks for `query` by BM25.
    pub fn search_lexical(&self, query: &str, k: usize) -> Result<Vec<LexicalHit>> {
        self.search_lexical_filtered(query, k, None)
    }

    /// BM25 search among the chunks `filter` lets through (the filter is part of the query).
    pub fn search_lexical_filtered(
        &self,
        query: &str,
        k: usize,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<LexicalHit>> {
        self.live().lexical.search(query, k, filter)
    }

    /// BM25 statistics of `terms` in the live generation: live chunks and, per term, the chunks
    /// holding it (see [`LexicalIndex::doc_freqs`]).
    pub fn doc_freqs(&self, terms: &[String]) -> Result<(u64, Vec<u64>)> {
        self.live().lexical.doc_freqs(terms)
    }

    /// Checks the live generation's files (the HNSW dump against the manifest's sha256, every
    /// BM25 file against its checksum) and that the indexes hold exactly the DocStore's live
    /// chunks. Run after a checkpoint.
    pub fn verify(&self) -> Result<()> {
        self.verify_counts()?;
        let live = self.live();
        let current = generation::read_current(&self.dir)?;
        if current != live.number {
            return Err(Error::Corrupt {
                path: self.dir.join(generation::CURRENT),
                reason: format!(
                    "names generation {current}; generation {} is live",
                    live.number
                ),
            });
        }
        let on_disk = generation::read_manifest(&live.dir)?;
        if on_disk != self.manifest() {
            return Err(Error::Corrupt {
                path: live.dir.clone(),
                reason: "the manifest on disk is not the one loaded".into(),
            });
        }
        generation::check_files(&live.dir, &on_disk)?;
        live.lexical.check_files()
    }

    /// Checks that the live indexes hold exactly the DocStore's live chunks: applied sequence,
    /// BM25 document count and HNSW points net of tombstones.
    fn verify_counts(&self) -> Result<()> {
        let _w = self.lock()?;
        let live = self.live();
        let c = self.store.counts()?;
        let corrupt = |reason: String| Error::Corrupt {
            path: live.dir.clone(),
            reason,
        };
        if live.applied_seq() != c.seq {
            return Err(corrupt(format!(
                "indexes applied sequence {} but the docstore is at {}",
                live.applied_seq(),
                c.seq
            )));
        }
        let lexical = live.lexical.num_docs();
        if lexical != c.chunks {
            return Err(corrupt(format!(
                "bm25 holds {lexical} chunks, the docstore {}",
                c.chunks
            )));
        }
        let dense = live.vectors.points() as u64 - live.tombstone_set_len() as u64;
        if dense != c.chunks {
            return Err(corrupt(format!(
                "hnsw holds {dense} live chunks, the docstore {}",
                c.chunks
            )));
        }
        Ok(())
    }

    /// Replaces the collection's settings (before a rebuild that re-chunks or re-embeds). The
    /// live generation keeps serving with the settings it was built with.
    pub fn set_settings(&self, settings: &CollectionSettings) -> Result<()> {
        settings.validate()?;
        let _w = self.lock()?;
        self.watch(self.store.set_settings(settings))
    }

    /// Writes a batch to the DocStore only, leaving the live indexes behind (a rebuild re-chunking
    /// or re-embedding everything; the rebuild that follows builds the new generation from the
    /// DocStore). If the process dies before that rebuild, the next open replays the log.
    pub fn write_docstore_only(&self, batch: Vec<DocWrite>) -> Result<Vec<WriteOutcome>> {
        let _w = self.lock()?;
        let dim = self.store.settings()?.dim;
        Ok(self.watch(self.store.write(batch, dim))?.0)
    }

    /// Builds a new generation from the DocStore: in `.building-<n>`, then verified (manifest
    /// checksums, HNSW points and BM25 documents equal to the DocStore's live chunks), renamed to
    /// `gen-<n>`, made live by rewriting `CURRENT`, and only then are tombstoned chunks dropped
    /// from the DocStore and the old generation removed. Searches keep running on the old
    /// generation until the switch. `progress(done, total)` counts chunks.
    pub fn rebuild(&self, progress: impl FnMut(u64, u64)) -> Result<RebuildReport> {
        let t0 = Instant::now();
        let _w = self.lock()?;
        self.watch(self.rebuild_locked(t0, progress))
    }

    fn rebuild_locked(&self, t0: Instant, progress: impl FnMut(u64, u64)) -> Result<RebuildReport> {
        let old = self.live();
        let settings = self.store.settings()?;
        let counts = self.store.counts()?;
        let number = old.number + 1;
        let (fresh, seq) =
            build_generation(&self.store, &self.dir, number, &settings, counts, progress)?;
        generation::write_current(&self.dir, number)?;
        match self.live.write() {
            Ok(mut l) => *l = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        let dropped = self.store.drop_tombstoned()?;
        self.store.prune_log(seq)?;
        let old_dir = old.dir.clone();
        drop(old);
        let _ = std::fs::remove_dir_all(&old_dir);
        Ok(RebuildReport {
            generation: number,
            previous_generation: number - 1,
            documents: counts.documents,
            chunks: counts.chunks,
            dropped_tombstones: dropped,
            applied_seq: seq,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Writes a consistent copy of the collection to `dest` (which must not exist), laid out as
    /// a collection directory — `docstore.redb`, `CURRENT`, `gen-<n>/` — so that opening it as a
    /// collection finds the same documents, chunks and indexes with nothing to replay or
    /// rebuild. Under the write lock: a checkpoint, hard links to the live generation's files
    /// (immutable once checkpointed: dumps get new names, manifests are renamed into place) and a
    /// read snapshot of the DocStore; the DocStore copy is written from that snapshot after the
    /// lock is released, so writes wait only for the checkpoint and the links. Nothing is left at
    /// `dest` when it fails.
    pub fn snapshot(&self, dest: &Path) -> Result<Snapshot> {
        std::fs::create_dir(dest).map_err(Error::io(format!("creating {}", dest.display())))?;
        let r = self.snapshot_into(dest);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        r
    }

    fn snapshot_into(&self, dest: &Path) -> Result<Snapshot> {
        let (manifest, read) = {
            let _w = self.lock()?;
            let live = self.live();
            self.watch(self.checkpoint_locked(&live))?;
            let manifest = self.manifest();
            let read = self.store.read_snapshot()?;
            link_generation(&live.dir, &dest.join(gen_dir_name(live.number)))?;
            (manifest, read)
        };
        read.write_to(&dest.join(DOCSTORE), &self.name)?;
        let seq = read.seq()?;
        drop(read);
        generation::write_current(dest, manifest.generation)?;
        fsutil::sync_dir(dest)?;
        let files = fsutil::file_digests(dest)?
            .into_iter()
            .map(|(path, bytes, sha256)| SnapshotFile {
                path,
                bytes,
                sha256,
            })
            .collect();
        Ok(Snapshot {
            manifest,
            seq,
            files,
        })
    }

    /// The live generation's manifest.
    pub fn manifest(&self) -> Manifest {
        let live = self.live();
        let m = live.manifest.lock().map(|m| m.clone());
        m.unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Links generation directory `src` at `dst`, leaving out lock and temporary files. tantivy
/// merges in the background and deletes the segments a merge replaced, possibly between the
/// listing and the linking: the copy is checked (every file of its last commit present and
/// passing its checksum) and linked again when it is not whole.
fn link_generation(src: &Path, dst: &Path) -> Result<()> {
    let skip = |name: &str| name.ends_with(".lock") || name.ends_with(".tmp");
    let mut last = None;
    for _ in 0..SNAPSHOT_ATTEMPTS {
        fsutil::link_tree(src, dst, &skip)?;
        let checked = generation::read_manifest(dst)
            .and_then(|m| generation::check_files(dst, &m))
            .and_then(|()| crate::lexical::LexicalIndex::check_dir(&dst.join(generation::BM25)));
        match checked {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "generation changed while it was linked; linking it again");
                last = Some(e);
                std::fs::remove_dir_all(dst)
                    .map_err(Error::io(format!("removing {}", dst.display())))?;
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Corrupt {
        path: src.to_path_buf(),
        reason: "it could not be linked whole".into(),
    }))
}

/// Builds generation `number` of the collection in `dir` from the DocStore: in
/// `.building-<n>`, then verified (manifest checksums, HNSW points and BM25 documents equal to
/// the DocStore's live chunks) and renamed to `gen-<n>`. Returns it loaded fresh from disk, with
/// the DocStore sequence it reflects; `CURRENT` is the caller's to move. `progress(done, total)`
/// counts chunks.
fn build_generation(
    store: &DocStore,
    dir: &Path,
    number: u64,
    settings: &CollectionSettings,
    counts: StoreCounts,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Generation, u64)> {
    let building = dir.join(format!(".building-{number}"));
    let _ = std::fs::remove_dir_all(&building);
    let built = (|| -> Result<u64> {
        let g = Generation::create(&building, number, settings, counts.chunks as usize)?;
        let mut done = 0;
        let seq = store.scan_live(2048, |group| {
            let points: Vec<(u64, &[f32])> =
                group.iter().map(|c| (c.id, c.vector.as_slice())).collect();
            g.vectors.insert(&points)?;
            let docs: Vec<LexicalDoc<'_>> = group
                .iter()
                .map(|c| LexicalDoc {
                    chunk: c.id,
                    doc_id: &c.chunk.doc_id,
                    title: &c.title,
                    text: &c.chunk.span.text,
                    metadata: &c.metadata,
                })
                .collect();
            g.lexical.add(&docs)?;
            done += group.len() as u64;
            progress(done, counts.chunks);
            Ok(())
        })?;
        g.applied.store(seq, Ordering::Release);
        g.checkpoint(counts.documents, counts.chunks)?;
        Ok(seq)
    })();
    let seq = match built {
        Ok(seq) => seq,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    let final_dir = dir.join(gen_dir_name(number));
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&building, &final_dir)
        .map_err(Error::io(format!("renaming {}", building.display())))?;
    fsutil::sync_dir(dir)?;
    // Verify what is on disk, loaded fresh, before anyone is switched to it.
    match Generation::load(&final_dir, &[]).and_then(|g| {
        verify_fresh(&g, counts.chunks, seq)?;
        Ok(g)
    }) {
        Ok(g) => Ok((g, seq)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&final_dir);
            Err(e)
        }
    }
}

/// True when a failure to load or replay the live generation means its files are damaged
/// (rebuild them from the DocStore), not that the environment failed (a full disk, too many
/// open files, permissions, another writer: retrying later is right, rebuilding is not).
fn repairable(e: &Error) -> bool {
    if e.is_storage_full() {
        return false;
    }
    match e {
        Error::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::UnexpectedEof
        ),
        Error::Lexical(tantivy::TantivyError::LockFailure(..)) => false,
        Error::Corrupt { .. } | Error::Json { .. } | Error::Vector(_) | Error::Lexical(_) => true,
        _ => false,
    }
}

/// The message a panic carried (`&str` or `String` payloads), for an error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("a panic ({})", msg.chars().take(200).collect::<String>())
}

fn verify_fresh(g: &Generation, chunks: u64, seq: u64) -> Result<()> {
    let bad = |reason: String| Error::Corrupt {
        path: g.dir.clone(),
        reason: format!("new generation failed verification: {reason}"),
    };
    if g.applied_seq() != seq {
        return Err(bad(format!(
            "applied sequence {} instead of {seq}",
            g.applied_seq()
        )));
    }
    if g.vectors.points() as u64 != chunks {
        return Err(bad(format!(
            "{} HNSW points for {chunks} chunks",
            g.vectors.points()
        )));
    }
    if g.lexical.num_docs() != chunks {
        return Err(bad(format!(
            "{} BM25 documents for {chunks} chunks",
            g.lexical.num_docs()
        )));
    }
    Ok(())
}

/// Applies committed log entries to a generation's indexes, in order.
fn apply(store: &DocStore, g: &Generation, ops: &[LogOp]) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let added: Vec<u64> = ops.iter().flat_map(|o| o.added.iter().copied()).collect();
    let vectors = store.vectors(&added)?;
    let chunks = store.chunks(&added)?;
    if vectors.len() != added.len() || chunks.len() != added.len() {
        return Err(Error::Corrupt {
            path: "docstore.redb".into(),
            reason: "a logged chunk has no record or vector".into(),
        });
    }
    let points: Vec<(u64, &[f32])> = vectors.iter().map(|(id, v)| (*id, v.as_slice())).collect();
    g.vectors.insert(&points)?;
    // Titles and metadata come from the owning documents (one read per document).
    let mut docs: std::collections::HashMap<&str, DocRecord> = std::collections::HashMap::new();
    for op in ops.iter().filter(|o| !o.added.is_empty()) {
        if let Some((rec, _)) = store.document(&op.doc_id)? {
            docs.insert(op.doc_id.as_str(), rec);
        }
    }
    let lex: Vec<LexicalDoc<'_>> = chunks
        .iter()
        .filter_map(|(id, c)| {
            // A document deleted by a later entry has no record; chunks of an older version take
            // the current title and metadata. Either way a later entry removes them below.
            let d = docs.get(c.doc_id.as_str())?;
            Some(LexicalDoc {
                chunk: *id,
                doc_id: &c.doc_id,
                title: &d.title,
                text: &c.span.text,
                metadata: &d.metadata,
            })
        })
        .collect();
    g.lexical.add(&lex)?;
    let removed: Vec<u64> = ops.iter().flat_map(|o| o.removed.iter().copied()).collect();
    g.lexical.delete(removed.iter().copied())?;
    g.vectors.tombstone(removed);
    g.applied.store(ops[ops.len() - 1].seq, Ordering::Release);
    Ok(())
}

/// Exposed for the engine's dense search over a generation.
impl Generation {
    /// The vector index.
    pub fn vectors(&self) -> &VectorIndex {
        &self.vectors
    }
}
