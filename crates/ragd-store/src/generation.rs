//! Index generations: `gen-<n>/` directories holding the derived indexes, each described by a
//! `manifest.json`, with `CURRENT` naming the live one.
//!
//! A generation is written once by a rebuild (in a temporary directory, verified, then renamed)
//! and then advanced in place by checkpoints. A checkpoint commits tantivy, dumps the HNSW graph
//! under a new name carrying the applied sequence, and only then replaces the manifest (atomic
//! rename), so the manifest always names a complete dump: a crash at any point leaves the old
//! manifest with its old dump, and the DocStore log replays the rest.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::lexical::LexicalIndex;
use crate::settings::CollectionSettings;
use crate::vector::{HnswFiles, VectorIndex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// File naming the live generation.
pub(crate) const CURRENT: &str = "CURRENT";
const MANIFEST: &str = "manifest.json";
pub(crate) const BM25: &str = "bm25";

/// What a generation directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Generation number (the `n` of `gen-<n>`).
    pub generation: u64,
    /// Settings it was built with (encoder, dimension, chunking, HNSW).
    pub settings: CollectionSettings,
    /// Every DocStore write up to this sequence is in the indexes.
    pub applied_seq: u64,
    /// Documents at `applied_seq`.
    pub documents: u64,
    /// Live chunks at `applied_seq` (= tantivy documents).
    pub chunks: u64,
    /// The HNSW dump, absent while the graph is empty.
    pub hnsw: Option<HnswFiles>,
    /// sha256 of the files ragd writes itself (the HNSW dump), by name.
    pub checksums: BTreeMap<String, String>,
    /// Seconds since the Unix epoch when this manifest was written.
    pub written_at: u64,
}

/// Directory name of generation `n`.
pub(crate) fn gen_dir_name(n: u64) -> String {
    format!("gen-{n}")
}

/// Reads `CURRENT` and returns the generation number it names.
pub(crate) fn read_current(collection_dir: &Path) -> Result<u64> {
    let p = collection_dir.join(CURRENT);
    let s = std::fs::read_to_string(&p).map_err(Error::io(format!("reading {}", p.display())))?;
    s.trim()
        .strip_prefix("gen-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Corrupt {
            path: p,
            reason: format!("expected gen-<n>, found {:?}", s.trim()),
        })
}

/// Points `CURRENT` at generation `n` (atomic).
pub(crate) fn write_current(collection_dir: &Path, n: u64) -> Result<()> {
    fsutil::write_atomic(
        &collection_dir.join(CURRENT),
        format!("gen-{n}\n").as_bytes(),
    )
}

/// One loaded generation: the two derived indexes and how far they have applied the DocStore.
#[derive(Debug)]
pub struct Generation {
    /// Generation number.
    pub number: u64,
    pub(crate) dir: PathBuf,
    pub(crate) vectors: VectorIndex,
    pub(crate) lexical: LexicalIndex,
    /// DocStore sequence applied in memory.
    pub(crate) applied: AtomicU64,
    /// The manifest on disk.
    pub(crate) manifest: Mutex<Manifest>,
}

