//! Tiny random-weight GGUF decoders, written on demand: what parity tests compare against
//! llama.cpp, and what tests of `ragd models add` register, with no download. Each
//! architecture ragd runs has a preset ([`TinySpec::llama`], ...); the weights come from a
//! seeded generator, so a spec always writes the same file.

use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use std::io::Write;
use std::path::Path;

type Meta = gguf_file::Value;

/// splitmix64: the same weights on every run, no dependency.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`.
    pub fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }

    pub fn values(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }
}

/// What varies between the tiny models.
#[derive(Debug, Clone, Copy)]
pub struct TinySpec {
    pub arch: &'static str,
    /// Type of the 2-D weights (embeddings included); norms and biases stay F32.
    pub dtype: GgmlDType,
    /// Q/K/V biases (Qwen2).
    pub biases: bool,
    /// A `rope_freqs.weight` tensor of per-frequency divisors (Llama 3.1).
    pub rope_freqs: bool,
    /// `rope.scaling.type = linear` with this factor.
    pub linear_scale: Option<f32>,
    pub freq_base: f32,
    /// Per-head Q/K RMS norms (Qwen3).
    pub qk_norm: bool,
    /// Q/K/V in one `attn_qkv` tensor, gate and up in one `ffn_up` (Phi-3).
    pub fused: bool,
    /// Head size; `HIDDEN / HEADS` unless the architecture allows wider heads (Qwen3).
    pub head_dim: usize,
    /// A SentencePiece (`llama` model) vocabulary instead of byte-level BPE (`gpt2`).
    pub sentencepiece: bool,
    pub layers: usize,
    /// `attention.sliding_window` (Gemma 3: every layer but each sixth is local).
    pub window: Option<usize>,
    /// `final_logit_softcapping`.
    pub final_softcap: Option<f32>,
    /// `attn_logit_softcapping`.
    pub attn_softcap: Option<f32>,
    /// No `output.weight`: the output layer is the token embedding (Gemma 2 always).
    pub tied: bool,
    pub seed: u64,
}

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 128;
pub const LAYERS: usize = 2;
pub const CONTEXT: usize = 512;

/// GPT-2's byte-to-character map for the ASCII bytes: the byte tokens of a byte-level BPE
/// vocabulary whose every token is whole UTF-8 (llama.cpp's server holds back the text and
/// probabilities of a token that ends inside a character, which a parity test cannot use).
fn byte_tokens() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut by_byte: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    by_byte.sort_unstable();
    by_byte
        .into_iter()
        .take(128)
        .map(|(_, c)| char::from_u32(c).map(String::from).unwrap_or_default())
        .collect()
}

