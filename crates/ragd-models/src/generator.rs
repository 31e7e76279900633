//! `Generator`: a GGUF decoder served by a pool of sessions on dedicated threads.
//!
//! The weights are loaded once and shared (`Arc`); each session thread owns its own KV cache.
//! The same pool fronts an OpenAI-compatible model server ([`Generator::remote`]): each
//! session thread then holds one streamed HTTP request at a time, so `sessions` bounds the
//! server's concurrent requests exactly as it bounds local KV caches.
//! Requests wait in a bounded queue (full → [`Error::Overloaded`] at once) and stream their output
//! back through a bounded channel as text deltas that never split a UTF-8 character and never
//! show the beginning of a stop sequence. Dropping the stream cancels the request: the session
//! checks before every forward pass, so at most one more token is computed.

use crate::error::{Error, Result};
use crate::gguf_meta::{ChatMessage, ChatTemplate, DecoderVocab, Meta, decoder_vocab};
use crate::llama::{KvState, LlamaWeights, Segment};
use crate::remote::{Remote, RemoteOptions};
use crate::sampling::{Sampler, SamplingParams};
use candle_core::quantized::gguf_file;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Instant;
use tokio::sync::mpsc;

/// Pool sizing.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorOptions {
    /// Concurrent sessions (threads, each with a KV cache).
    pub sessions: usize,
    /// Context per session in tokens; capped at the model's trained context.
    pub context: usize,
    /// Requests that may wait for a free session before new ones are refused.
    pub queue: usize,
    /// Prompt tokens run per forward pass while prefilling.
    pub prefill_chunk: usize,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            sessions: 1,
            context: 4096,
            queue: 8,
            prefill_chunk: 512,
        }
    }
}

/// What to feed the model.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Used verbatim; special tokens written in the text (e.g. `<|im_start|>`) are recognised.
    Text(String),
    /// Rendered with the model's chat template, ending with the assistant's turn.
    Chat(Vec<ChatMessage>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Past this instant the session stops (before its next forward pass) and the stream ends
    /// with [`Error::DeadlineExceeded`]; a request still queued then is not started.
    pub deadline: Option<Instant>,
    /// When set, an answer about to end without a `[n]` marker gets one: ` [` is fed to the
    /// model and the number is sampled from the valid markers only.
    pub force_citation: Option<ForceCitation>,
}

/// Citation forcing for grounded answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceCitation {
    /// Markers `1..=sources` are valid (at most 9 are offered).
    pub sources: usize,
    /// No marker is added to an answer that starts with this (a refusal).
    pub unless_starts_with: String,
}

impl GenerateRequest {
    /// Greedy generation of at most `max_tokens` for `prompt`.
    pub fn greedy(prompt: Prompt, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            deadline: None,
            force_citation: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence or end-of-turn token.
    Stop,
    /// A stop sequence appeared.
    StopSequence,
    /// `max_tokens` was reached.
    Length,
}

/// Token counts and timings of one generation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Seconds spent running the prompt through the model.
    pub prefill_seconds: f64,
    /// Seconds spent generating after the first token.
    pub decode_seconds: f64,
    /// Seconds from the session picking up the request to the first generated token.
    pub time_to_first_token_seconds: f64,
    /// Seconds the request waited in the queue for a free session.
    pub queue_seconds: f64,
    /// A model server's own prompt-processing time for this request, when it reports one
    /// (llama.cpp's `timings.prompt_ms`): ragd's `time_to_first_token_seconds` minus this is
    /// what the network and ragd added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_prefill_seconds: Option<f64>,
}

impl Usage {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_seconds)
    }
    /// Tokens per second after the first one (the first comes out of prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_seconds)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// The end of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Everything generated, stop sequence excluded.
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// An item of a generation stream.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// New text; concatenating every delta gives `Completion::text`.
    Delta(String),
    /// Always the last event of a successful generation.
    Done(Completion),
}

/// Receiving end of one generation. Drop it to cancel.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::Receiver<Result<GenerationEvent>>,
}

