//! The server's settings: one serde tree with defaults, layered as defaults < TOML file <
//! `RAGD_*` environment < command-line flags (figment), then validated with messages that name
//! the key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `ragd serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// gRPC address (`RAGD_LISTEN`). Port 0 picks a free one.
    pub listen: String,
    /// Prometheus `/metrics` address (`RAGD_METRICS_LISTEN`); empty disables it.
    pub metrics_listen: String,
    /// Collections directory (`RAGD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Models directory (`RAGD_MODELS_DIR`); empty: `$RAGD_MODELS`, else `~/.cache/ragd/models`.
    pub models_dir: PathBuf,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
    /// API keys accepted as `authorization: Bearer <key>` (`RAGD_API_KEYS`, comma-separated).
    /// Empty: no authentication.
    pub api_keys: KeyList,
    pub tls: Tls,
    pub limits: Limits,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub reranker: Reranker,
    pub answer: Answer,
    /// Seconds streams get to finish after SIGTERM/SIGINT before they are cut.
    pub shutdown_grace_seconds: f64,
    /// Seconds between background checkpoints of collections that have new writes.
    pub checkpoint_interval_seconds: f64,
    pub publish: Publish,
    pub replica: Replica,
}

/// Read replica mode (`ragd serve --replica`): the server holds no collection of its own; it
/// follows the generations a writer publishes (the etcd pointer of each collection, or without
/// etcd the newest generation of each collection in the store), downloads each into its data
/// directory, checks every file and swaps it in, serves searches and answers from it, and
/// refuses writes (FAILED_PRECONDITION naming `writer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replica {
    /// Serve as a read replica.
    pub enabled: bool,
    /// Object store URL the writer publishes to (its `publish.url`).
    pub url: String,
    /// object_store options, as for `publish.options`.
    pub options: std::collections::BTreeMap<String, String>,
    /// etcd client endpoints holding the pointers (the writer's `publish.etcd`). Empty: follow
    /// the newest generation of every collection in the store.
    pub etcd: Vec<String>,
    /// The writer's address, named when a write is refused.
    pub writer: String,
    /// This replica's name in etcd (`/ragd/<collection>/replicas/<name>`); empty: host name
    /// and process id.
    pub name: String,
    /// Seconds between two looks at the pointers (with etcd, a watch wakes the replica at once
    /// when a pointer moves: this is the fallback).
    pub poll_seconds: f64,
    /// TTL of the etcd lease the replica's keys live under: a replica that stops renewing it
    /// (killed, cut off) releases its generations to pruning after this long.
    pub lease_seconds: u64,
}

impl Default for Replica {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            options: Default::default(),
            etcd: Vec::new(),
            writer: String::new(),
            name: String::new(),
            poll_seconds: 2.0,
            lease_seconds: 10,
        }
    }
}

impl Replica {
    /// The store to follow, when one is set.
    pub fn store(
        &self,
    ) -> Result<Option<ragd_engine::cluster::GenerationStore>, ragd_engine::cluster::Error> {
        open_store(&self.url, &self.options)
    }

    /// The etcd cluster holding the pointers, when one is set.
    pub fn etcd(&self) -> Result<Option<ragd_engine::cluster::Etcd>, ragd_engine::cluster::Error> {
        open_etcd(&self.etcd)
    }
}

fn open_store(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<Option<ragd_engine::cluster::GenerationStore>, ragd_engine::cluster::Error> {
    if url.trim().is_empty() {
        return Ok(None);
    }
    ragd_engine::cluster::GenerationStore::open(url.trim(), options).map(Some)
}

fn open_etcd(
    endpoints: &[String],
) -> Result<Option<ragd_engine::cluster::Etcd>, ragd_engine::cluster::Error> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    ragd_engine::cluster::Etcd::new(endpoints, ragd_engine::cluster::ETCD_PREFIX).map(Some)
}

