//! Evidence from the words themselves: how much of a question a passage covers (its terms
//! weighted by their rarity in the collection, as BM25 weighs them), the sentences of a passage
//! with their byte ranges, and whether a sentence of an answer is supported by a source.
//!
//! All term comparisons use the lexical index's own analyzer ([`ragd_store::analyze`]:
//! lower-case, English stop words removed, Porter stems), so "fine-tuned" in an answer matches
//! "fine-tuning" in a source and a question's acronym matches the passage that spells it out.

use crate::error::Result;
use ragd_store::Collection;
use std::collections::{HashMap, HashSet};
use unicode_segmentation::UnicodeSegmentation;

/// A question's terms with their weights: BM25's inverse document frequency in the collection,
/// doubled for specific terms (numbers, acronyms, capitalised names), which decide topicality.
#[derive(Debug, Clone, Default)]
pub struct QueryTerms {
    terms: Vec<(String, f32)>,
    total: f32,
}

impl QueryTerms {
    /// The analyzed terms of `question` weighted by their rarity in `collection`; the words
    /// that make it a question ("what", "does", "how") are not terms: documents rarely contain
    /// them, so they would weigh as much as the rarest name.
    pub fn new(collection: &Collection, question: &str) -> Result<Self> {
        let mut terms: Vec<String> = ragd_store::analyze(&without_framing(question))
            .into_iter()
            .filter(|t| !QUESTION_WORDS.contains(&t.as_str()))
            .collect();
        terms.sort_unstable();
        terms.dedup();
        let (n, freqs) = collection.doc_freqs(&terms)?;
        let specific = specific_terms(question);
        Ok(Self::weighted(
            terms
                .into_iter()
                .zip(freqs)
                .map(|(t, df)| {
                    let w = idf(n, df) * if specific.contains(&t) { 2.0 } else { 1.0 };
                    (t, w)
                })
                .collect(),
        ))
    }

    fn weighted(terms: Vec<(String, f32)>) -> Self {
        let total = terms.iter().map(|t| t.1).sum();
        Self { terms, total }
    }

    /// The terms not in `known` (for example the title of the passage's document: words every
    /// sentence of it is about), or all of them when none is left.
    pub fn focus(&self, known: &HashSet<String>) -> Self {
        let rest: Vec<(String, f32)> = self
            .terms
            .iter()
            .filter(|(t, _)| !known.contains(t))
            .cloned()
            .collect();
        if rest.is_empty() {
            self.clone()
        } else {
            Self::weighted(rest)
        }
    }

    /// The same terms with each weight multiplied by `scale(term)`.
    pub fn scaled(&self, scale: impl Fn(&str) -> f32) -> Self {
        Self::weighted(
            self.terms
                .iter()
                .map(|(t, w)| (t.clone(), w * scale(t)))
                .collect(),
        )
    }

    /// True when the question has no searchable term (all stop words).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The weighted share of the question's terms that `passage` (its analyzed terms) holds,
    /// 0..=1.
    pub fn coverage(&self, passage: &HashSet<String>) -> f32 {
        if self.total <= 0.0 {
            return 0.0;
        }
        // A fold from +0.0: an empty float sum is -0.0, which reads "-0.00" in `--explain`.
        let hit: f32 = self
            .terms
            .iter()
            .filter(|(t, _)| passage.contains(t))
            .fold(0.0, |sum, t| sum + t.1);
        hit / self.total
    }
}

/// How many sentences of one passage hold each term: a term in most of them is what the
/// passage is about, one in few is what tells its sentences apart.
#[derive(Debug, Default)]
pub struct SentenceFreqs {
    freqs: HashMap<String, usize>,
    sentences: usize,
}