impl GenerationStream {
    /// Next event, or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<Result<GenerationEvent>> {
        self.rx.recv().await
    }

    /// Blocking variant for threads outside the async runtime.
    pub fn blocking_next(&mut self) -> Option<Result<GenerationEvent>> {
        self.rx.blocking_recv()
    }

    /// Drains the stream (blocking), calling `on_delta` for each delta.
    pub fn blocking_collect(mut self, mut on_delta: impl FnMut(&str)) -> Result<Completion> {
        while let Some(ev) = self.blocking_next() {
            match ev? {
                GenerationEvent::Delta(d) => on_delta(&d),
                GenerationEvent::Done(c) => return Ok(c),
            }
        }
        Err(Error::WorkerGone("generator"))
    }
}

pub(crate) struct Job {
    pub(crate) request: GenerateRequest,
    pub(crate) tx: mpsc::Sender<Result<GenerationEvent>>,
    pub(crate) enqueued: Instant,
    /// The caller's span: the session's prefill and decode spans are its children.
    pub(crate) span: tracing::Span,
}

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Shared {
    backend: Backend,
    context: usize,
    name: String,
    /// Tokens sampled by every session since load (for metrics and cancellation checks).
    pub(crate) tokens_generated: AtomicU64,
}

/// Where the tokens come from.
#[derive(Debug)]
enum Backend {
    /// Our own forward pass over GGUF weights, on the session threads.
    Local(Local),
    /// An OpenAI-compatible model server, called from the session threads.
    Remote(Remote),
}

/// A GGUF decoder run in-process.
#[derive(Debug)]
struct Local {
    weights: LlamaWeights,
    text: TextModel,
    prefill_chunk: usize,
    /// Generations run at once (each with its own KV cache), stepped together.
    slots: usize,
}

/// A model's tokenizer and chat template.
#[derive(Debug)]
pub(crate) struct TextModel {
    pub(crate) vocab: DecoderVocab,
    pub(crate) template: ChatTemplate,
}

impl TextModel {
    /// Reads the tokenizer and chat template of a GGUF file (not its weights).
    pub(crate) fn from_gguf(path: &Path) -> Result<(Self, gguf_file::Content, std::fs::File)> {
        let (content, file) = crate::gguf_meta::read_gguf(path)?;
        let meta = Meta::new(&content, path);
        let vocab = decoder_vocab(&meta, path)?;
        let template = ChatTemplate::from_meta(&meta, &vocab)?;
        Ok((Self { vocab, template }, content, file))
    }

    /// Token ids of `text` as the model sees it in a prompt (BOS first when the model adds it).
    pub(crate) fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.vocab.add_bos {
            ids.extend(self.vocab.bos.as_ref().map(|(i, _)| *i));
        }
        ids.extend_from_slice(self.vocab.tokenizer.encode(text, false)?.get_ids());
        Ok(ids)
    }
}

/// Cheap, cloneable handle to a decoder session pool.
#[derive(Debug, Clone)]
pub struct Generator {
    shared: Arc<Shared>,
    jobs: std_mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("max_tokens", &self.request.max_tokens)
            .finish()
    }
}

impl Generator {
    /// Loads a GGUF decoder and starts `opts.sessions` session threads.
    pub fn load(path: &Path, opts: GeneratorOptions) -> Result<Self> {
        let (text, content, mut file) = TextModel::from_gguf(path)?;
        let meta = Meta::new(&content, path);
        let weights = LlamaWeights::load(&content, &meta, &mut file)?;
        let context = opts.context.clamp(16, weights.config.context_length);
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let local = Local {
            weights,
            text,
            prefill_chunk: opts.prefill_chunk.max(1),
            slots: opts.sessions.max(1),
        };
        Self::start(Backend::Local(local), name, context, opts)
    }

    /// A generator whose tokens come from an OpenAI-compatible model server (llama.cpp's
    /// `llama-server`, vLLM, TGI, Ollama, a hosted API): `opts.sessions` requests run at once,
    /// `opts.queue` more wait, and `opts.context` is the server's context per request. Nothing is
    /// sent until the first generation; an unreachable server fails that request (UNAVAILABLE).
    pub fn remote(server: RemoteOptions, opts: GeneratorOptions) -> Result<Self> {
        let remote = Remote::new(server)?;
        let name = remote.name();
        let context = opts.context.max(16);
        Self::start(Backend::Remote(remote), name, context, opts)
    }

