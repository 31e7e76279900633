//! Model throughput, optionally beside the peer run on the same input in the same invocation,
//! so a speed claim is always a ratio measured together.

use crate::peers::{Peers, ratio, threads};
use anyhow::{Context, Result, bail};
use ragd_models::kernels::{self, Kernels};
use ragd_models::registry::{DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{
    BatchOptions, Completion, Embedder, Embedding, GenerateRequest, Generator, GeneratorOptions,
    Precision, Prompt, RemoteOptions,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `ragd bench embed`: every non-empty line of `input` embedded.
#[derive(Debug, Clone)]
pub struct EmbedBench {
    /// File with one text per line.
    pub input: PathBuf,
    /// Encoder directory [default: the default encoder in `models_dir`].
    pub model: Option<PathBuf>,
    pub models_dir: PathBuf,
    pub batch: BatchOptions,
    /// The CPU kernels to run (the scalar ones measure what a CPU without AVX2/FMA gets).
    pub kernels: Kernels,
    /// The encoder's precision; at int8 the f32 run of the same texts is timed and compared too.
    pub precision: Precision,
    /// Also run sentence-transformers and ONNX Runtime (f32 and int8) on the same texts.
    pub peers: Option<Peers>,
}

/// `ragd bench generate`: a prompt file prefilled (verbatim) and decoded greedily.
#[derive(Debug, Clone)]
pub struct GenerateBench {
    /// The full prompt, used verbatim (no chat template), special tokens recognised.
    pub prompt_file: PathBuf,
    /// Tokens to generate (fewer if the model ends its answer).
    pub max_tokens: usize,
    /// GGUF file [default: the default decoder in `models_dir`].
    pub model: Option<PathBuf>,
    pub models_dir: PathBuf,
    /// The CPU kernels to run.
    pub kernels: Kernels,
    /// Also run llama.cpp on the same prompt.
    pub peers: Option<Peers>,
    /// Generate through this OpenAI-compatible model server (serving `model`) instead of the
    /// local decoder, and compare with the server's own prompt time.
    pub model_server: Option<String>,
    /// Run this many generations at once (each prompt tagged so none shares a cached prefix):
    /// the local decoder with as many sessions, and, with `model_server`, the server too in the
    /// same run (start it with as many slots, e.g. `llama-server -np N`).
    pub concurrency: Option<usize>,
}

/// Runs of the prompt through a model server (each starts with its own tag, so no run reuses
/// a prompt the server has cached, from this bench or an earlier one).
const SERVER_RUNS: usize = 5;

/// Texts and tokens per second (with the peer's figures and the ratio when asked).
pub fn embed(args: &EmbedBench) -> Result<Value> {
    let model_dir = match &args.model {
        Some(p) => p.clone(),
        None => {
            let dir = &args.models_dir;
            if !DEFAULT_ENCODER.dir(dir).is_dir() {
                return Err(DEFAULT_ENCODER.missing(dir).into());
            }
            DEFAULT_ENCODER.dir(dir)
        }
    };
    let raw = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let texts: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    if texts.is_empty() {
        bail!("{} has no non-empty lines", args.input.display());
    }
    kernels::use_kernels(args.kernels);
    let embedder = Embedder::load(&model_dir)?.with_batch_options(args.batch);
    let timed = |precision: Precision| -> Result<(Vec<Embedding>, f64)> {
        // Warm-up, as the peers do (and the int8 weights are quantized here).
        embedder.embed_with(&texts[..texts.len().min(64)], precision)?;
        let t = Instant::now();
        let out = embedder.embed_with(&texts, precision)?;
        Ok((out, t.elapsed().as_secs_f64()))
    };
    let (out, seconds) = timed(args.precision)?;
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    // What the linear layers process: every batch padded to its longest input (attention
    // skips the padding).
    let lens: Vec<usize> = out.iter().map(|e| e.tokens).collect();
    let padded: usize = ragd_models::plan_batches(&lens, args.batch)
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lens[i]).max().unwrap_or(0).max(1))
        .sum();
    let texts_per_s = texts.len() as f64 / seconds;
    let mut report = json!({
        "system": "ragd",
        "model": embedder.name(),
        "precision": args.precision,
        "texts": texts.len(),
        "tokens": tokens,
        "padded_tokens": padded,
        "padding_share": round3(1.0 - tokens as f64 / padded.max(1) as f64),
        "truncated": out.iter().filter(|e| e.truncated).count(),
        "seconds": round3(seconds),
        "texts_per_s": round1(texts_per_s),
        "tokens_per_s": round1(tokens as f64 / seconds),
        "threads": threads(),
        "kernels": kernels::active(),
    });
    if args.precision == Precision::Int8 {
        report["int8_kernels"] = json!(kernels::int8_kernels());
        let (reference, f32_seconds) = timed(Precision::F32)?;
        let cos: Vec<f64> = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| {
                a.vector
                    .iter()
                    .zip(&b.vector)
                    .map(|(x, y)| (x * y) as f64)
                    .sum()
            })
            .collect();
        report["f32_texts_per_s"] = json!(round1(texts.len() as f64 / f32_seconds));
        report["speedup_vs_f32"] = json!(round3(f32_seconds / seconds));
        report["min_cosine_vs_f32"] = json!(round5(cos.iter().copied().fold(f64::MAX, f64::min)));
        report["mean_cosine_vs_f32"] = json!(round5(cos.iter().sum::<f64>() / cos.len() as f64));
    }
    if let Some(peers) = &args.peers {
        let peer = peers.run("embed.py", &[&model_dir, &args.input], &[])?;
        report["ratio_texts_per_s"] = ratio(texts_per_s, &peer, "texts_per_s");
        report["peer"] = peer;
        for (key, extra) in [
            ("onnxruntime_f32", vec![]),
            ("onnxruntime_int8", vec!["--int8".to_string()]),
        ] {
            let peer = peers.run("embed_onnx.py", &[&model_dir, &args.input], &extra)?;
            report[format!("ratio_texts_per_s_vs_{key}")] =
                ratio(texts_per_s, &peer, "texts_per_s");
            report[format!("peer_{key}")] = peer;
        }
    }
    Ok(report)
}