/// Continuous publishing: after each background checkpoint, every collection whose generation
/// or sequence moved since it was last published is published to object storage (what `ragd
/// publish` does once), for read replicas and for restoring this writer elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Publish {
    /// Object store URL: `s3://bucket/path`, `gs://…`, `az://…`, `file:///dir`; empty: nothing
    /// is published.
    pub url: String,
    /// object_store options (`aws_endpoint`, `aws_region`, `aws_allow_http`, …); the
    /// environment's `AWS_*`, `GOOGLE_*` and `AZURE_*` variables are read too.
    pub options: std::collections::BTreeMap<String, String>,
    /// etcd client endpoints: after each publish, `/ragd/<collection>/current` is pointed at
    /// the new generation (compare-and-swap, never back) and published generations older than
    /// the `keep` newest that no live replica serves are deleted. Empty: no pointer.
    pub etcd: Vec<String>,
    /// Published generations kept per collection when `etcd` is set (at least 1).
    pub keep: usize,
}

impl Default for Publish {
    fn default() -> Self {
        Self {
            url: String::new(),
            options: Default::default(),
            etcd: Vec::new(),
            keep: 3,
        }
    }
}

impl Publish {
    /// The store to publish to, when one is set.
    pub fn store(
        &self,
    ) -> Result<Option<ragd_engine::cluster::GenerationStore>, ragd_engine::cluster::Error> {
        open_store(&self.url, &self.options)
    }

    /// The etcd cluster to point replicas through, when one is set.
    pub fn etcd(&self) -> Result<Option<ragd_engine::cluster::Etcd>, ragd_engine::cluster::Error> {
        open_etcd(&self.etcd)
    }
}

/// The cross-encoder searches and answers rerank with when a request asks (`rerank` in its
/// search options).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reranker {
    /// A model added with `ragd models add NAME --dir CROSS_ENCODER_DIR` (pins verified at
    /// start); empty: none, and requests that ask to rerank are refused.
    pub name: String,
}

/// PEM files; both set enables TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Request size limits and admission control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message, in bytes (requests and responses).
    pub max_message_bytes: usize,
    /// Documents per Upsert call.
    pub max_batch_documents: usize,
    /// Largest document content, in bytes.
    pub max_document_bytes: usize,
    /// Longest query or question, in bytes.
    pub max_query_bytes: usize,
    /// Texts per Embed call.
    pub max_embed_texts: usize,
    /// Requests running or waiting for a CPU worker; beyond this: RESOURCE_EXHAUSTED.
    pub max_inflight: usize,
    /// Requests running at once on the blocking pool (the rest wait in the queue that
    /// `max_inflight` bounds). 0: four per CPU core — a search spends most of its time waiting
    /// for the encoder thread, and more callers waiting there make its batches fuller (hybrid
    /// search on 2 cores, 8 concurrent callers: 2 workers 50 calls/s, 8 workers 79, 64 workers
    /// 79 with 50% more memory).
    pub workers: usize,
    /// Seconds an IngestStream may go without a message before the server ends it
    /// (DEADLINE_EXCEEDED, after acknowledging what it stored): an idle stream holds a
    /// connection and a task.
    pub stream_idle_seconds: usize,
}

