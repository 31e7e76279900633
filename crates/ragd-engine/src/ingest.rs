//! The ingest pipeline: parse → skip unchanged → chunk → embed → DocStore commit → indexes.
//!
//! Documents flow in batches (bounded memory whatever the corpus size). A batch is acknowledged
//! when its DocStore transaction commits; the derived indexes are checkpointed every so often and
//! at the end, so an interrupted ingest loses nothing that was acknowledged and replays at most a
//! checkpoint interval of index work on the next open. Runs on the caller's thread; the encoder's
//! GEMMs use rayon's pool.

use crate::cancel::Cancel;
use crate::chunk::{Chunker, embed_text};
use crate::error::Result;
use crate::parse::{
    Failure, ParsedDoc, SourceOptions, collect_sources, estimate_documents, read_source,
};
use ragd_models::Encode;
use ragd_store::{Collection, DocWrite, WriteOutcome};
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Chunks per encoder call within a batch (a cancelled ingest stops after at most one).
const EMBED_SLICE: usize = 256;

/// Ingest knobs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Where documents come from.
    pub sources: SourceOptions,
    /// Documents per DocStore transaction.
    pub batch_documents: usize,
    /// Checkpoint the derived indexes at least this often.
    pub checkpoint_every: Duration,
    /// Stops the ingest between documents (and inside a long document's chunking): batches
    /// already committed stay acknowledged, the rest is not written.
    pub cancel: Cancel,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            sources: SourceOptions::default(),
            batch_documents: 64,
            checkpoint_every: Duration::from_secs(60),
            cancel: Cancel::default(),
        }
    }
}

/// Seconds spent per pipeline stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseSeconds {
    /// Reading and parsing files.
    pub parse: f64,
    /// Hash lookups and chunking.
    pub chunk: f64,
    /// Encoder forward passes.
    pub embed: f64,
    /// Adding to the HNSW graph and the BM25 writer.
    pub index: f64,
    /// DocStore transactions and index checkpoints (fsync included).
    pub commit: f64,
}

/// `ragd ingest --json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// New documents.
    pub added: u64,
    /// Documents with an unchanged content hash (not re-embedded).
    pub unchanged: u64,
    /// Documents whose content changed.
    pub replaced: u64,
    /// Documents that could not be stored, with the reason.
    pub failed: Vec<Failure>,
    /// Chunks written.
    pub chunks: u64,
    /// Encoder tokens embedded.
    pub tokens: u64,
    /// Wall time.
    pub seconds: f64,
    /// Documents processed (added, unchanged, replaced) per second.
    pub documents_per_s: f64,
    /// Chunks written per second.
    pub chunks_per_s: f64,
    /// Encoder tokens per second.
    pub tokens_per_s: f64,
    /// Where the time went.
    pub phases: PhaseSeconds,
}

/// What happened to one document of a batch ([`Ingestor::ingest_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocResult {
    /// Document id.
    pub id: String,
    /// Added, unchanged or replaced.
    pub outcome: WriteOutcome,
    /// Chunks written (0 when unchanged).
    pub chunks: u64,
}

/// Progress as the pipeline reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Documents expected (JSONL lines count one each).
    pub total: u64,
    /// Documents done (stored, skipped or failed).
    pub documents: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Tokens embedded.
    pub tokens: u64,
}

/// Where progress goes (a progress bar, a log, nothing).
pub trait ProgressSink {
    /// Called after every batch and on every failure.
    fn update(&mut self, p: &Progress);
}

impl ProgressSink for () {
    fn update(&mut self, _: &Progress) {}
}

/// One ingest run into one collection.
pub struct Ingestor<'a> {
    collection: &'a Collection,
    embedder: &'a dyn Encode,
    chunker: Chunker,
    opts: IngestOptions,
}

impl std::fmt::Debug for Ingestor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("collection", &self.collection.name())
            .finish()
    }
}

struct Run<'r, 'a> {
    ing: &'r Ingestor<'a>,
    sink: &'r mut dyn ProgressSink,
    pending: Vec<ParsedDoc>,
    pending_ids: HashSet<String>,
    report: IngestReport,
    progress: Progress,
    flush_seconds: f64,
    /// Per-document results, in input order, when the caller wants them.
    results: Option<Vec<DocResult>>,
    last_checkpoint: Instant,
}

