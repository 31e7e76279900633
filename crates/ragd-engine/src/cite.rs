//! Citation markers in generated answers: `[n]`, `[n, m]` and `[n][m]`, found in text that arrives
//! in pieces (a marker may be split across stream deltas).

/// One marker occurrence: the source number and the byte range of its bracket group in the
/// answer text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The cited source number (1-based, as printed in the prompt).
    pub source: usize,
    /// Byte offset of the `[` that opens its group.
    pub start: usize,
    /// Byte offset one past the `]` that closes it.
    pub end: usize,
}

/// Longest bracket group considered a marker (`[12, 13, 14]` fits; prose in brackets does not).
const MAX_GROUP: usize = 32;

/// Incremental marker parser: feed deltas in order; each call returns the markers completed by
/// that delta. Text inside brackets that is not a comma-separated list of numbers is ignored.
#[derive(Debug, Default, Clone)]
pub struct CitationParser {
    /// Bytes of the answer seen so far.
    seen: usize,
    /// An open group: its start offset and content so far.
    open: Option<(usize, String)>,
}

impl CitationParser {
    /// A parser at the start of an answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes the next piece of the answer.
    pub fn feed(&mut self, delta: &str) -> Vec<Marker> {
        let mut out = Vec::new();
        for (i, ch) in delta.char_indices() {
            let at = self.seen + i;
            match (&mut self.open, ch) {
                (_, '[') => self.open = Some((at, String::new())),
                (Some((start, body)), ']') => {
                    let start = *start;
                    if let Some(nums) = parse_group(body) {
                        out.extend(nums.into_iter().map(|source| Marker {
                            source,
                            start,
                            end: at + 1,
                        }));
                    }
                    self.open = None;
                }
                (Some((_, body)), c) => {
                    body.push(c);
                    if body.len() > MAX_GROUP {
                        self.open = None;
                    }
                }
                (None, _) => {}
            }
        }
        self.seen += delta.len();
        out
    }
}

/// `"1"`, `"1, 2"`, `"1,2"` → numbers; anything else → None.
fn parse_group(body: &str) -> Option<Vec<usize>> {
    let nums: Option<Vec<usize>> = body
        .split(',')
        .map(|p| {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 4 {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect();
    nums.filter(|n| !n.is_empty())
}

/// Every marker in a complete text.
pub fn parse_citations(text: &str) -> Vec<Marker> {
    CitationParser::new().feed(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_three_forms_and_what_is_not_a_marker() {
        let t = "A [1]. B [2, 3] and [4][5]. Not: [x], [1a], [], [ , ], [see 2], a[b]c, [12345].";
        let got: Vec<usize> = parse_citations(t).iter().map(|m| m.source).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        let m = parse_citations("x [2, 3]");
        assert_eq!((m[0].start, m[0].end), (2, 8));
        assert_eq!(m[1].start, 2);
        // Nested or unclosed brackets: the innermost complete group counts.
        assert_eq!(parse_citations("[[7]")[0].source, 7);
        assert!(parse_citations("[3").is_empty());
    }

    proptest! {
        /// Splitting the text into deltas anywhere (on char boundaries) finds the same markers.
        #[test]
        fn deltas_do_not_change_the_result(
            parts in prop::collection::vec(prop_oneof![
                "[0-9]{1,3}", Just("[".to_string()), Just("]".to_string()), Just(", ".to_string()),
                "[a-z ]{1,5}", Just("é".to_string()),
            ], 0..40),
            cuts in prop::collection::vec(0usize..200, 0..10),
        ) {
            let text: String = parts.concat();
            let whole = parse_citations(&text);
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).filter(|c| text.is_char_boundary(*c)).collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            bounds.dedup();
            let mut p = CitationParser::new();
            let mut pieces = Vec::new();
            for w in bounds.windows(2) {
                pieces.extend(p.feed(&text[w[0]..w[1]]));
            }
            prop_assert_eq!(pieces, whole.clone());
            for m in whole {
                prop_assert_eq!(text.as_bytes()[m.start], b'[');
                prop_assert_eq!(text.as_bytes()[m.end - 1], b']');
            }
        }
    }
}
