//! Retrieval evaluation on a BEIR-layout dataset (`corpus.jsonl`, `queries.jsonl`,
//! `qrels/<split>.tsv`): nDCG@10, Recall@100 and MRR@10 per mode with trec_eval's definitions
//! (linear gains, ideal ranking from the judgments), per-query search latency, and the HNSW
//! graph's recall@10 against exact search.

use ragd_engine::{Error, Mode, Result, SearchParams, Searcher};
use ragd_store::Collection;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

/// Relevance judgments: query id → document id → grade.
pub type Qrels = HashMap<String, HashMap<String, i64>>;

/// Reads `queries.jsonl` (`_id`, `text`).
pub fn load_queries(dataset: &Path) -> Result<HashMap<String, String>> {
    let p = dataset.join("queries.jsonl");
    let f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
    let mut out = HashMap::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| io(&p, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::InvalidInput(format!("{}:{}: {e}", p.display(), n + 1)))?;
        let id = match &v["_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{}:{}: no \"_id\"",
                    p.display(),
                    n + 1
                )));
            }
        };
        let text = v["text"].as_str().unwrap_or_default().to_string();
        out.insert(id, text);
    }
    Ok(out)
}

/// Reads `qrels/<split>.tsv` (`query-id  corpus-id  score`, with or without a header).
pub fn load_qrels(dataset: &Path, split: &str) -> Result<Qrels> {
    let p = dataset.join("qrels").join(format!("{split}.tsv"));
    let f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
    let mut out: Qrels = HashMap::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| io(&p, e))?;
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cols.len() < 3 || line.trim().is_empty() {
            continue;
        }
        let Ok(grade) = cols[2].parse::<i64>() else {
            if n == 0 {
                continue; // header
            }
            return Err(Error::InvalidInput(format!(
                "{}:{}: bad score {:?}",
                p.display(),
                n + 1,
                cols[2]
            )));
        };
        out.entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), grade);
    }
    Ok(out)
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        context: format!("reading {}", p.display()),
        source: e,
    }
}

/// nDCG@k with linear gains (trec_eval `ndcg_cut`).
pub fn ndcg_at(ranked: &[String], rels: &HashMap<String, i64>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| rels.get(d).copied().unwrap_or(0).max(0) as f64 / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<i64> = rels.values().copied().filter(|g| *g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| *g as f64 / (i as f64 + 2.0).log2())
        .sum();
    if idcg > 0.0 { dcg / idcg } else { 0.0 }
}

/// Share of the relevant documents found in the first `k`.
pub fn recall_at(ranked: &[String], rels: &HashMap<String, i64>, k: usize) -> f64 {
    let relevant = rels.values().filter(|g| **g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| rels.get(*d).is_some_and(|g| *g > 0))
        .count();
    found as f64 / relevant as f64
}

/// Reciprocal rank of the first relevant document within the first `k`.
pub fn mrr_at(ranked: &[String], rels: &HashMap<String, i64>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| rels.get(d).is_some_and(|g| *g > 0))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// Metrics of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeMetrics {
    /// Mean nDCG@10.
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
    /// Mean Recall@100.
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
    /// Mean MRR@10.
    #[serde(rename = "mrr@10")]
    pub mrr_10: f64,
    /// Search latency percentiles in milliseconds (query embedding excluded, hit resolution
    /// included).
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// `ragd eval beir --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Dataset directory name.
    pub dataset: String,
    /// Judgment split.
    pub split: String,
    /// Queries evaluated (those with at least one relevant document).
    pub queries: usize,
    /// Collection searched.
    pub collection: String,
    /// Per mode.
    pub modes: BTreeMap<String, ModeMetrics>,
    /// Share of exact top-10 chunks the HNSW graph returns at the collection's `ef_search`.
    #[serde(rename = "hnsw_recall@10")]
    pub hnsw_recall_10: f64,
    /// `ef_search` used.
    pub ef_search: usize,
    /// Query embedding latency, median, milliseconds.
    pub embed_p50_ms: f64,
    /// The hybrid fusion used.
    pub fusion: ragd_engine::Fusion,
}

/// The `q` quantile (nearest rank) of ascending `sorted`; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalSpec {
    /// Dataset name for the report.
    pub dataset: String,
    /// Judgment split.
    pub split: String,
    /// Fusion and `ef`; top-k (100), one-per-document and candidates are set by the evaluation
    /// (documents are what BEIR judges).
    pub base: SearchParams,
    /// Chunks each retriever contributes (enough for 100 distinct documents).
    pub candidates: usize,
}

