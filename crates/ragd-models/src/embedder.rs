//! `Embedder`: a BERT-family sentence encoder, and `EmbedderHandle`, the async front of the worker
//! thread that owns one.
//!
//! Inputs are tokenized, truncated at the model's maximum length (reported per input), sorted by
//! length and cut into batches under a token budget, so a batch pads only to the longest of
//! similar-length neighbours. Vectors come back in input order, pooled and L2-normalised.
//! Every call names its [`Precision`]; [`AtPrecision`] binds one to an encoder for pipelines
//! that embed a collection's texts.

use crate::bert::{Pooling, pool_and_normalize};
use crate::error::{Error, Result};
use crate::families::Network;
use candle_core::{Device, Tensor};
use ragd_core::Precision;
use std::path::Path;
use std::sync::Arc;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

/// One embedded input.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// L2-normalised vector of the model's hidden size.
    pub vector: Vec<f32>,
    /// Tokens the model saw (special tokens included, after truncation).
    pub tokens: usize,
    /// True when the input was longer than the model's maximum and its tail was dropped.
    pub truncated: bool,
}

/// One word of a text as the tokenizer cut it: its byte range and its token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordTokens {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Tokens it became.
    pub tokens: usize,
}

/// Counts tokens the way the encoder will see them; `Send + Sync + Clone`. An encoder behind a
/// model server whose tokenizer is not configured counts by estimate (see
/// [`TokenCounter::estimate`]).
#[derive(Debug, Clone)]
pub struct TokenCounter {
    /// `None`: estimated from the byte length.
    tokenizer: Option<std::sync::Arc<Tokenizer>>,
    special: usize,
}

impl TokenCounter {
    /// Counts with `tokenizer` (its truncation turned off); `special` tokens are added to every
    /// input.
    pub fn new(mut tokenizer: Tokenizer) -> Self {
        tokenizer.with_truncation(None).ok();
        let special = tokenizer.encode("", true).map(|e| e.len()).unwrap_or(2);
        Self {
            tokenizer: Some(std::sync::Arc::new(tokenizer)),
            special,
        }
    }

    /// Without a tokenizer: one token per [`crate::BYTES_PER_TOKEN`] bytes (English runs about
    /// four bytes per token, so the estimate errs long and chunks stay within the model's limit),
    /// two special tokens.
    pub fn estimate() -> Self {
        Self {
            tokenizer: None,
            special: 2,
        }
    }

    /// Tokens of `text` without special tokens. Should the tokenizer fail, the byte length is
    /// returned: never fewer than the real count for WordPiece/BPE, so nothing is undersized.
    pub fn count(&self, text: &str) -> usize {
        match &self.tokenizer {
            Some(t) => t.encode(text, false).map(|e| e.len()).unwrap_or(text.len()),
            None => text.len().div_ceil(crate::BYTES_PER_TOKEN),
        }
    }

    /// The words of `text` as the tokenizer's pre-tokenizer cut them, in order, each with its
    /// byte range in `text` and the tokens it became; `None` when the tokenizer fails or gives
    /// tokens no word. One pass over the text: with it a chunker sizes any slice of the text
    /// without tokenizing the slice again (see `ragd_engine`'s chunker).
    pub fn words(&self, text: &str) -> Option<Vec<WordTokens>> {
        let enc = self.tokenizer.as_ref()?.encode(text, false).ok()?;
        let mut out: Vec<WordTokens> = Vec::new();
        let mut last = None;
        for (word, &(start, end)) in enc.get_word_ids().iter().zip(enc.get_offsets()) {
            let word = (*word)?;
            match out.last_mut() {
                Some(w) if last == Some(word) => {
                    w.start = w.start.min(start);
                    w.end = w.end.max(end);
                    w.tokens += 1;
                }
                _ => out.push(WordTokens {
                    start,
                    end,
                    tokens: 1,
                }),
            }
            last = Some(word);
        }
        // Ordered, disjoint ranges on character boundaries, or nothing.
        let ordered = out.windows(2).all(|p| p[0].end <= p[1].start);
        let bounded = out.iter().all(|w| {
            w.start < w.end && text.is_char_boundary(w.start) && text.is_char_boundary(w.end)
        });
        (ordered && bounded).then_some(out)
    }

