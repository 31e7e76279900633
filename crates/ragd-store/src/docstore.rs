//! `DocStore`: the collection's system of record, one redb file.
//!
//! Everything needed to rebuild the derived indexes lives here: documents (metadata, content hash,
//! raw text), their chunks (text, byte range, token count), one embedding per chunk, tombstones
//! of replaced or deleted chunks, and a log of applied operations keyed by a sequence number that
//! only grows. A write is acknowledged only after its transaction commits (redb's default
//! `Durability::Immediate`, i.e. fsync'd).
//!
//! Chunk ids come from a counter and are never reused, so a chunk id names the same text and
//! vector in the DocStore, the HNSW graph and the tantivy index.

use crate::error::{Error, Result};
use crate::settings::CollectionSettings;
use ragd_core::{ChunkSpan, DocumentInput, Metadata};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const TEXTS: TableDefinition<&str, &str> = TableDefinition::new("texts");
const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
const VECTORS: TableDefinition<u64, &[u8]> = TableDefinition::new("vectors");
const TOMBSTONES: TableDefinition<u64, u64> = TableDefinition::new("tombstones");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Last sequence number handed out.
const SEQ: &str = "seq";
/// Next chunk id.
const NEXT_CHUNK: &str = "next_chunk";
/// Log entries up to and including this sequence have been dropped.
const LOG_PRUNED: &str = "log_pruned";

/// A stored document, without its raw text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Where it came from.
    pub source: String,
    /// Title.
    pub title: String,
    /// Filterable metadata.
    pub metadata: Metadata,
    /// [`DocumentInput::content_hash`].
    pub hash: String,
    /// Live chunk ids, in text order.
    pub chunks: Vec<u64>,
    /// Raw text length in bytes.
    pub bytes: u64,
    /// Sequence of the write that stored this version.
    pub seq: u64,
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Owning document.
    pub doc_id: String,
    /// Position among the document's chunks.
    pub ordinal: u32,
    /// Byte range and text.
    #[serde(flatten)]
    pub span: ChunkSpan,
}

/// One applied write, as the derived indexes need to replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOp {
    /// Its sequence number.
    pub seq: u64,
    /// The document written or deleted.
    pub doc_id: String,
    /// Chunks that became live.
    pub added: Vec<u64>,
    /// Chunks that were tombstoned.
    pub removed: Vec<u64>,
}

/// One write in a batch.
#[derive(Debug, Clone)]
pub enum DocWrite {
    /// Store `doc` with these chunks and one vector per chunk. Skipped when a document with the
    /// same id and content hash is stored, unless `force` (a rebuild that re-chunks or re-embeds).
    Upsert {
        /// The document.
        doc: DocumentInput,
        /// Its chunks, in text order.
        chunks: Vec<ChunkSpan>,
        /// One embedding per chunk.
        vectors: Vec<Vec<f32>>,
        /// Replace even if unchanged.
        force: bool,
    },
    /// Remove the document with this id.
    Delete {
        /// Document id.
        id: String,
    },
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOutcome {
    /// A new document.
    Added,
    /// Same id and content: nothing written.
    Unchanged,
    /// Same id, new content: old chunks tombstoned.
    Replaced,
    /// Deleted.
    Deleted,
    /// Delete of an id that is not stored.
    NotFound,
}

/// Counts for `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StoreCounts {
    /// Stored documents.
    pub documents: u64,
    /// Live chunks (in some document).
    pub chunks: u64,
    /// Chunks replaced or deleted and not yet dropped by a rebuild.
    pub tombstones: u64,
    /// Last sequence number.
    pub seq: u64,
}

/// The redb file of one collection.
#[derive(Debug)]
pub struct DocStore {
    db: Database,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(Error::json(format!("decoding {what}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our record types serialize infallibly (string keys, finite numbers).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Little-endian f32 bytes of a vector.
fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl DocStore {
    /// Creates a new DocStore file holding `settings`.
    pub fn create(path: &Path, name: &str, settings: &CollectionSettings) -> Result<Self> {
        let db = Database::create(path).map_err(|e| map_open(e, name))?;
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(SETTINGS)?;
            let json = serde_json::to_string(settings).unwrap_or_default();
            t.insert("collection", json.as_str())?;
            let mut c = tx.open_table(COUNTERS)?;
            c.insert(SEQ, 0)?;
            c.insert(NEXT_CHUNK, 0)?;
            c.insert(LOG_PRUNED, 0)?;
            // Create every table so read transactions never meet a missing one.
            tx.open_table(DOCS)?;
            tx.open_table(TEXTS)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(VECTORS)?;
            tx.open_table(TOMBSTONES)?;
            tx.open_table(LOG)?;
        }
        tx.commit()?;
        Ok(Self { db })
    }

    /// Opens an existing DocStore file; fails with `InUse` if another process has it open.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        let db = Database::open(path).map_err(|e| map_open(e, name))?;
        Ok(Self { db })
    }

    /// The collection settings.
    pub fn settings(&self) -> Result<CollectionSettings> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SETTINGS)?;
        let json = t
            .get("collection")?
            .map(|g| g.value().to_string())
            .unwrap_or_default();
        serde_json::from_str(&json).map_err(Error::json("decoding collection settings"))
    }

