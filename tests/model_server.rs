//! Answers generated and texts embedded by a real OpenAI-compatible model server: llama.cpp's
//! `llama-server` (built by `deploy/llama-server/build.sh`, its path in `LLAMA_SERVER`) serving
//! the default SmolLM2 GGUF on loopback (for embeddings: its mean-pooled hidden states, 576
//! values; no embedding GGUF is on the registries). Every server here is started and killed by the test itself, and
//! every wait is bounded.
#![allow(clippy::unwrap_used)]

use ragd_models::registry::DEFAULT_DECODER;
use ragd_models::{
    ChatMessage, Encode, GenerateRequest, GenerationEvent, Generator, GeneratorOptions, Precision,
    Prompt, RemoteEncoder, RemoteEncoderOptions, RemoteOptions,
};
use ragd_proto::v1 as pb;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

mod common;
use common::*;
mod llama_server;
use llama_server::LlamaServer;

fn models_dir() -> PathBuf {
    std::env::var_os("RAGD_MODELS")
        .map_or_else(|| dirs_home().join(".cache/ragd/models"), PathBuf::from)
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap())
}

fn gguf() -> PathBuf {
    DEFAULT_DECODER.gguf_path(&models_dir())
}

/// `llama-server` serving the default GGUF (4,096 tokens, two slots) with `extra` flags.
fn smollm(extra: &[&str]) -> LlamaServer {
    let mut args = vec!["-c", "4096", "-np", "2", "-t", "2", "--no-webui"];
    args.extend_from_slice(extra);
    LlamaServer::start(&gguf(), &args)
}

fn remote(url: &str, tokenizer: bool) -> Generator {
    remote_with_key(url, tokenizer, None)
}

fn remote_with_key(url: &str, tokenizer: bool, key: Option<&str>) -> Generator {
    let mut o = RemoteOptions::new(url, "smollm2");
    o.tokenizer = tokenizer.then(gguf);
    o.api_key = key.map(String::from);
    o.retries = 2;
    Generator::remote(
        o,
        GeneratorOptions {
            sessions: 2,
            queue: 4,
            context: 4096,
            ..GeneratorOptions::default()
        },
    )
    .unwrap()
}

fn chat(question: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", question)])
}

/// The generator streams the server's greedy answer; it is the local model's own answer (same
/// weights, greedy), and stop sequences end it here even if the server ran past them.
#[test]
fn a_model_server_streams_what_the_local_model_would_write() {
    let server = smollm(&[]);
    let g = remote(&server.url(), true);
    assert!(g.is_remote());
    assert!(g.name().contains("127.0.0.1"), "{}", g.name());
    // Counted with the served model's own tokenizer.
    let local = Generator::load(&gguf(), GeneratorOptions::default()).unwrap();
    let text = "Packing counts tokens with the model's tokenizer.";
    assert_eq!(
        g.count_tokens(text).unwrap(),
        local.tokenize(text).unwrap().len()
    );
    assert_eq!(
        g.render_chat(&[ChatMessage::new("user", "hi")]).unwrap(),
        local
            .render_chat(&[ChatMessage::new("user", "hi")])
            .unwrap()
    );

    let question = "What is the capital of France? Answer in one sentence.";
    let mut deltas = Vec::new();
    let done = g
        .generate(GenerateRequest::greedy(chat(question), 24))
        .unwrap()
        .blocking_collect(|d| deltas.push(d.to_string()))
        .unwrap();
    assert!(deltas.len() > 1, "{deltas:?}");
    assert_eq!(deltas.concat(), done.text);
    assert!(done.text.contains("Paris"), "{done:?}");
    assert!(
        done.usage.generated_tokens > 0 && done.usage.prompt_tokens > 0,
        "{done:?}"
    );
    let mine = local
        .generate(GenerateRequest::greedy(chat(question), 24))
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap();
    // Greedy decoding of the same weights: the same words (llama.cpp and our kernels may
    // round differently late in a long answer, so the first sentence is compared).
    let first = |t: &str| t.split('.').next().unwrap_or("").trim().to_string();
    assert_eq!(first(&done.text), first(&mine.text), "{done:?} vs {mine:?}");

    // A stop sequence ends the stream before it: applied by the server (which reports a plain
    // stop) and, past the four the API takes, here.
    let mut req = GenerateRequest::greedy(chat(question), 24);
    req.stop = vec!["Paris".into()];
    let stopped = g.generate(req).unwrap().blocking_collect(|_| {}).unwrap();
    assert!(!stopped.text.contains("Paris"), "{stopped:?}");
    let mut req = GenerateRequest::greedy(chat(question), 24);
    req.stop = ["<a>", "<b>", "<c>", "<d>", "Paris"]
        .map(String::from)
        .to_vec();
    let stopped = g.generate(req).unwrap().blocking_collect(|_| {}).unwrap();
    assert!(!stopped.text.contains("Paris"), "{stopped:?}");
    assert_eq!(stopped.finish, ragd_models::FinishReason::StopSequence);

    // The repetition penalty reaches the server (llama.cpp's `repeat_penalty` field): greedy
    // output changes with it.
    let penalised = |p: f32| {
        let mut req = GenerateRequest::greedy(Prompt::Text("one one one one one one".into()), 12);
        req.sampling.repeat_penalty = p;
        g.generate(req)
            .unwrap()
            .blocking_collect(|_| {})
            .unwrap()
            .text
    };
    assert_ne!(penalised(1.0), penalised(2.0));

    // Without a tokenizer, prompts are estimated long (never under the real count).
    let estimated = remote(&server.url(), false);
    assert!(estimated.count_tokens(text).unwrap() >= local.tokenize(text).unwrap().len());
    assert!(estimated.tokenize(text).is_err());
}