/// The encoder new collections get: the bundled local model, or an OpenAI-compatible
/// embeddings server (TEI, infinity, vLLM, llama-server, a hosted API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Encoder {
    /// Base URL of the embeddings server, ending before `/embeddings`; empty: the bundled
    /// all-MiniLM-L6-v2.
    pub url: String,
    /// The `model` field sent, and the encoder's name in the settings of collections made with it.
    pub model: String,
    /// Sent as `Authorization: Bearer` (`RAGD_ENCODER__API_KEY`); empty: none.
    pub api_key: String,
    /// Length of the model's vectors (checked on every reply).
    pub dim: usize,
    /// Longest input in tokens; chunks are sized under it.
    pub max_tokens: usize,
    /// The model's `tokenizer.json` or GGUF file, for exact chunk sizes; empty: estimated at 3
    /// bytes per token.
    pub tokenizer: PathBuf,
    /// Requests to the server at once.
    pub sessions: usize,
    /// Texts per request.
    pub batch: usize,
    /// Longest a request may take, in seconds.
    pub timeout_seconds: f64,
    /// Retries of a request refused before an answer (connection failed, 429, 502-504).
    pub retries: u32,
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api_key: String::new(),
            dim: 0,
            max_tokens: 512,
            tokenizer: PathBuf::new(),
            sessions: 2,
            batch: 32,
            timeout_seconds: 120.0,
            retries: 3,
        }
    }
}

impl Encoder {
    /// The embeddings server to use, when `url` names one.
    pub fn server(&self) -> Option<ragd_engine::RemoteEncoderOptions> {
        if self.url.trim().is_empty() {
            return None;
        }
        let mut o =
            ragd_engine::RemoteEncoderOptions::new(self.url.trim(), self.model.trim(), self.dim);
        o.api_key = Some(self.api_key.clone()).filter(|k| !k.is_empty());
        o.max_len = self.max_tokens;
        o.tokenizer = Some(self.tokenizer.clone()).filter(|p| !p.as_os_str().is_empty());
        o.sessions = self.sessions;
        o.batch = self.batch;
        o.timeout = std::time::Duration::from_secs_f64(self.timeout_seconds);
        o.retries = self.retries;
        Some(o)
    }
}

/// The decoder's session pool: the bundled local model, or an OpenAI-compatible model server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Decoder {
    /// The local decoder: a model added with `ragd models add NAME --gguf FILE` (its pinned
    /// sha256 verified at start); empty: the bundled SmolLM2. Not used with `url`.
    pub name: String,
    /// Concurrent generations (with `url`: concurrent requests to the model server).
    pub sessions: usize,
    /// Generations waiting for a session; beyond this: RESOURCE_EXHAUSTED.
    pub queue: usize,
    /// Context per session, in tokens (with `url`: the server's context per request).
    pub context: usize,
    /// Base URL of an OpenAI-compatible model server (`http://host:8080/v1`: llama.cpp's
    /// `llama-server`, vLLM, TGI, Ollama, a hosted API); empty: the bundled local decoder.
    pub url: String,
    /// The `model` field sent to the server.
    pub model: String,
    /// Sent as `Authorization: Bearer` to the server (`RAGD_DECODER__API_KEY`); empty: none.
    pub api_key: String,
    /// The served model's GGUF file, read for its tokenizer and chat template only, so prompts
    /// are counted exactly; empty: estimated at 3 bytes per token.
    pub tokenizer: PathBuf,
    /// Longest a request to the server may take, in seconds.
    pub timeout_seconds: f64,
    /// Retries of a request the server refused before answering (connection failed, 429,
    /// 502-504), with exponential backoff.
    pub retries: u32,
    /// The request field for the answer's repetition penalty (not in the OpenAI API):
    /// `repeat_penalty` (llama.cpp, Ollama), `repetition_penalty` (vLLM, TGI), empty for none
    /// (hosted APIs refuse fields they do not know).
    pub repeat_penalty_field: String,
}