/// Evaluates every mode on the judged queries.
pub fn evaluate(
    spec: &EvalSpec,
    collection: &Collection,
    searcher: &Searcher,
    queries: &HashMap<String, String>,
    qrels: &Qrels,
) -> Result<EvalReport> {
    let (split, base, candidates) = (&spec.split, &spec.base, spec.candidates);
    let mut ids: Vec<&String> = qrels
        .iter()
        .filter(|(q, r)| queries.contains_key(*q) && r.values().any(|g| *g > 0))
        .map(|(q, _)| q)
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no query of split {split:?} has both a text in queries.jsonl and a relevant document"
        )));
    }
    // Query vectors once, timed apart from search.
    let mut embed_ms = Vec::with_capacity(ids.len());
    let mut vectors = Vec::with_capacity(ids.len());
    for q in &ids {
        let t = Instant::now();
        vectors.push(searcher.embed_query(&queries[*q])?);
        embed_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    embed_ms.sort_by(f64::total_cmp);

    let mut modes = BTreeMap::new();
    for mode in [Mode::Lexical, Mode::Dense, Mode::Hybrid] {
        let params = SearchParams {
            mode,
            top_k: 100,
            candidates,
            one_per_document: true,
            min_score: None,
            mmr_lambda: None,
            ..base.clone()
        };
        let (mut ndcg, mut recall, mut mrr) = (0.0, 0.0, 0.0);
        let mut ms = Vec::with_capacity(ids.len());
        for (q, v) in ids.iter().zip(&vectors) {
            let t = Instant::now();
            let hits = searcher.search(&queries[*q], Some(v.as_slice()), &params)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            let ranked: Vec<String> = hits.into_iter().map(|h| h.doc_id).collect();
            let rels = &qrels[*q];
            ndcg += ndcg_at(&ranked, rels, 10);
            recall += recall_at(&ranked, rels, 100);
            mrr += mrr_at(&ranked, rels, 10);
        }
        ms.sort_by(f64::total_cmp);
        let n = ids.len() as f64;
        let name = mode.name().to_string();
        modes.insert(
            name,
            ModeMetrics {
                ndcg_10: ndcg / n,
                recall_100: recall / n,
                mrr_10: mrr / n,
                p50_ms: percentile(&ms, 0.50),
                p95_ms: percentile(&ms, 0.95),
                p99_ms: percentile(&ms, 0.99),
            },
        );
    }

    // HNSW against brute force over every live vector.
    let all = collection.live_vectors()?;
    let ef = collection.settings()?.hnsw.ef_search;
    let mut recall_sum = 0.0;
    for v in &vectors {
        let mut exact: Vec<(f32, u64)> = all
            .iter()
            .map(|(id, x)| (ragd_store::dot(v, x), *id))
            .collect();
        let k = 10.min(exact.len());
        if k == 0 {
            continue;
        }
        exact.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<u64> = exact[..k].iter().map(|(_, id)| *id).collect();
        let got = collection.search_dense(v, k, Some(ef))?;
        recall_sum += got.iter().filter(|h| truth.contains(&h.chunk)).count() as f64 / k as f64;
    }
    Ok(EvalReport {
        dataset: spec.dataset.clone(),
        split: split.clone(),
        queries: ids.len(),
        collection: collection.name().to_string(),
        modes,
        hnsw_recall_10: recall_sum / vectors.len() as f64,
        ef_search: ef,
        embed_p50_ms: percentile(&embed_ms, 0.5),
        fusion: base.fusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_match_hand_computed_trec_eval_values() {
        let r = rels(&[("a", 1), ("b", 2), ("z", 0)]);
        // Ranking: x, b, a → DCG = 2/log2(3) + 1/log2(4); IDCG = 2/log2(2) + 1/log2(3).
        let got = ndcg_at(&ranked(&["x", "b", "a"]), &r, 10);
        let want = (2.0 / 3f64.log2() + 0.5) / (2.0 + 1.0 / 3f64.log2());
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(ndcg_at(&ranked(&["b", "a"]), &r, 10), 1.0);
        assert_eq!(ndcg_at(&ranked(&["x"]), &r, 10), 0.0);
        assert_eq!(recall_at(&ranked(&["x", "b", "z"]), &r, 100), 0.5);
        assert_eq!(recall_at(&ranked(&["x", "b", "a"]), &r, 2), 0.5);
        assert_eq!(mrr_at(&ranked(&["x", "z", "a"]), &r, 10), 1.0 / 3.0);
        assert_eq!(mrr_at(&ranked(&["x", "z", "a"]), &r, 2), 0.0);
    }

    #[test]
    fn qrels_and_queries_load_with_or_without_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("qrels")).unwrap();
        std::fs::write(
            dir.path().join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t2\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("queries.jsonl"),
            "{\"_id\": \"1\", \"text\": \"q one\"}\n{\"_id\": 2, \"text\": \"q two\"}\n",
        )
        .unwrap();
        let q = load_qrels(dir.path(), "test").unwrap();
        assert_eq!(q["1"]["d1"], 1);
        assert_eq!(q["2"]["d3"], 2);
        assert_eq!(load_queries(dir.path()).unwrap()["2"], "q two");
        assert!(
            load_qrels(dir.path(), "dev")
                .unwrap_err()
                .to_string()
                .contains("dev.tsv")
        );
    }
}
