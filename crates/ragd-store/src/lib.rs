//! One ragd collection on disk.
//!
//! The [`DocStore`] (redb) is the system of record: documents, chunks, embeddings, tombstones and
//! a log of writes by sequence number. The HNSW graph ([`VectorIndex`], hnsw_rs) and the BM25
//! index ([`LexicalIndex`], tantivy) are derived from it and live in immutable-by-number
//! generation directories switched through `CURRENT` ([`generation`]). [`Collection`] ties them
//! together: a write is acknowledged once the DocStore commits, checkpoints persist the derived
//! indexes with the sequence they reflect, opening replays what is newer, and a rebuild writes a
//! fresh generation and switches to it atomically.
//!
//! Nothing here spawns threads except tantivy's indexing and merge threads and hnsw_rs's use of
//! rayon's global pool for parallel inserts.

mod collection;
mod docstore;
mod error;
mod fsutil;
pub mod generation;
mod lexical;
mod settings;
mod vector;

pub use collection::{
    Collection, CollectionStats, RebuildReport, Recovery, Snapshot, SnapshotFile, WriteReport,
};
pub use docstore::{
    ChunkRecord, DocRecord, DocStore, DocStoreSnapshot, DocWrite, LiveChunk, LogOp, StoreCounts,
    WriteOutcome,
};
pub use error::{Error, Result};
pub use generation::{Generation, Manifest};
pub use lexical::{LexicalDoc, LexicalHit, LexicalIndex, SearchFilter, analyze};
pub use settings::{ChunkSettings, CollectionSettings, HnswSettings, MAX_RERANK, validate_name};
pub use vector::{CosineDistance, HnswFiles, IdSet, VectorHit, VectorIndex, dot};
