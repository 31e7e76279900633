//! The gRPC service end to end: a real server in-process on an ephemeral port with the real
//! models, real tonic clients.
#![allow(clippy::unwrap_used)]

use ragd_proto::v1 as pb;
use std::path::Path;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

mod common;
use common::*;

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
            title: String::new(),
            content: std::fs::read(&p).unwrap(),
            format: pb::DocumentFormat::Markdown as i32,
            metadata: [("set".to_string(), "qa".to_string())].into(),
            source: format!("qa/docs/{}", p.file_name().unwrap().to_string_lossy()),
        })
        .collect()
}

fn search_req(collection: &str, query: &str, mode: pb::SearchMode) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: collection.into(),
        query: query.into(),
        options: Some(pb::SearchOptions {
            mode: mode as i32,
            top_k: 3,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_end_to_end() {
    // The decoder writes (each sentence checked) so that AskStream streams generated text.
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.answer.strategy = ragd_engine::Strategy::Generate;
    })
    .await;

    // Health needs no key; everything else does.
    let mut health = tonic_health::pb::health_client::HealthClient::new(srv.channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ragd.v1.Answer".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        h.get_ref().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut anon = pb::collections_client::CollectionsClient::new(srv.channel.clone());
    let e = anon.list(pb::ListCollectionsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = pb::collections_client::CollectionsClient::with_interceptor(
        srv.channel.clone(),
        |mut r: Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                MetadataValue::from_static("Bearer not-the-key-at-all"),
            );
            Ok(r)
        },
    );
    assert_eq!(
        wrong
            .list(pb::ListCollectionsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Reflection lists the services.
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::with_interceptor(srv.channel.clone(), with_key as Auth);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("{msg:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for s in [
            "ragd.v1.Search",
            "ragd.v1.Answer",
            "ragd.v1.Documents",
            "ragd.v1.Admin",
            "ragd.v1.Collections",
        ] {
            assert!(names.iter().any(|n| n == s), "{names:?}");
        }
    }
    {
        // v1alpha too, as older grpcurl asks: the file that defines a service, by symbol.
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::with_interceptor(srv.channel.clone(), with_key as Auth);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "ragd.v1.Answer".into(),
            )),
        };
        let msg = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = msg.message_response else {
            panic!("{msg:?}")
        };
        let answer_proto = files
            .file_descriptor_proto
            .iter()
            .find(|f| f.windows(18).any(|w| w == b"ragd/v1/answer.pro"))
            .expect("ragd/v1/answer.proto among the files");
        assert!(answer_proto.windows(9).any(|w| w == b"AskStream"));
    }

    // Create, ingest over IngestStream (one ack per document, in order).
    let mut cols = srv.collections();
    let c = cols
        .create(pb::CreateCollectionRequest {
            name: "qa".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.settings.unwrap().encoder, "all-minilm-l6-v2");
    let e = cols
        .create(pb::CreateCollectionRequest {
            name: "qa".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let docs = qa_docs();
    let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let msgs: Vec<pb::IngestStreamRequest> = docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| pb::IngestStreamRequest {
            collection: if i == 0 { "qa".into() } else { String::new() },
            document: Some(d),
        })
        .collect();
    let mut acks = srv
        .documents()
        .ingest_stream(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut acked = Vec::new();
    while let Some(a) = acks.message().await.unwrap() {
        let r = a.result.unwrap();
        assert_eq!(r.status, pb::DocumentStatus::Added as i32, "{r:?}");
        assert_eq!(a.acknowledged as usize, acked.len() + 1);
        acked.push(r.id);
    }
    assert_eq!(acked, ids);

    // Upsert: per-document results, one bad document does not fail the rest.
    let up = srv
        .documents()
        .upsert(pb::UpsertRequest {
            collection: "qa".into(),
            documents: vec![
                pb::DocumentInput {
                    id: "extra.txt".into(),
                    title: "Extra".into(),
                    content: b"The Zorbel lamp glows green at night.".to_vec(),
                    ..Default::default()
                },
                pb::DocumentInput {
                    id: "bad.txt".into(),
                    content: vec![0xff, 0xfe, 0x00],
                    ..Default::default()
                },
                pb::DocumentInput {
                    id: String::new(),
                    content: b"x".to_vec(),
                    ..Default::default()
                },
                pb::DocumentInput {
                    id: "long-source.txt".into(),
                    content: b"y".to_vec(),
                    source: "s".repeat(5000),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let st: Vec<i32> = up.results.iter().map(|r| r.status).collect();
    assert_eq!(
        st,
        [
            pb::DocumentStatus::Added as i32,
            pb::DocumentStatus::Failed as i32,
            pb::DocumentStatus::Failed as i32,
            pb::DocumentStatus::Failed as i32
        ]
    );
    assert!(up.results[1].error.contains("UTF-8"), "{:?}", up.results[1]);
    assert!(
        up.results[3].error.contains("source"),
        "{:?}",
        up.results[3]
    );

    // Search in every mode finds the bridge document (BM25 sees writes at once too).
    for mode in [
        pb::SearchMode::Hybrid,
        pb::SearchMode::Dense,
        pb::SearchMode::Lexical,
    ] {
        let r = srv
            .search()
            .search(search_req("qa", "Kessel Bridge stone arches", mode))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.hits[0].document_id, "kessel-bridge.md", "{mode:?}");
        assert!(r.hits[0].start < r.hits[0].end);
    }
    let r = srv
        .search()
        .search(search_req("qa", "Zorbel lamp", pb::SearchMode::Lexical))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hits[0].document_id, "extra.txt");

    // AskStream: sources, then deltas, then the answer with citations.
    let mut events = srv
        .answer()
        .ask_stream(pb::AskRequest {
            collection: "qa".into(),
            question: "Who is the warden of the Gorsel Hut?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut fin = None;
    while let Some(ev) = events.message().await.unwrap() {
        match ev.event.unwrap() {
            pb::ask_event::Event::Sources(s) => {
                assert!(!s.sources.is_empty());
                kinds.push('s');
            }
            pb::ask_event::Event::Delta(d) => {
                text.push_str(&d.text);
                kinds.push('d');
            }
            pb::ask_event::Event::Answer(a) => {
                kinds.push('a');
                fin = Some(a);
            }
        }
    }
    let a = fin.unwrap();
    assert_eq!(kinds.first(), Some(&'s'));
    assert_eq!(kinds.last(), Some(&'a'));
    // Checked sentences are streamed as they complete; together they are the answer.
    assert!(kinds.contains(&'d'));
    assert_eq!(text, a.answer);
    assert_ne!(a.kind, pb::AnswerKind::Refusal as i32, "{a:?}");
    assert!(
        a.support.iter().any(|s| s.supported && s.marker >= 1),
        "{a:?}"
    );
    assert!(a.answer.contains("Resi Amstutz"), "{a:?}");
    assert!(
        a.cited && a.citations[0].document_id == "gorsel-hut.md",
        "{a:?}"
    );
    assert!(a.usage.unwrap().generated_tokens > 0);

    // Unary Ask: an off-topic question is refused without generating.
    let a = srv
        .answer()
        .ask(pb::AskRequest {
            collection: "qa".into(),
            question: "What is the VAT rate on restaurant meals in Portugal?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.refused && !a.cited, "{a:?}");
    assert_eq!(a.kind, pb::AnswerKind::Refusal as i32);

    // Bad input: the right status, and the server keeps serving.
    let big = "q".repeat(5000);
    let cases: Vec<(Code, Status)> = vec![
        (
            Code::InvalidArgument,
            srv.search()
                .search(search_req("qa", "", pb::SearchMode::Hybrid))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .search(search_req("qa", &big, pb::SearchMode::Hybrid))
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            srv.search()
                .search(search_req("nope", "x", pb::SearchMode::Hybrid))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .search(search_req("../etc", "x", pb::SearchMode::Hybrid))
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .search(pb::SearchRequest {
                    collection: "qa".into(),
                    query: "x".into(),
                    options: Some(pb::SearchOptions {
                        top_k: 5000,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .search(pb::SearchRequest {
                    collection: "qa".into(),
                    query: "x".into(),
                    options: Some(pb::SearchOptions {
                        mode: 42,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .embed(pb::EmbedRequest::default())
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.search()
                .embed(pb::EmbedRequest {
                    texts: vec!["x".into()],
                    precision: "fp16".into(),
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.answer()
                .ask(pb::AskRequest {
                    collection: "qa".into(),
                    question: " ".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.answer()
                .ask(pb::AskRequest {
                    collection: "qa".into(),
                    question: "Who?".into(),
                    generation: Some(pb::GenerationOptions {
                        max_tokens: 100_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.answer()
                .ask(pb::AskRequest {
                    collection: "qa".into(),
                    question: "Who?".into(),
                    generation: Some(pb::GenerationOptions {
                        temperature: Some(-3.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            srv.answer()
                .ask(pb::AskRequest {
                    collection: "nope".into(),
                    question: "Who?".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.documents()
                .upsert(pb::UpsertRequest {
                    collection: "qa".into(),
                    documents: vec![],
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            srv.documents()
                .get(pb::GetDocumentRequest {
                    collection: "qa".into(),
                    id: "missing".into(),
                    include_text: false,
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.documents()
                .list(pb::ListDocumentsRequest {
                    collection: "qa".into(),
                    page_size: 5000,
                    page_token: String::new(),
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.documents()
                .delete(pb::DeleteDocumentsRequest {
                    collection: "qa".into(),
                    ids: vec![],
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            srv.collections()
                .create(pb::CreateCollectionRequest {
                    name: String::new(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            srv.collections()
                .get(pb::GetCollectionRequest {
                    name: "nope".into(),
                })
                .await
                .unwrap_err(),
        ),
        (
            Code::NotFound,
            srv.collections()
                .delete(pb::DeleteCollectionRequest {
                    name: "nope".into(),
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (i, (want, got)) in cases.iter().enumerate() {
        assert_eq!(got.code(), *want, "case {i}: {got:?}");
        assert!(!got.message().is_empty(), "case {i}");
    }

    // Embed at each precision: unit vectors of the model's dimension, the precision reported,
    // int8 close to f32 but its own.
    let mut vectors = Vec::new();
    for (precision, reported) in [("", "f32"), ("f32", "f32"), ("int8", "int8")] {
        let r = srv
            .search()
            .embed(pb::EmbedRequest {
                texts: vec!["The hut's warden is Eda Vos.".into(), "PEFT?".into()],
                precision: precision.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.precision, reported);
        assert_eq!(r.embeddings.len(), 2);
        for e in &r.embeddings {
            assert_eq!(e.values.len(), r.dim as usize);
            let norm: f32 = e.values.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "{precision}: norm {norm}");
        }
        vectors.push(r.embeddings);
    }
    let cos = |a: &pb::Embedding, b: &pb::Embedding| -> f32 {
        a.values.iter().zip(&b.values).map(|(x, y)| x * y).sum()
    };
    for (i, ((default, f32), int8)) in vectors[0]
        .iter()
        .zip(&vectors[1])
        .zip(&vectors[2])
        .enumerate()
    {
        assert_eq!(default.values, f32.values);
        let c = cos(f32, int8);
        assert!(
            c > 0.99 && c < 0.999_999,
            "text {i}: int8 vs f32 cosine {c}"
        );
    }

    // Get, List pages, Delete.
    let d = srv
        .documents()
        .get(pb::GetDocumentRequest {
            collection: "qa".into(),
            id: "gorsel-hut.md".into(),
            include_text: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.title.contains("Gorsel Hut"), "{}", d.title);
    assert_eq!(d.source, "qa/docs/gorsel-hut.md");
    assert!(!d.chunks.is_empty() && d.text.contains("Resi Amstutz"));
    let p1 = srv
        .documents()
        .list(pb::ListDocumentsRequest {
            collection: "qa".into(),
            page_size: 15,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let p2 = srv
        .documents()
        .list(pb::ListDocumentsRequest {
            collection: "qa".into(),
            page_size: 15,
            page_token: p1.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.documents.len() + p2.documents.len(), 21);
    assert!(p2.next_page_token.is_empty());
    let del = srv
        .documents()
        .delete(pb::DeleteDocumentsRequest {
            collection: "qa".into(),
            ids: vec!["extra.txt".into(), "ghost".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (del.deleted, del.not_found),
        (vec!["extra.txt".to_string()], vec!["ghost".to_string()])
    );
    let r = srv
        .search()
        .search(search_req("qa", "Zorbel lamp", pb::SearchMode::Lexical))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.iter().all(|h| h.document_id != "extra.txt"));

    // Rebuild while searches run: none fails, and the generation moves on.
    let before = srv
        .collections()
        .get(pb::GetCollectionRequest { name: "qa".into() })
        .await
        .unwrap()
        .into_inner()
        .generation;
    let searcher = {
        let mut client = srv.search();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..40 {
                let r = client
                    .search(search_req(
                        "qa",
                        "Kessel Bridge arches",
                        pb::SearchMode::Hybrid,
                    ))
                    .await;
                assert_eq!(
                    r.unwrap().into_inner().hits[0].document_id,
                    "kessel-bridge.md"
                );
                n += 1;
            }
            n
        })
    };
    let mut progress = srv
        .admin()
        .rebuild(pb::RebuildRequest {
            collection: "qa".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut done = None;
    while let Some(ev) = progress.message().await.unwrap() {
        if let Some(pb::rebuild_progress::Event::Done(d)) = ev.event {
            done = Some(d);
        }
    }
    let done = done.unwrap();
    assert!(done.generation > before);
    assert_eq!(searcher.await.unwrap(), 40);
    let info = srv
        .admin()
        .info(pb::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.collections[0].generation, done.generation);
    assert_eq!(info.models.len(), 2);

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_ingest_stream_loses_no_acknowledged_document() {
    let data = tempfile::tempdir().unwrap();
    let data_path = data.path().to_path_buf();
    let srv = start(data).await;
    srv.create("s").await;
    // A client that keeps streaming documents, slowly.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestStreamRequest>(4);
    let feeder = tokio::spawn(async move {
        for i in 0..1000 {
            let msg = pb::IngestStreamRequest {
                collection: if i == 0 { "s".into() } else { String::new() },
                document: Some(pb::DocumentInput {
                    id: format!("doc-{i}"),
                    content: format!("Document number {i} talks about topic {}.", i % 7)
                        .into_bytes(),
                    ..Default::default()
                }),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut acks = srv
        .documents()
        .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acked: Vec<String> = Vec::new();
    while acked.len() < 10 {
        acked.push(acks.message().await.unwrap().unwrap().result.unwrap().id);
    }
    let Running {
        stop, done, _data, ..
    } = srv;
    let _ = stop.unwrap().send(());
    // The stream ends cleanly: remaining acks, then UNAVAILABLE (or the end).
    loop {
        match acks.message().await {
            Ok(Some(a)) => acked.push(a.result.unwrap().id),
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                break;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .unwrap()
        .unwrap();
    feeder.abort();
    // Every acknowledged document is there after a restart.
    let c = ragd_store::Collection::open(&data_path, "s").unwrap();
    for id in &acked {
        assert!(
            c.document(id).unwrap().is_some(),
            "{id} was acknowledged but is gone"
        );
    }
    drop(_data);
}

/// Overload is answered with RESOURCE_EXHAUSTED, the server keeps serving, and /metrics counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_resource_exhausted_and_metrics_count_it() {
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.metrics_listen = "127.0.0.1:0".into();
        s.decoder.sessions = 1;
        s.decoder.queue = 1;
        // One worker and four admitted jobs: a burst must overflow, whatever the machine's speed.
        s.limits.max_inflight = 4;
        s.limits.workers = 1;
    })
    .await;
    let metrics_addr = srv.metrics.unwrap();
    srv.create("o").await;
    let mut docs = srv.documents();
    docs.upsert(pb::UpsertRequest {
        collection: "o".into(),
        documents: qa_docs(),
    })
    .await
    .unwrap();

    // Six answers at once against one session and a queue of one.
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut a = srv.answer();
        calls.push(tokio::spawn(async move {
            a.ask(pb::AskRequest {
                collection: "o".into(),
                question: "Describe the Harrow split method of beekeeping.".into(),
                generation: Some(pb::GenerationOptions {
                    max_tokens: 48,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    assert!(ok >= 1 && exhausted >= 1, "ok {ok}, exhausted {exhausted}");

    // A burst of searches against 4 admission permits: each one is answered or refused with
    // RESOURCE_EXHAUSTED at once; nothing else, and no search waits in an unbounded queue.
    // Every tenth caller gives up after 1 ms (the server drops its queued job).
    let burst: Vec<_> = (0..200)
        .map(|i| {
            let mut s = srv.search();
            tokio::spawn(async move {
                let mut req = tonic::Request::new(search_req(
                    "o",
                    &format!("stone arches of the bridge {i}"),
                    pb::SearchMode::Hybrid,
                ));
                if i % 10 == 0 {
                    req.set_timeout(Duration::from_millis(1));
                }
                (i, s.search(req).await)
            })
        })
        .collect();
    let (mut found, mut refused) = (0, 0);
    for c in burst {
        match c.await.unwrap() {
            (_, Ok(r)) => {
                assert!(!r.into_inner().hits.is_empty());
                found += 1;
            }
            (_, Err(s)) if s.code() == Code::ResourceExhausted => refused += 1,
            (i, Err(s))
                if i % 10 == 0 && matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            (_, Err(s)) => panic!("unexpected status {s:?}"),
        }
    }
    assert!(
        found >= 1 && refused >= 1,
        "found {found}, refused {refused}"
    );
    // Still serving; a repeated query's vector comes from the collection's cache (the
    // searcher lives as long as the collection stays open, not one request).
    let mut s = srv.search();
    for _ in 0..2 {
        s.search(search_req("o", "Kessel Bridge", pb::SearchMode::Hybrid))
            .await
            .unwrap();
    }

    // Prometheus text with per-RPC counts, including the refusals.
    let body = scrape(metrics_addr).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains(
            "ragd_grpc_requests_total{method=\"/ragd.v1.Answer/Ask\",code=\"ResourceExhausted\"}"
        ),
        "{body}"
    );
    assert!(body.contains("ragd_grpc_request_seconds_bucket"), "{body}");
    assert!(
        body.contains("ragd_documents_acknowledged_total 20"),
        "{body}"
    );
    let hits: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("ragd_query_cache_lookups_total{outcome=\"hit\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits >= 1, "no query-cache hit counted: {body}");
    // Every admitted job is accounted for, those dropped while queued included.
    assert!(body.contains("ragd_inflight_jobs 0\n"), "{body}");
    assert!(body.contains("ragd_queued_jobs 0\n"), "{body}");
    srv.stop().await;
}

/// Calls without a key to made-up paths are counted under one `other` label: they cannot grow
/// the metrics (and the server's memory) without bound, as raw paths as labels did (3,000 calls
/// grew /metrics from 29 KB to 58 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_do_not_grow_the_metrics() {
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.metrics_listen = "127.0.0.1:0".into();
    })
    .await;
    let addr = srv.metrics.unwrap();
    let before = scrape(addr).await.len();
    let mut grpc = tonic::client::Grpc::new(srv.channel.clone());
    const CALLS: usize = 300;
    for i in 0..CALLS {
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
            "/attack{i}.{}/M{i}",
            "x".repeat(200)
        ))
        .unwrap();
        let codec = tonic_prost::ProstCodec::<pb::InfoRequest, pb::InfoResponse>::default();
        let r = grpc
            .unary(Request::new(pb::InfoRequest {}), path, codec)
            .await;
        assert!(r.is_err(), "a made-up path was answered");
    }
    let body = scrape(addr).await;
    assert!(!body.contains("attack"), "a raw path became a label");
    assert!(
        body.contains(&format!(
            "ragd_grpc_requests_total{{method=\"other\",code=\"Unimplemented\"}} {CALLS}"
        )),
        "{body}"
    );
    // One new label set (a counter and a histogram), whatever the number of calls.
    assert!(
        body.len() < before + 4096,
        "{before} → {} bytes",
        body.len()
    );
    srv.stop().await;
}

/// One damaged collection never breaks the others: List and Info list every healthy collection
/// and name the damaged one, Create/Get/Search/Delete keep working (a panic while opening it used
/// to poison a lock until restart), and the damaged collection itself can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_collection_does_not_break_the_others() {
    let srv = start(tempfile::tempdir().unwrap()).await;
    for name in ["bad", "good"] {
        srv.create(name).await;
        srv.documents()
            .upsert(pb::UpsertRequest {
                collection: name.into(),
                documents: qa_docs(),
            })
            .await
            .unwrap();
    }
    let Running {
        stop, done, _data, ..
    } = srv;
    let _ = stop.unwrap().send(());
    done.await.unwrap();
    // Damage bad's DocStore past its header (every 64th byte flipped).
    let redb = _data.path().join("bad/docstore.redb");
    let mut bytes = std::fs::read(&redb).unwrap();
    for i in (4096..bytes.len()).step_by(64) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&redb, bytes).unwrap();

    let srv = start(_data).await;
    let listed = srv
        .collections()
        .list(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(listed.unavailable.len(), 1);
    assert_eq!(listed.unavailable[0].name, "bad");
    assert!(
        !listed.unavailable[0].reason.contains('/'),
        "{:?}",
        listed.unavailable[0]
    );
    let err = srv
        .collections()
        .get(pb::GetCollectionRequest { name: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    // Everything else still works, repeatedly.
    for round in 0..2 {
        let info = srv
            .admin()
            .info(pb::InfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.collections.len(), 1 + round);
        assert_eq!(info.unavailable_collections.len(), 1);
        srv.create(&format!("new{round}")).await;
        let hits = srv
            .search()
            .search(search_req("good", "Kessel Bridge", pb::SearchMode::Hybrid))
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert!(!hits.is_empty());
    }
    srv.collections()
        .delete(pb::DeleteCollectionRequest { name: "bad".into() })
        .await
        .unwrap();
    let listed = srv
        .collections()
        .list(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.collections.len(), 3);
    assert!(listed.unavailable.is_empty());
    srv.stop().await;
}

/// A long upsert whose caller gives up stops on the server too: with one worker, the next call
/// is served at once instead of after the abandoned job (a nested-list upload used to run for
/// over 1,000 CPU-seconds past its caller's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upsert_stops_on_the_server() {
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.limits.workers = 1;
    })
    .await;
    srv.create("j").await;
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "j".into(),
            documents: qa_docs(),
        })
        .await
        .unwrap();
    // ~5 MB of distinct sentences: thousands of chunks, minutes of embedding on a small machine.
    let text: String = (0..100_000)
        .map(|i| format!("Sentence {i} mentions item{i} and topic{}. ", i % 97))
        .collect();
    let mut req = Request::new(pb::UpsertRequest {
        collection: "j".into(),
        documents: vec![pb::DocumentInput {
            id: "big".into(),
            content: text.into_bytes(),
            format: pb::DocumentFormat::Text as i32,
            ..Default::default()
        }],
    });
    req.set_timeout(Duration::from_secs(2));
    let err = srv.documents().upsert(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // The one worker is free again within one embedding slice: a search is answered promptly.
    let t = std::time::Instant::now();
    let hits = srv
        .search()
        .search(search_req("j", "Kessel Bridge", pb::SearchMode::Hybrid))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(!hits.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the abandoned job held the worker for {:?}",
        t.elapsed()
    );
    let stats = srv
        .collections()
        .get(pb::GetCollectionRequest { name: "j".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stats.documents,
        qa_docs().len() as u64,
        "the big document was stored"
    );
    srv.stop().await;
}

/// A message the server cannot read (here: over the message size limit) ends an ingest stream
/// with an error after the documents before it are acknowledged; the stream never ends OK with
/// later documents silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stream_message_is_an_error_not_a_silent_drop() {
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.limits.max_message_bytes = 64 << 10;
    })
    .await;
    let doc = |id: &str, bytes: usize| pb::IngestStreamRequest {
        collection: "u".into(),
        document: Some(pb::DocumentInput {
            id: id.into(),
            content: "Stone bridges carry loads. "
                .repeat(bytes / 27 + 1)
                .into_bytes(),
            ..Default::default()
        }),
    };
    let msgs = vec![doc("one", 100), doc("two", 200 << 10), doc("three", 100)];
    srv.create("u").await;
    let mut client = srv.documents().max_encoding_message_size(usize::MAX);
    let mut acks = client
        .ingest_stream(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut acked = Vec::new();
    let end = loop {
        match acks.message().await {
            Ok(Some(a)) => acked.push(a.result.unwrap().id),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let e = end.expect("the stream ended OK although a message was dropped");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_message_bytes"), "{e:?}");
    assert!(acked.iter().all(|id| id == "one"), "{acked:?}");
    srv.stop().await;
}

/// Chunking the encoder cannot take (max_tokens above its 256-token input) is refused by Create
/// and by Rebuild, and a refused rebuild saves nothing: later upserts still work (such a setting
/// used to be stored, and every later upsert failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_chunking_settings_are_refused_and_never_saved() {
    let srv = start(tempfile::tempdir().unwrap()).await;
    let too_big = pb::ChunkingSettings {
        max_tokens: 8192,
        ..Default::default()
    };
    let e = srv
        .collections()
        .create(pb::CreateCollectionRequest {
            name: "k".into(),
            chunking: Some(too_big),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("max_tokens"), "{e:?}");
    let precision = |name: &str, p: &str| pb::CreateCollectionRequest {
        name: name.into(),
        encoder_precision: p.into(),
        ..Default::default()
    };
    let e = srv
        .collections()
        .create(precision("k", "fp16"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"fp16\""), "{e:?}");
    let listed = srv
        .collections()
        .list(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.collections.is_empty());
    let c = srv
        .collections()
        .create(precision("k8", "int8"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.settings.unwrap().encoder_precision, "int8");

    srv.create("k").await;
    let refused = match srv
        .admin()
        .rebuild(pb::RebuildRequest {
            collection: "k".into(),
            chunking: Some(too_big),
            ..Default::default()
        })
        .await
    {
        Err(e) => Some(e),
        Ok(r) => {
            let mut events = r.into_inner();
            loop {
                match events.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            }
        }
    };
    let e = refused.expect("a rebuild with max_tokens 8192 succeeded");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let c = srv
        .collections()
        .get(pb::GetCollectionRequest { name: "k".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.settings.unwrap().chunking.unwrap().max_tokens, 256);
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "k".into(),
            documents: qa_docs(),
        })
        .await
        .unwrap();
    srv.stop().await;
}

/// One metadata model: a document ingested offline with JSON-valued metadata (a JSONL file's
/// numbers and booleans) and sent again over gRPC, where metadata values are strings, is the same
/// document — unchanged, not replaced and re-embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_ingested_offline_is_unchanged_when_sent_again_over_grpc() {
    let data = tempfile::tempdir().unwrap();
    let text = "Honey bees dance to tell their sisters where the flowers are.";
    {
        let engine = ragd_engine::Engine::offline(
            ragd_engine::EngineConfig::new(data.path()),
            &ragd_models::registry::resolve_models_dir(None),
            ragd_engine::GeneratorOptions::default(),
        );
        assert!(engine.open_or_create("m").unwrap());
        let metadata: ragd_core::Metadata =
            serde_json::from_str(r#"{"year": 2020, "reviewed": true, "lab": "north"}"#).unwrap();
        let doc = ragd_engine::ParsedDoc {
            doc: ragd_core::DocumentInput {
                id: "d1".into(),
                source: "bees.jsonl".into(),
                title: "Bees".into(),
                text: text.into(),
                metadata,
            },
            markdown: false,
        };
        let r = engine
            .ingest("m", vec![doc], ragd_engine::IngestOptions::default())
            .unwrap();
        assert_eq!(r[0].outcome, ragd_engine::WriteOutcome::Added);
        engine.checkpoint_all();
    }
    let srv = start(data).await;
    let mut docs = srv.documents();
    let metadata = [("year", "2020"), ("reviewed", "true"), ("lab", "north")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = docs
        .upsert(pb::UpsertRequest {
            collection: "m".into(),
            documents: vec![pb::DocumentInput {
                id: "d1".into(),
                title: "Bees".into(),
                content: text.as_bytes().to_vec(),
                format: pb::DocumentFormat::Text as i32,
                metadata,
                source: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results[0].status,
        pb::DocumentStatus::Unchanged as i32,
        "{r:?}"
    );
    srv.stop().await;
}

/// A decoder added with `ragd models add` answers when the settings name it (`decoder.name`),
/// its name in every answer's usage; a name never added stops the server at start with the
/// command that adds it.
#[tokio::test]
async fn the_settings_name_an_added_decoder() {
    use ragd_models::testing::{TinySpec, write_tiny_gguf};
    let real = ragd_engine::models::resolve_models_dir(None);
    let models = tempfile::tempdir().unwrap();
    ragd_models::testing::link_default_models(&real, models.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let src = tempfile::tempdir().unwrap();
    let gguf = src.path().join("tiny-qwen2.gguf");
    write_tiny_gguf(&gguf, &TinySpec::QWEN2).unwrap();
    ragd_models::user_models::add_gguf(models.path(), "tiny", &gguf, None).unwrap();
    let m = models.path().to_path_buf();
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.models_dir = m.clone();
        s.decoder.name = "tiny".into();
        s.answer.strategy = ragd_engine::Strategy::Generate;
    })
    .await;
    srv.create("notes").await;
    let up = srv
        .documents()
        .upsert(pb::UpsertRequest {
            collection: "notes".into(),
            documents: vec![pb::DocumentInput {
                id: "tides.md".into(),
                title: "Tides".into(),
                content: b"# Tides\n\nThe tide at Saint-Malo rises by up to thirteen metres.\n"
                    .to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        up.results[0].status,
        pb::DocumentStatus::Added as i32,
        "{up:?}"
    );
    let a = srv
        .answer()
        .ask(pb::AskRequest {
            collection: "notes".into(),
            question: "How much does the tide rise at Saint-Malo?".into(),
            generation: Some(pb::GenerationOptions {
                max_tokens: 8,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let usage = a.usage.clone().unwrap();
    assert_eq!(usage.decoder, "tiny-qwen2");
    assert!(usage.generated_tokens > 0, "{a:?}");
    srv.stop().await;

    let data = tempfile::tempdir().unwrap();
    let settings = ragd_server::Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        models_dir: m,
        decoder: ragd_server::settings::Decoder {
            name: "never-added".into(),
            ..Default::default()
        },
        ..ragd_server::Settings::default()
    };
    match ragd_server::bind(settings).await {
        Ok(_) => panic!("a server started with a decoder never added"),
        Err(e) => assert!(
            e.to_string().contains("ragd models add never-added --gguf"),
            "{e}"
        ),
    }
}

/// Reranking over gRPC: with `reranker.name` set to a cross-encoder added with `ragd models
/// add`, `SearchOptions.rerank` orders the hits by its score (`Hit.rerank_score`); fewer than
/// `top_k` is INVALID_ARGUMENT; a name never added stops the server at start with the command
/// that adds it.
#[tokio::test]
async fn searches_rerank_with_the_configured_cross_encoder() {
    let real = ragd_engine::models::resolve_models_dir(None);
    let models = tempfile::tempdir().unwrap();
    ragd_models::testing::link_default_models(&real, models.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/ragd-models/tests/fixtures/tiny-encoders/bert-reranker");
    ragd_models::user_models::add_encoder_dir(models.path(), "rr", &fixture).unwrap();
    let m = models.path().to_path_buf();
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.models_dir = m.clone();
        s.reranker.name = "rr".into();
    })
    .await;
    srv.create("notes").await;
    let documents = [
        ("bridge.md", "The bridge was opened to traffic in 1932."),
        ("cell.md", "Mitochondria produce ATP in the cell."),
        ("bm25.md", "BM25 ranks documents by term frequency."),
    ]
    .into_iter()
    .map(|(id, text)| pb::DocumentInput {
        id: id.into(),
        content: text.as_bytes().to_vec(),
        ..Default::default()
    })
    .collect();
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "notes".into(),
            documents,
        })
        .await
        .unwrap();
    let search = |rerank: u32| pb::SearchRequest {
        collection: "notes".into(),
        query: "When did the bridge open?".into(),
        options: Some(pb::SearchOptions {
            top_k: 3,
            rerank: Some(rerank),
            ..Default::default()
        }),
    };
    let hits = srv
        .search()
        .search(search(3))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 3, "{hits:?}");
    let scores: Vec<f32> = hits.iter().map(|h| h.rerank_score.unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let plain = srv
        .search()
        .search(search(0))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(plain.iter().all(|h| h.rerank_score.is_none()), "{plain:?}");
    let e = srv.search().search(search(2)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("rerank"), "{e:?}");
    // A collection that reranks by default: searches that do not say are reranked.
    let c = srv
        .collections()
        .create(pb::CreateCollectionRequest {
            name: "ranked".into(),
            rerank: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.settings.unwrap().rerank, 5);
    let e = srv
        .collections()
        .create(pb::CreateCollectionRequest {
            name: "too-deep".into(),
            rerank: 500,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("rerank"), "{e:?}");
    let documents = [
        "The bridge was opened to traffic in 1932.",
        "BM25 ranks documents.",
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| pb::DocumentInput {
        id: format!("d{i}"),
        content: text.as_bytes().to_vec(),
        ..Default::default()
    })
    .collect();
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "ranked".into(),
            documents,
        })
        .await
        .unwrap();
    let by_default = |rerank: Option<u32>| pb::SearchRequest {
        collection: "ranked".into(),
        query: "When did the bridge open?".into(),
        options: Some(pb::SearchOptions {
            top_k: 2,
            rerank,
            ..Default::default()
        }),
    };
    let hits = srv
        .search()
        .search(by_default(None))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(
        !hits.is_empty() && hits.iter().all(|h| h.rerank_score.is_some()),
        "{hits:?}"
    );
    let hits = srv
        .search()
        .search(by_default(Some(0)))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(hits.iter().all(|h| h.rerank_score.is_none()), "{hits:?}");
    srv.stop().await;

    let data = tempfile::tempdir().unwrap();
    let settings = ragd_server::Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        models_dir: models.path().to_path_buf(),
        reranker: ragd_server::settings::Reranker {
            name: "never-added".into(),
        },
        ..ragd_server::Settings::default()
    };
    match ragd_server::bind(settings).await {
        Ok(_) => panic!("a server started with a reranker never added"),
        Err(e) => assert!(
            e.to_string().contains("ragd models add never-added --dir"),
            "{e}"
        ),
    }
}

/// With `publish.url` set, the server publishes a collection after the background checkpoint
/// that follows its writes: the store then lists a generation holding them, whose files fetch
/// and open; a tick with no new writes publishes nothing; the next write is published as a newer
/// generation. With `publish.etcd` (one real etcd member) the pointer follows each publish and,
/// with `keep = 1`, the older generation is deleted once the newer one is pointed at.
#[tokio::test]
async fn the_server_publishes_what_changed_after_its_checkpoints() {
    use ragd_engine::cluster::{ETCD_PREFIX, Etcd, GenerationStore, testing::EtcdCluster};
    let bucket = tempfile::tempdir().unwrap();
    let url = bucket.path().to_string_lossy().into_owned();
    let u = url.clone();
    let cluster = EtcdCluster::start(1);
    let endpoints = cluster.endpoints();
    let e = endpoints.clone();
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.checkpoint_interval_seconds = 0.3;
        s.publish.url = u;
        s.publish.etcd = e;
        s.publish.keep = 1;
    })
    .await;
    let etcd = Etcd::new(&endpoints, ETCD_PREFIX).unwrap();
    srv.create("notes").await;
    let upsert = |id: &str, text: &str| pb::UpsertRequest {
        collection: "notes".into(),
        documents: vec![pb::DocumentInput {
            id: id.into(),
            content: text.as_bytes().to_vec(),
            ..Default::default()
        }],
    };
    srv.documents()
        .upsert(upsert(
            "tide.md",
            "The tide at Saint-Malo rises thirteen metres.",
        ))
        .await
        .unwrap();
    let store = GenerationStore::open(&url, &Default::default()).unwrap();
    // Waits (bounded) for a published generation of `notes` holding `docs` documents.
    let published = |docs: u64| {
        let store = store.clone();
        async move {
            for _ in 0..100 {
                for id in store.list("notes").await.unwrap().into_iter().rev() {
                    let (m, _) = store.describe("notes", id).await.unwrap();
                    if m.documents == docs {
                        return id;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no generation of notes with {docs} documents was published within 10 s");
        }
    };
    let first = published(1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        store.list("notes").await.unwrap(),
        vec![first],
        "published again without writes"
    );
    srv.documents()
        .upsert(upsert(
            "bridge.md",
            "The bridge was opened to traffic in 1932.",
        ))
        .await
        .unwrap();
    let second = published(2).await;
    assert!(second > first);
    // The pointer follows, and the first generation goes (keep = 1, no replica serves it).
    let mut pointed = None;
    for _ in 0..100 {
        pointed = etcd.current("notes").await.unwrap().map(|c| c.pointer.id);
        if pointed == Some(second) && store.list("notes").await.unwrap() == vec![second] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pointed, Some(second));
    assert_eq!(store.list("notes").await.unwrap(), vec![second]);
    let out = tempfile::tempdir().unwrap();
    let f = store
        .fetch("notes", second, None, &out.path().join("notes"))
        .await
        .unwrap();
    assert_eq!(f.manifest.chunks, 2);
    let copy = ragd_store::Collection::open(out.path(), "notes").unwrap();
    copy.verify().unwrap();
    assert_eq!(copy.counts().unwrap().documents, 2);
    srv.stop().await;
}
