//! `ragd collections`, `ragd ingest`, `ragd delete` and `ragd rebuild`: work on the collections
//! in a data directory, or on a server's with `--server` (see `remote.rs`).

use crate::client::{Remote, ServerFlags};
use crate::commands::ModelsDir;
use crate::remote;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ragd_engine::{IngestOptions, Ingestor, Progress, ProgressSink, RebuildOptions, SourceOptions};
use ragd_models::Embedder;
use ragd_models::registry::DEFAULT_ENCODER;
use ragd_store::{ChunkSettings, Collection, CollectionSettings, DocWrite, WriteOutcome};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where collections live.
#[derive(Debug, Args, Clone)]
pub(crate) struct DataDir {
    /// Data directory holding the collections.
    #[arg(long, env = "RAGD_DATA_DIR", default_value = "indexes")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CollectionsCommand {
    /// Create an empty collection.
    Create(CreateArgs),
    /// List the collections in the data directory.
    List {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        remote: ServerFlags,
        #[arg(long)]
        json: bool,
    },
    /// Documents, chunks, tombstones, generation and size of a collection.
    Stats {
        /// Collection name.
        name: String,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        remote: ServerFlags,
        /// Also check that the indexes hold exactly the DocStore's live chunks (offline only).
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a collection and everything in it.
    Delete {
        /// Collection name.
        name: String,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        remote: ServerFlags,
        #[arg(long)]
        json: bool,
    },
}

/// Chunking flags shared by `collections create` and `rebuild --rechunk`.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ChunkFlags {
    /// Most encoder tokens per chunk (title and special tokens included).
    #[arg(long)]
    pub(crate) chunk_max_tokens: Option<usize>,
    /// Fill chunks to at least this many tokens when the text allows.
    #[arg(long)]
    pub(crate) chunk_min_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks.
    #[arg(long)]
    pub(crate) chunk_overlap: Option<usize>,
    /// Embed chunks without their document's title.
    #[arg(long)]
    pub(crate) no_title_in_embedding: bool,
}

impl ChunkFlags {
    pub(crate) fn any(&self) -> bool {
        self.chunk_max_tokens.is_some()
            || self.chunk_min_tokens.is_some()
            || self.chunk_overlap.is_some()
            || self.no_title_in_embedding
    }