/// Answer pipeline defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Answer {
    /// Refusal threshold (cosine).
    pub min_relevance: f32,
    /// Most prompt tokens.
    pub max_prompt_tokens: usize,
    /// Most sources packed.
    pub max_sources: usize,
    /// Lexical half of the relevance gate (weighted share of the question's terms a chunk
    /// holds), 0..=1.
    pub min_lexical: f32,
    /// Most bytes of a chunk packed (the window around its best sentences); 0: whole chunks.
    pub source_bytes: usize,
    /// `generate` (the model writes, each sentence is checked) or `extract` (quoted source
    /// sentences only, no decoder).
    pub strategy: ragd_engine::Strategy,
    /// Unsupported answer sentences: `drop` them, or `decline` the whole draft.
    pub unsupported: ragd_engine::Unsupported,
    /// Share of a sentence's terms its source must hold, 0..=1.
    pub min_support: f32,
    /// Question–sentence score an extract needs, 0..=1.
    pub min_extract: f32,
    /// Generated sentences must rest on one of this many best-matching source sentences (0:
    /// any).
    pub on_question: usize,
    /// Search a second time with the first hop's best sentences added to the question
    /// (questions that name their subject through something else).
    pub second_hop: bool,
}

/// API keys from a TOML array or a comma-separated string (environment).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct KeyList(pub Vec<String>);

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(Self(match Raw::deserialize(d)? {
            Raw::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect(),
            Raw::Many(v) => v,
        }))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: String::new(),
            data_dir: "indexes".into(),
            models_dir: PathBuf::new(),
            log_format: "text".into(),
            api_keys: KeyList::default(),
            tls: Tls::default(),
            limits: Limits::default(),
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            reranker: Reranker::default(),
            answer: Answer::default(),
            shutdown_grace_seconds: 10.0,
            checkpoint_interval_seconds: 30.0,
            publish: Publish::default(),
            replica: Replica::default(),
        }
    }
}

impl Limits {
    /// `workers`, or four per CPU core when it is 0.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            4 * std::thread::available_parallelism().map_or(2, usize::from)
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 << 20,
            max_batch_documents: 256,
            max_document_bytes: 16 << 20,
            max_query_bytes: 4096,
            max_embed_texts: 256,
            max_inflight: 64,
            workers: 0,
            stream_idle_seconds: 60,
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            name: String::new(),
            sessions: 1,
            queue: 8,
            context: 4096,
            url: String::new(),
            model: "default".into(),
            api_key: String::new(),
            tokenizer: PathBuf::new(),
            timeout_seconds: 300.0,
            retries: 3,
            repeat_penalty_field: "repeat_penalty".into(),
        }
    }
}

impl Decoder {
    /// The model server to generate with, when `url` names one.
    pub fn model_server(&self) -> Option<ragd_engine::RemoteOptions> {
        if self.url.trim().is_empty() {
            return None;
        }
        let mut o = ragd_engine::RemoteOptions::new(self.url.trim(), self.model.trim());
        o.api_key = Some(self.api_key.clone()).filter(|k| !k.is_empty());
        o.tokenizer = Some(self.tokenizer.clone()).filter(|p| !p.as_os_str().is_empty());
        o.timeout = std::time::Duration::from_secs_f64(self.timeout_seconds);
        o.retries = self.retries;
        o.repeat_penalty_field =
            Some(self.repeat_penalty_field.trim().to_string()).filter(|f| !f.is_empty());
        Some(o)
    }
}

impl Default for Answer {
    fn default() -> Self {
        let d = ragd_engine::AnswerConfig::default();
        Self {
            min_relevance: d.min_relevance,
            max_prompt_tokens: d.max_prompt_tokens,
            max_sources: d.max_sources,
            min_lexical: d.min_lexical,
            source_bytes: d.source_bytes,
            strategy: d.strategy,
            unsupported: d.unsupported,
            min_support: d.min_support,
            min_extract: d.min_extract,
            on_question: d.on_question,
            second_hop: d.second_hop,
        }
    }
}