    /// Special tokens the encoder adds to every input (`[CLS]` and `[SEP]` for BERT).
    pub fn special_tokens(&self) -> usize {
        self.special
    }
}

/// Batching limits. The defaults suit a CPU with a few cores: 2,048 padded tokens keep a
/// layer's activations (at most 12 MB for MiniLM's FFN) near the caches and out of fresh pages;
/// on 256 SciFact abstracts they embed ~5% faster than 8,192 in f32 and int8 alike
/// (BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most padded tokens (batch size × longest input) in one forward pass.
    pub max_batch_tokens: usize,
    /// Most inputs in one forward pass.
    pub max_batch_size: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch_tokens: 2048,
            max_batch_size: 64,
        }
    }
}

/// A loaded sentence encoder. Not `Sync`-shared: one thread owns it (see [`EmbedderHandle`]).
#[derive(Debug)]
pub struct Embedder {
    model: Network,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_len: usize,
    batch: BatchOptions,
    name: String,
}

impl Embedder {
    /// Loads an encoder from a sentence-transformers directory: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, and optionally `1_Pooling/config.json` (mean pooling
    /// when absent) and `sentence_bert_config.json` (for `max_seq_length`).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(Error::io(format!("reading {}", p.display())))
        };
        let invalid = |name: &str, e: serde_json::Error| Error::ModelInvalid {
            path: dir.join(name),
            reason: e.to_string(),
        };
        let cfg: serde_json::Value =
            serde_json::from_str(&read("config.json")?).map_err(|e| invalid("config.json", e))?;
        let model = Network::load(dir, &cfg)?;
        let pooling = match read("1_Pooling/config.json") {
            Ok(s) => {
                let v: serde_json::Value =
                    serde_json::from_str(&s).map_err(|e| invalid("1_Pooling/config.json", e))?;
                let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
                if flag("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if flag("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else {
                    return Err(Error::ModelInvalid {
                        path: dir.join("1_Pooling/config.json"),
                        reason: "only mean and CLS pooling are supported".into(),
                    });
                }
            }
            Err(_) => Pooling::Mean,
        };
        let max_len = read("sentence_bert_config.json")
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("max_seq_length").and_then(|x| x.as_u64()))
            .map(|n| n as usize)
            .unwrap_or(model.max_positions())
            .min(model.max_positions());
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))?;
        let name = crate::families::model_name(dir);
        Ok(Self {
            model,
            tokenizer,
            pooling,
            max_len,
            batch: BatchOptions::default(),
            name,
        })
    }

    /// Replaces the batching limits.
    pub fn with_batch_options(mut self, batch: BatchOptions) -> Self {
        self.batch = batch;
        self
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.hidden_size()
    }

    /// Longest input in tokens; longer ones are truncated.
    pub fn max_len(&self) -> usize {
        self.max_len.min(self.model.max_positions())
    }

    /// The model's directory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A cheap, shareable token counter with this encoder's tokenizer (no truncation), for sizing
    /// chunks on other threads.
    pub fn token_counter(&self) -> TokenCounter {
        TokenCounter::new(self.tokenizer.clone())
    }

    /// Token count of `text` as the encoder sees it (with special tokens, before truncation).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let enc = self.tokenizer.encode(text, true)?;
        Ok(enc.len() + enc.get_overflowing().iter().map(|o| o.len()).sum::<usize>())
    }

    /// Embeds `texts` in f32, returning one [`Embedding`] per input in input order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Embedding>> {
        self.embed_with(texts, Precision::F32)
    }

    /// Embeds `texts` at `precision`, one [`Embedding`] per input in input order.
    pub fn embed_with<S: AsRef<str>>(
        &self,
        texts: &[S],
        precision: Precision,
    ) -> Result<Vec<Embedding>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(|t| t.as_ref()).collect::<Vec<_>>(), true)?;
        let items: Vec<(Vec<u32>, bool)> = encodings
            .into_iter()
            .map(|e| {
                let truncated = !e.get_overflowing().is_empty();
                (e.get_ids().to_vec(), truncated)
            })
            .collect();
        let lens: Vec<usize> = items.iter().map(|(ids, _)| ids.len()).collect();
        let mut out: Vec<Option<Embedding>> = vec![None; items.len()];
        for batch in plan_batches(&lens, self.batch) {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| items[i].0.as_slice()).collect();
            let vectors = self.forward_batch(&ids, precision)?;
            for (&i, vector) in batch.iter().zip(vectors) {
                out[i] = Some(Embedding {
                    vector,
                    tokens: lens[i],
                    truncated: items[i].1,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// One forward pass over already-tokenized inputs, padded to the longest.
    fn forward_batch(&self, ids: &[&[u32]], precision: Precision) -> Result<Vec<Vec<f32>>> {
        let width = ids.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![self.model.pad(); ids.len() * width];
        let mut mask = vec![0u32; ids.len() * width];
        for (row, x) in ids.iter().enumerate() {
            flat[row * width..row * width + x.len()].copy_from_slice(x);
            mask[row * width..row * width + x.len()].fill(1);
        }
        let dev = Device::Cpu;
        let ids_t = Tensor::from_vec(flat, (ids.len(), width), &dev)?;
        let mask_t = Tensor::from_vec(mask, (ids.len(), width), &dev)?;
        let lens: Vec<usize> = ids.iter().map(|x| x.len()).collect();
        let hidden = self.model.forward(&ids_t, &mask_t, &lens, precision)?;
        Ok(pool_and_normalize(&hidden, &mask_t, self.pooling)?.to_vec2::<f32>()?)
    }
}

/// Inputs a batch holds before [`MAX_ROW_PADDING_PERCENT`] applies (small batches run the
/// matrix products less efficiently than padding costs).
pub const FULL_ENOUGH: usize = 8;

/// Most padding of one input, in percent of its batch's width, once the batch is
/// [`FULL_ENOUGH`]. On 256 short SciFact claims (22 tokens on average) the padded share fell
/// from 15.9% to 5.6% and throughput rose 8–16% (int8 and f32, two alternating runs; 25%
/// left 11.2% padded and gained less); chunk-sized inputs are unchanged (1.2% → 1.0%).
/// BENCHMARKS.md.
pub const MAX_ROW_PADDING_PERCENT: usize = 12;

/// Groups input indices into batches: longest first, each batch holding at most
/// `max_batch_size` inputs and at most `max_batch_tokens` padded tokens. A batch that holds
/// [`FULL_ENOUGH`] inputs takes no input more than [`MAX_ROW_PADDING_PERCENT`]% shorter than
/// its longest: the linear layers process the padding (attention skips it).
///
/// Every index appears exactly once; an input longer than the budget gets a batch of its own.
pub fn plan_batches(lens: &[usize], opts: BatchOptions) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0;
    for i in order {
        // Sorted descending, so the first input of a batch sets its padded width.
        let w = if current.is_empty() {
            lens[i].max(1)
        } else {
            width
        };
        let fits = current.len() < opts.max_batch_size.max(1)
            && (current.len() + 1) * w <= opts.max_batch_tokens.max(1)
            && !(current.len() >= FULL_ENOUGH
                && lens[i] * 100 < w * (100 - MAX_ROW_PADDING_PERCENT));
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            width = lens[i].max(1);
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

type EmbedReply = oneshot::Sender<Result<Vec<Embedding>>>;
/// A request to the embedder thread.
type EmbedRequest = (Vec<String>, Precision, EmbedReply);

/// What the pipelines need from a sentence encoder. The calls block, so the same pipeline code
/// runs with the encoder in hand ([`Embedder`], offline commands) or with the encoder on its
/// owning thread ([`EmbedderHandle`], the server, whose pipelines run on blocking threads).
pub trait Encode: Send + Sync {
    /// Embeds `texts` at `precision`, one [`Embedding`] per input in input order.
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>>;
    /// Embeds `texts` at [`Encode::precision`].
    fn encode(&self, texts: Vec<String>) -> Result<Vec<Embedding>> {
        self.encode_with(texts, self.precision())
    }
    /// The precision [`Encode::encode`] uses: f32 unless bound by [`AtPrecision`].
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// The model's name (its directory name).
    fn name(&self) -> &str;
    /// Embedding dimension.
    fn dim(&self) -> usize;
    /// Longest input in tokens.
    fn max_len(&self) -> usize;
    /// A shareable token counter with the encoder's tokenizer.
    fn token_counter(&self) -> TokenCounter;
}

/// A shared encoder encodes as the one it shares.
impl<T: Encode + ?Sized> Encode for std::sync::Arc<T> {
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        (**self).encode_with(texts, precision)
    }
    fn precision(&self) -> Precision {
        (**self).precision()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn max_len(&self) -> usize {
        (**self).max_len()
    }
    fn token_counter(&self) -> TokenCounter {
        (**self).token_counter()
    }
}

/// An encoder whose [`Encode::encode`] runs at a chosen precision: what a collection's
/// pipelines get, so that its documents and its queries are embedded alike.
#[derive(Clone)]
pub struct AtPrecision {
    encoder: Arc<dyn Encode>,
    precision: Precision,
}

impl std::fmt::Debug for AtPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtPrecision")
            .field("encoder", &self.encoder.name())
            .field("precision", &self.precision)
            .finish()
    }
}

impl AtPrecision {
    /// `encoder` at `precision`.
    pub fn new(encoder: Arc<dyn Encode>, precision: Precision) -> Self {
        Self { encoder, precision }
    }
}

impl Encode for AtPrecision {
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        self.encoder.encode_with(texts, precision)
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn name(&self) -> &str {
        self.encoder.name()
    }
    fn dim(&self) -> usize {
        self.encoder.dim()
    }
    fn max_len(&self) -> usize {
        self.encoder.max_len()
    }
    fn token_counter(&self) -> TokenCounter {
        self.encoder.token_counter()
    }
}

impl Encode for Embedder {
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        self.embed_with(&texts, precision)
    }
    fn name(&self) -> &str {
        Embedder::name(self)
    }
    fn dim(&self) -> usize {
        Embedder::dim(self)
    }
    fn max_len(&self) -> usize {
        Embedder::max_len(self)
    }
    fn token_counter(&self) -> TokenCounter {
        Embedder::token_counter(self)
    }
}