    pub(crate) fn apply(&self, mut c: ChunkSettings) -> ChunkSettings {
        if let Some(v) = self.chunk_max_tokens {
            c.max_tokens = v;
            c.min_tokens = c.min_tokens.min(v);
        }
        if let Some(v) = self.chunk_min_tokens {
            c.min_tokens = v;
        }
        if let Some(v) = self.chunk_overlap {
            c.overlap_tokens = v;
        }
        if self.no_title_in_embedding {
            c.title_in_embedding = false;
        }
        c
    }
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Collection name (letters, digits, '-', '_', '.').
    name: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    remote: ServerFlags,
    #[command(flatten)]
    models: ModelsDir,
    /// Encoder model (a directory in the models directory; offline only: a server embeds with
    /// its own).
    #[arg(long, default_value = DEFAULT_ENCODER.name)]
    encoder: String,
    #[command(flatten)]
    chunk: ChunkFlags,
    /// HNSW neighbours per node.
    #[arg(long)]
    hnsw_m: Option<usize>,
    /// HNSW candidate list while building.
    #[arg(long)]
    hnsw_ef_construction: Option<usize>,
    /// HNSW candidate list while searching (default for queries).
    #[arg(long)]
    hnsw_ef_search: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Files and directories (walked recursively) to ingest.
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
    /// Target collection (created with default settings if absent).
    #[arg(long)]
    pub(crate) collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    pub(crate) remote: ServerFlags,
    #[command(flatten)]
    models: ModelsDir,
    /// Only files matching this glob (relative to a given directory); repeatable.
    #[arg(long)]
    pub(crate) include: Vec<String>,
    /// Skip files matching this glob; repeatable.
    #[arg(long)]
    pub(crate) exclude: Vec<String>,
    /// Largest document accepted, in bytes of text.
    #[arg(long, default_value_t = 16 << 20)]
    pub(crate) max_document_bytes: usize,
    /// Documents per DocStore transaction.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Checkpoint the indexes at least this often (seconds); an interrupted ingest replays at
    /// most this much index work when the collection is next opened.
    #[arg(long, default_value_t = 60)]
    checkpoint_every: u64,
    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Document ids.
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    remote: ServerFlags,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RebuildArgs {
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    remote: ServerFlags,
    #[command(flatten)]
    models: ModelsDir,
    /// Chunk every document again (with the chunking flags, if given).
    #[arg(long)]
    rechunk: bool,
    /// Embed every chunk again.
    #[arg(long)]
    reembed: bool,
    #[command(flatten)]
    chunk: ChunkFlags,
    #[arg(long)]
    json: bool,
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn load_encoder(models: &ModelsDir, name: &str) -> Result<Embedder> {
    let dir = models.resolve();
    let path = dir.join(name);
    if !path.join("config.json").is_file() {
        if name == DEFAULT_ENCODER.name {
            return Err(DEFAULT_ENCODER.missing(&dir).into());
        }
        bail!(
            "encoder {name:?} is not in the models directory {}",
            dir.display()
        );
    }
    Embedder::load(&path).with_context(|| format!("loading encoder {}", path.display()))
}

pub(crate) fn collections(cmd: CollectionsCommand) -> Result<()> {
    match cmd {
        CollectionsCommand::Create(a) => create(a),
        CollectionsCommand::List { data, remote, json } => {
            if let Some(url) = &remote.server {
                return remote::list(&Remote::connect(&remote, url)?, json);
            }
            let mut rows = Vec::new();
            for name in Collection::list(&data.data_dir)? {
                rows.push(
                    match Collection::open(&data.data_dir, &name).and_then(|c| c.stats()) {
                        Ok(s) => json!({"name": name, "documents": s.documents, "chunks": s.chunks,
                        "generation": s.generation, "bytes": s.bytes}),
                        Err(e) => json!({"name": name, "error": e.to_string()}),
                    },
                );
            }
            if json {
                return print_json(&json!({ "collections": rows }));
            }
            if rows.is_empty() {
                println!("no collections in {}", data.data_dir.display());
            }
            for r in rows {
                let name = r["name"].as_str().unwrap_or("");
                match r.get("error") {
                    Some(e) => println!("{name:<24} unavailable: {}", e.as_str().unwrap_or("")),
                    None => print_row(
                        name,
                        r["documents"].as_u64().unwrap_or(0),
                        r["chunks"].as_u64().unwrap_or(0),
                        r["generation"].as_u64().unwrap_or(0),
                        r["bytes"].as_u64().unwrap_or(0),
                    ),
                }
            }
            Ok(())
        }
        CollectionsCommand::Stats {
            name,
            data,
            remote,
            verify,
            json,
        } => {
            if let Some(url) = &remote.server {
                remote::offline_only("--verify", verify)?;
                return remote::stats(&Remote::connect(&remote, url)?, &name, json);
            }
            let c = Collection::open(&data.data_dir, &name)?;
            if verify {
                c.verify()?;
            }
            let s = c.stats()?;
            if json {
                return print_json(&s);
            }
            println!("collection  {}", s.name);
            println!("documents   {}", s.documents);
            println!("chunks      {}", s.chunks);
            println!("tombstones  {}", s.tombstones);
            println!("generation  {}", s.generation);
            println!("bytes       {} ({:.1} MB)", s.bytes, s.bytes as f64 / 1e6);
            println!(
                "encoder     {} ({} dimensions)",
                s.settings.encoder, s.settings.dim
            );
            let ch = &s.settings.chunking;
            println!(
                "chunking    {}..={} tokens, overlap {}, title embedded: {}",
                ch.min_tokens, ch.max_tokens, ch.overlap_tokens, ch.title_in_embedding
            );
            Ok(())
        }
        CollectionsCommand::Delete {
            name,
            data,
            remote,
            json,
        } => {
            match &remote.server {
                Some(url) => remote::delete_collection(&Remote::connect(&remote, url)?, &name)?,
                None => Collection::delete(&data.data_dir, &name)?,
            }
            if json {
                return print_json(&json!({"deleted": name}));
            }
            println!("deleted collection {name}");
            Ok(())
        }
    }
}

/// One line of `collections list`.
pub(crate) fn print_row(name: &str, documents: u64, chunks: u64, generation: u64, bytes: u64) {
    println!(
        "{name:<24} {documents:>8} documents {chunks:>9} chunks  gen {generation:<3} {:>10.1} MB",
        bytes as f64 / 1e6
    );
}

fn create(a: CreateArgs) -> Result<()> {
    if let Some(url) = &a.remote.server {
        remote::offline_only("--encoder", a.encoder != DEFAULT_ENCODER.name)?;
        let r = Remote::connect(&a.remote, url)?;
        let hnsw = ragd_proto::v1::HnswSettings {
            m: a.hnsw_m.unwrap_or(0) as u32,
            ef_construction: a.hnsw_ef_construction.unwrap_or(0) as u32,
            ef_search: a.hnsw_ef_search.unwrap_or(0) as u32,
        };
        let c = remote::create(&r, &a.name, &a.chunk, hnsw)?;
        if a.json {
            // Create answers with the collection: no second call for its stats.
            return print_json(&remote::collection_json(&c));
        }
        println!("created collection {} on {url}", c.name);
        return Ok(());
    }
    let embedder = load_encoder(&a.models, &a.encoder)?;
    let mut s: CollectionSettings = ragd_engine::settings_for(&embedder);
    s.chunking = a.chunk.apply(s.chunking);
    if let Some(v) = a.hnsw_m {
        s.hnsw.m = v;
    }
    if let Some(v) = a.hnsw_ef_construction {
        s.hnsw.ef_construction = v;
    }
    if let Some(v) = a.hnsw_ef_search {
        s.hnsw.ef_search = v;
    }
    if s.chunking.max_tokens > embedder.max_len() {
        bail!(
            "--chunk-max-tokens {} is more than the encoder's maximum input of {} tokens",
            s.chunking.max_tokens,
            embedder.max_len()
        );
    }
    let c = Collection::create(&a.data.data_dir, &a.name, &s)?;
    let stats = c.stats()?;
    if a.json {
        return print_json(&stats);
    }
    println!(
        "created collection {} in {}",
        a.name,
        a.data.data_dir.display()
    );
    Ok(())
}

/// Opens `name` with its encoder loaded, or creates it with default settings and the default
/// encoder when absent. The collection is opened once: opening replays its log.
pub(crate) fn open_or_create(
    data: &Path,
    name: &str,
    models: &ModelsDir,
    quiet: bool,
) -> Result<(Collection, Embedder)> {
    match Collection::open(data, name) {
        Ok(c) => {
            let embedder = load_encoder(models, &c.settings()?.encoder)?;
            Ok((c, embedder))
        }
        Err(ragd_store::Error::CollectionNotFound(_)) => {
            let embedder = load_encoder(models, DEFAULT_ENCODER.name)?;
            if !quiet {
                eprintln!("creating collection {name} in {}", data.display());
            }
            let c = Collection::create(data, name, &ragd_engine::settings_for(&embedder))?;
            Ok((c, embedder))
        }
        Err(e) => Err(e.into()),
    }
}

struct Bar(ProgressBar);

impl ProgressSink for Bar {
    fn update(&mut self, p: &Progress) {
        self.0.set_length(p.total.max(p.documents));
        self.0.set_position(p.documents);
        let secs = self.0.elapsed().as_secs_f64().max(1e-3);
        self.0.set_message(format!(
            "{} chunks · {:.0} tokens/s",
            p.chunks,
            p.tokens as f64 / secs
        ));
    }
}

pub(crate) fn bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} documents · {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

pub(crate) fn ingest(a: IngestArgs) -> Result<ExitCode> {
    // Check the paths before loading a model: a typo should fail fast.
    for p in &a.paths {
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    if let Some(url) = a.remote.server.clone() {
        return remote::ingest(a, &url);
    }
    let (collection, embedder) =
        open_or_create(&a.data.data_dir, &a.collection, &a.models, a.json)?;
    let opts = IngestOptions {
        sources: SourceOptions {
            include: a.include,
            exclude: a.exclude,
            max_document_bytes: a.max_document_bytes,
        },
        batch_documents: a.batch,
        checkpoint_every: Duration::from_secs(a.checkpoint_every),
        ..IngestOptions::default()
    };
    let ingestor = Ingestor::new(&collection, &embedder, opts)?;
    let mut sink = Bar(bar(a.json));
    let report = ingestor.ingest_paths(&a.paths, &mut sink)?;
    sink.0.finish_and_clear();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "added {}, unchanged {}, replaced {}, failed {}; {} chunks, {} tokens in {:.1}s ({:.1} documents/s, {:.0} tokens/s)",
            report.added,
            report.unchanged,
            report.replaced,
            report.failed.len(),
            report.chunks,
            report.tokens,
            report.seconds,
            report.documents_per_s,
            report.tokens_per_s
        );
        let p = &report.phases;
        println!(
            "time: parse {:.1}s, chunk {:.1}s, embed {:.1}s, index {:.1}s, commit {:.1}s",
            p.parse, p.chunk, p.embed, p.index, p.commit
        );
        print_failures(&report.failed);
    }
    Ok(ingest_exit_code(&report.failed))
}

/// One line per document that could not be stored.
pub(crate) fn print_failures(failed: &[ragd_engine::Failure]) {
    for f in failed {
        println!("failed: {}: {}", f.source, f.reason);
    }
}

/// `ingest`'s exit code: 0 when every document was stored, 2 when some failed.
pub(crate) fn ingest_exit_code(failed: &[ragd_engine::Failure]) -> ExitCode {
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub(crate) fn delete(a: DeleteArgs) -> Result<()> {
    let (deleted, not_found) = match &a.remote.server {
        Some(url) => {
            remote::delete_documents(&Remote::connect(&a.remote, url)?, &a.collection, &a.ids)?
        }
        None => {
            let c = Collection::open(&a.data.data_dir, &a.collection)?;
            let writes = a
                .ids
                .iter()
                .map(|id| DocWrite::Delete { id: id.clone() })
                .collect();
            let outcomes = c.write(writes)?.outcomes;
            c.checkpoint()?;
            let not_found: Vec<String> = a
                .ids
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == WriteOutcome::NotFound)
                .map(|(id, _)| id.clone())
                .collect();
            (outcomes.len() - not_found.len(), not_found)
        }
    };
    if a.json {
        return print_json(&json!({"deleted": deleted, "not_found": not_found}));
    }
    println!("deleted {deleted} documents");
    for id in not_found {
        println!("not found: {id}");
    }
    Ok(())
}

pub(crate) fn rebuild(a: RebuildArgs) -> Result<()> {
    if let Some(url) = &a.remote.server {
        let r = Remote::connect(&a.remote, url)?;
        return remote::rebuild(&r, &a.collection, a.rechunk, a.reembed, &a.chunk, a.json);
    }
    let c = Collection::open(&a.data.data_dir, &a.collection)?;
    let rechunk = a.rechunk || a.chunk.any();
    let embedder = if rechunk || a.reembed {
        Some(load_encoder(&a.models, &c.settings()?.encoder)?)
    } else {
        None
    };
    let opts = RebuildOptions {
        rechunk,
        reembed: a.reembed,
        chunking: a.chunk.any().then(|| {
            a.chunk
                .apply(c.settings().map(|s| s.chunking).unwrap_or_default())
        }),
        batch_documents: 64,
        ..RebuildOptions::default()
    };
    let pb = bar(a.json);
    let summary = ragd_engine::rebuild(
        &c,
        embedder.as_ref().map(|e| e as &dyn ragd_models::Encode),
        &opts,
        |stage, done, total| {
            pb.set_length(total);
            pb.set_position(done);
            pb.set_message(stage.to_string());
        },
    )?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&summary);
    }
    println!(
        "generation {} (was {}): {} documents, {} chunks; {} embedded, {} vectors reused, {} tombstones dropped; {:.1}s",
        summary.generation,
        summary.previous_generation,
        summary.documents,
        summary.chunks,
        summary.embedded,
        summary.reused,
        summary.dropped_tombstones,
        summary.seconds
    );
    Ok(())
}
