//! `ragd bench`: model throughput, optionally beside the peer systems run on the same input in
//! the same invocation (`--compare`), so a speed claim is always a ratio measured together.

use crate::commands::ModelsDir;
use anyhow::{Context, Result, bail};
use clap::Args;
use ragd_models::registry::{DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{BatchOptions, Embedder, GenerateRequest, Generator, GeneratorOptions, Prompt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
    #[command(flatten)]
    peers: PeerArgs,
    #[command(flatten)]
    dir: ModelsDir,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// Also run the peer (sentence-transformers / llama.cpp) on the same input and report the ratio.
    #[arg(long)]
    pub(crate) compare: bool,
    /// Directory with the peers' scripts (embed.py, generate.py).
    #[arg(long, default_value = "../shared/peers")]
    peers_dir: PathBuf,
    /// The peers' Python environment [default: $RAGD_PEERS, else ~/.cache/ragd-peers].
    #[arg(long)]
    peers_env: Option<PathBuf>,
    /// Threads the peer may use (ours follow RAYON_NUM_THREADS, default all cores).
    #[arg(long, default_value_t = 2)]
    peer_threads: usize,
}

impl PeerArgs {
    pub(crate) fn run(&self, script: &str, args: &[&Path], extra: &[String]) -> Result<Value> {
        let env = self.peers_env.clone().unwrap_or_else(|| {
            std::env::var_os("RAGD_PEERS")
                .map(PathBuf::from)
                .unwrap_or_else(|| dirs_home().join(".cache").join("ragd-peers"))
        });
        let python = env.join("bin").join("python");
        if !python.is_file() {
            bail!(
                "peer environment not found at {}; run `bash {}/setup.sh` first",
                env.display(),
                self.peers_dir.display()
            );
        }
        let out = Command::new(&python)
            .arg(self.peers_dir.join(script))
            .args(args)
            .args(["--threads", &self.peer_threads.to_string()])
            .args(extra)
            .output()
            .with_context(|| format!("running {script}"))?;
        if !out.status.success() {
            bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(line).with_context(|| format!("parsing {script} output: {stdout}"))
    }
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn ratio(ours: f64, peer: &Value, key: &str) -> Value {
    match peer.get(key).and_then(Value::as_f64) {
        Some(p) if p > 0.0 => json!((ours / p * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

pub(crate) fn embed(args: &EmbedArgs) -> Result<()> {
    let model_dir = match &args.model {
        Some(p) => p.clone(),
        None => {
            let dir = args.dir.resolve();
            if !DEFAULT_ENCODER.dir(&dir).is_dir() {
                return Err(DEFAULT_ENCODER.missing(&dir).into());
            }
            DEFAULT_ENCODER.dir(&dir)
        }
    };
    let raw = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let texts: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    if texts.is_empty() {
        bail!("{} has no non-empty lines", args.input.display());
    }
    let embedder = Embedder::load(&model_dir)?.with_batch_options(BatchOptions {
        max_batch_tokens: args.batch_tokens,
        max_batch_size: args.batch_size,
    });
    embedder.embed(&texts[..texts.len().min(64)])?; // warm-up, as the peer does
    let t = Instant::now();
    let out = embedder.embed(&texts)?;
    let seconds = t.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    let mut report = json!({
        "system": "ragd",
        "model": embedder.name(),
        "texts": texts.len(),
        "tokens": tokens,
        "truncated": out.iter().filter(|e| e.truncated).count(),
        "seconds": round3(seconds),
        "texts_per_s": round1(texts.len() as f64 / seconds),
        "tokens_per_s": round1(tokens as f64 / seconds),
        "threads": threads(),
    });
    if args.peers.compare {
        let peer = args
            .peers
            .run("embed.py", &[&model_dir, &args.input], &[])?;
        report["ratio_texts_per_s"] = ratio(texts.len() as f64 / seconds, &peer, "texts_per_s");
        report["peer"] = peer;
    }
    print_report(&report, args.json);
    Ok(())
}

pub(crate) fn generate(args: &GenerateArgs) -> Result<()> {
    let gguf = match &args.model {
        Some(p) => p.clone(),
        None => {
            let dir = args.dir.resolve();
            let path = DEFAULT_DECODER.gguf_path(&dir);
            if !path.is_file() {
                return Err(DEFAULT_DECODER.missing(&dir).into());
            }
            path
        }
    };
    let prompt = std::fs::read_to_string(&args.prompt_file)
        .with_context(|| format!("reading {}", args.prompt_file.display()))?;
    let generator = Generator::load(
        &gguf,
        GeneratorOptions {
            sessions: 1,
            context: 8192,
            ..GeneratorOptions::default()
        },
    )?;
    // Warm-up: a few tokens through every code path, as the peer does.
    generator
        .generate(GenerateRequest::greedy(
            Prompt::Text("Hello, world".into()),
            2,
        ))?
        .blocking_collect(|_| ())?;
    let c = generator
        .generate(GenerateRequest::greedy(
            Prompt::Text(prompt),
            args.max_tokens,
        ))?
        .blocking_collect(|_| ())?;
    let u = &c.usage;
    let prefill = u.prefill_tokens_per_s();
    let decode = u.decode_tokens_per_s();
    let mut report = json!({
        "system": "ragd",
        "model": generator.name(),
        "prompt_tokens": u.prompt_tokens,
        "generated_tokens": u.generated_tokens,
        "prefill_seconds": round3(u.prefill_seconds),
        "time_to_first_token_seconds": round3(u.time_to_first_token_seconds),
        "prefill_tokens_per_s": round1(prefill),
        "decode_tokens_per_s": round1(decode),
        "finish": c.finish,
        "threads": threads(),
        "text": c.text,
    });
    if args.peers.compare {
        let peer = args.peers.run(
            "generate.py",
            &[&gguf, &args.prompt_file],
            &["--max-tokens".into(), args.max_tokens.to_string()],
        )?;
        report["ratio_prefill"] = ratio(prefill, &peer, "prefill_tokens_per_s");
        // The peer's time to first token is its prefill time (sampling one token is noise).
        if let (Some(n), Some(rate)) = (
            peer["prompt_tokens"].as_f64(),
            peer["prefill_tokens_per_s"].as_f64(),
        ) && rate > 0.0
        {
            let peer_ttft = n / rate;
            report["peer_time_to_first_token_seconds"] = json!(round3(peer_ttft));
            // Above 1: ragd's first token comes sooner.
            report["ratio_time_to_first_token"] =
                json!(round3(peer_ttft / u.time_to_first_token_seconds.max(1e-9)));
        }
        report["ratio_decode"] = ratio(decode, &peer, "decode_tokens_per_s");
        report["peer"] = peer;
    }
    print_report(&report, args.json);
    Ok(())
}

fn print_report(report: &Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            println!("{k:>28}: {v}");
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
