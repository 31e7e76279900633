//! The one conversion layer between `ragd.v1` messages and the engine's types, both directions:
//! the server converts requests in and results out, the CLI's client mode converts its requests
//! out and the server's answers back into the types it prints offline. Every message is
//! destructured field by field without `..`, so a field added to a `.proto` file breaks the build
//! here until it is handled, instead of being silently ignored.
//!
//! Metadata has one model: values are text ([`ragd_core::metadata_text`]: strings as they are,
//! anything else as its JSON), the form filters compare and the content hash reads.

use crate::v1 as pb;
use ragd_core::{Metadata, Precision};
use ragd_engine::{
    Answer, AnswerConfig, AnswerKind, AnswerRequest, AnswerUsage, ChunkSettings, Citation,
    CollectionSettings, CollectionStats, DocResult, Error, FinishReason, Format, Fusion, Grounding,
    Hit, HnswSettings, Mode, ParsedDoc, RebuildSummary, SamplingParams, SearchFilter, SearchParams,
    SentenceSupport, Source, StoredDocument, Turn, WriteOutcome,
};
use std::collections::HashMap;

/// Longest document id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest document source (path or URL) accepted.
pub const MAX_SOURCE_BYTES: usize = 4096;

type Result<T> = std::result::Result<T, Error>;

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

/// Metadata as the API carries it: every value as text.
pub fn metadata_to_pb(m: &Metadata) -> HashMap<String, String> {
    m.iter()
        .map(|(k, v)| (k.clone(), ragd_core::metadata_text(v).into_owned()))
        .collect()
}

/// The API's metadata map as stored metadata (every value a JSON string).
pub fn metadata_from_pb(m: HashMap<String, String>) -> Metadata {
    m.into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Search

impl From<Mode> for pb::SearchMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Hybrid => Self::Hybrid,
            Mode::Dense => Self::Dense,
            Mode::Lexical => Self::Lexical,
        }
    }
}

impl From<&SearchParams> for pb::SearchOptions {
    fn from(p: &SearchParams) -> Self {
        let SearchParams {
            mode,
            top_k,
            candidates,
            ef,
            fusion,
            filter,
            min_score,
            one_per_document,
            mmr_lambda,
            rerank,
        } = p;
        let method = match *fusion {
            Fusion::Rrf { k } => pb::fusion::Method::Rrf(pb::Rrf { k }),
            Fusion::Convex { dense_weight } => {
                pb::fusion::Method::Convex(pb::Convex { dense_weight })
            }
        };
        let SearchFilter { doc_ids, metadata } = filter;
        Self {
            mode: pb::SearchMode::from(*mode) as i32,
            top_k: *top_k as u32,
            candidates: *candidates as u32,
            ef: ef.unwrap_or(0) as u32,
            fusion: Some(pb::Fusion {
                method: Some(method),
            }),
            filter: Some(pb::Filter {
                document_ids: doc_ids.clone(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), pb::StringList { values: v.clone() }))
                    .collect(),
            }),
            min_score: *min_score,
            one_per_document: *one_per_document,
            mmr_lambda: *mmr_lambda,
            rerank: rerank.map(|n| n as u32),
        }
    }
}

