//! Chunking with text-splitter, sized in the encoder's own tokens.
//!
//! A chunk's budget is the encoder's input as the embedding will see it: special tokens, plus the
//! document title when titles are embedded, plus the chunk text. The splitter therefore never
//! makes a chunk the encoder would truncate. Chunk text is always a slice of the raw text, so its
//! byte range is exact.

use crate::error::{Error, Result};
use ragd_core::ChunkSpan;
use ragd_models::TokenCounter;
use ragd_store::ChunkSettings;
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

#[derive(Debug, Clone)]
struct Sizer(TokenCounter);

impl ChunkSizer for Sizer {
    fn size(&self, chunk: &str) -> usize {
        self.0.count(chunk)
    }
}

/// Cuts documents into chunks for one collection's settings.
#[derive(Debug, Clone)]
pub struct Chunker {
    counter: TokenCounter,
    settings: ChunkSettings,
}

/// The text the encoder embeds for a chunk.
pub fn embed_text(title: Option<&str>, chunk: &str) -> String {
    match title {
        Some(t) => format!("{t}\n{chunk}"),
        None => chunk.to_string(),
    }
}

impl Chunker {
    /// A chunker for `settings`; `encoder_max` is the encoder's longest input, which
    /// `settings.max_tokens` may not exceed.
    pub fn new(counter: TokenCounter, settings: ChunkSettings, encoder_max: usize) -> Result<Self> {
        if settings.max_tokens > encoder_max {
            return Err(Error::InvalidInput(format!(
                "chunking.max_tokens {} is more than the encoder's maximum input of {encoder_max} tokens",
                settings.max_tokens
            )));
        }
        Ok(Self { counter, settings })
    }

    /// The chunker for a collection's `settings`, after checking that `embedder` is the
    /// collection's encoder.
    pub fn for_collection(
        settings: &ragd_store::CollectionSettings,
        embedder: &dyn ragd_models::Encode,
    ) -> Result<Self> {
        crate::check_encoder(settings, embedder)?;
        Self::new(
            embedder.token_counter(),
            settings.chunking,
            embedder.max_len(),
        )
    }

    /// The title to prefix to every chunk of a document, or `None` when titles are not embedded,
    /// empty, or would take more than a quarter of the budget.
    pub fn title_prefix<'t>(&self, title: &'t str) -> Option<&'t str> {
        let t = title.trim();
        if !self.settings.title_in_embedding || t.is_empty() {
            return None;
        }
        (self.counter.count(t) <= self.settings.max_tokens / 4).then_some(t)
    }

    /// Splits `text` (Markdown-aware when `markdown`), returning chunks in text order with their
    /// byte ranges. Each chunk's `tokens` is what the encoder will see for [`embed_text`] with
    /// [`Chunker::title_prefix`].
    pub fn chunk(&self, title: &str, text: &str, markdown: bool) -> Result<Vec<ChunkSpan>> {
        let s = &self.settings;
        let prefix = self.title_prefix(title);
        let overhead = self.counter.special_tokens() + prefix.map_or(0, |t| self.counter.count(t));
        let max = s.max_tokens.saturating_sub(overhead).max(1);
        let min = s.min_tokens.saturating_sub(overhead).clamp(1, max);
        let overlap = s.overlap_tokens.min(min.saturating_sub(1));
        let config = ChunkConfig::new(min..=max)
            .with_sizer(Sizer(self.counter.clone()))
            .with_overlap(overlap)
            .map_err(|e| Error::InvalidInput(format!("chunking settings: {e}")))?;
        let pieces: Vec<(usize, &str)> = if markdown {
            MarkdownSplitter::new(config).chunk_indices(text).collect()
        } else {
            TextSplitter::new(config).chunk_indices(text).collect()
        };
        Ok(pieces
            .into_iter()
            .map(|(start, piece)| ChunkSpan {
                start,
                end: start + piece.len(),
                tokens: overhead + self.counter.count(piece),
                text: piece.to_string(),
            })
            .collect())
    }
}