impl Generation {
    /// Creates an empty generation in `dir` (created here) for `settings`, with its manifest.
    pub(crate) fn create(
        dir: &Path,
        number: u64,
        settings: &CollectionSettings,
        capacity: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir.join(BM25))
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let lexical = LexicalIndex::create(&dir.join(BM25))?;
        let vectors = VectorIndex::new(
            settings.dim,
            settings.hnsw.m,
            settings.hnsw.ef_construction,
            capacity,
        );
        let manifest = Manifest {
            generation: number,
            settings: settings.clone(),
            applied_seq: 0,
            documents: 0,
            chunks: 0,
            hnsw: None,
            checksums: BTreeMap::new(),
            written_at: ragd_core::unix_now(),
        };
        write_manifest(dir, &manifest)?;
        Ok(Self {
            number,
            dir: dir.to_path_buf(),
            vectors,
            lexical,
            applied: AtomicU64::new(0),
            manifest: Mutex::new(manifest),
        })
    }

    /// Loads the generation in `dir`, verifying the checksums its manifest records, and marks
    /// `tombstones` as deleted in the graph.
    pub(crate) fn load(dir: &Path, tombstones: &[u64]) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        check_files(dir, &manifest)?;
        let s = &manifest.settings;
        let vectors = match &manifest.hnsw {
            Some(files) => VectorIndex::load(dir, files, s.dim)?,
            None => VectorIndex::new(s.dim, s.hnsw.m, s.hnsw.ef_construction, 0),
        };
        vectors.tombstone(tombstones.iter().copied());
        let lexical = LexicalIndex::open(&dir.join(BM25))?;
        Ok(Self {
            number: manifest.generation,
            dir: dir.to_path_buf(),
            vectors,
            lexical,
            applied: AtomicU64::new(manifest.applied_seq),
            manifest: Mutex::new(manifest),
        })
    }

    /// Sequence applied in memory.
    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Sequence recorded in the manifest on disk.
    pub fn checkpointed_seq(&self) -> u64 {
        self.manifest.lock().map(|m| m.applied_seq).unwrap_or(0)
    }

    /// The settings this generation was built with.
    pub fn settings(&self) -> CollectionSettings {
        self.manifest
            .lock()
            .map(|m| m.settings.clone())
            .unwrap_or_default()
    }

    /// Commits the BM25 writer so searches see every applied write, without dumping the graph
    /// or moving the manifest (a restart still replays from the manifest's sequence; replay is
    /// idempotent). The caller holds the collection's write lock.
    pub(crate) fn refresh_lexical(&self) -> Result<()> {
        let seq = self.applied_seq();
        if self.lexical.committed_seq()? == seq {
            return Ok(());
        }
        self.lexical.commit(seq)
    }

    /// Makes the in-memory state durable: tantivy commit, HNSW dump under a new name, manifest
    /// replace, old dump removed. The caller holds the collection's write lock.
    pub(crate) fn checkpoint(&self, documents: u64, chunks: u64) -> Result<()> {
        let seq = self.applied_seq();
        let mut manifest = self
            .manifest
            .lock()
            .map_err(|_| Error::Vector("manifest lock poisoned".into()))?
            .clone();
        if seq == manifest.applied_seq {
            return Ok(());
        }
        self.lexical.commit(seq)?;
        // Sequences only grow, so the new dump never overwrites the one the manifest names.
        let old = manifest.hnsw.take();
        manifest.hnsw = self.vectors.dump(&self.dir, &format!("hnsw-{seq}"))?;
        manifest.checksums.clear();
        if let Some(h) = &manifest.hnsw {
            for ext in ["hnsw.graph", "hnsw.data"] {
                let name = format!("{}.{ext}", h.basename);
                let sum = fsutil::sha256_file(&self.dir.join(&name))?;
                manifest.checksums.insert(name, sum);
            }
        }
        manifest.applied_seq = seq;
        manifest.documents = documents;
        manifest.chunks = chunks;
        manifest.written_at = ragd_core::unix_now();
        write_manifest(&self.dir, &manifest)?;
        if let Some(o) = old {
            for ext in ["hnsw.graph", "hnsw.data"] {
                let _ = std::fs::remove_file(self.dir.join(format!("{}.{ext}", o.basename)));
            }
        }
        if let Ok(mut m) = self.manifest.lock() {
            *m = manifest;
        }
        Ok(())
    }

    /// Tombstones known to the graph.
    pub(crate) fn tombstone_set_len(&self) -> usize {
        self.vectors.tombstones()
    }
}

/// Reads the manifest of generation directory `dir`.
pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let bytes = std::fs::read(&mpath).map_err(Error::io(format!("reading {}", mpath.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: mpath,
        reason: e.to_string(),
    })
}

/// Checks the files `m` records checksums for (the HNSW dump) in generation directory `dir`.
pub(crate) fn check_files(dir: &Path, m: &Manifest) -> Result<()> {
    for (name, want) in &m.checksums {
        let got = fsutil::sha256_file(&dir.join(name))?;
        if &got != want {
            return Err(Error::Corrupt {
                path: dir.join(name),
                reason: format!("sha256 is {got}, the manifest says {want}"),
            });
        }
    }
    Ok(())
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(m).map_err(Error::json("encoding the manifest"))?;
    fsutil::write_atomic(&dir.join(MANIFEST), &json)
}
