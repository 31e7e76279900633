//! Llama-architecture decoder over GGUF-quantized weights (covers SmolLM2, Llama 2/3, Mistral).
//!
//! Weights ([`LlamaWeights`]) are immutable and shared by every session through an `Arc`; each
//! [`KvState`] holds one session's key/value cache, preallocated to the session's context so a
//! decode step never copies the cache. Projections that read the same input run as one stacked
//! matmul (Q|K|V, gate|up) on our quantized kernels (`quant.rs`). Grouped-query attention is
//! computed without repeating the key/value heads: the query heads that share one KV head are
//! folded into the row dimension.

use crate::error::{Error, Result};
use crate::gguf_meta::Meta;
use crate::quant::QLinear;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub architecture: String,
    pub context_length: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f32,
    pub vocab: usize,
}

/// Linear layers that read the same input: one stacked matmul when the formats allow it.
#[derive(Debug)]
enum Fused {
    Stacked { lin: QLinear, dims: Vec<usize> },
    Separate(Vec<QLinear>),
}

impl Fused {
    fn new(parts: Vec<QLinear>) -> Self {
        let dims = parts.iter().map(QLinear::out_dim).collect();
        match QLinear::stack(parts) {
            Ok(lin) => Self::Stacked { lin, dims },
            Err(parts) => Self::Separate(parts),
        }
    }

    /// One output per part, each (rows, part's out_dim).
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Stacked { lin, dims } => {
                let y = lin.forward(x)?;
                let mut start = 0;
                let mut outs = Vec::with_capacity(dims.len());
                for &d in dims {
                    outs.push(y.narrow(1, start, d)?);
                    start += d;
                }
                Ok(outs)
            }
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
        }
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    qkv: Fused,
    wo: QLinear,
    ffn_norm: Tensor,
    gate_up: Fused,
    down: QLinear,
}

/// The immutable part of the model; share it with `Arc`.
#[derive(Debug)]
pub struct LlamaWeights {
    pub config: LlamaConfig,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QLinear,
    cos: Tensor,
    sin: Tensor,
}

/// Architectures whose GGUF tensors follow the llama layout with interleaved RoPE.
const LLAMA_LIKE: &[&str] = &["llama", "mistral"];