/// A byte-level BPE vocabulary (`gpt2` model): ASCII bytes, a few merges, then
/// `<|endoftext|>` (BOS and EOS), `<|im_start|>`, `<|im_end|>`.
fn byte_level_vocab(arch: &str) -> (Vec<(String, Meta)>, usize) {
    let mut tokens = byte_tokens();
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")];
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![1i32; tokens.len()];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    let vocab = tokens.len();
    let eot = (vocab - 3) as u32;
    let meta = vec![
        ("tokenizer.ggml.model".into(), Meta::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Meta::String(
                if arch == "qwen2" {
                    "qwen2"
                } else {
                    "llama-bpe"
                }
                .into(),
            ),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Meta::Array(tokens.iter().map(|t| Meta::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::Array(types.iter().map(|&t| Meta::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Meta::Array(
                merges
                    .iter()
                    .map(|(a, b)| Meta::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(eot)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(eot)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(false)),
    ];
    (meta, vocab)
}

/// A SentencePiece vocabulary (`llama` model, as Llama 2, Mistral and Phi-3 GGUFs carry):
/// `<unk>`, `<s>`, `</s>`, the 256 `<0xXX>` byte tokens, single characters and some longer
/// pieces with scores (longer pieces first), then `<|user|>` and `<|end|>` as control tokens.
fn sentencepiece_vocab() -> (Vec<(String, Meta)>, usize) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁the", "▁Saint", "▁café", "▁what", "▁and", "▁for", "ing", "▁th", "▁to", "▁of", "▁is",
        "▁in", "▁it", "▁an", "▁wh", "▁Sa", "int", "fé", "he", "in", "er", "an", "on", "re", "at",
        "en", "es", "ed", "is", "it", "or", "ca", "▁t", "▁a", "▁w",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push((*p).to_string());
        types.push(1);
        scores.push(-(i as f32));
    }
    let singles = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain("▁.,?!'-:é".chars());
    for (i, c) in singles.enumerate() {
        tokens.push(c.to_string());
        types.push(1);
        scores.push(-1000.0 - i as f32);
    }
    for special in ["<|user|>", "<|end|>"] {
        tokens.push(special.to_string());
        types.push(3);
        scores.push(0.0);
    }
    let vocab = tokens.len();
    let meta = vec![
        ("tokenizer.ggml.model".into(), Meta::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Meta::Array(tokens.into_iter().map(Meta::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Meta::Array(scores.into_iter().map(Meta::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::Array(types.into_iter().map(Meta::I32).collect()),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), Meta::U32(0)),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(2)),
    ];
    (meta, vocab)
}

/// Writes a tiny random model of `spec` to `path` (its vocabulary: [`byte_level_vocab`] or
/// [`sentencepiece_vocab`]); returns its vocabulary size.
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec) -> Result<usize> {
    let mut rng = Rng(spec.seed);
    let (tokenizer, vocab) = if spec.sentencepiece {
        sentencepiece_vocab()
    } else {
        byte_level_vocab(spec.arch)
    };
    let arch = spec.arch;
    let head_dim = spec.head_dim;
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::String(arch.into())),
        // Not the architecture's name: llama.cpp gives tokens special handling by model name.
        (
            "general.name".into(),
            Meta::String(format!("ragd tiny model {}", spec.seed)),
        ),
        (format!("{arch}.context_length"), Meta::U32(CONTEXT as u32)),
        (format!("{arch}.embedding_length"), Meta::U32(HIDDEN as u32)),
        (format!("{arch}.block_count"), Meta::U32(spec.layers as u32)),
        (format!("{arch}.feed_forward_length"), Meta::U32(FFN as u32)),
        (
            format!("{arch}.attention.head_count"),
            Meta::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Meta::U32(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Meta::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), Meta::F32(spec.freq_base)),
        (
            format!("{arch}.rope.dimension_count"),
            Meta::U32(head_dim as u32),
        ),
    ];
    meta.extend(tokenizer);

    if head_dim != HIDDEN / HEADS {
        for k in ["key_length", "value_length"] {
            meta.push((format!("{arch}.attention.{k}"), Meta::U32(head_dim as u32)));
        }
    }
    if let Some(w) = spec.window {
        meta.push((
            format!("{arch}.attention.sliding_window"),
            Meta::U32(w as u32),
        ));
    }
    if let Some(cap) = spec.final_softcap {
        meta.push((format!("{arch}.final_logit_softcapping"), Meta::F32(cap)));
    }
    if let Some(cap) = spec.attn_softcap {
        meta.push((format!("{arch}.attn_logit_softcapping"), Meta::F32(cap)));
    }
    if let Some(factor) = spec.linear_scale {
        meta.push((
            format!("{arch}.rope.scaling.type"),
            Meta::String("linear".into()),
        ));
        meta.push((format!("{arch}.rope.scaling.factor"), Meta::F32(factor)));
    }
    let dev = Device::Cpu;
    let matrix =
        |rng: &mut Rng, rows: usize, cols: usize, a: f32| -> candle_core::Result<QTensor> {
            let t = Tensor::from_vec(rng.values(rows * cols, a), (rows, cols), &dev)?;
            QTensor::quantize(&t, spec.dtype)
        };
    let vector = |values: Vec<f32>| -> candle_core::Result<QTensor> {
        let n = values.len();
        QTensor::quantize(&Tensor::from_vec(values, n, &dev)?, GgmlDType::F32)
    };
    let norm = |rng: &mut Rng| vector(rng.values(HIDDEN, 0.3).iter().map(|v| 1.0 + v).collect());
    let proj = 1.7 / (HIDDEN as f32).sqrt();
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            matrix(&mut rng, vocab, HIDDEN, 1.0)?,
        ),
        ("output_norm.weight".into(), norm(&mut rng)?),
    ];
    let output = matrix(&mut rng, vocab, HIDDEN, 4.0 / (HIDDEN as f32).sqrt())?;
    if !spec.tied {
        tensors.push(("output.weight".into(), output));
    }
    if spec.rope_freqs {
        let factors = (0..head_dim / 2).map(|_| 1.0 + 3.0 * (1.0 + rng.uniform(1.0)));
        tensors.push(("rope_freqs.weight".into(), vector(factors.collect())?));
    }
    let (qdim, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
    for i in 0..spec.layers {
        let mut layer = vec![("attn_norm.weight", norm(&mut rng)?)];
        if spec.fused {
            layer.push((
                "attn_qkv.weight",
                matrix(&mut rng, qdim + 2 * kv, HIDDEN, proj)?,
            ));
        } else {
            layer.push(("attn_q.weight", matrix(&mut rng, qdim, HIDDEN, proj)?));
            layer.push(("attn_k.weight", matrix(&mut rng, kv, HIDDEN, proj)?));
            layer.push(("attn_v.weight", matrix(&mut rng, kv, HIDDEN, proj)?));
        }
        if spec.qk_norm {
            let mut head_norm =
                || vector(rng.values(head_dim, 0.3).iter().map(|v| 1.0 + v).collect());
            layer.push(("attn_q_norm.weight", head_norm()?));
            layer.push(("attn_k_norm.weight", head_norm()?));
        }
        let out = 1.7 / (qdim as f32).sqrt();
        layer.push(("attn_output.weight", matrix(&mut rng, HIDDEN, qdim, out)?));
        layer.push(("ffn_norm.weight", norm(&mut rng)?));
        if spec.fused {
            layer.push(("ffn_up.weight", matrix(&mut rng, 2 * FFN, HIDDEN, proj)?));
        } else {
            layer.push(("ffn_gate.weight", matrix(&mut rng, FFN, HIDDEN, proj)?));
            layer.push(("ffn_up.weight", matrix(&mut rng, FFN, HIDDEN, proj)?));
        }
        layer.push((
            "ffn_down.weight",
            matrix(&mut rng, HIDDEN, FFN, 1.7 / (FFN as f32).sqrt())?,
        ));
        if arch.starts_with("gemma") {
            layer.push(("post_attention_norm.weight", norm(&mut rng)?));
            layer.push(("post_ffw_norm.weight", norm(&mut rng)?));
        }
        if spec.biases {
            layer.push(("attn_q.bias", vector(rng.values(qdim, 0.5))?));
            layer.push(("attn_k.bias", vector(rng.values(kv, 0.5))?));
            layer.push(("attn_v.bias", vector(rng.values(kv, 0.5))?));
        }
        tensors.extend(layer.into_iter().map(|(n, t)| (format!("blk.{i}.{n}"), t)));
    }
    let meta_refs: Vec<(&str, &Meta)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file =
        std::fs::File::create(path).map_err(Error::io(format!("creating {}", path.display())))?;
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    file.flush()
        .map_err(Error::io(format!("writing {}", path.display())))?;
    Ok(vocab)
}

/// Makes `dir` a models directory whose bundled models are links to the verified ones in
/// `installed`, so a test can add models beside them without touching the user's cache.
#[cfg(unix)]
pub fn link_default_models(installed: &Path, dir: &Path) -> Result<()> {
    for spec in crate::registry::DEFAULT_MODELS {
        if !spec.verify(installed)? {
            return Err(spec.missing(installed));
        }
        std::os::unix::fs::symlink(spec.dir(installed), spec.dir(dir)).map_err(Error::io(
            format!("linking {} into {}", spec.name, dir.display()),
        ))?;
    }
    Ok(())
}

impl TinySpec {
    /// Llama: interleaved RoPE, grouped KV heads, F32 weights.
    pub const LLAMA: Self = Self {
        arch: "llama",
        dtype: GgmlDType::F32,
        biases: false,
        rope_freqs: false,
        linear_scale: None,
        freq_base: 10_000.0,
        qk_norm: false,
        fused: false,
        head_dim: HIDDEN / HEADS,
        sentencepiece: false,
        layers: LAYERS,
        window: None,
        final_softcap: None,
        attn_softcap: None,
        tied: false,
        seed: 1,
    };

    /// Qwen2: NeoX RoPE, Q/K/V biases.
    pub const QWEN2: Self = Self {
        arch: "qwen2",
        biases: true,
        freq_base: 1_000_000.0,
        seed: 3,
        ..Self::LLAMA
    };

    /// Qwen3: NeoX RoPE, per-head Q/K norms, heads twice as wide as hidden / heads.
    pub const QWEN3: Self = Self {
        arch: "qwen3",
        qk_norm: true,
        head_dim: 2 * HIDDEN / HEADS,
        freq_base: 1_000_000.0,
        seed: 8,
        ..Self::LLAMA
    };

    /// Gemma 3: NeoX RoPE, Q/K norms, wide heads, scaled embeddings, GeGLU, post-norms, six
    /// layers of which the first five attend 24 positions back (RoPE base 10,000) and the last
    /// everything (base 1,000,000), final logits soft-capped at 15.
    pub const GEMMA3: Self = Self {
        arch: "gemma3",
        qk_norm: true,
        head_dim: 2 * HIDDEN / HEADS,
        freq_base: 1_000_000.0,
        layers: 6,
        window: Some(24),
        final_softcap: Some(15.0),
        seed: 10,
        ..Self::LLAMA
    };

    /// Gemma 2: like Gemma 3 without Q/K norms; every other layer (0 and 2 of 4) attends 24
    /// positions back; attention scores soft-capped at 1.5 and logits at 6 (low enough to
    /// change them; real models use 50 and 30); output tied to the embedding.
    pub const GEMMA2: Self = Self {
        arch: "gemma2",
        head_dim: 2 * HIDDEN / HEADS,
        freq_base: 10_000.0,
        layers: 4,
        window: Some(24),
        attn_softcap: Some(1.5),
        final_softcap: Some(6.0),
        tied: true,
        seed: 11,
        ..Self::LLAMA
    };

    /// Phi-3: NeoX RoPE, Q/K/V and gate/up stacked.
    pub const PHI3: Self = Self {
        arch: "phi3",
        fused: true,
        seed: 9,
        ..Self::LLAMA
    };
}
