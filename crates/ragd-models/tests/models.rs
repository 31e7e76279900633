//! Integration tests of the real default models against reference fixtures made by the peer
//! systems (`fixtures/make_fixtures.py`). The models must be installed (`ragd models fetch`);
//! `.ci/run` fetches them into `$RAGD_MODELS` before running the tests.
#![allow(clippy::unwrap_used)]

use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{
    BatchOptions, ChatMessage, Embedder, EmbedderHandle, Encode, Error, FinishReason,
    GenerateRequest, GenerationEvent, Generator, GeneratorOptions, Precision, Prompt,
    SamplingParams,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

fn models_dir() -> PathBuf {
    let dir = registry::resolve_models_dir(None);
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        assert!(spec.verify(&dir).unwrap_or(false), "{}", spec.missing(&dir));
    }
    dir
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| Embedder::load(&DEFAULT_ENCODER.dir(&models_dir())).unwrap())
}

fn generator() -> &'static Generator {
    static G: OnceLock<Generator> = OnceLock::new();
    G.get_or_init(|| {
        let opts = GeneratorOptions {
            sessions: 2,
            context: 2048,
            queue: 4,
            prefill_chunk: 256,
        };
        Generator::load(&DEFAULT_DECODER.gguf_path(&models_dir()), opts).unwrap()
    })
}