    fn start(
        backend: Backend,
        name: String,
        context: usize,
        opts: GeneratorOptions,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            backend,
            context,
            name,
            tokens_generated: AtomicU64::new(0),
        });
        let (jobs, rx) = std_mpsc::sync_channel::<Job>(opts.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        // The local decoder runs every session on one thread, batched; a model server gets
        // one thread per concurrent request.
        let threads = match &shared.backend {
            Backend::Local(_) => 1,
            Backend::Remote(_) => opts.sessions.max(1),
        };
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("ragd-decoder-{i}"))
                .spawn(move || session_loop(&shared, &rx))
                .map_err(Error::io("spawning a decoder session thread"))?;
        }
        Ok(Self { shared, jobs })
    }

    /// The tokenizer and chat template: the local model's, or a remote one's when configured.
    fn text(&self) -> Option<&TextModel> {
        match &self.shared.backend {
            Backend::Local(l) => Some(&l.text),
            Backend::Remote(r) => r.text(),
        }
    }

    /// Starts a generation; fails at once when the queue is full or parameters are invalid.
    /// Prompt errors (too long for the context) arrive as the stream's first item.
    pub fn generate(&self, request: GenerateRequest) -> Result<GenerationStream> {
        request.sampling.validate()?;
        if request.max_tokens == 0 {
            return Err(Error::InvalidInput("max_tokens must be at least 1".into()));
        }
        if request.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidInput(
                "stop sequences must not be empty".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        self.jobs
            .try_send(Job {
                request,
                tx,
                enqueued: Instant::now(),
                span: tracing::Span::current(),
            })
            .map_err(|e| match e {
                std_mpsc::TrySendError::Full(_) => Error::Overloaded("generator"),
                std_mpsc::TrySendError::Disconnected(_) => Error::WorkerGone("generator"),
            })?;
        Ok(GenerationStream { rx })
    }

    /// Renders chat messages with the model's template, ready for generation. A model server
    /// without a configured tokenizer applies its own template: this then renders the plain
    /// `role: content` lines ragd counts tokens on (and shows with `--prompt-out`).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        match self.text() {
            Some(t) => t.template.render(messages, true),
            None => Ok(messages
                .iter()
                .map(|m| format!("{}: {}\n", m.role, m.content))
                .collect()),
        }
    }

    /// Token ids of `text` as the model would see it in a prompt (an error for a model server
    /// without a configured tokenizer).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.text().ok_or_else(no_tokenizer)?.tokenize(text)
    }

    /// How many tokens `text` takes in a prompt: counted with the model's tokenizer, or, for a
    /// model server without one configured, estimated as one token per [`BYTES_PER_TOKEN`] bytes
    /// (English text runs about four bytes per token, so the estimate errs long and prompts
    /// stay within the server's context).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        match self.text() {
            Some(t) => Ok(t.tokenize(text)?.len()),
            None => Ok(text.len().div_ceil(BYTES_PER_TOKEN)),
        }
    }

    /// Decodes ids back to text (special tokens dropped).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        Ok(self
            .text()
            .ok_or_else(no_tokenizer)?
            .vocab
            .tokenizer
            .decode(ids, true)?)
    }

    /// True when tokens come from a model server.
    pub fn is_remote(&self) -> bool {
        matches!(self.shared.backend, Backend::Remote(_))
    }

    /// Context per session in tokens.
    pub fn context(&self) -> usize {
        self.shared.context
    }

    /// Tokens generated by all sessions since the model was loaded.
    pub fn tokens_generated(&self) -> u64 {
        self.shared.tokens_generated.load(Ordering::Relaxed)
    }

    /// The model's file stem (for a model server: its model name and address).
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// Bytes per token of the estimate used when a model server's tokenizer is not configured.
pub const BYTES_PER_TOKEN: usize = 3;

fn no_tokenizer() -> Error {
    Error::InvalidInput(
        "the model server's tokenizer is not configured (decoder.tokenizer: its GGUF file)".into(),
    )
}

fn session_loop(shared: &Shared, rx: &Mutex<std_mpsc::Receiver<Job>>) {
    match &shared.backend {
        Backend::Local(local) => local_loop(shared, local, rx),
        Backend::Remote(remote) => remote.serve(shared, rx),
    }
}

