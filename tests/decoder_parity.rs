//! The decoder's forward pass against llama.cpp's, on tiny random-weight GGUF files written here:
//! llama (interleaved RoPE, grouped KV heads), Llama 3 style per-frequency RoPE factors and
//! linear scaling, Qwen2 (NeoX RoPE, Q/K/V biases), Qwen3 (per-head Q/K norms, heads wider than
//! hidden / heads), Phi-3 (stacked Q/K/V and gate/up tensors), Gemma 3 (sliding-window layers,
//! GeGLU, post-norms, scaled embeddings, soft-capped logits), Gemma 2 (alternating windows,
//! soft-capped attention scores), in F32 and in the quantized types the fast kernels run (Q4_1,
//! Q8_0). Each file is served by `llama-server` (built by
//! `deploy/llama-server/build.sh`, its path in `LLAMA_SERVER`) on loopback; for prompts of 1 to
//! 200 token ids the next-token log-probabilities it reports are compared with
//! `LlamaWeights::forward` over the whole prompt and over the prompt then its last token.
#![allow(clippy::unwrap_used)]

use candle_core::quantized::GgmlDType;
use ragd_models::llama::LlamaWeights;
use ragd_models::testing::{CONTEXT, Rng, TinySpec as Spec, write_tiny_gguf};
use ragd_models::{ChatMessage, GenerateRequest, Generator, GeneratorOptions, Prompt};
use serde_json::json;
use std::path::{Path, PathBuf};

mod llama_server;
use llama_server::LlamaServer;

/// How far ragd's next-token log-probabilities may be from llama.cpp's: the largest difference
/// among llama.cpp's top 8 tokens of every prompt, and the mean difference. F32 weights differ
/// only in rounding (measured: worst 0.001-0.007, mean 0.0002-0.0012); with quantized weights
/// both also quantize each activation row to 8-bit blocks, llama.cpp with f16 block scales and
/// ragd with f32 ones (measured: worst 0.02-0.14, mean 0.005-0.030). A wrong RoPE layout or a
/// missing bias moves them by whole units (Qwen2 run with llama's RoPE: worst 2.9, mean 0.7).
#[derive(Clone, Copy)]
struct Tolerance {
    worst: f32,
    mean: f64,
}

const F32: Tolerance = Tolerance {
    worst: 0.02,
    mean: 0.003,
};

const QUANTIZED: Tolerance = Tolerance {
    worst: 0.3,
    mean: 0.06,
};

const LLAMA: Spec = Spec::LLAMA;
const QWEN2: Spec = Spec::QWEN2;
const QWEN3: Spec = Spec::QWEN3;
const PHI3: Spec = Spec::PHI3;
const GEMMA3: Spec = Spec::GEMMA3;
const GEMMA2: Spec = Spec::GEMMA2;

fn write_gguf(path: &Path, spec: Spec) -> usize {
    write_tiny_gguf(path, &spec).unwrap()
}

/// `llama-server` serving one tiny model, one slot, F32 KV cache.
fn serve(model: &Path) -> LlamaServer {
    let ctx = CONTEXT.to_string();
    LlamaServer::start(
        model,
        &[
            "-c",
            &ctx,
            "-np",
            "1",
            "-t",
            "2",
            "-ctk",
            "f32",
            "-ctv",
            "f32",
            "--no-webui",
        ],
    )
}

/// The tiny model through the whole generator.
fn generator(path: &Path) -> Generator {
    Generator::load(
        path,
        GeneratorOptions {
            context: CONTEXT,
            ..GeneratorOptions::default()
        },
    )
    .unwrap()
}

/// llama.cpp's log-probabilities of its `k` likeliest next tokens after `prompt`.
fn next_logprobs(server: &LlamaServer, prompt: &[u32], k: usize) -> Vec<(u32, f32)> {
    let body = json!({
        "prompt": prompt,
        "n_predict": 1,
        "n_probs": k,
        "temperature": 0.0,
        "cache_prompt": false,
    });
    let reply = server.post("completion", &body);
    let top = reply["completion_probabilities"][0]["top_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no top_logprobs in {reply}"));
    top.iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap() as u32,
                t["logprob"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    logits.iter().map(|l| l - log_z).collect()
}

