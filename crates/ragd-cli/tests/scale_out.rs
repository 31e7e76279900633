//! Scale-out as an operator runs it, every part real and on loopback: a writer (`ragd serve`
//! publishing to a directory store, pointers in etcd — Debian's, `ETCD`), three read replicas
//! (`ragd serve --replica`, separate processes) and HAProxy (Debian's, `HAPROXY`) running the
//! shipped `deploy/haproxy/haproxy.cfg` in front of them, and clients that retry a failed call
//! once. Under a bounded search load through the proxy: a new generation rolls out to every
//! replica, each answer comes from one generation (its hits agree with the generation it names),
//! and one replica killed with SIGKILL costs no call after its retry. The CLI's `--server` with
//! several URLs moves past one that does not answer.
#![allow(clippy::unwrap_used)]

use ragd_cluster::testing::{EtcdCluster, HaProxy, free_port, http};
use ragd_proto::v1 as pb;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

mod common;
use common::{Served, ingest_offline, json_of, ragd};

const COLLECTION: &str = "notes";
/// The query the new document answers, and that document.
const NEW_QUERY: &str = "Which lighthouse keeper rescued the crew of the Marisol?";
const NEW_DOC: &str = "lighthouse.md";
const OLD_QUERY: &str = "How long is the causeway to the island?";

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A config file for `ragd serve` with `body`.
fn config(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    s(&path)
}

fn search_req(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: COLLECTION.into(),
        query: query.into(),
        options: Some(pb::SearchOptions {
            top_k: 3,
            ..Default::default()
        }),
    }
}

async fn connect(url: String) -> Channel {
    Channel::from_shared(url).unwrap().connect().await.unwrap()
}

/// The generation replica `url` serves, if any.
async fn serving(url: &str) -> Option<String> {
    let mut admin = pb::admin_client::AdminClient::new(connect(url.to_string()).await);
    let info = admin.info(pb::InfoRequest {}).await.ok()?.into_inner();
    info.replica?
        .serving
        .into_iter()
        .find(|g| g.collection == COLLECTION)
        .map(|g| g.generation)
}

