//! The ingest pipeline: parse → skip unchanged → chunk → embed → DocStore commit → indexes.
//!
//! Documents flow in batches (bounded memory whatever the corpus size). A batch is acknowledged
//! when its DocStore transaction commits; the derived indexes are checkpointed every so often and
//! at the end, so an interrupted ingest loses nothing that was acknowledged and replays at most a
//! checkpoint interval of index work on the next open.
//!
//! [`Ingestor::ingest_paths`] and [`Ingestor::ingest_documents`] run three stages at once, joined
//! by channels that hold one batch each: a parse thread (reading, parsing, the unchanged-hash
//! lookup and chunking), an embed thread (the encoder), and the caller's thread (DocStore commit,
//! index inserts, checkpoints, progress). So the next batch is parsed and chunked while this one
//! is embedded, and the previous one commits meanwhile; at most four batches are in memory. The
//! report says how long each stage was busy and how long the encoder waited on either side.
//! [`Ingestor::ingest_batch`] (one batch, per-document results) runs the same steps in turn.

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

/// Seconds spent per pipeline stage. The stages run at once, so these add up to more than the
/// wall time when they overlap.
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

/// How the stages of a pipelined ingest overlapped.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PipelineReport {
    /// Share of the wall time the encoder was working (embed seconds / wall seconds).
    pub encoder_busy: f64,
    /// Seconds the encoder waited for a parsed and chunked batch (input starved it).
    pub encoder_waiting_for_input: f64,
    /// Seconds the encoder waited to hand over an embedded batch (commits held it up).
    pub encoder_waiting_for_commit: f64,
    /// Busy seconds of all stages / wall seconds: 1 when nothing overlapped.
    pub overlap: f64,
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
    /// How the stages overlapped.
    pub pipeline: PipelineReport,
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

    /// Ingests every document under `paths`, parsing, embedding and committing at once.
    pub fn ingest_paths(
        &self,
        paths: &[PathBuf],
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let t0 = Instant::now();
        let sources = collect_sources(paths, &self.opts.sources)?;
        let mut run = Run::new(self, sink);
        run.progress.total = sources.iter().map(estimate_documents).sum();
        let opts = &self.opts.sources;
        run.pipeline(
            t0,
            Box::new(move |emit| {
                for src in &sources {
                    read_source(src, opts, emit)?;
                }
                Ok(())
            }),
        )
    }

    /// Stores one batch of parsed documents (one DocStore transaction, or one per repeated id)
    /// and reports each document's outcome in input order. Durable on return; the indexes are
    /// updated but not checkpointed (see `Collection::refresh` for BM25 visibility).
    pub fn ingest_batch(&self, docs: Vec<ParsedDoc>) -> Result<Vec<DocResult>> {
        let mut sink = ();
        let mut run = Run::new(self, &mut sink);
        run.results = Some(Vec::with_capacity(docs.len()));
        let n = docs.len();
        // A repeated id is a second write to one document: it goes in a later transaction.
        let mut batcher = Batcher::default();
        for d in docs {
            if let Some(batch) = batcher.push(d, usize::MAX) {
                run.process(batch)?;
            }
        }
        if let Some(batch) = batcher.take() {
            run.process(batch)?;
        }
        let results = run.results.take().unwrap_or_default();
        debug_assert_eq!(results.len(), n);
        Ok(results)
    }

    /// Ingests documents already in memory (the server's upsert path), parsing, embedding and
    /// committing at once.
    pub fn ingest_documents(
        &self,
        docs: Vec<ParsedDoc>,
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let t0 = Instant::now();
        let mut run = Run::new(self, sink);
        run.progress.total = docs.len() as u64;
        run.pipeline(
            t0,
            Box::new(move |emit| {
                for d in docs {
                    emit(Ok(d))?;
                }
                Ok(())
            }),
        )
    }
}