impl SentenceFreqs {
    /// Counts over the analyzed term sets of a passage's sentences.
    pub fn new<'s>(sentences: impl IntoIterator<Item = &'s HashSet<String>>) -> Self {
        let mut freqs = HashMap::new();
        let mut count = 0;
        for set in sentences {
            count += 1;
            for t in set {
                *freqs.entry(t.clone()).or_insert(0) += 1;
            }
        }
        Self {
            freqs,
            sentences: count,
        }
    }

    /// The term's inverse sentence frequency (BM25's form), 1 for a passage of one sentence
    /// and for terms it does not hold, so that a lone sentence is scored as before.
    pub fn weight(&self, term: &str) -> f32 {
        match self.freqs.get(term) {
            Some(&sf) if self.sentences > 1 => {
                idf(self.sentences as u64, sf as u64) / idf(self.sentences as u64, 1)
            }
            _ => 1.0,
        }
    }
}

/// `question` without the words that only say what kind of answer it wants: "type" in "What
/// type of virus …" and "What type does it return?", "name" in "What is the name of …".
/// Sources rarely use them for the answer ("… a betacoronavirus …"), but a wrong sentence that
/// happens to contain "type" would score on them.
pub fn without_framing(question: &str) -> String {
    let words: Vec<(usize, &str)> = question.unicode_word_indices().collect();
    let lower: Vec<String> = words.iter().map(|(_, w)| w.to_lowercase()).collect();
    let is =
        |i: usize, options: &[&str]| lower.get(i).is_some_and(|w| options.contains(&w.as_str()));
    let mut drop: Vec<(usize, usize)> = Vec::new();
    for (i, &(at, word)) in words.iter().enumerate() {
        let kind = is(
            i,
            &[
                "type", "types", "kind", "kinds", "sort", "sorts", "form", "forms",
            ],
        ) && i > 0
            && is(i - 1, &["what", "which"])
            && (is(i + 1, &["of"]) || is(i + 1, AUXILIARIES));
        let name = is(i, &["name", "names"])
            && is(i + 1, &["of"])
            && i >= 2
            && is(i - 1, &["the"])
            && is(i - 2, &["is", "was", "are", "were", "what", "what's", "s"]);
        if kind || name {
            drop.push((at, at + word.len()));
        }
    }
    let mut out = question.to_string();
    for (s, e) in drop.into_iter().rev() {
        out.replace_range(s..e, " ");
    }
    out
}

/// Interrogatives and auxiliaries as the analyzer stems them.
const QUESTION_WORDS: &[&str] = &[
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "doe", "do", "did",
    "can", "could", "would", "should", "ha", "has", "have", "had", "been", "mani", "much",
];

/// BM25's inverse document frequency (Lucene's form, never negative).
fn idf(n: u64, df: u64) -> f32 {
    let (n, df) = (n as f32, df.min(n) as f32);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The analyzed terms of `text` as a set.
pub fn term_set(text: &str) -> HashSet<String> {
    ragd_store::analyze(text).into_iter().collect()
}

/// The analyzed terms of `text`'s [`specific_words`] (a question's names), as a set.
pub fn specific_terms(text: &str) -> HashSet<String> {
    specific_words(text).flat_map(ragd_store::analyze).collect()
}

/// Words that name something: numbers, acronyms and capitalised words that do not open a
/// sentence.
pub fn specific_words(text: &str) -> impl Iterator<Item = &str> {
    text.split_sentence_bounds().flat_map(|sentence| {
        sentence
            .unicode_words()
            .enumerate()
            .filter(|(i, w)| {
                w.chars().any(|c| c.is_ascii_digit())
                    || (w.chars().count() >= 2 && w.chars().all(|c| !c.is_lowercase()))
                    || (*i > 0 && w.chars().next().is_some_and(char::is_uppercase))
            })
            .map(|(_, w)| w)
    })
}

/// Byte ranges of the sentences of `text`, without surrounding whitespace; blank pieces are
/// skipped. Hard-wrapped prose is joined across single line breaks; a blank line, a heading, a
/// list item, a table row, a quote or a code fence starts a new sentence. A full stop after an
/// initial or a title ("M. Ward", "Dr. Lee", "Fig. 2") does not end the sentence.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    // Unicode sentence bounds break after every line feed; pieces are joined back where the
    // break is only a wrapped line.
    let mut open: Option<(usize, usize)> = None;
    for (i, piece) in text.split_sentence_bound_indices() {
        let start = i + (piece.len() - piece.trim_start().len());
        let end = i + piece.trim_end().len();
        if end <= start {
            // A blank line ends the open sentence.
            if piece.contains('\n') {
                out.extend(open.take());
            }
            continue;
        }
        let ends_line = piece.ends_with('\n');
        let this = &text[start..end];
        open = match open {
            // Unicode bounds end a sentence at every full stop before a capital.
            Some((s, e)) if !text[e..start].contains('\n') && ends_abbreviated(&text[s..e]) => {
                Some((s, end))
            }
            Some((s, e))
                if !starts_block(this)
                    && !starts_block(&text[s..e])
                    && text[e..start].matches('\n').count() == 1
                    && !text[..e].ends_with(['.', '!', '?', ':', ';']) =>
            {
                Some((s, end))
            }
            prev => {
                out.extend(prev);
                Some((start, end))
            }
        };
        if ends_line && (starts_block(this) || this.ends_with(['.', '!', '?'])) {
            out.extend(open.take());
        }
    }
    out.extend(open);
    out
}

