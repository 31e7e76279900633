//! `ragd bench search`: flags for `ragd_eval::search` (search latency and HNSW speed on a large
//! synthetic collection built from a real one, beside faiss with `--compare`).

use crate::flags::{DataDir, ModelsDir, PeerArgs};
use anyhow::Result;
use clap::Args;
use ragd_eval::search::SearchBench;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct SearchBenchArgs {
    /// Collection whose chunks (text and vectors) are repeated to build the synthetic one.
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    /// queries.jsonl (BEIR layout) supplying the queries.
    #[arg(long)]
    queries: PathBuf,
    /// Chunks in the synthetic collection.
    #[arg(long, default_value_t = 100_000)]
    chunks: usize,
    /// Queries used (the first N).
    #[arg(long, default_value_t = 300)]
    max_queries: usize,
    /// HNSW ef values to measure recall@10 and single-thread QPS at.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    ef: Vec<usize>,
    #[command(flatten)]
    peers: PeerArgs,
    #[command(flatten)]
    kernels: crate::bench::KernelArgs,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: &SearchBenchArgs) -> Result<()> {
    // The vector distances run on these kernels too.
    ragd_eval::use_kernels(a.kernels.choice());
    let report = ragd_eval::search::run(&SearchBench {
        collection: a.collection.clone(),
        data_dir: a.data.data_dir.clone(),
        models_dir: a.models.resolve(),
        queries: a.queries.clone(),
        chunks: a.chunks,
        max_queries: a.max_queries,
        ef: a.ef.clone(),
        peers: a.peers.peers(),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        ragd_eval::search::print_report(&report);
    }
    Ok(())
}
