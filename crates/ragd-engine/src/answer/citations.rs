//! Citations: `[n]` markers resolved to their sources, with the snippet that best matches the
//! citing sentence.

use super::*;

/// Resolves markers to sources: distinct markers in order of first use, and how many
/// occurrences pointed to no source.
pub(super) fn resolve(
    answer: &str,
    markers: &[Marker],
    sources: &[Source],
) -> (Vec<Citation>, usize) {
    let mut out: Vec<Citation> = Vec::new();
    let mut dropped = 0;
    for m in markers {
        let Some(src) = sources.iter().find(|s| s.marker == m.source) else {
            dropped += 1;
            continue;
        };
        if out.iter().any(|c| c.marker == m.source) {
            continue;
        }
        out.push(Citation {
            marker: m.source,
            document_id: src.document_id.clone(),
            chunk_id: src.chunk_id,
            title: src.title.clone(),
            start: src.start,
            end: src.end,
            snippet: snippet(&src.text, citing_sentence(answer, m.start)),
        });
    }
    (out, dropped)
}

/// The sentence of `answer` that holds byte offset `at` (the text before the marker).
pub(super) fn citing_sentence(answer: &str, at: usize) -> &str {
    let mut prev = "";
    for (i, s) in answer.split_sentence_bound_indices() {
        if at < i + s.len() {
            // A marker right after a full stop belongs to the sentence before it.
            return if s.trim_start().starts_with('[') && !prev.is_empty() {
                prev
            } else {
                s
            };
        }
        prev = s;
    }
    prev
}

pub(super) const SNIPPET_BYTES: usize = 200;

pub(super) fn words(s: &str) -> HashSet<String> {
    s.unicode_words()
        .filter(|w| w.chars().count() >= 3 || w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_lowercase)
        .collect()
}

/// The source sentence sharing the most words with `claim` (the first one on a tie), shortened
/// to about 200 bytes at a word boundary.
pub(super) fn snippet(source: &str, claim: &str) -> String {
    let want = words(claim);
    let best = source
        .split_sentence_bounds()
        .filter(|s| !s.trim().is_empty())
        .map(|s| (words(s).intersection(&want).count(), s))
        .fold(None::<(usize, &str)>, |best, (n, s)| match best {
            Some((b, _)) if b >= n => best,
            _ => Some((n, s)),
        })
        .map_or(source, |(_, s)| s);
    let s = best.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() <= SNIPPET_BYTES {
        return s;
    }
    let head = ragd_core::truncate_utf8(&s, SNIPPET_BYTES);
    let cut = head.rfind(' ').unwrap_or(head.len());
    format!("{}…", &s[..cut])
}