impl<'a> Ingestor<'a> {
    /// An ingestor for `collection` using `embedder`, which must be the collection's encoder.
    pub fn new(
        collection: &'a Collection,
        embedder: &'a dyn Encode,
        opts: IngestOptions,
    ) -> Result<Self> {
        let chunker = Chunker::for_collection(&collection.settings()?, embedder)?;
        Ok(Self {
            collection,
            embedder,
            chunker,
            opts,
        })
    }

    /// Ingests every document under `paths`.
    pub fn ingest_paths(
        &self,
        paths: &[PathBuf],
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let t0 = Instant::now();
        let sources = collect_sources(paths, &self.opts.sources)?;
        let mut run = Run::new(self, sink);
        run.progress.total = sources.iter().map(estimate_documents).sum();
        for src in &sources {
            read_source(src, &self.opts.sources, &mut |r| run.accept(r))?;
        }
        run.finish(t0)
    }

    /// Stores one batch of parsed documents (one DocStore transaction, or one per repeated id)
    /// and reports each document's outcome in input order. Durable on return; the indexes are
    /// updated but not checkpointed (see `Collection::refresh` for BM25 visibility).
    pub fn ingest_batch(&self, docs: Vec<ParsedDoc>) -> Result<Vec<DocResult>> {
        let mut sink = ();
        let mut run = Run::new(self, &mut sink);
        run.results = Some(Vec::with_capacity(docs.len()));
        let n = docs.len();
        for d in docs {
            // A repeated id is a second write to one document: it goes in a later transaction.
            if run.pending_ids.contains(&d.doc.id) {
                run.flush()?;
            }
            run.pending_ids.insert(d.doc.id.clone());
            run.pending.push(d);
        }
        run.flush()?;
        let results = run.results.take().unwrap_or_default();
        debug_assert_eq!(results.len(), n);
        Ok(results)
    }

    /// Ingests documents already in memory (the server's upsert path).
    pub fn ingest_documents(
        &self,
        docs: Vec<ParsedDoc>,
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let t0 = Instant::now();
        let mut run = Run::new(self, sink);
        run.progress.total = docs.len() as u64;
        for d in docs {
            run.accept(Ok(d))?;
        }
        run.finish(t0)
    }
}

impl<'r, 'a> Run<'r, 'a> {
    fn new(ing: &'r Ingestor<'a>, sink: &'r mut dyn ProgressSink) -> Self {
        Self {
            ing,
            sink,
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            report: IngestReport::default(),
            progress: Progress::default(),
            flush_seconds: 0.0,
            last_checkpoint: Instant::now(),
            results: None,
        }
    }

