//! The scalar kernels, which a CPU without AVX2/FMA runs, against the detected ones (and the
//! AVX2 build, which a CPU without AVX-512 runs) on the real default models. The kernel choice
//! is process-wide, so these tests have their own test binary and take turns through a lock.
#![allow(clippy::unwrap_used)]

use ragd_models::kernels::{self, Kernels};
use ragd_models::llama::LlamaWeights;
use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{Embedder, Precision};
use std::sync::Mutex;

static TURN: Mutex<()> = Mutex::new(());

/// Runs `f` once with each kernel choice: `[detected, at most AVX2, scalar]`.
fn each<T>(f: impl Fn() -> T) -> [T; 3] {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    kernels::use_kernels(Kernels::Detected);
    let detected = f();
    kernels::use_kernels(Kernels::Avx2);
    assert_ne!(kernels::active(), "avx512");
    let avx2 = f();
    kernels::use_kernels(Kernels::Scalar);
    assert_eq!(kernels::active(), "scalar");
    let scalar = f();
    kernels::use_kernels(Kernels::Detected);
    [detected, avx2, scalar]
}

fn models_dir() -> std::path::PathBuf {
    let dir = registry::resolve_models_dir(None);
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        assert!(spec.verify(&dir).unwrap_or(false), "{}", spec.missing(&dir));
    }
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn the_encoder_gives_the_same_vectors_on_either_path() {
    let e = Embedder::load(&DEFAULT_ENCODER.dir(&models_dir())).unwrap();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let texts = [
        "Mitochondrial dysfunction alters cellular energy metabolism.",
        long.as_str(),
        "What does PEFT stand for?",
    ];
    let [fast, avx2, slow] = each(|| e.embed(&texts).unwrap());
    for fast in [fast, avx2] {
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            let c = cosine(&f.vector, &s.vector);
            assert!(c > 0.999_99, "text {i}: cosine {c}");
        }
    }
    // int8: the integer products are exact on every path (VNNI, AVX2, scalar), so only the
    // f32 parts around them differ.
    let [fast, avx2, slow] = each(|| e.embed_with(&texts, Precision::Int8).unwrap());
    for fast in [fast, avx2] {
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            let c = cosine(&f.vector, &s.vector);
            assert!(c > 0.9999, "int8 text {i}: cosine {c}");
        }
    }
}

#[test]
fn the_decoder_gives_the_same_logits_on_either_path() {
    let w = LlamaWeights::open(&DEFAULT_DECODER.gguf_path(&models_dir())).unwrap();
    // 24 tokens (the prefill path), then one decode step (the row-by-row path).
    let prompt: Vec<u32> = (0..24u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let run = || {
        let mut st = w.new_state(64);
        let prefill = w.forward(&prompt, &mut st).unwrap();
        let step = w.forward(&[42], &mut st).unwrap();
        (prefill, step)
    };
    let [(p1, s1), (p0, s0), (p2, s2)] = each(run);
    // Activations are quantized to 8 bits at every layer, so float-rounding differences between
    // the paths flip a few roundings and grow over 30 layers: the logits agree closely, and the
    // greedy token is the same.
    for (what, a, b) in [
        ("prefill", &p1, &p2),
        ("decode", &s1, &s2),
        ("prefill (avx2)", &p0, &p2),
        ("decode (avx2)", &s0, &s2),
    ] {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let c = cosine(a, b);
        eprintln!("{what}: cosine {c}, max |Δlogit| {worst} (scale {scale})");
        assert!(c > 0.999, "{what}: cosine {c}");
        assert!(
            worst <= 0.05 * scale,
            "{what}: max |Δlogit| {worst} (scale {scale})"
        );
        assert_eq!(
            ragd_models::argmax(a),
            ragd_models::argmax(b),
            "{what}: greedy token differs"
        );
    }
}
