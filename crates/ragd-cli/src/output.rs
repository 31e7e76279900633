//! Output every command shares: JSON documents, the collections table, progress bars, failure
//! lines and `ingest`'s exit code.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use ragd_engine::{Progress, ProgressSink};
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

/// One line per document that could not be stored.
pub(crate) fn print_failures(failed: &[ragd_engine::Failure]) {
    for f in failed {
        println!("failed: {}: {}", f.source, f.reason);
    }
}

/// `ingest`'s exit code: 0 when every document was stored, 2 when some failed.
pub(crate) fn ingest_exit_code(failed: &[ragd_engine::Failure]) -> ExitCode {
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