    fn accept(&mut self, r: std::result::Result<ParsedDoc, Failure>) -> Result<()> {
        match r {
            Err(f) => {
                self.report.failed.push(f);
                self.progress.documents += 1;
                self.sink.update(&self.progress);
            }
            Ok(doc) => {
                // A repeated id in one batch would be two writes to one document in one
                // transaction: flush first, so the later occurrence replaces the earlier.
                if self.pending.len() >= self.ing.opts.batch_documents.max(1)
                    || self.pending_ids.contains(&doc.doc.id)
                {
                    self.flush()?;
                }
                self.pending_ids.insert(doc.doc.id.clone());
                self.pending.push(doc);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let t_flush = Instant::now();
        let batch = std::mem::take(&mut self.pending);
        self.pending_ids.clear();
        let ing = self.ing;
        let phases = &mut self.report.phases;

        let t = Instant::now();
        let ids: Vec<&str> = batch.iter().map(|p| p.doc.id.as_str()).collect();
        let stored = ing.collection.hashes(&ids)?;
        let mut work = Vec::with_capacity(batch.len());
        // Per-document results by input position (filled below when recording).
        let mut slots: Vec<Option<DocResult>> = vec![None; batch.len()];
        let mut positions = Vec::with_capacity(batch.len());
        for (i, (p, old)) in batch.into_iter().zip(stored).enumerate() {
            if old.as_deref() == Some(p.doc.content_hash().as_str()) {
                self.report.unchanged += 1;
                self.progress.documents += 1;
                slots[i] = Some(DocResult {
                    id: p.doc.id.clone(),
                    outcome: WriteOutcome::Unchanged,
                    chunks: 0,
                });
                continue;
            }
            positions.push((i, p.doc.id.clone()));
            let chunks =
                ing.chunker
                    .chunk_until(&p.doc.title, &p.doc.text, p.markdown, &ing.opts.cancel)?;
            work.push((p, chunks));
        }
        phases.chunk += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let texts: Vec<String> = work
            .iter()
            .flat_map(|(p, chunks)| {
                let prefix = ing.chunker.title_prefix(&p.doc.title);
                chunks.iter().map(move |c| embed_text(prefix, &c.text))
            })
            .collect();
        // In slices, so that a cancelled job stops within one slice's forward passes.
        let mut embedded = Vec::with_capacity(texts.len());
        let mut texts = texts.into_iter().peekable();
        while texts.peek().is_some() {
            ing.opts.cancel.check()?;
            let slice: Vec<String> = texts.by_ref().take(EMBED_SLICE).collect();
            embedded.extend(ing.embedder.encode(slice)?);
        }
        let mut embeddings = embedded.into_iter();
        phases.embed += t.elapsed().as_secs_f64();

        let mut writes = Vec::with_capacity(work.len());
        for (p, mut chunks) in work {
            let mut vectors = Vec::with_capacity(chunks.len());
            for c in chunks.iter_mut() {
                let Some(e) = embeddings.next() else { break };
                if e.truncated {
                    tracing::warn!(doc = %p.doc.id, "a chunk was truncated by the encoder");
                }
                c.tokens = e.tokens;
                self.report.tokens += e.tokens as u64;
                self.progress.tokens += e.tokens as u64;
                vectors.push(e.vector);
            }
            writes.push(DocWrite::Upsert {
                doc: p.doc,
                chunks,
                vectors,
                force: false,
            });
        }
        let chunk_counts: Vec<u64> = writes
            .iter()
            .map(|w| match w {
                DocWrite::Upsert { chunks, .. } => chunks.len() as u64,
                DocWrite::Delete { .. } => 0,
            })
            .collect();
        let w = ing.collection.write(writes)?;
        phases.commit += w.commit_seconds;
        phases.index += w.index_seconds;
        for ((o, n), (i, id)) in w.outcomes.iter().zip(chunk_counts).zip(positions) {
            let written = matches!(o, WriteOutcome::Added | WriteOutcome::Replaced);
            slots[i] = Some(DocResult {
                id,
                outcome: *o,
                chunks: if written { n } else { 0 },
            });
            match o {
                WriteOutcome::Added => self.report.added += 1,
                WriteOutcome::Replaced => self.report.replaced += 1,
                WriteOutcome::Unchanged => self.report.unchanged += 1,
                WriteOutcome::Deleted | WriteOutcome::NotFound => {}
            }
            if matches!(o, WriteOutcome::Added | WriteOutcome::Replaced) {
                self.report.chunks += n;
                self.progress.chunks += n;
            }
            self.progress.documents += 1;
        }
        if let Some(results) = &mut self.results {
            results.extend(slots.into_iter().flatten());
        }
        // Everything up to here is durable: say so (the SIGKILL test relies on this line).
        tracing::info!(target: "ragd::ingest", documents = self.progress.documents, "acknowledged");
        if self.last_checkpoint.elapsed() >= ing.opts.checkpoint_every {
            let t = Instant::now();
            ing.collection.checkpoint()?;
            self.report.phases.commit += t.elapsed().as_secs_f64();
            self.last_checkpoint = Instant::now();
        }
        self.sink.update(&self.progress);
        self.flush_seconds += t_flush.elapsed().as_secs_f64();
        Ok(())
    }

    fn finish(mut self, t0: Instant) -> Result<IngestReport> {
        self.flush()?;
        let t = Instant::now();
        self.ing.collection.checkpoint()?;
        let final_checkpoint = t.elapsed().as_secs_f64();
        self.report.phases.commit += final_checkpoint;
        let mut r = self.report;
        r.seconds = t0.elapsed().as_secs_f64();
        // Parsing is what the run did outside batch processing.
        r.phases.parse = (r.seconds - self.flush_seconds - final_checkpoint).max(0.0);
        let per = |n: u64| {
            if r.seconds > 0.0 {
                n as f64 / r.seconds
            } else {
                0.0
            }
        };
        r.documents_per_s = per(r.added + r.unchanged + r.replaced);
        r.chunks_per_s = per(r.chunks);
        r.tokens_per_s = per(r.tokens);
        Ok(r)
    }
}
