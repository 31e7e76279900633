//! Grounding: the model's draft checked a sentence at a time against the packed sources
//! (supported sentences kept with their citation, list marks and the question's own words never
//! counted as facts), and the specific-term check of a whole answer.

use super::*;

impl Draft {
    pub(super) fn new(
        sources: Vec<Source>,
        question: String,
        config: AnswerConfig,
        ranked: Vec<(usize, usize, usize)>,
    ) -> Self {
        Self {
            sources: Arc::new(sources),
            question,
            config,
            ranked,
            raw: String::new(),
            done: 0,
            kept: String::new(),
            support: Vec::new(),
            model_refused: false,
            declined: false,
        }
    }

    /// True when `[start, end)` of source `marker` overlaps one of the ranked sentences.
    pub(super) fn on_question(&self, marker: usize, start: usize, end: usize) -> bool {
        self.ranked.is_empty()
            || self
                .ranked
                .iter()
                .any(|&(m, s, e)| m == marker && s < end && start < e)
    }

    /// Adds model text; returns the text of newly accepted sentences, ready to stream. A
    /// sentence is complete when the next one has begun (so markers written after its full
    /// stop are still its own) or at the end.
    pub(super) fn feed(&mut self, delta: &str, end: bool) -> Vec<String> {
        self.raw.push_str(delta);
        let rest = &self.raw[self.done..];
        let mut pieces = answer_sentences(rest);
        if !end {
            // The last piece may still grow; when it opens with a bracket, it may be the marker
            // of the sentence before, which then waits too.
            if pieces
                .pop()
                .is_some_and(|(s, _)| rest[s..].starts_with('['))
            {
                pieces.pop();
            }
        }
        let mut out = Vec::new();
        let mut accepted = Vec::new();
        for (s, e) in pieces {
            accepted.push((self.done + s, self.done + e));
        }
        if let Some(&(_, e)) = accepted.last() {
            self.done = e;
        } else if end {
            self.done = self.raw.len();
        }
        for (s, e) in accepted {
            let sentence = self.raw[s..e].to_string();
            let on_new_line = self.raw[..s].trim_end_matches([' ', '\t']).ends_with('\n');
            if let Some(text) = self.check(&sentence, on_new_line) {
                out.push(text);
            }
        }
        if self.config.unsupported == Unsupported::Decline && !end {
            // Nothing is streamed before the whole draft has been checked.
            return Vec::new();
        }
        if self.config.unsupported == Unsupported::Decline && end {
            return if self.declined || self.kept.is_empty() {
                Vec::new()
            } else {
                vec![self.kept.clone()]
            };
        }
        out
    }

    /// Checks one sentence; returns the text to append to the answer when it is kept.
    pub(super) fn check(&mut self, sentence: &str, on_new_line: bool) -> Option<String> {
        if self.model_refused {
            return None;
        }
        if is_refusal(sentence) {
            self.model_refused = self.kept.is_empty();
            return None;
        }
        let claim = evidence::claim_text(sentence);
        if !claim.chars().any(char::is_alphanumeric) {
            // List numbering or markup alone: nothing to state or to check.
            return None;
        }
        let cited: Vec<usize> = crate::parse_citations(sentence)
            .iter()
            .map(|m| m.source)
            .collect();
        let judge = |s: &Source| {
            let sup = evidence::support(&claim, &self.question, &s.text, &s.title);
            let ok = sup.missing.is_empty() && sup.score >= self.config.min_support;
            (ok, sup)
        };
        // The cited sources first; otherwise the best-supporting packed source.
        let mut best: Option<(bool, evidence::Support, &Source)> = None;
        for s in self
            .sources
            .iter()
            .filter(|s| cited.contains(&s.marker))
            .chain(self.sources.iter().filter(|s| !cited.contains(&s.marker)))
        {
            let (ok, sup) = judge(s);
            let better = match &best {
                None => true,
                Some((bok, bsup, _)) => {
                    (ok && !bok) || (ok == *bok && sup.score > bsup.score + 1e-6)
                }
            };
            if better {
                best = Some((ok, sup, s));
            }
            if best.as_ref().is_some_and(|b| b.0) && cited.contains(&s.marker) {
                break;
            }
        }
        let (supported, sup, src) = best?;
        let (start, end) = (src.start + sup.start, src.start + sup.end);
        let on_question = supported && self.on_question(src.marker, start, end);
        let ok = supported && on_question;
        let trimmed = strip_markers(sentence);
        self.support.push(SentenceSupport {
            sentence: trimmed.clone(),
            supported: ok,
            score: sup.score,
            marker: supported.then_some(src.marker),
            document_id: supported.then(|| src.document_id.clone()),
            start: if supported { start } else { 0 },
            end: if supported { end } else { 0 },
            missing: sup.missing,
            on_question,
        });
        if !ok {
            if self.config.unsupported == Unsupported::Decline {
                self.declined = true;
            }
            return None;
        }
        let text = with_marker(&trimmed, src.marker);
        let sep = if self.kept.is_empty() {
            ""
        } else if on_new_line {
            "\n"
        } else {
            " "
        };
        let piece = format!("{sep}{text}");
        self.kept.push_str(&piece);
        Some(piece)
    }
}

