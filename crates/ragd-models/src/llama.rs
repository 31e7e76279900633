//! Llama-architecture decoder over GGUF-quantized weights (covers SmolLM2, Llama 2/3, Mistral).
//!
//! Weights ([`LlamaWeights`]) are immutable and shared by every session through an `Arc`; each
//! [`KvState`] holds one session's key/value cache, preallocated to the session's context so a
//! decode step never copies the cache. Projections that read the same input run as one stacked
//! matmul (Q|K|V, gate|up) on our quantized kernels (`kernels/quant.rs`). Grouped-query attention is
//! computed without repeating the key/value heads: the query heads that share one KV head are
//! folded into the row dimension.

use crate::error::{Error, Result};
use crate::gguf_meta::Meta;
use crate::kernels::fused::{self, add, rms_norm};
use crate::kernels::quant::QLinear;
use candle_core::quantized::{QTensor, gguf_file};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub architecture: String,
    /// How positions rotate query and key pairs.
    pub rope: Rope,
    pub context_length: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f32,
    pub vocab: usize,
    /// Token embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: f32,
    /// Queries are multiplied by this on top of 1/√head_dim (Gemma 3 27B scales by
    /// 1/√(hidden/heads) instead).
    pub query_scale: f32,
    /// The FFN's gate activation.
    pub activation: Activation,
    /// Logits become `cap · tanh(logits / cap)` (Gemma's final soft-capping).
    pub final_softcap: Option<f32>,
    /// Attention scores become `cap · tanh(score / cap)` before the softmax (Gemma 2).
    pub attn_softcap: Option<f32>,
}

/// The gate activation of the gated FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) · up` (GeGLU: Gemma).
    GeluTanh,
}

/// Linear layers that read the same input: one stacked matmul when the formats allow it.
#[derive(Debug)]
struct Fused {
    /// Output size of each part, in order.
    dims: Vec<usize>,
    kind: FusedKind,
}

#[derive(Debug)]
enum FusedKind {
    Stacked(QLinear),
    Separate(Vec<QLinear>),
}

impl Fused {
    fn new(parts: Vec<QLinear>) -> Self {
        let dims = parts.iter().map(QLinear::out_dim).collect();
        let kind = match QLinear::stack(parts) {
            Ok(lin) => FusedKind::Stacked(lin),
            Err(parts) => FusedKind::Separate(parts),
        };
        Self { dims, kind }
    }

    /// Outputs of all parts side by side: `m` rows of Σ out_dim.
    fn matmul(&self, xs: &[f32], m: usize) -> Result<Vec<f32>> {
        match &self.kind {
            FusedKind::Stacked(lin) => lin.matmul(xs, m),
            FusedKind::Separate(parts) => {
                let outs: Vec<Vec<f32>> = parts
                    .iter()
                    .map(|p| p.matmul(xs, m))
                    .collect::<Result<_>>()?;
                let mut y = Vec::with_capacity(m * self.dims.iter().sum::<usize>());
                for r in 0..m {
                    for (&d, o) in self.dims.iter().zip(&outs) {
                        y.extend_from_slice(&o[r * d..(r + 1) * d]);
                    }
                }
                Ok(y)
            }
        }
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    qkv: Fused,
    /// Q|K|V biases side by side (Qwen2); `None` for llama, mistral.
    qkv_bias: Option<Vec<f32>>,
    /// RMS-norm weights applied to every query head and every key head before RoPE (Qwen3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    wo: QLinear,
    ffn_norm: Vec<f32>,
    /// Gate then up, side by side in each output row.
    gate_up: Fused,
    /// Width of the gate (and of the up projection).
    ffn: usize,
    down: QLinear,
    /// RMS norms of the attention output and of the FFN output before each joins the residual
    /// stream (Gemma).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    /// Keys further back than this many positions are not attended to (Gemma's local layers,
    /// which also rotate with the local RoPE tables, `local_cos`/`local_sin`).
    window: Option<usize>,
}

/// The immutable part of the model; share it with `Arc`.
#[derive(Debug)]
pub struct LlamaWeights {
    pub config: LlamaConfig,
    /// (vocab, hidden), dequantized.
    embeddings: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: QLinear,
    /// RoPE tables, (context_length, head_dim / 2).
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The sliding-window layers' own RoPE tables (Gemma 3: base 10,000, unscaled); empty when
    /// no layer uses them.
    local_cos: Vec<f32>,
    local_sin: Vec<f32>,
}

/// Which pairs of a head's values RoPE rotates together (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rope {
    /// `(x[2i], x[2i+1])`: llama and mistral GGUFs (their converter permutes Q and K for it).
    Interleaved,
    /// `(x[i], x[i + d/2])`: Qwen2, Qwen3, Phi-3 ("NeoX" style).
    Halves,
}

/// Architectures this forward pass runs, and their RoPE. All are pre-norm decoders with
/// grouped-query attention and a SwiGLU FFN; what else a layer has is read off its tensors:
/// Q/K/V biases (Qwen2), per-head Q/K norms and heads wider than hidden / heads (Qwen3), Q/K/V
/// and gate/up stacked in one tensor each (Phi-3). Gemma 3 adds what its metadata says: scaled
/// embeddings, GeGLU, post-norms, sliding-window layers with their own RoPE base, final
/// soft-capping. Anything else is refused at load.
const LLAMA_LIKE: &[(&str, Rope)] = &[
    ("llama", Rope::Interleaved),
    ("mistral", Rope::Interleaved),
    ("qwen2", Rope::Halves),
    ("qwen3", Rope::Halves),
    ("phi3", Rope::Halves),
    ("gemma2", Rope::Halves),
    ("gemma3", Rope::Halves),
];