    /// Replaces the collection settings (rebuilds only).
    pub fn set_settings(&self, settings: &CollectionSettings) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SETTINGS)?;
            let json = serde_json::to_string(settings).unwrap_or_default();
            t.insert("collection", json.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Document, chunk and tombstone counts and the last sequence.
    pub fn counts(&self) -> Result<StoreCounts> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let chunks = tx.open_table(CHUNKS)?;
        let tombs = tx.open_table(TOMBSTONES)?;
        let tombstones = tombs.len()?;
        Ok(StoreCounts {
            documents: docs.len()?,
            chunks: chunks.len()? - tombstones,
            tombstones,
            seq: counter(&tx.open_table(COUNTERS)?, SEQ)?,
        })
    }

    /// Last sequence number.
    pub fn seq(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        counter(&tx.open_table(COUNTERS)?, SEQ)
    }

    /// Sequence through which the log has been dropped; replay from an older point is impossible.
    pub fn log_pruned(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        counter(&tx.open_table(COUNTERS)?, LOG_PRUNED)
    }

    /// Stored content hash for each id (`None` when absent), to skip unchanged documents before
    /// paying for chunking and embedding.
    pub fn hashes(&self, ids: &[&str]) -> Result<Vec<Option<String>>> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        ids.iter()
            .map(|id| match docs.get(*id)? {
                Some(g) => Ok(Some(decode::<DocRecord>(g.value(), "document")?.hash)),
                None => Ok(None),
            })
            .collect()
    }

    /// A document's record and raw text.
    pub fn document(&self, id: &str) -> Result<Option<(DocRecord, String)>> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let texts = tx.open_table(TEXTS)?;
        let Some(g) = docs.get(id)? else {
            return Ok(None);
        };
        let rec: DocRecord = decode(g.value(), "document")?;
        let text = texts
            .get(id)?
            .map(|t| t.value().to_string())
            .unwrap_or_default();
        Ok(Some((rec, text)))
    }

    /// Document records (no raw text) for `ids`, `None` where absent.
    pub fn doc_records(&self, ids: &[&str]) -> Result<Vec<Option<DocRecord>>> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        ids.iter()
            .map(|id| match docs.get(*id)? {
                Some(g) => Ok(Some(decode(g.value(), "document")?)),
                None => Ok(None),
            })
            .collect()
    }

    /// All document ids, sorted.
    pub fn document_ids(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let mut out = Vec::with_capacity(docs.len()? as usize);
        for row in docs.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// The chunk records for `ids` (absent ids are skipped).
    pub fn chunks(&self, ids: &[u64]) -> Result<Vec<(u64, ChunkRecord)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHUNKS)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(g) = t.get(id)? {
                out.push((id, decode(g.value(), "chunk")?));
            }
        }
        Ok(out)
    }

    /// The vectors for `ids` (absent ids are skipped).
    pub fn vectors(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(VECTORS)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(g) = t.get(id)? {
                out.push((id, vector_from_bytes(g.value())));
            }
        }
        Ok(out)
    }

    /// Every live chunk with its vector and owning document's title and metadata, in one
    /// consistent snapshot, in document-id order; `f` sees them in groups of about `group`
    /// chunks. Returns the snapshot's sequence.
    pub fn scan_live(
        &self,
        group: usize,
        mut f: impl FnMut(Vec<LiveChunk>) -> Result<()>,
    ) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let seq = counter(&tx.open_table(COUNTERS)?, SEQ)?;
        let docs = tx.open_table(DOCS)?;
        let chunks = tx.open_table(CHUNKS)?;
        let vectors = tx.open_table(VECTORS)?;
        let mut buf = Vec::with_capacity(group);
        for row in docs.iter()? {
            let (k, v) = row?;
            let doc_id = k.value().to_string();
            let rec: DocRecord = decode(v.value(), "document")?;
            for &id in &rec.chunks {
                let chunk: ChunkRecord = match chunks.get(id)? {
                    Some(g) => decode(g.value(), "chunk")?,
                    None => return Err(missing(format!("chunk {id} of document {doc_id:?}"))),
                };
                let vector = match vectors.get(id)? {
                    Some(g) => vector_from_bytes(g.value()),
                    None => return Err(missing(format!("vector of chunk {id}"))),
                };
                buf.push(LiveChunk {
                    id,
                    title: rec.title.clone(),
                    metadata: rec.metadata.clone(),
                    chunk,
                    vector,
                });
            }
            if buf.len() >= group {
                f(std::mem::take(&mut buf))?;
            }
        }
        if !buf.is_empty() {
            f(buf)?;
        }
        Ok(seq)
    }

    /// Tombstoned chunk ids.
    pub fn tombstones(&self) -> Result<Vec<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOMBSTONES)?;
        let mut out = Vec::with_capacity(t.len()? as usize);
        for row in t.iter()? {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// Log entries with a sequence above `after`, in order.
    pub fn log_after(&self, after: u64) -> Result<Vec<LogOp>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOG)?;
        let mut out = Vec::new();
        for row in t.range(after + 1..)? {
            out.push(decode(row?.1.value(), "log entry")?);
        }
        Ok(out)
    }

    /// Drops log entries up to `through` once a checkpoint no longer needs them.
    pub fn prune_log(&self, through: u64) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut log = tx.open_table(LOG)?;
            log.retain_in(..=through, |_, _| false)?;
            let mut c = tx.open_table(COUNTERS)?;
            let pruned = counter(&c, LOG_PRUNED)?;
            c.insert(LOG_PRUNED, pruned.max(through))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes tombstoned chunks and their vectors, after a rebuild has left them out of the
    /// live generation. Returns how many were dropped.
    pub fn drop_tombstoned(&self) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let n;
        {
            let mut tombs = tx.open_table(TOMBSTONES)?;
            let mut chunks = tx.open_table(CHUNKS)?;
            let mut vectors = tx.open_table(VECTORS)?;
            let ids: Vec<u64> = tombs
                .iter()?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for &id in &ids {
                chunks.remove(id)?;
                vectors.remove(id)?;
            }
            tombs.retain(|_, _| false)?;
            n = ids.len() as u64;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Applies a batch of writes in one transaction and commits it. Returns each write's outcome
    /// and, for the writes that changed something, the log entries the derived indexes apply.
    pub fn write(
        &self,
        batch: Vec<DocWrite>,
        dim: usize,
    ) -> Result<(Vec<WriteOutcome>, Vec<LogOp>)> {
        let mut seen = HashSet::new();
        for w in &batch {
            let id = match w {
                DocWrite::Upsert {
                    doc,
                    chunks,
                    vectors,
                    ..
                } => {
                    if chunks.len() != vectors.len() {
                        return Err(Error::InvalidInput(format!(
                            "document {:?}: {} chunks but {} vectors",
                            doc.id,
                            chunks.len(),
                            vectors.len()
                        )));
                    }
                    if let Some(v) = vectors.iter().find(|v| v.len() != dim) {
                        return Err(Error::InvalidInput(format!(
                            "document {:?}: vector of {} dimensions, the collection has {dim}",
                            doc.id,
                            v.len()
                        )));
                    }
                    for c in chunks {
                        if doc.text.get(c.start..c.end) != Some(c.text.as_str()) {
                            return Err(Error::InvalidInput(format!(
                                "document {:?}: chunk {}..{} does not match its text",
                                doc.id, c.start, c.end
                            )));
                        }
                    }
                    &doc.id
                }
                DocWrite::Delete { id } => id,
            };
            if !seen.insert(id.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "document {id:?} appears twice in one batch"
                )));
            }
        }

        let tx = self.db.begin_write()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut ops = Vec::new();
        {
            let mut counters = tx.open_table(COUNTERS)?;
            let mut docs = tx.open_table(DOCS)?;
            let mut texts = tx.open_table(TEXTS)?;
            let mut chunks_t = tx.open_table(CHUNKS)?;
            let mut vectors_t = tx.open_table(VECTORS)?;
            let mut tombs = tx.open_table(TOMBSTONES)?;
            let mut log = tx.open_table(LOG)?;
            let mut seq = counter(&counters, SEQ)?;
            let mut next_chunk = counter(&counters, NEXT_CHUNK)?;
            for w in batch {
                let id = match &w {
                    DocWrite::Upsert { doc, .. } => doc.id.clone(),
                    DocWrite::Delete { id } => id.clone(),
                };
                let old: Option<DocRecord> = match docs.get(id.as_str())? {
                    Some(g) => Some(decode(g.value(), "document")?),
                    None => None,
                };
                let (outcome, added, removed) = match w {
                    DocWrite::Delete { .. } => match old {
                        None => (WriteOutcome::NotFound, vec![], vec![]),
                        Some(old) => {
                            docs.remove(id.as_str())?;
                            texts.remove(id.as_str())?;
                            (WriteOutcome::Deleted, vec![], old.chunks)
                        }
                    },
                    DocWrite::Upsert {
                        doc,
                        chunks,
                        vectors,
                        force,
                    } => {
                        let hash = doc.content_hash();
                        if !force && old.as_ref().is_some_and(|o| o.hash == hash) {
                            outcomes.push(WriteOutcome::Unchanged);
                            continue;
                        }
                        let mut ids = Vec::with_capacity(chunks.len());
                        for (ordinal, (span, vector)) in chunks.into_iter().zip(vectors).enumerate()
                        {
                            let cid = next_chunk;
                            next_chunk += 1;
                            let rec = ChunkRecord {
                                doc_id: id.clone(),
                                ordinal: ordinal as u32,
                                span,
                            };
                            chunks_t.insert(cid, encode(&rec).as_slice())?;
                            vectors_t.insert(cid, vector_bytes(&vector).as_slice())?;
                            ids.push(cid);
                        }
                        let rec = DocRecord {
                            source: doc.source,
                            title: doc.title,
                            metadata: doc.metadata,
                            hash,
                            chunks: ids.clone(),
                            bytes: doc.text.len() as u64,
                            seq: seq + 1,
                        };
                        docs.insert(id.as_str(), encode(&rec).as_slice())?;
                        texts.insert(id.as_str(), doc.text.as_str())?;
                        match old {
                            None => (WriteOutcome::Added, ids, vec![]),
                            Some(old) => (WriteOutcome::Replaced, ids, old.chunks),
                        }
                    }
                };
                outcomes.push(outcome);
                if outcome == WriteOutcome::NotFound {
                    continue;
                }
                seq += 1;
                for &cid in &removed {
                    tombs.insert(cid, seq)?;
                }
                let op = LogOp {
                    seq,
                    doc_id: id,
                    added,
                    removed,
                };
                log.insert(seq, encode(&op).as_slice())?;
                ops.push(op);
            }
            counters.insert(SEQ, seq)?;
            counters.insert(NEXT_CHUNK, next_chunk)?;
        }
        tx.commit()?;
        Ok((outcomes, ops))
    }
}

