//! Flag groups more than one command takes: where the models and the collections are, chunking,
//! fusion and filters, the peers, and `ingest`'s flags (its local and `--server` paths share
//! them).

use crate::client::ServerFlags;
use anyhow::{Result, bail};
use clap::Args;
use ragd_engine::models as registry;
use ragd_engine::{ChunkSettings, Fusion, SearchFilter};
use ragd_eval::Peers;
use std::path::PathBuf;

#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ModelsDir {
    /// Models directory [default: $RAGD_MODELS, else ~/.cache/ragd/models].
    #[arg(long, global = true)]
    pub(crate) models_dir: Option<PathBuf>,
}

impl ModelsDir {
    pub(crate) fn resolve(&self) -> PathBuf {
        registry::resolve_models_dir(self.models_dir.as_deref())
    }
}

/// Where collections live.
#[derive(Debug, Args, Clone)]
pub(crate) struct DataDir {
    /// Data directory holding the collections.
    #[arg(long, env = "RAGD_DATA_DIR", default_value = "indexes")]
    pub(crate) data_dir: PathBuf,
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

/// `ingest --batch` default: documents per DocStore transaction.
pub(crate) const DEFAULT_INGEST_BATCH: usize = 64;
/// `ingest --checkpoint-every` default, in seconds.
pub(crate) const DEFAULT_CHECKPOINT_SECONDS: u64 = 60;

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Files and directories (walked recursively) to ingest.
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
    /// Target collection (created with default settings if absent).
    #[arg(long)]
    pub(crate) collection: String,
    #[command(flatten)]
    pub(crate) data: DataDir,
    #[command(flatten)]
    pub(crate) remote: ServerFlags,
    #[command(flatten)]
    pub(crate) models: ModelsDir,
    /// Only files matching this glob (relative to a given directory); repeatable.
    #[arg(long)]
    pub(crate) include: Vec<String>,
    /// Skip files matching this glob; repeatable.
    #[arg(long)]
    pub(crate) exclude: Vec<String>,
    /// Largest document accepted, in bytes of text.
    #[arg(long, default_value_t = 16 << 20)]
    pub(crate) max_document_bytes: usize,
    /// Documents per DocStore transaction (offline only).
    #[arg(long, default_value_t = DEFAULT_INGEST_BATCH)]
    pub(crate) batch: usize,
    /// Checkpoint the indexes at least this often (seconds); an interrupted ingest replays at
    /// most this much index work when the collection is next opened (offline only).
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_SECONDS)]
    pub(crate) checkpoint_every: u64,
    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Retrieval flags shared by `search` and `eval`.
#[derive(Debug, Args, Clone)]
pub(crate) struct FusionFlags {
    /// How hybrid mode fuses: `convex` (weighted min-max-normalised scores) or `rrf`.
    #[arg(long, default_value = "convex")]
    pub(crate) fusion: String,
    /// Dense weight for convex fusion (0..=1).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) dense_weight: f32,
    /// k for reciprocal rank fusion.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) rrf_k: f32,
    /// HNSW candidate list (default: the collection's ef_search).
    #[arg(long)]
    pub(crate) ef: Option<usize>,
}

impl FusionFlags {
    pub(crate) fn fusion(&self) -> Result<Fusion> {
        Ok(match self.fusion.as_str() {
            "convex" => Fusion::Convex {
                dense_weight: self.dense_weight,
            },
            "rrf" => Fusion::Rrf { k: self.rrf_k },
            other => bail!("--fusion must be convex or rrf, got {other:?}"),
        })
    }
}

pub(crate) fn parse_filters(filters: &[String], doc_ids: &[String]) -> Result<SearchFilter> {
    let mut metadata: Vec<(String, Vec<String>)> = Vec::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            bail!("--filter takes KEY=VALUE, got {f:?}");
        };
        if k.is_empty() {
            bail!("--filter {f:?} has an empty key");
        }
        match metadata.iter_mut().find(|(key, _)| key == k) {
            Some((_, vals)) => vals.push(v.to_string()),
            None => metadata.push((k.to_string(), vec![v.to_string()])),
        }
    }
    Ok(SearchFilter {
        doc_ids: doc_ids.to_vec(),
        metadata,
    })
}

#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// Also run the peer (sentence-transformers / llama.cpp) on the same input and report the ratio.
    #[arg(long)]
    pub(crate) compare: bool,
    /// Directory with the peers' scripts (embed.py, generate.py).
    #[arg(long, default_value = "../shared/peers")]
    pub(crate) peers_dir: PathBuf,
    /// The peers' Python environment [default: $RAGD_PEERS, else ~/.cache/ragd-peers].
    #[arg(long)]
    pub(crate) peers_env: Option<PathBuf>,
    /// Threads the peer may use (ours follow RAYON_NUM_THREADS, default all cores).
    #[arg(long, default_value_t = 2)]
    pub(crate) peer_threads: usize,
}

impl PeerArgs {
    /// The peers to run, when `--compare` asks for them.
    pub(crate) fn peers(&self) -> Option<Peers> {
        self.compare.then(|| Peers {
            dir: self.peers_dir.clone(),
            env: self.peers_env.clone(),
            threads: self.peer_threads,
        })
    }
}
