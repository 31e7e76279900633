//! proto ⇄ domain conversions, with the per-field checks the engine does not do itself. Public
//! so that the CLI's client mode converts metadata the same way.

use crate::error::{Error, invalid};
use ragd_core::{ErrorKind, Metadata};
use ragd_engine::{
    Answer, AnswerKind, AnswerRequest, ChunkSettings, Citation, CollectionSettings,
    CollectionStats, DocResult, FinishReason, Format, Fusion, Hit, HnswSettings, Mode, ParsedDoc,
    SamplingParams, SearchFilter, SearchParams, Source, StoredDocument, Turn, WriteOutcome,
};
use ragd_proto::v1 as pb;

/// Longest document id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest document source (path or URL) accepted.
pub const MAX_SOURCE_BYTES: usize = 4096;

pub fn search_params(
    o: Option<pb::SearchOptions>,
    default_top_k: usize,
) -> Result<SearchParams, Error> {
    let o = o.unwrap_or_default();
    let d = SearchParams::default();
    let mode = match pb::SearchMode::try_from(o.mode) {
        Ok(pb::SearchMode::Unspecified | pb::SearchMode::Hybrid) => Mode::Hybrid,
        Ok(pb::SearchMode::Dense) => Mode::Dense,
        Ok(pb::SearchMode::Lexical) => Mode::Lexical,
        Err(_) => return Err(invalid(format!("unknown search mode {}", o.mode))),
    };
    let fusion = match o.fusion.and_then(|f| f.method) {
        None => d.fusion,
        Some(pb::fusion::Method::Rrf(r)) => Fusion::Rrf { k: r.k },
        Some(pb::fusion::Method::Convex(c)) => Fusion::Convex {
            dense_weight: c.dense_weight,
        },
    };
    let filter = o.filter.unwrap_or_default();
    let mut metadata: Vec<(String, Vec<String>)> = filter
        .metadata
        .into_iter()
        .map(|(k, v)| (k, v.values))
        .collect();
    metadata.sort();
    if let Some((k, _)) = metadata.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
        return Err(invalid(format!(
            "filter key {k:?}: keys must be non-empty and have at least one value"
        )));
    }
    Ok(SearchParams {
        mode,
        top_k: if o.top_k == 0 {
            default_top_k
        } else {
            o.top_k as usize
        },
        candidates: if o.candidates == 0 {
            d.candidates
        } else {
            o.candidates as usize
        },
        ef: (o.ef != 0).then_some(o.ef as usize),
        fusion,
        filter: SearchFilter {
            doc_ids: filter.document_ids,
            metadata,
        },
        min_score: o.min_score,
        one_per_document: o.one_per_document,
        mmr_lambda: o.mmr_lambda,
    })
}

