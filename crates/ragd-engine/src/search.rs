//! Retrieval over one collection: dense (HNSW), lexical (BM25) and hybrid (both, fused), with
//! filters applied inside each index, a minimum score, one hit per document and MMR diversity.
//!
//! Fusion is ours: reciprocal rank fusion (`Σ 1/(k + rank)`) or a convex combination of
//! min-max-normalised scores (`w·dense + (1−w)·lexical`, a list that misses a chunk counts 0).
//! Query vectors are cached in a bounded LRU keyed by the query text.

use crate::error::{Error, Result};
use lru::LruCache;
use ragd_core::Metadata;
use ragd_models::{Encode, RerankerHandle};
use ragd_store::{Collection, SearchFilter};
use serde::Serialize;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which retrievers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// HNSW over embeddings.
    Dense,
    /// BM25 over title + chunk text.
    Lexical,
    /// Both, fused.
    Hybrid,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Lexical => "lexical",
            Self::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Self::Dense),
            "lexical" => Ok(Self::Lexical),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err(Error::InvalidInput(format!(
                "mode must be dense, lexical or hybrid, got {s:?}"
            ))),
        }
    }
}

/// How hybrid mode combines the two lists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k`.
    Rrf {
        /// Rank offset (60 in the original paper).
        k: f32,
    },
    /// `dense_weight · dense + (1 − dense_weight) · lexical` over min-max-normalised scores.
    Convex {
        /// Weight of the dense score, 0..=1.
        dense_weight: f32,
    },
}

impl Default for Fusion {
    fn default() -> Self {
        Self::Convex { dense_weight: 0.5 }
    }
}

/// One search request.
#[derive(Debug, Clone)]
pub struct SearchParams {
    /// Retrievers.
    pub mode: Mode,
    /// Hits returned.
    pub top_k: usize,
    /// Chunks each retriever contributes before fusion (at least `top_k`).
    pub candidates: usize,
    /// HNSW candidate list (collection default when `None`).
    pub ef: Option<usize>,
    /// Fusion for hybrid mode.
    pub fusion: Fusion,
    /// Restrict to documents / metadata values (applied inside both indexes).
    pub filter: SearchFilter,
    /// Drop hits whose final score is below this.
    pub min_score: Option<f32>,
    /// Keep only the best chunk of each document.
    pub one_per_document: bool,
    /// Maximal marginal relevance: `λ·relevance − (1−λ)·max similarity to hits already chosen`.
    pub mmr_lambda: Option<f32>,
    /// Rerank the best this many fused candidates with the cross-encoder (`Some(0)`: off); hits
    /// are then ordered by [`Hit::rerank_score`]. At least `top_k`. `None`: the collection's
    /// own `rerank` setting (raised to `top_k`), when a reranker is loaded.
    pub rerank: Option<usize>,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            mode: Mode::Hybrid,
            top_k: 10,
            candidates: 100,
            ef: None,
            fusion: Fusion::default(),
            filter: SearchFilter::default(),
            min_score: None,
            one_per_document: false,
            mmr_lambda: None,
            rerank: None,
        }
    }
}

impl SearchParams {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.top_k == 0 || self.top_k > 1000 {
            return bad(format!("top_k must be 1..=1000, got {}", self.top_k));
        }
        if self.candidates > 10_000 {
            return bad(format!(
                "candidates must be at most 10000, got {}",
                self.candidates
            ));
        }
        match self.fusion {
            Fusion::Rrf { k } if !(k >= 0.0 && k.is_finite()) => {
                return bad(format!("rrf k must be a non-negative number, got {k}"));
            }
            Fusion::Convex { dense_weight: w } if !(0.0..=1.0).contains(&w) => {
                return bad(format!("dense weight must be within 0..=1, got {w}"));
            }
            _ => {}
        }
        if let Some(l) = self.mmr_lambda
            && !(0.0..=1.0).contains(&l)
        {
            return bad(format!("mmr lambda must be within 0..=1, got {l}"));
        }
        if self.ef.is_some_and(|e| e == 0 || e > 4096) {
            return bad("ef must be 1..=4096".into());
        }
        if let Some(n) = self.rerank
            && n != 0
            && !(self.top_k..=MAX_RERANK).contains(&n)
        {
            return bad(format!(
                "rerank must be 0 (off) or {}..={MAX_RERANK} (at least top_k), got {n}",
                self.top_k
            ));
        }
        Ok(())
    }
}

