//! The reliability suite, in-process: what a hostile or unlucky client, a full disk and a second
//! server do to a real server with the real models. Each test is bounded in count and time.
//! (Process kills, parser fuzzing and the soak need the binary or run longer: `cli.rs`,
//! `ragd-engine`'s `parse` tests and `ragd bench soak`.)
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use bytes::{Buf, BufMut};
use ragd_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Raw bytes as a gRPC message, both ways: for sending what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One unary call of `path` with `body` as the request message, with the API key.
async fn raw_call(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {KEY}")).unwrap(),
    );
    grpc.unary(req, PathAndQuery::from_static(path), Raw)
        .await
        .map(|r| r.into_inner())
}

fn text_doc(id: &str, text: &str) -> pb::DocumentInput {
    pb::DocumentInput {
        id: id.into(),
        content: text.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Messages that are not valid protobuf (invalid UTF-8 in a string field, a length running past
/// the end, a field of the wrong wire type) are the caller's error: INVALID_ARGUMENT with a short
/// message, on every service, and the server serves on. (tonic-prost answers INTERNAL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_invalid_argument() {
    let srv = start(tempfile::tempdir().unwrap()).await;
    srv.create("m").await;
    // Field 1 (a string in every request below) as: invalid UTF-8; a length past the end; a
    // varint where a string belongs; a field number 0.
    let bodies: [Vec<u8>; 4] = [
        vec![0x0a, 0x02, 0xff, 0xfe],
        vec![0x0a, 0x10, b'm'],
        vec![0x08, 0x01],
        vec![0x02, 0x01, b'm'],
    ];
    let paths = [
        "/ragd.v1.Collections/Create",
        "/ragd.v1.Collections/Get",
        "/ragd.v1.Collections/Delete",
        "/ragd.v1.Documents/Upsert",
        "/ragd.v1.Documents/Delete",
        "/ragd.v1.Documents/Get",
        "/ragd.v1.Documents/List",
        "/ragd.v1.Search/Search",
        "/ragd.v1.Search/Embed",
        "/ragd.v1.Answer/Ask",
    ];
    let mut tried = 0;
    for path in paths {
        for body in &bodies {
            let e = raw_call(&srv.channel, path, body.clone())
                .await
                .expect_err(path);
            assert_eq!(e.code(), Code::InvalidArgument, "{path} {body:?}: {e:?}");
            assert!(e.message().len() < 300, "{path}: {}", e.message());
            tried += 1;
        }
    }
    assert_eq!(tried, 40);
    // Still serving, and the collection is intact.
    let c = srv
        .collections()
        .get(pb::GetCollectionRequest { name: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.name, "m");
    srv.stop().await;
}

/// Errors name what was wrong without sending the input back: a megabyte id or name used to
/// come back in the status message and fail the call on the client's header limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_do_not_echo_large_input() {
    let srv = start(tempfile::tempdir().unwrap()).await;
    srv.create("e").await;
    let big = "x".repeat(1 << 20);
    let e = srv
        .documents()
        .get(pb::GetDocumentRequest {
            collection: "e".into(),
            id: big.clone(),
            include_text: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().len() < 600, "{}", e.message().len());
    let e = srv
        .collections()
        .create(pb::CreateCollectionRequest {
            name: big.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 600, "{}", e.message().len());
    srv.stop().await;
}

/// What one request may make the server store and send back with every later hit or prompt is
/// bounded: titles, metadata (copied into every hit; a Search once returned 30 MB), history
/// (re-tokenized while packing; 64 turns of 48 KB once cost 49 CPU-s), and sampling settings
/// stay within what the proto documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_metadata_history_and_sampling_are_bounded() {
    let srv = start(tempfile::tempdir().unwrap()).await;
    srv.create("b").await;
    let ok = text_doc("ok", "Stone bridges carry their loads through arches.");
    let mut long_title = text_doc("long-title", "A document with a long title.");
    long_title.title = "t".repeat(2048);
    let mut many_keys = text_doc("many-keys", "A document with many metadata keys.");
    many_keys.metadata = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    let mut big_meta = text_doc("big-meta", "A document with large metadata.");
    big_meta.metadata = [("blob".to_string(), "v".repeat(64 << 10))].into();
    let results = srv
        .documents()
        .upsert(pb::UpsertRequest {
            collection: "b".into(),
            documents: vec![ok, long_title, many_keys, big_meta],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let failed = pb::DocumentStatus::Failed as i32;
    assert_eq!(results[0].status, pb::DocumentStatus::Added as i32);
    for (r, why) in results[1..]
        .iter()
        .zip(["title is 2048", "100 keys", "as JSON"])
    {
        assert_eq!(r.status, failed, "{r:?}");
        assert!(r.error.contains(why) && r.error.len() < 200, "{r:?}");
    }
    let ask = |history: Vec<pb::Turn>, temperature: Option<f32>| pb::AskRequest {
        collection: "b".into(),
        question: "What do stone bridges carry?".into(),
        history,
        generation: Some(pb::GenerationOptions {
            max_tokens: 8,
            temperature,
            ..Default::default()
        }),
        ..Default::default()
    };
    let turn = pb::Turn {
        question: "Earlier?".into(),
        answer: "words ".repeat(2000),
    };
    let t = Instant::now();
    let e = srv
        .answer()
        .ask(ask(vec![turn; 8], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("history holds"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let e = srv
        .answer()
        .ask(ask(Vec::new(), Some(2.5)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("temperature"), "{e:?}");
    srv.stop().await;
}

/// A stream that sends a document and then nothing is ended by the server after
/// `limits.stream_idle_seconds`, with the document acknowledged and DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ingest_stream_is_ended() {
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.limits.stream_idle_seconds = 1;
    })
    .await;
    srv.create("i").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::IngestStreamRequest {
        collection: "i".into(),
        document: Some(text_doc("one", "Arches carry loads.")),
    })
    .await
    .unwrap();
    let mut acks = srv
        .documents()
        .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = acks.message().await.unwrap().unwrap();
    assert_eq!(first.acknowledged, 1);
    let t = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(30), acks.message())
        .await
        .expect("the idle stream was never ended");
    let e = end.expect_err("an idle stream ended OK");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("1 acknowledged"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(tx);
    srv.stop().await;
}

/// A second server on a data directory in use stops at once, naming the first; it used to start
/// and then fail collection by collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let srv = start(data).await;
    let settings = ragd_server::Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir,
        ..ragd_server::Settings::default()
    };
    let e = ragd_server::bind(settings).await.unwrap_err();
    assert!(
        matches!(e, ragd_server::StartError::DataDirInUse { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("in use by another ragd server"),
        "{e}"
    );
    srv.stop().await;
}

/// Unmounts a test mount when dropped.
struct Mount(PathBuf);

impl Mount {
    /// A `size` tmpfs at `at`, or `None` where this process may not mount (not root).
    fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ragd-test"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system under `dir` with one file until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
    p
}

/// A full disk is RESOURCE_EXHAUSTED with a message that says so (it was INTERNAL), loses no
/// acknowledged document, and once space is freed the collection works again without a
/// restart (it used to fail with redb's "Previous I/O error" until the server restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_the_collection_recovers_without_restart() {
    let owner = tempfile::tempdir().unwrap();
    let data = owner.path().join("data");
    let Some(_mount) = Mount::tmpfs(&data, "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let srv = start_with(tempfile::tempdir().unwrap(), |s| {
        s.data_dir = data.clone();
    })
    .await;
    srv.create("full").await;
    let upsert = |id: String| {
        let mut docs = srv.documents();
        async move {
            let text = format!("Record {id} of the archive. ").repeat(400);
            docs.upsert(pb::UpsertRequest {
                collection: "full".into(),
                documents: vec![text_doc(&id, &text)],
            })
            .await
        }
    };
    upsert("before".into()).await.unwrap();
    let filler = fill(&data);
    let mut acknowledged = vec!["before".to_string()];
    let mut refused = None;
    for i in 0..20 {
        match upsert(format!("while-full-{i}")).await {
            Ok(_) => acknowledged.push(format!("while-full-{i}")),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("20 upserts on a full disk all succeeded");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("disk is full"), "{e:?}");
    std::fs::remove_file(filler).unwrap();
    // Space is back: the collection serves and stores again, in the same process.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match upsert("after".into()).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the collection did not recover after space was freed: {e:?}"),
        }
    }
    acknowledged.push("after".into());
    for id in &acknowledged {
        srv.documents()
            .get(pb::GetDocumentRequest {
                collection: "full".into(),
                id: id.clone(),
                include_text: false,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} is gone: {e:?}"));
    }
    srv.stop().await;
    // Offline, the indexes agree with the DocStore. A blocking job of the in-process server (the
    // one the full disk failed) may still be letting go of the collection's locks: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match ragd_store::Collection::open(&data, "full") {
            Ok(c) => break c,
            Err(e)
                if Instant::now() < deadline && e.kind() == ragd_core::ErrorKind::Unavailable =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if Instant::now() < deadline && e.to_string().contains("Lock") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the collection does not open after the server stopped: {e}"),
        }
    };
    c.verify().unwrap();
    assert_eq!(c.stats().unwrap().documents, acknowledged.len() as u64);
}

fn code<T>(r: Result<tonic::Response<T>, Status>) -> Code {
    r.map_or_else(|e| e.code(), |_| Code::Ok)
}

/// The first event or error of a server stream call.
async fn first<T>(r: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Code {
    match r {
        Err(e) => e.code(),
        Ok(s) => match s.into_inner().message().await {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        },
    }
}

/// Bad input over every RPC: each request answered with the code that names the mistake
/// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS), never INTERNAL or a dead server; documents that
/// cannot be stored fail alone, inside an OK Upsert. Prints the count (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_every_rpc_gets_the_code_that_names_the_mistake() {
    use Code::{AlreadyExists, InvalidArgument as Invalid, NotFound};
    let srv = start(tempfile::tempdir().unwrap()).await;
    srv.create("s").await;
    srv.documents()
        .upsert(pb::UpsertRequest {
            collection: "s".into(),
            documents: vec![text_doc("d", "Stone bridges carry loads.")],
        })
        .await
        .unwrap();
    let (mut cols, mut docs, mut search, mut answer, mut admin) = (
        srv.collections(),
        srv.documents(),
        srv.search(),
        srv.answer(),
        srv.admin(),
    );
    let long = "x".repeat(5000);
    let mut cases: Vec<(&str, Code, Code)> = Vec::new();
    let new_col = |name: &str| pb::CreateCollectionRequest {
        name: name.into(),
        ..Default::default()
    };
    for (what, name) in [
        ("create: empty name", ""),
        ("create: path", "../x"),
        ("create: slash", "a/b"),
        ("create: long name", long.as_str()),
        ("create: dot name", ".hidden"),
    ] {
        cases.push((what, Invalid, code(cols.create(new_col(name)).await)));
    }
    cases.push((
        "create: exists",
        AlreadyExists,
        code(cols.create(new_col("s")).await),
    ));
    let mut big_chunks = new_col("c2");
    big_chunks.chunking = Some(pb::ChunkingSettings {
        max_tokens: 8192,
        ..Default::default()
    });
    cases.push((
        "create: chunks over the encoder",
        Invalid,
        code(cols.create(big_chunks).await),
    ));
    let get_col = |name: &str| pb::GetCollectionRequest { name: name.into() };
    cases.push(("get: empty", Invalid, code(cols.get(get_col("")).await)));
    cases.push((
        "get: missing",
        NotFound,
        code(cols.get(get_col("nope")).await),
    ));
    cases.push(("get: path", Invalid, code(cols.get(get_col("..")).await)));
    let del_col = |name: &str| pb::DeleteCollectionRequest { name: name.into() };
    cases.push((
        "delete: missing",
        NotFound,
        code(cols.delete(del_col("nope")).await),
    ));
    cases.push((
        "delete: empty",
        Invalid,
        code(cols.delete(del_col("")).await),
    ));

    let upsert = |c: &str, documents: Vec<pb::DocumentInput>| pb::UpsertRequest {
        collection: c.into(),
        documents,
    };
    cases.push((
        "upsert: no documents",
        Invalid,
        code(docs.upsert(upsert("s", vec![])).await),
    ));
    let many = vec![text_doc("m", "x"); 257];
    cases.push((
        "upsert: 257 documents",
        Invalid,
        code(docs.upsert(upsert("s", many)).await),
    ));
    cases.push((
        "upsert: missing collection",
        NotFound,
        code(docs.upsert(upsert("nope", vec![text_doc("a", "b")])).await),
    ));
    cases.push((
        "upsert: bad collection name",
        Invalid,
        code(docs.upsert(upsert("a b", vec![text_doc("a", "b")])).await),
    ));
    // Documents that fail alone, inside an OK call.
    let mut bad_docs = vec![
        text_doc("", "no id"),
        text_doc(&"i".repeat(600), "long id"),
        text_doc("empty", ""),
        text_doc("blank", "   \n\t "),
        pb::DocumentInput {
            id: "not-utf8".into(),
            content: vec![0xff, 0xfe, 0x00, 0x41],
            ..Default::default()
        },
        pb::DocumentInput {
            id: "bad-pdf".into(),
            content: b"%PDF-1.7 this is not a PDF".to_vec(),
            format: pb::DocumentFormat::Pdf as i32,
            ..Default::default()
        },
        pb::DocumentInput {
            id: "bad-format".into(),
            content: b"text".to_vec(),
            format: 99,
            ..Default::default()
        },
        pb::DocumentInput {
            id: "long-source".into(),
            content: b"text".to_vec(),
            source: "s".repeat(5000),
            ..Default::default()
        },
    ];
    bad_docs.push(text_doc("fine", "A fine document about arches."));
    let results = docs
        .upsert(upsert("s", bad_docs))
        .await
        .unwrap()
        .into_inner()
        .results;
    let failed = results
        .iter()
        .filter(|r| r.status == pb::DocumentStatus::Failed as i32 && !r.error.is_empty())
        .count();
    assert_eq!((failed, results.len()), (8, 9), "{results:?}");
    assert_eq!(results[8].status, pb::DocumentStatus::Added as i32);
    let del = |c: &str, ids: Vec<String>| pb::DeleteDocumentsRequest {
        collection: c.into(),
        ids,
    };
    cases.push((
        "delete docs: none",
        Invalid,
        code(docs.delete(del("s", vec![])).await),
    ));
    cases.push((
        "delete docs: 1025",
        Invalid,
        code(docs.delete(del("s", vec!["a".into(); 1025])).await),
    ));
    cases.push((
        "delete docs: missing collection",
        NotFound,
        code(docs.delete(del("nope", vec!["a".into()])).await),
    ));
    let get = |c: &str, id: &str| pb::GetDocumentRequest {
        collection: c.into(),
        id: id.into(),
        include_text: true,
    };
    cases.push((
        "get doc: missing",
        NotFound,
        code(docs.get(get("s", "nope")).await),
    ));
    cases.push((
        "get doc: missing collection",
        NotFound,
        code(docs.get(get("nope", "d")).await),
    ));
    let list = |c: &str, page_size: u32| pb::ListDocumentsRequest {
        collection: c.into(),
        page_size,
        ..Default::default()
    };
    cases.push((
        "list docs: page 5000",
        Invalid,
        code(docs.list(list("s", 5000)).await),
    ));
    cases.push((
        "list docs: missing collection",
        NotFound,
        code(docs.list(list("nope", 10)).await),
    ));
    let stream = |msgs: Vec<pb::IngestStreamRequest>| tokio_stream::iter(msgs);
    let msg = |c: &str, d: Option<pb::DocumentInput>| pb::IngestStreamRequest {
        collection: c.into(),
        document: d,
    };
    cases.push((
        "stream: no collection",
        Invalid,
        first(
            docs.ingest_stream(stream(vec![msg("", Some(text_doc("a", "b")))]))
                .await,
        )
        .await,
    ));
    cases.push((
        "stream: no document",
        Invalid,
        first(docs.ingest_stream(stream(vec![msg("s", None)])).await).await,
    ));
    cases.push((
        "stream: collection changes",
        Invalid,
        first(
            docs.ingest_stream(stream(vec![
                msg("s", Some(text_doc("a", "b"))),
                msg("t", Some(text_doc("c", "d"))),
            ]))
            .await,
        )
        .await,
    ));
    cases.push((
        "stream: missing collection",
        NotFound,
        first(
            docs.ingest_stream(stream(vec![msg("nope", Some(text_doc("a", "b")))]))
                .await,
        )
        .await,
    ));

    let q = |c: &str, query: &str, o: pb::SearchOptions| pb::SearchRequest {
        collection: c.into(),
        query: query.into(),
        options: Some(o),
    };
    let d = pb::SearchOptions::default;
    for (what, o) in [
        (
            "search: top_k 5000",
            pb::SearchOptions { top_k: 5000, ..d() },
        ),
        ("search: mode 99", pb::SearchOptions { mode: 99, ..d() }),
        (
            "search: candidates 1e6",
            pb::SearchOptions {
                candidates: 1_000_000,
                ..d()
            },
        ),
        (
            "search: ef 100000",
            pb::SearchOptions { ef: 100_000, ..d() },
        ),
        (
            "search: mmr 2",
            pb::SearchOptions {
                mmr_lambda: Some(2.0),
                ..d()
            },
        ),
        (
            "search: empty filter key",
            pb::SearchOptions {
                filter: Some(pb::Filter {
                    metadata: [(
                        String::new(),
                        pb::StringList {
                            values: vec!["v".into()],
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..d()
            },
        ),
    ] {
        cases.push((
            what,
            Invalid,
            code(search.search(q("s", "arches", o)).await),
        ));
    }
    cases.push((
        "search: long query",
        Invalid,
        code(search.search(q("s", &long, d())).await),
    ));
    cases.push((
        "search: missing collection",
        NotFound,
        code(search.search(q("nope", "arches", d())).await),
    ));
    let embed = |texts: Vec<String>| pb::EmbedRequest {
        texts,
        ..Default::default()
    };
    cases.push((
        "embed: none",
        Invalid,
        code(search.embed(embed(vec![])).await),
    ));
    cases.push((
        "embed: 300",
        Invalid,
        code(search.embed(embed(vec!["a".into(); 300])).await),
    ));
    cases.push((
        "embed: empty text",
        Invalid,
        code(search.embed(embed(vec![" ".into()])).await),
    ));
    cases.push((
        "embed: unknown precision",
        Invalid,
        code(
            search
                .embed(pb::EmbedRequest {
                    texts: vec!["a".into()],
                    precision: "bf16".into(),
                })
                .await,
        ),
    ));
    cases.push((
        "embed: 20 KB",
        Invalid,
        code(search.embed(embed(vec!["w ".repeat(10_000)])).await),
    ));

    let ask = |question: &str, g: pb::GenerationOptions| pb::AskRequest {
        collection: "s".into(),
        question: question.into(),
        generation: Some(g),
        ..Default::default()
    };
    let g = pb::GenerationOptions::default;
    let asks: Vec<(&str, pb::AskRequest)> = vec![
        ("ask: empty question", ask(" ", g())),
        ("ask: long question", ask(&long, g())),
        (
            "ask: max_tokens 5000",
            ask(
                "arches?",
                pb::GenerationOptions {
                    max_tokens: 5000,
                    ..g()
                },
            ),
        ),
        (
            "ask: temperature 3",
            ask(
                "arches?",
                pb::GenerationOptions {
                    temperature: Some(3.0),
                    ..g()
                },
            ),
        ),
        (
            "ask: top_p 1.5",
            ask(
                "arches?",
                pb::GenerationOptions {
                    top_p: Some(1.5),
                    ..g()
                },
            ),
        ),
        (
            "ask: 9 stops",
            ask(
                "arches?",
                pb::GenerationOptions {
                    stop: vec!["x".into(); 9],
                    ..g()
                },
            ),
        ),
        (
            "ask: 65 turns",
            pb::AskRequest {
                history: vec![
                    pb::Turn {
                        question: "q".into(),
                        answer: "a".into()
                    };
                    65
                ],
                ..ask("arches?", g())
            },
        ),
        (
            "ask: min_relevance 2",
            pb::AskRequest {
                min_relevance: Some(2.0),
                ..ask("arches?", g())
            },
        ),
    ];
    for (what, req) in asks {
        cases.push((what, Invalid, code(answer.ask(req.clone()).await)));
        cases.push((what, Invalid, first(answer.ask_stream(req).await).await));
    }
    cases.push((
        "ask: missing collection",
        NotFound,
        code(
            answer
                .ask(pb::AskRequest {
                    collection: "nope".into(),
                    ..ask("arches?", g())
                })
                .await,
        ),
    ));
    let rebuild = |c: &str, chunking: Option<pb::ChunkingSettings>| pb::RebuildRequest {
        collection: c.into(),
        chunking,
        ..Default::default()
    };
    cases.push((
        "rebuild: missing collection",
        NotFound,
        first(admin.rebuild(rebuild("nope", None)).await).await,
    ));
    cases.push((
        "rebuild: chunks over the encoder",
        Invalid,
        first(
            admin
                .rebuild(rebuild(
                    "s",
                    Some(pb::ChunkingSettings {
                        max_tokens: 8192,
                        ..Default::default()
                    }),
                ))
                .await,
        )
        .await,
    ));
    let mut health = tonic_health::pb::health_client::HealthClient::new(srv.channel.clone());
    cases.push((
        "health: unknown service",
        NotFound,
        code(
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "nope.Nope".into(),
                })
                .await,
        ),
    ));

    let wrong: Vec<_> = cases.iter().filter(|(_, want, got)| want != got).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Still serving, the stored documents intact.
    let info = admin.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.collections.len(), 1);
    assert_eq!(info.collections[0].documents, 2);
    println!(
        "{}",
        format_args!(
            "{{\"bad_requests\": {}, \"bad_documents\": {failed}, \"wrong_codes\": 0}}",
            cases.len()
        )
    );
    srv.stop().await;
}