/// A live chunk as a rebuild needs it.
#[derive(Debug, Clone)]
pub struct LiveChunk {
    /// Chunk id.
    pub id: u64,
    /// Owning document's title.
    pub title: String,
    /// Owning document's metadata.
    pub metadata: Metadata,
    /// The chunk.
    pub chunk: ChunkRecord,
    /// Its embedding.
    pub vector: Vec<f32>,
}

/// A read snapshot of a DocStore: redb's MVCC keeps what it sees unchanged while writers go on,
/// so a copy can be written from it after the collection's write lock is released.
pub struct DocStoreSnapshot {
    tx: redb::ReadTransaction,
}

impl std::fmt::Debug for DocStoreSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocStoreSnapshot").finish_non_exhaustive()
    }
}

impl DocStore {
    /// The DocStore as of now, for [`DocStoreSnapshot::write_to`].
    pub fn read_snapshot(&self) -> Result<DocStoreSnapshot> {
        Ok(DocStoreSnapshot {
            tx: self.db.begin_read()?,
        })
    }
}

impl DocStoreSnapshot {
    /// Last sequence number the snapshot holds.
    pub fn seq(&self) -> Result<u64> {
        counter(&self.tx.open_table(COUNTERS)?, SEQ)
    }

    /// Writes every table of the snapshot, log included, to a new redb file at `path` (which
    /// must not exist): a DocStore that opens as this one did at the snapshot, without the free
    /// pages of the original.
    pub fn write_to(&self, path: &Path, name: &str) -> Result<()> {
        if path.exists() {
            return Err(Error::Io {
                context: format!("writing a DocStore copy to {}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let db = Database::create(path).map_err(|e| map_open(e, name))?;
        let tx = db.begin_write()?;
        copy_table(&self.tx, &tx, SETTINGS)?;
        copy_table(&self.tx, &tx, COUNTERS)?;
        copy_table(&self.tx, &tx, DOCS)?;
        copy_table(&self.tx, &tx, TEXTS)?;
        copy_table(&self.tx, &tx, CHUNKS)?;
        copy_table(&self.tx, &tx, VECTORS)?;
        copy_table(&self.tx, &tx, TOMBSTONES)?;
        copy_table(&self.tx, &tx, LOG)?;
        tx.commit()?;
        Ok(())
    }
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let src = from.open_table(def)?;
    let mut dst = to.open_table(def)?;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

fn counter(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    Ok(t.get(key)?.map(|g| g.value()).unwrap_or(0))
}

fn missing(what: String) -> Error {
    Error::Corrupt {
        path: "docstore.redb".into(),
        reason: format!("{what} is missing"),
    }
}

fn map_open(e: redb::DatabaseError, name: &str) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse(name.to_string()),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> DocumentInput {
        DocumentInput {
            id: id.into(),
            source: format!("{id}.txt"),
            title: String::new(),
            text: text.into(),
            metadata: Metadata::new(),
        }
    }

    fn upsert(id: &str, text: &str, force: bool) -> DocWrite {
        let d = doc(id, text);
        let span = ChunkSpan {
            start: 0,
            end: text.len(),
            tokens: 3,
            text: text.into(),
        };
        DocWrite::Upsert {
            doc: d,
            chunks: vec![span],
            vectors: vec![vec![1.0, 0.0]],
            force,
        }
    }

    #[test]
    fn upsert_skip_replace_delete_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = DocStore::create(
            &dir.path().join("d.redb"),
            "t",
            &CollectionSettings::default(),
        )
        .unwrap();
        let (o, ops) = s
            .write(
                vec![upsert("a", "one", false), upsert("b", "two", false)],
                2,
            )
            .unwrap();
        assert_eq!(o, [WriteOutcome::Added, WriteOutcome::Added]);
        assert_eq!(ops.len(), 2);
        let (o, ops) = s.write(vec![upsert("a", "one", false)], 2).unwrap();
        assert_eq!((o[0], ops.len()), (WriteOutcome::Unchanged, 0));
        let (o, ops) = s.write(vec![upsert("a", "uno", false)], 2).unwrap();
        assert_eq!(o[0], WriteOutcome::Replaced);
        assert_eq!(
            (ops[0].added.clone(), ops[0].removed.clone()),
            (vec![2], vec![0])
        );
        let (o, _) = s
            .write(
                vec![
                    DocWrite::Delete { id: "b".into() },
                    DocWrite::Delete { id: "zz".into() },
                ],
                2,
            )
            .unwrap();
        assert_eq!(o, [WriteOutcome::Deleted, WriteOutcome::NotFound]);
        let c = s.counts().unwrap();
        assert_eq!((c.documents, c.chunks, c.tombstones, c.seq), (1, 1, 2, 4));
        assert_eq!(
            s.log_after(2)
                .unwrap()
                .iter()
                .map(|o| o.seq)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        s.prune_log(3).unwrap();
        assert_eq!(s.log_after(0).unwrap().len(), 1);
        assert_eq!(s.log_pruned().unwrap(), 3);
        assert_eq!(s.drop_tombstoned().unwrap(), 2);
        assert_eq!(s.counts().unwrap().tombstones, 0);
        let (rec, text) = s.document("a").unwrap().unwrap();
        assert_eq!((rec.chunks, text.as_str()), (vec![2], "uno"));
        let mut live = vec![];
        s.scan_live(10, |g| {
            live.extend(g);
            Ok(())
        })
        .unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].vector, [1.0, 0.0]);
    }

    #[test]
    fn bad_batches_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = DocStore::create(
            &dir.path().join("d.redb"),
            "t",
            &CollectionSettings::default(),
        )
        .unwrap();
        let e = s
            .write(vec![upsert("a", "x", false), upsert("a", "y", false)], 2)
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = s.write(vec![upsert("a", "x", false)], 3).unwrap_err();
        assert!(e.to_string().contains("dimensions"), "{e}");
        assert_eq!(s.counts().unwrap(), StoreCounts::default());
    }

    #[test]
    fn a_second_open_is_refused_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.redb");
        let _s = DocStore::create(&p, "t", &CollectionSettings::default()).unwrap();
        assert!(matches!(DocStore::open(&p, "t"), Err(Error::InUse(_))));
    }
}