/// Byte ranges of the sentences of an answer; markers right after a full stop stay with the
/// sentence before them, and a line is never longer than one sentence.
pub fn answer_sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    // A list mark split off as a sentence of its own ("1." before "First step") opens the next.
    let mut mark: Option<usize> = None;
    for (s, e) in evidence::sentences(text) {
        let piece = &text[s..e];
        if is_list_mark(piece) {
            mark.get_or_insert(s);
            continue;
        }
        let s = mark.take().unwrap_or(s);
        let piece = &text[s..e];
        // Leading markers ("[1] Then …") belong to the previous sentence.
        let lead = leading_markers(piece);
        if lead > 0
            && let Some(last) = out.last_mut()
        {
            last.1 = s + lead;
            if s + lead < e && !text[s + lead..e].trim().is_empty() {
                let skip = text[s + lead..e].len() - text[s + lead..e].trim_start().len();
                out.push((s + lead + skip, e));
            }
            continue;
        }
        out.push((s, e));
    }
    out
}

/// "1." / "2)" / "-" / "*" / "•" alone.
pub(super) fn is_list_mark(s: &str) -> bool {
    let s = s.trim();
    matches!(s, "-" | "*" | "•" | "+")
        || (s.len() >= 2
            && s.ends_with(['.', ')'])
            && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit()))
}

/// Bytes of `s` taken by marker groups and spaces at its start.
pub(super) fn leading_markers(s: &str) -> usize {
    let mut at = 0;
    loop {
        let rest = &s[at..];
        let trimmed = rest.trim_start();
        let ws = rest.len() - trimmed.len();
        let Some(inner) = trimmed.strip_prefix('[') else {
            return if at == 0 { 0 } else { at };
        };
        match inner.find(']') {
            Some(j)
                if j > 0
                    && inner[..j]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                at += ws + j + 2;
                // Punctuation after a marker ("[1].") goes with it.
                let after = &s[at..];
                let p = after.len() - after.trim_start_matches(['.', ',', ';', ':']).len();
                at += p;
            }
            _ => return if at == 0 { 0 } else { at },
        }
    }
}

/// A source sentence as quoted in an answer: its own bracketed reference numbers ("[12]", common
/// in papers) shown in parentheses, so that they are not read as ragd's citations.
pub(super) fn quote_text(text: &str) -> String {
    let mut out = text.to_string();
    let mut spans: Vec<(usize, usize)> = crate::parse_citations(text)
        .iter()
        .map(|m| (m.start, m.end))
        .collect();
    spans.dedup();
    for (a, b) in spans.into_iter().rev() {
        let inner = out[a + 1..b - 1].to_string();
        out.replace_range(a..b, &format!("({inner})"));
    }
    out
}

