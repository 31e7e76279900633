//! ragd's pipelines over one collection: parsing files into documents, chunking them in encoder
//! tokens, embedding, writing to the collection store, offline rebuilds, retrieval and grounded
//! answers.
//!
//! Everything here runs on the caller's thread (the encoder's matrix products use rayon's pool);
//! a server calls it from a blocking pool, never from an async worker.

mod answer;
mod cancel;
mod chunk;
mod cite;
mod engine;
mod error;
mod evidence;
mod ingest;
mod parse;
mod rebuild;
mod search;

pub use answer::{
    Answer, AnswerConfig, AnswerEvent, AnswerKind, AnswerRequest, AnswerStream, AnswerUsage,
    Answerer, Citation, DEFAULT_MAX_TOKENS, DEFAULT_MIN_EXTRACT, DEFAULT_MIN_LEXICAL,
    DEFAULT_MIN_RELEVANCE, DEFAULT_MIN_SUPPORT, DEFAULT_ON_QUESTION, DEFAULT_SOURCE_BYTES,
    DEFAULT_STRATEGY, Exclusion, Grounding, MAX_QUESTION_BYTES, Prepared, REFUSAL, ScoredSentence,
    SentenceSupport, Source, Strategy, Turn, Unsupported,
};
pub use cancel::Cancel;
pub use chunk::{Chunker, embed_text};
pub use cite::{Marker, parse_citations};
pub use engine::{
    DEFAULT_PAGE_SIZE, DEFAULT_QUERY_CACHE, Deleted, DocumentPage, Engine, EngineConfig, Listing,
    MAX_DELETE_IDS, MAX_EMBED_TEXT_BYTES, MAX_PAGE_SIZE, ModelOptions, Role, SearchResults, Served,
    StagedSnapshot, StoredDocument, load_reranker,
};
pub use error::{Error, Result};
pub use ingest::{
    DocResult, IngestOptions, IngestReport, Ingestor, PhaseSeconds, PipelineReport, Progress,
    ProgressSink,
};
pub use parse::{
    Failure, Format, ParsedDoc, SourceFile, SourceOptions, collect_sources, estimate_documents,
    parse_bytes, read_source,
};
pub use ragd_models::Precision;
pub use rebuild::{RebuildOptions, RebuildSummary, rebuild};
/// The grounding primitives answers are checked with, for evaluations that score citations the
/// way the engine checks them.
pub mod grounding {
    pub use crate::answer::answer_sentences;
    pub use crate::evidence::{Support, claim_text, support};
}
pub use search::{CacheStats, Fused, Fusion, Hit, MAX_RERANK, Mode, SearchParams, Searcher, fuse};

// The data model and model handles the engine's operations take and return, so that front
// doors need no crate below the engine.
pub use ragd_cluster as cluster;
pub use ragd_core::scratch::Scratch;
pub use ragd_models::registry as models;
pub use ragd_models::user_models;
pub use ragd_models::{
    Embedding, Encode, FinishReason, GeneratorOptions, RemoteEncoderOptions, RemoteOptions,
    SamplingParams,
};
pub use ragd_store::{
    ChunkRecord, ChunkSettings, CollectionSettings, CollectionStats, DocRecord, HnswSettings,
    SearchFilter, WriteOutcome,
};

/// Refuses a collection name the store cannot hold (empty, too long, or not
/// `[A-Za-z0-9_-]`).
pub fn validate_name(name: &str) -> Result<()> {
    Ok(ragd_store::validate_name(name)?)
}

/// Refuses an encoder that is not the one the collection was built with, or one that embeds at
/// another precision: vectors from two models are not comparable, and documents and queries
/// must be embedded alike.
pub(crate) fn check_encoder(settings: &CollectionSettings, embedder: &dyn Encode) -> Result<()> {
    if embedder.name() != settings.encoder || embedder.dim() != settings.dim {
        return Err(Error::InvalidInput(format!(
            "the collection uses encoder {:?} ({} dimensions) but {:?} ({} dimensions) is loaded",
            settings.encoder,
            settings.dim,
            embedder.name(),
            embedder.dim()
        )));
    }
    if embedder.precision() != settings.encoder_precision {
        return Err(Error::InvalidInput(format!(
            "the collection embeds at {} precision but the encoder given runs at {} (a rebuild \
             changing the collection's precision refuses other writes until it ends)",
            settings.encoder_precision,
            embedder.precision()
        )));
    }
    Ok(())
}

/// Collection settings for a new collection with `embedder`: the defaults, with the encoder's
/// name and dimension, and chunks no longer than the encoder's input.
pub fn settings_for(embedder: &dyn Encode) -> CollectionSettings {
    let mut s = CollectionSettings {
        encoder: embedder.name().to_string(),
        dim: embedder.dim(),
        ..CollectionSettings::default()
    };
    let max = embedder.max_len();
    if s.chunking.max_tokens > max {
        s.chunking.max_tokens = max;
        s.chunking.min_tokens = s.chunking.min_tokens.min(max);
    }
    s
}