impl LlamaWeights {
    /// Opens a GGUF file and loads its weights (the tokenizer is not needed for raw forwards).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let mut file =
            std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| Error::ModelInvalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::load(&content, &Meta::new(&content, path), &mut file)
    }

    /// Reads hyper-parameters and tensors from an open GGUF file.
    pub(crate) fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        meta: &Meta<'_>,
        reader: &mut R,
    ) -> Result<Self> {
        let arch = meta.str("general.architecture")?.to_string();
        if !LLAMA_LIKE.contains(&arch.as_str()) {
            return Err(Error::ModelInvalid {
                path: meta.path.to_path_buf(),
                reason: format!(
                    "architecture `{arch}` is not supported; supported: {}",
                    LLAMA_LIKE.join(", ")
                ),
            });
        }
        let prefix = arch.clone();
        let key = |k: &str| format!("{prefix}.{k}");
        let hidden = meta.usize(&key("embedding_length"))?;
        let heads = meta.usize(&key("attention.head_count"))?;
        let kv_heads = meta.usize(&key("attention.head_count_kv")).unwrap_or(heads);
        let head_dim = meta.usize(&key("rope.dimension_count")).unwrap_or(hidden / heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim * heads != hidden {
            return Err(Error::ModelInvalid {
                path: meta.path.to_path_buf(),
                reason: format!(
                    "inconsistent heads: {heads} heads, {kv_heads} kv heads, {hidden} hidden"
                ),
            });
        }
        let dev = Device::Cpu;
        let mut tensor = |name: &str| content.tensor(reader, name, &dev);
        let embd_q = tensor("token_embd.weight")?;
        let embeddings = embd_q.dequantize(&dev)?;
        let vocab = embeddings.dim(0)?;
        // Tied embeddings: small models reuse the input embedding as the output projection.
        let output = match tensor("output.weight") {
            Ok(t) => QLinear::from_qtensor(t)?,
            Err(_) => QLinear::from_qtensor(embd_q)?,
        };
        let norm = tensor("output_norm.weight")?.dequantize(&dev)?;
        let layer_count = meta.usize(&key("block_count"))?;
        let mut layers = Vec::with_capacity(layer_count);
        for i in 0..layer_count {
            let mut q = |n: &str| -> Result<QLinear> {
                QLinear::from_qtensor(tensor(&format!("blk.{i}.{n}.weight"))?)
            };
            let qkv = Fused::new(vec![q("attn_q")?, q("attn_k")?, q("attn_v")?]);
            let wo = q("attn_output")?;
            let gate_up = Fused::new(vec![q("ffn_gate")?, q("ffn_up")?]);
            let down = q("ffn_down")?;
            let mut f = |n: &str| -> Result<Tensor> {
                Ok(tensor(&format!("blk.{i}.{n}.weight"))?.dequantize(&dev)?)
            };
            let (attn_norm, ffn_norm) = (f("attn_norm")?, f("ffn_norm")?);
            layers.push(Layer { attn_norm, qkv, wo, ffn_norm, gate_up, down });
        }
        let context_length = meta.usize(&key("context_length"))?;
        let rope_theta = meta.f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let (cos, sin) = rope_tables(head_dim, rope_theta, context_length)?;
        let config = LlamaConfig {
            architecture: arch,
            context_length,
            hidden,
            layers: layer_count,
            heads,
            kv_heads,
            head_dim,
            rms_eps: meta.f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
            rope_theta,
            vocab,
        };
        Ok(Self { config, embeddings, layers, norm, output, cos, sin })
    }

    /// A fresh KV cache for a session of `context` tokens.
    pub fn new_state(&self, context: usize) -> KvState {
        let context = context.min(self.config.context_length);
        KvState {
            caches: (0..self.config.layers).map(|_| LayerCache::default()).collect(),
            pos: 0,
            context,
        }
    }

    /// Runs `tokens` (appended at `state.pos`) through the model and returns the logits of the
    /// last one as a vector of vocabulary size.
    pub fn forward(&self, tokens: &[u32], state: &mut KvState) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        if state.pos + n > state.context {
            return Err(Error::PromptTooLong {
                prompt_tokens: state.pos + n,
                max_new_tokens: 0,
                context: state.context,
            });
        }
        let cfg = &self.config;
        let dev = Device::Cpu;
        let ids = Tensor::new(tokens, &dev)?;
        let mut x = self.embeddings.embedding(&ids)?; // (n, hidden)
        let cos = self.cos.narrow(0, state.pos, n)?;
        let sin = self.sin.narrow(0, state.pos, n)?;
        let mask = (n > 1).then(|| causal_mask(n, state.pos)).transpose()?;
        let group = cfg.heads / cfg.kv_heads;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let eps = cfg.rms_eps as f32;
        for (layer, cache) in self.layers.iter().zip(state.caches.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [q, k, v]: [Tensor; 3] = layer
                .qkv
                .forward(&h)?
                .try_into()
                .map_err(|_| Error::InvalidInput("qkv projection arity".into()))?;
            let heads = |t: Tensor, count: usize| -> Result<Tensor> {
                Ok(t.reshape((1, n, count, cfg.head_dim))?.transpose(1, 2)?.contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope_i(&heads(q, cfg.heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&heads(k, cfg.kv_heads)?, &cos, &sin)?;
            let v = heads(v, cfg.kv_heads)?;
            let (k, v) = cache.append(&k, &v, state.pos, state.context)?; // (1, kv, t, d)
            let t = k.dim(2)?;
            // Fold the `group` query heads of each KV head into rows: (1, kv_heads, group*n, d).
            let q = (q.reshape((1, cfg.kv_heads, group * n, cfg.head_dim))? * scale)?;
            let scores = q.matmul(&k.t()?)?; // (1, kv_heads, group*n, t)
            let scores = match &mask {
                Some(m) => scores
                    .reshape((1, cfg.kv_heads, group, n, t))?
                    .broadcast_add(m)?
                    .reshape((1, cfg.kv_heads, group * n, t))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)? // (1, kv_heads, group*n, d)
                .reshape((1, cfg.heads, n, cfg.head_dim))?
                .transpose(1, 2)?
                .reshape((n, cfg.hidden))?;
            x = (x + layer.wo.forward(&ctx)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer
                .gate_up
                .forward(&h)?
                .try_into()
                .map_err(|_| Error::InvalidInput("gate/up projection arity".into()))?;
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + layer.down.forward(&act)?)?;
        }
        state.pos += n;
        let last = x.narrow(0, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        let logits = self.output.forward(&last)?.squeeze(0)?;
        Ok(logits.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

/// One layer's keys and values, preallocated to the session's context: (1, kv_heads, ctx, d).
#[derive(Debug, Default)]
struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Writes `k`/`v` (1, kv_heads, n, d) at `pos` and returns views of positions `0..pos + n`.
    fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        ctx: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = match self.kv.take() {
            Some(kv) => kv,
            None => {
                let (b, h, _, d) = k.dims4()?;
                let zeros = || Tensor::zeros((b, h, ctx, d), k.dtype(), k.device());
                (zeros()?, zeros()?)
            }
        };
        kc.slice_set(k, 2, pos)?;
        vc.slice_set(v, 2, pos)?;
        let t = pos + k.dim(2)?;
        let views = (kc.narrow(2, 0, t)?, vc.narrow(2, 0, t)?);
        self.kv = Some((kc, vc));
        Ok(views)
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

/// Additive causal mask (n, t) for `n` new tokens after `past` cached ones.
fn causal_mask(n: usize, past: usize) -> Result<Tensor> {
    let t = past + n;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (n, t), &Device::Cpu)?)
}

fn rope_tables(head_dim: usize, theta: f32, max_len: usize) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, max_len as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
    let freqs = pos.unsqueeze(1)?.broadcast_mul(&inv.unsqueeze(0)?)?;
    Ok((freqs.cos()?.contiguous()?, freqs.sin()?.contiguous()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_hides_the_future_only() {
        let m = causal_mask(2, 3).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0][..4], [0.0; 4]);
        assert!(m[0][4].is_infinite());
        assert_eq!(m[1], [0.0; 5]);
    }
}