/// Query rows above which prefill attention runs as batched GEMMs rather than per-row loops.
const GEMM_ATTENTION_ROWS: usize = 16;

impl LlamaWeights {
    /// Opens a GGUF file and loads its weights (the tokenizer is not needed for raw forwards).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let (content, mut file) = crate::gguf_meta::read_gguf(path)?;
        Self::load(&content, &Meta::new(&content, path), &mut file)
    }

    /// Reads hyper-parameters and tensors from an open GGUF file.
    pub(crate) fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        meta: &Meta<'_>,
        reader: &mut R,
    ) -> Result<Self> {
        // Detect (and log, once) the CPU kernels while loading, not on the first request.
        crate::kernels::active();
        let arch = meta.str("general.architecture")?.to_string();
        let Some(&(_, rope)) = LLAMA_LIKE.iter().find(|(a, _)| *a == arch) else {
            let names: Vec<&str> = LLAMA_LIKE.iter().map(|(a, _)| *a).collect();
            return Err(Error::ModelInvalid {
                path: meta.path.to_path_buf(),
                reason: format!(
                    "architecture `{arch}` is not supported; supported: {}",
                    names.join(", ")
                ),
            });
        };
        let prefix = arch.clone();
        let key = |k: &str| format!("{prefix}.{k}");
        let hidden = meta.usize(&key("embedding_length"))?;
        let heads = meta.usize(&key("attention.head_count"))?;
        let kv_heads = meta.usize(&key("attention.head_count_kv")).unwrap_or(heads);
        // Heads may be wider than hidden / heads (Qwen3): `attention.key_length` says so.
        let head_dim = meta
            .usize(&key("attention.key_length"))
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        // RoPE over part of a head (Phi-2, StableLM) and values of another width are other
        // architectures; refuse them here rather than compute them wrong.
        for k in ["attention.value_length", "rope.dimension_count"] {
            if let Ok(v) = meta.usize(&key(k))
                && v != head_dim
            {
                return Err(Error::ModelInvalid {
                    path: meta.path.to_path_buf(),
                    reason: format!("{arch}.{k} is {v}, not the head size {head_dim}"),
                });
            }
        }
        if heads == 0
            || kv_heads == 0
            || heads % kv_heads != 0
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
        {
            return Err(Error::ModelInvalid {
                path: meta.path.to_path_buf(),
                reason: format!(
                    "inconsistent heads: {heads} heads of {head_dim}, {kv_heads} kv heads, {hidden} hidden"
                ),
            });
        }
        let dev = Device::Cpu;
        let mut tensor = |name: &str| content.tensor(reader, name, &dev);
        let vec = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let embd_q = tensor("token_embd.weight")?;
        let vocab = embd_q.shape().dims2()?.0;
        let embeddings = vec(embd_q.dequantize(&dev)?)?;
        // Tied embeddings: small models reuse the input embedding as the output projection.
        let output = match tensor("output.weight") {
            Ok(t) => QLinear::from_qtensor(t)?,
            Err(_) => QLinear::from_qtensor(embd_q)?,
        };
        let norm = vec(tensor("output_norm.weight")?.dequantize(&dev)?)?;
        let layer_count = meta.usize(&key("block_count"))?;
        let mut layers = Vec::with_capacity(layer_count);
        let (qdim, kvdim) = (heads * head_dim, kv_heads * head_dim);
        let invalid = |reason: String| Error::ModelInvalid {
            path: meta.path.to_path_buf(),
            reason,
        };
        let gemma2 = arch == "gemma2";
        let gemma = gemma2 || arch == "gemma3";
        // Gemma's local layers: all but every `pattern`-th (2 for Gemma 2, 6 for Gemma 3) attend
        // `window` positions back (llama.cpp's "standard" sliding window: keys `window` or more
        // back are masked; Gemma 2's window is 4,096 unless the file says otherwise).
        let window = match meta.usize(&key("attention.sliding_window")) {
            Ok(w) if gemma && w > 0 => Some(w),
            Err(_) if gemma2 => Some(4096),
            _ => None,
        };
        let pattern = match meta.get(&key("attention.sliding_window_pattern")) {
            Err(_) if gemma2 => 2,
            Err(_) => 6,
            Ok(v) => v.to_u32().map_err(|_| {
                invalid(format!(
                    "{arch}.attention.sliding_window_pattern: only a layer period is supported"
                ))
            })? as usize,
        };
        let is_local = |i: usize| pattern == 0 || i % pattern < pattern - 1;
        for i in 0..layer_count {
            let name = |n: &str| format!("blk.{i}.{n}");
            // Q, K and V come as three tensors, or as one (Phi-3's `attn_qkv`).
            let qkv = match tensor(&name("attn_qkv.weight")) {
                Ok(t) => Fused::new(vec![QLinear::from_qtensor(t)?]),
                Err(_) => Fused::new(vec![
                    QLinear::from_qtensor(tensor(&name("attn_q.weight"))?)?,
                    QLinear::from_qtensor(tensor(&name("attn_k.weight"))?)?,
                    QLinear::from_qtensor(tensor(&name("attn_v.weight"))?)?,
                ]),
            };
            if qkv.dims.iter().sum::<usize>() != qdim + 2 * kvdim {
                return Err(invalid(format!(
                    "layer {i}: Q/K/V give {:?} values, the heads need {qdim} + 2 x {kvdim}",
                    qkv.dims
                )));
            }
            let wo = QLinear::from_qtensor(tensor(&name("attn_output.weight"))?)?;
            // Gate and up as two tensors, or stacked gate-first in `ffn_up` (Phi-3).
            let (gate_up, ffn) = match tensor(&name("ffn_gate.weight")) {
                Ok(gate) => {
                    let gate = QLinear::from_qtensor(gate)?;
                    let ffn = gate.out_dim();
                    let up = QLinear::from_qtensor(tensor(&name("ffn_up.weight"))?)?;
                    (Fused::new(vec![gate, up]), ffn)
                }
                Err(_) => {
                    let up = QLinear::from_qtensor(tensor(&name("ffn_up.weight"))?)?;
                    let ffn = up.out_dim() / 2;
                    (Fused::new(vec![up]), ffn)
                }
            };
            if gate_up.dims.iter().sum::<usize>() != 2 * ffn {
                return Err(invalid(format!(
                    "layer {i}: gate and up projections differ in size"
                )));
            }
            let down = QLinear::from_qtensor(tensor(&name("ffn_down.weight"))?)?;
            let mut f32s = |n: &str| -> Option<Result<Vec<f32>>> {
                let t = tensor(&name(n)).ok()?;
                Some(t.dequantize(&dev).map_err(Error::from).and_then(&vec))
            };
            // Biases come as a set (Qwen2) or not at all.
            let qkv_bias = match (
                f32s("attn_q.bias").transpose()?,
                f32s("attn_k.bias").transpose()?,
                f32s("attn_v.bias").transpose()?,
            ) {
                (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
                (None, None, None) => None,
                _ => {
                    return Err(invalid(format!(
                        "layer {i}: only some of the Q/K/V biases are present"
                    )));
                }
            };
            // Per-head RMS norms of queries and keys (Qwen3), both or neither.
            let qk_norm = match (
                f32s("attn_q_norm.weight").transpose()?,
                f32s("attn_k_norm.weight").transpose()?,
            ) {
                (Some(q), Some(k)) => Some((q, k)),
                (None, None) => None,
                _ => {
                    return Err(invalid(format!(
                        "layer {i}: only one of the Q/K norms is present"
                    )));
                }
            };
            let attn_norm = f32s("attn_norm.weight")
                .ok_or_else(|| invalid(format!("layer {i}: attn_norm.weight is missing")))??;
            let ffn_norm = f32s("ffn_norm.weight")
                .ok_or_else(|| invalid(format!("layer {i}: ffn_norm.weight is missing")))??;
            let post_norms = match (
                f32s("post_attention_norm.weight").transpose()?,
                f32s("post_ffw_norm.weight").transpose()?,
            ) {
                (Some(a), Some(f)) if gemma => Some((a, f)),
                (None, None) if !gemma => None,
                _ => {
                    return Err(invalid(format!(
                        "layer {i}: Gemma layers have both post-norms, others neither"
                    )));
                }
            };
            if gemma && !gemma2 && qk_norm.is_none() {
                return Err(invalid(format!("layer {i}: Gemma 3 needs Q/K norms")));
            }
            if qkv_bias
                .as_ref()
                .is_some_and(|b| b.len() != qdim + 2 * kvdim)
                || qk_norm
                    .as_ref()
                    .is_some_and(|(q, k)| q.len() != head_dim || k.len() != head_dim)
                || attn_norm.len() != hidden
                || ffn_norm.len() != hidden
                || post_norms
                    .as_ref()
                    .is_some_and(|(a, f)| a.len() != hidden || f.len() != hidden)
            {
                return Err(invalid(format!(
                    "layer {i}: a norm or bias does not match the model's sizes"
                )));
            }
            layers.push(Layer {
                attn_norm,
                qkv,
                qkv_bias,
                qk_norm,
                wo,
                ffn_norm,
                gate_up,
                ffn,
                down,
                post_norms,
                window: window.filter(|_| is_local(i)),
            });
        }
        // A tensor this forward pass would not read means an architecture it does not compute
        // (output or FFN biases, Q/K norms, ...): refuse it rather than answer from half a model.
        if let Some(name) = content
            .tensor_infos
            .keys()
            .find(|n| !known_tensor(n, gemma))
        {
            return Err(Error::ModelInvalid {
                path: meta.path.to_path_buf(),
                reason: format!("tensor `{name}` is not part of the {arch} layout this build runs"),
            });
        }
        let context_length = meta.usize(&key("context_length"))?;
        let rope_theta = meta.f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let scaling = rope_scaling(meta, &key, head_dim, &mut tensor)?;
        let (cos, sin) = rope_tables(head_dim, rope_theta, context_length, &scaling);
        // Local layers' RoPE: Gemma 2 keeps the global base and scaling unless the file gives
        // `rope.freq_base_swa`; Gemma 3 uses that key or 10,000, unscaled.
        let (local_cos, local_sin) = if window.is_some() {
            let (base, local_scaling) = if gemma2 {
                let base = meta.f32(&key("rope.freq_base_swa")).unwrap_or(rope_theta);
                (base, scaling.clone())
            } else {
                let plain = RopeScaling {
                    freq_scale: 1.0,
                    factors: None,
                };
                (
                    meta.f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0),
                    plain,
                )
            };
            rope_tables(head_dim, base, context_length, &local_scaling)
        } else {
            (Vec::new(), Vec::new())
        };
        // Soft-capping: Gemma 2 caps attention scores (50) and logits (30) unless the file
        // says otherwise; Gemma 3 caps logits only when the file says so.
        let cap = |k: &str, default: Option<f32>| match meta.f32(&key(k)) {
            Ok(c) if c > 0.0 => Some(c),
            Ok(_) => None,
            Err(_) => default,
        };
        let final_softcap = match arch.as_str() {
            "gemma2" => cap("final_logit_softcapping", Some(30.0)),
            "gemma3" => cap("final_logit_softcapping", None),
            _ => None,
        };
        let attn_softcap = if gemma2 {
            cap("attn_logit_softcapping", Some(50.0))
        } else {
            None
        };
        // Gemma 27B models (Gemma 2: 46 layers, Gemma 3: 62) scale queries by
        // 1/sqrt(hidden / heads), the others by 1/sqrt(head_dim), as llama.cpp and
        // gemma_pytorch do.
        let big = (gemma2 && layer_count == 46) || (arch == "gemma3" && layer_count == 62);
        let query_scale = if big {
            (head_dim as f32 / (hidden / heads) as f32).sqrt()
        } else {
            1.0
        };
        let config = LlamaConfig {
            architecture: arch,
            rope,
            context_length,
            hidden,
            layers: layer_count,
            heads,
            kv_heads,
            head_dim,
            rms_eps: meta
                .f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f64,
            rope_theta,
            vocab,
            embed_scale: if gemma { (hidden as f32).sqrt() } else { 1.0 },
            query_scale,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            final_softcap,
            attn_softcap,
        };
        Ok(Self {
            config,
            embeddings,
            layers,
            norm,
            output,
            cos,
            sin,
            local_cos,
            local_sin,
        })
    }

    /// A fresh KV cache for a session of `context` tokens.
    pub fn new_state(&self, context: usize) -> KvState {
        let context = context.min(self.config.context_length);
        KvState {
            caches: (0..self.config.layers)
                .map(|_| LayerCache::default())
                .collect(),
            pos: 0,
            context,
        }
    }

    /// Runs `tokens` (appended at `state.pos`) through the model and returns the logits of the
    /// last one as a vector of vocabulary size.
    pub fn forward(&self, tokens: &[u32], state: &mut KvState) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [Segment { tokens, state }])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One forward pass over several sequences at once, each with its own tokens appended at
    /// its own cache's position: a decode step of many sessions (one token each) and prompt
    /// pieces of new ones share every matrix multiplication, so the weights are read, and the
    /// threads woken, once per layer for all of them. Returns each segment's last-token logits,
    /// in order.
    pub fn forward_batch(&self, segs: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        for s in segs.iter() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidInput("no tokens to run".into()));
            }
            if s.state.pos + s.tokens.len() > s.state.context {
                return Err(Error::PromptTooLong {
                    prompt_tokens: s.state.pos + s.tokens.len(),
                    max_new_tokens: 0,
                    context: s.state.context,
                });
            }
        }
        let cfg = &self.config;
        let (hidden, d) = (cfg.hidden, cfg.head_dim);
        let eps = cfg.rms_eps as f32;
        let rows: usize = segs.iter().map(|s| s.tokens.len()).sum();
        let mut x = Vec::with_capacity(rows * hidden);
        // Each row's position in its own sequence.
        let mut positions = Vec::with_capacity(rows);
        for s in segs.iter() {
            for (i, &t) in s.tokens.iter().enumerate() {
                let row = self
                    .embeddings
                    .get(t as usize * hidden..(t as usize + 1) * hidden);
                x.extend_from_slice(row.ok_or_else(|| {
                    Error::InvalidInput(format!("token id {t} is outside the vocabulary"))
                })?);
                positions.push(s.state.pos + i);
            }
        }
        if cfg.embed_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= cfg.embed_scale);
        }
        let qdim = cfg.heads * d;
        let kvdim = cfg.kv_heads * d;
        let width = qdim + 2 * kvdim;
        let mut h = vec![0f32; rows * hidden];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, eps, &mut h);
            let mut qkv = layer.qkv.matmul(&h, rows)?;
            let (cos_t, sin_t) = if layer.window.is_some() {
                (&self.local_cos, &self.local_sin)
            } else {
                (&self.cos, &self.sin)
            };
            for (row, &pos) in qkv.chunks_exact_mut(width).zip(&positions) {
                if let Some(b) = &layer.qkv_bias {
                    add(row, b);
                }
                if let Some((qn, kn)) = &layer.qk_norm {
                    let (q, k) = row[..qdim + kvdim].split_at_mut(qdim);
                    rms_norm_in_place(q, qn, eps);
                    rms_norm_in_place(k, kn, eps);
                }
                let cos = &cos_t[pos * d / 2..(pos + 1) * d / 2];
                let sin = &sin_t[pos * d / 2..(pos + 1) * d / 2];
                for head in row[..qdim + kvdim].chunks_exact_mut(d) {
                    match cfg.rope {
                        Rope::Interleaved => rope_interleaved(head, cos, sin),
                        Rope::Halves => rope_halves(head, cos, sin),
                    }
                }
                if cfg.query_scale != 1.0 {
                    row[..qdim].iter_mut().for_each(|v| *v *= cfg.query_scale);
                }
            }
            let mut off = 0;
            for s in segs.iter_mut() {
                let n = s.tokens.len();
                let (pos, ctx) = (s.state.pos, s.state.context);
                s.state.caches[l].append(&qkv[off * width..(off + n) * width], n, pos, ctx, cfg);
                off += n;
            }
            let ctx = attention(&qkv, segs, l, layer.window, cfg)?;
            let mut attn = layer.wo.matmul(&ctx, rows)?;
            if let Some((post, _)) = &layer.post_norms {
                rms_norm_in_place(&mut attn, post, eps);
            }
            add(&mut x, &attn);
            rms_norm(&x, &layer.ffn_norm, eps, &mut h);
            let gu = layer.gate_up.matmul(&h, rows)?;
            let act = match cfg.activation {
                Activation::Silu => fused::swiglu(&gu, layer.ffn),
                Activation::GeluTanh => fused::geglu(&gu, layer.ffn),
            };
            let mut ffn = layer.down.matmul(&act, rows)?;
            if let Some((_, post)) = &layer.post_norms {
                rms_norm_in_place(&mut ffn, post, eps);
            }
            add(&mut x, &ffn);
        }
        // The last row of every segment, normed, through the output layer in one matmul.
        let mut last = vec![0f32; segs.len() * hidden];
        let mut end = 0;
        for (s, out) in segs.iter_mut().zip(last.chunks_exact_mut(hidden)) {
            end += s.tokens.len();
            rms_norm(&x[(end - 1) * hidden..end * hidden], &self.norm, eps, out);
            s.state.pos += s.tokens.len();
        }
        let mut logits = self.output.matmul(&last, segs.len())?;
        if let Some(cap) = cfg.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Ok(logits
            .chunks_exact(cfg.vocab.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// One sequence's part of [`LlamaWeights::forward_batch`]: `tokens` appended at `state.pos`.
#[derive(Debug)]
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub state: &'a mut KvState,
}

/// Causal attention of every row of a batch over its own sequence's cache (layer `l`), rows in
/// segment order. Long segments (a prompt piece) use the batched GEMMs; the rows of all the
/// others (decode steps, short appends) run together, one task per (row, head).
fn attention(
    qkv: &[f32],
    segs: &[Segment<'_>],
    l: usize,
    window: Option<usize>,
    cfg: &LlamaConfig,
) -> Result<Vec<f32>> {
    let d = cfg.head_dim;
    let width = (cfg.heads + 2 * cfg.kv_heads) * d;
    let out_width = cfg.heads * d;
    let rows: usize = segs.iter().map(|s| s.tokens.len()).sum();
    let mut out = vec![0f32; rows * out_width];
    // (row, cache, keys visible, cache context) of the rows done row by row.
    let mut short: Vec<(usize, &LayerCache, usize, usize)> = Vec::new();
    let mut off = 0;
    for s in segs {
        let n = s.tokens.len();
        // The state's position was not advanced yet: the segment's rows sit after it.
        let past = s.state.pos;
        let cache = &s.state.caches[l];
        let ctx = s.state.context;
        // Sliding-window layers attend row by row, each row over its own last `window` keys, and
        // so do soft-capped scores.
        if n > GEMM_ATTENTION_ROWS && window.is_none() && cfg.attn_softcap.is_none() {
            let part = &qkv[off * width..(off + n) * width];
            let o = attention_gemm(part, n, past, cache, ctx, cfg)?;
            out[off * out_width..(off + n) * out_width].copy_from_slice(&o);
        } else {
            short.extend((0..n).map(|i| (off + i, cache, past + i + 1, ctx)));
        }
        off += n;
    }
    if short.is_empty() {
        return Ok(out);
    }
    let scale = 1.0 / (d as f32).sqrt();
    let group = cfg.heads / cfg.kv_heads;
    // One task per (row, head), each writing its own d-sized slice; then the rows go to their
    // places among the GEMM segments' rows.
    let mut compact = vec![0f32; short.len() * out_width];
    compact.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (k, hq) = (task / cfg.heads, task % cfg.heads);
        let (r, cache, t, ctx) = short[k];
        let g = hq / group;
        let q = &qkv[r * width + hq * d..r * width + (hq + 1) * d];
        // Keys at positions `t - window ..t` (the row's own position is `t - 1`).
        let first = window.map_or(0, |w| t.saturating_sub(w));
        let keys = &cache.k[(g * ctx + first) * d..(g * ctx + t) * d];
        let vals = &cache.v[(g * ctx + first) * d..(g * ctx + t) * d];
        fused::attend(q, keys, vals, scale, cfg.attn_softcap.unwrap_or(0.0), o);
    });
    for (k, &(r, ..)) in short.iter().enumerate() {
        out[r * out_width..(r + 1) * out_width]
            .copy_from_slice(&compact[k * out_width..(k + 1) * out_width]);
    }
    Ok(out)
}

