//! Search latency and HNSW speed on a large synthetic collection made by repeating a real
//! collection's chunks with perturbation (reworded text, jittered vectors), with faiss HNSW run
//! on the same vectors in the same invocation when asked.

use crate::peers::Peers;
use crate::percentiles;
use anyhow::{Result, bail};
use ragd_core::{ChunkSpan, DocumentInput};
use ragd_engine::{Encode, Engine, EngineConfig, Mode, SearchParams, Searcher};
use ragd_models::GeneratorOptions;
use ragd_store::{Collection, DocWrite};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `ragd bench search`.
#[derive(Debug, Clone)]
pub struct SearchBench {
    /// Collection whose chunks (text and vectors) are repeated to build the synthetic one.
    pub collection: String,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    /// queries.jsonl (BEIR layout) supplying the queries.
    pub queries: PathBuf,
    /// Chunks in the synthetic collection.
    pub chunks: usize,
    /// Queries used (the first N).
    pub max_queries: usize,
    /// HNSW ef values to measure recall@10 and single-thread QPS at.
    pub ef: Vec<usize>,
    /// Also run faiss HNSW on the same vectors.
    pub peers: Option<Peers>,
}

/// Deterministic pseudo-random numbers for the perturbation (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal: the sum of four uniforms, centred and scaled to unit variance.
    fn normal(&mut self) -> f32 {
        (self.next() + self.next() + self.next() + self.next() - 2.0) * 1.732
    }
}