pub use ragd_store::MAX_RERANK;

/// One retrieved chunk.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Chunk id.
    pub chunk_id: u64,
    /// Owning document.
    pub doc_id: String,
    /// Document title.
    pub title: String,
    /// Document metadata.
    pub metadata: Metadata,
    /// Chunk text.
    pub text: String,
    /// Byte range in the document's raw text.
    pub start: usize,
    /// End of the byte range.
    pub end: usize,
    /// Cosine similarity, when the dense retriever found it.
    pub dense_score: Option<f32>,
    /// BM25 score, when the lexical retriever found it.
    pub lexical_score: Option<f32>,
    /// The fused score (the retriever's own in dense or lexical mode); hits are ordered by it
    /// unless they were reranked.
    pub score: f32,
    /// The cross-encoder's relevance logit, when the search reranked (hits are then ordered by
    /// it).
    pub rerank_score: Option<f32>,
}

/// A fused candidate before it is resolved to text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fused {
    /// Chunk id.
    pub chunk: u64,
    /// Dense score, if any.
    pub dense: Option<f32>,
    /// Lexical score, if any.
    pub lexical: Option<f32>,
    /// Fused score.
    pub score: f32,
}

/// Fuses two ranked lists (best first) into one, best first; ties broken by chunk id.
pub fn fuse(dense: &[(u64, f32)], lexical: &[(u64, f32)], fusion: Fusion) -> Vec<Fused> {
    let mut by_chunk: HashMap<u64, Fused> = HashMap::with_capacity(dense.len() + lexical.len());
    let norm = |list: &[(u64, f32)]| -> Vec<f32> {
        let (lo, hi) = list
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
                (lo.min(*s), hi.max(*s))
            });
        list.iter()
            .map(|(_, s)| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 })
            .collect()
    };
    let (dn, ln) = (norm(dense), norm(lexical));
    for (side, list, normed) in [(0, dense, &dn), (1, lexical, &ln)] {
        for (rank, ((chunk, raw), n)) in list.iter().zip(normed.iter()).enumerate() {
            let e = by_chunk.entry(*chunk).or_insert(Fused {
                chunk: *chunk,
                dense: None,
                lexical: None,
                score: 0.0,
            });
            let contribution = match fusion {
                Fusion::Rrf { k } => 1.0 / (k + rank as f32 + 1.0),
                Fusion::Convex { dense_weight } => {
                    if side == 0 {
                        dense_weight * n
                    } else {
                        (1.0 - dense_weight) * n
                    }
                }
            };
            e.score += contribution;
            if side == 0 {
                e.dense = Some(*raw);
            } else {
                e.lexical = Some(*raw);
            }
        }
    }
    let mut out: Vec<Fused> = by_chunk.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk)));
    out
}

/// Searches one collection. Long-lived: it owns its collection handle and encoder, and its
/// query-vector cache serves every request that repeats a query.
pub struct Searcher {
    collection: Arc<Collection>,
    embedder: Arc<dyn Encode>,
    reranker: Option<RerankerHandle>,
    /// The collection's `rerank` setting: candidates reranked when a search does not say.
    default_rerank: usize,
    /// The published generation the collection was fetched as, on a read replica.
    published: Option<ragd_cluster::GenerationId>,
    cache: Mutex<LruCache<String, Arc<Vec<f32>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher")
            .field("collection", &self.collection.name())
            .finish()
    }
}

/// How often a searcher's query-vector cache answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Queries whose vector came from the cache.
    pub hits: u64,
    /// Queries the encoder embedded.
    pub misses: u64,
}