/// RMS-normalises every `w.len()`-sized head of `x` in place, scaled by `w`.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let mut out = vec![0f32; x.len()];
    rms_norm(x, w, eps, &mut out);
    x.copy_from_slice(&out);
}

/// Rotates the pairs `(x[i], x[i + d/2])` by the angle whose cos/sin are `cos[i]`/`sin[i]`
/// (Qwen2's GGUF weights are not permuted: llama.cpp's NeoX rope type).
fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for (((p, q), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*p, *q);
        *p = x0 * c - x1 * s;
        *q = x0 * s + x1 * c;
    }
}

/// Rotates consecutive pairs `(x[2i], x[2i+1])` by the angle whose cos/sin are `cos[i]`/`sin[i]`
/// (GGUF llama weights are permuted for this interleaved form).
fn rope_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, c), s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// Causal attention computed row by row over one cache: the reference the GEMM path and
/// [`attention`] are tested against. `qkv` holds `n` rows of Q|K|V; returns `n` rows of the
/// attention output (heads × d).
#[cfg(test)]
fn attention_rows(
    qkv: &[f32],
    n: usize,
    past: usize,
    cache: &LayerCache,
    ctx: usize,
    cfg: &LlamaConfig,
) -> Vec<f32> {
    let d = cfg.head_dim;
    let width = (cfg.heads + 2 * cfg.kv_heads) * d;
    let group = cfg.heads / cfg.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    // One task per (row, head): each writes its own d-sized slice of the output.
    let mut out = vec![0f32; n * cfg.heads * d];
    out.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (i, hq) = (task / cfg.heads, task % cfg.heads);
        let g = hq / group;
        let q = &qkv[i * width + hq * d..i * width + (hq + 1) * d];
        let t = past + i + 1;
        let keys = &cache.k[g * ctx * d..(g * ctx + t) * d];
        let vals = &cache.v[g * ctx * d..(g * ctx + t) * d];
        fused::attend(q, keys, vals, scale, cfg.attn_softcap.unwrap_or(0.0), o);
    });
    out
}

