//! Models behind OpenAI-compatible servers: the decoder (`POST {url}/chat/completions` for chat
//! prompts, `{url}/completions` for raw text, streamed as server-sent events) and a sentence
//! encoder (`POST {url}/embeddings`, [`RemoteEncoder`]).
//!
//! Each of the generator's session threads holds one request at a time with a blocking HTTP
//! client, so no async worker ever waits on the network and `sessions` bounds the requests the
//! server sees. Stop sequences, the UTF-8-safe deltas and cancellation work as for the local
//! model: stops are sent to the server and also applied here (a server that ignores them still
//! never streams past one), and a dropped stream closes the connection before the next event
//! is read, which ends generation on servers that watch for it (llama-server does).
//!
//! Retries: a connection that fails or a 429/502/503/504 before any answer text arrived is
//! retried with exponential backoff (a `Retry-After` in seconds is honoured), never past the
//! request's deadline. A failure after text was streamed is not retried: the caller has shown
//! it already.

use crate::embedder::{Embedding, Encode, TokenCounter};
use crate::error::{Error, Result};
use crate::generator::{
    Completion, DeltaText, FinishReason, GenerationEvent, Job, Prompt, Shared, TextModel, Usage,
    cancelled,
};
use ragd_core::Precision;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

/// How to reach a model server. Its `Debug` shows whether a key is set, never the key.
#[derive(Clone)]
pub struct RemoteOptions {
    /// Base URL of the API, ending before `/chat/completions`, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// The `model` field of every request (servers with one model ignore it).
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// A GGUF file whose tokenizer and chat template are the served model's: prompts are then
    /// counted exactly. Without it they are estimated (see [`crate::BYTES_PER_TOKEN`]).
    pub tokenizer: Option<PathBuf>,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest a whole request may take (a request deadline, when sooner, wins).
    pub timeout: Duration,
    /// Retries of a request refused before any text (connection failed, 429, 502–504).
    pub retries: u32,
    /// The request field that carries the repetition penalty, which the OpenAI API lacks:
    /// `repeat_penalty` (llama.cpp, Ollama; the default), `repetition_penalty` (vLLM, TGI);
    /// `None` sends none (hosted APIs refuse fields they do not know).
    pub repeat_penalty_field: Option<String>,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("tokenizer", &self.tokenizer)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("repeat_penalty_field", &self.repeat_penalty_field)
            .finish()
    }
}

impl RemoteOptions {
    /// Defaults for a server at `url` serving `model`: 5 s to connect, 300 s per request, 3
    /// retries, llama.cpp's repetition penalty field.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
            tokenizer: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
            retries: 3,
            repeat_penalty_field: Some("repeat_penalty".into()),
        }
    }
}

/// First wait before a retry; doubled each time.
const BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait before a retry.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most bytes of an error response kept for the message.
const ERROR_BODY_BYTES: u64 = 2048;
/// Stop sequences the OpenAI API takes per request; the rest are applied here only.
const MAX_SERVER_STOPS: usize = 4;

/// The client side of one model server's chat/completions API.
pub(crate) struct Remote {
    client: Client,
    opts: RemoteOptions,
    text: Option<TextModel>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.opts.url)
            .field("model", &self.opts.model)
            .field("tokenizer", &self.opts.tokenizer)
            .finish()
    }
}

impl Remote {
    pub(crate) fn new(mut opts: RemoteOptions) -> Result<Self> {
        let client = Client::new(
            &opts.url,
            opts.api_key.clone(),
            opts.connect_timeout,
            opts.timeout,
            opts.retries,
        )?;
        opts.url.clone_from(&client.base);
        let text = match &opts.tokenizer {
            Some(path) => Some(TextModel::from_gguf(path)?.0),
            None => None,
        };
        Ok(Self { client, opts, text })
    }

    /// `model@url`.
    pub(crate) fn name(&self) -> String {
        format!("{}@{}", self.opts.model, self.opts.url)
    }

    pub(crate) fn text(&self) -> Option<&TextModel> {
        self.text.as_ref()
    }