/// The caller's side of an ingest: commits batches and keeps the report and the progress.
struct Run<'r, 'a> {
    ing: &'r Ingestor<'a>,
    sink: &'r mut dyn ProgressSink,
    report: IngestReport,
    progress: Progress,
    /// Per-document results, in input order, when the caller wants them.
    results: Option<Vec<DocResult>>,
    last_checkpoint: Instant,
}

/// Documents waiting to become a batch: a repeated id starts a new batch, so that two writes to
/// one document never share a transaction and the later one replaces the earlier.
#[derive(Default)]
struct Batcher {
    pending: Vec<ParsedDoc>,
    pending_ids: HashSet<String>,
}

impl Batcher {
    /// Adds `doc`; returns the batch to process first when `doc` cannot join the pending one.
    fn push(&mut self, doc: ParsedDoc, batch_documents: usize) -> Option<Vec<ParsedDoc>> {
        let full =
            self.pending.len() >= batch_documents.max(1) || self.pending_ids.contains(&doc.doc.id);
        let out = if full { self.take() } else { None };
        self.pending_ids.insert(doc.doc.id.clone());
        self.pending.push(doc);
        out
    }

    /// The pending batch, if any.
    fn take(&mut self) -> Option<Vec<ParsedDoc>> {
        self.pending_ids.clear();
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// A batch whose unchanged documents are known and whose other documents are chunked.
struct Prepared {
    /// Per-document results by input position; unchanged documents already filled.
    slots: Vec<Option<DocResult>>,
    /// Input position and id of each document in `work`.
    positions: Vec<(usize, String)>,
    work: Vec<(ParsedDoc, Vec<ragd_core::ChunkSpan>)>,
    unchanged: u64,
    /// Seconds of the hash lookup and chunking.
    seconds: f64,
}

/// A batch ready to commit.
struct Embedded {
    slots: Vec<Option<DocResult>>,
    positions: Vec<(usize, String)>,
    writes: Vec<DocWrite>,
    chunk_counts: Vec<u64>,
    unchanged: u64,
    tokens: u64,
    /// Seconds of chunking and of embedding.
    chunk_seconds: f64,
    embed_seconds: f64,
}

/// What flows between stages: a document that failed to parse travels in order with the
/// batches so that failures are reported where they happened.
enum Item<B> {
    Failed(Failure),
    Batch(B),
}

/// Busy and waiting seconds of the parse and embed threads (the embed stage's busy time is
/// each batch's `Embedded::embed_seconds`).
#[derive(Default)]
struct StageTimes {
    busy: f64,
    waiting_for_input: f64,
    waiting_for_output: f64,
}

/// Hash lookup (unchanged documents are not re-embedded) and chunking of one batch.
fn prepare(ing: &Ingestor<'_>, batch: Vec<ParsedDoc>) -> Result<Prepared> {
    let t = Instant::now();
    let ids: Vec<&str> = batch.iter().map(|p| p.doc.id.as_str()).collect();
    let stored = ing.collection.hashes(&ids)?;
    let mut slots: Vec<Option<DocResult>> = vec![None; batch.len()];
    let mut positions = Vec::with_capacity(batch.len());
    let mut work = Vec::with_capacity(batch.len());
    let mut unchanged = 0;
    for (i, (p, old)) in batch.into_iter().zip(stored).enumerate() {
        if old.as_deref() == Some(p.doc.content_hash().as_str()) {
            unchanged += 1;
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
    Ok(Prepared {
        slots,
        positions,
        work,
        unchanged,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Embeds the chunks of a prepared batch and turns it into DocStore writes.
fn embed(ing: &Ingestor<'_>, p: Prepared) -> Result<Embedded> {
    let t = Instant::now();
    let texts: Vec<String> = p
        .work
        .iter()
        .flat_map(|(d, chunks)| {
            let prefix = ing.chunker.title_prefix(&d.doc.title);
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
    let embed_seconds = t.elapsed().as_secs_f64();
    let mut embeddings = embedded.into_iter();
    let mut tokens = 0u64;
    let mut writes = Vec::with_capacity(p.work.len());
    let mut chunk_counts = Vec::with_capacity(p.work.len());
    for (d, mut chunks) in p.work {
        let mut vectors = Vec::with_capacity(chunks.len());
        for c in chunks.iter_mut() {
            let Some(e) = embeddings.next() else { break };
            if e.truncated {
                tracing::warn!(doc = %d.doc.id, "a chunk was truncated by the encoder");
            }
            c.tokens = e.tokens;
            tokens += e.tokens as u64;
            vectors.push(e.vector);
        }
        chunk_counts.push(chunks.len() as u64);
        writes.push(DocWrite::Upsert {
            doc: d.doc,
            chunks,
            vectors,
            force: false,
        });
    }
    Ok(Embedded {
        slots: p.slots,
        positions: p.positions,
        writes,
        chunk_counts,
        unchanged: p.unchanged,
        tokens,
        chunk_seconds: p.seconds,
        embed_seconds,
    })
}

impl<'r, 'a> Run<'r, 'a> {
    fn new(ing: &'r Ingestor<'a>, sink: &'r mut dyn ProgressSink) -> Self {
        Self {
            ing,
            sink,
            report: IngestReport::default(),
            progress: Progress::default(),
            last_checkpoint: Instant::now(),
            results: None,
        }
    }

    fn fail(&mut self, f: Failure) {
        self.report.failed.push(f);
        self.progress.documents += 1;
        self.sink.update(&self.progress);
    }

    /// Commits one embedded batch: durable on return, indexes updated, checkpointed when due.
    fn commit(&mut self, e: Embedded) -> Result<()> {
        let ing = self.ing;
        self.report.phases.chunk += e.chunk_seconds;
        self.report.phases.embed += e.embed_seconds;
        self.report.unchanged += e.unchanged;
        self.progress.documents += e.unchanged;
        self.report.tokens += e.tokens;
        self.progress.tokens += e.tokens;
        let mut slots = e.slots;
        let w = ing.collection.write(e.writes)?;
        self.report.phases.commit += w.commit_seconds;
        self.report.phases.index += w.index_seconds;
        for ((o, n), (i, id)) in w.outcomes.iter().zip(e.chunk_counts).zip(e.positions) {
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
            if written {
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
        Ok(())
    }

    /// One batch through every step in turn.
    fn process(&mut self, batch: Vec<ParsedDoc>) -> Result<()> {
        let prepared = prepare(self.ing, batch)?;
        let embedded = embed(self.ing, prepared)?;
        self.commit(embedded)
    }

    /// Runs the three stages over what `feed` emits (see the module docs), then checkpoints.
    fn pipeline(mut self, t0: Instant, feed: Feed<'_>) -> Result<IngestReport> {
        let ing = self.ing;
        let (to_embed, parsed) = std::sync::mpsc::sync_channel::<Item<Prepared>>(1);
        let (to_commit, embedded) = std::sync::mpsc::sync_channel::<Item<Embedded>>(1);
        let (commit_result, parse, encode) = std::thread::scope(|scope| {
            let parse = std::thread::Builder::new()
                .name("ragd-ingest-parse".into())
                .spawn_scoped(scope, move || parse_stage(ing, feed, to_embed));
            let encode = std::thread::Builder::new()
                .name("ragd-ingest-embed".into())
                .spawn_scoped(scope, move || embed_stage(ing, parsed, to_commit));
            let mut commit_result = Ok(());
            if let Some(e) = [&parse, &encode].into_iter().find_map(|h| h.as_ref().err()) {
                commit_result = Err(crate::Error::Io {
                    context: "starting the ingest threads".into(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                });
            } else {
                for item in embedded.iter() {
                    let r = match item {
                        Item::Failed(f) => {
                            self.fail(f);
                            Ok(())
                        }
                        Item::Batch(e) => self.commit(e),
                    };
                    if r.is_err() {
                        // Dropping the receiver stops the other stages at their next send.
                        commit_result = r;
                        break;
                    }
                }
            }
            drop(embedded);
            let join =
                |h: std::io::Result<std::thread::ScopedJoinHandle<'_, Result<StageTimes>>>| {
                    h.ok().map(|h| match h.join() {
                        Ok(r) => r,
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                };
            (commit_result, join(parse), join(encode))
        });
        // The first stage that failed for a reason of its own is the cause; a stage that
        // stopped because the next one went away (`Cancelled` from a closed channel) is not.
        commit_result?;
        let encode = encode.transpose()?.unwrap_or_default();
        let parse = parse.transpose()?.unwrap_or_default();
        let t = Instant::now();
        self.ing.collection.checkpoint()?;
        self.report.phases.commit += t.elapsed().as_secs_f64();
        let mut r = self.report;
        r.seconds = t0.elapsed().as_secs_f64();
        r.phases.parse = (parse.busy - r.phases.chunk).max(0.0);
        let per = |n: u64| per_wall(n as f64, r.seconds);
        r.documents_per_s = per(r.added + r.unchanged + r.replaced);
        r.chunks_per_s = per(r.chunks);
        r.tokens_per_s = per(r.tokens);
        let p = &r.phases;
        r.pipeline = PipelineReport {
            encoder_busy: per_wall(p.embed, r.seconds),
            encoder_waiting_for_input: encode.waiting_for_input,
            encoder_waiting_for_commit: encode.waiting_for_output,
            overlap: per_wall(p.parse + p.chunk + p.embed + p.index + p.commit, r.seconds),
        };
        Ok(r)
    }
}

/// `x` per second of `wall` (0 for no time at all).
fn per_wall(x: f64, wall: f64) -> f64 {
    if wall > 0.0 { x / wall } else { 0.0 }
}

/// What the parse stage reads: it calls `emit` for every document or failure, in order.
type Feed<'f> = Box<
    dyn FnOnce(&mut dyn FnMut(std::result::Result<ParsedDoc, Failure>) -> Result<()>) -> Result<()>
        + Send
        + 'f,
>;

/// The parse thread: reads, batches, looks up hashes and chunks, hands batches on.
fn parse_stage(
    ing: &Ingestor<'_>,
    feed: Feed<'_>,
    out: std::sync::mpsc::SyncSender<Item<Prepared>>,
) -> Result<StageTimes> {
    let t0 = Instant::now();
    let mut times = StageTimes::default();
    let send = |item: Item<Prepared>, times: &mut StageTimes| {
        let t = Instant::now();
        let sent = out.send(item).map_err(|_| crate::Error::Cancelled);
        times.waiting_for_output += t.elapsed().as_secs_f64();
        sent
    };
    let mut batcher = Batcher::default();
    let batch_documents = ing.opts.batch_documents;
    feed(&mut |r| match r {
        Err(f) => send(Item::Failed(f), &mut times),
        Ok(doc) => match batcher.push(doc, batch_documents) {
            Some(batch) => send(Item::Batch(prepare(ing, batch)?), &mut times),
            None => Ok(()),
        },
    })?;
    if let Some(batch) = batcher.take() {
        send(Item::Batch(prepare(ing, batch)?), &mut times)?;
    }
    times.busy = t0.elapsed().as_secs_f64() - times.waiting_for_output;
    Ok(times)
}

/// The embed thread: the encoder's side of the pipeline.
fn embed_stage(
    ing: &Ingestor<'_>,
    input: std::sync::mpsc::Receiver<Item<Prepared>>,
    out: std::sync::mpsc::SyncSender<Item<Embedded>>,
) -> Result<StageTimes> {
    let mut times = StageTimes::default();
    loop {
        let t = Instant::now();
        let Ok(item) = input.recv() else { break };
        times.waiting_for_input += t.elapsed().as_secs_f64();
        let item = match item {
            Item::Failed(f) => Item::Failed(f),
            Item::Batch(p) => Item::Batch(embed(ing, p)?),
        };
        let t = Instant::now();
        out.send(item).map_err(|_| crate::Error::Cancelled)?;
        times.waiting_for_output += t.elapsed().as_secs_f64();
    }
    Ok(times)
}