/// Prefill and decode tokens per second and time to first token (with the peer's figures and
/// the ratios when asked).
pub fn generate(args: &GenerateBench) -> Result<Value> {
    let gguf = match &args.model {
        Some(p) => p.clone(),
        None => {
            let dir = &args.models_dir;
            let path = DEFAULT_DECODER.gguf_path(dir);
            if !path.is_file() {
                return Err(DEFAULT_DECODER.missing(dir).into());
            }
            path
        }
    };
    let prompt = std::fs::read_to_string(&args.prompt_file)
        .with_context(|| format!("reading {}", args.prompt_file.display()))?;
    if let Some(n) = args.concurrency {
        return generate_concurrent(args, &gguf, &prompt, n.max(1));
    }
    if let Some(url) = &args.model_server {
        return generate_remote(url, &gguf, &prompt, args.max_tokens);
    }
    kernels::use_kernels(args.kernels);
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
        "kernels": kernels::active(),
        "text": c.text,
    });
    if let Some(peers) = &args.peers {
        let peer = peers.run(
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
    Ok(report)
}

/// The prompt through a model server: ragd's time to first token (from picking the request up
/// to the first streamed text: request building, HTTP, the server's prefill, event parsing)
/// against the server's own prompt time for the same request, medians of [`SERVER_RUNS`].
fn generate_remote(url: &str, gguf: &Path, prompt: &str, max_tokens: usize) -> Result<Value> {
    let mut server = RemoteOptions::new(url, "default");
    server.tokenizer = Some(gguf.to_path_buf());
    let generator = Generator::remote(server, GeneratorOptions::default())?;
    let run = |text: String, n: usize| -> Result<Completion> {
        Ok(generator
            .generate(GenerateRequest::greedy(Prompt::Text(text), n))?
            .blocking_collect(|_| ())?)
    };
    run("Hello, world".into(), 2)?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut last = None;
    for i in 0..SERVER_RUNS {
        let c = run(format!("{nonce}-{i}. {prompt}"), max_tokens)?;
        let server_prefill = c.usage.server_prefill_seconds.with_context(|| {
            format!("the model server at {url} reports no timings.prompt_ms (llama.cpp's llama-server does)")
        })?;
        ours.push(c.usage.time_to_first_token_seconds);
        theirs.push(server_prefill);
        last = Some(c);
    }
    let c = last.context("no run")?;
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    Ok(json!({
        "system": "ragd via model server",
        "model_server": url,
        "model": generator.name(),
        "runs": SERVER_RUNS,
        "prompt_tokens": c.usage.prompt_tokens,
        "generated_tokens": c.usage.generated_tokens,
        "time_to_first_token_seconds": round3(ours),
        "server_prefill_seconds": round3(theirs),
        "overhead_ms": round1((ours - theirs) * 1e3),
        // 1.0: nothing added; the target is at most 1.1.
        "ratio_time_to_first_token_vs_server": round3(ours / theirs.max(1e-9)),
        "decode_tokens_per_s": round1(c.usage.decode_tokens_per_s()),
        "finish": c.finish,
        "text": c.text,
    }))
}

/// `n` generations at once on the local decoder (`n` sessions) and, when a model server is
/// given, through it: decode throughput in all (generated tokens after each stream's first,
/// over the time from the first stream's first token to the last stream's end) and time to
/// first token p50/p95 (from submission).
fn generate_concurrent(args: &GenerateBench, gguf: &Path, prompt: &str, n: usize) -> Result<Value> {
    kernels::use_kernels(args.kernels);
    let opts = GeneratorOptions {
        sessions: n,
        queue: n,
        context: 4096,
        ..GeneratorOptions::default()
    };
    let local = Generator::load(gguf, opts)?;
    let mut report = json!({
        "concurrency": n,
        "max_tokens": args.max_tokens,
        "threads": threads(),
        "kernels": kernels::active(),
        "ragd": concurrent_run(&local, prompt, n, args.max_tokens)?,
    });
    if let Some(url) = &args.model_server {
        let mut server = RemoteOptions::new(url, "default");
        server.tokenizer = Some(gguf.to_path_buf());
        let remote = Generator::remote(server, opts)?;
        let peer = concurrent_run(&remote, prompt, n, args.max_tokens)?;
        report["ratio_decode_tokens_per_s"] = ratio(
            report["ragd"]["decode_tokens_per_s"]
                .as_f64()
                .unwrap_or(0.0),
            &peer,
            "decode_tokens_per_s",
        );
        report["model_server"] = peer;
    }
    Ok(report)
}

fn concurrent_run(g: &Generator, prompt: &str, n: usize, max_tokens: usize) -> Result<Value> {
    // Warm-up: every session once (a session's KV cache is allocated on its first use).
    let warm = (0..n)
        .map(|_| {
            g.generate(GenerateRequest::greedy(
                Prompt::Text("Hello, world".into()),
                2,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for s in warm {
        s.blocking_collect(|_| ())?;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let start = Instant::now();
    let streams = (0..n)
        .map(|i| {
            g.generate(GenerateRequest::greedy(
                Prompt::Text(format!("{nonce}-{i}. {prompt}")),
                max_tokens,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results: Vec<(f64, f64, Completion)> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                scope.spawn(move || -> Result<(f64, f64, Completion)> {
                    let mut first = None;
                    while let Some(ev) = s.blocking_next() {
                        match ev? {
                            ragd_models::GenerationEvent::Delta(_) => {
                                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                            }
                            ragd_models::GenerationEvent::Done(c) => {
                                let end = start.elapsed().as_secs_f64();
                                return Ok((first.unwrap_or(end), end, c));
                            }
                        }
                    }
                    bail!("a generation stream ended without its completion")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut ttft: Vec<f64> = results.iter().map(|r| r.0).collect();
    let decode_start = ttft.iter().copied().fold(f64::INFINITY, f64::min);
    let end = results.iter().map(|r| r.1).fold(0.0, f64::max);
    let decoded: usize = results
        .iter()
        .map(|r| r.2.usage.generated_tokens.saturating_sub(1))
        .sum();
    let generated: usize = results.iter().map(|r| r.2.usage.generated_tokens).sum();
    ttft.sort_by(f64::total_cmp);
    let p95 = ttft[((ttft.len() as f64 * 0.95).ceil() as usize).clamp(1, ttft.len()) - 1];
    Ok(json!({
        "system": g.name(),
        "generated_tokens": generated,
        "wall_seconds": round3(end),
        "decode_tokens_per_s": round1(decoded as f64 / (end - decode_start).max(1e-9)),
        "time_to_first_token_p50_seconds": round3(median(&mut ttft.clone())),
        "time_to_first_token_p95_seconds": round3(p95),
    }))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Prints a report: one JSON line, or one `key: value` line per field.
pub fn print_report(report: &Value, json: bool) {
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
fn round5(x: f64) -> f64 {
    (x * 100_000.0).round() / 100_000.0
}