fn write_npy(path: &Path, rows: usize, dim: usize, data: &[f32]) -> Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for x in data {
        f.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Builds the synthetic collection and measures it; the report as JSON.
pub fn run(a: &SearchBench) -> Result<Value> {
    if a.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    let src = Collection::open(&a.data_dir, &a.collection)?;
    let settings = src.settings()?;
    let dim = settings.dim;
    let live = src.live_vectors()?;
    if live.is_empty() {
        bail!("collection {} has no chunks", a.collection);
    }
    let ids: Vec<u64> = live.iter().map(|(id, _)| *id).collect();
    let chunks: HashMap<u64, ragd_store::ChunkRecord> = src.chunks(&ids)?.into_iter().collect();
    let embedder = Engine::offline(
        EngineConfig::new(&a.data_dir),
        &a.models_dir,
        GeneratorOptions::default(),
    )
    .encoder_for(&settings)?;
    drop(src);

    // The synthetic collection: copy r of chunk c has its words rotated by r and its vector
    // jittered (σ = 0.02 per dimension, cosine ≈ 0.93 to the original) and renormalised.
    let scratch = tempfile::tempdir()?;
    let t_build = Instant::now();
    let bench = Collection::create(scratch.path(), "bench", &settings)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut all = Vec::with_capacity(a.chunks * dim);
    let mut batch = Vec::new();
    for i in 0..a.chunks {
        let (id, v) = &live[i % live.len()];
        let r = i / live.len();
        let c = &chunks[id];
        let text = if r == 0 {
            c.span.text.clone()
        } else {
            let mut words: Vec<&str> = c.span.text.split_whitespace().collect();
            if !words.is_empty() {
                let n = r % words.len();
                words.rotate_left(n);
            }
            words.join(" ")
        };
        let mut vec: Vec<f32> = v
            .iter()
            .map(|x| x + 0.02 * rng.normal() * (r > 0) as u8 as f32)
            .collect();
        let norm = ragd_store::dot(&vec, &vec).sqrt();
        vec.iter_mut().for_each(|x| *x /= norm);
        all.extend_from_slice(&vec);
        batch.push(DocWrite::Upsert {
            doc: DocumentInput {
                id: format!("{}:{}~{r}", c.doc_id, c.ordinal),
                source: "bench".into(),
                title: String::new(),
                text: text.clone(),
                metadata: Default::default(),
            },
            chunks: vec![ChunkSpan {
                start: 0,
                end: text.len(),
                tokens: c.span.tokens,
                text,
            }],
            vectors: vec![vec],
            force: false,
        });
        if batch.len() == 2000 {
            bench.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        bench.write(batch)?;
    }
    bench.checkpoint()?;
    let build_s = t_build.elapsed().as_secs_f64();

    let texts: Vec<String> = std::fs::read_to_string(&a.queries)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .take(a.max_queries)
        .collect();
    if texts.is_empty() {
        bail!("{} holds no queries", a.queries.display());
    }
    let qv: Vec<Vec<f32>> = embedder
        .encode(texts.clone())?
        .into_iter()
        .map(|e| e.vector)
        .collect();

    // Latency per mode (query embedding excluded), after one warm-up pass.
    let bench = Arc::new(bench);
    let searcher = Searcher::new(Arc::clone(&bench), embedder, 16)?;
    let mut modes = serde_json::Map::new();
    for mode in [Mode::Lexical, Mode::Dense, Mode::Hybrid] {
        let p = SearchParams {
            mode,
            top_k: 10,
            ..SearchParams::default()
        };
        for (t, v) in texts.iter().zip(&qv) {
            searcher.search(t, Some(v), &p)?;
        }
        let mut ms = Vec::with_capacity(texts.len());
        for (t, v) in texts.iter().zip(&qv) {
            let t0 = Instant::now();
            searcher.search(t, Some(v), &p)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let name = mode.name().to_string();
        modes.insert(name, percentiles(ms));
    }

    // HNSW alone: recall@10 against brute force, single-thread queries per second.
    let exact: Vec<Vec<u64>> = qv
        .iter()
        .map(|q| {
            let mut s: Vec<(f32, u64)> = all
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, row)| (ragd_store::dot(q, row), i as u64))
                .collect();
            let k = 10.min(s.len());
            s.select_nth_unstable_by(k - 1, |x, y| y.0.total_cmp(&x.0));
            s[..k].iter().map(|(_, i)| *i).collect()
        })
        .collect();
    let generation = bench.live();
    let mut hnsw = Vec::new();
    for &ef in &a.ef {
        let t0 = Instant::now();
        let mut found = Vec::with_capacity(qv.len());
        for q in &qv {
            found.push(generation.vectors().search(q, 10, ef, None)?);
        }
        let secs = t0.elapsed().as_secs_f64();
        // Chunk ids were assigned in write order, so chunk id = row index.
        let recall = found
            .iter()
            .zip(&exact)
            .map(|(f, e)| f.iter().filter(|h| e.contains(&h.chunk)).count() as f64 / e.len() as f64)
            .sum::<f64>()
            / qv.len() as f64;
        hnsw.push(
            json!({"ef": ef, "recall@10": recall, "qps_single_thread": qv.len() as f64 / secs}),
        );
    }

    let mut peer = Vec::new();
    if let Some(peers) = &a.peers {
        let base = scratch.path().join("base.npy");
        let queries = scratch.path().join("queries.npy");
        write_npy(&base, a.chunks, dim, &all)?;
        let flat: Vec<f32> = qv.iter().flatten().copied().collect();
        write_npy(&queries, qv.len(), dim, &flat)?;
        for &ef in &a.ef {
            let h = settings.hnsw;
            let extra = [
                "--m".to_string(),
                h.m.to_string(),
                "--ef-construction".into(),
                h.ef_construction.to_string(),
                "--ef".into(),
                ef.to_string(),
                "--k".into(),
                "10".into(),
            ];
            peer.push(peers.run("ann.py", &[&base, &queries], &extra)?);
        }
    }
    let report = json!({
        "chunks": a.chunks,
        "source_collection": a.collection,
        "queries": qv.len(),
        "build_seconds": build_s,
        "search": modes,
        "hnsw": hnsw,
        "hnsw_settings": settings.hnsw,
        "peer": peer,
        "kernels": ragd_models::kernels::active(),
    });
    Ok(report)
}

/// Prints a search report for a person.
pub fn print_report(report: &Value) {
    println!(
        "{} chunks built in {:.1}s; {} queries",
        report["chunks"],
        report["build_seconds"].as_f64().unwrap_or(0.0),
        report["queries"]
    );
    for (mode, p) in &report["search"].as_object().cloned().unwrap_or_default() {
        println!(
            "{mode:<8} p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms",
            p["p50_ms"].as_f64().unwrap_or(0.0),
            p["p95_ms"].as_f64().unwrap_or(0.0),
            p["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    for (i, h) in report["hnsw"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = report["peer"].get(i);
        println!(
            "ef {:>4}: ragd recall@10 {:.4} {:>8.0} QPS{}",
            h["ef"],
            h["recall@10"].as_f64().unwrap_or(0.0),
            h["qps_single_thread"].as_f64().unwrap_or(0.0),
            p.map(|p| format!(
                "   faiss recall@10 {} {} QPS",
                p["recall@10"], p["qps_single_thread"]
            ))
            .unwrap_or_default()
        );
    }
}
