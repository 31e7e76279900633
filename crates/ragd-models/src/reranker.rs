//! Cross-encoder rerankers: a question and a passage read together by a sequence-classification
//! model (`BertForSequenceClassification`, as the ms-marco MiniLM cross-encoders;
//! `XLMRobertaForSequenceClassification`, as bge-reranker), one relevance logit per pair — what
//! TEI's `/rerank` serves. Through candle-transformers: cross-encoders need the second segment's
//! token types, which ragd's fused BERT pass does not carry. No reranker is on the registries;
//! users bring theirs (`ragd models add --dir`).

use crate::error::{Error, Result};
use crate::families::{Fields, bert_config, read_config, xlm_roberta_config};
use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, linear};
use candle_transformers::models::{bert, xlm_roberta};
use serde_json::Value;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// A loaded cross-encoder. Not shared across threads: one thread owns it.
pub struct Reranker {
    net: CrossNet,
    tokenizer: Tokenizer,
    pad: u32,
    max_len: usize,
    name: String,
}

enum CrossNet {
    /// `tanh(pooler(h[CLS]))` then the classifier, as `BertForSequenceClassification`.
    Bert {
        model: Box<bert::BertModel>,
        pooler: Linear,
        classifier: Linear,
    },
    XlmRoberta(Box<xlm_roberta::XLMRobertaForSequenceClassification>),
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = match self.net {
            CrossNet::Bert { .. } => "bert",
            CrossNet::XlmRoberta(_) => "xlm-roberta",
        };
        f.debug_struct("Reranker")
            .field("family", &family)
            .field("max_len", &self.max_len)
            .field("name", &self.name)
            .finish()
    }
}

/// Pairs scored per forward pass.
const BATCH: usize = 16;

