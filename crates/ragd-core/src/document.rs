//! Documents as the pipelines hand them to the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Free-form document metadata (the `metadata` object of a BEIR corpus line, or nothing). Keys are
/// sorted, so the serialized form, and with it the content hash, does not depend on input order.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Longest title a document may carry, in bytes. Titles, like metadata, are copied into every
/// hit and every prompt source of the document: their sizes are bounded so one request cannot
/// make every later response huge.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Most metadata keys per document.
pub const MAX_METADATA_KEYS: usize = 64;
/// Largest metadata per document, in bytes of its JSON form.
pub const MAX_METADATA_BYTES: usize = 8192;

/// Refuses a title or metadata over the bounds ([`MAX_TITLE_BYTES`], [`MAX_METADATA_KEYS`],
/// [`MAX_METADATA_BYTES`]), with a message that gives sizes, not contents.
pub fn check_bounds(title: &str, metadata: &Metadata) -> Result<(), String> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(format!(
            "the title is {} bytes; the limit is {MAX_TITLE_BYTES}",
            title.len()
        ));
    }
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(format!(
            "metadata has {} keys; the limit is {MAX_METADATA_KEYS}",
            metadata.len()
        ));
    }
    let bytes = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_METADATA_BYTES {
        return Err(format!(
            "metadata is {bytes} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
        ));
    }
    Ok(())
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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
    /// [`check_bounds`] on this document's title and metadata.
    pub fn check_bounds(&self) -> Result<(), String> {
        check_bounds(&self.title, &self.metadata)
    }

    /// The hash that decides whether a re-ingested document changed: everything that is indexed
    /// (title, text, metadata), not where it came from.
    pub fn content_hash(&self) -> String {
        content_hash(&self.title, &self.text, &self.metadata)
    }
}

/// A metadata value as text: a string as it is, anything else as its JSON (`2019`, `true`,
/// `["a","b"]`). The one form the gRPC API carries, filters compare and the content hash reads,
/// so a document hashes the same whether its metadata arrived as JSON values (a JSONL file) or
/// as strings (gRPC).
pub fn metadata_text(v: &serde_json::Value) -> std::borrow::Cow<'_, str> {
    match v {
        serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// sha256 over title, text and metadata (each value as [`metadata_text`], keys sorted), each
/// length-prefixed so fields cannot run into each other.
pub fn content_hash(title: &str, text: &str, metadata: &Metadata) -> String {
    let texts: std::collections::BTreeMap<&str, std::borrow::Cow<'_, str>> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), metadata_text(v)))
        .collect();
    let meta = serde_json::to_string(&texts).unwrap_or_default();
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn titles_and_metadata_are_bounded_and_cuts_keep_characters_whole() {
        let mut d = DocumentInput {
            id: "d".into(),
            source: String::new(),
            title: "t".repeat(MAX_TITLE_BYTES),
            text: "x".into(),
            metadata: Metadata::new(),
        };
        assert_eq!(d.check_bounds(), Ok(()));
        d.title.push('t');
        assert!(
            d.check_bounds()
                .unwrap_err()
                .contains("title is 1025 bytes")
        );
        d.title.clear();
        for i in 0..=MAX_METADATA_KEYS {
            d.metadata.insert(format!("k{i}"), "v".into());
        }
        assert!(d.check_bounds().unwrap_err().contains("65 keys"));
        d.metadata.clear();
        d.metadata
            .insert("k".into(), "v".repeat(MAX_METADATA_BYTES).into());
        let e = d.check_bounds().unwrap_err();
        assert!(e.contains("as JSON") && !e.contains("vvvv"), "{e}");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("aé", 3), "aé");
    }

    /// Metadata hashes by its text: `2020` from a JSONL file and `"2020"` over gRPC are one
    /// document, and string-only metadata hashes as it always did.
    #[test]
    fn metadata_hashes_by_its_text_whichever_way_it_arrived() {
        let json: Metadata =
            serde_json::from_str(r#"{"year": 2020, "ok": true, "tags": ["a", "b"], "who": "x"}"#)
                .unwrap();
        let text: Metadata = serde_json::from_str(
            r#"{"who": "x", "year": "2020", "ok": "true", "tags": "[\"a\",\"b\"]"}"#,
        )
        .unwrap();
        assert_eq!(content_hash("T", "b", &json), content_hash("T", "b", &text));
        let other: Metadata =
            serde_json::from_str(r#"{"year": 2021, "ok": true, "tags": ["a", "b"], "who": "x"}"#)
                .unwrap();
        assert_ne!(
            content_hash("T", "b", &json),
            content_hash("T", "b", &other)
        );
        // Unchanged for string-only metadata: the JSON of the map itself.
        let strings: Metadata = serde_json::from_str(r#"{"b": "2", "a": "1"}"#).unwrap();
        let old = {
            let meta = serde_json::to_string(&strings).unwrap();
            let mut h = Sha256::new();
            for part in ["T", "b", meta.as_str()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            hex::encode(h.finalize())
        };
        assert_eq!(content_hash("T", "b", &strings), old);
    }

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
