//! Answer-quality evaluation: questions whose answer is in exactly one document (or in none),
//! asked through the whole answer pipeline, scored on the expected fact, the cited document and
//! refusals; and calibration of the refusal threshold on the retrieval scores alone.

use ragd_engine::grounding::{answer_sentences, claim_text, support};
use ragd_engine::{
    Answer, AnswerKind, AnswerRequest, Answerer, Error, Result, ScoredSentence, parse_citations,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One evaluation question (a line of `questions.jsonl`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct QaItem {
    pub id: String,
    pub question: String,
    /// The document that answers it (a file name or document id); `None`: nothing does.
    pub document: Option<String>,
    /// Strings of which at least one (case-insensitive) is in a correct answer.
    #[serde(default)]
    pub expect: Vec<String>,
    /// The gold passage: text of the document that states the answer (verbatim).
    #[serde(default)]
    pub passage: Option<String>,
    /// `answerable`, `offtopic` or `nearmiss` (informational).
    #[serde(default)]
    pub kind: Option<String>,
}

/// Reads a questions file (JSON lines).
pub fn load_qa(path: &Path) -> Result<Vec<QaItem>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::InvalidInput(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// True when document id `id` names `expected` (equal, or a path ending in `/expected`).
pub fn same_document(id: &str, expected: &str) -> bool {
    id == expected || id.ends_with(&format!("/{expected}"))
}

/// True when `needle` occurs in `hay` not glued to letters or digits (so "78" is not found in
/// "1978").
pub fn contains_term(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    hay.match_indices(needle).any(|(i, m)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// What happened to one question.
#[derive(Debug, Clone, Serialize)]
pub struct QaOutcome {
    pub id: String,
    pub answerable: bool,
    /// Best cosine between the question and a retrieved chunk.
    pub top_relevance: f32,
    pub refused: bool,
    /// Refused on retrieval scores, without calling the decoder.
    pub refused_early: bool,
    /// generated, extract or refusal.
    pub kind: String,
    /// For an extract, its question score (what `min_extract` is compared with).
    pub extract_score: Option<f32>,
    /// Weighted share of the question's terms in the best retrieved chunk.
    pub top_lexical: f32,
    /// An expected string is in the answer (answerable questions).
    pub fact: bool,
    /// Some citation points to the expected document (answerable questions).
    pub right_citation: bool,
    /// Every citation points to the expected document and there is at least one.
    pub only_right_citations: bool,
    /// The expected fact is in the answer and a citation points at the gold passage (its byte
    /// range overlaps the passage's in the expected document; the document when no passage is
    /// given).
    pub correct_cited: bool,
    /// Sentences of the answer that cite a source, and those whose cited source supports them.
    pub cited_sentences: usize,
    pub supported_sentences: usize,
    /// Markers in the returned answer to sources that were not given.
    pub ungiven_markers: usize,
    /// The returned answer holds a line that starts like a source block (`[n] …`).
    pub invented_source_block: bool,
    /// Documents cited, in order.
    pub cited: Vec<String>,
    /// The expected document was among the packed sources.
    pub retrieved: bool,
    /// Markers that pointed to no packed source.
    pub dropped_markers: usize,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
    pub answer: String,
    /// What the model wrote when ragd declined it as unsupported by the sources.
    pub unsupported_draft: Option<String>,
    /// With `explain` set on the request: every packed sentence as the quote ranks it, best
    /// first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sentences: Vec<ExplainedSentence>,
}

/// A packed sentence with its scores, and whether it holds an expected string.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedSentence {
    #[serde(flatten)]
    pub sentence: ScoredSentence,
    pub holds_expected: bool,
}

/// Rates over a question set.
#[derive(Debug, Clone, Serialize)]
pub struct QaReport {
    pub questions: usize,
    pub answerable: usize,
    pub unanswerable: usize,
    /// Answerable questions whose answer holds the expected fact.
    pub fact_rate: f64,
    /// Answerable questions with a citation of the right document.
    pub right_citation_rate: f64,
    /// Answerable questions citing only the right document.
    pub only_right_citation_rate: f64,
    /// Among answerable questions that were answered (not refused), those citing the right
    /// document.
    pub answered_right_citation_rate: f64,
    /// Answerable questions whose document was packed into the prompt.
    pub retrieved_rate: f64,
    /// Unanswerable questions refused.
    pub correct_refusal_rate: f64,
    /// Answerable questions refused.
    pub false_refusal_rate: f64,
    /// Answerable questions whose answer holds the expected fact and cites the gold passage.
    pub correct_cited_rate: f64,
    /// Answerable questions answered (not refused) without the expected fact.
    pub wrong_rate: f64,
    /// Unanswerable questions that got an answer (not refused).
    pub unanswerable_answered_rate: f64,
    /// Cited sentences whose cited source supports them (ragd's lexical support check).
    pub citation_precision: f64,
    /// Answers by kind.
    pub generated: usize,
    pub extracts: usize,
    pub refusals: usize,
    /// Markers in returned answers to sources not given (must be 0).
    pub ungiven_markers: usize,
    /// Returned answers holding a line that starts like a source block (must be 0).
    pub invented_source_blocks: usize,
    /// Marker occurrences pointing to sources that were not given (dropped, never resolved).
    pub dropped_markers: usize,
    /// Resolved citations that point outside the packed sources (must be 0 by construction).
    pub citations_to_ungiven_sources: usize,
    pub time_to_first_token_p50_ms: f64,
    pub min_relevance: f32,
    pub outcomes: Vec<QaOutcome>,
}

/// The best relevance (cosine) and lexical coverage of any chunk retrieved for `question` with
/// `template`'s options: what the gate's thresholds are compared with. Retrieval and packing
/// only, no decoder.
pub fn top_relevance(
    answerer: &Answerer<'_>,
    template: &AnswerRequest,
    question: &str,
) -> Result<(f32, f32)> {
    let mut request = template.clone();
    request.question = question.to_string();
    request.min_relevance = Some(-1.0);
    let p = answerer.prepare(request)?;
    Ok(p.sources
        .iter()
        .fold((f32::NEG_INFINITY, 0.0f32), |(r, l), s| {
            (r.max(s.relevance), l.max(s.lexical))
        }))
}

/// Byte range of `passage` in the text of document `id` (whitespace-insensitive match on the
/// first 64 bytes), if found.
fn passage_range(answerer: &Answerer<'_>, id: &str, passage: &str) -> Option<(usize, usize)> {
    let (_, text) = answerer.collection().document(id).ok().flatten()?;
    let p = passage.trim();
    if let Some(i) = text.find(p) {
        return Some((i, i + p.len()));
    }
    text.find(ragd_core::truncate_utf8(p, 64))
        .map(|i| (i, i + p.len()))
}

/// True when one of the `expected` strings is in `text` as a whole term, case aside.
fn holds_expected(text: &str, expected: &[String]) -> bool {
    let lower = text.to_lowercase();
    expected
        .iter()
        .any(|e| contains_term(&lower, &e.to_lowercase()))
}

/// True when the answer's text has a line that starts like a source block: `[n] …`.
fn has_source_block(answer: &str) -> bool {
    answer.lines().skip(1).any(|l| {
        let l = l.trim_start();
        l.starts_with('[') && l[1..].chars().next().is_some_and(|c| c.is_ascii_digit())
    })
}

/// Sentences of `answer` that carry a marker, and those whose cited sources support them.
fn citation_support(answer: &Answer, question: &str) -> (usize, usize) {
    let (mut cited, mut supported) = (0, 0);
    for (s, e) in answer_sentences(&answer.answer) {
        let sentence = &answer.answer[s..e];
        let markers = parse_citations(sentence);
        if markers.is_empty() {
            continue;
        }
        cited += 1;
        let claim = claim_text(sentence);
        let claim =
            claim.trim_matches(|c: char| c == '\u{201c}' || c == '\u{201d}' || c.is_whitespace());
        let ok = markers.iter().any(|m| {
            answer.sources.iter().any(|src| {
                src.marker == m.source && {
                    let sup = support(claim, question, &src.text, &src.title);
                    sup.missing.is_empty() && sup.score >= 0.5
                }
            })
        });
        supported += usize::from(ok);
    }
    (cited, supported)
}

/// Asks every question through `answerer` (with `template`'s options) and scores the answers.
pub fn evaluate_answers(
    answerer: &Answerer<'_>,
    items: &[QaItem],
    template: &AnswerRequest,
    min_relevance: f32,
    mut progress: impl FnMut(&QaOutcome),
) -> Result<QaReport> {
    let mut outcomes = Vec::with_capacity(items.len());
    let mut ungiven = 0;
    for item in items {
        let mut request = template.clone();
        request.question = item.question.clone();
        request.min_relevance = Some(min_relevance);
        let prepared = answerer.prepare(request)?;
        let sentences: Vec<ExplainedSentence> = prepared
            .scored_sentences()
            .iter()
            .map(|s| ExplainedSentence {
                holds_expected: holds_expected(&s.text, &item.expect),
                sentence: s.clone(),
            })
            .collect();
        let answer = answerer.complete(prepared, |_| {})?;
        // After the answer, whose time is measured: the searcher's query-vector cache would
        // have the question's vectors otherwise.
        let (top_relevance, top_lexical) = top_relevance(answerer, template, &item.question)?;
        ungiven += answer
            .citations
            .iter()
            .filter(|c| {
                !answer
                    .sources
                    .iter()
                    .any(|s| s.marker == c.marker && s.chunk_id == c.chunk_id)
            })
            .count();
        let expected = item.document.as_deref();
        let cited: Vec<String> = answer
            .citations
            .iter()
            .map(|c| c.document_id.clone())
            .collect();
        let right = |d: &String| expected.is_some_and(|e| same_document(d, e));
        let fact = holds_expected(&answer.answer, &item.expect);
        let gold = |c: &ragd_engine::Citation| -> bool {
            if !right(&c.document_id) {
                return false;
            }
            match &item.passage {
                None => true,
                Some(p) => passage_range(answerer, &c.document_id, p)
                    .is_some_and(|(s, e)| c.start < e && s < c.end),
            }
        };
        let (cited_sentences, supported_sentences) = citation_support(&answer, &item.question);
        let outcome = QaOutcome {
            id: item.id.clone(),
            answerable: expected.is_some(),
            top_relevance,
            top_lexical,
            refused: answer.refused,
            refused_early: answer.finish.is_none() && answer.kind == AnswerKind::Refusal,
            kind: answer.kind.name().to_string(),
            extract_score: (answer.kind == AnswerKind::Extract)
                .then(|| answer.support.first().map_or(0.0, |s| s.score)),
            fact,
            correct_cited: fact && answer.citations.iter().any(gold),
            cited_sentences,
            supported_sentences,
            ungiven_markers: parse_citations(&answer.answer)
                .iter()
                .filter(|m| !answer.sources.iter().any(|s| s.marker == m.source))
                .count(),
            invented_source_block: has_source_block(&answer.answer),
            right_citation: cited.iter().any(right),
            only_right_citations: !cited.is_empty() && cited.iter().all(right),
            retrieved: answer.sources.iter().any(|s| right(&s.document_id)),
            cited,
            dropped_markers: answer.dropped_markers,
            time_to_first_token_ms: answer.usage.time_to_first_token_ms,
            total_ms: answer.usage.total_ms,
            answer: answer.answer,
            unsupported_draft: answer.unsupported_draft,
            sentences,
        };
        progress(&outcome);
        outcomes.push(outcome);
    }
    Ok(report(outcomes, ungiven, min_relevance))
}

fn report(outcomes: Vec<QaOutcome>, ungiven: usize, min_relevance: f32) -> QaReport {
    let ans: Vec<&QaOutcome> = outcomes.iter().filter(|o| o.answerable).collect();
    let un: Vec<&QaOutcome> = outcomes.iter().filter(|o| !o.answerable).collect();
    let answered: Vec<&QaOutcome> = ans.iter().copied().filter(|o| !o.refused).collect();
    let rate = |set: &[&QaOutcome], f: fn(&QaOutcome) -> bool| {
        if set.is_empty() {
            0.0
        } else {
            set.iter().filter(|o| f(o)).count() as f64 / set.len() as f64
        }
    };
    let mut ttft: Vec<f64> = outcomes
        .iter()
        .filter(|o| !o.refused_early)
        .map(|o| o.time_to_first_token_ms)
        .collect();
    ttft.sort_by(f64::total_cmp);
    QaReport {
        questions: outcomes.len(),
        answerable: ans.len(),
        unanswerable: un.len(),
        fact_rate: rate(&ans, |o| o.fact),
        correct_cited_rate: rate(&ans, |o| o.correct_cited),
        wrong_rate: rate(&ans, |o| !o.refused && !o.fact),
        unanswerable_answered_rate: rate(&un, |o| !o.refused),
        citation_precision: {
            let c: usize = outcomes.iter().map(|o| o.cited_sentences).sum();
            let s: usize = outcomes.iter().map(|o| o.supported_sentences).sum();
            if c == 0 { 1.0 } else { s as f64 / c as f64 }
        },
        generated: outcomes.iter().filter(|o| o.kind == "generated").count(),
        extracts: outcomes.iter().filter(|o| o.kind == "extract").count(),
        refusals: outcomes.iter().filter(|o| o.kind == "refusal").count(),
        ungiven_markers: outcomes.iter().map(|o| o.ungiven_markers).sum(),
        invented_source_blocks: outcomes.iter().filter(|o| o.invented_source_block).count(),
        right_citation_rate: rate(&ans, |o| o.right_citation),
        only_right_citation_rate: rate(&ans, |o| o.only_right_citations),
        answered_right_citation_rate: rate(&answered, |o| o.right_citation),
        retrieved_rate: rate(&ans, |o| o.retrieved),
        correct_refusal_rate: rate(&un, |o| o.refused),
        false_refusal_rate: rate(&ans, |o| o.refused),
        dropped_markers: outcomes.iter().map(|o| o.dropped_markers).sum(),
        citations_to_ungiven_sources: ungiven,
        time_to_first_token_p50_ms: crate::beir::percentile(&ttft, 0.5),
        min_relevance,
        outcomes,
    }
}

/// The refusal threshold on retrieval relevance alone: among thresholds that refuse at most
/// `max_false_refusals` (a fraction) of the answerable questions, the one with the best
/// balanced accuracy (answerable kept, unanswerable refused), in the middle of its gap.
/// Returns the threshold and its balanced accuracy.
///
/// Relevance separates questions about nothing in the collection; a question on a covered topic
/// asking a fact no document holds scores like an answerable one, and is left to the grounding
/// check after generation — hence the bound on false refusals rather than plain accuracy.
pub fn calibrate_threshold(points: &[(f32, bool)], max_false_refusals: f64) -> Option<(f32, f64)> {
    let n_ans = points.iter().filter(|p| p.1).count();
    let n_un = points.len() - n_ans;
    if n_ans == 0 || n_un == 0 {
        return None;
    }
    let mut values: Vec<f32> = points.iter().map(|p| p.0).collect();
    values.sort_by(f32::total_cmp);
    values.dedup();
    // Candidate thresholds: below everything, between neighbours, above everything.
    let mut cands = vec![values[0] - 0.01];
    cands.extend(values.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    cands.push(values[values.len() - 1] + 0.01);
    let false_refusals =
        |t: f32| points.iter().filter(|p| p.1 && p.0 < t).count() as f64 / n_ans as f64;
    let score = |t: f32| {
        let refused = points.iter().filter(|p| !p.1 && p.0 < t).count() as f64 / n_un as f64;
        (1.0 - false_refusals(t) + refused) / 2.0
    };
    cands
        .into_iter()
        .filter(|t| false_refusals(*t) <= max_false_refusals)
        .map(|t| (t, score(t)))
        .fold(None, |best: Option<(f32, f64)>, (t, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((t, s)),
        })
}

/// Both thresholds of the gate, chosen together: a question passes when its best chunk's
/// cosine is at least the first or its lexical coverage at least the second. Among pairs that
/// refuse at most `max_false_refusals` of the answerable questions, the best balanced accuracy
/// (on a tie, the higher cosine threshold). Points are `(cosine, coverage, answerable)`.
/// Returns `(cosine threshold, coverage threshold, balanced accuracy)`.
pub fn calibrate_gate(
    points: &[(f32, f32, bool)],
    max_false_refusals: f64,
) -> Option<(f32, f32, f64)> {
    let mut dense: Vec<f32> = points.iter().map(|p| p.0).collect();
    dense.sort_by(f32::total_cmp);
    dense.dedup();
    let mut cands: Vec<f32> = dense.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    cands.extend(dense.last().map(|d| d + 0.01));
    let mut best: Option<(f32, f32, f64)> = None;
    for t in cands {
        // Passing on cosine makes the coverage irrelevant: score such points above any
        // coverage threshold.
        let eff: Vec<(f32, bool)> = points
            .iter()
            .map(|&(d, l, a)| (if d >= t { 2.0 } else { l }, a))
            .collect();
        if let Some((tl, acc)) = calibrate_threshold(&eff, max_false_refusals)
            && best.is_none_or(|b| acc > b.2 + 1e-12 || ((acc - b.2).abs() <= 1e-12 && t > b.0))
        {
            best = Some((t, tl.min(1.0), acc));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_uses_coverage_where_cosine_fails() {
        // Two answerable questions with low cosine but full coverage; off-topic ones low on
        // both.
        let pts = [
            (0.7, 0.9, true),
            (0.2, 0.9, true),
            (0.25, 0.8, true),
            (0.3, 0.1, false),
            (0.1, 0.2, false),
        ];
        let (td, tl, acc) = calibrate_gate(&pts, 0.0).unwrap_or((0.0, 0.0, 0.0));
        assert!((acc - 1.0).abs() < 1e-9, "{td} {tl} {acc}");
        assert!(td > 0.3 && tl > 0.2 && tl < 0.8, "{td} {tl}");
    }

    #[test]
    fn threshold_sits_in_the_gap() {
        let pts = [
            (0.7, true),
            (0.6, true),
            (0.5, true),
            (0.2, false),
            (0.3, false),
        ];
        let (t, acc) = calibrate_threshold(&pts, 0.0).unwrap_or((0.0, 0.0));
        assert!((t - 0.4).abs() < 1e-6, "{t}");
        assert!((acc - 1.0).abs() < 1e-9);
        // Overlap: refusing no answerable question caps the accuracy; allowing half of them
        // buys a higher one (ties go to the lower threshold).
        let pts = [
            (0.7, true),
            (0.35, true),
            (0.4, false),
            (0.45, false),
            (0.1, false),
        ];
        let (t, acc) = calibrate_threshold(&pts, 0.0).unwrap_or((0.0, 0.0));
        assert!(
            (t - 0.225).abs() < 1e-6 && (acc - 2.0 / 3.0).abs() < 1e-9,
            "{t} {acc}"
        );
        let (t, acc) = calibrate_threshold(&pts, 0.5).unwrap_or((0.0, 0.0));
        assert!(
            (t - 0.575).abs() < 1e-6 && (acc - 0.75).abs() < 1e-9,
            "{t} {acc}"
        );
        assert!(calibrate_threshold(&[(0.5, true)], 0.1).is_none());
    }

    #[test]
    fn terms_match_whole_words_only() {
        assert!(contains_term("it opened in 1978.", "1978"));
        assert!(!contains_term("it opened in 1978.", "78"));
        assert!(contains_term("about 78 km", "78"));
        assert!(contains_term("marta ilves wrote it", "marta ilves"));
        assert!(!contains_term("x", ""));
    }

    #[test]
    fn documents_match_by_id_or_file_name() {
        assert!(same_document("tests/data/qa/docs/moth.md", "moth.md"));
        assert!(same_document("moth.md", "moth.md"));
        assert!(!same_document("tests/data/qa/docs/big-moth.md", "moth.md"));
    }
}
