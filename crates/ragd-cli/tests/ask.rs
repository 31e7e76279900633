//! `ragd quickstart` and `ragd ask --collection X --json` with both real models: from the
//! bundled sample document to a cited answer, as scripts use it.
#![allow(clippy::unwrap_used)]

use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};
use serde_json::Value;
use std::process::Command;

fn ragd(args: &[&str]) -> Value {
    let dir = registry::resolve_models_dir(None);
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        assert!(spec.verify(&dir).unwrap_or(false), "{}", spec.missing(&dir));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args)
        .args(["--models-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ragd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The interface scripts rely on: `answer, refused, cited, citations[{marker, document_id,
/// chunk_id, title, start, end, snippet}], usage`.
fn assert_answer_shape(v: &Value) {
    assert!(v["answer"].is_string(), "{v}");
    assert!(v["refused"].is_boolean() && v["cited"].is_boolean(), "{v}");
    for c in v["citations"].as_array().unwrap() {
        assert!(c["marker"].is_u64() && c["chunk_id"].is_u64(), "{c}");
        assert!(
            c["document_id"].is_string() && c["title"].is_string(),
            "{c}"
        );
        assert!(c["snippet"].is_string(), "{c}");
        assert!(
            c["start"].as_u64().unwrap() < c["end"].as_u64().unwrap(),
            "{c}"
        );
    }
    for k in [
        "prompt_tokens",
        "generated_tokens",
        "time_to_first_token_ms",
        "decode_tokens_per_s",
        "retrieval_ms",
        "index_generation",
    ] {
        assert!(v["usage"][k].is_number(), "usage.{k} missing: {v}");
    }
    assert!(v["usage"]["encoder"].is_string() && v["usage"]["decoder"].is_string());
}

#[test]
fn quickstart_then_ask_answer_from_the_sample_collection_with_citations() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let v = ragd(&["quickstart", "--json", "--data-dir", d]);
    assert_answer_shape(&v);
    assert!(!v["refused"].as_bool().unwrap(), "{v}");
    assert!(
        v["answer"]
            .as_str()
            .unwrap()
            .contains("temporary directory"),
        "{v}"
    );
    assert!(v["cited"].as_bool().unwrap(), "{v}");
    let c = &v["citations"][0];
    assert_eq!(c["document_id"], "ragd-overview.md");
    let doc = include_str!("../../../deploy/sample/ragd-overview.md");
    let (s, e) = (
        c["start"].as_u64().unwrap() as usize,
        c["end"].as_u64().unwrap() as usize,
    );
    assert!(doc[s..e].contains("temporary directory"), "{}", &doc[s..e]);

    // The same collection, now with `ask`; an off-topic question is refused without the decoder.
    let ask = |extra: &[&str]| {
        let mut args = vec!["ask", "--collection", "sample", "--data-dir", d, "--json"];
        args.extend(extra);
        ragd(&args)
    };
    let v = ask(&["What is the capital gains tax rate in Portugal?"]);
    assert_answer_shape(&v);
    assert!(v["refused"].as_bool().unwrap(), "{v}");
    assert!(!v["cited"].as_bool().unwrap(), "{v}");
    assert_eq!(v["usage"]["generated_tokens"], 0, "{v}");

    // Read by a person: a quote says it was made without the decoder, not "0.0 tokens/s".
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args([
            "ask",
            "--collection",
            "sample",
            "--data-dir",
            d,
            "--models-dir",
        ])
        .arg(registry::resolve_models_dir(None))
        .arg("What does a rebuild write before it switches?")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("temporary directory"), "{text}");
    assert!(text.contains("answered without the decoder in"), "{text}");
    assert!(!text.contains("tokens/s"), "{text}");

    // Why that quote: every packed sentence by score, the quote the best one that may be quoted.
    let v = ask(&["--explain", "What does a rebuild write before it switches?"]);
    assert_answer_shape(&v);
    let sentences = v["sentences"].as_array().unwrap();
    assert!(sentences.len() > 1, "{v}");
    for s in sentences {
        assert!(s["cosine"].is_number() && s["coverage"].is_number(), "{s}");
        assert!(
            s["start"].as_u64().unwrap() < s["end"].as_u64().unwrap(),
            "{s}"
        );
    }
    let best = sentences.iter().find(|s| s["excluded"].is_null()).unwrap();
    assert_eq!(best["score"], v["support"][0]["score"], "{v}");
    assert!(
        v["answer"]
            .as_str()
            .unwrap()
            .contains(best["text"].as_str().unwrap()),
        "{v}"
    );
}

