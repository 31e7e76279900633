//! The peer systems (`../shared/peers`), run from their own Python environment on the same input
//! in the same invocation.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the peers' scripts and Python environment are, and how many threads they may use.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Directory with the peers' scripts (embed.py, generate.py, ann.py).
    pub dir: PathBuf,
    /// The peers' Python environment [default: `$RAGD_PEERS`, else `~/.cache/ragd-peers`].
    pub env: Option<PathBuf>,
    /// Threads a peer may use (ours follow `RAYON_NUM_THREADS`, default all cores).
    pub threads: usize,
}

impl Peers {
    /// Runs `script` with `args`, `--threads N` and `extra`; its last JSON line.
    pub fn run(&self, script: &str, args: &[&Path], extra: &[String]) -> Result<Value> {
        let env = self.env.clone().unwrap_or_else(|| {
            std::env::var_os("RAGD_PEERS")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache").join("ragd-peers"))
        });
        let python = env.join("bin").join("python");
        if !python.is_file() {
            bail!(
                "peer environment not found at {}; run `bash {}/setup.sh` first",
                env.display(),
                self.dir.display()
            );
        }
        let out = Command::new(&python)
            .arg(self.dir.join(script))
            .args(args)
            .args(["--threads", &self.threads.to_string()])
            .args(extra)
            .output()
            .with_context(|| format!("running {script}"))?;
        if !out.status.success() {
            bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(line).with_context(|| format!("parsing {script} output: {stdout}"))
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `ours / peer[key]`, rounded to 3 places; null when the peer has no positive figure.
pub(crate) fn ratio(ours: f64, peer: &Value, key: &str) -> Value {
    match peer.get(key).and_then(Value::as_f64) {
        Some(p) if p > 0.0 => json!((ours / p * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// Threads our side uses: `RAYON_NUM_THREADS`, else every core.
pub(crate) fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
