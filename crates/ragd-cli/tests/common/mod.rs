//! What the CLI tests share: running the `ragd` binary and reading its `--json` output.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn ragd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args)
        .output()
        .unwrap()
}

/// Its stdout as JSON, after checking it succeeded (else the stderr is the failure).
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The models directory the tests use: `RAGD_MODELS`, else `~/.cache/ragd/models`.
pub fn ragd_models_dir() -> std::path::PathBuf {
    match std::env::var_os("RAGD_MODELS") {
        Some(p) if !p.is_empty() => p.into(),
        _ => std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap()
            .join(".cache/ragd/models"),
    }
}

/// [`ragd_models_dir`] as a flag value.
pub fn models_dir() -> String {
    ragd_models_dir().to_string_lossy().into_owned()
}
