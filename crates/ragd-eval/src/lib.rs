//! ragd's measurement programs, kept out of the serving crates: retrieval quality on BEIR
//! datasets ([`beir`]), answer quality on QA sets ([`answers`]), model throughput
//! ([`bench::embed`], [`bench::generate`]), search latency and HNSW recall/QPS on a large
//! synthetic collection ([`search::run`]), and a naive RAG peer for answer quality
//! ([`peer_answers::run`]). Each can run its peer (`../shared/peers`: sentence-transformers,
//! llama.cpp, faiss, ONNX Runtime) in the same invocation, so a speed or quality claim is a
//! ratio measured together. Reports are JSON values; the `ragd bench` and `ragd eval`
//! subcommands only map their flags onto these functions and print.
//!
//! These are programs' building blocks: their errors (`anyhow`) are only ever shown to the
//! person who ran them.

pub mod answers;
pub mod beir;
pub mod bench;
pub mod peer_answers;
pub mod peers;
pub mod search;

pub use peers::Peers;
pub use ragd_models::kernels::{Kernels, use_kernels};
pub use ragd_models::{BatchOptions, Precision};

use serde_json::{Value, json};

/// p50, p95 and p99 of latencies in milliseconds.
pub fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q| beir::percentile(&ms, q);
    json!({"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99)})
}