impl Searcher {
    /// A searcher with a query-vector cache of `cache_size` entries. Refuses an encoder that
    /// is not the collection's.
    pub fn new(
        collection: Arc<Collection>,
        embedder: Arc<dyn Encode>,
        cache_size: usize,
    ) -> Result<Self> {
        let settings = collection.settings()?;
        crate::check_encoder(&settings, embedder.as_ref())?;
        let cap = NonZeroUsize::new(cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            collection,
            embedder,
            reranker: None,
            default_rerank: settings.rerank,
            published: None,
            cache: Mutex::new(LruCache::new(cap)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Searches that ask for it rerank with `reranker`.
    pub fn with_reranker(mut self, reranker: Option<RerankerHandle>) -> Self {
        self.reranker = reranker;
        self
    }

    /// Marks the collection as published generation `id` (a read replica's copy), which
    /// searches and answers then name.
    pub fn with_published(mut self, id: Option<ragd_cluster::GenerationId>) -> Self {
        self.published = id;
        self
    }

    /// The published generation searched, on a read replica.
    pub fn published(&self) -> Option<ragd_cluster::GenerationId> {
        self.published
    }

    /// The collection searched.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// The shared handle of the collection searched.
    pub fn collection_handle(&self) -> &Arc<Collection> {
        &self.collection
    }

    /// The encoder queries are embedded with.
    pub fn embedder(&self) -> &dyn Encode {
        self.embedder.as_ref()
    }

    /// How often the query-vector cache answered so far.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The query's vector, from the cache or the encoder.
    pub fn embed_query(&self, query: &str) -> Result<Arc<Vec<f32>>> {
        Ok(self.query_vector(query)?.0)
    }

    /// The query's vector, and whether it came from the cache.
    #[tracing::instrument(level = "debug", name = "query_vector", skip_all, fields(cached))]
    pub fn query_vector(&self, query: &str) -> Result<(Arc<Vec<f32>>, bool)> {
        if let Some(v) = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(query).cloned())
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            tracing::Span::current().record("cached", true);
            return Ok((v, true));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let v = Arc::new(
            self.embedder
                .encode(vec![query.to_string()])?
                .pop()
                .map(|e| e.vector)
                .unwrap_or_default(),
        );
        if let Ok(mut c) = self.cache.lock() {
            c.put(query.to_string(), Arc::clone(&v));
        }
        Ok((v, false))
    }

    /// Runs a search. `query_vector` skips the encoder (and the cache) when given.
    #[tracing::instrument(level = "debug", name = "search", skip_all,
        fields(collection = self.collection.name(), mode = p.mode.name(), hits))]
    pub fn search(
        &self,
        query: &str,
        query_vector: Option<&[f32]>,
        p: &SearchParams,
    ) -> Result<Vec<Hit>> {
        p.validate()?;
        if query.trim().is_empty() {
            return Err(Error::InvalidInput("the query is empty".into()));
        }
        let rerank = self.rerank_depth(p)?;
        let fused = self.retrieve(query, query_vector, p)?;
        let hits = self.finish(query, fused, p, rerank)?;
        tracing::Span::current().record("hits", hits.len());
        Ok(hits)
    }

    /// Candidates, fused and ordered, before filtering by score, per-document dedup and MMR.
    pub fn retrieve(
        &self,
        query: &str,
        query_vector: Option<&[f32]>,
        p: &SearchParams,
    ) -> Result<Vec<Fused>> {
        let n = p.candidates.max(p.top_k);
        let filter = (!p.filter.is_empty()).then_some(&p.filter);
        let dense: Vec<(u64, f32)> = if p.mode == Mode::Lexical {
            vec![]
        } else {
            let owned;
            let v = match query_vector {
                Some(v) => v,
                None => {
                    owned = self.embed_query(query)?;
                    owned.as_slice()
                }
            };
            self.collection
                .search_dense_filtered(v, n, p.ef, filter)?
                .into_iter()
                .map(|h| (h.chunk, h.score))
                .collect()
        };
        let lexical: Vec<(u64, f32)> = if p.mode == Mode::Dense {
            vec![]
        } else {
            self.collection
                .search_lexical_filtered(query, n, filter)?
                .into_iter()
                .map(|h| (h.chunk, h.score))
                .collect()
        };
        Ok(match p.mode {
            Mode::Dense => dense
                .into_iter()
                .map(|(chunk, s)| Fused {
                    chunk,
                    dense: Some(s),
                    lexical: None,
                    score: s,
                })
                .collect(),
            Mode::Lexical => lexical
                .into_iter()
                .map(|(chunk, s)| Fused {
                    chunk,
                    dense: None,
                    lexical: Some(s),
                    score: s,
                })
                .collect(),
            Mode::Hybrid => fuse(&dense, &lexical, p.fusion),
        })
    }

