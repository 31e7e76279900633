//! The peer of `ragd eval answers --compare`: a naive RAG peer on the same chunks and questions — the same
//! SmolLM2 GGUF through llama.cpp (llama-cpp-python), dense top-2 passages by all-MiniLM-L6-v2
//! (sentence-transformers), LlamaIndex's default QA prompt, greedy — run from the peers'
//! Python environment (`../shared/peers/setup.sh`, `$RAGD_PEERS`).

use crate::answers::{QaItem, contains_term};
use anyhow::{Context, Result, bail};
use ragd_models::registry::{DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_store::Collection;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("peers/naive_rag.py");

/// The peer's rates, measured like ragd's.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub peer: &'static str,
    pub questions: usize,
    pub answerable: usize,
    /// Answerable questions whose answer holds the expected fact.
    pub fact_rate: f64,
    /// Answerable questions answered without the expected fact.
    pub wrong_rate: f64,
    /// Answerable questions whose gold document was among the two passages given.
    pub retrieved_rate: f64,
    pub time_to_first_token_p50_ms: f64,
}

#[derive(Debug, Deserialize)]
struct PeerAnswer {
    id: String,
    answer: String,
    documents: Vec<String>,
    ttft_ms: Option<f64>,
}

/// The peers' Python (`$RAGD_PEERS/bin/python`, default `~/.cache/ragd-peers`).
fn peer_python() -> Result<PathBuf> {
    let venv = std::env::var_os("RAGD_PEERS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ragd-peers")))
        .context("no home directory to find the peers' environment in")?;
    let python = venv.join("bin/python");
    if !python.is_file() {
        bail!(
            "the peers' Python environment is missing at {}: run ../shared/peers/setup.sh first",
            venv.display()
        );
    }
    Ok(python)
}

/// Runs the peer over `collection`'s chunks and `items`, and scores it.
pub fn run(
    collection: &Collection,
    items: &[QaItem],
    models: &Path,
    max_tokens: usize,
) -> Result<PeerReport> {
    let python = peer_python()?;
    let dir = tempfile::tempdir().context("a temporary directory for the peer")?;
    let script = dir.path().join("naive_rag.py");
    std::fs::write(&script, SCRIPT)?;
    let chunks = dir.path().join("chunks.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&chunks)?);
    let ids = collection.document_ids()?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (id, rec) in ids.iter().zip(collection.doc_records(&refs)?) {
        let Some(rec) = rec else { continue };
        for (chunk, c) in collection.chunks(&rec.chunks)? {
            let title = (!rec.title.trim().is_empty()).then_some(rec.title.as_str());
            let line = serde_json::json!({
                "id": chunk,
                "document_id": id,
                "text": ragd_engine::embed_text(title, &c.span.text),
            });
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    drop(out);
    let questions = dir.path().join("questions.jsonl");
    let mut q = std::io::BufWriter::new(std::fs::File::create(&questions)?);
    for it in items {
        writeln!(
            q,
            "{}",
            serde_json::json!({"id": it.id, "question": it.question})
        )?;
    }
    q.flush()?;
    drop(q);
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg("--chunks")
        .arg(&chunks)
        .arg("--questions")
        .arg(&questions)
        .arg("--gguf")
        .arg(DEFAULT_DECODER.gguf_path(models))
        .arg("--encoder")
        .arg(DEFAULT_ENCODER.dir(models))
        .arg("--max-tokens")
        .arg(max_tokens.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the peer with {}", python.display()))?;
    if !output.status.success() {
        bail!("the naive RAG peer failed ({})", output.status);
    }
    let answers: Vec<PeerAnswer> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()
        .context("reading the peer's answers")?;
    Ok(score(items, &answers))
}

fn score(items: &[QaItem], answers: &[PeerAnswer]) -> PeerReport {
    let answerable: Vec<&QaItem> = items.iter().filter(|i| i.document.is_some()).collect();
    let find = |id: &str| answers.iter().find(|a| a.id == id);
    let (mut fact, mut wrong, mut retrieved) = (0usize, 0usize, 0usize);
    for it in &answerable {
        let Some(a) = find(&it.id) else { continue };
        let lower = a.answer.to_lowercase();
        if it
            .expect
            .iter()
            .any(|e| contains_term(&lower, &e.to_lowercase()))
        {
            fact += 1;
        } else if !a.answer.trim().is_empty() {
            wrong += 1;
        }
        let gold = it.document.as_deref().unwrap_or_default();
        if a.documents
            .iter()
            .any(|d| crate::answers::same_document(d, gold))
        {
            retrieved += 1;
        }
    }
    let mut ttft: Vec<f64> = answers.iter().filter_map(|a| a.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let n = answerable.len().max(1) as f64;
    PeerReport {
        peer: "naive RAG: MiniLM top-2 + LlamaIndex QA prompt + SmolLM2 (llama.cpp, greedy)",
        questions: items.len(),
        answerable: answerable.len(),
        fact_rate: fact as f64 / n,
        wrong_rate: wrong as f64 / n,
        retrieved_rate: retrieved as f64 / n,
        time_to_first_token_p50_ms: crate::beir::percentile(&ttft, 0.5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_scored_like_ragd() {
        let item = |id: &str, doc: Option<&str>, expect: &[&str]| QaItem {
            id: id.into(),
            question: "q".into(),
            document: doc.map(Into::into),
            expect: expect.iter().map(|s| s.to_string()).collect(),
            passage: None,
            kind: None,
        };
        let items = [
            item("a", Some("x.md"), &["1874"]),
            item("b", Some("y.md"), &["Ode"]),
            item("u", None, &[]),
        ];
        let ans = |id: &str, text: &str, docs: &[&str]| PeerAnswer {
            id: id.into(),
            answer: text.into(),
            documents: docs.iter().map(|s| s.to_string()).collect(),
            ttft_ms: Some(100.0),
        };
        let r = score(
            &items,
            &[
                ans("a", "It opened in 1874.", &["d/x.md"]),
                ans("b", "Built in 18740 by nobody.", &["y.md"]),
                ans("u", "Something.", &[]),
            ],
        );
        assert_eq!(r.answerable, 2);
        assert!((r.fact_rate - 0.5).abs() < 1e-9 && (r.wrong_rate - 0.5).abs() < 1e-9);
        assert!((r.retrieved_rate - 1.0).abs() < 1e-9);
    }
}