/// Search options → the engine's parameters; zero and absent fields take the defaults (`top_k`:
/// `default_top_k`).
pub fn search_params(o: Option<pb::SearchOptions>, default_top_k: usize) -> Result<SearchParams> {
    let pb::SearchOptions {
        mode,
        top_k,
        candidates,
        ef,
        fusion,
        filter,
        min_score,
        one_per_document,
        mmr_lambda,
        rerank,
    } = o.unwrap_or_default();
    let d = SearchParams::default();
    let mode = match pb::SearchMode::try_from(mode) {
        Ok(pb::SearchMode::Unspecified | pb::SearchMode::Hybrid) => Mode::Hybrid,
        Ok(pb::SearchMode::Dense) => Mode::Dense,
        Ok(pb::SearchMode::Lexical) => Mode::Lexical,
        Err(_) => return Err(invalid(format!("unknown search mode {mode}"))),
    };
    let fusion = match fusion.and_then(|pb::Fusion { method }| method) {
        None => d.fusion,
        Some(pb::fusion::Method::Rrf(pb::Rrf { k })) => Fusion::Rrf { k },
        Some(pb::fusion::Method::Convex(pb::Convex { dense_weight })) => {
            Fusion::Convex { dense_weight }
        }
    };
    let pb::Filter {
        document_ids,
        metadata,
    } = filter.unwrap_or_default();
    let mut metadata: Vec<(String, Vec<String>)> = metadata
        .into_iter()
        .map(|(k, pb::StringList { values })| (k, values))
        .collect();
    metadata.sort();
    if let Some((k, _)) = metadata.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
        return Err(invalid(format!(
            "filter key {k:?}: keys must be non-empty and have at least one value"
        )));
    }
    Ok(SearchParams {
        mode,
        top_k: if top_k == 0 {
            default_top_k
        } else {
            top_k as usize
        },
        candidates: if candidates == 0 {
            d.candidates
        } else {
            candidates as usize
        },
        ef: (ef != 0).then_some(ef as usize),
        fusion,
        filter: SearchFilter {
            doc_ids: document_ids,
            metadata,
        },
        min_score,
        one_per_document,
        mmr_lambda,
        rerank: rerank.map(|n| n as usize),
    })
}

impl From<Hit> for pb::Hit {
    fn from(h: Hit) -> Self {
        let Hit {
            chunk_id,
            doc_id,
            title,
            metadata,
            text,
            start,
            end,
            dense_score,
            lexical_score,
            score,
            rerank_score,
        } = h;
        Self {
            chunk_id,
            document_id: doc_id,
            title,
            metadata: metadata_to_pb(&metadata),
            text,
            start: start as u64,
            end: end as u64,
            dense_score,
            lexical_score,
            score,
            rerank_score,
        }
    }
}