/// Waits (bounded: `secs`) until every replica in `urls` serves a generation other than `not`;
/// that generation (the same on all).
async fn rolled_out(urls: &[String], not: Option<&str>, secs: u64) -> String {
    let t0 = Instant::now();
    loop {
        let mut got = Vec::new();
        for u in urls {
            got.push(serving(u).await);
        }
        if let Some(Some(first)) = got.first()
            && got.iter().all(|g| g.as_deref() == Some(first))
            && Some(first.as_str()) != not
        {
            return first.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "the replicas did not converge within {secs} s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One search through the proxy, retried once after a failure.
async fn search_with_retry(
    client: &mut pb::search_client::SearchClient<Channel>,
    query: &str,
) -> Result<pb::SearchResponse, tonic::Status> {
    match client.search(search_req(query)).await {
        Ok(r) => Ok(r.into_inner()),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client
                .search(search_req(query))
                .await
                .map(|r| r.into_inner())
        }
    }
}

/// What the load saw: per call, the query asked and the response (or the final error).
type Seen = Arc<Mutex<Vec<(&'static str, Result<pb::SearchResponse, String>)>>>;

#[test]
fn three_replicas_behind_haproxy_roll_out_a_generation_and_survive_a_kill() {
    let root = tempfile::tempdir().unwrap();
    let docs = root.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("causeway.md"),
        "# The causeway\n\nThe causeway to Tidewater Island is 2.4 kilometres long and floods at every high tide.",
    )
    .unwrap();
    std::fs::write(
        docs.join("orchard.md"),
        "# The orchard\n\nThe island orchard grows seven varieties of cider apple on the southern slope.",
    )
    .unwrap();
    let writer_data = root.path().join("writer");
    ingest_offline(COLLECTION, &docs, &writer_data);
    let store = root.path().join("store");
    let etcd = EtcdCluster::start(1);
    let endpoints = format!("{:?}", etcd.endpoints());
    let writer_cfg = config(
        root.path(),
        "writer.toml",
        &format!(
            "checkpoint_interval_seconds = 0.3\n[publish]\nurl = {:?}\netcd = {endpoints}\n",
            s(&store)
        ),
    );
    let writer = Served::start_args(&writer_data, None, &[], &["--config", &writer_cfg]);

    let mut replicas = Vec::new();
    let mut ready_ports = Vec::new();
    for i in 1..=3 {
        let cfg = config(
            root.path(),
            &format!("replica{i}.toml"),
            &format!(
                "[replica]\nurl = {:?}\netcd = {endpoints}\nwriter = {:?}\nname = \"r{i}\"\npoll_seconds = 0.2\nlease_seconds = 5\n",
                s(&store),
                writer.url()
            ),
        );
        let ready = free_port();
        let data = root.path().join(format!("replica{i}"));
        replicas.push(Served::start_args(
            &data,
            None,
            &[],
            &[
                "--replica",
                "--config",
                &cfg,
                "--metrics-listen",
                &format!("127.0.0.1:{ready}"),
            ],
        ));
        ready_ports.push(ready);
    }
    let urls: Vec<String> = replicas.iter().map(Served::url).collect();
    // Readiness, as HAProxy checks it: 200 once the replica serves what the pointer names.
    let t0 = Instant::now();
    for port in &ready_ports {
        while !http(*port, "GET", "/ready", b"").starts_with("HTTP/1.1 200") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "replica on metrics port {port} not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let config_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy/haproxy.cfg");
    let proxy = HaProxy::start(
        &config_file,
        [
            (replicas[0].addr.as_str(), ready_ports[0]),
            (replicas[1].addr.as_str(), ready_ports[1]),
            (replicas[2].addr.as_str(), ready_ports[2]),
        ],
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Arc::default();
    let (first, second, stop, load) = rt.block_on(async {
        let first = rolled_out(&urls, None, 30).await;
        let proxy_channel = connect(format!("http://127.0.0.1:{}", proxy.port)).await;
        // Every replica healthy in HAProxy before the load starts (its checks run every 0.5 s).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for w in 0..4 {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            let mut client = pb::search_client::SearchClient::new(proxy_channel.clone());
            load.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    let q = if (w + n).is_multiple_of(2) {
                        NEW_QUERY
                    } else {
                        OLD_QUERY
                    };
                    let r = search_with_retry(&mut client, q)
                        .await
                        .map_err(|e| format!("{:?}: {}", e.code(), e.message()));
                    seen.lock().unwrap().push((q, r));
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A new document on the writer: published at its next checkpoint, pointed at, rolled
        // out to every replica while the load runs.
        let mut docs = pb::documents_client::DocumentsClient::new(connect(writer.url()).await);
        docs.upsert(pb::UpsertRequest {
            collection: COLLECTION.into(),
            documents: vec![pb::DocumentInput {
                id: NEW_DOC.into(),
                content:
                    b"The lighthouse keeper Agnes Pellow rescued the crew of the Marisol in 1911."
                        .to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
        let t_write = Instant::now();
        let second = rolled_out(&urls, Some(&first), 30).await;
        eprintln!(
            "generation {second} served by all three replicas {:.2} s after the write",
            t_write.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        (first, second, stop, load)
    });
    // SIGKILL one replica under the load.
    replicas[1].kill();
    let at_kill = seen.lock().unwrap().len();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }
    });

    let seen = seen.lock().unwrap();
    let failed: Vec<&String> = seen.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed after a retry: {:?}\n{}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)],
        proxy.log_tail()
    );
    assert!(
        seen.len() > at_kill + 100,
        "the load ended before the kill ({at_kill} of {} calls)",
        seen.len()
    );
    let (mut on_first, mut on_second) = (0, 0);
    for (q, r) in seen.iter() {
        let r = r.as_ref().unwrap();
        let has_new = r.hits.iter().any(|h| h.document_id == NEW_DOC);
        if r.published_generation == first {
            on_first += 1;
            assert!(!has_new, "generation {first} cannot hold {NEW_DOC}: {r:?}");
        } else {
            assert_eq!(r.published_generation, second, "{r:?}");
            on_second += 1;
            if *q == NEW_QUERY {
                assert_eq!(r.hits[0].document_id, NEW_DOC, "{r:?}");
            }
        }
    }
    assert!(on_first > 0 && on_second > 0, "{on_first} / {on_second}");
    eprintln!(
        "{} calls through HAProxy ({} after the kill): {on_first} on {first}, {on_second} on {second}, none failed after a retry",
        seen.len(),
        seen.len() - at_kill
    );
    // Every live replica took calls through the proxy.
    for port in [ready_ports[0], ready_ports[2]] {
        let m = http(port, "GET", "/metrics", b"");
        assert!(
            m.lines().any(|l| l.starts_with(
                "ragd_grpc_requests_total{method=\"/ragd.v1.Search/Search\",code=\"OK\"}"
            )),
            "{m}"
        );
    }

    // The CLI with several servers: a dead one is passed over.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let v = json_of(&ragd(&[
        "search",
        "--server",
        &format!("{dead},{}", replicas[2].url()),
        "--collection",
        COLLECTION,
        NEW_QUERY,
        "--json",
    ]));
    assert_eq!(v["hits"][0]["doc_id"], NEW_DOC, "{v}");
    assert_eq!(v["published_generation"], second.as_str(), "{v}");
    let out = ragd(&[
        "search",
        "--server",
        &format!("{dead},{}", replicas[1].url()),
        "--collection",
        COLLECTION,
        "x",
    ]);
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dead) && err.contains(&replicas[1].url()),
        "{err}"
    );
    // Writes through a replica are refused, naming the writer.
    let out = ragd(&[
        "collections",
        "create",
        "other",
        "--server",
        &replicas[0].url(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains(&writer.url()),
        "{err}"
    );
    // No replica left: the proxy answers UNAVAILABLE (retryable), not an HTML error page.
    replicas[0].kill();
    replicas[2].kill();
    let t0 = Instant::now();
    loop {
        let out = ragd(&[
            "search",
            "--server",
            &format!("http://127.0.0.1:{}", proxy.port),
            "--collection",
            COLLECTION,
            "x",
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("no ragd replica is ready") {
            assert_eq!(out.status.code(), Some(75), "{err}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the proxy never said no replica is ready: {err}\n{}",
            proxy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(proxy);
    drop(etcd);
}