    /// A session thread's loop: one request at a time until the generator is dropped.
    pub(crate) fn serve(&self, shared: &Shared, rx: &Mutex<std_mpsc::Receiver<Job>>) {
        loop {
            let job = {
                let Ok(guard) = rx.lock() else { return };
                match guard.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if job.tx.is_closed() {
                continue;
            }
            let tx = job.tx.clone();
            let span = job.span.clone();
            let _in = span.enter();
            if let Err(e) = self.run(shared, job) {
                let _ = tx.blocking_send(Err(e));
            }
        }
    }

    fn run(&self, shared: &Shared, job: Job) -> Result<()> {
        let started = Instant::now();
        let Job {
            request,
            tx,
            enqueued,
            span: _,
        } = job;
        let (path, mut body) = match &request.prompt {
            Prompt::Chat(messages) => ("chat/completions", json!({ "messages": messages })),
            Prompt::Text(text) => ("completions", json!({ "prompt": text })),
        };
        let chat = matches!(request.prompt, Prompt::Chat(_));
        let sampling = &request.sampling;
        body["model"] = json!(self.opts.model);
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        body["max_tokens"] = json!(request.max_tokens);
        body["temperature"] = json!(sampling.temperature);
        body["top_p"] = json!(sampling.top_p);
        if let Some(seed) = sampling.seed {
            body["seed"] = json!(seed);
        }
        if let Some(field) = &self.opts.repeat_penalty_field
            && sampling.repeat_penalty != 1.0
        {
            body[field.as_str()] = json!(sampling.repeat_penalty);
        }
        if !request.stop.is_empty() {
            let stops: Vec<&String> = request.stop.iter().take(MAX_SERVER_STOPS).collect();
            body["stop"] = json!(stops);
        }
        let url = format!("{}/{path}", self.opts.url);
        let mut usage = Usage {
            queue_seconds: started.duration_since(enqueued).as_secs_f64(),
            ..Usage::default()
        };
        let response = self
            .client
            .post(path, &body, request.deadline, &|| tx.is_closed())?;
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut text = DeltaText::new(request.stop.clone());
        let mut raw = String::new();
        let mut events = 0usize;
        let mut finish = None;
        let mut counted: Option<(usize, usize)> = None;
        let mut first_at: Option<Instant> = None;
        let mut line = String::new();
        let failure = |reason: String| self.client.failure(&url, reason);
        let lost = |e: std::io::Error| failure(format!("the stream broke: {e}"));
        loop {
            if tx.is_closed() {
                return Err(cancelled());
            }
            if request.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::DeadlineExceeded);
            }
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| {
                if request.deadline.is_some_and(|d| Instant::now() >= d) {
                    Error::DeadlineExceeded
                } else {
                    lost(e)
                }
            })?;
            if n == 0 {
                return Err(failure("the stream ended before [DONE]".into()));
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data)
                .map_err(|e| failure(format!("an event is not JSON ({e}): {data:.200}")))?;
            if let Some(err) = event.get("error") {
                return Err(failure(format!("the server reported: {err}")));
            }
            if let Some(ms) = event.pointer("/timings/prompt_ms").and_then(Value::as_f64) {
                usage.server_prefill_seconds = Some(ms / 1e3);
            }
            if let Some(u) = event.get("usage").filter(|u| !u.is_null()) {
                let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                counted = Some((n("prompt_tokens"), n("completion_tokens")));
            }
            let Some(choice) = event.get("choices").and_then(|c| c.get(0)) else {
                continue;
            };
            let piece = if chat {
                choice.pointer("/delta/content")
            } else {
                choice.get("text")
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            if !piece.is_empty() {
                first_at.get_or_insert_with(Instant::now);
                events += 1;
                shared.tokens_generated.fetch_add(1, Ordering::Relaxed);
                raw.push_str(piece);
                let (delta, hit_stop) = text.update(&raw);
                if !delta.is_empty() && tx.blocking_send(Ok(GenerationEvent::Delta(delta))).is_err()
                {
                    return Err(cancelled());
                }
                if hit_stop {
                    // Closing the connection ends the server's generation.
                    finish = Some(FinishReason::StopSequence);
                    break;
                }
            }
            match choice.get("finish_reason").and_then(Value::as_str) {
                Some("length") => finish = Some(FinishReason::Length),
                Some(_) => finish = finish.or(Some(FinishReason::Stop)),
                None => {}
            }
        }
        let tail = text.finish();
        if !tail.is_empty() && tx.blocking_send(Ok(GenerationEvent::Delta(tail))).is_err() {
            return Err(cancelled());
        }
        let first = first_at.unwrap_or_else(Instant::now);
        usage.time_to_first_token_seconds = first.duration_since(started).as_secs_f64();
        usage.prefill_seconds = usage.time_to_first_token_seconds;
        usage.decode_seconds = first.elapsed().as_secs_f64();
        let (prompt_tokens, generated) = counted.unwrap_or((0, events));
        usage.prompt_tokens = prompt_tokens;
        usage.generated_tokens = generated;
        let completion = Completion {
            text: text.emitted,
            finish: finish.unwrap_or(FinishReason::Stop),
            usage,
        };
        let _ = tx.blocking_send(Ok(GenerationEvent::Done(completion)));
        Ok(())
    }
}