/// Words written with a full stop that rarely end a sentence: titles before a name and the
/// abbreviations of references ("Fig. 2", "Smith et al. Found").
const ABBREVIATIONS: &[&str] = &[
    "dr", "mr", "mrs", "ms", "prof", "st", "mt", "fig", "figs", "vs", "e.g", "i.e", "al", "cf",
    "approx", "eq", "ref", "refs", "gen", "col", "lt", "sgt", "capt", "rev", "hon",
];

/// True when `sentence` ends with an initial ("M.") or one of the [`ABBREVIATIONS`].
fn ends_abbreviated(sentence: &str) -> bool {
    let Some(body) = sentence.strip_suffix('.') else {
        return false;
    };
    let word = body
        .rsplit(|c: char| c.is_whitespace() || matches!(c, '(' | '[' | '"' | '\u{201c}'))
        .next()
        .unwrap_or(body);
    let mut chars = word.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase());
    initial || ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a))
}

/// True when a line opens a Markdown block of its own.
fn starts_block(line: &str) -> bool {
    let t = line.trim_start();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    t.starts_with(['#', '-', '*', '+', '|', '>', '•'])
        || t.starts_with("```")
        || (digits > 0 && t[digits..].starts_with(['.', ')']))
}

/// The part of an answer sentence that states something: citation markers, list numbering,
/// Markdown emphasis and heading marks removed.
pub fn claim_text(sentence: &str) -> String {
    let mut s = String::with_capacity(sentence.len());
    let mut chars = sentence.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '[' {
            let rest = &sentence[i + 1..];
            let digits = rest
                .find(']')
                .filter(|&j| {
                    j > 0
                        && rest[..j]
                            .chars()
                            .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                })
                .map(|j| j + 1);
            if let Some(skip) = digits {
                for _ in 0..rest[..skip].chars().count() {
                    chars.next();
                }
                s.push(' ');
                continue;
            }
        }
        if matches!(c, '*' | '_' | '`' | '#') {
            s.push(' ');
            continue;
        }
        s.push(c);
    }
    let t = s.trim_start();
    // "1." / "2)" / "-" / "•" list marks at the start.
    let t = t.trim_start_matches(['-', '•', '+']).trim_start();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    let t = if digits > 0 && t[digits..].starts_with(['.', ')']) {
        t[digits + 1..].trim_start()
    } else {
        t
    };
    t.trim().to_string()
}

/// Words an answer uses to talk about the sources rather than to state a fact.
const META: &[&str] = &[
    "answer", "sourc", "document", "accord", "mention", "text", "question", "provid", "inform",
    "passag", "base", "cite", "given",
];

/// How well one source passage supports one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Share of the claim's own terms (not the question's, not talk about sources) found in the
    /// best window of the passage, 0..=1; 0 when the claim has no such term (it states nothing
    /// the question did not).
    pub score: f32,
    /// The claim's specific words (numbers, names) that the passage does not contain.
    pub missing: Vec<String>,
    /// Byte range of the best window (one or two sentences) in the passage.
    pub start: usize,
    pub end: usize,
    /// Number of terms the claim brings beyond the question.
    pub terms: usize,
}