/// Requests of at most this many texts, and [`INTERACTIVE_BYTES`] in all, are interactive
/// (a query, a few texts): they go before bulk work (ingest, rebuild, large Embed calls).
const INTERACTIVE_TEXTS: usize = 8;
const INTERACTIVE_BYTES: usize = 8 << 10;
/// Bulk work runs in pieces of about this many bytes of text (~1,000 tokens: a fraction of a
/// second on two cores), so interactive requests wait for at most one piece.
const PIECE_BYTES: usize = 4 << 10;

/// A bulk request in progress: its texts in order of length (longest first, so each piece pads
/// little), the embeddings done so far, and where the next piece starts.
struct BulkJob {
    texts: Vec<String>,
    precision: Precision,
    order: Vec<usize>,
    done: Vec<Option<Embedding>>,
    next: usize,
    /// Taken when answered.
    reply: Option<EmbedReply>,
}

impl BulkJob {
    fn new(texts: Vec<String>, precision: Precision, reply: EmbedReply) -> Self {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        Self {
            done: vec![None; texts.len()],
            texts,
            precision,
            order,
            next: 0,
            reply: Some(reply),
        }
    }

    /// Embeds the next piece; true when the job is finished (answered).
    fn step(&mut self, embedder: &Embedder) -> bool {
        let mut end = self.next;
        let mut bytes = 0;
        while end < self.order.len() && (end == self.next || bytes < PIECE_BYTES) {
            bytes += self.texts[self.order[end]].len();
            end += 1;
        }
        let piece: Vec<&str> = self.order[self.next..end]
            .iter()
            .map(|&i| self.texts[i].as_str())
            .collect();
        match embedder.embed_with(&piece, self.precision) {
            Ok(vectors) => {
                for (&i, v) in self.order[self.next..end].iter().zip(vectors) {
                    self.done[i] = Some(v);
                }
                self.next = end;
            }
            Err(e) => {
                self.answer(Err(e));
                return true;
            }
        }
        if self.next < self.order.len() {
            return false;
        }
        let done = std::mem::take(&mut self.done);
        self.answer(Ok(done.into_iter().flatten().collect()));
        true
    }