/// Metadata as the API carries it: strings as they are, other JSON values as JSON text.
pub fn metadata_to_pb(m: &Metadata) -> std::collections::HashMap<String, String> {
    m.iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The API's metadata map as stored metadata (every value a JSON string).
pub fn metadata_from_pb(m: std::collections::HashMap<String, String>) -> Metadata {
    m.into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect()
}

pub fn hit(h: Hit) -> pb::Hit {
    pb::Hit {
        chunk_id: h.chunk_id,
        metadata: metadata_to_pb(&h.metadata),
        document_id: h.doc_id,
        title: h.title,
        text: h.text,
        start: h.start as u64,
        end: h.end as u64,
        dense_score: h.dense_score,
        lexical_score: h.lexical_score,
        score: h.score,
    }
}

/// A proto document → a parsed document, or the reason it cannot be stored (a per-document
/// failure, not a failed call).
pub fn document(d: pb::DocumentInput, max_bytes: usize) -> Result<ParsedDoc, (String, String)> {
    let id = d.id.clone();
    let fail = |why: String| (id.clone(), why);
    if d.id.trim().is_empty() {
        return Err(fail("the document id is empty".into()));
    }
    if d.id.len() > MAX_ID_BYTES {
        return Err(fail(format!(
            "the document id is {} bytes; the limit is {MAX_ID_BYTES}",
            d.id.len()
        )));
    }
    if d.content.len() > max_bytes {
        return Err(fail(format!(
            "the content is {} bytes; the limit is {max_bytes}",
            d.content.len()
        )));
    }
    if d.source.len() > MAX_SOURCE_BYTES {
        return Err(fail(format!(
            "the source is {} bytes; the limit is {MAX_SOURCE_BYTES}",
            d.source.len()
        )));
    }
    let metadata = metadata_from_pb(d.metadata);
    ragd_core::check_bounds(&d.title, &metadata).map_err(fail)?;
    let format = match pb::DocumentFormat::try_from(d.format) {
        Ok(pb::DocumentFormat::Unspecified | pb::DocumentFormat::Text) => Format::Text,
        Ok(pb::DocumentFormat::Markdown) => Format::Markdown,
        Ok(pb::DocumentFormat::Html) => Format::Html,
        Ok(pb::DocumentFormat::Pdf) => Format::Pdf,
        Err(_) => return Err(fail(format!("unknown document format {}", d.format))),
    };
    let source = if d.source.is_empty() {
        "grpc"
    } else {
        &d.source
    };
    let mut parsed = ragd_engine::parse_bytes(&d.id, source, &d.id, format, d.content, max_bytes)
        .map_err(fail)?;
    if !d.title.trim().is_empty() {
        parsed.doc.title = d.title;
    }
    parsed.doc.metadata = metadata;
    Ok(parsed)
}

pub fn status(o: WriteOutcome) -> pb::DocumentStatus {
    match o {
        WriteOutcome::Added => pb::DocumentStatus::Added,
        WriteOutcome::Unchanged => pb::DocumentStatus::Unchanged,
        WriteOutcome::Replaced => pb::DocumentStatus::Replaced,
        WriteOutcome::Deleted | WriteOutcome::NotFound => pb::DocumentStatus::Unspecified,
    }
}

pub fn result(r: DocResult) -> pb::DocumentResult {
    pb::DocumentResult {
        id: r.id,
        status: status(r.outcome) as i32,
        error: String::new(),
        chunks: r.chunks as u32,
    }
}

pub fn failed(id: String, why: String) -> pb::DocumentResult {
    pb::DocumentResult {
        id,
        status: pb::DocumentStatus::Failed as i32,
        error: why,
        chunks: 0,
    }
}

pub fn stored_document(d: StoredDocument) -> pb::Document {
    let StoredDocument {
        id,
        record: rec,
        text,
    } = d;
    let (text, chunks) = text.unwrap_or_default();
    let chunks = chunks
        .into_iter()
        .map(|(id, ch)| pb::Chunk {
            chunk_id: id,
            start: ch.span.start as u64,
            end: ch.span.end as u64,
            tokens: ch.span.tokens as u32,
        })
        .collect();
    pb::Document {
        id,
        metadata: metadata_to_pb(&rec.metadata),
        title: rec.title,
        source: rec.source,
        content_hash: rec.hash,
        text,
        chunks,
    }
}

pub fn chunking(c: &ChunkSettings) -> pb::ChunkingSettings {
    pb::ChunkingSettings {
        max_tokens: c.max_tokens as u32,
        min_tokens: c.min_tokens as u32,
        overlap_tokens: c.overlap_tokens as u32,
        title_in_embedding: c.title_in_embedding,
    }
}

/// Proto chunking over `base`: zero fields keep the base value (overlap 0 is taken as given).
pub fn chunking_from(p: &pb::ChunkingSettings, base: &ChunkSettings) -> ChunkSettings {
    ChunkSettings {
        max_tokens: if p.max_tokens == 0 {
            base.max_tokens
        } else {
            p.max_tokens as usize
        },
        min_tokens: if p.min_tokens == 0 {
            base.min_tokens
        } else {
            p.min_tokens as usize
        },
        overlap_tokens: p.overlap_tokens as usize,
        title_in_embedding: p.title_in_embedding,
    }
}

pub fn hnsw_from(p: &pb::HnswSettings, base: &HnswSettings) -> HnswSettings {
    let pick = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    HnswSettings {
        m: pick(p.m, base.m),
        ef_construction: pick(p.ef_construction, base.ef_construction),
        ef_search: pick(p.ef_search, base.ef_search),
    }
}

fn settings(s: &CollectionSettings) -> pb::CollectionSettings {
    pb::CollectionSettings {
        encoder: s.encoder.clone(),
        dim: s.dim as u32,
        chunking: Some(chunking(&s.chunking)),
        hnsw: Some(pb::HnswSettings {
            m: s.hnsw.m as u32,
            ef_construction: s.hnsw.ef_construction as u32,
            ef_search: s.hnsw.ef_search as u32,
        }),
    }
}

pub fn collection(s: CollectionStats) -> pb::Collection {
    pb::Collection {
        settings: Some(settings(&s.settings)),
        name: s.name,
        documents: s.documents,
        chunks: s.chunks,
        tombstones: s.tombstones,
        generation: s.generation,
        bytes: s.bytes,
        sequence: s.seq,
    }
}

/// A collection that could not be opened, with a reason that names the kind of failure but no
/// internals (paths, OS errors: those go to the server log).
pub fn unavailable(name: String, e: &Error) -> pb::UnavailableCollection {
    let reason = match e.kind() {
        ErrorKind::Internal => "damaged or unreadable (see the server log)".to_string(),
        ErrorKind::StorageFull => "the server's disk is full".to_string(),
        _ => e.to_string(),
    };
    pb::UnavailableCollection { name, reason }
}

/// An AskRequest → the engine's request (deadline set by the caller).
pub fn ask(
    r: pb::AskRequest,
    max_sources: usize,
    max_query_bytes: usize,
) -> Result<(String, AnswerRequest), Error> {
    if r.question.len() > max_query_bytes {
        return Err(invalid(format!(
            "the question is {} bytes; the limit is {max_query_bytes}",
            r.question.len()
        )));
    }
    let mut req = AnswerRequest::new(r.question);
    req.search = search_params(r.retrieval, max_sources)?;
    req.history = r
        .history
        .into_iter()
        .map(|t| Turn {
            question: t.question,
            answer: t.answer,
        })
        .collect();
    let g = r.generation.unwrap_or_default();
    if g.max_tokens != 0 {
        req.max_tokens = g.max_tokens as usize;
    }
    let custom = g.temperature.is_some()
        || g.top_p.is_some()
        || g.top_k.is_some()
        || g.seed.is_some()
        || g.repeat_penalty.is_some();
    if custom {
        let d = SamplingParams::default();
        req.sampling = Some(SamplingParams {
            temperature: g.temperature.unwrap_or(d.temperature),
            top_p: g.top_p.unwrap_or(d.top_p),
            top_k: g.top_k.map_or(d.top_k, |k| k as usize),
            seed: g.seed,
            repeat_penalty: g
                .repeat_penalty
                .unwrap_or(ragd_engine::AnswerConfig::default().repeat_penalty),
            ..d
        });
    }
    req.stop = g.stop;
    req.min_relevance = r.min_relevance;
    Ok((r.collection, req))
}

pub fn source(s: &Source) -> pb::Source {
    pb::Source {
        marker: s.marker as u32,
        document_id: s.document_id.clone(),
        chunk_id: s.chunk_id,
        title: s.title.clone(),
        start: s.start as u64,
        end: s.end as u64,
        score: s.score,
        relevance: s.relevance,
        text: s.text.clone(),
        truncated: s.truncated,
        lexical: s.lexical,
    }
}

fn citation(c: Citation) -> pb::Citation {
    pb::Citation {
        marker: c.marker as u32,
        document_id: c.document_id,
        chunk_id: c.chunk_id,
        title: c.title,
        start: c.start as u64,
        end: c.end as u64,
        snippet: c.snippet,
    }
}

pub fn answer(a: Answer) -> pb::AskResponse {
    let u = a.usage;
    pb::AskResponse {
        answer: a.answer,
        refused: a.refused,
        cited: a.cited,
        citations: a.citations.into_iter().map(citation).collect(),
        dropped_markers: a.dropped_markers as u32,
        sources: a.sources.iter().map(source).collect(),
        finish: match a.finish {
            None => pb::FinishReason::Unspecified,
            Some(FinishReason::Stop) => pb::FinishReason::Stop,
            Some(FinishReason::StopSequence) => pb::FinishReason::StopSequence,
            Some(FinishReason::Length) => pb::FinishReason::Length,
        } as i32,
        unsupported_draft: a.unsupported_draft,
        unsupported_terms: a.grounding.map(|g| g.unsupported).unwrap_or_default(),
        kind: match a.kind {
            AnswerKind::Generated => pb::AnswerKind::Generated,
            AnswerKind::Extract => pb::AnswerKind::Extract,
            AnswerKind::Refusal => pb::AnswerKind::Refusal,
        } as i32,
        support: a
            .support
            .into_iter()
            .map(|s| pb::SentenceSupport {
                sentence: s.sentence,
                supported: s.supported,
                score: s.score,
                marker: s.marker.unwrap_or(0) as u32,
                document_id: s.document_id.unwrap_or_default(),
                start: s.start as u64,
                end: s.end as u64,
                missing: s.missing,
                on_question: s.on_question,
            })
            .collect(),
        usage: Some(pb::Usage {
            prompt_tokens: u.prompt_tokens as u32,
            generated_tokens: u.generated_tokens as u32,
            time_to_first_token_ms: u.time_to_first_token_ms,
            decode_tokens_per_s: u.decode_tokens_per_s,
            prefill_tokens_per_s: u.prefill_tokens_per_s,
            retrieval_ms: u.retrieval_ms,
            queue_ms: u.queue_ms,
            total_ms: u.total_ms,
            encoder: u.encoder,
            decoder: u.decoder,
            index_generation: u.index_generation,
        }),
    }
}
