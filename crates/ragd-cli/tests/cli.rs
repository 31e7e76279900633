//! The `ragd` binary as scripts use it: exit codes and `--json` shapes.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::process::{Command, Output};

fn ragd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn models_dir() -> String {
    ragd_models_dir().to_string_lossy().into_owned()
}

fn ragd_models_dir() -> std::path::PathBuf {
    match std::env::var_os("RAGD_MODELS") {
        Some(p) if !p.is_empty() => p.into(),
        _ => std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap()
            .join(".cache/ragd/models"),
    }
}

#[test]
fn models_list_json_names_roles_and_paths() {
    let v = json_of(&ragd(&[
        "models",
        "list",
        "--json",
        "--models-dir",
        &models_dir(),
    ]));
    let arr = v.as_array().unwrap();
    let roles: Vec<&str> = arr.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert!(
        roles.contains(&"encoder") && roles.contains(&"decoder"),
        "{v}"
    );
    for m in arr {
        assert!(m["name"].is_string() && m["path"].is_string(), "{m}");
        assert_eq!(m["status"], "ok", "{m}");
    }
}

#[test]
fn models_fetch_is_a_no_op_when_installed() {
    let v = json_of(&ragd(&[
        "models",
        "fetch",
        "--json",
        "--models-dir",
        &models_dir(),
    ]));
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|m| m["action"] == "present"),
        "{v}"
    );
}

#[test]
fn a_missing_model_prints_the_command_that_fixes_it() {
    let empty = tempfile::tempdir().unwrap();
    let input = empty.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let dir = empty.path().join("models");
    let out = ragd(&[
        "bench",
        "embed",
        "--input",
        input.to_str().unwrap(),
        "--models-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("ragd models fetch --models-dir {}", dir.display())),
        "{err}"
    );
}

#[test]
fn bench_embed_json_has_the_documented_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "first line\n\nsecond line, a bit longer\nthird\n").unwrap();
    let v = json_of(&ragd(&[
        "bench",
        "embed",
        "--input",
        input.to_str().unwrap(),
        "--json",
        "--models-dir",
        &models_dir(),
    ]));
    assert_eq!(v["texts"], 3);
    for k in ["tokens", "seconds", "texts_per_s", "tokens_per_s"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k} in {v}");
    }
}

#[test]
fn bench_generate_json_has_the_documented_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let prompt = tmp.path().join("prompt.txt");
    std::fs::write(
        &prompt,
        "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    )
    .unwrap();
    let v = json_of(&ragd(&[
        "bench",
        "generate",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--max-tokens",
        "6",
        "--json",
        "--models-dir",
        &models_dir(),
    ]));
    assert_eq!(v["prompt_tokens"], 13, "{v}");
    assert!(v["generated_tokens"].as_u64().unwrap() <= 6);
    assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].is_number());
    assert!(v["text"].is_string());
}

#[test]
fn bad_flags_exit_with_usage_error() {
    let out = ragd(&["bench", "generate", "--max-tokens", "nope"]);
    assert_eq!(out.status.code(), Some(64));
}