/// A fixture item's reference vector.
fn reference_vector(item: &Value) -> Vec<f32> {
    item["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fx = fixture("embeddings.json");
    let items = fx["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let out = embedder().embed(&texts).unwrap();
    let max_len = fx["max_seq_length"].as_u64().unwrap() as usize;
    assert_eq!(embedder().max_len(), max_len);
    for (item, got) in items.iter().zip(&out) {
        let want = reference_vector(item);
        assert_eq!(got.vector.len(), 384);
        let norm: f32 = got.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
        let c = cosine(&got.vector, &want);
        assert!(c >= 0.99, "cosine {c} for {:?}", item["text"]);
        let untruncated = item["untruncated_tokens"].as_u64().unwrap() as usize;
        assert_eq!(
            got.truncated,
            untruncated > max_len,
            "truncation flag for {:?}",
            item["text"]
        );
        assert_eq!(got.tokens, untruncated.min(max_len));
    }
}

/// The int8 encoder's vectors stay within the quality gate (cosine ≥ 0.99) of the PyTorch f32
/// reference and of our own f32 vectors, and do not depend on batching either.
#[test]
fn int8_embeddings_stay_close_to_f32() {
    let fx = fixture("embeddings.json");
    let items = fx["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let int8 = embedder().embed_with(&texts, Precision::Int8).unwrap();
    let f32s = embedder().embed(&texts).unwrap();
    for (i, item) in items.iter().enumerate() {
        let want = reference_vector(item);
        let to_ref = cosine(&int8[i].vector, &want);
        let to_ours = cosine(&int8[i].vector, &f32s[i].vector);
        assert!(
            to_ref >= 0.99 && to_ours >= 0.99,
            "{to_ref} {to_ours} for {i}"
        );
        assert_eq!(int8[i].tokens, f32s[i].tokens);
        let alone = embedder()
            .embed_with(&[texts[i]], Precision::Int8)
            .unwrap()
            .remove(0);
        let c = cosine(&alone.vector, &int8[i].vector);
        assert!(c > 0.9999, "batched vs alone {c} for {i}");
    }
}

/// Requests of both precisions that reach the embedder thread together are each answered at
/// their own precision.
#[test]
fn the_embedder_thread_answers_each_request_at_its_precision() {
    let handle = EmbedderHandle::load(&DEFAULT_ENCODER.dir(&models_dir()), 8).unwrap();
    let texts = [
        "a short query",
        "the heart pumps blood through the arteries",
    ];
    let answers: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let h = handle.clone();
                let p = if i % 2 == 0 {
                    Precision::F32
                } else {
                    Precision::Int8
                };
                let t: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
                s.spawn(move || (p, h.encode_with(t, p).unwrap()))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (p, got) in answers {
        let want = embedder().embed_with(&texts, p).unwrap();
        let other = match p {
            Precision::F32 => Precision::Int8,
            Precision::Int8 => Precision::F32,
        };
        let not = embedder().embed_with(&texts, other).unwrap();
        for ((g, w), o) in got.iter().zip(&want).zip(&not) {
            let (mine, theirs) = (cosine(&g.vector, &w.vector), cosine(&g.vector, &o.vector));
            assert!(mine > 0.9999 && mine > theirs, "{p}: {mine} vs {theirs}");
        }
    }
}

#[test]
fn batching_and_padding_do_not_change_vectors() {
    let fx = fixture("embeddings.json");
    let texts: Vec<&str> = fx["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    let together = embedder().embed(&texts).unwrap();
    let dir = DEFAULT_ENCODER.dir(&models_dir());
    // Tiny batches: every input alone or with a neighbour of a different length.
    let small = Embedder::load(&dir)
        .unwrap()
        .with_batch_options(BatchOptions {
            max_batch_tokens: 300,
            max_batch_size: 2,
        });
    let apart = small.embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = embedder().embed(&[*text]).unwrap();
        for other in [&apart[i], &alone[0]] {
            let c = cosine(&together[i].vector, &other.vector);
            assert!(c > 0.9999, "cosine {c} for input {i}");
        }
    }
}

#[tokio::test]
async fn embedder_handle_serves_concurrent_callers_and_refuses_overload() {
    let dir = DEFAULT_ENCODER.dir(&models_dir());
    let handle = EmbedderHandle::load(&dir, 1).unwrap();
    assert_eq!(handle.dim(), 384);
    let a = handle.embed(vec!["hello world".into()]).await.unwrap();
    let b = embedder().embed(&["hello world"]).unwrap();
    assert!(cosine(&a[0].vector, &b[0].vector) > 0.9999);

    let long: Vec<String> = (0..64)
        .map(|i| format!("text number {i} ").repeat(40))
        .collect();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let h = handle.clone();
            let texts = long.clone();
            tokio::spawn(async move { h.embed(texts).await })
        })
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(v) => {
                assert_eq!(v.len(), 64);
                ok += 1;
            }
            Err(Error::Overloaded(_)) => overloaded += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );

    // The blocking form, through the `Encode` trait the pipelines use, from blocking threads.
    let texts = vec!["a short one".to_string(), "hello world".to_string()];
    let direct = embedder().embed(&texts).unwrap();
    let h = handle.clone();
    let via = tokio::task::spawn_blocking(move || {
        let enc: &dyn Encode = &h;
        assert_eq!((enc.name(), enc.dim()), ("all-minilm-l6-v2", 384));
        assert_eq!(
            enc.token_counter().count("hello world") + enc.token_counter().special_tokens(),
            embedder().count_tokens("hello world").unwrap()
        );
        enc.encode(texts)
    })
    .await
    .unwrap()
    .unwrap();
    for (a, b) in via.iter().zip(&direct) {
        assert!(cosine(&a.vector, &b.vector) > 0.9999);
        assert_eq!(a.tokens, b.tokens);
    }
}

