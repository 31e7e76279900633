//! The decoder behind an OpenAI-compatible model server: `POST {url}/chat/completions` (chat
//! prompts) or `{url}/completions` (raw text), streamed as server-sent events.
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

use crate::error::{Error, Result};
use crate::generator::{
    Completion, DeltaText, FinishReason, GenerationEvent, Job, Prompt, Shared, TextModel, Usage,
    cancelled,
};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc as std_mpsc};
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

/// The client side of one model server.
pub(crate) struct Remote {
    agent: ureq::Agent,
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
        let url = opts.url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::InvalidInput(format!(
                "model server URL {:?} must start with http:// or https://",
                opts.url
            )));
        }
        opts.url = url;
        let text = match &opts.tokenizer {
            Some(path) => Some(TextModel::from_gguf(path)?.0),
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(opts.connect_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { agent, opts, text })
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
        let response = self.send(&url, &body, request.deadline, &tx)?;
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut text = DeltaText::new(request.stop.clone());
        let mut raw = String::new();
        let mut events = 0usize;
        let mut finish = None;
        let mut counted: Option<(usize, usize)> = None;
        let mut first_at: Option<Instant> = None;
        let mut line = String::new();
        let lost = |e: std::io::Error| self.failure(&url, format!("the stream broke: {e}"));
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
                return Err(self.failure(&url, "the stream ended before [DONE]".into()));
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| {
                self.failure(&url, format!("an event is not JSON ({e}): {data:.200}"))
            })?;
            if let Some(err) = event.get("error") {
                return Err(self.failure(&url, format!("the server reported: {err}")));
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

    /// Sends the request, retrying what may succeed later; the response is a 200.
    fn send(
        &self,
        url: &str,
        body: &Value,
        deadline: Option<Instant>,
        tx: &tokio::sync::mpsc::Sender<Result<GenerationEvent>>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut attempt = 0u32;
        loop {
            if tx.is_closed() {
                return Err(cancelled());
            }
            let now = Instant::now();
            let budget = match deadline {
                Some(d) if d <= now => return Err(Error::DeadlineExceeded),
                Some(d) => (d - now).min(self.opts.timeout),
                None => self.opts.timeout,
            };
            let mut req = self
                .agent
                .post(url)
                .config()
                .timeout_global(Some(budget))
                .build()
                .header("Accept", "text/event-stream");
            if let Some(key) = &self.opts.api_key {
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
                        _ => return Err(self.failure(url, why)),
                    }
                }
                Err(ureq::Error::Timeout(_)) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(Error::DeadlineExceeded);
                }
                Err(e) => (None, e.to_string()),
            };
            if attempt >= self.opts.retries {
                let tries = attempt + 1;
                return Err(self.failure(url, format!("{why} (after {tries} attempts)")));
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

/// The start of an error response's body, on one line.
fn error_body(response: ureq::http::Response<ureq::Body>) -> String {
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(response.into_body().into_reader(), ERROR_BODY_BYTES),
        &mut body,
    );
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}