/// Lower-cased words with digits kept whole and thousands separators dropped ("1,300" →
/// "1300"), for comparing names and numbers exactly.
fn norm_word(w: &str) -> String {
    if w.chars().any(|c| c.is_ascii_digit()) {
        w.chars().filter(|c| *c != ',').collect()
    } else {
        w.to_lowercase()
    }
}

/// Checks `claim` (already cleaned by [`claim_text`]) against `passage`: its terms beyond the
/// question's must be in one window of at most two consecutive sentences, and its specific words
/// anywhere in the passage (or the title, or the question).
pub fn support(claim: &str, question: &str, passage: &str, title: &str) -> Support {
    let asked = term_set(question);
    let claim_terms: HashSet<String> = ragd_store::analyze(claim)
        .into_iter()
        .filter(|t| {
            !asked.contains(t)
                && !META.contains(&t.as_str())
                && (t.chars().count() > 1 || t.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    let known: HashSet<String> = passage
        .unicode_words()
        .chain(title.unicode_words())
        .chain(question.unicode_words())
        .map(norm_word)
        .collect();
    let common: HashSet<&str> = crate::answer::COMMON.iter().copied().collect();
    let mut missing: Vec<String> = Vec::new();
    for w in specific_words(claim) {
        let n = norm_word(w);
        if !known.contains(&n) && !common.contains(n.as_str()) && !missing.contains(&n) {
            missing.push(n);
        }
    }
    let spans = sentences(passage);
    let title_terms = term_set(title);
    let mut best = (0.0f32, 0usize, passage.len());
    if !claim_terms.is_empty() {
        let sets: Vec<HashSet<String>> = spans
            .iter()
            .map(|&(s, e)| {
                let mut t = term_set(&passage[s..e]);
                t.extend(title_terms.iter().cloned());
                t
            })
            .collect();
        let share = |sets: &[&HashSet<String>]| {
            claim_terms
                .iter()
                .filter(|t| sets.iter().any(|s| s.contains(*t)))
                .count() as f32
                / claim_terms.len() as f32
        };
        // Single sentences first, so that a pair wins only when it adds support.
        for (k, &(s, e)) in spans.iter().enumerate() {
            let score = share(&[&sets[k]]);
            if score > best.0 {
                best = (score, s, e);
            }
        }
        for k in 0..spans.len().saturating_sub(1) {
            let score = share(&[&sets[k], &sets[k + 1]]);
            if score > best.0 + 1e-6 {
                best = (score, spans[k].0, spans[k + 1].1);
            }
        }
    }
    Support {
        score: best.0,
        missing,
        start: best.1,
        end: best.2,
        terms: claim_terms.len(),
    }
}

/// The kind of thing a question asks for, where its first words tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expects {
    /// How many / how much / what year / when …: the answer holds a number.
    Number,
    /// What percentage / proportion: the answer holds a percentage.
    Share,
    /// Who / whom / whose: the answer names someone.
    Name,
    /// Anything.
    Any,
}

/// What `question` expects. Its opening words tell ("How many …", "Who …"), or a phrase at the
/// end of its last clause ("… premiered on which date?", "… sold more than how many records?");
/// a "when" that opens a clause rather than asks ("When a test is run by name, what …") does
/// not.
pub fn expects(question: &str) -> Expects {
    let q = question.trim().to_lowercase();
    let words: Vec<&str> = q.unicode_words().collect();
    // Where an asking phrase may stand: the opening words (after a preposition: "In what year
    // …", "For how long …"), or the last clause's last words.
    let opening = if words.first().is_some_and(|w| PREPOSITIONS.contains(w)) {
        1
    } else {
        0
    };
    let tail_from = words.len().saturating_sub(TAIL_WORDS);
    let asks = |phrase: &[&str], anywhere_in_tail: bool| {
        (0..words.len()).any(|i| {
            (i == opening || (anywhere_in_tail && i >= tail_from)) && words[i..].starts_with(phrase)
        })
    };
    let share = [
        ["what", "percentage"],
        ["what", "proportion"],
        ["what", "percent"],
    ];
    if share.iter().any(|p| asks(p, true)) {
        return Expects::Share;
    }
    const HOW: &[&str] = &[
        "many", "much", "long", "old", "high", "tall", "far", "big", "large", "deep", "wide",
        "heavy",
    ];
    let how = HOW.iter().any(|w| asks(&["how", w], true));
    let dated = ["year", "date"]
        .iter()
        .any(|w| asks(&["what", w], true) || asks(&["which", w], true));
    let when = words.get(opening) == Some(&"when")
        && words
            .get(opening + 1)
            .is_some_and(|w| AUXILIARIES.contains(w));
    if how || dated || when || asks_a_measure(&words, opening) {
        Expects::Number
    } else if ["who", "whom", "whose"].iter().any(|w| asks(&[w], false)) || names_a_kind(&words) {
        Expects::Name
    } else {
        Expects::Any
    }
}

/// True when the question opens by asking what a measure is ("What is the length of …", "What
/// was the estimated mean incubation period …", "What was the production budget …"): after
/// "what is / was / are / were the", one of the words before the first preposition is a
/// quantity's name.
fn asks_a_measure(words: &[&str], opening: usize) -> bool {
    let rest = &words[opening.min(words.len())..];
    rest.len() > 3
        && rest[0] == "what"
        && ["is", "was", "are", "were"].contains(&rest[1])
        && rest[2] == "the"
        && rest[3..]
            .iter()
            .take(5)
            .take_while(|w| !PREPOSITIONS.contains(w))
            .any(|w| MEASURES.contains(w))
}

/// Names of quantities: what they ask for is a number.
const MEASURES: &[&str] = &[
    "length",
    "size",
    "duration",
    "period",
    "population",
    "number",
    "amount",
    "age",
    "weight",
    "height",
    "width",
    "depth",
    "distance",
    "budget",
    "cost",
    "price",
    "rate",
    "count",
    "dose",
    "speed",
    "temperature",
    "area",
    "volume",
];

/// True when a "which" / "what" of the question asks for something with a proper name ("Which
/// Danish metal band …", "… the mayor of what city?"): one of the next four words, before a
/// verb, is such a kind.
fn names_a_kind(words: &[&str]) -> bool {
    words.iter().enumerate().any(|(i, w)| {
        (*w == "which" || *w == "what")
            && words[i + 1..]
                .iter()
                .take(4)
                .take_while(|n| !AUXILIARIES.contains(n))
                .any(|n| NAMED_KINDS.contains(n))
    })
}

/// Things known by a proper name.
const NAMED_KINDS: &[&str] = &[
    "city",
    "town",
    "village",
    "country",
    "state",
    "province",
    "county",
    "region",
    "island",
    "river",
    "mountain",
    "continent",
    "capital",
    "band",
    "singer",
    "rapper",
    "actor",
    "actress",
    "author",
    "writer",
    "director",
    "player",
    "politician",
    "president",
    "company",
    "team",
    "club",
    "university",
    "college",
    "school",
    "magazine",
    "newspaper",
    "network",
    "station",
    "airline",
    "person",
    "man",
    "woman",
    "artist",
    "musician",
    "composer",
    "king",
    "queen",
    "emperor",
    "general",
    "name",
    "brand",
    "label",
    "studio",
    "film",
    "movie",
    "album",
    "song",
    "novel",
    "sitcom",
    "franchise",
    "tribe",
];

/// Words that may open a question before its asking phrase ("In which year …", "By whom …").
const PREPOSITIONS: &[&str] = &[
    "in", "on", "at", "by", "for", "from", "to", "during", "since", "after", "before", "until",
    "of", "with",
];

/// How many last words of a question an asking phrase may stand in ("… in which year?").
const TAIL_WORDS: usize = 4;

/// Verbs after a "when" that asks ("When was …", "When does …").
const AUXILIARIES: &[&str] = &[
    "is", "was", "are", "were", "did", "does", "do", "will", "would", "has", "have", "had", "can",
    "could", "should", "may", "might",
];

/// Month names: a date without a day or year ("in February") still answers "when".
const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const NUMBER_WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "billion",
    "dozen", "half", "once", "twice",
];

/// True when `sentence` can hold what the question expects: a number for a "how many"
/// question (not one the question states, as in "COVID-19", nor a reference such as "(1)"; a
/// capitalised month name counts), a percentage for "what percentage", a name that is not the
/// question's own for a "who" question.
pub fn fits(expects: Expects, sentence: &str, question: &str) -> bool {
    let asked = || -> HashSet<String> { question.unicode_words().map(norm_word).collect() };
    match expects {
        Expects::Any => true,
        Expects::Number => {
            let asked = asked();
            sentence.unicode_word_indices().any(|(i, w)| {
                let lower = w.to_lowercase();
                let numeric = w.chars().any(|c| c.is_ascii_digit())
                    || NUMBER_WORDS.contains(&lower.as_str())
                    || (MONTHS.contains(&lower.as_str()) && w.starts_with(char::is_uppercase));
                numeric && !asked.contains(&norm_word(w)) && !is_reference(sentence, i, w)
            })
        }
        Expects::Share => {
            let lower = sentence.to_lowercase();
            lower.contains('%') || lower.contains("percent") || lower.contains("per cent")
        }
        Expects::Name => {
            let asked = asked();
            // Markdown emphasis is not part of a word ("_The Rust Programming Language_").
            sentence.unicode_words().skip(1).any(|w| {
                let w = w.trim_matches('_');
                w.chars().next().is_some_and(char::is_uppercase) && !asked.contains(&norm_word(w))
            })
        }
    }
}

/// True when the word at byte `at` of `text` is a bracketed reference number: "(1)", "[4]".
fn is_reference(text: &str, at: usize, word: &str) -> bool {
    let before = text[..at].chars().next_back();
    let after = text[at + word.len()..].chars().next();
    word.chars().all(|c| c.is_ascii_digit())
        && matches!(
            (before, after),
            (Some('('), Some(')')) | (Some('['), Some(']'))
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_prose_and_markdown_lines() {
        let t = "# Title\n\nFirst one. Second one!\n- item a\n- item b\n";
        let got: Vec<&str> = sentences(t).into_iter().map(|(s, e)| &t[s..e]).collect();
        assert_eq!(
            got,
            [
                "# Title",
                "First one.",
                "Second one!",
                "- item a",
                "- item b"
            ]
        );
        // Hard-wrapped prose is one sentence; a blank line or a fence ends it.
        let t =
            "Once Rust is installed, updating\nto a new version is easy.\nNext one\n\n```\nx\n```";
        let got: Vec<&str> = sentences(t).into_iter().map(|(s, e)| &t[s..e]).collect();
        assert_eq!(
            got,
            [
                "Once Rust is installed, updating\nto a new version is easy.",
                "Next one",
                "```",
                "x",
                "```"
            ]
        );
        // Initials and titles do not end a sentence; a full stop after a word does.
        let t = "The third album by singer-songwriter M. Ward. Dr. Lee wrote it (see Fig. 2). Plan A. Next";
        let got: Vec<&str> = sentences(t).into_iter().map(|(s, e)| &t[s..e]).collect();
        assert_eq!(
            got,
            [
                "The third album by singer-songwriter M. Ward.",
                "Dr. Lee wrote it (see Fig. 2).",
                "Plan A. Next"
            ]
        );
    }

    #[test]
    fn claims_lose_markers_numbering_and_markup() {
        assert_eq!(
            claim_text("1. **Pretraining** on text [1]."),
            "Pretraining   on text  ."
        );
        assert_eq!(
            claim_text("- It opened in 1874 [1, 2]"),
            "It opened in 1874"
        );
        assert_eq!(claim_text("3) see [x] here"), "see [x] here");
    }

    #[test]
    fn question_words_are_not_terms() {
        let stems = ragd_store::analyze("What does it do, how many, which one has had it?");
        assert!(
            stems
                .iter()
                .all(|t| QUESTION_WORDS.contains(&t.as_str()) || t == "one"),
            "{stems:?}"
        );
    }

    #[test]
    fn coverage_weighs_rare_and_specific_terms() {
        let q = QueryTerms::weighted(vec![("peft".into(), 4.0), ("stand".into(), 1.0)]);
        let p = term_set("Parameter Efficient Fine-Tuning (PEFT) trains few weights.");
        assert!((q.coverage(&p) - 0.8).abs() < 1e-6);
        assert_eq!(q.coverage(&term_set("nothing in common")), 0.0);
        assert!(
            q.coverage(&term_set("nothing in common"))
                .is_sign_positive()
        );
        // Focus on what the title does not already say.
        let f = q.focus(&term_set("PEFT"));
        assert_eq!(f.coverage(&term_set("it stands for")), 1.0);
        assert_eq!(
            q.focus(&term_set("PEFT stands"))
                .coverage(&term_set("PEFT")),
            0.8
        );
        assert!(idf(100, 1) > idf(100, 50) && idf(100, 100) > 0.0);
        assert_eq!(
            specific_words("The PEFT method of Hugging Face, 2021. Then it ends.")
                .collect::<Vec<_>>(),
            ["PEFT", "Hugging", "Face", "2021"]
        );
    }

    #[test]
    fn support_needs_the_claims_terms_in_one_window_and_its_names_anywhere() {
        let p =
            "The bridge has seven arches. It was completed in 1874 by Ann Ode. Moths live here.";
        let q = "When was the bridge completed?";
        let ok = support(
            "It was completed in 1874 by Ann Ode.",
            q,
            p,
            "Kessel Bridge",
        );
        assert!(ok.score >= 0.99 && ok.missing.is_empty(), "{ok:?}");
        assert_eq!(&p[ok.start..ok.end], "It was completed in 1874 by Ann Ode.");
        let bad = support("It was completed in 1901 by James Fletcher.", q, p, "");
        assert_eq!(bad.missing, ["1901", "james", "fletcher"]);
        let vague = support("Stars orbit galaxies slowly.", q, p, "");
        assert!(vague.score < 0.1, "{vague:?}");
        // Restating the question and talking about the sources claims nothing: no support.
        let restated = support(
            "According to the sources, the bridge was completed.",
            q,
            p,
            "",
        );
        assert_eq!((restated.score, restated.terms), (0.0, 0));
    }

    #[test]
    fn words_that_frame_the_answer_are_not_terms() {
        let terms = |q: &str| ragd_store::analyze(&without_framing(q));
        assert_eq!(
            terms("What type of virus is 2019-nCoV?"),
            terms("What virus is 2019-nCoV?")
        );
        assert_eq!(
            terms("What is the name of Rust's process for proposals?"),
            terms("What is Rust's process for proposals?")
        );
        assert_eq!(
            terms("What type does the get method return?"),
            terms("What does the get method return?")
        );
        assert_eq!(
            terms("What kinds of antibodies were used?"),
            terms("What antibodies were used?")
        );
        // Where they are the subject, they stay.
        assert!(terms("Which trait must a type implement?").contains(&"type".to_string()));
        assert!(terms("Whose name is on the cup?").contains(&"name".to_string()));
    }

    #[test]
    fn terms_most_sentences_share_weigh_less_than_those_few_hold() {
        let sets: Vec<HashSet<String>> = [
            "The ship Diamond Princess had an outbreak.",
            "The Diamond Princess was quarantined in Yokohama.",
            "In all, 199 confirmed cases on the Diamond Princess.",
        ]
        .iter()
        .map(|s| term_set(s))
        .collect();
        let f = SentenceFreqs::new(&sets);
        assert!(f.weight("princess") < f.weight("confirm"), "{f:?}");
        assert!((f.weight("confirm") - 1.0).abs() < 1e-6);
        assert_eq!(f.weight("absent"), 1.0);
        // A lone sentence is scored as without the scaling.
        let one = SentenceFreqs::new(&sets[..1]);
        assert_eq!(one.weight("princess"), 1.0);
        let q = QueryTerms::weighted(vec![("princess".into(), 2.0), ("confirm".into(), 1.0)]);
        let scaled = q.scaled(|t| f.weight(t));
        // Unscaled, the topic word alone is two thirds of the question; scaled, the sentence
        // holding only it covers far less than the one with the word that tells them apart.
        assert!((q.coverage(&sets[0]) - 2.0 / 3.0).abs() < 1e-6);
        assert!(scaled.coverage(&sets[0]) < 0.5 * scaled.coverage(&sets[2]));
    }

    #[test]
    fn expected_answer_kinds() {
        assert_eq!(expects("How many arches does it have?"), Expects::Number);
        assert_eq!(expects("When was it built?"), Expects::Number);
        assert_eq!(expects("Who built it?"), Expects::Name);
        assert_eq!(expects("What does PEFT stand for?"), Expects::Any);
        // After an opening preposition; at the end of the last clause; a "when" that opens a
        // clause; "which/what" with a kind of named thing.
        for (q, want) in [
            ("In what year did the wall fall?", Expects::Number),
            ("For how long is each version supported?", Expects::Number),
            ("By whom was it built?", Expects::Name),
            (
                "Under what brand name is zanamivir marketed?",
                Expects::Name,
            ),
            ("What song debuted in that episode?", Expects::Name),
            ("What is the length of the replicase gene?", Expects::Number),
            (
                "What was the estimated mean incubation period for it?",
                Expects::Number,
            ),
            ("What is the name of the period?", Expects::Any),
            ("What is the default type?", Expects::Any),
            (
                "The sitcom with Rosie premiered on which date?",
                Expects::Number,
            ),
            (
                "A singer that has sold more than how many records worldwide?",
                Expects::Number,
            ),
            (
                "When a test is run by name, what does the output show?",
                Expects::Any,
            ),
            (
                "What is the name of the band who played there?",
                Expects::Any,
            ),
            (
                "Scott Howell worked with the mayor of what city?",
                Expects::Name,
            ),
            ("Which Danish heavy metal band released it?", Expects::Name),
            ("Which floating-point type is the default?", Expects::Any),
        ] {
            assert_eq!(expects(q), want, "{q}");
        }
        assert!(fits(
            Expects::Number,
            "Selection happens in February.",
            "When does selection occur?"
        ));
        assert!(!fits(
            Expects::Number,
            "You may select it.",
            "When does selection occur?"
        ));
        assert!(fits(Expects::Number, "It has seven arches.", ""));
        assert!(!fits(Expects::Number, "It has arches.", ""));
        // Numbers the question states and reference marks are not answers.
        let q = "How many COVID-19 cases were confirmed on the ship?";
        assert!(!fits(
            Expects::Number,
            "COVID-19 spread on the ship (1).",
            q
        ));
        assert!(!fits(
            Expects::Number,
            "Cases were confirmed on the ship [12].",
            q
        ));
        assert!(fits(
            Expects::Number,
            "A total of 199 confirmed cases (1).",
            q
        ));
        let q = "What percentage of patients tested positive for HBoV1?";
        assert_eq!(expects(q), Expects::Share);
        assert!(!fits(
            Expects::Share,
            "Of 248 HBoV1 patients, 112 tested positive.",
            q
        ));
        assert!(fits(
            Expects::Share,
            "Of them, 2.2% were positive for HBoV1.",
            q
        ));
        assert!(fits(
            Expects::Name,
            "It was built by Ann Ode.",
            "Who built the bridge?"
        ));
        assert!(!fits(
            Expects::Name,
            "Welcome to _The Rust Programming Language_, a book about Rust.",
            "Who created the Rust programming language?"
        ));
        assert!(!fits(
            Expects::Name,
            "The Bridge was built long ago.",
            "Who built the Bridge?"
        ));
    }
}
