//! Read replicas against real components: a writer publishing its collections to an object
//! store (a directory) with the pointers in a real 3-member etcd cluster on loopback, and
//! replicas (`replica.enabled`) in-process following them, one through etcd and one through
//! the store alone. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use ragd_engine::cluster::testing::EtcdCluster;
use ragd_engine::cluster::{ETCD_PREFIX, Etcd, GenerationId, GenerationStore, Pointer};
use ragd_proto::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;
use common::*;

fn search_req(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: "notes".into(),
        query: query.into(),
        options: Some(pb::SearchOptions {
            top_k: 3,
            ..Default::default()
        }),
    }
}

fn upsert(id: &str, text: &str) -> pb::UpsertRequest {
    pb::UpsertRequest {
        collection: "notes".into(),
        documents: vec![pb::DocumentInput {
            id: id.into(),
            content: text.as_bytes().to_vec(),
            ..Default::default()
        }],
    }
}

async fn health(srv: &Running) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(srv.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ragd.v1.Search".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn replica_status(srv: &Running) -> pb::ReplicaStatus {
    srv.admin()
        .info(pb::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .replica
        .unwrap()
}

/// Searches `srv` for `query` until document `doc` is among the hits (bounded: 30 s); the
/// response that had it.
async fn wait_for_doc(srv: &Running, query: &str, doc: &str) -> pb::SearchResponse {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(30) {
        match srv.search().search(search_req(query)).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.hits.iter().any(|h| h.document_id == doc) {
                    return r;
                }
                last = format!("served {} without {doc}", r.published_generation);
            }
            Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{doc} was not served within 30 s (last: {last})");
}

/// Waits (bounded: 30 s) until `srv`'s replica status satisfies `ok`.
async fn wait_status(
    srv: &Running,
    what: &str,
    ok: impl Fn(&pb::ReplicaStatus) -> bool,
) -> pb::ReplicaStatus {
    let t0 = Instant::now();
    loop {
        let s = replica_status(srv).await;
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not happen within 30 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A copy of published generation `from` as a new generation `to` in the directory store at
/// `bucket`, with one byte of one file flipped (size unchanged): what a corrupted object looks
/// like to a replica.
fn corrupted_copy(bucket: &Path, from: GenerationId, to: GenerationId) {
    let gen_dir = bucket.join("collections/notes/gen");
    let (src, dst) = (gen_dir.join(from.to_string()), gen_dir.join(to.to_string()));
    fn copy(a: &Path, b: &Path) {
        std::fs::create_dir_all(b).unwrap();
        for e in std::fs::read_dir(a).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &b.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
            }
        }
    }
    copy(&src, &dst);
    let manifest = dst.join("publish.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["id"] = to.to_string().into();
    let victim = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["bytes"].as_u64().unwrap() > 64)
        .map(|f| f["path"].as_str().unwrap().to_string())
        .next()
        .unwrap();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let path = dst.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
}

/// One writer publishing through etcd, one replica following the pointers (woken by an etcd
/// watch) and one following the store alone (polling):
/// - before anything is published a replica is NOT_SERVING and says it is not ready; writes to
///   it are FAILED_PRECONDITION naming the writer;
/// - once the writer publishes, both serve it (SERVING), searches equal the writer's and name
///   the published generation, answers too; the replica's lease key says what it serves;
/// - the etcd leader killed, a new write is published and pointed at through the surviving
///   members: the replica served throughout and converges on it;
/// - a pointer to a generation with an altered object: refused (the error names it), the
///   previous generation still served, counted in the metrics;
/// - etcd gone altogether: the replica keeps serving and reports the pointer unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_what_the_writer_publishes_and_keep_serving_when_sources_fail() {
    let bucket = tempfile::tempdir().unwrap();
    let url = bucket.path().to_string_lossy().into_owned();
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap();
    let endpoints = cluster.endpoints();
    let etcd = Etcd::new(&endpoints, ETCD_PREFIX).unwrap();
    let store = GenerationStore::open(&url, &Default::default()).unwrap();
    let (u, e) = (url.clone(), endpoints.clone());
    let writer = start_with(tempfile::tempdir().unwrap(), |s| {
        s.checkpoint_interval_seconds = 0.3;
        s.publish.url = u;
        s.publish.etcd = e;
    })
    .await;
    let writer_addr = writer.addr.to_string();
    let replica = |name: &str, etcd: Vec<String>, poll: f64| {
        let (u, w, name) = (url.clone(), writer_addr.clone(), name.to_string());
        start_with(tempfile::tempdir().unwrap(), move |s| {
            s.replica.enabled = true;
            s.replica.url = u;
            s.replica.etcd = etcd;
            s.replica.writer = w;
            s.replica.name = name;
            s.replica.poll_seconds = poll;
            s.replica.lease_seconds = 4;
            s.metrics_listen = "127.0.0.1:0".into();
        })
    };
    // r1 follows the etcd watch: its clock polls every 60 s, later than every bound below.
    let r1 = replica("r1", endpoints.clone(), 60.0).await;
    let r2 = replica("r2", Vec::new(), 0.2).await;

    let ready = |r: &Running| {
        let port = r.metrics.unwrap().port();
        ragd_engine::cluster::testing::http(port, "GET", "/ready", b"")
    };
    // Nothing published yet.
    assert_eq!(health(&r1).await, ServingStatus::NotServing as i32);
    assert!(ready(&r1).starts_with("HTTP/1.1 503"), "{}", ready(&r1));
    let s = replica_status(&r1).await;
    assert!(!s.ready && s.serving.is_empty(), "{s:?}");
    assert_eq!(s.writer, writer_addr);
    let refused = [
        r1.collections()
            .create(pb::CreateCollectionRequest {
                name: "notes".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        r1.documents()
            .upsert(upsert("a.md", "text"))
            .await
            .unwrap_err(),
        r1.collections()
            .delete(pb::DeleteCollectionRequest {
                name: "notes".into(),
            })
            .await
            .unwrap_err(),
    ];
    for e in refused {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("read replica") && e.message().contains(&writer_addr),
            "{}",
            e.message()
        );
    }
    let e = r1.search().search(search_req("tide")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("serves no collection yet"),
        "{}",
        e.message()
    );

    // Published: both replicas serve it, as the writer does.
    writer.create("notes").await;
    writer
        .documents()
        .upsert(upsert(
            "tide.md",
            "The tide at Saint-Malo rises thirteen metres at the spring equinox.",
        ))
        .await
        .unwrap();
    let query = "How high does the tide rise at Saint-Malo?";
    let on_r1 = wait_for_doc(&r1, query, "tide.md").await;
    let first: GenerationId = on_r1.published_generation.parse().unwrap();
    let pointed = etcd.current("notes").await.unwrap().unwrap().pointer;
    assert_eq!(pointed.id, first);
    let on_r2 = wait_for_doc(&r2, query, "tide.md").await;
    assert_eq!(on_r2.published_generation, first.to_string());
    let on_writer = writer
        .search()
        .search(search_req(query))
        .await
        .unwrap()
        .into_inner();
    assert!(on_writer.published_generation.is_empty());
    let key = |r: &pb::SearchResponse| {
        r.hits
            .iter()
            .map(|h| {
                (
                    h.chunk_id,
                    h.document_id.clone(),
                    (h.score * 1e4).round() as i64,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&on_r1), key(&on_writer));
    assert_eq!(key(&on_r2), key(&on_writer));
    let s = wait_status(&r1, "ready", |s| s.ready).await;
    assert_eq!(health(&r1).await, ServingStatus::Serving as i32);
    assert!(ready(&r1).starts_with("HTTP/1.1 200"), "{}", ready(&r1));
    assert_eq!(s.serving.len(), 1);
    assert_eq!(s.serving[0].generation, first.to_string());
    let a = r1
        .answer()
        .ask(pb::AskRequest {
            collection: "notes".into(),
            question: "What is the VAT rate on restaurant meals in Portugal?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.usage.unwrap().published_generation, first.to_string());
    let t0 = Instant::now();
    while !etcd
        .serving("notes")
        .await
        .unwrap()
        .contains(&("r1".to_string(), first))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "r1 never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The etcd leader dies; the writer publishes and points through the other members.
    let leader = cluster.leader().unwrap();
    cluster.kill(leader);
    writer
        .documents()
        .upsert(upsert(
            "bridge.md",
            "The bridge over the Rance was opened to traffic in 1932.",
        ))
        .await
        .unwrap();
    // Served throughout: the old generation answers while the new one is on its way.
    let still = r1.search().search(search_req(query)).await.unwrap();
    assert!(!still.into_inner().published_generation.is_empty());
    let on_r1 = wait_for_doc(
        &r1,
        "When was the bridge over the Rance opened?",
        "bridge.md",
    )
    .await;
    let second: GenerationId = on_r1.published_generation.parse().unwrap();
    assert!(second > first, "{second} after {first}");

    // A pointer to a generation whose object was altered: refused, the last good one served.
    let bad = GenerationId {
        generation: second.generation,
        seq: second.seq + 1000,
    };
    corrupted_copy(bucket.path(), second, bad);
    let (_, digest) = store.describe("notes", bad).await.unwrap();
    let cur = etcd.current("notes").await.unwrap().unwrap();
    assert!(
        etcd.flip(
            "notes",
            Some(cur.mod_revision),
            &Pointer { id: bad, digest }
        )
        .await
        .unwrap()
    );
    let bad_text = bad.to_string();
    for r in [&r1, &r2] {
        let s = wait_status(r, "the refusal", |s| s.last_error.contains(&bad_text)).await;
        assert!(s.last_error.contains("sha256"), "{}", s.last_error);
        let now = r.search().search(search_req(query)).await.unwrap();
        assert_eq!(now.into_inner().published_generation, second.to_string());
        assert_eq!(health(r).await, ServingStatus::Serving as i32);
        let m = scrape(r.metrics.unwrap()).await;
        assert!(
            m.contains("ragd_replica_generations_loaded_total{result=\"error\"}"),
            "{m}"
        );
    }

    // etcd gone: r1 serves what it has and says the pointer is out of reach.
    for i in 0..3 {
        cluster.kill(i);
    }
    let s = wait_status(&r1, "the pointer unreachable", |s| !s.pointer_reachable).await;
    assert!(s.last_error.contains("pointer"), "{}", s.last_error);
    let now = r1.search().search(search_req(query)).await.unwrap();
    assert_eq!(now.into_inner().published_generation, second.to_string());
    let m = scrape(r1.metrics.unwrap()).await;
    assert!(
        m.contains("ragd_replica_source_up{source=\"pointer\"} 0"),
        "{m}"
    );
    for srv in [r1, r2, writer] {
        srv.stop().await;
    }
}
