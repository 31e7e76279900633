//! `VectorIndex`: the HNSW graph (hnsw_rs) over chunk embeddings.
//!
//! Points are keyed by chunk id. hnsw_rs cannot remove points, so replaced and deleted chunks stay
//! in the graph as tombstones until a rebuild; searches skip them *during* the graph walk (a
//! filter on the candidate set), so a query still returns `k` live hits when they exist.

use crate::error::{Error, Result};
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{AnnT, Distance, Hnsw};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::RwLock;

/// Cosine distance on L2-normalised vectors: `1 − dot`, clamped at 0. (anndists' `DistDot`
/// asserts on float rounding just above 1, which a server cannot afford.)
#[derive(Debug, Default, Clone, Copy)]
pub struct CosineDistance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

ragd_core::vectorized_fn! {
    /// Dot product in four independent 8-lane accumulators, so the compiler keeps it in SIMD
    /// registers (AVX2 ones on a CPU that has them: see `ragd_core::cpu`) and the additions of
    /// one accumulator do not wait on each other. At most AVX2 (see
    /// `ragd_core::cpu::dispatch_avx2`): the same distances, and graphs, on every x86-64 CPU
    /// with AVX2.
    pub fn dot<'a>(a: &'a [f32], b: &'a [f32]) -> f32 => avx2 dot_lanes;
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut lanes = [0f32; 8];
    for i in 0..8 {
        lanes[i] = (acc[i] + acc[i + 8]) + (acc[i + 16] + acc[i + 24]);
    }
    let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A set of chunk ids as a bit vector (chunk ids are dense counters).
#[derive(Debug, Default, Clone)]
pub struct IdSet {
    bits: Vec<u64>,
    len: usize,
}

impl IdSet {
    /// Adds `id`.
    pub fn insert(&mut self, id: u64) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    /// True when `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// The ids in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a generation's graph lives: `<basename>.hnsw.graph` and `<basename>.hnsw.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswFiles {
    /// Basename in the generation directory.
    pub basename: String,
    /// Points in the dump.
    pub points: u64,
}

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorHit {
    /// Chunk id.
    pub chunk: u64,
    /// Cosine similarity.
    pub score: f32,
}

/// The HNSW graph plus the tombstones it must skip.
pub struct VectorIndex {
    hnsw: Hnsw<'static, f32, CosineDistance>,
    dim: usize,
    tombstones: RwLock<IdSet>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("points", &self.hnsw.get_nb_point())
            .field("dim", &self.dim)
            .finish()
    }
}

impl VectorIndex {
    /// An empty graph.
    pub fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> Self {
        Self {
            hnsw: Hnsw::new(m, capacity.max(1024), 16, ef_construction, CosineDistance),
            dim,
            tombstones: RwLock::new(IdSet::default()),
        }
    }

