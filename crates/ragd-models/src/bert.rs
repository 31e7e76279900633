//! A BERT-family encoder forward pass on candle, for sentence embeddings.
//!
//! Written for inference only: the query, key and value projections are one matmul, weights are
//! stored transposed for the GEMMs, activations stay two-dimensional `(tokens, hidden)` between
//! layers, and everything between two GEMMs is one fused pass (`ops.rs`): bias + GELU,
//! bias + residual + LayerNorm, and attention straight from the Q|K|V rows that skips padding.
//!
//! At [`Precision::Int8`] the four matrix products of each layer run on int8 copies of the
//! weights (quantized per output channel on first use, `kernels::int8`); embeddings, the fused
//! element-wise ops and attention stay f32.

use crate::error::{Error, Result};
use crate::kernels::fused::{Attention, BiasGelu, BiasResidualNorm};
use crate::kernels::int8::Int8Linear;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use ragd_core::Precision;
use serde::Deserialize;
use std::sync::OnceLock;

/// The subset of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// One encoder layer. Weight matrices are stored transposed, `(in, out)`, for the GEMMs;
/// biases and norm parameters as plain vectors for the fused element-wise ops.
#[derive(Debug)]
struct Layer {
    qkv_w: Tensor,
    qkv_b: Vec<f32>,
    out_w: Tensor,
    out_b: Vec<f32>,
    attn_gamma: Vec<f32>,
    attn_beta: Vec<f32>,
    inter_w: Tensor,
    inter_b: Vec<f32>,
    ffn_w: Tensor,
    ffn_b: Vec<f32>,
    ffn_gamma: Vec<f32>,
    ffn_beta: Vec<f32>,
}

/// A layer's four weight matrices quantized to int8.
#[derive(Debug)]
struct Int8Layer {
    qkv: Int8Linear,
    out: Int8Linear,
    inter: Int8Linear,
    ffn: Int8Linear,
}

impl Int8Layer {
    fn quantize(l: &Layer) -> Result<Self> {
        // The f32 weights are stored (in, out); quantization wants (out, in) rows.
        let q = |w_t: &Tensor| -> Result<Int8Linear> {
            let w = w_t.t()?.contiguous()?;
            let (n, k) = w.dims2()?;
            Int8Linear::quantize(&w.flatten_all()?.to_vec1::<f32>()?, n, k)
        };
        Ok(Self {
            qkv: q(&l.qkv_w)?,
            out: q(&l.out_w)?,
            inter: q(&l.inter_w)?,
            ffn: q(&l.ffn_w)?,
        })
    }
}

/// `x · w` in f32 (`w` stored (in, out)), or with the int8 copy `q` of `w`.
fn product(x: &Tensor, w: &Tensor, q: Option<&Int8Linear>) -> Result<Tensor> {
    Ok(match q {
        Some(q) => x.apply_op1_no_bwd(q)?,
        None => x.matmul(w)?,
    })
}

/// BERT encoder weights (no pooler head: pooling is done by the embedder).
#[derive(Debug)]
pub struct BertModel {
    word: Embedding,
    position: Embedding,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    eps: f32,
    pub(crate) max_positions: usize,
    /// int8 copies of the layers' weights, made on the first int8 forward pass.
    int8: OnceLock<Vec<Int8Layer>>,
}

/// A linear layer's weight, transposed to (in, out), and its bias.
fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<(Tensor, Tensor)> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Ok((w.t()?.contiguous()?, b))
}

fn norm_params(vb: &VarBuilder, dim: usize) -> Result<(Tensor, Tensor)> {
    // Older checkpoints name the parameters gamma/beta.
    match (vb.get(dim, "weight"), vb.get(dim, "bias")) {
        (Ok(w), Ok(b)) => Ok((w, b)),
        _ => Ok((vb.get(dim, "gamma")?, vb.get(dim, "beta")?)),
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_vec1::<f32>()?)
}