/// Writes `spec`'s model, serves it, and checks ragd's next-token log-probabilities against
/// llama.cpp's for 32 prompts: top-1 agreement (where ragd's own top two are `tol` apart) on
/// at least 31, and every one of llama.cpp's top 8 within `tol`.
fn check(spec: Spec, tol: Tolerance) {
    let Tolerance {
        worst: tol,
        mean: mean_tol,
    } = tol;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join(format!("tiny-{}.gguf", spec.arch));
    let vocab = write_gguf(&path, spec);
    let ours = LlamaWeights::open(&path).unwrap();
    assert_eq!(ours.config.architecture, spec.arch);
    assert_eq!(ours.config.vocab, vocab);
    let server = serve(&path);
    let mut rng = Rng(spec.seed ^ 0xABCD);
    let lengths = [
        1, 2, 3, 5, 7, 8, 11, 13, 15, 16, 17, 19, 21, 24, 28, 30, 33, 36, 40, 48, 55, 64, 72, 80,
        89, 100, 120, 144, 160, 180, 190, 200,
    ];
    let (mut disagreements, mut worst, mut sum, mut count) = (Vec::new(), 0f32, 0f64, 0usize);
    for &n in &lengths {
        let prompt: Vec<u32> = (0..n)
            .map(|_| (rng.next() % (vocab as u64 - 3)) as u32)
            .collect();
        let theirs = next_logprobs(&server, &prompt, 8);
        assert_eq!(theirs.len(), 8, "prompt of {n}");
        // The whole prompt at once (the GEMM attention above 16 rows), then the prompt less its
        // last token followed by that token (a decode step over the cache).
        let mut state = ours.new_state(CONTEXT);
        let whole = log_softmax(&ours.forward(&prompt, &mut state).unwrap());
        let mut state = ours.new_state(CONTEXT);
        if n > 1 {
            ours.forward(&prompt[..n - 1], &mut state).unwrap();
        }
        let stepped = log_softmax(&ours.forward(&prompt[n - 1..], &mut state).unwrap());
        for mine in [&whole, &stepped] {
            let mut order: Vec<usize> = (0..mine.len()).collect();
            order.sort_by(|&a, &b| mine[b].total_cmp(&mine[a]));
            let (top, second) = (order[0], order[1]);
            if top as u32 != theirs[0].0
                && mine[top] - mine[second] > tol
                && disagreements.last().is_none_or(|&(m, _, _)| m != n)
            {
                disagreements.push((n, top, theirs[0].0));
            }
            for &(id, lp) in &theirs {
                let diff = (mine[id as usize] - lp).abs();
                worst = worst.max(diff);
                sum += f64::from(diff);
                count += 1;
            }
        }
    }
    eprintln!(
        "{} {:?}: |log p difference| worst {worst:.5} mean {:.5}, top-1 disagreements \
         {disagreements:?}",
        spec.arch,
        spec.dtype,
        sum / count as f64
    );
    assert!(
        disagreements.len() <= 1,
        "top-1 differs from llama.cpp: {disagreements:?}"
    );
    assert!(
        worst < tol,
        "a log-probability differs from llama.cpp's by {worst} (tolerance {tol})"
    );
    let mean = sum / count as f64;
    assert!(
        mean < mean_tol,
        "log-probabilities differ from llama.cpp's by {mean} on average (tolerance {mean_tol})"
    );
}

#[test]
fn llama_f32_matches_llama_cpp() {
    check(LLAMA, F32);
}

#[test]
fn llama3_rope_factors_and_linear_scaling_match_llama_cpp() {
    check(
        Spec {
            rope_freqs: true,
            linear_scale: Some(4.0),
            freq_base: 500_000.0,
            seed: 2,
            ..LLAMA
        },
        F32,
    );
}

#[test]
fn qwen2_f32_matches_llama_cpp() {
    check(QWEN2, F32);
}

#[test]
fn qwen3_f32_matches_llama_cpp() {
    check(QWEN3, F32);
}

#[test]
fn phi3_f32_matches_llama_cpp() {
    check(PHI3, F32);
}

/// Gemma 3: sliding-window layers (prompts up to 200 tokens against a window of 24) with their
/// own RoPE base, a global layer, GeGLU, post-norms, scaled embeddings, soft-capped logits.
#[test]
fn gemma3_f32_matches_llama_cpp() {
    check(GEMMA3, F32);
}

/// Gemma 2: alternating sliding-window and global layers, attention scores and logits
/// soft-capped, output tied to the embedding.
#[test]
fn gemma2_f32_matches_llama_cpp() {
    check(GEMMA2, F32);
}