/// The local decoder's one thread: up to `local.slots` generations at once, stepped together.
///
/// Every step is one [`LlamaWeights::forward_batch`] over all running generations: one token
/// for each that is decoding, and the next prompt piece (`prefill_chunk` tokens) for each still
/// reading its prompt. Batching is what makes concurrency pay on
/// a CPU: a decode step of one sequence is a matrix-vector product per layer whose cost is
/// reading the weights and waking the threads, and four sequences share both. Between steps
/// each generation samples its next token, streams its text and checks its stop conditions,
/// cancellation and deadline, exactly as a lone one would.
fn local_loop(shared: &Shared, local: &Local, rx: &Mutex<std_mpsc::Receiver<Job>>) {
    let mut free: Vec<KvState> = (0..local.slots)
        .map(|_| local.weights.new_state(shared.context))
        .collect();
    let mut active: Vec<Slot> = Vec::new();
    loop {
        // Take waiting requests while there is room; block only when nothing runs.
        while let Some(state) = free.pop() {
            let next = {
                let Ok(guard) = rx.lock() else { return };
                if active.is_empty() {
                    guard.recv().ok()
                } else {
                    match guard.try_recv() {
                        Ok(job) => Some(job),
                        Err(std_mpsc::TryRecvError::Empty) => None,
                        Err(std_mpsc::TryRecvError::Disconnected) => None,
                    }
                }
            };
            let Some(job) = next else {
                free.push(state);
                if active.is_empty() {
                    return;
                }
                break;
            };
            if job.tx.is_closed() {
                free.push(state);
                continue;
            }
            match Slot::admit(local, job, state) {
                Ok(slot) => active.push(slot),
                Err((e, tx, state)) => {
                    let _ = tx.blocking_send(Err(e));
                    free.push(state);
                }
            }
        }
        // Those whose caller left or whose deadline passed stop before the forward pass.
        let mut i = 0;
        while i < active.len() {
            match active[i].check() {
                Ok(()) => i += 1,
                Err(e) => {
                    let slot = active.swap_remove(i);
                    free.push(slot.finish_with(Err(e)));
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        // One forward pass for everyone: a token for each decoding session, the next prompt
        // piece for each reading one. Pieces are cut at the same places as for a session alone
        // (every `prefill_chunk` tokens of its own prompt), so what a session computes does not
        // depend on the others.
        let tokens: Vec<Vec<u32>> = active
            .iter()
            .map(|slot| match slot.next {
                Some(t) => vec![t],
                None => {
                    let end = (slot.prefilled + local.prefill_chunk).min(slot.prompt.len());
                    slot.prompt[slot.prefilled..end].to_vec()
                }
            })
            .collect();
        // The pass counts as busy time in every participant's prefill or decode span.
        let stages: Vec<tracing::Span> = active.iter().map(|s| s.stage.clone()).collect();
        let mut segs: Vec<Segment<'_>> = active
            .iter_mut()
            .zip(&tokens)
            .filter(|(_, t)| !t.is_empty())
            .map(|(slot, t)| Segment {
                tokens: t,
                state: &mut slot.state,
            })
            .collect();
        let mut entered: Vec<_> = stages.iter().map(tracing::Span::enter).collect();
        let result = local.weights.forward_batch(&mut segs);
        while entered.pop().is_some() {}
        drop(segs);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed pass leaves every cache in it undefined: all of them end.
                let msg = e.to_string();
                for slot in active.drain(..) {
                    let err = Error::InvalidInput(format!("generation failed: {msg}"));
                    free.push(slot.finish_with(Err(err)));
                }
                continue;
            }
        };
        let mut logits = logits.into_iter();
        let mut ended: Vec<(usize, Result<FinishReason>)> = Vec::new();
        for (idx, (slot, t)) in active.iter_mut().zip(&tokens).enumerate() {
            if t.is_empty() {
                continue;
            }
            slot.logits = logits.next().unwrap_or_default();
            if slot.next.take().is_none() {
                slot.prefilled += t.len();
                if slot.prefilled < slot.prompt.len() {
                    continue;
                }
                slot.usage.prefill_seconds = slot.started.elapsed().as_secs_f64();
                slot.stage = tracing::debug_span!(
                    parent: &slot.span,
                    "decode",
                    tokens = tracing::field::Empty
                );
            }
            match slot.step(shared, local) {
                Ok(None) => {}
                Ok(Some(finish)) => ended.push((idx, Ok(finish))),
                Err(e) => ended.push((idx, Err(e))),
            }
        }
        // Highest index first, so each swap_remove moves a slot already handled.
        for (idx, outcome) in ended.into_iter().rev() {
            let slot = active.swap_remove(idx);
            free.push(match outcome {
                Ok(finish) => slot.complete(finish),
                Err(e) => slot.finish_with(Err(e)),
            });
        }
    }
}

/// Returned when the receiver went away: not an error anyone will see.
pub(crate) fn cancelled() -> Error {
    Error::WorkerGone("generation stream")
}

/// One generation on the local decoder, between steps of [`local_loop`].
struct Slot {
    request: GenerateRequest,
    tx: mpsc::Sender<Result<GenerationEvent>>,
    span: tracing::Span,
    /// When the decoder thread took it.
    started: Instant,
    /// The `prefill` span while it reads its prompt, then `decode` (children of `span`).
    stage: tracing::Span,
    state: KvState,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Logits after the last token run.
    logits: Vec<f32>,
    /// The token to run in the next step (`None` while reading the prompt).
    next: Option<u32>,
    sampler: Sampler,
    generated: Vec<u32>,
    text: DeltaText,
    markers: Option<MarkerTokens>,
    /// Everything generated, decoded.
    decoded: String,
    /// Tokens to generate before stopping for length (room kept for a forced citation).
    limit: usize,
    usage: Usage,
    decode_start: Option<Instant>,
}

impl Slot {
    /// Tokenizes the request's prompt into a fresh slot; on failure hands back the error, the
    /// reply channel and the cache.
    #[allow(clippy::result_large_err)]
    fn admit(
        local: &Local,
        job: Job,
        mut state: KvState,
    ) -> Result<Self, (Error, mpsc::Sender<Result<GenerationEvent>>, KvState)> {
        let started = Instant::now();
        let Job {
            request,
            tx,
            enqueued,
            span,
        } = job;
        state.reset();
        let prompt = {
            let _in = span.enter();
            prompt_tokens(local, &request, state.context())
        };
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => return Err((e, tx, state)),
        };
        let markers = match &request.force_citation {
            Some(fc) => match MarkerTokens::new(&local.text.vocab.tokenizer, fc.sources) {
                Ok(m) => m,
                Err(e) => return Err((e, tx, state)),
            },
            None => None,
        };
        // A forced citation needs room for ` [`, the digit and `]`.
        let limit = match &request.force_citation {
            Some(_) if request.max_tokens > 2 * CITATION_TOKENS => {
                request.max_tokens - CITATION_TOKENS
            }
            _ => request.max_tokens,
        };
        let usage = Usage {
            prompt_tokens: prompt.len(),
            queue_seconds: started.duration_since(enqueued).as_secs_f64(),
            ..Usage::default()
        };
        let stage = tracing::debug_span!(
            parent: &span,
            "prefill",
            tokens = prompt.len(),
            queue_ms = usage.queue_seconds * 1e3
        );
        Ok(Self {
            stage,
            sampler: Sampler::new(request.sampling.clone()),
            text: DeltaText::new(request.stop.clone()),
            request,
            tx,
            span,
            started,
            state,
            prompt,
            prefilled: 0,
            logits: Vec::new(),
            next: None,
            generated: Vec::new(),
            markers,
            decoded: String::new(),
            limit,
            usage,
            decode_start: None,
        })
    }

    /// Before a forward pass: the caller is still there and the deadline has not passed.
    fn check(&self) -> Result<()> {
        if self.tx.is_closed() {
            return Err(cancelled());
        }
        if self.request.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::DeadlineExceeded);
        }
        Ok(())
    }

    /// Samples the next token from the fresh logits and streams what it adds; `Some` when the
    /// generation is over, else `self.next` is the token to run.
    fn step(&mut self, shared: &Shared, local: &Local) -> Result<Option<FinishReason>> {
        let span = self.stage.clone();
        let _in = span.enter();
        if let Some(m) = &self.markers {
            m.constrain(&self.decoded, &mut self.logits);
        }
        let next = self.sampler.sample(&mut self.logits, &self.generated);
        if self.generated.is_empty() {
            self.usage.time_to_first_token_seconds = self.started.elapsed().as_secs_f64();
            self.decode_start = Some(Instant::now());
        }
        if local.text.vocab.stop_ids.contains(&next) {
            self.force_citation(shared, local)?;
            return Ok(Some(FinishReason::Stop));
        }
        self.generated.push(next);
        shared.tokens_generated.fetch_add(1, Ordering::Relaxed);
        self.decoded = local.text.vocab.tokenizer.decode(&self.generated, true)?;
        let (delta, hit_stop) = self.text.update(&self.decoded);
        if !delta.is_empty()
            && self
                .tx
                .blocking_send(Ok(GenerationEvent::Delta(delta)))
                .is_err()
        {
            return Err(cancelled());
        }
        if hit_stop {
            return Ok(Some(FinishReason::StopSequence));
        }
        if self.generated.len() >= self.limit {
            self.force_citation(shared, local)?;
            return Ok(Some(FinishReason::Length));
        }
        self.next = Some(next);
        Ok(None)
    }

    fn force_citation(&mut self, shared: &Shared, local: &Local) -> Result<()> {
        force_citation(
            shared,
            local,
            &mut self.state,
            &self.request,
            &mut self.generated,
            &mut self.text,
            &self.tx,
        )
    }

    /// Sends the completion; returns the cache for the next generation.
    fn complete(mut self, finish: FinishReason) -> KvState {
        self.usage.generated_tokens = self.generated.len();
        self.stage.record("tokens", self.generated.len());
        // The first token came out of prefill; decode time covers the rest.
        self.usage.decode_seconds = self.decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let tail = self.text.finish();
        if !tail.is_empty()
            && self
                .tx
                .blocking_send(Ok(GenerationEvent::Delta(tail)))
                .is_err()
        {
            return self.state;
        }
        let completion = Completion {
            text: std::mem::take(&mut self.text.emitted),
            finish,
            usage: self.usage,
        };
        let _ = self.tx.blocking_send(Ok(GenerationEvent::Done(completion)));
        self.state
    }

    /// Ends the generation with `outcome`'s error (a cancelled one is not sent: nobody
    /// listens); returns the cache.
    fn finish_with(self, outcome: Result<()>) -> KvState {
        if let Err(e) = outcome
            && !matches!(e, Error::WorkerGone("generation stream"))
        {
            let _ = self.tx.blocking_send(Err(e));
        }
        self.state
    }
}

