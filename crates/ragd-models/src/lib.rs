//! ragd's transformer models, run by candle on the CPU.
//!
//! - [`Embedder`] / [`EmbedderHandle`]: a BERT-family sentence encoder; the handle's worker thread
//!   owns the model and batches requests by token budget.
//! - [`Generator`]: a GGUF decoder (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3 architectures) whose
//!   sessions share the weights and step together on one thread, each with its own KV cache;
//!   output streams through bounded channels. The same pool fronts an OpenAI-compatible model
//!   server ([`RemoteOptions`]).
//! - [`registry`]: the default models, their pinned checksums, fetching and listing them;
//!   [`user_models`]: decoders users add (`ragd models add`), pinned the same way.
//!
//! Threads: model code runs only on the worker/session threads this crate spawns (and candle's
//! compute pool they call into); async callers only touch channels.

mod bert;
mod embedder;
mod error;
mod families;
mod generator;
mod gguf_meta;
pub mod kernels;
pub mod llama;
pub mod registry;
mod remote;
mod reranker;
mod sampling;
pub mod testing;
pub mod user_models;

pub use bert::Pooling;
pub use embedder::{
    AtPrecision, BatchOptions, Embedder, EmbedderHandle, Embedding, Encode, TokenCounter,
    WordTokens, plan_batches,
};
pub use error::{Error, Result};
pub use families::{EncoderSummary, summarize_encoder};
pub use generator::{
    BYTES_PER_TOKEN, Completion, FinishReason, ForceCitation, GenerateRequest, GenerationEvent,
    GenerationStream, Generator, GeneratorOptions, Prompt, Usage,
};
pub use gguf_meta::{ChatMessage, ChatTemplate};
pub use ragd_core::Precision;
pub use remote::{RemoteEncoder, RemoteEncoderOptions, RemoteOptions};
pub use reranker::{Reranker, RerankerHandle};
pub use sampling::{Sampler, SamplingParams, argmax};