/// `sentence` without its citation markers, spaces tidied.
pub(super) fn strip_markers(sentence: &str) -> String {
    let markers = crate::parse_citations(sentence);
    let mut s = sentence.to_string();
    let mut spans: Vec<(usize, usize)> = markers.iter().map(|m| (m.start, m.end)).collect();
    spans.sort_unstable();
    spans.dedup();
    for (a, b) in spans.into_iter().rev() {
        s.replace_range(a..b, "");
    }
    let s = s
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // "1874 ." → "1874."
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if matches!(c, '.' | ',' | ';' | ':' | '!' | '?') && out.ends_with(' ') && i > 0 {
            out.pop();
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// `text` citing `marker` before its closing punctuation: "It opened in 1874 [1]."
pub(super) fn with_marker(text: &str, marker: usize) -> String {
    let body = text.trim_end_matches(['.', '!', '?', ':', ';']);
    let tail = &text[body.len()..];
    format!("{} [{marker}]{tail}", body.trim_end())
}

impl Grounding {
    /// An answer is grounded unless its unsupported specific terms are at least as many as its
    /// supported ones (and there is at least one).
    pub fn is_grounded(&self) -> bool {
        self.unsupported.is_empty() || self.supported.len() > self.unsupported.len()
    }
}

/// Lower-cased words of `s`, numbers without their thousands separators ("1,300" → "1300").
pub(super) fn norm_words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.unicode_words().map(|w| {
        if w.chars().any(|c| c.is_ascii_digit()) {
            w.chars().filter(|c| *c != ',').collect()
        } else {
            w.to_lowercase()
        }
    })
}

/// Checks the answer's specific terms (numbers, capitalised words; citation markers excluded)
/// against the sources it cites and the question.
pub(crate) fn grounding(
    answer: &str,
    markers: &[Marker],
    sources: &[Source],
    question: &str,
) -> Grounding {
    let mut text = answer.to_string();
    let mut spans: Vec<(usize, usize)> = markers.iter().map(|m| (m.start, m.end)).collect();
    spans.sort_unstable();
    spans.dedup();
    for (start, end) in spans.into_iter().rev() {
        if end <= text.len() && text.is_char_boundary(start) && text.is_char_boundary(end) {
            text.replace_range(start..end, " ");
        }
    }
    // Claims are checked against the sources the answer cites (all of them when it cites none
    // that exist): a fact borrowed from another source under the wrong number is not grounded.
    let cited: Vec<&Source> = sources
        .iter()
        .filter(|s| markers.iter().any(|m| m.source == s.marker))
        .collect();
    let checked: Vec<&Source> = if cited.is_empty() {
        sources.iter().collect()
    } else {
        cited
    };
    let known: HashSet<String> = checked
        .iter()
        .flat_map(|s| {
            norm_words(&s.title)
                .chain(norm_words(&s.text))
                .collect::<Vec<_>>()
        })
        .collect();
    let asked: HashSet<String> = norm_words(question).collect();
    let mut g = Grounding::default();
    for w in text.unicode_words() {
        let specific = w.chars().any(|c| c.is_ascii_digit())
            || w.chars().next().is_some_and(char::is_uppercase);
        if !specific {
            continue;
        }
        let Some(n) = norm_words(w).next() else {
            continue;
        };
        if asked.contains(&n) || g.supported.contains(&n) || g.unsupported.contains(&n) {
            continue;
        }
        if known.contains(&n) {
            g.supported.push(n);
        } else if !COMMON.contains(&n.as_str()) {
            g.unsupported.push(n);
        }
    }
    g
}

/// Capitalised words that open sentences and say nothing specific.
pub(crate) const COMMON: &[&str] = &[
    "the",
    "a",
    "an",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "they",
    "there",
    "he",
    "she",
    "his",
    "her",
    "their",
    "in",
    "on",
    "at",
    "by",
    "for",
    "from",
    "of",
    "to",
    "with",
    "and",
    "but",
    "or",
    "so",
    "yes",
    "no",
    "i",
    "according",
    "answer",
    "source",
    "sources",
    "based",
    "however",
    "also",
    "both",
    "each",
    "as",
    "after",
    "before",
    "during",
    "when",
    "which",
    "who",
    "what",
    "where",
    "is",
    "was",
    "are",
    "were",
];
