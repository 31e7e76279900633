//! Documents as the pipelines hand them to the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Free-form document metadata (the `metadata` object of a BEIR corpus line, or nothing). Keys are
/// sorted, so the serialized form, and with it the content hash, does not depend on input order.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A parsed document, before chunking: what a caller asks the collection to hold under `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentInput {
    /// Caller-chosen identifier; upserts replace the document with the same id.
    pub id: String,
    /// Where it came from (a path, `file.jsonl:line`), for error messages and citations.
    pub source: String,
    /// Title, empty when the format has none.
    pub title: String,
    /// Raw text; chunk byte ranges point into it.
    pub text: String,
    /// Filterable metadata.
    pub metadata: Metadata,
}

impl DocumentInput {
    /// The hash that decides whether a re-ingested document changed: everything that is indexed
    /// (title, text, metadata), not where it came from.
    pub fn content_hash(&self) -> String {
        content_hash(&self.title, &self.text, &self.metadata)
    }
}

/// sha256 over title, text and metadata, each length-prefixed so fields cannot run into each
/// other.
pub fn content_hash(title: &str, text: &str, metadata: &Metadata) -> String {
    let meta = serde_json::to_string(metadata).unwrap_or_default();
    let mut h = Sha256::new();
    for part in [title, text, meta.as_str()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// One chunk of a document's raw text: `text == raw[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpan {
    /// Byte offset of the first byte in the raw text.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// Encoder tokens of the text that was embedded for this chunk (special tokens included).
    pub tokens: usize,
    /// The chunk's text, a slice of the raw text.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_any_indexed_field_but_not_source() {
        let mut meta = Metadata::new();
        meta.insert("year".into(), 2020.into());
        let doc = DocumentInput {
            id: "a".into(),
            source: "a.txt".into(),
            title: "T".into(),
            text: "body".into(),
            metadata: meta.clone(),
        };
        let base = doc.content_hash();
        assert_eq!(
            DocumentInput {
                source: "elsewhere".into(),
                ..doc.clone()
            }
            .content_hash(),
            base
        );
        assert_ne!(
            DocumentInput {
                title: "U".into(),
                ..doc.clone()
            }
            .content_hash(),
            base
        );
        assert_ne!(
            DocumentInput {
                text: "body!".into(),
                ..doc.clone()
            }
            .content_hash(),
            base
        );
        // Field boundaries matter: moving a byte from title to text changes the hash.
        assert_ne!(content_hash("Tb", "ody", &meta), base);
        assert_ne!(
            DocumentInput {
                metadata: Metadata::new(),
                ..doc
            }
            .content_hash(),
            base
        );
    }
}
