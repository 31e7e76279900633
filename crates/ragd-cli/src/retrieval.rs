//! `ragd search` and `ragd eval beir`.

use crate::flags::{DataDir, FusionFlags, ModelsDir, parse_filters};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ragd_engine::{IngestOptions, Mode, SearchParams};
use ragd_eval::beir::EvalSpec;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// The query.
    query: String,
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    /// dense, lexical or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Chunks each retriever contributes before fusion.
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// Metadata filter KEY=VALUE; repeat a key for one-of, different keys must all match.
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Only these documents; repeatable.
    #[arg(long = "doc-id")]
    doc_ids: Vec<String>,
    /// Drop hits scoring below this.
    #[arg(long)]
    min_score: Option<f32>,
    /// At most one hit per document.
    #[arg(long)]
    one_per_document: bool,
    /// Diversify with maximal marginal relevance (λ: 1 = relevance only).
    #[arg(long)]
    mmr: Option<f32>,
    /// Rerank the best N fused candidates with the cross-encoder (at least --top-k; 0: off).
    /// [default: the collection's `rerank` setting]
    #[arg(long)]
    rerank: Option<usize>,
    /// The cross-encoder offline: a model added with `ragd models add NAME --dir DIR` (a
    /// server reranks with its own `reranker.name`).
    #[arg(long, value_name = "NAME")]
    reranker: Option<String>,
    #[command(flatten)]
    fusion: FusionFlags,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: crate::client::ServerFlags,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EvalCommand {
    /// Ingest a BEIR-layout dataset (reusing what is stored) and report nDCG@10, Recall@100,
    /// MRR@10 and latency per mode.
    Beir(BeirArgs),
    /// Ask questions with known answers (or none) through the whole answer pipeline and report
    /// fact accuracy, citation correctness and refusals; `--calibrate` picks the refusal
    /// threshold from retrieval scores alone.
    Answers(Box<crate::ask::AnswersArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct BeirArgs {
    /// Directory with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Collection to use (default: beir-<dataset directory name>).
    #[arg(long)]
    collection: Option<String>,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    /// Chunks each retriever contributes (enough for 100 distinct documents).
    #[arg(long, default_value_t = 400)]
    candidates: usize,
    #[command(flatten)]
    fusion: FusionFlags,
    #[arg(long)]
    json: bool,
}

pub(crate) fn search(a: SearchArgs) -> Result<()> {
    let mode: Mode = a.mode.parse()?;
    let params = SearchParams {
        mode,
        top_k: a.top_k,
        candidates: a.candidates,
        ef: a.fusion.ef,
        fusion: a.fusion.fusion()?,
        filter: parse_filters(&a.filters, &a.doc_ids)?,
        min_score: a.min_score,
        one_per_document: a.one_per_document,
        mmr_lambda: a.mmr,
        rerank: a.rerank,
    };
    let (hits, generation, published) =
        crate::backend::Backend::new(&a.data, &a.models, &a.remote)?
            .with_reranker(&a.models, a.reranker.as_deref())?
            .search(&a.collection, &a.query, &params)?;
    if a.json {
        let mut v = serde_json::json!({ "hits": hits, "index_generation": generation });
        if let Some(g) = &published {
            v["published_generation"] = g.clone().into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(g) = &published {
        println!("(served by a read replica from published generation {g})");
    }
    for (i, h) in hits.iter().enumerate() {
        let fmt = |s: Option<f32>| s.map_or("-".to_string(), |s| format!("{s:.3}"));
        let rerank = h
            .rerank_score
            .map_or(String::new(), |s| format!("  rerank {s:.3}"));
        println!(
            "{:>2}. {:.4}  dense {}  bm25 {}{rerank}  {}  [{}..{}]  {}",
            i + 1,
            h.score,
            fmt(h.dense_score),
            fmt(h.lexical_score),
            h.doc_id,
            h.start,
            h.end,
            h.title
        );
        let snippet: String = h.text.chars().take(160).collect();
        println!("    {}", snippet.replace('\n', " "));
    }
    Ok(())
}

pub(crate) fn eval(cmd: EvalCommand) -> Result<()> {
    let a = match cmd {
        EvalCommand::Beir(a) => a,
        EvalCommand::Answers(a) => return crate::ask::eval_answers(*a),
    };
    let dataset_name = a
        .dataset
        .canonicalize()
        .with_context(|| format!("dataset {}", a.dataset.display()))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let name = a.collection.clone().unwrap_or_else(|| {
        let clean: String = dataset_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("beir-{clean}")
    });
    let corpus = a.dataset.join("corpus.jsonl");
    if !corpus.is_file() {
        bail!("{} has no corpus.jsonl", a.dataset.display());
    }
    let queries = ragd_eval::beir::load_queries(&a.dataset)?;
    let qrels = ragd_eval::beir::load_qrels(&a.dataset, &a.split)?;
    let engine = crate::backend::engine(&a.data, &a.models, Default::default());
    crate::backend::open_or_create(&engine, &name, a.json)?;
    // Ingest skips documents already stored unchanged, so a second evaluation costs seconds.
    let ingest = engine.ingest_paths(&name, &[corpus], IngestOptions::default(), &mut ())?;
    if !a.json {
        eprintln!(
            "collection {name}: {} added, {} unchanged, {} failed",
            ingest.added,
            ingest.unchanged,
            ingest.failed.len()
        );
    }
    let searcher = engine.searcher(&name)?;
    let spec = EvalSpec {
        dataset: dataset_name,
        split: a.split,
        base: SearchParams {
            ef: a.fusion.ef,
            fusion: a.fusion.fusion()?,
            ..SearchParams::default()
        },
        candidates: a.candidates,
    };
    let report =
        ragd_eval::beir::evaluate(&spec, searcher.collection(), &searcher, &queries, &qrels)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} ({} split, {} queries), collection {}",
        report.dataset, report.split, report.queries, report.collection
    );
    println!(
        "{:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "mode", "nDCG@10", "Recall@100", "MRR@10", "p50 ms", "p95 ms", "p99 ms"
    );
    for (mode, m) in &report.modes {
        println!(
            "{:<8} {:>8.4} {:>10.4} {:>8.4} {:>8.2} {:>8.2} {:>8.2}",
            mode, m.ndcg_10, m.recall_100, m.mrr_10, m.p50_ms, m.p95_ms, m.p99_ms
        );
    }
    println!(
        "HNSW recall@10 vs exact at ef {}: {:.4}; query embedding p50 {:.2} ms",
        report.ef_search, report.hnsw_recall_10, report.embed_p50_ms
    );
    Ok(())
}