/// The request's prompt as token ids, checked against the context.
fn prompt_tokens(local: &Local, request: &GenerateRequest, context: usize) -> Result<Vec<u32>> {
    let text = match &request.prompt {
        Prompt::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
        Prompt::Chat(m) => std::borrow::Cow::Owned(local.text.template.render(m, true)?),
    };
    let prompt = local.text.tokenize(text.as_ref())?;
    if prompt.is_empty() {
        return Err(Error::InvalidInput("the prompt is empty".into()));
    }
    if prompt.len() + request.max_tokens > context {
        return Err(Error::PromptTooLong {
            prompt_tokens: prompt.len(),
            max_new_tokens: request.max_tokens,
            context,
        });
    }
    Ok(prompt)
}

/// Keeps citation markers valid while the model writes them: right after `[` only the digits
/// of given sources may follow, and right after `[digit` only `]`. A marker to a source that was
/// not given cannot be written at all.
#[derive(Debug)]
struct MarkerTokens {
    digits: Vec<u32>,
    close: u32,
}

impl MarkerTokens {
    /// `None` when the tokenizer has no single-token digits or `]` (then markers are checked
    /// after the fact only).
    fn new(tok: &tokenizers::Tokenizer, sources: usize) -> Result<Option<Self>> {
        let single = |s: &str| -> Result<Option<u32>> {
            let e = tok.encode(s, false)?;
            Ok((e.get_ids().len() == 1).then(|| e.get_ids()[0]))
        };
        let mut digits = Vec::new();
        for d in 1..=sources.min(9) {
            match single(&d.to_string())? {
                Some(id) => digits.push(id),
                None => return Ok(None),
            }
        }
        Ok(match single("]")? {
            Some(close) if !digits.is_empty() => Some(Self { digits, close }),
            _ => None,
        })
    }