/// The quantized kernels (Q4_1 and Q8_0 weights, on ragd's own integer dot products) stay within
/// a few hundredths of llama.cpp's on average.
#[test]
fn quantized_models_match_llama_cpp() {
    for (dtype, seed) in [(GgmlDType::Q4_1, 4), (GgmlDType::Q8_0, 5)] {
        check(
            Spec {
                dtype,
                seed,
                ..LLAMA
            },
            QUANTIZED,
        );
        check(
            Spec {
                dtype,
                seed: seed + 10,
                ..QWEN2
            },
            QUANTIZED,
        );
        check(
            Spec {
                dtype,
                seed: seed + 20,
                ..QWEN3
            },
            QUANTIZED,
        );
        check(
            Spec {
                dtype,
                seed: seed + 30,
                ..PHI3
            },
            QUANTIZED,
        );
        check(
            Spec {
                dtype,
                seed: seed + 40,
                ..GEMMA3
            },
            QUANTIZED,
        );
        check(
            Spec {
                dtype,
                seed: seed + 50,
                ..GEMMA2
            },
            QUANTIZED,
        );
    }
}

/// A Qwen2 GGUF through the whole generator: its ChatML prompt is tokenized as llama.cpp
/// tokenizes it (Qwen2 pre-tokenizer, special tokens whole) and greedy decoding writes the
/// tokens llama.cpp writes.
#[test]
fn qwen2_generates_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    let vocab = write_gguf(&path, Spec { seed: 7, ..QWEN2 });
    let generator = generator(&path);
    let prompt = generator
        .render_chat(&[
            ChatMessage::new("system", "Answer in one line."),
            ChatMessage::new("user", "What is the theme of the thing in 2024?"),
        ])
        .unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt}");
    let eot = (vocab - 3) as u32;
    let server = serve(&path);
    let theirs = server.post(
        "tokenize",
        &json!({"content": prompt, "add_special": false, "parse_special": true}),
    );
    let theirs: Vec<u32> = theirs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(generator.tokenize(&prompt).unwrap(), theirs);
    let reply = server.post(
        "completion",
        &json!({"prompt": prompt, "n_predict": 16, "temperature": 0.0, "cache_prompt": false,
                "return_tokens": true}),
    );
    let ids: Vec<u32> = reply["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {reply}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let ours = generator
        .generate(GenerateRequest::greedy(Prompt::Text(prompt), ids.len()))
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap();
    assert!(!ids.is_empty());
    // An end-of-turn token ends both; neither writes it as text.
    let end = ids.iter().position(|&i| i == eot || i == eot + 2);
    assert_eq!(
        ours.text,
        generator
            .detokenize(&ids[..end.unwrap_or(ids.len())])
            .unwrap()
    );
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: Phi-3, Mistral, Llama 2 GGUFs)
/// rebuilt from the GGUF: texts tokenize to llama.cpp's ids (BOS first, `▁` for spaces and
/// after special tokens, score-ranked merges, `<0xXX>` for what no piece covers) and ids
/// detokenize to llama.cpp's text, less the space the `▁` prefix added.
#[test]
fn sentencepiece_tokenizes_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-phi3-spm.gguf");
    write_gguf(
        &path,
        Spec {
            sentencepiece: true,
            ..PHI3
        },
    );
    let generator = generator(&path);
    let server = serve(&path);
    let texts = [
        "what is the café in Saint-Malo?",
        "The  tide,  at 13:40 -- it rises!",
        "<|user|>\nwhat is it?<|end|>\n<|user|> and the other",
        "naïve 東京 résumé \u{1F30A} end",
        " leading and trailing spaces ",
        "",
    ];
    for text in texts {
        let theirs: Vec<u32> = server.post(
            "tokenize",
            &json!({"content": text, "add_special": true, "parse_special": true}),
        )["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let ours = generator.tokenize(text).unwrap();
        assert_eq!(ours, theirs, "{text:?}");
        if text.contains("<|") {
            continue;
        }
        // llama.cpp's server writes each piece as is; ragd drops the one space the `▁` prefix
        // added at the start (as Hugging Face's Llama tokenizer does).
        let body = server.post("detokenize", &json!({"tokens": &ours[1..]}));
        let theirs = body["content"].as_str().unwrap();
        assert_eq!(
            generator.detokenize(&ours[1..]).unwrap(),
            theirs.strip_prefix(' ').unwrap_or(theirs),
            "{text:?}"
        );
    }
}
