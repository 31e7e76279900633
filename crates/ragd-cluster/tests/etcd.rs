//! The generation pointer and the replicas' leases in a real etcd cluster: three members on
//! loopback (`ragd_cluster::testing::EtcdCluster`: Debian's etcd-server, its path in `ETCD`,
//! which `.ci/run` sets), started here and killed when the test ends. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use ragd_cluster::testing::EtcdCluster;
use ragd_cluster::{Etcd, GenerationId, GenerationStore, Pointer, point_and_prune};
use ragd_core::{ChunkSpan, DocumentInput, Metadata};
use ragd_store::{Collection, CollectionSettings, DocWrite};
use std::time::{Duration, Instant};

fn id(generation: u64, seq: u64) -> GenerationId {
    GenerationId { generation, seq }
}

fn pointer(generation: u64, seq: u64) -> Pointer {
    Pointer {
        id: id(generation, seq),
        digest: format!("{:064x}", generation * 1000 + seq),
    }
}

/// The pointer moves only by compare-and-swap (create when absent, then only from the revision
/// read), and keeps doing so through a killed leader: the client goes on to the other members
/// and, once a new leader is elected, the flip lands and every surviving member reads it.
#[tokio::test]
async fn the_pointer_moves_only_by_compare_and_swap_and_outlives_its_leader() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = Etcd::new(&cluster.endpoints(), "/ragd-test").unwrap();
    assert_eq!(etcd.current("c").await.unwrap(), None);
    assert!(etcd.flip("c", None, &pointer(1, 5)).await.unwrap());
    assert!(!etcd.flip("c", None, &pointer(1, 6)).await.unwrap());
    let cur = etcd.current("c").await.unwrap().unwrap();
    assert_eq!(cur.pointer, pointer(1, 5));
    assert!(
        !etcd
            .flip("c", Some(cur.mod_revision - 1), &pointer(1, 7))
            .await
            .unwrap()
    );
    assert!(
        etcd.flip("c", Some(cur.mod_revision), &pointer(2, 9))
            .await
            .unwrap()
    );
    assert!(etcd.flip("d", None, &pointer(1, 1)).await.unwrap());
    assert_eq!(etcd.collections().await.unwrap(), vec!["c", "d"]);

    // Kill the leader, with the client's preferred member being the dead one.
    let leader = cluster.leader().unwrap();
    cluster.kill(leader);
    let mut order = vec![cluster.endpoint(leader)];
    order.extend((0..3).filter(|i| *i != leader).map(|i| cluster.endpoint(i)));
    let etcd = Etcd::new(&order, "/ragd-test").unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let cur = etcd.current("c").await?;
            etcd.flip("c", cur.map(|c| c.mod_revision), &pointer(3, 12))
                .await
        };
        match attempt.await {
            Ok(true) => break,
            Ok(false) => panic!("nobody else moves the pointer in this test"),
            Err(e) => {
                assert!(
                    Instant::now() < until,
                    "no flip within 20 s of the leader's death: {e}\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for i in (0..3).filter(|i| *i != leader) {
        let one = Etcd::new(&[cluster.endpoint(i)], "/ragd-test").unwrap();
        assert_eq!(
            one.current("c").await.unwrap().unwrap().pointer,
            pointer(3, 12),
            "member {i}"
        );
    }
    // All members down: a clear error naming every endpoint.
    for i in 0..3 {
        cluster.kill(i);
    }
    let e = etcd.current("c").await.unwrap_err();
    assert_eq!(e.kind(), ragd_core::ErrorKind::Unavailable, "{e}");
    for ep in &order {
        assert!(e.to_string().contains(ep.as_str()), "{e}");
    }
}

fn publish_four(store: &GenerationStore, data: &std::path::Path) -> Vec<(GenerationId, String)> {
    let settings = CollectionSettings {
        dim: 4,
        ..CollectionSettings::default()
    };
    let c = Collection::create(data, "c", &settings).unwrap();
    let rt = tokio::runtime::Handle::current();
    let mut out = Vec::new();
    for i in 0..4u64 {
        let text = format!("document {i}");
        c.write(vec![DocWrite::Upsert {
            doc: DocumentInput {
                id: format!("d{i}"),
                source: String::new(),
                title: String::new(),
                text: text.clone(),
                metadata: Metadata::new(),
            },
            chunks: vec![ChunkSpan {
                start: 0,
                end: text.len(),
                tokens: 2,
                text,
            }],
            vectors: vec![vec![0.5, 0.5, 0.5, 0.5 + i as f32 * 0.01]],
            force: false,
        }])
        .unwrap();
        let stage = tempfile::tempdir().unwrap();
        let snap = c.snapshot(&stage.path().join("c")).unwrap();
        let r = tokio::task::block_in_place(|| {
            rt.block_on(store.publish("c", &stage.path().join("c"), &snap))
        })
        .unwrap();
        out.push((r.id, r.digest));
    }
    out
}

/// After a publish, the writer points at the new generation and deletes the published ones
/// older than the newest `keep` — except one that a live replica's lease-bound key says it
/// still serves; once that lease expires, the next pass deletes it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_generations_go_once_no_live_replica_serves_them() {
    let cluster = EtcdCluster::start(1);
    let etcd = Etcd::new(&cluster.endpoints(), "/ragd-test").unwrap();
    let (bucket, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store =
        GenerationStore::open(bucket.path().to_str().unwrap(), &Default::default()).unwrap();
    let gens = publish_four(&store, data.path());
    let ids: Vec<GenerationId> = gens.iter().map(|(id, _)| *id).collect();
    assert_eq!(store.list("c").await.unwrap(), ids);

    let lease = etcd.grant(2).await.unwrap();
    etcd.register("c", "replica-a", lease, ids[0])
        .await
        .unwrap();
    assert_eq!(
        etcd.serving("c").await.unwrap(),
        vec![("replica-a".to_string(), ids[0])]
    );
    let newest = Pointer {
        id: ids[3],
        digest: gens[3].1.clone(),
    };
    let r = point_and_prune(&etcd, &store, "c", &newest, 2)
        .await
        .unwrap();
    assert!(r.flipped && r.previous.is_none(), "{r:?}");
    assert_eq!(
        (r.deleted.clone(), r.kept_in_use.clone()),
        (vec![ids[1]], vec![ids[0]])
    );
    assert_eq!(store.list("c").await.unwrap(), vec![ids[0], ids[2], ids[3]]);
    assert!(
        !bucket
            .path()
            .join(format!("collections/c/gen/{}", ids[1]))
            .join("docstore.redb")
            .exists()
    );
    // Pointing at an older generation never moves the pointer back.
    let older = Pointer {
        id: ids[2],
        digest: gens[2].1.clone(),
    };
    let r = point_and_prune(&etcd, &store, "c", &older, 2)
        .await
        .unwrap();
    assert!(!r.flipped && r.previous == Some(ids[3]), "{r:?}");
    assert_eq!(etcd.current("c").await.unwrap().unwrap().pointer, newest);

    // The replica stops renewing its lease: its key goes, and with it the generation.
    let until = Instant::now() + Duration::from_secs(15);
    while !etcd.serving("c").await.unwrap().is_empty() {
        assert!(
            Instant::now() < until,
            "the lease did not expire within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!etcd.keep_alive(lease).await.unwrap());
    let r = point_and_prune(&etcd, &store, "c", &newest, 2)
        .await
        .unwrap();
    assert_eq!(r.deleted, vec![ids[0]], "{r:?}");
    assert_eq!(store.list("c").await.unwrap(), vec![ids[2], ids[3]]);
    // A kept-alive lease keeps its key.
    let live = etcd.grant(2).await.unwrap();
    etcd.register("c", "replica-b", live, ids[2]).await.unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(etcd.keep_alive(live).await.unwrap());
    }
    assert_eq!(
        etcd.serving("c").await.unwrap(),
        vec![("replica-b".to_string(), ids[2])]
    );
}

/// A replica's wait for the pointers: a pointer moved after the revision it read wakes it at once
/// (also one moved before the wait began); a replica key coming and going does not; with no
/// change it returns at the end of its wait; with every member gone it is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_wakes_on_pointer_moves_only() {
    let mut cluster = EtcdCluster::start(1);
    let etcd = Etcd::new(&cluster.endpoints(), "/ragd-watch").unwrap();
    assert!(etcd.flip("c", None, &pointer(1, 1)).await.unwrap());
    let rev = etcd.revision().await.unwrap();
    let t0 = Instant::now();
    assert!(
        !etcd
            .changed_since(rev, Duration::from_millis(600))
            .await
            .unwrap()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t0.elapsed()
    );
    // A replica registering is not a pointer moving.
    let lease = etcd.grant(10).await.unwrap();
    etcd.register("c", "r1", lease, id(1, 1)).await.unwrap();
    assert!(
        !etcd
            .changed_since(rev, Duration::from_millis(400))
            .await
            .unwrap()
    );
    // A flip while the wait runs wakes it well before its end.
    let waiter = {
        let etcd = etcd.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let changed = etcd.changed_since(rev, Duration::from_secs(20)).await;
            (changed, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cur = etcd.current("c").await.unwrap().unwrap();
    assert!(
        etcd.flip("c", Some(cur.mod_revision), &pointer(1, 2))
            .await
            .unwrap()
    );
    let (changed, took) = waiter.await.unwrap();
    assert!(changed.unwrap());
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A move made before the wait began (after the revision read) counts at once.
    let t1 = Instant::now();
    assert!(
        etcd.changed_since(rev, Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    cluster.kill(0);
    assert!(
        etcd.changed_since(rev, Duration::from_secs(2))
            .await
            .is_err()
    );
}
