//! Offline rebuild: optionally re-chunk (new chunking settings) and/or re-embed every document
//! from the DocStore's raw text, then write a new index generation and switch to it.
//!
//! Re-chunked documents keep the vectors of chunks whose embedded text did not change, so a
//! rebuild that only tweaks overlap re-embeds only what moved. Changed chunks go to the DocStore
//! through ordinary logged writes: if the process dies midway, the collection still opens
//! consistent (the log replays into the old generation) and the rebuild can simply be rerun.

use crate::cancel::Cancel;
use crate::chunk::{Chunker, embed_text};
use crate::error::{Error, Result};
use ragd_core::{ChunkSpan, DocumentInput};
use ragd_models::{Encode, Precision};
use ragd_store::{ChunkSettings, Collection, DocWrite};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// What to redo.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Cut every document again (with `chunking` if given, else the collection's settings).
    pub rechunk: bool,
    /// Embed every chunk again.
    pub reembed: bool,
    /// New chunking settings (implies `rechunk`).
    pub chunking: Option<ChunkSettings>,
    /// New encoder precision (implies `reembed`): every chunk is embedded again at it, and
    /// queries follow once the rebuild is done.
    pub encoder_precision: Option<Precision>,
    /// Documents per DocStore transaction.
    pub batch_documents: usize,
    /// Stops the re-chunking/re-embedding pass between documents; what it wrote so far is
    /// ordinary logged writes (the collection stays consistent) and the rebuild can be rerun.
    pub cancel: Cancel,
}

/// `ragd rebuild --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildSummary {
    /// The new generation.
    pub generation: u64,
    /// The one it replaced.
    pub previous_generation: u64,
    /// Documents in it.
    pub documents: u64,
    /// Chunks in it.
    pub chunks: u64,
    /// Chunks embedded by this rebuild.
    pub embedded: u64,
    /// Chunks whose stored vector was reused.
    pub reused: u64,
    /// Tombstoned chunks dropped.
    pub dropped_tombstones: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Rebuilds `collection`. `embedder` is needed (and must be the collection's encoder) when
/// re-chunking or re-embedding.
pub fn rebuild(
    collection: &Collection,
    embedder: Option<&dyn Encode>,
    opts: &RebuildOptions,
    mut progress: impl FnMut(&str, u64, u64),
) -> Result<RebuildSummary> {
    let t0 = Instant::now();
    let rechunk = opts.rechunk || opts.chunking.is_some();
    let reembed = opts.reembed || opts.encoder_precision.is_some();
    let (mut embedded, mut reused) = (0u64, 0u64);
    if rechunk || reembed {
        let embedder = embedder.ok_or_else(|| {
            Error::InvalidInput("re-chunking or re-embedding needs the encoder".into())
        })?;
        let mut settings = collection.settings()?;
        if let Some(c) = opts.chunking {
            settings.chunking = c;
        }
        if let Some(p) = opts.encoder_precision {
            settings.encoder_precision = p;
            // Until the new generation is live, chunks not reached yet keep the old precision.
            settings.reembedding = true;
        }
        // Checked before anything is saved: a rebuild refused for its settings changes nothing.
        let chunker = Chunker::for_collection(&settings, embedder)?;
        if opts.chunking.is_some() || opts.encoder_precision.is_some() {
            collection.set_settings(&settings)?;
        }
        let ids = collection.document_ids()?;
        let total = ids.len() as u64;
        for (n, group) in ids.chunks(opts.batch_documents.max(1)).enumerate() {
            let mut writes = Vec::with_capacity(group.len());
            let mut texts = Vec::new();
            let mut plans = Vec::with_capacity(group.len());
            for id in group {
                let Some((rec, text)) = collection.document(id)? else {
                    continue;
                };
                let old_chunks = collection.chunks(&rec.chunks)?;
                let old_vectors = collection.vectors(&rec.chunks)?;
                let doc = DocumentInput {
                    id: id.clone(),
                    source: rec.source,
                    title: rec.title,
                    text,
                    metadata: rec.metadata,
                };
                let markdown = doc.source.ends_with(".md") || doc.source.ends_with(".markdown");
                opts.cancel.check()?;
                let spans: Vec<ChunkSpan> = if rechunk {
                    chunker.chunk_until(&doc.title, &doc.text, markdown, &opts.cancel)?
                } else {
                    old_chunks.iter().map(|(_, c)| c.span.clone()).collect()
                };
                let prefix = chunker.title_prefix(&doc.title);
                // Vectors by embedded text, reusable unless re-embedding.
                let mut known: HashMap<String, Vec<f32>> = HashMap::new();
                if !reembed {
                    let by_id: HashMap<u64, Vec<f32>> = old_vectors.into_iter().collect();
                    for (cid, c) in &old_chunks {
                        if let Some(v) = by_id.get(cid) {
                            known.insert(embed_text(prefix, &c.span.text), v.clone());
                        }
                    }
                }
                let mut slots = Vec::with_capacity(spans.len());
                for s in &spans {
                    let t = embed_text(prefix, &s.text);
                    match known.get(&t) {
                        Some(v) => {
                            reused += 1;
                            slots.push(Ok(v.clone()));
                        }
                        None => {
                            slots.push(Err(texts.len()));
                            texts.push(t);
                        }
                    }
                }
                plans.push((doc, spans, slots));
            }
            let fresh = embedder.encode(texts)?;
            embedded += fresh.len() as u64;
            for (doc, mut spans, slots) in plans {
                let vectors = slots
                    .into_iter()
                    .zip(spans.iter_mut())
                    .map(|(s, span)| match s {
                        Ok(v) => v,
                        Err(i) => {
                            span.tokens = fresh[i].tokens;
                            fresh[i].vector.clone()
                        }
                    })
                    .collect();
                writes.push(DocWrite::Upsert {
                    doc,
                    chunks: spans,
                    vectors,
                    force: true,
                });
            }
            collection.write_docstore_only(writes)?;
            progress(
                "chunking and embedding",
                ((n + 1) * opts.batch_documents.max(1)).min(ids.len()) as u64,
                total,
            );
        }
    }
    let report = collection.rebuild(|done, total| progress("indexing", done, total))?;
    if opts.encoder_precision.is_some() {
        let mut settings = collection.settings()?;
        settings.reembedding = false;
        collection.set_settings(&settings)?;
    }
    Ok(RebuildSummary {
        generation: report.generation,
        previous_generation: report.previous_generation,
        documents: report.documents,
        chunks: report.chunks,
        embedded,
        reused,
        dropped_tombstones: report.dropped_tombstones,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
