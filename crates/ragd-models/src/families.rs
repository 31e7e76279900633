//! The encoder network of a model directory, chosen by its `config.json`: ragd's fused BERT
//! pass for BERT-family encoders (MiniLM, bge, e5, gte-small…), candle-transformers for
//! XLM-RoBERTa / RoBERTa (multilingual-e5, bge-m3) and ModernBERT (gte-modernbert,
//! modernbert-embed). Reading a Hugging Face config into candle-transformers' config types
//! happens here and nowhere else: candle's serde layouts do not follow every checkpoint
//! (ModernBERT's `norm_eps`, transformers 5's `rope_parameters`), so the fields are read one by
//! one, with the defaults transformers uses.

use crate::bert::{BertConfig, BertModel, var_builder};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bert, modernbert, xlm_roberta};
use ragd_core::Precision;
use serde_json::Value;
use std::path::Path;

/// Encoder model types ragd runs.
pub const SUPPORTED: &str = "bert, roberta, xlm-roberta, modernbert";

/// What `ragd models list` shows of an encoder directory, read from its `config.json` alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncoderSummary {
    /// `model_type` (`bert` when the config names none).
    pub architecture: String,
    /// Vector length.
    pub dimensions: usize,
    /// Longest input in tokens.
    pub context_length: usize,
    /// A cross-encoder (`*ForSequenceClassification`): a reranker, not an embedding model.
    pub cross_encoder: bool,
}

/// The JSON of a model directory's `config.json` at `path`.
pub(crate) fn read_config(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::ModelInvalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// True when `config` describes a sequence-classification model (a cross-encoder).
pub(crate) fn is_cross_encoder(config: &Value) -> bool {
    config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .is_some_and(|a| a.ends_with("ForSequenceClassification"))
}

/// The summary of the encoder directory `dir`.
pub fn summarize_encoder(dir: &Path) -> Result<EncoderSummary> {
    let path = dir.join("config.json");
    let v = read_config(&path)?;
    let c = Fields { v: &v };
    let invalid = |reason: String| Error::ModelInvalid {
        path: path.clone(),
        reason,
    };
    let architecture = c.str_or("model_type", "bert").to_string();
    let positions = c.usize("max_position_embeddings").map_err(invalid)?;
    let context_length = if matches!(architecture.as_str(), "xlm-roberta" | "roberta") {
        positions.saturating_sub(c.usize_or("pad_token_id", 1).map_err(invalid)? + 1)
    } else {
        positions
    };
    Ok(EncoderSummary {
        dimensions: c.usize("hidden_size").map_err(invalid)?,
        architecture,
        context_length,
        cross_encoder: is_cross_encoder(&v),
    })
}

/// A model's name: its directory's.
pub(crate) fn model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A loaded encoder network: token ids in, last hidden state out.
pub(crate) enum Network {
    /// ragd's own fused pass (f32 or int8).
    Bert(BertModel),
    /// candle-transformers' XLM-RoBERTa (RoBERTa's layout too).
    XlmRoberta(Box<xlm_roberta::XLMRobertaModel>, Shape),
    /// candle-transformers' ModernBERT.
    ModernBert(Box<modernbert::ModernBert>, Shape),
}

/// What the embedder needs to know of a candle-transformers network.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    hidden: usize,
    max_positions: usize,
    pad: u32,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bert(m) => f.debug_tuple("Bert").field(m).finish(),
            Self::XlmRoberta(_, s) => f.debug_tuple("XlmRoberta").field(s).finish(),
            Self::ModernBert(_, s) => f.debug_tuple("ModernBert").field(s).finish(),
        }
    }
}