/// Causal attention for long appends (prefill) as batched GEMMs on candle: the query heads that
/// share a KV head are folded into rows, so K and V are never repeated.
fn attention_gemm(
    qkv: &[f32],
    n: usize,
    past: usize,
    cache: &LayerCache,
    ctx: usize,
    cfg: &LlamaConfig,
) -> Result<Vec<f32>> {
    let d = cfg.head_dim;
    let (nh, nkv) = (cfg.heads, cfg.kv_heads);
    let group = nh / nkv;
    let width = (nh + 2 * nkv) * d;
    let t = past + n;
    let dev = Device::Cpu;
    let mut q = Vec::with_capacity(n * nh * d);
    for row in qkv.chunks_exact(width) {
        q.extend_from_slice(&row[..nh * d]);
    }
    // (n, heads, d) -> (heads, n, d) -> (kv, group * n, d)
    let q = Tensor::from_vec(q, (n, nh, d), &dev)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, group * n, d))?;
    let gather = |buf: &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(nkv * t * d);
        for g in 0..nkv {
            out.extend_from_slice(&buf[g * ctx * d..(g * ctx + t) * d]);
        }
        out
    };
    let k = Tensor::from_vec(gather(&cache.k), (nkv, t, d), &dev)?;
    let v = Tensor::from_vec(gather(&cache.v), (nkv, t, d), &dev)?;
    let scale = 1.0 / (d as f64).sqrt();
    let probs =
        (q.matmul(&k.t()?)? * scale)?.apply_op1_no_bwd(&fused::CausalSoftmax { n, past })?;
    let out = probs
        .matmul(&v)?
        .reshape((nh, n, d))?
        .transpose(0, 1)?
        .contiguous()?;
    Ok(out.flatten_all()?.to_vec1::<f32>()?)
}

