//! Output every command shares: JSON documents, the collections table, progress bars, the ingest
//! summary with its failure lines and exit code.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use ragd_engine::{Failure, IngestReport, PhaseSeconds, PipelineReport, Progress, ProgressSink};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// One line of `collections list`.
pub(crate) fn print_row(name: &str, documents: u64, chunks: u64, generation: u64, bytes: u64) {
    println!(
        "{name:<24} {documents:>8} documents {chunks:>9} chunks  gen {generation:<3} {:>10.1} MB",
        bytes as f64 / 1e6
    );
}

pub(crate) struct Bar(pub(crate) ProgressBar);

impl ProgressSink for Bar {
    fn update(&mut self, p: &Progress) {
        self.0.set_length(p.total.max(p.documents));
        self.0.set_position(p.documents);
        let secs = self.0.elapsed().as_secs_f64().max(1e-3);
        self.0.set_message(format!(
            "{} chunks · {:.0} tokens/s",
            p.chunks,
            p.tokens as f64 / secs
        ));
    }
}

pub(crate) fn bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} documents · {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// What an ingest did, whichever way it ran. Encoder tokens and the time per stage are known
/// offline only (a server reports documents and chunks), and are left out of the JSON otherwise.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct IngestSummary {
    pub(crate) added: u64,
    pub(crate) unchanged: u64,
    pub(crate) replaced: u64,
    pub(crate) failed: Vec<Failure>,
    pub(crate) chunks: u64,
    pub(crate) seconds: f64,
    pub(crate) documents_per_s: f64,
    pub(crate) chunks_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) phases: Option<PhaseSeconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pipeline: Option<PipelineReport>,
}

impl IngestSummary {
    /// Documents stored (added, unchanged or replaced).
    pub(crate) fn stored(&self) -> u64 {
        self.added + self.unchanged + self.replaced
    }
}

impl From<IngestReport> for IngestSummary {
    fn from(r: IngestReport) -> Self {
        let IngestReport {
            added,
            unchanged,
            replaced,
            failed,
            chunks,
            tokens,
            seconds,
            documents_per_s,
            chunks_per_s,
            tokens_per_s,
            phases,
            pipeline,
        } = r;
        Self {
            added,
            unchanged,
            replaced,
            failed,
            chunks,
            seconds,
            documents_per_s,
            chunks_per_s,
            tokens: Some(tokens),
            tokens_per_s: Some(tokens_per_s),
            phases: Some(phases),
            pipeline: Some(pipeline),
        }
    }
}

/// An ingest's summary: one JSON object, or a line of counts (with the encoder tokens and the
/// time per stage when known) and one line per failed document.
pub(crate) fn print_ingest(s: &IngestSummary, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    print!(
        "added {}, unchanged {}, replaced {}, failed {}; {} chunks",
        s.added,
        s.unchanged,
        s.replaced,
        s.failed.len(),
        s.chunks
    );
    match (s.tokens, s.tokens_per_s) {
        (Some(tokens), Some(rate)) => println!(
            ", {tokens} tokens in {:.1}s ({:.1} documents/s, {rate:.0} tokens/s)",
            s.seconds, s.documents_per_s
        ),
        _ => println!(
            " in {:.1}s ({:.1} documents/s)",
            s.seconds, s.documents_per_s
        ),
    }
    if let Some(p) = &s.phases {
        println!(
            "time: parse {:.1}s, chunk {:.1}s, embed {:.1}s, index {:.1}s, commit {:.1}s",
            p.parse, p.chunk, p.embed, p.index, p.commit
        );
    }
    if let Some(p) = &s.pipeline {
        println!(
            "encoder busy {:.0}% of the time (waited {:.1}s for input, {:.1}s for commits); \
             stages overlapped {:.2}x",
            p.encoder_busy * 100.0,
            p.encoder_waiting_for_input,
            p.encoder_waiting_for_commit,
            p.overlap
        );
    }
    print_failures(&s.failed);
    Ok(())
}

/// One line per document that could not be stored.
pub(crate) fn print_failures(failed: &[Failure]) {
    for f in failed {
        println!("failed: {}: {}", f.source, f.reason);
    }
}

/// `ingest`'s exit code: 0 when every document was stored, 2 when some failed.
pub(crate) fn ingest_exit_code(failed: &[Failure]) -> ExitCode {
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