    /// Masks `logits` when `text` (everything generated so far) ends inside a marker.
    fn constrain(&self, text: &str, logits: &mut [f32]) {
        let allowed: &[u32] = match marker_state(text) {
            MarkerState::Open => &self.digits,
            MarkerState::Digit => std::slice::from_ref(&self.close),
            MarkerState::Outside => return,
        };
        let keep: Vec<(u32, f32)> = allowed
            .iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id, l)))
            .collect();
        if keep.is_empty() {
            return;
        }
        logits.fill(f32::NEG_INFINITY);
        for (id, l) in keep {
            logits[id as usize] = l;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum MarkerState {
    Outside,
    /// The text ends with `[`.
    Open,
    /// The text ends with `[` and one digit.
    Digit,
}

fn marker_state(text: &str) -> MarkerState {
    let b = text.as_bytes();
    match b {
        [.., b'['] => MarkerState::Open,
        [.., b'[', d] if d.is_ascii_digit() => MarkerState::Digit,
        _ => MarkerState::Outside,
    }
}

/// Most tokens a forced citation adds.
const CITATION_TOKENS: usize = 4;

/// At the end of an answer: when citation forcing is on and the text has no marker, adds one
/// and streams it.
fn force_citation(
    shared: &Shared,
    local: &Local,
    state: &mut KvState,
    request: &GenerateRequest,
    generated: &mut Vec<u32>,
    text: &mut DeltaText,
    tx: &mpsc::Sender<Result<GenerationEvent>>,
) -> Result<()> {
    let Some(fc) = &request.force_citation else {
        return Ok(());
    };
    if generated.len() + CITATION_TOKENS > request.max_tokens
        || state.pos() + CITATION_TOKENS >= state.context()
    {
        return Ok(());
    }
    let so_far = local.text.vocab.tokenizer.decode(generated, true)?;
    if !needs_citation(&so_far, fc) {
        return Ok(());
    }
    let marker = cite(local, state, fc, &so_far)?;
    generated.extend_from_slice(&marker);
    shared
        .tokens_generated
        .fetch_add(marker.len() as u64, Ordering::Relaxed);
    let decoded = local.text.vocab.tokenizer.decode(generated, true)?;
    let (delta, _) = text.update(&decoded);
    if !delta.is_empty() && tx.blocking_send(Ok(GenerationEvent::Delta(delta))).is_err() {
        return Err(cancelled());
    }
    Ok(())
}

/// True when `text` (a finished answer) has no `[digit` marker and is not a refusal.
pub(crate) fn needs_citation(text: &str, fc: &ForceCitation) -> bool {
    let t = text.trim();
    if t.is_empty() || fc.sources == 0 {
        return false;
    }
    if !fc.unless_starts_with.is_empty()
        && t.to_lowercase()
            .starts_with(&fc.unless_starts_with.to_lowercase())
    {
        return false;
    }
    !t.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'[' && w[1].is_ascii_digit())
}