impl Network {
    /// Loads `dir/model.safetensors` as the network `config` (the parsed `config.json`)
    /// describes.
    pub(crate) fn load(dir: &Path, config: &Value) -> Result<Self> {
        let invalid = |reason: String| Error::ModelInvalid {
            path: dir.join("config.json"),
            reason,
        };
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::ModelInvalid {
                path: weights,
                reason: "file not found".into(),
            });
        }
        if is_cross_encoder(config) {
            return Err(invalid(
                "a cross-encoder (sequence classification) scores pairs and embeds nothing: \
                 use it as a reranker (--reranker, reranker.name)"
                    .into(),
            ));
        }
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("bert");
        let c = Fields { v: config };
        match model_type {
            "bert" => {
                let cfg: BertConfig =
                    serde_json::from_value(config.clone()).map_err(|e| invalid(e.to_string()))?;
                Ok(Self::Bert(BertModel::load(var_builder(&weights)?, &cfg)?))
            }
            "xlm-roberta" | "roberta" => {
                let cfg = xlm_roberta_config(&c).map_err(invalid)?;
                let shape = Shape {
                    hidden: cfg.hidden_size,
                    // Positions start after the padding index (RoBERTa's layout).
                    max_positions: cfg
                        .max_position_embeddings
                        .saturating_sub(cfg.pad_token_id as usize + 1),
                    pad: cfg.pad_token_id,
                };
                let vb = var_builder(&weights)?;
                let vb = under_prefix(vb, "embeddings.word_embeddings.weight", &["roberta"]);
                let model = xlm_roberta::XLMRobertaModel::new(&cfg, vb)?;
                Ok(Self::XlmRoberta(Box::new(model), shape))
            }
            "modernbert" => {
                let cfg = modernbert_config(&c).map_err(invalid)?;
                let shape = Shape {
                    hidden: cfg.hidden_size,
                    max_positions: cfg.max_position_embeddings,
                    pad: cfg.pad_token_id,
                };
                // candle reads `model.`-prefixed names (a masked-LM checkpoint); a bare
                // `ModernBertModel`, as sentence-transformers saves it, has none.
                let vb = var_builder(&weights)?;
                let vb = if vb.contains_tensor("model.embeddings.tok_embeddings.weight") {
                    vb
                } else {
                    vb.rename_f(|name| name.strip_prefix("model.").unwrap_or(name).to_string())
                };
                let model = modernbert::ModernBert::load(vb, &cfg)?;
                Ok(Self::ModernBert(Box::new(model), shape))
            }
            other => Err(invalid(format!(
                "encoder model_type `{other}` is not supported (supported: {SUPPORTED})"
            ))),
        }
    }

    /// Hidden size: the embedding dimension.
    pub(crate) fn hidden_size(&self) -> usize {
        match self {
            Self::Bert(m) => m.hidden_size(),
            Self::XlmRoberta(_, s) | Self::ModernBert(_, s) => s.hidden,
        }
    }

    /// Longest input in tokens.
    pub(crate) fn max_positions(&self) -> usize {
        match self {
            Self::Bert(m) => m.max_positions,
            Self::XlmRoberta(_, s) | Self::ModernBert(_, s) => s.max_positions,
        }
    }

    /// The token that fills a row past its end.
    pub(crate) fn pad(&self) -> u32 {
        match self {
            Self::Bert(_) => 0,
            Self::XlmRoberta(_, s) | Self::ModernBert(_, s) => s.pad,
        }
    }

    /// The family's name, as `config.json` spells it.
    pub(crate) fn family(&self) -> &'static str {
        match self {
            Self::Bert(_) => "bert",
            Self::XlmRoberta(..) => "xlm-roberta",
            Self::ModernBert(..) => "modernbert",
        }
    }

    /// Last hidden state `(batch, seq, hidden)` of `ids` (padded with [`Self::pad`]) under
    /// `mask` (1 for real tokens); row `b` has `lens[b]` real tokens.
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        lens: &[usize],
        precision: Precision,
    ) -> Result<Tensor> {
        if precision == Precision::Int8 && !matches!(self, Self::Bert(_)) {
            return Err(Error::InvalidInput(format!(
                "int8 encoder precision runs on BERT-family encoders only; this encoder is {} \
                 (use f32)",
                self.family()
            )));
        }
        Ok(match self {
            Self::Bert(m) => m.forward(ids, lens, precision)?,
            Self::XlmRoberta(m, _) => {
                let types = ids.zeros_like()?;
                m.forward(ids, mask, &types, None, None, None)?
            }
            Self::ModernBert(m, _) => m.forward(ids, &mask.to_dtype(DType::F32)?)?,
        })
    }
}

/// `vb` at the prefix under which `probe` exists (none, or one of `prefixes`).
fn under_prefix<'a>(vb: VarBuilder<'a>, probe: &str, prefixes: &[&str]) -> VarBuilder<'a> {
    if vb.contains_tensor(probe) {
        return vb;
    }
    match prefixes
        .iter()
        .find(|p| vb.contains_tensor(&format!("{p}.{probe}")))
    {
        Some(p) => vb.pp(*p),
        None => vb,
    }
}

/// Typed reads of a `config.json`, naming the key that is missing or wrong.
pub(crate) struct Fields<'a> {
    pub(crate) v: &'a Value,
}

impl Fields<'_> {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self.v, |v, k| v.get(*k))
    }

    fn usize(&self, key: &str) -> std::result::Result<usize, String> {
        self.at(&[key])
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| format!("`{key}` is missing or not a whole number"))
    }

    fn usize_or(&self, key: &str, default: usize) -> std::result::Result<usize, String> {
        match self.at(&[key]) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    /// The first of `paths` that holds a number, else `default`.
    fn f64_or(&self, paths: &[&[&str]], default: f64) -> f64 {
        paths
            .iter()
            .find_map(|p| self.at(p).and_then(Value::as_f64))
            .unwrap_or(default)
    }

    pub(crate) fn str_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.at(&[key]).and_then(Value::as_str).unwrap_or(default)
    }

    fn flag(&self, key: &str) -> bool {
        self.at(&[key]).and_then(Value::as_bool).unwrap_or(false)
    }

    /// A BERT-style config's position embeddings (absolute only) and activation, the latter
    /// in whichever candle type `A` the model takes.
    fn bert_style<A: serde::de::DeserializeOwned>(
        &self,
    ) -> std::result::Result<(String, A), String> {
        let position = self.str_or("position_embedding_type", "absolute");
        if position != "absolute" {
            return Err(format!(
                "position_embedding_type `{position}` is not supported (only absolute)"
            ));
        }
        let act = self.str_or("hidden_act", "gelu");
        let hidden_act = serde_json::from_value(Value::String(act.to_string()))
            .map_err(|_| format!("hidden_act `{act}` is not supported"))?;
        Ok((position.to_string(), hidden_act))
    }
}