    /// Fused candidates `p` reranks: its own `rerank` (refused when no reranker is loaded),
    /// else the collection's setting raised to `top_k` — skipped, with a warning, when no
    /// reranker is loaded or `top_k` exceeds [`MAX_RERANK`].
    fn rerank_depth(&self, p: &SearchParams) -> Result<usize> {
        match p.rerank {
            Some(n) if n > 0 && self.reranker.is_none() => Err(Error::InvalidInput(
                "rerank asked for, but no reranker is loaded (reranker.name in the server \
                 settings, --reranker offline)"
                    .into(),
            )),
            Some(n) => Ok(n),
            None if self.default_rerank == 0 || p.top_k > MAX_RERANK => Ok(0),
            None if self.reranker.is_none() => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        collection = self.collection.name(),
                        "the collection asks for reranking but no reranker is loaded; searching without"
                    );
                });
                Ok(0)
            }
            None => Ok(self.default_rerank.max(p.top_k)),
        }
    }

    /// The collection's `rerank` setting.
    pub fn default_rerank(&self) -> usize {
        self.default_rerank
    }

    fn finish(
        &self,
        query: &str,
        mut fused: Vec<Fused>,
        p: &SearchParams,
        rerank: usize,
    ) -> Result<Vec<Hit>> {
        if let Some(min) = p.min_score {
            fused.retain(|f| f.score >= min);
        }
        let ids: Vec<u64> = fused.iter().map(|f| f.chunk).collect();
        let chunks: HashMap<u64, ragd_store::ChunkRecord> =
            self.collection.chunks(&ids)?.into_iter().collect();
        fused.retain(|f| chunks.contains_key(&f.chunk));
        if p.one_per_document {
            let mut seen = std::collections::HashSet::new();
            fused.retain(|f| seen.insert(chunks[&f.chunk].doc_id.clone()));
        }
        // Reranking: the cross-encoder reads the question with each of the best candidates and
        // its logit orders them (MMR, when asked, then diversifies by that order).
        let mut reranked: HashMap<u64, f32> = HashMap::new();
        let mut fused_score: HashMap<u64, f32> = HashMap::new();
        if let Some(r) = self.reranker.as_ref().filter(|_| rerank > 0) {
            fused.truncate(rerank);
            fused_score.extend(fused.iter().map(|f| (f.chunk, f.score)));
            let texts: Vec<String> = fused
                .iter()
                .map(|f| chunks[&f.chunk].span.text.clone())
                .collect();
            let scores = r.score(query, texts)?;
            for (f, s) in fused.iter_mut().zip(&scores) {
                reranked.insert(f.chunk, *s);
                f.score = *s;
            }
            fused.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        let order: Vec<Fused> = match p.mmr_lambda {
            Some(lambda) if fused.len() > 1 => {
                let ids: Vec<u64> = fused.iter().map(|f| f.chunk).collect();
                let vectors: HashMap<u64, Vec<f32>> =
                    self.collection.vectors(&ids)?.into_iter().collect();
                mmr(&fused, &vectors, lambda, p.top_k)
            }
            _ => {
                fused.truncate(p.top_k);
                fused
            }
        };
        let doc_ids: Vec<&str> = order
            .iter()
            .map(|f| chunks[&f.chunk].doc_id.as_str())
            .collect();
        let mut unique: Vec<&str> = doc_ids.clone();
        unique.sort_unstable();
        unique.dedup();
        let docs: HashMap<&str, ragd_store::DocRecord> = unique
            .iter()
            .copied()
            .zip(self.collection.doc_records(&unique)?)
            .filter_map(|(id, r)| r.map(|r| (id, r)))
            .collect();
        Ok(order
            .into_iter()
            .map(|f| {
                let c = &chunks[&f.chunk];
                let d = docs.get(c.doc_id.as_str());
                Hit {
                    chunk_id: f.chunk,
                    doc_id: c.doc_id.clone(),
                    title: d.map(|d| d.title.clone()).unwrap_or_default(),
                    metadata: d.map(|d| d.metadata.clone()).unwrap_or_default(),
                    text: c.span.text.clone(),
                    start: c.span.start,
                    end: c.span.end,
                    dense_score: f.dense,
                    lexical_score: f.lexical,
                    score: if reranked.is_empty() {
                        f.score
                    } else {
                        fused_score[&f.chunk]
                    },
                    rerank_score: reranked.get(&f.chunk).copied(),
                }
            })
            .collect())
    }
}