/// One layer's keys and values, `[kv_head][position][d]`, allocated to the session's context
/// on first use.
#[derive(Debug, Default)]
struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerCache {
    /// Copies the K and V parts of `n` Q|K|V rows into positions `pos..pos + n`.
    fn append(&mut self, qkv: &[f32], n: usize, pos: usize, ctx: usize, cfg: &LlamaConfig) {
        let d = cfg.head_dim;
        let (qdim, kvdim) = (cfg.heads * d, cfg.kv_heads * d);
        if self.k.is_empty() {
            self.k = vec![0f32; cfg.kv_heads * ctx * d];
            self.v = vec![0f32; cfg.kv_heads * ctx * d];
        }
        for (i, row) in qkv.chunks_exact(qdim + 2 * kvdim).take(n).enumerate() {
            for g in 0..cfg.kv_heads {
                let dst = (g * ctx + pos + i) * d;
                self.k[dst..dst + d].copy_from_slice(&row[qdim + g * d..qdim + (g + 1) * d]);
                let src = qdim + kvdim + g * d;
                self.v[dst..dst + d].copy_from_slice(&row[src..src + d]);
            }
        }
    }
}

/// One session's attention cache and position.
#[derive(Debug)]
pub struct KvState {
    caches: Vec<LayerCache>,
    pos: usize,
    context: usize,
}

