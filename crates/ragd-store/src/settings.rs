//! A collection's settings: fixed at create, changed only by a rebuild.

use crate::error::{Error, Result};
use ragd_core::Precision;
use serde::{Deserialize, Serialize};

/// How documents are cut, embedded and indexed. Stored in the DocStore; every generation's
/// manifest records the values it was built with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionSettings {
    /// Encoder model (a directory name in the models directory).
    pub encoder: String,
    /// Its embedding dimension; filled in from the model at create.
    pub dim: usize,
    /// The encoder's precision: documents and queries are embedded alike. Collections written
    /// before this setting existed read as `f32`, which is what they were built with.
    pub encoder_precision: Precision,
    /// Chunking.
    pub chunking: ChunkSettings,
    /// HNSW graph parameters.
    pub hnsw: HnswSettings,
    /// True from the start of a rebuild that re-embeds every chunk at a new `encoder_precision`
    /// until that rebuild finishes. Still true on open means it was interrupted (a crash, a
    /// cancellation): chunks it had not reached hold vectors of the previous precision (cosine
    /// ≥ 0.99 apart, so search works); running the same rebuild again finishes it. Written
    /// only while true, so collections without it read in older versions.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reembedding: bool,
    /// Fused candidates a cross-encoder reranks in searches and answers over this collection
    /// that do not say (0: none). Written only when set, so collections without it read in
    /// older versions.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rerank: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Most fused candidates one search reranks.
pub const MAX_RERANK: usize = 200;

impl Default for CollectionSettings {
    fn default() -> Self {
        Self {
            encoder: "all-minilm-l6-v2".into(),
            dim: 0,
            encoder_precision: Precision::F32,
            chunking: ChunkSettings::default(),
            hnsw: HnswSettings::default(),
            reembedding: false,
            rerank: 0,
        }
    }
}

/// Chunk sizes, in the encoder's own tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkSettings {
    /// Most tokens the encoder sees for one chunk, special tokens and title prefix included; at
    /// most the encoder's maximum input, so no chunk is ever truncated.
    pub max_tokens: usize,
    /// The splitter fills a chunk to at least this many tokens when the text allows.
    pub min_tokens: usize,
    /// Tokens shared by consecutive chunks of one document.
    pub overlap_tokens: usize,
    /// Embed `title + "\n" + chunk` instead of the chunk alone (the title's tokens then come out
    /// of `max_tokens`).
    pub title_in_embedding: bool,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            min_tokens: 192,
            overlap_tokens: 32,
            title_in_embedding: true,
        }
    }
}

/// HNSW parameters (hnsw_rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswSettings {
    /// Neighbours per node per layer.
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Default candidate list size while searching.
    pub ef_search: usize,
}

impl Default for HnswSettings {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

impl CollectionSettings {
    /// Checks that the values can work together; messages name the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSettings(m));
        let c = &self.chunking;
        if self.encoder.trim().is_empty() {
            return bad("encoder must name a model".into());
        }
        if !(16..=8192).contains(&c.max_tokens) {
            return bad(format!(
                "chunking.max_tokens must be 16..=8192, got {}",
                c.max_tokens
            ));
        }
        if c.min_tokens == 0 || c.min_tokens > c.max_tokens {
            return bad(format!(
                "chunking.min_tokens must be 1..=max_tokens ({}), got {}",
                c.max_tokens, c.min_tokens
            ));
        }
        if c.overlap_tokens >= c.min_tokens {
            return bad(format!(
                "chunking.overlap_tokens must be below min_tokens ({}), got {}",
                c.min_tokens, c.overlap_tokens
            ));
        }
        if self.rerank > MAX_RERANK {
            return bad(format!(
                "rerank must be 0 (off) or 1..={MAX_RERANK}, got {}",
                self.rerank
            ));
        }
        let h = &self.hnsw;
        if !(2..=128).contains(&h.m) {
            return bad(format!("hnsw.m must be 2..=128, got {}", h.m));
        }
        if h.ef_construction < h.m || h.ef_construction > 4096 {
            return bad(format!(
                "hnsw.ef_construction must be m..=4096, got {}",
                h.ef_construction
            ));
        }
        if !(1..=4096).contains(&h.ef_search) {
            return bad(format!(
                "hnsw.ef_search must be 1..=4096, got {}",
                h.ef_search
            ));
        }
        Ok(())
    }
}

/// Checks a collection name before it becomes a directory name: 1–64 characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit (so never `.`, `..` or hidden).
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return bad("it must start with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_data_dir_are_refused() {
        for ok in ["scifact", "a", "my-docs_2.v1", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "-flag",
            "sp ace",
            "é",
            "a\0b",
            &"x".repeat(65),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid collection name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn settings_validation_names_the_key() {
        assert!(CollectionSettings::default().validate().is_ok());
        let mut s = CollectionSettings::default();
        s.chunking.overlap_tokens = s.chunking.min_tokens;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("chunking.overlap_tokens")
        );
        let mut s = CollectionSettings::default();
        s.hnsw.m = 1;
        assert!(s.validate().unwrap_err().to_string().contains("hnsw.m"));
        let mut s = CollectionSettings::default();
        s.chunking.min_tokens = 1000;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("chunking.min_tokens")
        );
    }
}