pub(crate) fn xlm_roberta_config(
    c: &Fields<'_>,
) -> std::result::Result<xlm_roberta::Config, String> {
    let (position, hidden_act) = c.bert_style()?;
    Ok(xlm_roberta::Config {
        hidden_size: c.usize("hidden_size")?,
        layer_norm_eps: c.f64_or(&[&["layer_norm_eps"]], 1e-12),
        attention_probs_dropout_prob: 0.0,
        hidden_dropout_prob: 0.0,
        num_attention_heads: c.usize("num_attention_heads")?,
        position_embedding_type: position,
        intermediate_size: c.usize("intermediate_size")?,
        hidden_act,
        num_hidden_layers: c.usize("num_hidden_layers")?,
        vocab_size: c.usize("vocab_size")?,
        max_position_embeddings: c.usize("max_position_embeddings")?,
        type_vocab_size: c.usize_or("type_vocab_size", 1)?,
        pad_token_id: c.usize_or("pad_token_id", 1)? as u32,
    })
}

fn modernbert_config(c: &Fields<'_>) -> std::result::Result<modernbert::Config, String> {
    for key in ["attention_bias", "mlp_bias", "norm_bias"] {
        if c.flag(key) {
            return Err(format!(
                "`{key}: true` is not supported (ModernBERT without biases)"
            ));
        }
    }
    let act = c.str_or("hidden_activation", "gelu");
    if act != "gelu" {
        return Err(format!(
            "hidden_activation `{act}` is not supported (only gelu)"
        ));
    }
    let layers = c.usize("num_hidden_layers")?;
    let every = c.usize_or("global_attn_every_n_layers", 3)?.max(1);
    // candle makes layer i global when i % every == 0; a config listing its layer types must
    // agree.
    if let Some(types) = c.at(&["layer_types"]).and_then(Value::as_array) {
        for (i, t) in types.iter().enumerate() {
            let global = t.as_str() == Some("full_attention");
            if global != i.is_multiple_of(every) {
                return Err(format!(
                    "layer_types[{i}] = {t} does not follow global_attn_every_n_layers = {every}"
                ));
            }
        }
    }
    Ok(modernbert::Config {
        vocab_size: c.usize("vocab_size")?,
        hidden_size: c.usize("hidden_size")?,
        num_hidden_layers: layers,
        num_attention_heads: c.usize("num_attention_heads")?,
        intermediate_size: c.usize("intermediate_size")?,
        max_position_embeddings: c.usize("max_position_embeddings")?,
        layer_norm_eps: c.f64_or(&[&["norm_eps"], &["layer_norm_eps"]], 1e-5),
        pad_token_id: c.usize_or("pad_token_id", 0)? as u32,
        global_attn_every_n_layers: every,
        global_rope_theta: c.f64_or(
            &[
                &["global_rope_theta"],
                &["rope_parameters", "full_attention", "rope_theta"],
            ],
            160_000.0,
        ),
        local_attention: c.usize_or("local_attention", 128)?,
        local_rope_theta: c.f64_or(
            &[
                &["local_rope_theta"],
                &["rope_parameters", "sliding_attention", "rope_theta"],
            ],
            10_000.0,
        ),
        classifier_config: None,
    })
}

pub(crate) fn bert_config(c: &Fields<'_>) -> std::result::Result<bert::Config, String> {
    let (_, hidden_act) = c.bert_style::<bert::HiddenAct>()?;
    Ok(bert::Config {
        vocab_size: c.usize("vocab_size")?,
        hidden_size: c.usize("hidden_size")?,
        num_hidden_layers: c.usize("num_hidden_layers")?,
        num_attention_heads: c.usize("num_attention_heads")?,
        intermediate_size: c.usize("intermediate_size")?,
        hidden_act,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: c.usize("max_position_embeddings")?,
        type_vocab_size: c.usize_or("type_vocab_size", 2)?,
        initializer_range: 0.02,
        layer_norm_eps: c.f64_or(&[&["layer_norm_eps"]], 1e-12),
        pad_token_id: c.usize_or("pad_token_id", 0)?,
        position_embedding_type: bert::PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("bert".into()),
    })
}