/// The start of an error response's body, on one line.
fn error_body(response: ureq::http::Response<ureq::Body>) -> String {
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(response.into_body().into_reader(), ERROR_BODY_BYTES),
        &mut body,
    );
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// HTTP to one model server: JSON requests with the key, timeouts and retries.
pub(crate) struct Client {
    agent: ureq::Agent,
    /// Base URL without a trailing slash.
    base: String,
    api_key: Option<String>,
    timeout: Duration,
    retries: u32,
}

impl Client {
    fn new(
        url: &str,
        api_key: Option<String>,
        connect_timeout: Duration,
        timeout: Duration,
        retries: u32,
    ) -> Result<Self> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidInput(format!(
                "model server URL {url:?} must start with http:// or https://"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(connect_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base,
            api_key,
            timeout,
            retries,
        })
    }

    /// POSTs `body` to `{base}/{path}`, retrying what may succeed later (a refused connection,
    /// 429, 502–504) until `deadline`; the response is a 200. `gone` (the caller left) is asked
    /// before every attempt.
    fn post(
        &self,
        path: &str,
        body: &Value,
        deadline: Option<Instant>,
        gone: &dyn Fn() -> bool,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}/{path}", self.base);
        let mut attempt = 0u32;
        loop {
            if gone() {
                return Err(cancelled());
            }
            let now = Instant::now();
            let budget = match deadline {
                Some(d) if d <= now => return Err(Error::DeadlineExceeded),
                Some(d) => (d - now).min(self.timeout),
                None => self.timeout,
            };
            let mut req = self
                .agent
                .post(&url)
                .config()
                .timeout_global(Some(budget))
                .build();
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", format!("Bearer {key}"));
            }
            let (retry_after, why) = match req.send_json(body) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 200 {
                        return Ok(response);
                    }
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let detail = error_body(response);
                    let why = format!("HTTP {status}: {detail}");
                    match status {
                        429 | 502 | 503 | 504 => (retry_after, why),
                        400 | 413 | 422 => {
                            return Err(Error::InvalidInput(format!(
                                "the model server at {url} refused the request: {why}"
                            )));
                        }
                        _ => return Err(self.failure(&url, why)),
                    }
                }
                Err(ureq::Error::Timeout(_)) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(Error::DeadlineExceeded);
                }
                Err(e) => (None, e.to_string()),
            };
            if attempt >= self.retries {
                let tries = attempt + 1;
                return Err(self.failure(&url, format!("{why} (after {tries} attempts)")));
            }
            let wait = retry_after
                .unwrap_or(BACKOFF * 2u32.saturating_pow(attempt))
                .min(MAX_BACKOFF);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(Error::DeadlineExceeded);
            }
            tracing::warn!(
                url,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "model server: {why}; retrying"
            );
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn failure(&self, url: &str, reason: String) -> Error {
        Error::ModelServer {
            url: url.to_string(),
            reason,
        }
    }
}