/// `RAGD_LOG=debug` shows where an answer's time went: over gRPC under a span naming the call
/// and its request id, offline too; each stage's span closes with its busy time.
#[test]
fn debug_logs_break_an_answer_down_by_stage() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let models = registry::resolve_models_dir(None);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
            .args(args)
            .arg("--models-dir")
            .arg(&models)
            .env(
                "RAGD_LOG",
                "ragd_server=debug,ragd_engine=debug,ragd_models=debug",
            )
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "ragd {args:?}: {log}");
        log
    };
    let log = run(&["quickstart", "--json", "--data-dir", d]);
    let call = log
        .lines()
        .find(|l| {
            l.contains("rpc{method=/ragd.v1.Answer/AskStream request_id=") && l.contains(":prepare")
        })
        .unwrap_or_else(|| panic!("no answer stage under the call's span: {log}"));
    assert!(call.contains("time.busy="), "{call}");
    let log = run(&[
        "ask",
        "--collection",
        "sample",
        "--data-dir",
        d,
        "--strategy",
        "generate",
        "--json",
        "What does a rebuild write before it switches?",
    ]);
    for stage in ["prepare", "search", "select", "pack", "prefill", "decode"] {
        assert!(
            log.lines().any(|l| {
                // `name{fields}` or a bare `name`, at the root or under a parent span.
                let named = [" ", ":"].iter().any(|before| {
                    l.contains(&format!("{before}{stage}{{"))
                        || l.contains(&format!("{before}{stage}:"))
                });
                named && l.contains("close time.busy=")
            }),
            "no closed {stage} span: {log}"
        );
    }
}

/// A decoder the user brings: `ragd models add` registers a GGUF (here a tiny random Qwen2
/// written by the test), `models list` shows its architecture, and `ask --decoder NAME`
/// generates with it; a name never added fails with the command that adds it.
#[test]
fn an_added_decoder_answers_when_named() {
    let real = registry::resolve_models_dir(None);
    let models = tempfile::tempdir().unwrap();
    ragd_models::testing::link_default_models(&real, models.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let src = tempfile::tempdir().unwrap();
    let gguf = src.path().join("tiny-qwen2.gguf");
    ragd_models::testing::write_tiny_gguf(&gguf, &ragd_models::testing::TinySpec::QWEN2).unwrap();
    let m = models.path().to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ragd"))
            .args(args)
            .args(["--models-dir", m])
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> Value {
        let out = run(args);
        assert!(
            out.status.success(),
            "ragd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let added = json(&[
        "models",
        "add",
        "tiny",
        "--gguf",
        gguf.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(added["summary"]["architecture"], "qwen2", "{added}");
    let listed = json(&["models", "list", "--json"]);
    let tiny = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(tiny["status"], "ok", "{tiny}");
    assert_eq!(tiny["architecture"], "qwen2", "{tiny}");
    assert_eq!(tiny["role"], "decoder", "{tiny}");

    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let doc = src.path().join("notes.md");
    std::fs::write(
        &doc,
        "# Tides\n\nThe tide at Saint-Malo rises by up to thirteen metres during spring tides.\n",
    )
    .unwrap();
    json(&[
        "ingest",
        "--collection",
        "c",
        "--data-dir",
        d,
        "--json",
        doc.to_str().unwrap(),
    ]);
    let ask = |decoder: &str| {
        run(&[
            "ask",
            "--collection",
            "c",
            "--data-dir",
            d,
            "--json",
            "--strategy",
            "generate",
            "--max-tokens",
            "8",
            "--decoder",
            decoder,
            "How much does the tide rise at Saint-Malo?",
        ])
    };
    let out = ask("tiny");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["usage"]["decoder"], "tiny-qwen2", "{v}");
    assert!(v["usage"]["generated_tokens"].as_u64().unwrap() > 0, "{v}");

    let out = ask("never-added");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ragd models add never-added --gguf"), "{err}");
}