impl KvState {
    /// Tokens already in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Capacity in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Forgets everything, keeping the allocation.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Forgets the last `n` tokens (their cache entries are overwritten by later appends).
    pub fn rewind(&mut self, n: usize) {
        self.pos = self.pos.saturating_sub(n);
    }
}

/// The tensors [`LlamaWeights::load`] reads (with `gemma`, Gemma 3's post-norms too).
fn known_tensor(name: &str, gemma: bool) -> bool {
    const GLOBAL: &[&str] = &[
        "token_embd.weight",
        "output.weight",
        "output_norm.weight",
        "rope_freqs.weight",
    ];
    const LAYER: &[&str] = &[
        "attn_norm.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_qkv.weight",
        "attn_q_norm.weight",
        "attn_k_norm.weight",
        "attn_v.weight",
        "attn_q.bias",
        "attn_k.bias",
        "attn_v.bias",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    GLOBAL.contains(&name)
        || name.strip_prefix("blk.").is_some_and(|rest| {
            rest.split_once('.').is_some_and(|(i, t)| {
                let gemma_only = matches!(t, "post_attention_norm.weight" | "post_ffw_norm.weight");
                i.parse::<usize>().is_ok() && (LAYER.contains(&t) || (gemma && gemma_only))
            })
        })
}

/// How a model stretches RoPE past its training length, as llama.cpp applies it.
#[derive(Debug, Clone, PartialEq)]
struct RopeScaling {
    /// Every angle is multiplied by this (`1 / rope.scaling.factor` for linear scaling).
    freq_scale: f32,
    /// Per-frequency divisors (`rope_freqs.weight`: Llama 3.1 and later), `head_dim / 2` of them.
    factors: Option<Vec<f32>>,
}

/// Reads `rope.scaling.*` and the optional `rope_freqs.weight` tensor; YaRN and other schemes
/// that change more than the angles are refused by name.
fn rope_scaling(
    meta: &Meta<'_>,
    key: &dyn Fn(&str) -> String,
    head_dim: usize,
    tensor: &mut dyn FnMut(&str) -> candle_core::Result<QTensor>,
) -> Result<RopeScaling> {
    let invalid = |reason: String| Error::ModelInvalid {
        path: meta.path.to_path_buf(),
        reason,
    };
    let kind = meta.str(&key("rope.scaling.type")).unwrap_or("none");
    if !matches!(kind, "none" | "linear") {
        return Err(invalid(format!(
            "RoPE scaling `{kind}` is not supported (none and linear are)"
        )));
    }
    let factor = meta
        .f32(&key("rope.scaling.factor"))
        .or_else(|_| meta.f32(&key("rope.scale_linear")))
        .unwrap_or(0.0);
    if !factor.is_finite() || factor < 0.0 {
        return Err(invalid(format!("rope.scaling.factor {factor} is invalid")));
    }
    let freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
    let factors = match tensor("rope_freqs.weight") {
        Ok(t) => {
            let f = t
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if f.len() != head_dim / 2 || f.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(invalid(format!(
                    "rope_freqs.weight has {} values (positive ones expected, {})",
                    f.len(),
                    head_dim / 2
                )));
            }
            Some(f)
        }
        Err(_) => None,
    };
    Ok(RopeScaling {
        freq_scale,
        factors,
    })
}