/// Feeds ` [`, samples one digit among the valid markers (greedy over the model's logits), and
/// closes with `]`; returns the tokens added. The KV state advances past all of them.
fn cite(local: &Local, state: &mut KvState, fc: &ForceCitation, so_far: &str) -> Result<Vec<u32>> {
    let tok = &local.text.vocab.tokenizer;
    let open_text = if so_far.ends_with(char::is_whitespace) {
        "["
    } else {
        " ["
    };
    let open: Vec<u32> = tok.encode(open_text, false)?.get_ids().to_vec();
    let close: Vec<u32> = tok.encode("]", false)?.get_ids().to_vec();
    let digits: Vec<u32> = (1..=fc.sources.min(9))
        .filter_map(|d| {
            let ids = tok.encode(d.to_string(), false).ok()?;
            (ids.get_ids().len() == 1).then(|| ids.get_ids()[0])
        })
        .collect();
    if open.is_empty() || close.is_empty() || digits.is_empty() {
        return Ok(Vec::new());
    }
    let logits = local.weights.forward(&open, state)?;
    let pick = digits
        .iter()
        .copied()
        .max_by(|a, b| logits[*a as usize].total_cmp(&logits[*b as usize]))
        .unwrap_or(digits[0]);
    local.weights.forward(&[pick], state)?;
    let mut out = open;
    out.push(pick);
    out.extend_from_slice(&close);
    Ok(out)
}

/// Turns "all text decoded so far" into deltas that are safe to show.
///
/// A delta never ends inside a UTF-8 character (the tokenizer decodes a partial byte sequence
/// as U+FFFD, so text ending in one is held back) and never includes a prefix of a stop sequence
/// that may still complete.
#[derive(Debug)]
pub(crate) struct DeltaText {
    stops: Vec<String>,
    /// Text handed out so far.
    pub(crate) emitted: String,
    /// Latest full decode, including what is held back.
    latest: String,
}