/// A server killed mid-answer ends the stream with an UNAVAILABLE error naming it; a server
/// that is not there fails after the retries; one that accepts and never answers runs into the
/// request's deadline.
#[test]
fn a_lost_or_slow_model_server_is_a_clear_error() {
    let mut server = smollm(&["--api-key", "sk-test-0123"]);
    // The key is sent as a bearer token; a wrong one is refused, not retried.
    let wrong = remote_with_key(&server.url(), false, Some("sk-wrong"));
    let err = wrong
        .generate(GenerateRequest::greedy(chat("Hello?"), 8))
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert!(!err.to_string().contains("attempts"), "{err}");
    let g = remote_with_key(&server.url(), false, Some("sk-test-0123"));
    let mut stream = g
        .generate(GenerateRequest::greedy(
            Prompt::Text("Count from one to five hundred in words: one, two, three,".into()),
            1000,
        ))
        .unwrap();
    let mut got = 0;
    while got < 3 {
        match stream.blocking_next().unwrap().unwrap() {
            GenerationEvent::Delta(_) => got += 1,
            GenerationEvent::Done(c) => panic!("finished before the kill: {c:?}"),
        }
    }
    server.kill();
    let err = loop {
        match stream.blocking_next() {
            Some(Ok(GenerationEvent::Delta(_))) => continue,
            Some(Ok(GenerationEvent::Done(c))) => panic!("finished after the kill: {c:?}"),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert_eq!(err.kind(), ragd_core::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(&server.url()), "{err}");

    // Nothing listens there now: refused connections are retried, then UNAVAILABLE.
    let started = Instant::now();
    let err = g
        .generate(GenerateRequest::greedy(chat("Hello?"), 8))
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap_err();
    assert_eq!(err.kind(), ragd_core::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A server that accepts and never answers: the deadline ends the request.
    let (url, _hold) = silent_server();
    let slow = remote(&url, false);
    let mut req = GenerateRequest::greedy(chat("Hello?"), 8);
    req.deadline = Some(Instant::now() + Duration::from_millis(800));
    let started = Instant::now();
    let err = slow
        .generate(req)
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap_err();
    assert_eq!(err.kind(), ragd_core::ErrorKind::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A client that leaves ends the server's generation too (the connection is closed before the
/// next event is read): llama-server's own count of predicted tokens stops growing.
#[test]
fn a_dropped_stream_stops_the_server_generating() {
    let server = smollm(&["--metrics"]);
    let g = remote(&server.url(), false);
    let mut stream = g
        .generate(GenerateRequest::greedy(
            Prompt::Text("Count from one to five hundred in words: one, two, three,".into()),
            1500,
        ))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            stream.blocking_next().unwrap().unwrap(),
            GenerationEvent::Delta(_)
        ));
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(500));
    let before = predicted(server.port);
    std::thread::sleep(Duration::from_millis(1000));
    let after = predicted(server.port);
    // 1.5 s at ~150 tokens/s would have been hundreds more.
    assert!(after - before < 5.0, "{before} -> {after}");
    assert!(before < 400.0, "{before}");
}

/// llama-server's `llamacpp:tokens_predicted_total` (with `--metrics`): tokens of finished
/// and cancelled requests plus those being generated.
fn predicted(port: u16) -> f64 {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let value = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    value("llamacpp:tokens_predicted_total").unwrap_or_else(|| panic!("no metric in {out}"))
}

/// Reads one whole HTTP request (headers, then `Content-Length` bytes of body) so that closing
/// the connection after the reply is a clean FIN: closing with unread request bytes makes the
/// kernel send a reset, which the client may see before the reply.
fn read_request(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < end + length {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A server answering 429/503 is retried with backoff (its `Retry-After` honoured), then the
/// error names the status and the attempts.
#[test]
fn a_busy_server_is_retried_then_unavailable() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        let mut n = 0;
        for c in l.incoming().take(3) {
            let mut c = c.unwrap();
            read_request(&mut c);
            let status = if n == 0 {
                "429 Too Many Requests"
            } else {
                "503 Service Unavailable"
            };
            let body = "{\"error\":\"busy\"}";
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nRetry-After: 0\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            n += 1;
        }
        n
    });
    let g = remote(&url, false);
    let err = g
        .generate(GenerateRequest::greedy(chat("Hello?"), 8))
        .unwrap()
        .blocking_collect(|_| {})
        .unwrap_err();
    assert_eq!(err.kind(), ragd_core::ErrorKind::Unavailable, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 503") && msg.contains("after 3 attempts"),
        "{msg}"
    );
    assert_eq!(served.join().unwrap(), 3);
}

/// A loopback listener that accepts connections and never replies (kept open while the
/// returned handle lives).
fn silent_server() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: a few connections, then the thread ends when the test process does.
        for c in l.incoming().take(8) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    (url, h)
}