/// A settings problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl Settings {
    /// Defaults, then `file` (if any), then `RAGD_*` variables (nested keys with `__`, e.g.
    /// `RAGD_DECODER__SESSIONS`), then `overrides` (flags), validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, SettingsError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(SettingsError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Variables ragd reads elsewhere (logging, model fetch, the CLI's client mode, the
        // peers' setup) and those Kubernetes injects for a Service named `ragd` are not server
        // settings; any other `RAGD_*` must be one (a misspelt setting is an error).
        let env = Env::prefixed("RAGD_")
            .ignore(&["LOG", "MODELS", "PYTHON", "SERVER", "API_KEY", "PEERS"])
            .filter(|key| !kubernetes_service_link(key.as_str()))
            .split("__");
        fig = fig.merge(env).merge(Serialized::globals(overrides));
        let s: Settings = fig
            .extract()
            .map_err(|e| SettingsError(format!("invalid settings: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, why: String| Err(SettingsError(format!("setting `{key}`: {why}")));
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:50051", self.listen),
            );
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad(
                "metrics_listen",
                format!("{:?} is not an address", self.metrics_listen),
            );
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(
                "log_format",
                format!("must be text or json, got {:?}", self.log_format),
            );
        }
        if self.tls.cert.as_os_str().is_empty() != self.tls.key.as_os_str().is_empty() {
            return bad("tls", "set both tls.cert and tls.key, or neither".into());
        }
        if self.api_keys.0.iter().any(|k| k.len() < 8) {
            return bad("api_keys", "every key must be at least 8 characters".into());
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return bad("limits.max_message_bytes", "must be at least 1024".into());
        }
        for (key, v) in [
            ("limits.max_batch_documents", l.max_batch_documents),
            ("limits.max_document_bytes", l.max_document_bytes),
            ("limits.max_query_bytes", l.max_query_bytes),
            ("limits.max_embed_texts", l.max_embed_texts),
            ("limits.max_inflight", l.max_inflight),
            ("limits.stream_idle_seconds", l.stream_idle_seconds),
            ("decoder.sessions", self.decoder.sessions),
            ("decoder.queue", self.decoder.queue),
            ("answer.max_sources", self.answer.max_sources),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.decoder.context < 512 {
            return bad("decoder.context", "must be at least 512 tokens".into());
        }
        let url = self.decoder.url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad(
                "decoder.url",
                format!("{url:?} must start with http:// or https://"),
            );
        }
        if !(self.decoder.timeout_seconds.is_finite() && self.decoder.timeout_seconds > 0.0) {
            return bad("decoder.timeout_seconds", "must be above 0".into());
        }
        if !url.is_empty() && !self.decoder.name.is_empty() {
            return bad(
                "decoder.name",
                "names a local decoder; with decoder.url the model server generates (set one)"
                    .into(),
            );
        }
        let e = &self.encoder;
        let url = e.url.trim();
        if !url.is_empty() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(
                    "encoder.url",
                    format!("{url:?} must start with http:// or https://"),
                );
            }
            if e.model.trim().is_empty() {
                return bad("encoder.model", "must name the served model".into());
            }
            for (key, v) in [
                ("encoder.dim", e.dim),
                ("encoder.max_tokens", e.max_tokens),
                ("encoder.sessions", e.sessions),
                ("encoder.batch", e.batch),
            ] {
                if v == 0 {
                    return bad(key, "must be at least 1".into());
                }
            }
            if !(e.timeout_seconds.is_finite() && e.timeout_seconds > 0.0) {
                return bad("encoder.timeout_seconds", "must be above 0".into());
            }
        }
        if !(-1.0..=1.0).contains(&self.answer.min_relevance) {
            return bad("answer.min_relevance", "must be within -1..=1".into());
        }
        for (key, v) in [
            ("answer.min_lexical", self.answer.min_lexical),
            ("answer.min_support", self.answer.min_support),
            ("answer.min_extract", self.answer.min_extract),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, "must be within 0..=1".into());
            }
        }
        if self.answer.max_prompt_tokens < 128 {
            return bad("answer.max_prompt_tokens", "must be at least 128".into());
        }
        for (key, v) in [
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
            (
                "checkpoint_interval_seconds",
                self.checkpoint_interval_seconds,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, format!("must be a positive number, got {v}"));
            }
        }
        if let Err(e) = self.publish.store() {
            return bad("publish.url", e.to_string());
        }
        if let Err(e) = self.publish.etcd() {
            return bad("publish.etcd", e.to_string());
        }
        if !self.publish.etcd.is_empty() && self.publish.url.trim().is_empty() {
            return bad(
                "publish.etcd",
                "needs publish.url (what the pointer names is published there)".into(),
            );
        }
        if self.publish.keep == 0 {
            return bad("publish.keep", "must be at least 1".into());
        }
        if let Err(e) = self.replica.store() {
            return bad("replica.url", e.to_string());
        }
        if let Err(e) = self.replica.etcd() {
            return bad("replica.etcd", e.to_string());
        }
        if self.replica.enabled {
            if self.replica.url.trim().is_empty() {
                return bad(
                    "replica.url",
                    "a replica needs the object store its writer publishes to".into(),
                );
            }
            if !self.publish.url.trim().is_empty() {
                return bad(
                    "publish.url",
                    "a read replica publishes nothing (its writer does); leave it empty".into(),
                );
            }
        }
        if !(0.05..=3600.0).contains(&self.replica.poll_seconds) {
            return bad(
                "replica.poll_seconds",
                format!("must be 0.05..=3600, got {}", self.replica.poll_seconds),
            );
        }
        if !(2..=3600).contains(&self.replica.lease_seconds) {
            return bad(
                "replica.lease_seconds",
                format!("must be 2..=3600, got {}", self.replica.lease_seconds),
            );
        }
        if !self.replica.name.is_empty()
            && (self.replica.name.len() > 128
                || !self
                    .replica
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return bad(
                "replica.name",
                format!(
                    "{:?} must be 1 to 128 characters of [A-Za-z0-9._-]",
                    self.replica.name
                ),
            );
        }
        Ok(())
    }

    /// The models directory after defaults.
    pub fn models_dir(&self) -> PathBuf {
        if self.models_dir.as_os_str().is_empty() {
            ragd_engine::models::resolve_models_dir(None)
        } else {
            self.models_dir.clone()
        }
    }
}