impl Reranker {
    /// Loads a cross-encoder directory: `config.json` (a `*ForSequenceClassification` with one
    /// label), `model.safetensors`, `tokenizer.json` (with a pair template).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let invalid = |reason: String| Error::ModelInvalid {
            path: path.clone(),
            reason,
        };
        let v = read_config(&path)?;
        let c = Fields { v: &v };
        if let Some(arch) = v
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .filter(|a| !a.ends_with("ForSequenceClassification"))
        {
            return Err(invalid(format!(
                "a reranker is a sequence-classification model (a cross-encoder); this one is \
                 {arch}"
            )));
        }
        let labels = v
            .get("id2label")
            .and_then(Value::as_object)
            .map_or(1, |m| m.len());
        if labels != 1 {
            return Err(invalid(format!(
                "a reranker gives one relevance score per pair; this model has {labels} labels"
            )));
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::ModelInvalid {
                path: weights,
                reason: "file not found".into(),
            });
        }
        let vb = crate::bert::var_builder(&weights)?;
        let model_type = c.str_or("model_type", "bert");
        let (net, pad, positions) = match model_type {
            "bert" => {
                let cfg = bert_config(&c).map_err(invalid)?;
                let h = cfg.hidden_size;
                let model = bert::BertModel::load(vb.clone(), &cfg)?;
                let head = if vb.contains_tensor("bert.pooler.dense.weight") {
                    vb.pp("bert.pooler.dense")
                } else {
                    vb.pp("pooler.dense")
                };
                let pooler = linear(h, h, head)?;
                let classifier = linear(h, 1, vb.pp("classifier"))?;
                (
                    CrossNet::Bert {
                        model: Box::new(model),
                        pooler,
                        classifier,
                    },
                    cfg.pad_token_id as u32,
                    cfg.max_position_embeddings,
                )
            }
            "xlm-roberta" | "roberta" => {
                let cfg = xlm_roberta_config(&c).map_err(invalid)?;
                let pad = cfg.pad_token_id;
                let positions = cfg.max_position_embeddings.saturating_sub(pad as usize + 1);
                let model = xlm_roberta::XLMRobertaForSequenceClassification::new(1, &cfg, vb)?;
                (CrossNet::XlmRoberta(Box::new(model)), pad, positions)
            }
            other => {
                return Err(invalid(format!(
                    "reranker model_type `{other}` is not supported (supported: bert, roberta, \
                     xlm-roberta)"
                )));
            }
        };
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        tokenizer.with_padding(None);
        // A long passage is cut, never the question.
        tokenizer.with_truncation(Some(TruncationParams {
            max_length: positions,
            strategy: TruncationStrategy::OnlySecond,
            ..Default::default()
        }))?;
        let name = crate::families::model_name(dir);
        Ok(Self {
            net,
            tokenizer,
            pad,
            max_len: positions,
            name,
        })
    }

    /// The model's directory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One relevance logit per passage for `query` (higher is more relevant), in input order.
    pub fn score<S: AsRef<str>>(&self, query: &str, passages: &[S]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(passages.len());
        for chunk in passages.chunks(BATCH) {
            let pairs: Vec<(String, String)> = chunk
                .iter()
                .map(|p| (query.to_string(), p.as_ref().to_string()))
                .collect();
            let encodings = self.tokenizer.encode_batch(pairs, true)?;
            let width = encodings.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
            let rows = encodings.len();
            let mut ids = vec![self.pad; rows * width];
            let mut types = vec![0u32; rows * width];
            let mut mask = vec![0u32; rows * width];
            for (r, e) in encodings.iter().enumerate() {
                let n = e.len();
                ids[r * width..r * width + n].copy_from_slice(e.get_ids());
                types[r * width..r * width + n].copy_from_slice(e.get_type_ids());
                mask[r * width..r * width + n].fill(1);
            }
            let dev = Device::Cpu;
            let ids = Tensor::from_vec(ids, (rows, width), &dev)?;
            let types = Tensor::from_vec(types, (rows, width), &dev)?;
            let mask = Tensor::from_vec(mask, (rows, width), &dev)?;
            let logits = match &self.net {
                CrossNet::Bert {
                    model,
                    pooler,
                    classifier,
                } => {
                    let hidden = model.forward(&ids, &types, Some(&mask))?;
                    let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                    classifier.forward(&pooler.forward(&cls)?.tanh()?)?
                }
                CrossNet::XlmRoberta(m) => m.forward(&ids, &mask, &types.zeros_like()?)?,
            };
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// One scoring request for the reranker's thread.
type ScoreRequest = (
    String,
    Vec<String>,
    std::sync::mpsc::SyncSender<Result<Vec<f32>>>,
);

/// A [`Reranker`] on its own thread behind a bounded queue; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct RerankerHandle {
    tx: std::sync::mpsc::SyncSender<ScoreRequest>,
    name: String,
}

impl RerankerHandle {
    /// Moves `reranker` onto a new thread; `queue` bounds the requests waiting for it.
    pub fn spawn(reranker: Reranker, queue: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ScoreRequest>(queue.max(1));
        let name = reranker.name().to_string();
        std::thread::Builder::new()
            .name("ragd-reranker".into())
            .spawn(move || {
                for (query, passages, reply) in rx {
                    let _ = reply.send(reranker.score(&query, &passages));
                }
            })
            .map_err(Error::io("spawning the reranker thread"))?;
        Ok(Self { tx, name })
    }

    /// Loads the cross-encoder in `dir` and spawns its worker.
    pub fn load(dir: &Path, queue: usize) -> Result<Self> {
        Self::spawn(Reranker::load(dir)?, queue)
    }

    /// Scores `passages` against `query` on the worker (blocking this thread; fails at once
    /// when the queue is full).
    pub fn score(&self, query: &str, passages: Vec<String>) -> Result<Vec<f32>> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .try_send((query.to_string(), passages, reply))
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => Error::Overloaded("reranker"),
                std::sync::mpsc::TrySendError::Disconnected(_) => Error::WorkerGone("reranker"),
            })?;
        rx.recv().map_err(|_| Error::WorkerGone("reranker"))?
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
