//! `ragd collections`, `ragd ingest`, `ragd delete` and `ragd rebuild`: work on the collections
//! in a data directory, or on a server's with `--server` (through `backend.rs`).

use crate::backend::{Backend, HnswFlags};
use crate::client::ServerFlags;
use crate::flags::{
    ChunkFlags, DEFAULT_CHECKPOINT_SECONDS, DEFAULT_INGEST_BATCH, DataDir, IngestArgs, ModelsDir,
};
use crate::output::{bar, ingest_exit_code, print_ingest, print_json, print_row};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use ragd_engine::models::DEFAULT_ENCODER;
use ragd_engine::{IngestOptions, Precision, SourceOptions};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

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
    /// The encoder's precision: `f32` (default) or `int8` (int8 linear layers: faster ingest,
    /// vectors within cosine 0.99 of f32; queries are embedded the same way).
    #[arg(long)]
    encoder_precision: Option<Precision>,
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
    /// Rerank the best N fused candidates with the cross-encoder in every search and answer
    /// that does not say otherwise (`--rerank`), 1 to 200; 0 (the default): none. Needs a
    /// reranker where it is searched (`reranker.name` on a server, `--reranker` offline).
    #[arg(long, default_value_t = 0)]
    rerank: usize,
    #[arg(long)]
    json: bool,
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
    /// Embed every chunk again at this encoder precision (`f32` or `int8`), which queries then
    /// use too.
    #[arg(long)]
    encoder_precision: Option<Precision>,
    #[command(flatten)]
    chunk: ChunkFlags,
    #[arg(long)]
    json: bool,
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
                "encoder     {} ({} dimensions, {})",
                s.settings.encoder, s.settings.dim, s.settings.encoder_precision
            );
            let ch = &s.settings.chunking;
            println!(
                "chunking    {}..={} tokens, overlap {}, title embedded: {}",
                ch.min_tokens, ch.max_tokens, ch.overlap_tokens, ch.title_in_embedding
            );
            if s.settings.rerank > 0 {
                println!(
                    "rerank      the best {} fused candidates, unless a search says otherwise",
                    s.settings.rerank
                );
            }
            if s.settings.reembedding {
                println!(
                    "warning     a rebuild to {p} was interrupted: some chunks still hold vectors \
                     of the previous precision; run `ragd rebuild --collection {} \
                     --encoder-precision {p}` to finish it",
                    s.name,
                    p = s.settings.encoder_precision
                );
            }
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

fn create(a: CreateArgs) -> Result<()> {
    let backend = Backend::new(&a.data, &a.models, &a.remote)?;
    // A server embeds with its own encoder.
    backend.offline_only("--encoder", a.encoder != DEFAULT_ENCODER.name)?;
    let hnsw = HnswFlags {
        m: a.hnsw_m,
        ef_construction: a.hnsw_ef_construction,
        ef_search: a.hnsw_ef_search,
    };
    let stats = backend.create(
        &a.name,
        &a.encoder,
        a.encoder_precision,
        &a.chunk,
        hnsw,
        a.rerank,
    )?;
    if a.json {
        return print_json(&stats);
    }
    println!("created collection {} {}", a.name, backend.place());
    Ok(())
}

pub(crate) fn ingest(a: IngestArgs) -> Result<ExitCode> {
    // Check the paths before loading a model or connecting: a typo should fail fast.
    for p in &a.paths {
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let backend = Backend::new(&a.data, &a.models, &a.remote)?;
    // How the engine batches and checkpoints is the server's business.
    backend.offline_only("--batch", a.batch != DEFAULT_INGEST_BATCH)?;
    backend.offline_only(
        "--checkpoint-every",
        a.checkpoint_every != DEFAULT_CHECKPOINT_SECONDS,
    )?;
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
    let summary = backend.ingest(&a.collection, &a.paths, opts, a.json)?;
    print_ingest(&summary, a.json)?;
    Ok(ingest_exit_code(&summary.failed))
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
        a.encoder_precision,
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