impl From<pb::Hit> for Hit {
    fn from(h: pb::Hit) -> Self {
        let pb::Hit {
            chunk_id,
            document_id,
            title,
            metadata,
            text,
            start,
            end,
            dense_score,
            lexical_score,
            score,
            rerank_score,
        } = h;
        Self {
            chunk_id,
            doc_id: document_id,
            title,
            metadata: metadata_from_pb(metadata),
            text,
            start: start as usize,
            end: end as usize,
            dense_score,
            lexical_score,
            score,
            rerank_score,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Documents and collections

/// A proto document → a parsed document, or the reason it cannot be stored (a per-document
/// failure, not a failed call): `(id, why)`.
pub fn document(
    d: pb::DocumentInput,
    max_bytes: usize,
) -> std::result::Result<ParsedDoc, (String, String)> {
    let pb::DocumentInput {
        id,
        title,
        content,
        format,
        metadata,
        source,
    } = d;
    let fail = |why: String| (id.clone(), why);
    if id.trim().is_empty() {
        return Err(fail("the document id is empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(fail(format!(
            "the document id is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if content.len() > max_bytes {
        return Err(fail(format!(
            "the content is {} bytes; the limit is {max_bytes}",
            content.len()
        )));
    }
    if source.len() > MAX_SOURCE_BYTES {
        return Err(fail(format!(
            "the source is {} bytes; the limit is {MAX_SOURCE_BYTES}",
            source.len()
        )));
    }
    let metadata = metadata_from_pb(metadata);
    ragd_core::check_bounds(&title, &metadata).map_err(fail)?;
    let format = match pb::DocumentFormat::try_from(format) {
        Ok(pb::DocumentFormat::Unspecified | pb::DocumentFormat::Text) => Format::Text,
        Ok(pb::DocumentFormat::Markdown) => Format::Markdown,
        Ok(pb::DocumentFormat::Html) => Format::Html,
        Ok(pb::DocumentFormat::Pdf) => Format::Pdf,
        Err(_) => return Err(fail(format!("unknown document format {format}"))),
    };
    let source = if source.is_empty() { "grpc" } else { &source };
    let mut parsed =
        ragd_engine::parse_bytes(&id, source, &id, format, content, max_bytes).map_err(fail)?;
    if !title.trim().is_empty() {
        parsed.doc.title = title;
    }
    parsed.doc.metadata = metadata;
    Ok(parsed)
}

/// A parsed document as the API's input: the text (Markdown kept as Markdown, so the server
/// splits it on its structure), its title, metadata and source.
impl From<ParsedDoc> for pb::DocumentInput {
    fn from(d: ParsedDoc) -> Self {
        let ParsedDoc { doc, markdown } = d;
        let ragd_core::DocumentInput {
            id,
            source,
            title,
            text,
            metadata,
        } = doc;
        let format = if markdown {
            pb::DocumentFormat::Markdown
        } else {
            pb::DocumentFormat::Text
        };
        Self {
            metadata: metadata_to_pb(&metadata),
            id,
            title,
            content: text.into_bytes(),
            format: format as i32,
            source,
        }
    }
}

impl From<WriteOutcome> for pb::DocumentStatus {
    fn from(o: WriteOutcome) -> Self {
        match o {
            WriteOutcome::Added => Self::Added,
            WriteOutcome::Unchanged => Self::Unchanged,
            WriteOutcome::Replaced => Self::Replaced,
            WriteOutcome::Deleted | WriteOutcome::NotFound => Self::Unspecified,
        }
    }
}

impl From<DocResult> for pb::DocumentResult {
    fn from(r: DocResult) -> Self {
        let DocResult {
            id,
            outcome,
            chunks,
        } = r;
        Self {
            id,
            status: pb::DocumentStatus::from(outcome) as i32,
            error: String::new(),
            chunks: chunks as u32,
        }
    }
}

/// The result of a document that could not be stored.
pub fn failed(id: String, why: String) -> pb::DocumentResult {
    pb::DocumentResult {
        id,
        status: pb::DocumentStatus::Failed as i32,
        error: why,
        chunks: 0,
    }
}

impl From<StoredDocument> for pb::Document {
    fn from(d: StoredDocument) -> Self {
        let StoredDocument { id, record, text } = d;
        let ragd_engine::DocRecord {
            title,
            source,
            metadata,
            hash,
            // Listed with the text when asked for; sizes and sequence are the store's.
            chunks: _,
            bytes: _,
            seq: _,
        } = record;
        let (text, chunks) = text.unwrap_or_default();
        let chunks = chunks
            .into_iter()
            .map(|(chunk_id, c)| pb::Chunk {
                chunk_id,
                start: c.span.start as u64,
                end: c.span.end as u64,
                tokens: c.span.tokens as u32,
            })
            .collect();
        Self {
            id,
            metadata: metadata_to_pb(&metadata),
            title,
            source,
            content_hash: hash,
            text,
            chunks,
        }
    }
}

impl From<&ChunkSettings> for pb::ChunkingSettings {
    fn from(c: &ChunkSettings) -> Self {
        let ChunkSettings {
            max_tokens,
            min_tokens,
            overlap_tokens,
            title_in_embedding,
        } = *c;
        Self {
            max_tokens: max_tokens as u32,
            min_tokens: min_tokens as u32,
            overlap_tokens: overlap_tokens as u32,
            title_in_embedding,
        }
    }
}

/// An encoder precision field: empty is `None` (the default, or unchanged), else its name.
pub fn precision_from(s: &str) -> std::result::Result<Option<Precision>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some)
}

/// Proto chunking over `base`: zero fields keep the base value (overlap 0 is taken as given).
pub fn chunking_from(p: &pb::ChunkingSettings, base: &ChunkSettings) -> ChunkSettings {
    let pb::ChunkingSettings {
        max_tokens,
        min_tokens,
        overlap_tokens,
        title_in_embedding,
    } = *p;
    let pick = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    ChunkSettings {
        max_tokens: pick(max_tokens, base.max_tokens),
        min_tokens: pick(min_tokens, base.min_tokens),
        overlap_tokens: overlap_tokens as usize,
        title_in_embedding,
    }
}

impl From<&HnswSettings> for pb::HnswSettings {
    fn from(h: &HnswSettings) -> Self {
        let HnswSettings {
            m,
            ef_construction,
            ef_search,
        } = *h;
        Self {
            m: m as u32,
            ef_construction: ef_construction as u32,
            ef_search: ef_search as u32,
        }
    }
}

/// Proto HNSW settings over `base`: zero fields keep the base value.
pub fn hnsw_from(p: &pb::HnswSettings, base: &HnswSettings) -> HnswSettings {
    let pb::HnswSettings {
        m,
        ef_construction,
        ef_search,
    } = *p;
    let pick = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    HnswSettings {
        m: pick(m, base.m),
        ef_construction: pick(ef_construction, base.ef_construction),
        ef_search: pick(ef_search, base.ef_search),
    }
}

impl From<&CollectionSettings> for pb::CollectionSettings {
    fn from(s: &CollectionSettings) -> Self {
        let CollectionSettings {
            encoder,
            dim,
            encoder_precision,
            chunking,
            hnsw,
            reembedding,
            rerank,
        } = s;
        Self {
            rerank: *rerank as u32,
            encoder: encoder.clone(),
            dim: *dim as u32,
            chunking: Some(chunking.into()),
            hnsw: Some(hnsw.into()),
            encoder_precision: encoder_precision.to_string(),
            reembedding: *reembedding,
        }
    }
}

impl From<CollectionStats> for pb::Collection {
    fn from(s: CollectionStats) -> Self {
        let CollectionStats {
            name,
            documents,
            chunks,
            tombstones,
            generation,
            bytes,
            seq,
            checkpointed_seq,
            settings,
        } = s;
        Self {
            settings: Some((&settings).into()),
            name,
            documents,
            chunks,
            tombstones,
            generation,
            bytes,
            sequence: seq,
            checkpointed_sequence: checkpointed_seq,
        }
    }
}

impl From<pb::ChunkingSettings> for ChunkSettings {
    fn from(p: pb::ChunkingSettings) -> Self {
        let pb::ChunkingSettings {
            max_tokens,
            min_tokens,
            overlap_tokens,
            title_in_embedding,
        } = p;
        Self {
            max_tokens: max_tokens as usize,
            min_tokens: min_tokens as usize,
            overlap_tokens: overlap_tokens as usize,
            title_in_embedding,
        }
    }
}

impl From<pb::HnswSettings> for HnswSettings {
    fn from(p: pb::HnswSettings) -> Self {
        let pb::HnswSettings {
            m,
            ef_construction,
            ef_search,
        } = p;
        Self {
            m: m as usize,
            ef_construction: ef_construction as usize,
            ef_search: ef_search as usize,
        }
    }
}

impl From<pb::CollectionSettings> for CollectionSettings {
    fn from(p: pb::CollectionSettings) -> Self {
        let pb::CollectionSettings {
            encoder,
            dim,
            chunking,
            hnsw,
            encoder_precision,
            reembedding,
            rerank,
        } = p;
        Self {
            rerank: rerank as usize,
            encoder,
            dim: dim as usize,
            // A server older than the setting sends none: its collections are f32.
            encoder_precision: precision_from(&encoder_precision)
                .ok()
                .flatten()
                .unwrap_or_default(),
            chunking: chunking.unwrap_or_default().into(),
            hnsw: hnsw.unwrap_or_default().into(),
            reembedding,
        }
    }
}

impl From<pb::Collection> for CollectionStats {
    fn from(c: pb::Collection) -> Self {
        let pb::Collection {
            name,
            settings,
            documents,
            chunks,
            tombstones,
            generation,
            bytes,
            sequence,
            checkpointed_sequence,
        } = c;
        Self {
            name,
            documents,
            chunks,
            tombstones,
            generation,
            bytes,
            seq: sequence,
            checkpointed_seq: checkpointed_sequence,
            settings: settings.unwrap_or_default().into(),
        }
    }
}

impl From<RebuildSummary> for pb::RebuildDone {
    fn from(s: RebuildSummary) -> Self {
        let RebuildSummary {
            generation,
            previous_generation,
            documents,
            chunks,
            embedded,
            reused,
            dropped_tombstones,
            seconds,
        } = s;
        Self {
            generation,
            previous_generation,
            documents,
            chunks,
            seconds,
            embedded,
            reused,
            dropped_tombstones,
        }
    }
}

impl From<pb::RebuildDone> for RebuildSummary {
    fn from(d: pb::RebuildDone) -> Self {
        let pb::RebuildDone {
            generation,
            previous_generation,
            documents,
            chunks,
            seconds,
            embedded,
            reused,
            dropped_tombstones,
        } = d;
        Self {
            generation,
            previous_generation,
            documents,
            chunks,
            embedded,
            reused,
            dropped_tombstones,
            seconds,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An AskRequest → the collection and the engine's request (the deadline is the caller's to
/// set). `max_sources` is the default `top_k`; a question over `max_query_bytes` is refused.
pub fn ask(
    r: pb::AskRequest,
    max_sources: usize,
    max_query_bytes: usize,
) -> Result<(String, AnswerRequest)> {
    let pb::AskRequest {
        collection,
        question,
        history,
        retrieval,
        generation,
        min_relevance,
    } = r;
    if question.len() > max_query_bytes {
        return Err(invalid(format!(
            "the question is {} bytes; the limit is {max_query_bytes}",
            question.len()
        )));
    }
    let mut req = AnswerRequest::new(question);
    req.search = search_params(retrieval, max_sources)?;
    req.history = history
        .into_iter()
        .map(|pb::Turn { question, answer }| Turn { question, answer })
        .collect();
    let pb::GenerationOptions {
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        repeat_penalty,
    } = generation.unwrap_or_default();
    if max_tokens != 0 {
        req.max_tokens = max_tokens as usize;
    }
    let custom = temperature.is_some()
        || top_p.is_some()
        || top_k.is_some()
        || seed.is_some()
        || repeat_penalty.is_some();
    if custom {
        let d = SamplingParams::default();
        req.sampling = Some(SamplingParams {
            temperature: temperature.unwrap_or(d.temperature),
            top_p: top_p.unwrap_or(d.top_p),
            top_k: top_k.map_or(d.top_k, |k| k as usize),
            seed,
            repeat_penalty: repeat_penalty.unwrap_or(AnswerConfig::default().repeat_penalty),
            ..d
        });
    }
    req.stop = stop;
    req.min_relevance = min_relevance;
    Ok((collection, req))
}

/// The engine's request as an AskRequest on `collection` (the deadline travels as the call's
/// `grpc-timeout`, not in the message).
pub fn ask_request(collection: &str, r: &AnswerRequest) -> pb::AskRequest {
    let AnswerRequest {
        question,
        history,
        search,
        max_tokens,
        sampling,
        stop,
        min_relevance,
        deadline: _,
        // A diagnostic of `ragd ask --explain` and `ragd eval answers --explain` on a data
        // directory, not part of the gRPC API.
        explain: _,
    } = r;
    pb::AskRequest {
        collection: collection.to_string(),
        question: question.clone(),
        history: history
            .iter()
            .map(|Turn { question, answer }| pb::Turn {
                question: question.clone(),
                answer: answer.clone(),
            })
            .collect(),
        retrieval: Some(search.into()),
        generation: Some(pb::GenerationOptions {
            max_tokens: *max_tokens as u32,
            temperature: sampling.as_ref().map(|s| s.temperature),
            top_p: sampling.as_ref().map(|s| s.top_p),
            top_k: sampling.as_ref().map(|s| s.top_k as u32),
            seed: sampling.as_ref().and_then(|s| s.seed),
            stop: stop.clone(),
            repeat_penalty: sampling.as_ref().map(|s| s.repeat_penalty),
        }),
        min_relevance: *min_relevance,
    }
}

impl From<&Source> for pb::Source {
    fn from(s: &Source) -> Self {
        let Source {
            marker,
            document_id,
            chunk_id,
            title,
            start,
            end,
            score,
            relevance,
            lexical,
            text,
            truncated,
        } = s;
        Self {
            marker: *marker as u32,
            document_id: document_id.clone(),
            chunk_id: *chunk_id,
            title: title.clone(),
            start: *start as u64,
            end: *end as u64,
            score: *score,
            relevance: *relevance,
            text: text.clone(),
            truncated: *truncated,
            lexical: *lexical,
        }
    }
}

impl From<pb::Source> for Source {
    fn from(s: pb::Source) -> Self {
        let pb::Source {
            marker,
            document_id,
            chunk_id,
            title,
            start,
            end,
            score,
            relevance,
            text,
            truncated,
            lexical,
        } = s;
        Self {
            marker: marker as usize,
            document_id,
            chunk_id,
            title,
            start: start as usize,
            end: end as usize,
            score,
            relevance,
            lexical,
            text,
            truncated,
        }
    }
}

impl From<Citation> for pb::Citation {
    fn from(c: Citation) -> Self {
        let Citation {
            marker,
            document_id,
            chunk_id,
            title,
            start,
            end,
            snippet,
        } = c;
        Self {
            marker: marker as u32,
            document_id,
            chunk_id,
            title,
            start: start as u64,
            end: end as u64,
            snippet,
        }
    }
}

impl From<pb::Citation> for Citation {
    fn from(c: pb::Citation) -> Self {
        let pb::Citation {
            marker,
            document_id,
            chunk_id,
            title,
            start,
            end,
            snippet,
        } = c;
        Self {
            marker: marker as usize,
            document_id,
            chunk_id,
            title,
            start: start as usize,
            end: end as usize,
            snippet,
        }
    }
}

impl From<SentenceSupport> for pb::SentenceSupport {
    fn from(s: SentenceSupport) -> Self {
        let SentenceSupport {
            sentence,
            supported,
            score,
            marker,
            document_id,
            start,
            end,
            missing,
            on_question,
        } = s;
        Self {
            sentence,
            supported,
            score,
            marker: marker.unwrap_or(0) as u32,
            document_id: document_id.unwrap_or_default(),
            start: start as u64,
            end: end as u64,
            missing,
            on_question,
        }
    }
}

impl From<pb::SentenceSupport> for SentenceSupport {
    fn from(s: pb::SentenceSupport) -> Self {
        let pb::SentenceSupport {
            sentence,
            supported,
            score,
            marker,
            document_id,
            start,
            end,
            missing,
            on_question,
        } = s;
        Self {
            sentence,
            supported,
            score,
            marker: (marker != 0).then_some(marker as usize),
            document_id: (!document_id.is_empty()).then_some(document_id),
            start: start as usize,
            end: end as usize,
            missing,
            on_question,
        }
    }
}

impl From<AnswerUsage> for pb::Usage {
    fn from(u: AnswerUsage) -> Self {
        let AnswerUsage {
            prompt_tokens,
            generated_tokens,
            time_to_first_token_ms,
            decode_tokens_per_s,
            prefill_tokens_per_s,
            retrieval_ms,
            queue_ms,
            total_ms,
            encoder,
            decoder,
            index_generation,
            published_generation,
            // The sources themselves travel in the answer.
            sources: _,
        } = u;
        Self {
            prompt_tokens: prompt_tokens as u32,
            generated_tokens: generated_tokens as u32,
            time_to_first_token_ms,
            decode_tokens_per_s,
            prefill_tokens_per_s,
            retrieval_ms,
            queue_ms,
            total_ms,
            encoder,
            decoder,
            index_generation,
            published_generation,
        }
    }
}

impl From<pb::Usage> for AnswerUsage {
    fn from(u: pb::Usage) -> Self {
        let pb::Usage {
            prompt_tokens,
            generated_tokens,
            time_to_first_token_ms,
            decode_tokens_per_s,
            prefill_tokens_per_s,
            retrieval_ms,
            queue_ms,
            total_ms,
            encoder,
            decoder,
            index_generation,
            published_generation,
        } = u;
        Self {
            prompt_tokens: prompt_tokens as usize,
            generated_tokens: generated_tokens as usize,
            time_to_first_token_ms,
            decode_tokens_per_s,
            prefill_tokens_per_s,
            retrieval_ms,
            queue_ms,
            total_ms,
            encoder,
            decoder,
            index_generation,
            published_generation,
            sources: 0,
        }
    }
}

impl From<Answer> for pb::AskResponse {
    fn from(a: Answer) -> Self {
        let Answer {
            answer,
            kind,
            support,
            refused,
            cited,
            citations,
            dropped_markers,
            sources,
            finish,
            unsupported_draft,
            grounding,
            usage,
        } = a;
        Self {
            answer,
            refused,
            cited,
            citations: citations.into_iter().map(Into::into).collect(),
            dropped_markers: dropped_markers as u32,
            sources: sources.iter().map(Into::into).collect(),
            finish: match finish {
                None => pb::FinishReason::Unspecified,
                Some(FinishReason::Stop) => pb::FinishReason::Stop,
                Some(FinishReason::StopSequence) => pb::FinishReason::StopSequence,
                Some(FinishReason::Length) => pb::FinishReason::Length,
            } as i32,
            unsupported_draft,
            unsupported_terms: grounding.map(|g| g.unsupported).unwrap_or_default(),
            kind: match kind {
                AnswerKind::Generated => pb::AnswerKind::Generated,
                AnswerKind::Extract => pb::AnswerKind::Extract,
                AnswerKind::Refusal => pb::AnswerKind::Refusal,
            } as i32,
            support: support.into_iter().map(Into::into).collect(),
            usage: Some(usage.into()),
        }
    }
}

impl From<pb::AskResponse> for Answer {
    fn from(r: pb::AskResponse) -> Self {
        let pb::AskResponse {
            answer,
            refused,
            cited,
            citations,
            dropped_markers,
            sources,
            finish,
            unsupported_draft,
            unsupported_terms,
            usage,
            kind,
            support,
        } = r;
        let kind = match pb::AnswerKind::try_from(kind) {
            Ok(pb::AnswerKind::Extract) => AnswerKind::Extract,
            Ok(pb::AnswerKind::Generated) => AnswerKind::Generated,
            _ if refused => AnswerKind::Refusal,
            _ => AnswerKind::Generated,
        };
        Self {
            answer,
            kind,
            support: support.into_iter().map(Into::into).collect(),
            refused,
            cited,
            citations: citations.into_iter().map(Into::into).collect(),
            dropped_markers: dropped_markers as usize,
            sources: sources.into_iter().map(Into::into).collect(),
            finish: match pb::FinishReason::try_from(finish) {
                Ok(pb::FinishReason::Stop) => Some(FinishReason::Stop),
                Ok(pb::FinishReason::StopSequence) => Some(FinishReason::StopSequence),
                Ok(pb::FinishReason::Length) => Some(FinishReason::Length),
                _ => None,
            },
            grounding: unsupported_draft.as_ref().map(|_| Grounding {
                supported: Vec::new(),
                unsupported: unsupported_terms,
            }),
            unsupported_draft,
            usage: usage.unwrap_or_default().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Search options survive the trip out and back (what the CLI sends is what the server runs).
    #[test]
    fn search_options_round_trip() {
        let p = SearchParams {
            mode: Mode::Lexical,
            top_k: 7,
            candidates: 40,
            ef: Some(33),
            fusion: Fusion::Rrf { k: 30.0 },
            filter: SearchFilter {
                doc_ids: vec!["a".into()],
                metadata: vec![("year".into(), vec!["2019".into(), "2020".into()])],
            },
            min_score: Some(0.25),
            one_per_document: true,
            mmr_lambda: Some(0.5),
            rerank: Some(20),
        };
        let back = search_params(Some((&p).into()), 10).unwrap();
        assert_eq!(format!("{back:?}"), format!("{p:?}"));
        let bad = pb::SearchOptions {
            mode: 99,
            ..Default::default()
        };
        assert!(matches!(
            search_params(Some(bad), 10),
            Err(Error::InvalidInput(_))
        ));
    }

    /// An answer request survives the trip out and back (what the CLI sends is what the server
    /// answers).
    #[test]
    fn ask_requests_round_trip() {
        let mut r = AnswerRequest::new("Which bridge has seven arches?");
        r.history = vec![Turn {
            question: "q0".into(),
            answer: "a0".into(),
        }];
        r.max_tokens = 77;
        r.sampling = Some(SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: Some(5),
            ..SamplingParams::default()
        });
        r.stop = vec!["END".into()];
        r.min_relevance = Some(0.3);
        let (c, back) = ask(ask_request("bridges", &r), 4, 4096).unwrap();
        assert_eq!(c, "bridges");
        assert_eq!(format!("{back:?}"), format!("{r:?}"));
    }

    /// An answer survives the trip out and back, every field the API carries.
    #[test]
    fn answers_round_trip() {
        let a = Answer {
            answer: "It rests on “seven arches” [1].".into(),
            kind: AnswerKind::Extract,
            support: vec![SentenceSupport {
                sentence: "It rests on seven arches.".into(),
                supported: true,
                score: 0.9,
                marker: Some(1),
                document_id: Some("bridge".into()),
                start: 3,
                end: 30,
                missing: vec!["granite".into()],
                on_question: false,
            }],
            refused: false,
            cited: true,
            citations: vec![Citation {
                marker: 1,
                document_id: "bridge".into(),
                chunk_id: 4,
                title: "Kessel Bridge".into(),
                start: 3,
                end: 30,
                snippet: "seven arches".into(),
            }],
            dropped_markers: 2,
            sources: vec![Source {
                marker: 1,
                document_id: "bridge".into(),
                chunk_id: 4,
                title: "Kessel Bridge".into(),
                start: 0,
                end: 40,
                score: 0.7,
                relevance: 0.6,
                lexical: 0.5,
                text: "The bridge rests on seven arches.".into(),
                truncated: true,
            }],
            finish: Some(FinishReason::StopSequence),
            unsupported_draft: Some("draft".into()),
            grounding: Some(Grounding {
                supported: Vec::new(),
                unsupported: vec!["granite".into()],
            }),
            usage: AnswerUsage {
                prompt_tokens: 100,
                generated_tokens: 9,
                time_to_first_token_ms: 12.5,
                decode_tokens_per_s: 40.0,
                prefill_tokens_per_s: 900.0,
                retrieval_ms: 3.0,
                queue_ms: 0.5,
                total_ms: 20.0,
                encoder: "enc".into(),
                decoder: "dec".into(),
                index_generation: 3,
                published_generation: "gen-3-seq-41".into(),
                sources: 0,
            },
        };
        let back = Answer::from(pb::AskResponse::from(a.clone()));
        assert_eq!(format!("{back:?}"), format!("{a:?}"));
    }

    /// Metadata values travel as text, and a stored document's hash does not depend on the way
    /// its metadata arrived.
    #[test]
    fn metadata_travels_as_text() {
        let m: Metadata = serde_json::from_str(r#"{"year": 2019, "lab": "north"}"#).unwrap();
        let pb = metadata_to_pb(&m);
        assert_eq!(pb["year"], "2019");
        assert_eq!(pb["lab"], "north");
        let back = metadata_from_pb(pb);
        assert_eq!(
            ragd_core::content_hash("t", "x", &back),
            ragd_core::content_hash("t", "x", &m)
        );
    }
}