/// Greedy maximal marginal relevance over `fused` (best first): relevance is the fused score
/// min-max-normalised over the candidates, similarity the cosine between chunk vectors.
fn mmr(fused: &[Fused], vectors: &HashMap<u64, Vec<f32>>, lambda: f32, k: usize) -> Vec<Fused> {
    let (lo, hi) = fused
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), f| {
            (lo.min(f.score), hi.max(f.score))
        });
    let rel = |f: &Fused| {
        if hi > lo {
            (f.score - lo) / (hi - lo)
        } else {
            1.0
        }
    };
    let mut left: Vec<Fused> = fused.to_vec();
    let mut chosen: Vec<Fused> = Vec::with_capacity(k);
    while chosen.len() < k && !left.is_empty() {
        let mut best = (0, f32::NEG_INFINITY);
        for (i, f) in left.iter().enumerate() {
            let sim = chosen
                .iter()
                .filter_map(|c| {
                    Some(ragd_store::dot(
                        vectors.get(&c.chunk)?,
                        vectors.get(&f.chunk)?,
                    ))
                })
                .fold(0.0f32, f32::max);
            let s = lambda * rel(f) - (1.0 - lambda) * sim;
            if s > best.1 {
                best = (i, s);
            }
        }
        chosen.push(left.remove(best.0));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rrf_and_convex_known_values() {
        let dense = [(1, 0.9), (2, 0.8), (3, 0.1)];
        let lexical = [(3, 12.0), (1, 6.0)];
        let rrf = fuse(&dense, &lexical, Fusion::Rrf { k: 60.0 });
        assert_eq!(rrf[0].chunk, 1); // 1/61 + 1/62
        assert!((rrf[0].score - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-6);
        assert_eq!(rrf.iter().map(|f| f.chunk).collect::<Vec<_>>(), [1, 3, 2]);
        let cx = fuse(&dense, &lexical, Fusion::Convex { dense_weight: 0.5 });
        // dense normalised: 1, 0.875, 0; lexical: 1, 0.
        let score = |c| cx.iter().find(|f| f.chunk == c).unwrap().score;
        assert!((score(1) - 0.5).abs() < 1e-6);
        assert!((score(2) - 0.4375).abs() < 1e-6);
        assert!((score(3) - 0.5).abs() < 1e-6);
        assert_eq!(cx[0].chunk, 1); // tie with 3, broken by chunk id
        assert_eq!(cx.iter().find(|f| f.chunk == 3).unwrap().dense, Some(0.1));
    }

    #[test]
    fn mmr_prefers_a_diverse_second_hit() {
        let fused = [
            Fused {
                chunk: 1,
                dense: None,
                lexical: None,
                score: 1.0,
            },
            Fused {
                chunk: 2,
                dense: None,
                lexical: None,
                score: 0.95,
            },
            Fused {
                chunk: 3,
                dense: None,
                lexical: None,
                score: 0.9,
            },
        ];
        let v: HashMap<u64, Vec<f32>> = [
            (1, vec![1.0, 0.0]),
            (2, vec![1.0, 0.0]),
            (3, vec![0.0, 1.0]),
        ]
        .into();
        let picked: Vec<u64> = mmr(&fused, &v, 0.5, 2).iter().map(|f| f.chunk).collect();
        assert_eq!(picked, [1, 3]);
        let plain: Vec<u64> = mmr(&fused, &v, 1.0, 2).iter().map(|f| f.chunk).collect();
        assert_eq!(plain, [1, 2]);
    }

    fn ranked() -> impl Strategy<Value = Vec<(u64, f32)>> {
        prop::collection::hash_map(0u64..50, 0.0f32..10.0, 0..30).prop_map(|m| {
            let mut v: Vec<(u64, f32)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            v
        })
    }

    proptest! {
        /// Fused lists are sorted, hold each input chunk exactly once, and a chunk that is first
        /// in both inputs is first in the output.
        #[test]
        fn fusion_invariants(d in ranked(), l in ranked(), rrf in any::<bool>(), w in 0.0f32..=1.0) {
            let fusion = if rrf { Fusion::Rrf { k: 60.0 } } else { Fusion::Convex { dense_weight: w } };
            let out = fuse(&d, &l, fusion);
            prop_assert!(out.windows(2).all(|p| p[0].score >= p[1].score));
            let mut ids: Vec<u64> = out.iter().map(|f| f.chunk).collect();
            ids.sort_unstable();
            let mut want: Vec<u64> = d.iter().chain(&l).map(|x| x.0).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(ids, want);
            if let (Some(a), Some(b)) = (d.first(), l.first())
                && a.0 == b.0
                && (rrf || (w > 0.0 && w < 1.0))
            {
                prop_assert_eq!(out[0].chunk, a.0);
            }
        }
    }
}
