//! `ragd bench`: model throughput, optionally beside the peer systems run on the same input in
//! the same invocation (`--compare`), so a speed claim is always a ratio measured together.

use crate::flags::{ModelsDir, PeerArgs};
use anyhow::Result;
use clap::Args;
use ragd_eval::bench::{EmbedBench, GenerateBench};
use ragd_eval::{BatchOptions, Kernels, Precision};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// File with one text per line.
    #[arg(long)]
    input: PathBuf,
    /// Encoder directory [default: the default encoder in the models directory].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most padded tokens per forward pass.
    #[arg(long, default_value_t = BatchOptions::default().max_batch_tokens)]
    batch_tokens: usize,
    /// Most texts per forward pass.
    #[arg(long, default_value_t = BatchOptions::default().max_batch_size)]
    batch_size: usize,
    /// The encoder's precision: `f32`, or `int8` (then the f32 run is timed too, with the
    /// cosine of each int8 vector to its f32 one).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[command(flatten)]
    kernels: KernelArgs,
    #[command(flatten)]
    peers: PeerArgs,
    #[command(flatten)]
    dir: ModelsDir,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// File holding the full prompt; used verbatim (no chat template), special tokens recognised.
    #[arg(long)]
    prompt_file: PathBuf,
    /// Tokens to generate (greedy; fewer if the model ends its answer).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// GGUF file [default: the default decoder in the models directory].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Generate through this OpenAI-compatible model server (its base URL, e.g.
    /// http://127.0.0.1:8080/v1, serving the GGUF of `--model`) and compare ragd's time to
    /// first token with the server's own prompt time.
    #[arg(long, conflicts_with = "compare")]
    model_server: Option<String>,
    /// Run N generations at once (the local decoder with N sessions; with --model-server, the
    /// server too, in the same run: start it with N slots) and report total decode tokens/s
    /// and time to first token p50/p95.
    #[arg(long, conflicts_with = "compare")]
    concurrency: Option<usize>,
    #[command(flatten)]
    kernels: KernelArgs,
    #[command(flatten)]
    peers: PeerArgs,
    #[command(flatten)]
    dir: ModelsDir,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KernelArgs {
    /// Run the portable scalar kernels instead of the fastest ones this CPU has (what a CPU
    /// without AVX2/FMA gets).
    #[arg(long)]
    scalar_kernels: bool,
    /// Run the AVX2/FMA build of the vectorized kernels even on a CPU with AVX-512 (to compare
    /// the two on one machine).
    #[arg(long, conflicts_with = "scalar_kernels")]
    avx2_kernels: bool,
}

impl KernelArgs {
    pub(crate) fn choice(&self) -> Kernels {
        if self.scalar_kernels {
            Kernels::Scalar
        } else if self.avx2_kernels {
            Kernels::Avx2
        } else {
            Kernels::Detected
        }
    }
}

pub(crate) fn embed(args: &EmbedArgs) -> Result<()> {
    let report = ragd_eval::bench::embed(&EmbedBench {
        input: args.input.clone(),
        model: args.model.clone(),
        models_dir: args.dir.resolve(),
        batch: BatchOptions {
            max_batch_tokens: args.batch_tokens,
            max_batch_size: args.batch_size,
        },
        kernels: args.kernels.choice(),
        precision: args.precision,
        peers: args.peers.peers(),
    })?;
    ragd_eval::bench::print_report(&report, args.json);
    Ok(())
}

pub(crate) fn generate(args: &GenerateArgs) -> Result<()> {
    let report = ragd_eval::bench::generate(&GenerateBench {
        prompt_file: args.prompt_file.clone(),
        max_tokens: args.max_tokens,
        model: args.model.clone(),
        models_dir: args.dir.resolve(),
        kernels: args.kernels.choice(),
        peers: args.peers.peers(),
        model_server: args.model_server.clone(),
        concurrency: args.concurrency,
    })?;
    ragd_eval::bench::print_report(&report, args.json);
    Ok(())
}