impl DeltaText {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            emitted: String::new(),
            latest: String::new(),
        }
    }

    /// Feeds the full decoded text; returns the new delta and whether a stop sequence appeared
    /// (the text is then cut before it).
    pub(crate) fn update(&mut self, decoded: &str) -> (String, bool) {
        self.latest = decoded.to_string();
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| decoded.find(s.as_str()))
            .min()
        {
            self.latest.truncate(cut);
            return (self.take_upto(cut), true);
        }
        let mut safe = decoded.len();
        if decoded.ends_with('\u{FFFD}') {
            safe = decoded.trim_end_matches('\u{FFFD}').len();
        }
        safe = safe.min(stop_prefix_start(&decoded[..safe], &self.stops));
        (self.take_upto(safe), false)
    }

    /// Everything not yet emitted, at the end of generation.
    pub(crate) fn finish(&mut self) -> String {
        let end = self.latest.len();
        self.take_upto(end)
    }

    fn take_upto(&mut self, end: usize) -> String {
        let start = self.emitted.len();
        if end <= start
            || !self.latest.is_char_boundary(end)
            || !self.latest.is_char_boundary(start)
        {
            return String::new();
        }
        let delta = self.latest[start..end].to_string();
        self.emitted.push_str(&delta);
        delta
    }
}

/// Byte index where a suffix of `text` that is a proper prefix of some stop sequence begins
/// (`text.len()` when there is none).
fn stop_prefix_start(text: &str, stops: &[String]) -> usize {
    let mut start = text.len();
    for stop in stops {
        for (i, _) in text.char_indices().rev().take(stop.len()) {
            let suffix = &text[i..];
            if suffix.len() < stop.len() && stop.starts_with(suffix) {
                start = start.min(i);
            }
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], steps: &[&str]) -> (Vec<String>, bool, String) {
        let mut d = DeltaText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for s in steps {
            let (delta, stop) = d.update(s);
            out.push(delta);
            if stop {
                return (out, true, d.emitted);
            }
        }
        out.push(d.finish());
        (out, false, d.emitted)
    }

    #[test]
    fn marker_states_follow_the_text_end() {
        assert_eq!(marker_state("It opened in 1874 ["), MarkerState::Open);
        assert_eq!(marker_state("It opened in 1874 [2"), MarkerState::Digit);
        assert_eq!(marker_state("It opened in 1874 [2]"), MarkerState::Outside);
        assert_eq!(marker_state("in 1874"), MarkerState::Outside);
        assert_eq!(marker_state(""), MarkerState::Outside);
        let m = MarkerTokens {
            digits: vec![1, 2],
            close: 4,
        };
        let mut logits = vec![0.5, 0.1, 0.2, 9.0, 0.3];
        m.constrain("see [", &mut logits);
        assert_eq!(argmax_of(&logits), 2);
        let mut logits = vec![0.5, 0.1, 0.2, 9.0, 0.3];
        m.constrain("see [2", &mut logits);
        assert_eq!(argmax_of(&logits), 4);
        let mut logits = vec![0.5, 0.1, 0.2, 9.0, 0.3];
        m.constrain("see", &mut logits);
        assert_eq!(argmax_of(&logits), 3);
    }

    fn argmax_of(l: &[f32]) -> usize {
        (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
    }

    #[test]
    fn partial_utf8_is_held_back() {
        let (deltas, _, all) = feed(&[], &["caf", "caf\u{FFFD}", "café", "café!"]);
        assert_eq!(deltas, ["caf", "", "é", "!", ""]);
        assert_eq!(all, "café!");
    }

    #[test]
    fn stop_sequences_are_cut_and_their_prefixes_held() {
        let (deltas, stopped, all) =
            feed(&["\nQ:"], &["Yes", "Yes.\n", "Yes.\nQ", "Yes.\nQ: more"]);
        assert!(stopped);
        // The newline belongs to the stop sequence, so it never shows.
        assert_eq!(deltas, ["Yes", ".", "", ""]);
        assert_eq!(all, "Yes.");
    }

    #[test]
    fn a_false_start_of_a_stop_is_released() {
        let (deltas, stopped, all) = feed(&["END"], &["E", "EN", "ENx"]);
        assert!(!stopped);
        assert_eq!(deltas.concat(), "ENx");
        assert_eq!(all, "ENx");
    }

    #[test]
    fn stop_prefix_start_finds_the_longest_pending_prefix() {
        let stops = vec!["<end>".to_string()];
        assert_eq!(stop_prefix_start("abc<en", &stops), 3);
        assert_eq!(stop_prefix_start("abc", &stops), 3);
        assert_eq!(stop_prefix_start("é<", &stops), "é".len());
    }
}