impl BertModel {
    /// Loads weights from a VarBuilder over a safetensors file; accepts both `bert.`-prefixed and
    /// bare tensor names, as sentence-transformers checkpoints use either.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        // Detect (and log, once) the CPU kernels while loading, not on the first request.
        crate::kernels::active();
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else if let Some(prefix) = cfg
            .model_type
            .as_deref()
            .filter(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")))
        {
            vb.pp(prefix)
        } else {
            vb.pp("bert")
        };
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::InvalidInput(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            )));
        }
        if cfg.hidden_act != "gelu" {
            return Err(Error::InvalidInput(format!(
                "unsupported hidden_act `{}` (only `gelu`)",
                cfg.hidden_act
            )));
        }
        let emb = vb.pp("embeddings");
        let word = Embedding::new(emb.get((cfg.vocab_size, h), "word_embeddings.weight")?, h);
        let position = Embedding::new(
            emb.get(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            h,
        );
        // Sentence encoders only ever use segment 0; keep its row to add as a bias.
        let token_type = emb
            .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let (g, b) = norm_params(&emb.pp("LayerNorm"), h)?;
        let emb_norm = LayerNorm::new(g, b, cfg.layer_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention");
            let (q_w, q_b) = linear(&att.pp("self.query"), h, h)?;
            let (k_w, k_b) = linear(&att.pp("self.key"), h, h)?;
            let (v_w, v_b) = linear(&att.pp("self.value"), h, h)?;
            let (out_w, out_b) = linear(&att.pp("output.dense"), h, h)?;
            let (attn_gamma, attn_beta) = norm_params(&att.pp("output.LayerNorm"), h)?;
            let (inter_w, inter_b) = linear(&l.pp("intermediate.dense"), h, cfg.intermediate_size)?;
            let (ffn_w, ffn_b) = linear(&l.pp("output.dense"), cfg.intermediate_size, h)?;
            let (ffn_gamma, ffn_beta) = norm_params(&l.pp("output.LayerNorm"), h)?;
            layers.push(Layer {
                qkv_w: Tensor::cat(&[q_w, k_w, v_w], 1)?.contiguous()?,
                qkv_b: to_vec(&Tensor::cat(&[q_b, k_b, v_b], 0)?)?,
                out_w,
                out_b: to_vec(&out_b)?,
                attn_gamma: to_vec(&attn_gamma)?,
                attn_beta: to_vec(&attn_beta)?,
                inter_w,
                inter_b: to_vec(&inter_b)?,
                ffn_w,
                ffn_b: to_vec(&ffn_b)?,
                ffn_gamma: to_vec(&ffn_gamma)?,
                ffn_beta: to_vec(&ffn_beta)?,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
            eps: cfg.layer_norm_eps as f32,
            max_positions: cfg.max_position_embeddings,
            int8: OnceLock::new(),
        })
    }

    /// Hidden size, which is the embedding dimension.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The int8 layers, quantized on first use.
    fn int8_layers(&self) -> Result<&[Int8Layer]> {
        if let Some(l) = self.int8.get() {
            return Ok(l);
        }
        crate::kernels::int8_kernels();
        let layers = self
            .layers
            .iter()
            .map(Int8Layer::quantize)
            .collect::<Result<Vec<_>>>()?;
        Ok(self.int8.get_or_init(|| layers))
    }

    /// Runs the encoder over `ids` (batch, seq), where row `b` has `lens[b]` real tokens followed
    /// by padding, returning the last hidden state (batch, seq, hidden).
    pub fn forward(&self, ids: &Tensor, lens: &[usize], precision: Precision) -> Result<Tensor> {
        let int8 = match precision {
            Precision::F32 => None,
            Precision::Int8 => Some(self.int8_layers()?),
        };
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let positions = Tensor::arange(0u32, l as u32, dev)?;
        let x = self
            .word
            .forward(&ids.flatten_all()?)?
            .reshape((b, l, self.hidden))?
            .broadcast_add(&self.position.forward(&positions)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.emb_norm.forward(&x.reshape((b * l, self.hidden))?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let q = int8.map(|l| &l[i]);
            let ctx =
                product(&x, &layer.qkv_w, q.map(|q| &q.qkv))?.apply_op1_no_bwd(&Attention {
                    bias: &layer.qkv_b,
                    lens,
                    heads: self.heads,
                })?;
            let attn = product(&ctx, &layer.out_w, q.map(|q| &q.out))?.apply_op2_no_bwd(
                &x,
                &BiasResidualNorm {
                    bias: &layer.out_b,
                    gamma: &layer.attn_gamma,
                    beta: &layer.attn_beta,
                    eps: self.eps,
                },
            )?;
            let inter = product(&attn, &layer.inter_w, q.map(|q| &q.inter))?.apply_op1_no_bwd(
                &BiasGelu {
                    bias: &layer.inter_b,
                },
            )?;
            x = product(&inter, &layer.ffn_w, q.map(|q| &q.ffn))?.apply_op2_no_bwd(
                &attn,
                &BiasResidualNorm {
                    bias: &layer.ffn_b,
                    gamma: &layer.ffn_gamma,
                    beta: &layer.ffn_beta,
                    eps: self.eps,
                },
            )?;
        }
        Ok(x.reshape((b, l, self.hidden))?)
    }
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// Pools `hidden` (batch, seq, dim) under `mask` (batch, seq) and L2-normalises each row.
pub fn pool_and_normalize(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let pooled = match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        }
    };
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(pooled.broadcast_div(&norm)?)
}

/// Loads `model.safetensors` fully into memory (no mmap, so no unsafe) as a VarBuilder.
pub fn var_builder(path: &std::path::Path) -> Result<VarBuilder<'static>> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    Ok(VarBuilder::from_buffered_safetensors(
        bytes,
        DType::F32,
        &Device::Cpu,
    )?)
}