/// A query sent while a bulk request (an ingest's chunks) is being embedded is answered between
/// two pieces of it, not after all of it: searches stay fast while the server ingests or
/// rebuilds. Both answers are the vectors the encoder gives directly, in order.
#[test]
fn queries_overtake_bulk_work_on_the_embedder_thread() {
    let dir = DEFAULT_ENCODER.dir(&models_dir());
    let handle = EmbedderHandle::load(&dir, 4).unwrap();
    let bulk: Vec<String> = (0..96)
        .map(|i| format!("bulk text number {i} about stone bridges and rivers ").repeat(20))
        .collect();
    let h = handle.clone();
    let texts = bulk.clone();
    let bulk_call = std::thread::spawn(move || {
        let v = h.blocking_embed(texts).unwrap();
        (v, std::time::Instant::now())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let query = handle
        .blocking_embed(vec!["how old is the bridge?".into()])
        .unwrap();
    let query_done = std::time::Instant::now();
    let (vectors, bulk_done) = bulk_call.join().unwrap();
    assert!(
        query_done < bulk_done,
        "the query waited for the whole bulk request"
    );
    let direct = embedder().embed(&["how old is the bridge?"]).unwrap();
    assert!(cosine(&query[0].vector, &direct[0].vector) > 0.9999);
    assert_eq!(vectors.len(), bulk.len());
    for i in [0, 47, 95] {
        let d = embedder().embed(&[bulk[i].as_str()]).unwrap();
        assert!(
            cosine(&vectors[i].vector, &d[0].vector) > 0.9999,
            "text {i}"
        );
    }
}

#[test]
fn decoder_tokenizer_matches_llama_cpp() {
    for case in fixture("tokens.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            generator().tokenize(text).unwrap(),
            want,
            "ids for {text:?}"
        );
    }
}

#[test]
fn chat_template_renders_as_transformers_does() {
    for case in fixture("chat.json").as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let want = case["rendered"].as_str().unwrap();
        assert_eq!(generator().render_chat(&messages).unwrap(), want);
    }
}

fn complete(request: GenerateRequest) -> ragd_models::Completion {
    let mut deltas = String::new();
    let c = generator()
        .generate(request)
        .unwrap()
        .blocking_collect(|d| deltas.push_str(d))
        .unwrap();
    assert_eq!(deltas, c.text, "deltas concatenate to the text");
    c
}

fn chat(q: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", q)])
}

#[test]
fn greedy_generation_is_deterministic_and_sensible() {
    let req = GenerateRequest::greedy(
        chat("What is the capital of France? Answer in one word."),
        12,
    );
    let a = complete(req.clone());
    let b = complete(req);
    assert_eq!(a.text, b.text);
    assert!(a.text.contains("Paris"), "{:?}", a.text);
    assert!(a.usage.prompt_tokens > 10 && a.usage.generated_tokens >= 1);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        seed: Some(1234),
        ..Default::default()
    };
    let req = GenerateRequest {
        prompt: chat("Write a sentence about the sea."),
        max_tokens: 24,
        sampling,
        stop: vec![],
        deadline: None,
        force_citation: None,
    };
    assert_eq!(complete(req.clone()).text, complete(req).text);
}

#[test]
fn max_tokens_and_stop_sequences_end_generation() {
    let c = complete(GenerateRequest::greedy(
        chat("Count from 1 to 50, separated by commas."),
        5,
    ));
    assert_eq!(c.finish, FinishReason::Length);
    assert_eq!(c.usage.generated_tokens, 5);

    let mut req = GenerateRequest::greedy(chat("Count from 1 to 20, separated by commas."), 80);
    req.stop = vec!["5".into()];
    let c = complete(req);
    assert_eq!(c.finish, FinishReason::StopSequence, "{:?}", c.text);
    assert!(!c.text.contains('5'), "{:?}", c.text);
}

