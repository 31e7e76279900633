//! A BERT-family encoder forward pass on candle, for sentence embeddings.
//!
//! Written for inference only: the query, key and value projections are fused into one matmul,
//! activations stay two-dimensional `(tokens, hidden)` between layers so every projection is a
//! single GEMM, and padding is masked with an additive bias built once per batch.

use crate::error::{Error, Result};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

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

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// Exact GELU (erf), what Hugging Face calls `gelu`.
    Gelu,
    /// tanh-approximated GELU.
    GeluApprox,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluApprox),
            "relu" => Ok(Self::Relu),
            other => Err(Error::InvalidInput(format!(
                "unsupported hidden_act `{other}`"
            ))),
        }
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => xs.gelu_erf()?,
            Self::GeluApprox => xs.gelu()?,
            Self::Relu => xs.relu()?,
        })
    }
}

#[derive(Debug)]
struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
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
    head_dim: usize,
    hidden: usize,
    act: Activation,
    pub(crate) max_positions: usize,
}

fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Ok(Linear::new(w, Some(b)))
}

fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    // Older checkpoints name the parameters gamma/beta.
    let (w, b) = match (vb.get(dim, "weight"), vb.get(dim, "bias")) {
        (Ok(w), Ok(b)) => (w, b),
        _ => (vb.get(dim, "gamma")?, vb.get(dim, "beta")?),
    };
    Ok(LayerNorm::new(w, b, eps))
}

impl BertModel {
    /// Loads weights from a VarBuilder over a safetensors file; accepts both `bert.`-prefixed and
    /// bare tensor names, as sentence-transformers checkpoints use either.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
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
        if cfg.num_attention_heads == 0 || h % cfg.num_attention_heads != 0 {
            return Err(Error::InvalidInput(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
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
        let emb_norm = layer_norm(&emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention");
            let q = linear(&att.pp("self.query"), h, h)?;
            let k = linear(&att.pp("self.key"), h, h)?;
            let v = linear(&att.pp("self.value"), h, h)?;
            let qkv_w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
            let qkv_b = Tensor::cat(
                &[
                    q.bias().ok_or_else(missing_bias)?,
                    k.bias().ok_or_else(missing_bias)?,
                    v.bias().ok_or_else(missing_bias)?,
                ],
                0,
            )?;
            layers.push(Layer {
                qkv: Linear::new(qkv_w, Some(qkv_b)),
                attn_out: linear(&att.pp("output.dense"), h, h)?,
                attn_norm: layer_norm(&att.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
                intermediate: linear(&l.pp("intermediate.dense"), h, cfg.intermediate_size)?,
                output: linear(&l.pp("output.dense"), cfg.intermediate_size, h)?,
                out_norm: layer_norm(&l.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            hidden: h,
            act: Activation::parse(&cfg.hidden_act)?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Hidden size, which is the embedding dimension.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs the encoder over `ids` (batch, seq) with `mask` (batch, seq; 1 = token, 0 = pad),
    /// returning the last hidden state (batch, seq, hidden).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
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
        // Additive attention bias: 0 for tokens, a large negative number for padding.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer
                .qkv
                .forward(&x)?
                .reshape((b, l, 3, self.heads, self.head_dim))?;
            let q = (qkv
                .narrow(2, 0, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?
                * scale)?;
            let k = qkv
                .narrow(2, 1, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?;
            let v = qkv
                .narrow(2, 2, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * l, self.hidden))?;
            let attn = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let inter = self.act.apply(&layer.intermediate.forward(&attn)?)?;
            x = layer
                .out_norm
                .forward(&(layer.output.forward(&inter)? + &attn)?)?;
        }
        Ok(x.reshape((b, l, self.hidden))?)
    }
}

fn missing_bias() -> Error {
    Error::InvalidInput("attention projection has no bias".into())
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