/// How to reach an embeddings server (`POST {url}/embeddings`, the OpenAI API that TEI,
/// infinity, vLLM, llama-server and hosted APIs speak).
#[derive(Clone)]
pub struct RemoteEncoderOptions {
    /// Base URL, ending before `/embeddings`.
    pub url: String,
    /// The `model` field; also the encoder's name in collection settings.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Vector length the model returns (checked on every response).
    pub dim: usize,
    /// Longest input in tokens (chunks are sized under it).
    pub max_len: usize,
    /// The model's `tokenizer.json` or GGUF file, for exact chunk sizes; `None`: estimated.
    pub tokenizer: Option<PathBuf>,
    /// Requests in flight at once.
    pub sessions: usize,
    /// Requests waiting for a session before new ones are refused (Overloaded).
    pub queue: usize,
    /// Texts per request.
    pub batch: usize,
    pub connect_timeout: Duration,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Retries of a request refused before an answer (connection failed, 429, 502–504).
    pub retries: u32,
}

impl std::fmt::Debug for RemoteEncoderOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEncoderOptions")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("dim", &self.dim)
            .field("max_len", &self.max_len)
            .field("tokenizer", &self.tokenizer)
            .field("sessions", &self.sessions)
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .finish()
    }
}

impl RemoteEncoderOptions {
    /// Defaults for `model` of `dim` at `url`: 512-token inputs, 2 requests at once, 64 queued,
    /// 32 texts per request, 5 s to connect, 120 s per request, 3 retries.
    pub fn new(url: impl Into<String>, model: impl Into<String>, dim: usize) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
            dim,
            max_len: 512,
            tokenizer: None,
            sessions: 2,
            queue: 64,
            batch: 32,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(120),
            retries: 3,
        }
    }
}

/// One request's texts and where its vectors go.
struct EmbedJob {
    texts: Vec<String>,
    reply: std_mpsc::SyncSender<Result<Vec<Vec<f32>>>>,
}

/// Jobs waiting for a session: interactive ones (a query, a few texts) before bulk ones, as on
/// the local encoder's thread, so searches stay fast while a collection ingests.
struct EmbedQueue {
    jobs: Mutex<(VecDeque<EmbedJob>, VecDeque<EmbedJob>)>,
    ready: Condvar,
    capacity: usize,
}

impl EmbedQueue {
    fn push(&self, job: EmbedJob, interactive: bool) -> Result<()> {
        let mut q = self.jobs.lock().map_err(|_| Error::WorkerGone("encoder"))?;
        if q.0.len() + q.1.len() >= self.capacity {
            return Err(Error::Overloaded("encoder"));
        }
        if interactive {
            q.0.push_back(job);
        } else {
            q.1.push_back(job);
        }
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    fn pop(&self) -> Option<EmbedJob> {
        let mut q = self.jobs.lock().ok()?;
        loop {
            if let Some(j) = q.0.pop_front().or_else(|| q.1.pop_front()) {
                return Some(j);
            }
            q = self.ready.wait(q).ok()?;
        }
    }
}

/// A sentence encoder behind an OpenAI-compatible embeddings server. Texts go out in requests
/// of `batch`, handled by `sessions` threads that each hold one request at a time; vectors come
/// back L2-normalised (ragd ranks by dot product) and in input order.
pub struct RemoteEncoder {
    queue: Arc<EmbedQueue>,
    opts: RemoteEncoderOptions,
    counter: TokenCounter,
}

impl std::fmt::Debug for RemoteEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEncoder")
            .field("opts", &self.opts)
            .finish()
    }
}

impl RemoteEncoder {
    /// Starts the session threads; nothing is sent until the first texts.
    pub fn new(opts: RemoteEncoderOptions) -> Result<Self> {
        if opts.dim == 0 || opts.max_len == 0 || opts.batch == 0 {
            return Err(Error::InvalidInput(
                "a remote encoder needs its vector length, input limit and batch above 0".into(),
            ));
        }
        let client = Arc::new(Client::new(
            &opts.url,
            opts.api_key.clone(),
            opts.connect_timeout,
            opts.timeout,
            opts.retries,
        )?);
        let counter = match &opts.tokenizer {
            None => TokenCounter::estimate(),
            Some(p) if p.extension().is_some_and(|e| e == "gguf") => {
                TokenCounter::new(TextModel::from_gguf(p)?.0.vocab.tokenizer)
            }
            Some(p) => TokenCounter::new(tokenizers::Tokenizer::from_file(p).map_err(|e| {
                Error::ModelInvalid {
                    path: p.clone(),
                    reason: e.to_string(),
                }
            })?),
        };
        let queue = Arc::new(EmbedQueue {
            jobs: Mutex::new((VecDeque::new(), VecDeque::new())),
            ready: Condvar::new(),
            capacity: opts.queue.max(1),
        });
        for i in 0..opts.sessions.max(1) {
            let queue = Arc::clone(&queue);
            let client = Arc::clone(&client);
            let (model, dim) = (opts.model.clone(), opts.dim);
            std::thread::Builder::new()
                .name(format!("ragd-embed-remote-{i}"))
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        let out = embed_request(&client, &model, dim, &job.texts);
                        let _ = job.reply.send(out);
                    }
                })
                .map_err(Error::io("spawning a remote encoder thread"))?;
        }
        Ok(Self {
            queue,
            opts,
            counter,
        })
    }
}

