//! `ragd collections`, `ragd ingest`, `ragd delete` and `ragd rebuild`: work on the collections
//! in a data directory, or on a server's with `--server` (see `remote.rs`).

use crate::backend::{Backend, HnswFlags};
use crate::client::ServerFlags;
use crate::commands::ModelsDir;
use crate::remote;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ragd_engine::models::DEFAULT_ENCODER;
use ragd_engine::{
    AnswerConfig, ChunkSettings, Engine, EngineConfig, GeneratorOptions, IngestOptions, Progress,
    ProgressSink, SourceOptions,
};
use serde_json::json;
use std::path::PathBuf;
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

/// The engine over a data directory for one offline command: it loads models from the models
/// directory only when the command needs them (listing loads none; a search loads the
/// collection's own encoder; an answer the decoder too).
pub(crate) fn engine(data: &DataDir, models: &ModelsDir, answer: AnswerConfig) -> Engine {
    let config = EngineConfig {
        answer,
        ..EngineConfig::new(&data.data_dir)
    };
    Engine::offline(config, &models.resolve(), GeneratorOptions::default())
}

/// [`engine`] with the default answer settings (commands that do not answer).
fn plain_engine(data: &DataDir, models: &ModelsDir) -> Engine {
    engine(data, models, AnswerConfig::default())
}

pub(crate) fn collections(cmd: CollectionsCommand) -> Result<()> {
    match cmd {
        CollectionsCommand::Create(a) => create(a),
        CollectionsCommand::List { data, remote, json } => {
            let backend = Backend::new(&data, &ModelsDir::default(), &remote)?;
            let listing = backend.list()?;
            let mut rows: Vec<serde_json::Value> = listing
                .open
                .iter()
                .map(|s| {
                    json!({"name": s.name, "documents": s.documents, "chunks": s.chunks,
                        "generation": s.generation, "bytes": s.bytes})
                })
                .chain(
                    listing
                        .unavailable
                        .iter()
                        .map(|(name, why)| json!({"name": name, "error": why})),
                )
                .collect();
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            if json {
                return print_json(&json!({ "collections": rows }));
            }
            if rows.is_empty() {
                println!("no collections {}", backend.place());
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
            let backend = Backend::new(&data, &ModelsDir::default(), &remote)?;
            if verify {
                backend.verify(&name)?;
            }
            let s = backend.stats(&name)?;
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
            Backend::new(&data, &ModelsDir::default(), &remote)?.delete_collection(&name)?;
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
    let backend = Backend::new(&a.data, &a.models, &a.remote)?;
    // A server embeds with its own encoder.
    backend.offline_only("--encoder", a.encoder != DEFAULT_ENCODER.name)?;
    let hnsw = HnswFlags {
        m: a.hnsw_m,
        ef_construction: a.hnsw_ef_construction,
        ef_search: a.hnsw_ef_search,
    };
    let stats = backend.create(&a.name, &a.encoder, &a.chunk, hnsw)?;
    if a.json {
        return print_json(&stats);
    }
    println!("created collection {} {}", a.name, backend.place());
    Ok(())
}

/// Opens collection `name`, creating it with the default settings and encoder when absent
/// (and saying so unless `quiet`).
pub(crate) fn open_or_create(engine: &Engine, name: &str, quiet: bool) -> Result<()> {
    if engine.open_or_create(name)? && !quiet {
        eprintln!(
            "creating collection {name} in {}",
            engine.data_dir().display()
        );
    }
    Ok(())
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
    let engine = plain_engine(&a.data, &a.models);
    open_or_create(&engine, &a.collection, a.json)?;
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
    let mut sink = Bar(bar(a.json));
    let report = engine.ingest_paths(&a.collection, &a.paths, opts, &mut sink)?;
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
    let backend = Backend::new(&a.data, &ModelsDir::default(), &a.remote)?;
    let d = backend.delete_documents(&a.collection, &a.ids)?;
    if a.json {
        return print_json(&json!({"deleted": d.deleted.len(), "not_found": d.not_found}));
    }
    println!("deleted {} documents", d.deleted.len());
    for id in d.not_found {
        println!("not found: {id}");
    }
    Ok(())
}

pub(crate) fn rebuild(a: RebuildArgs) -> Result<()> {
    let backend = Backend::new(&a.data, &a.models, &a.remote)?;
    let pb = bar(a.json);
    let summary = backend.rebuild(
        &a.collection,
        a.rechunk,
        a.reembed,
        &a.chunk,
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