fn qa_docs() -> Vec<pb::DocumentInput> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/qa/docs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| pb::DocumentInput {
            id: p.file_name().unwrap().to_string_lossy().into_owned(),
            content: std::fs::read(&p).unwrap(),
            format: pb::DocumentFormat::Markdown as i32,
            ..Default::default()
        })
        .collect()
}

/// Through the gRPC service: a cited answer streamed from the model server, checked sentence
/// by sentence as for the local decoder; with the server gone, UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_through_a_model_server() {
    let server = tokio::task::spawn_blocking(|| smollm(&[])).await.unwrap();
    let url = server.url();
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.decoder.url = url;
        s.decoder.model = "smollm2".into();
        s.decoder.tokenizer = gguf();
        s.decoder.retries = 1;
        s.answer.strategy = ragd_engine::Strategy::Generate;
    })
    .await;
    srv.create("qa").await;
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "qa".into(),
            documents: qa_docs(),
        })
        .await
        .unwrap();
    let ask = pb::AskRequest {
        collection: "qa".into(),
        question: "Who is the warden of the Gorsel Hut?".into(),
        ..Default::default()
    };
    let mut events = srv
        .answer()
        .ask_stream(ask.clone())
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut fin = None;
    while let Some(ev) = events.message().await.unwrap() {
        match ev.event.unwrap() {
            pb::ask_event::Event::Sources(s) => assert!(!s.sources.is_empty()),
            pb::ask_event::Event::Delta(d) => text.push_str(&d.text),
            pb::ask_event::Event::Answer(a) => fin = Some(a),
        }
    }
    let a = fin.unwrap();
    assert_eq!(text, a.answer);
    // The model server wrote a draft; its sentences were checked against the sources (a
    // sentence with an invented detail is dropped, and a draft with none left falls back to
    // the quote).
    let usage = a.usage.clone().unwrap();
    assert!(usage.decoder.contains(&server.url()), "{usage:?}");
    assert!(
        usage.generated_tokens > 0 && usage.prompt_tokens > 0,
        "{usage:?}"
    );
    assert_ne!(a.kind, pb::AnswerKind::Refusal as i32, "{a:?}");
    assert!(a.answer.contains("Resi Amstutz"), "{a:?}");
    assert!(
        a.cited && a.citations[0].document_id == "gorsel-hut.md",
        "{a:?}"
    );
    assert!(
        a.support.iter().all(|s| !s.supported || s.marker >= 1),
        "{a:?}"
    );

    drop(server);
    let e = srv.answer().ask(ask).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("model server"), "{e:?}");
    srv.stop().await;
}

/// SmolLM2's hidden size: the length of llama-server's mean-pooled embeddings.
const SMOLLM2_DIM: usize = 576;