/// Requests of at most this many texts and bytes go before bulk work.
const INTERACTIVE_TEXTS: usize = 8;
const INTERACTIVE_BYTES: usize = 8192;

impl Encode for RemoteEncoder {
    fn encode_with(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        if precision != Precision::F32 {
            return Err(Error::InvalidInput(format!(
                "the encoder {:?} runs on a model server, which returns its own precision; \
                 use f32 for its collections",
                self.opts.model
            )));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let interactive = texts.len() <= INTERACTIVE_TEXTS
            && texts.iter().map(String::len).sum::<usize>() <= INTERACTIVE_BYTES;
        let counts: Vec<usize> = texts
            .iter()
            .map(|t| self.counter.count(t) + self.counter.special_tokens())
            .collect();
        // Every batch is queued before any reply is awaited, so they run on all sessions.
        let mut replies = Vec::new();
        let mut texts = texts.into_iter();
        loop {
            let batch: Vec<String> = texts.by_ref().take(self.opts.batch).collect();
            if batch.is_empty() {
                break;
            }
            let (reply, rx) = std_mpsc::sync_channel(1);
            self.queue.push(
                EmbedJob {
                    texts: batch,
                    reply,
                },
                interactive,
            )?;
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(counts.len());
        for rx in replies {
            let vectors = rx.recv().map_err(|_| Error::WorkerGone("encoder"))??;
            out.extend(vectors);
        }
        Ok(out
            .into_iter()
            .zip(counts)
            .map(|(vector, n)| Embedding {
                vector,
                tokens: n.min(self.opts.max_len),
                truncated: n > self.opts.max_len,
            })
            .collect())
    }
    fn name(&self) -> &str {
        &self.opts.model
    }
    fn dim(&self) -> usize {
        self.opts.dim
    }
    fn max_len(&self) -> usize {
        self.opts.max_len
    }
    fn token_counter(&self) -> TokenCounter {
        self.counter.clone()
    }
}

/// One `POST /embeddings`: the vectors in input order, normalised, each checked for length.
fn embed_request(
    client: &Client,
    model: &str,
    dim: usize,
    texts: &[String],
) -> Result<Vec<Vec<f32>>> {
    let body = json!({ "model": model, "input": texts, "encoding_format": "float" });
    let url = format!("{}/embeddings", client.base);
    let response = client.post("embeddings", &body, None, &|| false)?;
    let reply: Value = response
        .into_body()
        .read_json()
        .map_err(|e| client.failure(&url, format!("the reply is not JSON: {e}")))?;
    let data = reply
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| client.failure(&url, "the reply has no `data` list".into()))?;
    if data.len() != texts.len() {
        return Err(client.failure(
            &url,
            format!("{} vectors came back for {} texts", data.len(), texts.len()),
        ));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    for (k, item) in data.iter().enumerate() {
        let i = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(k, |i| i as usize);
        let v: Vec<f32> = item
            .get("embedding")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default();
        if v.len() != dim {
            return Err(client.failure(
                &url,
                format!(
                    "a vector has {} values, the encoder is configured for {dim}",
                    v.len()
                ),
            ));
        }
        let slot = out
            .get_mut(i)
            .ok_or_else(|| client.failure(&url, format!("vector index {i} out of range")))?;
        *slot = Some(normalized(v));
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| client.failure(&url, "a text got no vector".into())))
        .collect()
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}