/// cos/sin of `pos * theta^(-2i/d)` (scaled as `scaling` says) for every position and pair, row-major (pos, d/2).
fn rope_tables(
    head_dim: usize,
    theta: f32,
    max_len: usize,
    scaling: &RopeScaling,
) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .enumerate()
        .map(|(j, i)| {
            let factor = scaling.factors.as_ref().map_or(1.0, |f| f[j]);
            scaling.freq_scale / (theta.powf(i as f32 / head_dim as f32) * factor)
        })
        .collect();
    let mut cos = Vec::with_capacity(max_len * inv.len());
    let mut sin = Vec::with_capacity(max_len * inv.len());
    for p in 0..max_len {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(heads: usize, kv_heads: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig {
            architecture: "llama".into(),
            rope: Rope::Interleaved,
            context_length: 64,
            hidden: heads * head_dim,
            layers: 1,
            heads,
            kv_heads,
            head_dim,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            vocab: 8,
            embed_scale: 1.0,
            query_scale: 1.0,
            activation: Activation::Silu,
            final_softcap: None,
            attn_softcap: None,
        }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// The row-by-row path (decode, short appends) and the GEMM path (prefill) compute the same
    /// causal attention, with and without grouped KV heads, from an empty or a filled cache.
    #[test]
    fn both_attention_paths_agree() {
        for (heads, kv_heads, d, past, n) in [(4, 2, 8, 3, 20), (3, 3, 16, 0, 17), (6, 1, 8, 9, 5)]
        {
            let cfg = config(heads, kv_heads, d);
            let ctx = 48;
            let width = (heads + 2 * kv_heads) * d;
            let mut cache = LayerCache::default();
            cache.append(&values(past * width, 1), past, 0, ctx, &cfg);
            let qkv = values(n * width, 2);
            cache.append(&qkv, n, past, ctx, &cfg);
            let rows = attention_rows(&qkv, n, past, &cache, ctx, &cfg);
            let gemm = attention_gemm(&qkv, n, past, &cache, ctx, &cfg).unwrap();
            assert_eq!(rows.len(), n * heads * d);
            assert_eq!(rows.len(), gemm.len());
            for (i, (r, g)) in rows.iter().zip(&gemm).enumerate() {
                assert!(
                    (r - g).abs() < 1e-5,
                    "heads {heads}/{kv_heads}, past {past}, n {n}: [{i}] {r} vs {g}"
                );
            }
        }
    }

    /// The batched attention gives every row what the one-sequence reference gives it: short
    /// segments (decode steps) and a long one (a prompt piece, on the GEMM path) mixed, each
    /// over its own cache at its own position.
    #[test]
    fn batched_attention_matches_each_sequence_alone() {
        let (heads, kv_heads, d) = (4, 2, 8);
        let cfg = config(heads, kv_heads, d);
        let width = (heads + 2 * kv_heads) * d;
        // (past, new rows, context) per sequence.
        let shapes = [(5, 1, 48), (0, 20, 40), (11, 1, 64), (2, 3, 48)];
        let mut states: Vec<KvState> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(past, _, ctx))| {
                let mut cache = LayerCache::default();
                cache.append(&values(past * width, 10 + i), past, 0, ctx, &cfg);
                KvState {
                    caches: vec![cache],
                    pos: past,
                    context: ctx,
                }
            })
            .collect();
        let tokens: Vec<Vec<u32>> = shapes.iter().map(|&(_, n, _)| vec![0; n]).collect();
        let parts: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(_, n, _))| values(n * width, 20 + i))
            .collect();
        let mut expected = Vec::new();
        for ((state, part), &(past, n, ctx)) in states.iter_mut().zip(&parts).zip(&shapes) {
            state.caches[0].append(part, n, past, ctx, &cfg);
            expected.extend(attention_rows(part, n, past, &state.caches[0], ctx, &cfg));
        }
        let qkv: Vec<f32> = parts.concat();
        let segs: Vec<Segment<'_>> = states
            .iter_mut()
            .zip(&tokens)
            .map(|(state, t)| Segment { tokens: t, state })
            .collect();
        let got = attention(&qkv, &segs, 0, None, &cfg).unwrap();
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() < 1e-5, "[{i}] {g} vs {e}");
        }
    }

    /// Both rotations turn each pair by its position's angle and keep its length; they differ
    /// only in which values pair up: neighbours (llama) or the two halves of the head (Qwen2).
    #[test]
    fn rotations_pair_neighbours_or_halves() {
        let d = 8;
        let none = RopeScaling {
            freq_scale: 1.0,
            factors: None,
        };
        let (cos, sin) = rope_tables(d, 10_000.0, 4, &none);
        let (c, s) = (&cos[3 * d / 2..4 * d / 2], &sin[3 * d / 2..4 * d / 2]);
        let x: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let mut inter = x.clone();
        rope_interleaved(&mut inter, c, s);
        let mut halves = x.clone();
        rope_halves(&mut halves, c, s);
        for j in 0..d / 2 {
            let angle = 3.0 / 10_000f32.powf((2 * j) as f32 / d as f32);
            let (a, b) = (x[2 * j], x[2 * j + 1]);
            assert!((inter[2 * j] - (a * angle.cos() - b * angle.sin())).abs() < 1e-5);
            assert!((inter[2 * j + 1] - (a * angle.sin() + b * angle.cos())).abs() < 1e-5);
            let (a, b) = (x[j], x[j + d / 2]);
            assert!((halves[j] - (a * angle.cos() - b * angle.sin())).abs() < 1e-5);
            assert!((halves[j + d / 2] - (a * angle.sin() + b * angle.cos())).abs() < 1e-5);
        }
        assert_ne!(inter, halves);
    }

    /// Linear scaling slows every angle by the factor; per-frequency factors (Llama 3.1's
    /// `rope_freqs`) divide each frequency by its own.
    #[test]
    fn scaled_rope_tables_divide_the_angles() {
        let d = 8;
        let plain = rope_tables(
            d,
            500_000.0,
            16,
            &RopeScaling {
                freq_scale: 1.0,
                factors: None,
            },
        );
        let linear = rope_tables(
            d,
            500_000.0,
            16,
            &RopeScaling {
                freq_scale: 0.25,
                factors: None,
            },
        );
        let factors = vec![1.0, 2.0, 4.0, 8.0];
        let per = rope_tables(
            d,
            500_000.0,
            16,
            &RopeScaling {
                freq_scale: 1.0,
                factors: Some(factors.clone()),
            },
        );
        for p in [1usize, 3, 7, 12] {
            for (j, factor) in factors.iter().enumerate() {
                let at =
                    |t: &(Vec<f32>, Vec<f32>), q: usize| (t.0[q * d / 2 + j], t.1[q * d / 2 + j]);
                // Position 4p under scale 1/4 turns as far as position p unscaled.
                if 4 * p < 16 {
                    let ((c1, s1), (c2, s2)) = (at(&linear, 4 * p), at(&plain, p));
                    assert!(
                        (c1 - c2).abs() < 1e-4 && (s1 - s2).abs() < 1e-4,
                        "p {p} j {j}"
                    );
                }
                let want = p as f32 / (500_000f32.powf((2 * j) as f32 / d as f32) * factor);
                let (c, s) = at(&per, p);
                assert!(
                    (c - want.cos()).abs() < 1e-4 && (s - want.sin()).abs() < 1e-4,
                    "p {p} j {j}"
                );
            }
        }
    }

    /// Tensors outside the layout (FFN biases, Phi-3's long-context RoPE factors, Gemma's
    /// post-norms) are what make a file refused rather than run without them.
    #[test]
    fn only_the_layout_s_tensors_are_known() {
        for name in [
            "token_embd.weight",
            "rope_freqs.weight",
            "blk.0.attn_qkv.weight",
            "blk.27.attn_k_norm.weight",
            "blk.3.attn_v.bias",
        ] {
            assert!(known_tensor(name, false), "{name}");
        }
        for name in [
            "blk.0.ffn_up.bias",
            "rope_factors_long.weight",
            "blk.1.post_attention_norm.weight",
            "blk.x.attn_q.weight",
            "output.bias",
        ] {
            assert!(!known_tensor(name, false), "{name}");
        }
        assert!(known_tensor("blk.1.post_attention_norm.weight", true));
    }
}