/// Values given as flags (highest precedence); `None` leaves the layer below.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// `--replica`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaOverrides>,
}

/// Flags of the `[replica]` table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaOverrides {
    /// `replica.enabled`.
    pub enabled: bool,
}

/// True for the variables Kubernetes injects into every pod for a Service (here named `ragd`),
/// prefix removed: `SERVICE_HOST`, `SERVICE_PORT`, `SERVICE_PORT_<NAME>`, `PORT`,
/// `PORT_<n>_<TCP|UDP|SCTP>` and its `_PROTO`, `_PORT`, `_ADDR` forms.
fn kubernetes_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    if key == "SERVICE_HOST" || key == "SERVICE_PORT" || key == "PORT" {
        return true;
    }
    if key.starts_with("SERVICE_PORT_") {
        return true;
    }
    let Some(rest) = key.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = rest.splitn(3, '_');
    let port = parts.next().unwrap_or("");
    let proto = parts.next().unwrap_or("");
    let suffix = parts.next();
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(proto, "TCP" | "UDP" | "SCTP")
        && matches!(suffix, None | Some("PROTO" | "PORT" | "ADDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn layers_apply_in_order_and_errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ragd.toml",
                "listen = \"127.0.0.1:7000\"\n[decoder]\nsessions = 2\n",
            )?;
            jail.set_env("RAGD_DECODER__SESSIONS", "3");
            jail.set_env("RAGD_API_KEYS", "key-one-1234, key-two-5678");
            jail.set_env("RAGD_LOG", "debug");
            jail.set_env("RAGD_API_KEY", "a-client-key");
            let o = Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Overrides::default()
            };
            let s = Settings::load(Some(Path::new("ragd.toml")), &o).map_err(|e| e.0)?;
            assert_eq!(s.listen, "127.0.0.1:7000");
            assert_eq!(s.decoder.sessions, 3);
            assert_eq!(s.api_keys.0, ["key-one-1234", "key-two-5678"]);
            assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(s.limits, Limits::default());

            jail.set_env("RAGD_DECODER__SESSIONS", "0");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("decoder.sessions"), "{e}");
            jail.set_env("RAGD_DECODER__SESSIONS", "1");
            // What Kubernetes injects for a Service named `ragd`, and the peers' variable: not
            // settings, ignored. A misspelt setting still fails, naming itself.
            for (k, v) in [
                ("RAGD_PORT", "tcp://10.0.0.11:50051"),
                ("RAGD_SERVICE_HOST", "10.0.0.11"),
                ("RAGD_SERVICE_PORT", "50051"),
                ("RAGD_SERVICE_PORT_GRPC", "50051"),
                ("RAGD_PORT_50051_TCP", "tcp://10.0.0.11:50051"),
                ("RAGD_PORT_50051_TCP_PROTO", "tcp"),
                ("RAGD_PORT_50051_TCP_PORT", "50051"),
                ("RAGD_PORT_50051_TCP_ADDR", "10.0.0.11"),
                ("RAGD_PEERS", "/root/.cache/ragd-peers"),
            ] {
                jail.set_env(k, v);
            }
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            assert_eq!(s.decoder.sessions, 1);
            jail.set_env("RAGD_DECODER__SESIONS", "2");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("sesions"), "{e}");
            jail.clear_env();
            jail.set_env("RAGD_LISTN", "127.0.0.1:1");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("listn"), "{e}");
            jail.clear_env();
            jail.create_file("bad.toml", "listne = \"x\"\n")?;
            let e = Settings::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("listne"), "{e}");
            // The publishing store is checked at start: its URL, and every option's name.
            jail.set_env("RAGD_PUBLISH__URL", "ftp://nowhere/x");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(
                e.0.contains("publish.url") && e.0.contains("ftp://nowhere/x"),
                "{e}"
            );
            jail.set_env("RAGD_PUBLISH__URL", "s3://bucket/ragd");
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            assert_eq!(s.publish.url, "s3://bucket/ragd");
            jail.create_file(
                "publish.toml",
                "[publish]\noptions = { aws_endpoint = \"http://127.0.0.1:1\", aws_endpiont = \"x\" }\n",
            )?;
            let e =
                Settings::load(Some(Path::new("publish.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("aws_endpiont"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_replica_is_told_where_generations_come_from_and_publishes_nothing() {
        figment::Jail::expect_with(|jail| {
            let replica = Overrides {
                replica: Some(ReplicaOverrides { enabled: true }),
                ..Overrides::default()
            };
            let e = Settings::load(None, &replica).unwrap_err();
            assert!(e.0.contains("replica.url"), "{e}");
            jail.create_file(
                "replica.toml",
                "[replica]
url = \"s3://bucket/ragd\"
etcd = [\"http://127.0.0.1:2379\"]
writer = \"writer:50051\"
",
            )?;
            let file = Some(Path::new("replica.toml"));
            let s = Settings::load(file, &replica).map_err(|e| e.0)?;
            assert!(s.replica.enabled);
            assert_eq!(s.replica.etcd, ["http://127.0.0.1:2379"]);
            assert_eq!((s.replica.poll_seconds, s.replica.lease_seconds), (2.0, 10));
            // Without the flag the table alone does not make a replica.
            assert!(
                !Settings::load(file, &Overrides::default())
                    .map_err(|e| e.0)?
                    .replica
                    .enabled
            );
            jail.set_env("RAGD_PUBLISH__URL", "s3://bucket/other");
            let e = Settings::load(file, &replica).unwrap_err();
            assert!(e.0.contains("publish.url"), "{e}");
            jail.clear_env();
            for (key, value, named) in [
                ("RAGD_REPLICA__NAME", "has space", "replica.name"),
                ("RAGD_REPLICA__POLL_SECONDS", "0", "replica.poll_seconds"),
                ("RAGD_REPLICA__LEASE_SECONDS", "1", "replica.lease_seconds"),
                ("RAGD_REPLICA__ETCD", "[\"127.0.0.1:2379\"]", "replica.etcd"),
            ] {
                jail.set_env(key, value);
                let e = Settings::load(file, &replica).unwrap_err();
                assert!(e.0.contains(named), "{key}: {e}");
                jail.clear_env();
            }
            Ok(())
        });
    }
    #[test]
    #[allow(clippy::result_large_err)]
    fn a_model_server_is_configured_from_the_environment_and_checked() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            assert!(s.decoder.model_server().is_none());
            jail.set_env("RAGD_DECODER__URL", "http://127.0.0.1:8080/v1/");
            jail.set_env("RAGD_DECODER__MODEL", "qwen2.5-7b-instruct");
            jail.set_env("RAGD_DECODER__API_KEY", "sk-local-0123");
            jail.set_env("RAGD_DECODER__RETRIES", "5");
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            let o = s.decoder.model_server().unwrap();
            assert_eq!(o.url, "http://127.0.0.1:8080/v1/");
            assert_eq!(o.model, "qwen2.5-7b-instruct");
            assert_eq!(o.api_key.as_deref(), Some("sk-local-0123"));
            assert_eq!(o.retries, 5);
            assert!(o.tokenizer.is_none());
            assert_eq!(o.repeat_penalty_field.as_deref(), Some("repeat_penalty"));
            jail.set_env("RAGD_DECODER__REPEAT_PENALTY_FIELD", "");
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            assert!(
                s.decoder
                    .model_server()
                    .unwrap()
                    .repeat_penalty_field
                    .is_none()
            );
            jail.set_env("RAGD_DECODER__URL", "127.0.0.1:8080");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(
                e.0.contains("decoder.url") && e.0.contains("http://"),
                "{e}"
            );
            jail.set_env("RAGD_DECODER__URL", "http://127.0.0.1:8080/v1");
            jail.set_env("RAGD_DECODER__NAME", "qwen2.5-0.5b");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("decoder.name"), "{e}");
            jail.set_env("RAGD_DECODER__NAME", "");
            jail.set_env("RAGD_DECODER__TIMEOUT_SECONDS", "0");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("decoder.timeout_seconds"), "{e}");
            jail.set_env("RAGD_DECODER__TIMEOUT_SECONDS", "30");
            // An embeddings server needs its model's name and vector length.
            assert!(s.encoder.server().is_none());
            jail.set_env("RAGD_ENCODER__URL", "http://127.0.0.1:8081/v1");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("encoder.model"), "{e}");
            jail.set_env("RAGD_ENCODER__MODEL", "bge-small-en-v1.5");
            let e = Settings::load(None, &Overrides::default()).unwrap_err();
            assert!(e.0.contains("encoder.dim"), "{e}");
            jail.set_env("RAGD_ENCODER__DIM", "384");
            let s = Settings::load(None, &Overrides::default()).map_err(|e| e.0)?;
            let o = s.encoder.server().unwrap();
            assert_eq!(
                (o.model.as_str(), o.dim, o.max_len),
                ("bge-small-en-v1.5", 384, 512)
            );
            Ok(())
        });
    }

    /// The example settings file shipped in `deploy/` loads and passes validation.
    #[test]
    #[allow(clippy::result_large_err)]
    fn the_shipped_settings_file_is_valid() {
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/ragd.toml");
            let s = Settings::load(Some(&path), &Overrides::default()).map_err(|e| e.0)?;
            assert!(s.decoder.model_server().is_none() && s.encoder.server().is_none());
            assert_eq!(s.listen, "0.0.0.0:50051");
            Ok(())
        });
    }
}