    fn answer(&mut self, r: Result<Vec<Embedding>>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(r);
        }
    }

    /// True when nobody waits for the answer any more.
    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_none_or(oneshot::Sender::is_closed)
    }
}

/// The embedder thread's loop. Interactive requests that arrive together share one pass and go
/// first; bulk requests are embedded a piece at a time, oldest first, with the queue checked
/// between pieces, so a search waits for at most one piece of someone's ingest, not all of it.
/// A request whose caller has gone is dropped, between pieces too. At most `max_bulk` bulk
/// requests are held; beyond that they are refused as overload, as a full queue refuses them.
fn serve(embedder: &Embedder, rx: &mut mpsc::Receiver<EmbedRequest>, max_bulk: usize) {
    let max_texts = embedder.batch.max_batch_size * 4;
    let mut bulk: std::collections::VecDeque<BulkJob> = std::collections::VecDeque::new();
    let mut interactive: Vec<EmbedRequest> = Vec::new();
    loop {
        // Block only when there is nothing to do.
        if bulk.is_empty() {
            match rx.blocking_recv() {
                Some(r) => interactive.push(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            interactive.push(r);
        }
        let (small, large): (Vec<_>, Vec<_>) = interactive.drain(..).partition(|(t, _, _)| {
            t.len() <= INTERACTIVE_TEXTS
                && t.iter().map(String::len).sum::<usize>() <= INTERACTIVE_BYTES
        });
        for (texts, precision, reply) in large {
            if bulk.len() < max_bulk {
                bulk.push_back(BulkJob::new(texts, precision, reply));
            } else {
                let _ = reply.send(Err(Error::Overloaded("embedder")));
            }
        }
        let mut small: Vec<_> = small
            .into_iter()
            .filter(|(_, _, r)| !r.is_closed())
            .collect();
        if !small.is_empty() {
            // Interactive requests are small: one pass holds many of them, of one precision.
            small.sort_by_key(|(_, p, _)| *p == Precision::Int8);
            while !small.is_empty() {
                let precision = small[0].1;
                let mut take = 0;
                let mut texts = 0;
                while take < small.len()
                    && small[take].1 == precision
                    && (take == 0 || texts + small[take].0.len() <= max_texts)
                {
                    texts += small[take].0.len();
                    take += 1;
                }
                let group: Vec<_> = small.drain(..take).map(|(t, _, r)| (t, r)).collect();
                embed_together(embedder, precision, group);
            }
            continue;
        }
        bulk.retain(|j| !j.abandoned());
        if let Some(job) = bulk.front_mut()
            && job.step(embedder)
        {
            bulk.pop_front();
        }
    }
}

/// Embeds several requests in one pass and answers each with its own embeddings.
fn embed_together(
    embedder: &Embedder,
    precision: Precision,
    pending: Vec<(Vec<String>, EmbedReply)>,
) {
    answer_together(|texts| embedder.embed_with(texts, precision), pending);
}

/// [`embed_together`] over any `embed`. When the shared pass fails, each request is embedded
/// alone, so each caller gets its own result with its error's real kind (an internal failure
/// stays internal, not "invalid input"), and one request's failure never fails the others.
fn answer_together(
    embed: impl Fn(&[&str]) -> Result<Vec<Embedding>>,
    pending: Vec<(Vec<String>, EmbedReply)>,
) {
    let all: Vec<&str> = pending
        .iter()
        .flat_map(|(t, _)| t.iter().map(String::as_str))
        .collect();
    match embed(&all) {
        Ok(mut vectors) => {
            drop(all);
            for (texts, reply) in pending.into_iter().rev() {
                let mine = vectors.split_off(vectors.len() - texts.len());
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) if pending.len() == 1 => {
            drop(all);
            if let Some((_, reply)) = pending.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(_) => {
            drop(all);
            for (texts, reply) in pending {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let _ = reply.send(embed(&refs));
            }
        }
    }
}

/// Cheap, cloneable async handle to an [`Embedder`] running on its own thread.
///
/// Requests wait in a bounded queue; when it is full `embed` fails at once with
/// [`Error::Overloaded`] rather than queueing without bound. Requests that arrive together are
/// embedded in one pass, so concurrent callers share batches.
#[derive(Debug, Clone)]
pub struct EmbedderHandle {
    tx: mpsc::Sender<EmbedRequest>,
    dim: usize,
    max_len: usize,
    name: String,
    counter: TokenCounter,
}

impl EmbedderHandle {
    /// Moves `embedder` onto a new thread; `queue` bounds the requests waiting for it.
    pub fn spawn(embedder: Embedder, queue: usize) -> Result<Self> {
        let (tx, mut rx) = mpsc::channel::<EmbedRequest>(queue.max(1));
        let (dim, max_len, name, counter) = (
            embedder.dim(),
            embedder.max_len(),
            embedder.name().to_string(),
            embedder.token_counter(),
        );
        std::thread::Builder::new()
            .name("ragd-embedder".into())
            .spawn(move || serve(&embedder, &mut rx, queue.max(1)))
            .map_err(Error::io("spawning the embedder thread"))?;
        Ok(Self {
            tx,
            dim,
            max_len,
            name,
            counter,
        })
    }

    /// Loads the encoder in `dir` and spawns its worker.
    pub fn load(dir: &Path, queue: usize) -> Result<Self> {
        Self::spawn(Embedder::load(dir)?, queue)
    }

    /// Queues `texts` for the worker (failing at once when the queue is full).
    fn submit(
        &self,
        texts: Vec<String>,
        precision: Precision,
    ) -> Result<oneshot::Receiver<Result<Vec<Embedding>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send((texts, precision, reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded("embedder"),
                mpsc::error::TrySendError::Closed(_) => Error::WorkerGone("embedder"),
            })?;
        Ok(rx)
    }

    /// Embeds `texts` in f32 on the worker thread.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(texts, Precision::F32)?;
        rx.await.map_err(|_| Error::WorkerGone("embedder"))?
    }

    /// Embeds `texts` on the worker thread, blocking this thread until they are done. For
    /// blocking contexts only (a `spawn_blocking` task, a plain thread); panics on an async
    /// worker thread.
    pub fn blocking_embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>> {
        self.blocking_embed_with(texts, Precision::F32)
    }

    /// [`EmbedderHandle::blocking_embed`] at `precision`.
    pub fn blocking_embed_with(
        &self,
        texts: Vec<String>,
        precision: Precision,
    ) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(texts, precision)?;
        rx.blocking_recv()
            .map_err(|_| Error::WorkerGone("embedder"))?
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Encode for EmbedderHandle {
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        self.blocking_embed_with(texts, precision)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn token_counter(&self) -> TokenCounter {
        self.counter.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_plan(lens: &[usize], opts: BatchOptions) -> Vec<Vec<usize>> {
        let batches = plan_batches(lens, opts);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..lens.len()).collect::<Vec<_>>(),
            "every input exactly once"
        );
        for b in &batches {
            assert!(b.len() <= opts.max_batch_size);
            let width = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(
                b.len() == 1 || b.len() * width <= opts.max_batch_tokens,
                "{b:?}"
            );
        }
        batches
    }

    #[test]
    fn batches_respect_budget_and_size() {
        let lens: Vec<usize> = (0..200).map(|i| (i * 37) % 256 + 1).collect();
        check_plan(
            &lens,
            BatchOptions {
                max_batch_tokens: 1024,
                max_batch_size: 16,
            },
        );
        check_plan(
            &lens,
            BatchOptions {
                max_batch_tokens: 100_000,
                max_batch_size: 7,
            },
        );
    }

    #[test]
    fn oversized_input_gets_its_own_batch() {
        let b = check_plan(
            &[10, 5000, 10],
            BatchOptions {
                max_batch_tokens: 64,
                max_batch_size: 8,
            },
        );
        assert_eq!(b[0], vec![1]);
    }

    #[test]
    fn similar_lengths_are_grouped() {
        let lens = [3, 100, 4, 101, 5, 99];
        let b = check_plan(
            &lens,
            BatchOptions {
                max_batch_tokens: 303,
                max_batch_size: 8,
            },
        );
        assert_eq!(b, vec![vec![3, 1, 5], vec![4, 2, 0]]);
    }

    /// A failed shared pass answers each caller alone: the good request gets its vectors, the
    /// bad one its own error with its kind.
    #[test]
    fn a_failed_shared_pass_answers_each_request_alone() {
        let embed = |texts: &[&str]| -> Result<Vec<Embedding>> {
            if texts.contains(&"bad") {
                return Err(Error::Tokenizer("cannot tokenize".into()));
            }
            Ok(texts
                .iter()
                .map(|t| Embedding {
                    vector: vec![t.len() as f32],
                    tokens: 1,
                    truncated: false,
                })
                .collect())
        };
        let (good_tx, good_rx) = oneshot::channel();
        let (bad_tx, bad_rx) = oneshot::channel();
        let (alone_tx, alone_rx) = oneshot::channel();
        answer_together(
            embed,
            vec![
                (vec!["abc".into(), "de".into()], good_tx),
                (vec!["bad".into()], bad_tx),
            ],
        );
        answer_together(embed, vec![(vec!["bad".into()], alone_tx)]);
        let good = good_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(
            good.iter().map(|e| e.vector[0]).collect::<Vec<_>>(),
            [3.0, 2.0]
        );
        for rx in [bad_rx, alone_rx] {
            let e = rx.blocking_recv().unwrap().unwrap_err();
            assert_eq!(e.kind(), ragd_core::ErrorKind::Internal, "{e}");
        }
    }

    #[test]
    fn a_full_enough_batch_takes_no_much_shorter_input() {
        // 40 down to 21 tokens, budget and size no limit: the first batch stops at 33 (eight
        // inputs; 32 is more than 12% shorter than 40), the next takes 32 down to 29, and so on.
        let lens: Vec<usize> = (21..=40).rev().collect();
        let b = check_plan(
            &lens,
            BatchOptions {
                max_batch_tokens: 100_000,
                max_batch_size: 64,
            },
        );
        let widths: Vec<Vec<usize>> = b
            .iter()
            .map(|b| b.iter().map(|&i| lens[i]).collect())
            .collect();
        assert_eq!(widths[0], (33..=40).rev().collect::<Vec<_>>());
        for w in &widths {
            let (hi, lo) = (w[0], w[w.len() - 1]);
            assert!(
                w.len() <= FULL_ENOUGH || lo * 100 >= hi * (100 - MAX_ROW_PADDING_PERCENT),
                "{w:?}"
            );
        }
        assert_eq!(widths.concat(), lens);
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(plan_batches(&[], BatchOptions::default()).is_empty());
    }
}