    /// Loads a dump written by [`VectorIndex::dump`]. The caller has verified the files'
    /// checksums, so hnsw_rs's own asserts should not fire; if they do, the panic is caught and
    /// reported as corruption.
    pub fn load(dir: &Path, files: &HnswFiles, dim: usize) -> Result<Self> {
        // hnsw_rs ties the loaded graph's lifetime to its loader even when (as here, without
        // mmap) the graph owns all its data. The loader is a few hundred bytes and is leaked once
        // per generation load so the graph can be `'static`.
        let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, &files.basename)));
        let mut slot = Some(loader);
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slot.take().map(|l| l.load_hnsw::<f32, CosineDistance>())
        }));
        let hnsw = match loaded {
            Ok(Some(Ok(h))) => h,
            Ok(Some(Err(e))) => {
                return Err(Error::Vector(format!("loading {}: {e}", files.basename)));
            }
            Ok(None) | Err(_) => {
                return Err(Error::Corrupt {
                    path: dir.join(&files.basename),
                    reason: "the HNSW dump does not load".into(),
                });
            }
        };
        if hnsw.get_nb_point() as u64 != files.points {
            return Err(Error::Corrupt {
                path: dir.join(&files.basename),
                reason: format!(
                    "the HNSW dump has {} points, the manifest says {}",
                    hnsw.get_nb_point(),
                    files.points
                ),
            });
        }
        Ok(Self {
            hnsw,
            dim,
            tombstones: RwLock::new(IdSet::default()),
        })
    }

    /// Writes the graph as `<basename>.hnsw.{graph,data}` in `dir` (overwriting), or nothing
    /// for an empty graph (hnsw_rs cannot dump one). Returns what the manifest records.
    pub fn dump(&self, dir: &Path, basename: &str) -> Result<Option<HnswFiles>> {
        let points = self.hnsw.get_nb_point() as u64;
        if points == 0 {
            return Ok(None);
        }
        // hnsw_rs picks a fresh name rather than overwrite a dump of a reloaded graph: dump into
        // an empty scratch directory and move the two files into place.
        let scratch = dir.join(".hnsw-dump");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).map_err(Error::io("creating the HNSW scratch dir"))?;
        let written = self
            .hnsw
            .file_dump(&scratch, "hnsw")
            .map_err(|e| Error::Vector(format!("dumping: {e}")))?;
        for ext in ["hnsw.graph", "hnsw.data"] {
            let from = scratch.join(format!("{written}.{ext}"));
            let to = dir.join(format!("{basename}.{ext}"));
            crate::fsutil::sync_file(&from)?;
            std::fs::rename(&from, &to).map_err(Error::io(format!("moving {}", to.display())))?;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(Some(HnswFiles {
            basename: basename.to_string(),
            points,
        }))
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Points in the graph, tombstones included.
    pub fn points(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Tombstoned points.
    pub fn tombstones(&self) -> usize {
        self.tombstones.read().map(|t| t.len()).unwrap_or(0)
    }

    /// True when `id` has been tombstoned.
    pub fn is_tombstoned(&self, id: u64) -> bool {
        self.tombstones
            .read()
            .map(|t| t.contains(id))
            .unwrap_or(false)
    }

    /// Adds points (parallel over rayon's pool).
    pub fn insert(&self, points: &[(u64, &[f32])]) -> Result<()> {
        if let Some((id, v)) = points.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(Error::InvalidInput(format!(
                "chunk {id}: vector of {} dimensions, the index has {}",
                v.len(),
                self.dim
            )));
        }
        let data: Vec<(&[f32], usize)> = points.iter().map(|(id, v)| (*v, *id as usize)).collect();
        if data.len() < 16 {
            for d in data {
                self.hnsw.insert_slice(d);
            }
        } else {
            self.hnsw.parallel_insert_slice(&data);
        }
        Ok(())
    }

    /// Marks chunks as gone; searches skip them from now on.
    pub fn tombstone(&self, ids: impl IntoIterator<Item = u64>) {
        if let Ok(mut t) = self.tombstones.write() {
            for id in ids {
                t.insert(id);
            }
        }
    }

    /// The `k` nearest live chunks to `query` with candidate list `ef`, best first, accepting
    /// only chunks for which `accept` returns true (applied during the walk).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<VectorHit>> {
        if query.len() != self.dim {
            return Err(Error::InvalidInput(format!(
                "query vector has {} dimensions, the index has {}",
                query.len(),
                self.dim
            )));
        }
        if k == 0 || self.hnsw.get_nb_point() == 0 {
            return Ok(vec![]);
        }
        let tombs = self
            .tombstones
            .read()
            .map_err(|_| Error::Vector("tombstone lock poisoned".into()))?;
        let filter = |id: &usize| {
            let id = *id as u64;
            !tombs.contains(id) && accept.is_none_or(|f| f(id))
        };
        let found = if tombs.is_empty() && accept.is_none() {
            self.hnsw.search(query, k, ef.max(k))
        } else {
            self.hnsw.search_filter(query, k, ef.max(k), Some(&filter))
        };
        Ok(found
            .into_iter()
            .map(|n| VectorHit {
                chunk: n.d_id as u64,
                score: 1.0 - n.distance,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        // xorshift: deterministic pseudo-random vectors without a dependency.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    #[test]
    fn dot_matches_naive() {
        // every path: the 32-lane body, the 8-lane rest and the scalar tail
        for dim in [1, 7, 8, 37, 64, 100, 384] {
            let (a, b) = (unit(1, dim), unit(2, dim));
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-5, "dim {dim}");
        }
        // a unit vector is at distance 0 from itself up to rounding, never below it
        for dim in [37, 384] {
            let a = unit(3, dim);
            let d = CosineDistance.eval(&a, &a);
            assert!((0.0..1e-6).contains(&d), "dim {dim}: {d}");
        }
    }

    #[test]
    fn tombstones_are_skipped_during_search_and_k_is_still_filled() {
        let dim = 16;
        let idx = VectorIndex::new(dim, 16, 100, 300);
        let vecs: Vec<Vec<f32>> = (0..300).map(|i| unit(i, dim)).collect();
        let pts: Vec<(u64, &[f32])> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, &v[..]))
            .collect();
        idx.insert(&pts).unwrap();
        let hits = idx.search(&vecs[7], 5, 64, None).unwrap();
        assert_eq!(hits[0].chunk, 7);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        idx.tombstone([7, hits[1].chunk]);
        let after = idx.search(&vecs[7], 5, 64, None).unwrap();
        assert_eq!(after.len(), 5);
        assert!(
            after
                .iter()
                .all(|h| h.chunk != 7 && h.chunk != hits[1].chunk)
        );
        let even = |id: u64| id.is_multiple_of(2);
        let filtered = idx.search(&vecs[7], 10, 64, Some(&even)).unwrap();
        assert_eq!(filtered.len(), 10);
        assert!(filtered.iter().all(|h| h.chunk.is_multiple_of(2)));
    }

    #[test]
    fn dump_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let idx = VectorIndex::new(dim, 8, 50, 100);
        let vecs: Vec<Vec<f32>> = (0..100).map(|i| unit(i, dim)).collect();
        let pts: Vec<(u64, &[f32])> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * 3, &v[..]))
            .collect();
        idx.insert(&pts).unwrap();
        let files = idx.dump(dir.path(), "hnsw-1").unwrap().unwrap();
        let back = VectorIndex::load(dir.path(), &files, dim).unwrap();
        assert_eq!(back.points(), 100);
        assert_eq!(back.search(&vecs[5], 1, 32, None).unwrap()[0].chunk, 15);
        // A reloaded graph takes inserts and dumps again under the same name.
        back.insert(&[(1000, &unit(1000, dim)[..])]).unwrap();
        let again = back.dump(dir.path(), "hnsw-1").unwrap().unwrap();
        assert_eq!(again.points, 101);
        assert!(
            VectorIndex::new(dim, 8, 50, 1)
                .dump(dir.path(), "e")
                .unwrap()
                .is_none()
        );
    }
}