#[test]
fn over_long_prompts_are_refused() {
    let prompt = "word ".repeat(3000);
    let mut stream = generator()
        .generate(GenerateRequest::greedy(Prompt::Text(prompt), 16))
        .unwrap();
    match stream.blocking_next() {
        Some(Err(e @ Error::PromptTooLong { .. })) => {
            assert!(e.to_string().contains("context holds 2048"), "{e}");
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
fn invalid_parameters_are_refused_up_front() {
    let mut req = GenerateRequest::greedy(chat("hi"), 0);
    assert!(matches!(
        generator().generate(req.clone()),
        Err(Error::InvalidInput(_))
    ));
    req.max_tokens = 4;
    req.sampling.top_p = 2.0;
    assert!(matches!(
        generator().generate(req),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn dropping_the_stream_stops_generation() {
    // A private pool so other tests' tokens do not count.
    let opts = GeneratorOptions {
        sessions: 1,
        context: 1024,
        queue: 2,
        prefill_chunk: 256,
    };
    let g = Generator::load(&DEFAULT_DECODER.gguf_path(&models_dir()), opts).unwrap();
    let mut stream = g
        .generate(GenerateRequest::greedy(
            chat("Write a very long story about a dragon."),
            500,
        ))
        .unwrap();
    let first = stream.blocking_next().unwrap().unwrap();
    assert!(matches!(first, GenerationEvent::Delta(_)));
    let at_drop = g.tokens_generated();
    drop(stream);
    std::thread::sleep(Duration::from_millis(500));
    let after = g.tokens_generated();
    assert!(
        after <= at_drop + 1,
        "kept generating: {at_drop} -> {after}"
    );
    // The session is free again and serves the next request.
    let c = g
        .generate(GenerateRequest::greedy(chat("Say hi."), 3))
        .unwrap()
        .blocking_collect(|_| ())
        .unwrap();
    assert!(c.usage.generated_tokens >= 1);
}

#[test]
fn a_passed_deadline_ends_the_stream_with_deadline_exceeded() {
    let mut req = GenerateRequest::greedy(chat("Write a very long story about a dragon."), 400);
    req.deadline = Some(std::time::Instant::now() + Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut deltas = 0;
    let mut stream = generator().generate(req).unwrap();
    let end = loop {
        match stream.blocking_next() {
            Some(Ok(GenerationEvent::Delta(_))) => deltas += 1,
            other => break other,
        }
    };
    assert!(
        matches!(end, Some(Err(Error::DeadlineExceeded))),
        "{end:?} after {deltas} deltas"
    );
    // One forward pass past the deadline at most (a prefill chunk is the longest).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn citation_forcing_adds_a_valid_marker_unless_the_answer_is_a_refusal() {
    let mut req = GenerateRequest::greedy(chat("Say hello in three words."), 24);
    req.force_citation = Some(ragd_models::ForceCitation {
        sources: 3,
        unless_starts_with: "The documents".into(),
    });
    let c = complete(req.clone());
    let open = c
        .text
        .rfind('[')
        .unwrap_or_else(|| panic!("no marker: {:?}", c.text));
    let marker = &c.text[open..];
    assert!(
        ["[1]", "[2]", "[3]"].contains(&marker),
        "marker {marker:?} in {:?}",
        c.text
    );
    // Within max_tokens, marker included.
    assert!(c.usage.generated_tokens <= 24);
    // An answer that starts like a refusal gets none.
    let mut refusal = req;
    refusal.prompt =
        chat("Reply with exactly this sentence: The documents do not answer this question.");
    let c = complete(refusal);
    assert!(c.text.starts_with("The documents"), "{:?}", c.text);
    assert!(!c.text.contains('['), "{:?}", c.text);
}

#[test]
fn a_full_queue_is_refused_not_buffered() {
    let opts = GeneratorOptions {
        sessions: 1,
        context: 1024,
        queue: 1,
        prefill_chunk: 256,
    };
    let g = Generator::load(&DEFAULT_DECODER.gguf_path(&models_dir()), opts).unwrap();
    let req = GenerateRequest::greedy(chat("Write a long poem."), 64);
    let results: Vec<_> = (0..3).map(|_| g.generate(req.clone())).collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(Error::Overloaded(_)))),
        "{results:?}"
    );
}

/// One forward over the whole prompt (GEMM attention), chunks of it (GEMM after a filled cache,
/// and row-by-row attention for short chunks) and one token at a time (decode) leave the model
/// in the same state: the last token's logits agree.
#[test]
fn prefill_in_one_pass_in_chunks_or_token_by_token_gives_the_same_logits() {
    use ragd_models::llama::LlamaWeights;
    let w = LlamaWeights::open(&DEFAULT_DECODER.gguf_path(&models_dir())).unwrap();
    let prompt = generator()
        .tokenize(
            "Mitochondria are membrane-bound organelles that generate most of the chemical \
             energy needed to power the cell's biochemical reactions. They store it in ATP. \
             Each has its own small genome, inherited from the mother.",
        )
        .unwrap();
    assert!(prompt.len() > 32, "{} tokens", prompt.len());
    let logits = |chunk: usize| {
        let mut st = w.new_state(256);
        let mut last = Vec::new();
        for part in prompt.chunks(chunk) {
            last = w.forward(part, &mut st).unwrap();
        }
        assert_eq!(st.pos(), prompt.len());
        last
    };
    let one_pass = logits(prompt.len());
    let scale = one_pass.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Activations are quantized to 8 bits at every layer, so the paths' different float
    // summation orders flip a few roundings: the logits agree closely, the greedy token exactly.
    for chunk in [20, 7, 1] {
        let other = logits(chunk);
        let worst = one_pass
            .iter()
            .zip(&other)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let c = cosine(&one_pass, &other);
        assert!(c > 0.999, "chunks of {chunk}: cosine {c}");
        assert!(
            worst <= 0.05 * scale,
            "chunks of {chunk}: max |Δlogit| {worst} (scale {scale})"
        );
        assert_eq!(
            ragd_models::argmax(&one_pass),
            ragd_models::argmax(&other),
            "chunks of {chunk}: greedy token differs"
        );
    }
}

/// Sessions that run at once are stepped together in one forward pass; each still writes what
/// it writes alone (greedy), while one of them is cancelled and another runs into its stop
/// sequence, and the others keep going.
#[test]
fn batched_sessions_write_what_each_writes_alone() {
    let opts = GeneratorOptions {
        sessions: 4,
        context: 1024,
        queue: 4,
        // Small prompt pieces, so prompts are read over several steps beside decoding ones.
        prefill_chunk: 24,
    };
    let g = Generator::load(&DEFAULT_DECODER.gguf_path(&models_dir()), opts).unwrap();
    let questions = [
        "What is the capital of France?",
        "Name three colours of the rainbow.",
        "Write one sentence about the sea.",
    ];
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            g.generate(GenerateRequest::greedy(chat(q), 24))
                .unwrap()
                .blocking_collect(|_| ())
                .unwrap()
                .text
        })
        .collect();
    let streams: Vec<_> = questions
        .iter()
        .map(|q| g.generate(GenerateRequest::greedy(chat(q), 24)).unwrap())
        .collect();
    // A fourth, cancelled after its first text.
    let mut dropped = g
        .generate(GenerateRequest::greedy(
            chat("Write a very long story about a dragon."),
            200,
        ))
        .unwrap();
    assert!(matches!(
        dropped.blocking_next().unwrap().unwrap(),
        GenerationEvent::Delta(_)
    ));
    drop(dropped);
    let together: Vec<String> = streams
        .into_iter()
        .map(|s| s.blocking_collect(|_| ()).unwrap().text)
        .collect();
    assert_eq!(together, alone);
    // A stop sequence (the third word of the first answer) ends one session while the other
    // runs on.
    let stop = alone[0].split_whitespace().nth(2).unwrap().to_string();
    let mut req = GenerateRequest::greedy(chat(questions[0]), 24);
    req.stop = vec![stop.clone()];
    let stopped = g.generate(req).unwrap();
    let other = g
        .generate(GenerateRequest::greedy(chat(questions[2]), 24))
        .unwrap();
    let stopped = stopped.blocking_collect(|_| ()).unwrap();
    assert_eq!(stopped.finish, FinishReason::StopSequence);
    assert_eq!(stopped.text, alone[0][..alone[0].find(&stop).unwrap()]);
    assert_eq!(other.blocking_collect(|_| ()).unwrap().text, alone[2]);
}
