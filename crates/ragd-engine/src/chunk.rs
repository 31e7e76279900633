//! Chunking with text-splitter, sized in the encoder's own tokens.
//!
//! A chunk's budget is the encoder's input as the embedding will see it: special tokens, plus the
//! document title when titles are embedded, plus the chunk text. The splitter therefore never
//! makes a chunk the encoder would truncate. Chunk text is always a slice of the raw text, so its
//! byte range is exact.

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use ragd_core::ChunkSpan;
use ragd_models::{TokenCounter, WordTokens};
use ragd_store::ChunkSettings;
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter, TryChunkSizer};

/// Slices this short are tokenized directly: cheaper than the index lookups.
const DIRECT_BYTES: usize = 64;
/// A cut word longer than this is sized by its bytes (never fewer than its tokens for WordPiece
/// or byte-level BPE) rather than tokenized on every candidate.
const FRAGMENT_BYTES: usize = 256;

/// Sizes slices of one document in the encoder's tokens, and stops the splitter when the job is
/// cancelled. Without an index ([`Sizer::exact`]) it tokenizes every slice.
///
/// The document is tokenized once ([`TokenCounter::words`]); a slice's size is the tokens of the
/// words wholly inside it (a prefix sum) plus those of the at most two words it cuts, tokenized
/// alone. That is exact for tokenizers whose words tokenize independently (BERT's pre-tokenizer
/// with WordPiece), and [`Chunker::chunk_until`] checks every chunk exactly afterwards in any
/// case. Tokenizing every candidate instead made the Markdown splitter quadratic on nested lists
/// (a 161 KB file took 79 s).
struct Sizer<'t> {
    counter: &'t TokenCounter,
    text: &'t str,
    /// Empty when there is no index (the tokenizer gave no word ranges, or [`Sizer::exact`]):
    /// every slice is then tokenized.
    words: Vec<WordTokens>,
    /// `prefix[i]`: tokens of `words[..i]`.
    prefix: Vec<usize>,
    cancel: &'t Cancel,
}

impl<'t> Sizer<'t> {
    fn new(counter: &'t TokenCounter, text: &'t str, cancel: &'t Cancel) -> Self {
        let words = counter.words(text).unwrap_or_default();
        let mut prefix = Vec::with_capacity(words.len() + 1);
        prefix.push(0);
        for w in &words {
            prefix.push(prefix[prefix.len() - 1] + w.tokens);
        }
        Self {
            counter,
            text,
            words,
            prefix,
            cancel,
        }
    }

    /// A sizer that tokenizes every slice (re-cutting a chunk the index under-sized).
    fn exact(counter: &'t TokenCounter, cancel: &'t Cancel) -> Self {
        Self {
            counter,
            text: "",
            words: Vec::new(),
            prefix: vec![0],
            cancel,
        }
    }

    /// `chunk`'s byte range in the document, when it is a slice of it.
    fn range(&self, chunk: &str) -> Option<(usize, usize)> {
        let start = (chunk.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        let end = start + chunk.len();
        (end <= self.text.len()).then_some((start, end))
    }

    fn size(&self, chunk: &str) -> usize {
        let indexed = chunk.len() > DIRECT_BYTES && !self.words.is_empty();
        let Some((start, end)) = self.range(chunk).filter(|_| indexed) else {
            return self.counter.count(chunk);
        };
        let w = &self.words;
        let mut lo = w.partition_point(|x| x.end <= start);
        let mut hi = w.partition_point(|x| x.start < end);
        let mut n = 0;
        if lo < hi && w[lo].start < start {
            n += self.fragment(start, w[lo].end.min(end));
            lo += 1;
        }
        if lo < hi && w[hi - 1].end > end {
            n += self.fragment(w[hi - 1].start, end);
            hi -= 1;
        }
        if lo < hi {
            n += self.prefix[hi] - self.prefix[lo];
        }
        n
    }

    /// Tokens of the part `start..end` of a word the slice cuts.
    fn fragment(&self, start: usize, end: usize) -> usize {
        match self.text.get(start..end) {
            Some(f) if f.len() <= FRAGMENT_BYTES => self.counter.count(f),
            _ => end - start,
        }
    }
}

impl TryChunkSizer for Sizer<'_> {
    type Error = Error;

