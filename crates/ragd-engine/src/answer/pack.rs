//! Packing: numbered source blocks and history under the decoder's token budget, counted with
//! its own tokenizer and chat template.

use super::*;

pub(super) fn source_block(marker: usize, title: &str, text: &str) -> String {
    if title.trim().is_empty() {
        format!("[{marker}] {}\n\n", text.trim())
    } else {
        format!("[{marker}] {}\n{}\n\n", title.trim(), text.trim())
    }
}

pub(super) fn user_message(sources: &[Source], question: &str) -> String {
    let mut s = String::from("Sources:\n\n");
    for src in sources {
        s.push_str(&source_block(src.marker, &src.title, &src.text));
    }
    s.push_str("Question: ");
    s.push_str(question.trim());
    s
}

pub(super) fn messages(history: &[Turn], sources: &[Source], question: &str) -> Vec<ChatMessage> {
    let mut m = vec![ChatMessage::new("system", SYSTEM_PROMPT)];
    for t in history {
        m.push(ChatMessage::new("user", t.question.trim()));
        m.push(ChatMessage::new("assistant", t.answer.trim()));
    }
    m.push(ChatMessage::new("user", user_message(sources, question)));
    m
}

pub(super) fn prompt_tokens(g: &Generator, m: &[ChatMessage]) -> Result<usize> {
    Ok(g.count_tokens(&g.render_chat(m)?)?)
}

/// Prompt tokens of the question with no sources or history; an error when over `budget`.
pub(super) fn question_fits(g: &Generator, question: &str, budget: usize) -> Result<usize> {
    let bare = prompt_tokens(g, &messages(&[], &[], question))?;
    if bare > budget {
        return Err(Error::InvalidInput(format!(
            "the question needs {bare} prompt tokens but the decoder's budget is {budget}"
        )));
    }
    Ok(bare)
}

/// Packs sources (most relevant first) and history under `budget` prompt tokens.
#[tracing::instrument(level = "debug", skip_all)]
pub(super) fn pack(
    g: &Generator,
    question: &str,
    history: &[Turn],
    candidates: &[Candidate],
    budget: usize,
) -> Result<Packed> {
    // The question with no sources must fit; history gets at most half of what remains, newest
    // turns first. Each turn is priced once, alone (what it adds to the bare prompt), and the
    // walk stops at the first that does not fit: the work is linear in the history kept.
    let bare = question_fits(g, question, budget)?;
    let half = (budget - bare) / 2;
    let mut from = history.len();
    let mut used = 0;
    while from > 0 {
        let turn = prompt_tokens(g, &messages(&history[from - 1..from], &[], question))? - bare;
        if used + turn > half {
            break;
        }
        used += turn;
        from -= 1;
    }
    let mut history = &history[from..];
    let mut base = prompt_tokens(g, &messages(history, &[], question))?;
    // Priced alone, turns can add up to a few tokens less than together.
    while base - bare > half && !history.is_empty() {
        history = &history[1..];
        base = prompt_tokens(g, &messages(history, &[], question))?;
    }
    let mut left = budget.saturating_sub(base);
    let mut sources: Vec<Source> = Vec::new();
    for c in candidates {
        let hit = &c.hit;
        let marker = sources.len() + 1;
        let window = &hit.text[c.start..c.end];
        let windowed = c.start > 0 || c.end < hit.text.len();
        let source = |text: &str, start: usize, truncated: bool| Source {
            marker,
            document_id: hit.doc_id.clone(),
            chunk_id: hit.chunk_id,
            title: hit.title.clone(),
            start,
            end: start + text.len(),
            score: hit.score,
            relevance: c.relevance,
            lexical: c.lexical,
            text: text.to_string(),
            truncated,
        };
        let cost = |text: &str| -> Result<usize> {
            Ok(g.count_tokens(&source_block(marker, &hit.title, text))?)
        };
        let full = cost(window)?;
        if full <= left {
            left -= full;
            sources.push(source(window, hit.start + c.start, windowed));
            continue;
        }
        // The longest run of whole sentences that fits.
        let ends: Vec<usize> = window
            .split_sentence_bound_indices()
            .map(|(i, s)| i + s.len())
            .collect();
        let (mut lo, mut hi) = (0usize, ends.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if cost(&window[..ends[mid - 1]])? <= left {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo > 0 {
            let cut = ends[lo - 1];
            let text = window[..cut].trim_end();
            sources.push(source(text, hit.start + c.start, true));
        }
        break;
    }
    // Token counts of pieces need not add up exactly: check the whole and shed from the end.
    loop {
        let m = messages(history, &sources, question);
        let tokens = prompt_tokens(g, &m)?;
        if tokens <= budget || sources.is_empty() {
            return Ok(Packed {
                messages: m,
                sources,
                tokens,
            });
        }
        sources.pop();
    }
}