fn encoder(url: &str, batch: usize) -> RemoteEncoder {
    let mut o = RemoteEncoderOptions::new(url, "smollm2-embed", SMOLLM2_DIM);
    o.tokenizer = Some(gguf());
    o.batch = batch;
    o.retries = 1;
    RemoteEncoder::new(o).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Vectors come back normalised and in input order, whatever the batching; a wrong vector
/// length or a precision the server cannot give is a clear error.
#[test]
fn an_embeddings_server_encodes_in_order_and_checks_what_it_gets() {
    let server = smollm(&["--embeddings", "--pooling", "mean"]);
    let texts: Vec<String> = [
        "The Kessel Bridge has seven stone arches.",
        "Resi Amstutz is the warden of the Gorsel Hut.",
        "Barley soup is served at the hut.",
        "The bridge was built in 1874.",
        "A short one.",
    ]
    .map(String::from)
    .to_vec();
    let one_by_one: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            encoder(&server.url(), 8).encode(vec![t.clone()]).unwrap()[0]
                .vector
                .clone()
        })
        .collect();
    // Batches of two: three requests, answered on two sessions, reassembled in order.
    let e = encoder(&server.url(), 2);
    assert_eq!(e.dim(), SMOLLM2_DIM);
    let all = e.encode(texts.clone()).unwrap();
    assert_eq!(all.len(), texts.len());
    // Each vector is its own text's: closest to that text embedded alone. (Not equal to it:
    // llama-server's pooled vectors of a decoder model shift with the other sequences of the
    // batch, cosine 0.86-0.93 for the second of a pair here, against at most 0.85 between
    // different texts.)
    for (i, got) in all.iter().enumerate() {
        assert_eq!(got.vector.len(), SMOLLM2_DIM);
        assert!((dot(&got.vector, &got.vector) - 1.0).abs() < 1e-4);
        let sims: Vec<f32> = one_by_one.iter().map(|a| dot(&got.vector, a)).collect();
        let best = (0..sims.len())
            .max_by(|&a, &b| sims[a].total_cmp(&sims[b]))
            .unwrap();
        assert_eq!(best, i, "{sims:?}");
        assert!(got.tokens > 2 && !got.truncated);
    }
    // Counted with the served model's tokenizer (GGUF), special tokens included.
    let local = Generator::load(&gguf(), GeneratorOptions::default()).unwrap();
    let counter = e.token_counter();
    assert_eq!(
        counter.count(&texts[0]),
        local.tokenize(&texts[0]).unwrap().len()
    );

    let err = e
        .encode_with(vec!["x".into()], Precision::Int8)
        .unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
    let mut wrong = RemoteEncoderOptions::new(server.url(), "smollm2-embed", 384);
    wrong.retries = 0;
    let err = RemoteEncoder::new(wrong)
        .unwrap()
        .encode(vec!["x".into()])
        .unwrap_err();
    assert!(err.to_string().contains("384"), "{err}");
    // Without a tokenizer, sizes are estimated long.
    let estimated = RemoteEncoder::new(RemoteEncoderOptions::new(server.url(), "m", SMOLLM2_DIM))
        .unwrap()
        .token_counter();
    assert!(estimated.count(&texts[0]) >= counter.count(&texts[0]));
}

/// Through the gRPC service with `encoder.url` set: new collections embed on the server (their
/// settings name it), and search and Embed use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_embeds_through_an_embeddings_server() {
    let server = tokio::task::spawn_blocking(|| smollm(&["--embeddings", "--pooling", "mean"]))
        .await
        .unwrap();
    let url = server.url();
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.encoder.url = url;
        s.encoder.model = "smollm2-embed".into();
        s.encoder.dim = SMOLLM2_DIM;
        s.encoder.tokenizer = gguf();
    })
    .await;
    let c = srv
        .collections()
        .create(pb::CreateCollectionRequest {
            name: "qa".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let settings = c.settings.unwrap();
    assert_eq!(settings.encoder, "smollm2-embed");
    assert_eq!(settings.dim as usize, SMOLLM2_DIM);
    let up = srv
        .documents()
        .upsert(pb::UpsertRequest {
            collection: "qa".into(),
            documents: qa_docs(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        up.results
            .iter()
            .all(|r| r.status == pb::DocumentStatus::Added as i32),
        "{up:?}"
    );
    let hits = srv
        .search()
        .search(pb::SearchRequest {
            collection: "qa".into(),
            query: "Who is the warden of the Gorsel Hut?".into(),
            options: Some(pb::SearchOptions {
                mode: pb::SearchMode::Hybrid as i32,
                top_k: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].document_id, "gorsel-hut.md", "{hits:?}");
    let dense = srv
        .search()
        .search(pb::SearchRequest {
            collection: "qa".into(),
            query: "stone arches of the bridge".into(),
            options: Some(pb::SearchOptions {
                mode: pb::SearchMode::Dense as i32,
                top_k: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(dense.len(), 3, "{dense:?}");
    let v = srv
        .search()
        .embed(pb::EmbedRequest {
            texts: vec!["hello".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.embeddings[0].values.len(), SMOLLM2_DIM);

    // The server gone: searches that need a vector are UNAVAILABLE, lexical ones still work.
    drop(server);
    let e = srv
        .search()
        .search(pb::SearchRequest {
            collection: "qa".into(),
            query: "a question never asked before".into(),
            options: Some(pb::SearchOptions {
                mode: pb::SearchMode::Dense as i32,
                top_k: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let lexical = srv
        .search()
        .search(pb::SearchRequest {
            collection: "qa".into(),
            query: "Gorsel Hut warden".into(),
            options: Some(pb::SearchOptions {
                mode: pb::SearchMode::Lexical as i32,
                top_k: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(lexical[0].document_id, "gorsel-hut.md");
    srv.stop().await;
}