    fn try_size(&self, chunk: &str) -> Result<usize> {
        self.cancel.check()?;
        Ok(self.size(chunk))
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
        self.chunk_until(title, text, markdown, &Cancel::default())
    }

    /// [`Chunker::chunk`], stopping with `cancel`'s error as soon as it says so. Time and memory
    /// grow with the text's length (the text is tokenized once; every candidate chunk is sized
    /// from that).
    pub fn chunk_until(
        &self,
        title: &str,
        text: &str,
        markdown: bool,
        cancel: &Cancel,
    ) -> Result<Vec<ChunkSpan>> {
        cancel.check()?;
        let s = &self.settings;
        let prefix = self.title_prefix(title);
        let overhead = self.counter.special_tokens() + prefix.map_or(0, |t| self.counter.count(t));
        let max = s.max_tokens.saturating_sub(overhead).max(1);
        let min = s.min_tokens.saturating_sub(overhead).clamp(1, max);
        let overlap = s.overlap_tokens.min(min.saturating_sub(1));
        let config = ChunkConfig::new(min..=max)
            .with_sizer(Sizer::new(&self.counter, text, cancel))
            .with_overlap(overlap)
            .map_err(|e| Error::InvalidInput(format!("chunking settings: {e}")))?;
        let pieces: Vec<(usize, &str)> = if markdown {
            MarkdownSplitter::new(config)
                .try_chunk_indices(text)
                .collect::<Result<_>>()?
        } else {
            TextSplitter::new(config)
                .try_chunk_indices(text)
                .collect::<Result<_>>()?
        };
        let span = |start: usize, piece: &str, tokens: usize| ChunkSpan {
            start,
            end: start + piece.len(),
            tokens: overhead + tokens,
            text: piece.to_string(),
        };
        let mut out = Vec::with_capacity(pieces.len());
        for (start, piece) in pieces {
            cancel.check()?;
            let tokens = self.counter.count(piece);
            if tokens <= max {
                out.push(span(start, piece, tokens));
                continue;
            }
            // The index under-sized this piece (a tokenizer whose words depend on their
            // neighbours): cut it again, tokenizing every candidate.
            let config = ChunkConfig::new(max).with_sizer(Sizer::exact(&self.counter, cancel));
            for part in TextSplitter::new(config).try_chunk_indices(piece) {
                let (offset, part) = part?;
                out.push(span(start + offset, part, self.counter.count(part)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ragd_models::Embedder;
    use ragd_models::registry::{self, DEFAULT_ENCODER};

    /// The index sizes every slice of a text as tokenizing the slice would (the default
    /// encoder's WordPiece), whatever words, punctuation or characters the slice cuts.
    #[test]
    fn indexed_sizes_equal_tokenized_sizes() {
        let dir = registry::resolve_models_dir(None);
        let counter = Embedder::load(&DEFAULT_ENCODER.dir(&dir))
            .unwrap()
            .token_counter();
        let text = "Résumé: the Kessel-Bridge (1887) spans 42.5 m; naïve \"quotes\", \
                    日本語のテキスト and 🙂 emoji.\n\n## Heading\n- item one\n  - nested, unbelievably \
                    hyphenated-compound-words\tand\u{0001}control characters. Don't stop! \
                    supercalifragilisticexpialidocious antidisestablishmentarianism";
        let cancel = Cancel::default();
        let sizer = Sizer::new(&counter, text, &cancel);
        assert!(!sizer.words.is_empty());
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for (n, &a) in bounds.iter().enumerate() {
            for &b in bounds[n..].iter().step_by(3) {
                let slice = &text[a..b];
                assert_eq!(
                    sizer.size(slice),
                    counter.count(slice),
                    "{a}..{b} {slice:?}"
                );
            }
        }
    }
}
