//! Publishing generations to a local-directory object store and fetching them back: what is
//! fetched opens as the collection was, an id is never written twice, an interrupted upload is
//! invisible, and any altered, missing or extra byte is refused with nothing left behind.
//! (The same code against a real S3 endpoint, SeaweedFS: `tests/publish.rs` at the workspace
//! root.)
#![allow(clippy::unwrap_used)]

use ragd_cluster::{Error, GenerationId, GenerationStore};
use ragd_core::{ChunkSpan, DocumentInput, Metadata};
use ragd_store::{Collection, CollectionSettings, DocWrite};
use std::collections::BTreeMap;
use std::path::Path;

const DIM: usize = 8;

fn doc(i: u64) -> DocWrite {
    let text = format!("word{i} common text");
    let mut v: Vec<f32> = (0..DIM)
        .map(|d| ((i as f32 + 1.0) * 0.618 * (d as f32 + 1.0)).sin() + 1.5)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    DocWrite::Upsert {
        doc: DocumentInput {
            id: format!("d{i}"),
            source: format!("d{i}.txt"),
            title: format!("title {i}"),
            text: text.clone(),
            metadata: Metadata::new(),
        },
        chunks: vec![ChunkSpan {
            start: 0,
            end: text.len(),
            tokens: 4,
            text,
        }],
        vectors: vec![v],
        force: false,
    }
}

fn collection(dir: &Path, n: u64) -> Collection {
    let settings = CollectionSettings {
        dim: DIM,
        ..CollectionSettings::default()
    };
    let c = Collection::create(dir, "c", &settings).unwrap();
    c.write((0..n).map(doc).collect()).unwrap();
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn store(dir: &Path) -> GenerationStore {
    GenerationStore::open(dir.to_str().unwrap(), &BTreeMap::new()).unwrap()
}

/// Publishes the collection's current state; returns its id.
fn publish(rt: &tokio::runtime::Runtime, s: &GenerationStore, c: &Collection) -> GenerationId {
    let stage = tempfile::tempdir().unwrap();
    let snap = c.snapshot(&stage.path().join("c")).unwrap();
    let r = rt
        .block_on(s.publish("c", &stage.path().join("c"), &snap))
        .unwrap();
    assert!(!r.already_published);
    assert_eq!(r.uploaded_bytes, r.bytes);
    assert_eq!(r.files, snap.files.len());
    r.id
}

/// A collection of `n` documents, a store in a directory, and a directory to fetch into.
struct Setup {
    rt: tokio::runtime::Runtime,
    store: GenerationStore,
    collection: Collection,
    bucket: tempfile::TempDir,
    out: tempfile::TempDir,
    _data: tempfile::TempDir,
}

fn setup(n: u64) -> Setup {
    let (data, bucket) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    Setup {
        rt: rt(),
        store: store(bucket.path()),
        collection: collection(data.path(), n),
        bucket,
        out: tempfile::tempdir().unwrap(),
        _data: data,
    }
}

#[test]
fn a_published_generation_fetches_and_opens_as_the_collection_was() {
    let t = setup(30);
    let (rt, s, c, out) = (&t.rt, &t.store, &t.collection, &t.out);
    let first = publish(rt, s, c);
    // Writes go on; the next publish is a new id, the first stays as it was.
    c.write((30..45).map(doc).collect()).unwrap();
    c.write(vec![DocWrite::Delete { id: "d3".into() }]).unwrap();
    let second = publish(rt, s, c);
    assert!(second > first);
    assert_eq!(rt.block_on(s.list("c")).unwrap(), vec![first, second]);
    assert_eq!(rt.block_on(s.latest("c")).unwrap(), second);

    // Publishing the same state again writes nothing.
    let stage = tempfile::tempdir().unwrap();
    let snap = c.snapshot(&stage.path().join("c")).unwrap();
    let again = rt
        .block_on(s.publish("c", &stage.path().join("c"), &snap))
        .unwrap();
    assert!(again.already_published);
    assert_eq!((again.id, again.uploaded_bytes), (second, 0));

    for (id, docs) in [(first, 30), (second, 44)] {
        let dest = out.path().join(id.to_string());
        std::fs::create_dir(&dest).unwrap();
        let f = rt
            .block_on(s.fetch("c", id, None, &dest.join("c")))
            .unwrap();
        assert_eq!(f.manifest.documents, docs);
        assert_eq!(f.bytes, f.manifest.bytes());
        let copy = Collection::open(&dest, "c").unwrap();
        assert_eq!(copy.recovery().replayed, 0);
        assert!(!copy.recovery().rebuilt);
        copy.verify().unwrap();
        assert_eq!(copy.counts().unwrap().documents, docs);
        assert_eq!(copy.counts().unwrap().seq, id.seq);
        let top = copy.search_lexical("word12", 1).unwrap();
        assert_eq!(copy.chunks(&[top[0].chunk]).unwrap()[0].1.doc_id, "d12");
        // The digest names the exact manifest: a wrong one is refused before any download.
        let other = out.path().join(format!("{id}-wrong"));
        let e = rt
            .block_on(s.fetch("c", id, Some(&"0".repeat(64)), &other))
            .unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(!other.exists());
        let again = rt
            .block_on(s.fetch(
                "c",
                id,
                Some(&f.digest),
                &out.path().join(format!("{id}-again")),
            ))
            .unwrap();
        assert_eq!(again.digest, f.digest);
    }
    let e = rt
        .block_on(s.fetch(
            "c",
            "gen-9-seq-9".parse().unwrap(),
            None,
            &out.path().join("x"),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ragd_core::ErrorKind::NotFound, "{e}");
    let e = rt.block_on(s.latest("nothing")).unwrap_err();
    assert!(e.to_string().contains("ragd publish nothing --to"), "{e}");
}

/// Every file is checked: a flipped byte, a truncated file and a missing one are each refused
/// naming the object, and nothing is left at the destination. A prefix without publish.json
/// (an upload that stopped half way) is not a generation.
#[test]
fn altered_missing_or_unfinished_objects_are_refused() {
    let t = setup(20);
    let (rt, s, c, out, bucket) = (&t.rt, &t.store, &t.collection, &t.out, &t.bucket);
    let id = publish(rt, s, c);
    let prefix = bucket.path().join(format!("collections/c/gen/{id}"));
    let (m, _) = rt.block_on(s.describe("c", id)).unwrap();
    let graph = m
        .files
        .iter()
        .find(|f| f.path.ends_with(".hnsw.data"))
        .unwrap()
        .path
        .clone();
    let target = prefix.join(&graph);
    let original = std::fs::read(&target).unwrap();

    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let short = original[..original.len() - 1].to_vec();
    for (what, bytes) in [
        ("flipped", Some(flipped)),
        ("short", Some(short)),
        ("missing", None),
    ] {
        match bytes {
            Some(b) => std::fs::write(&target, b).unwrap(),
            None => std::fs::remove_file(&target).unwrap(),
        }
        let dest = out.path().join(what);
        let e = rt.block_on(s.fetch("c", id, None, &dest)).unwrap_err();
        assert!(
            e.to_string().contains(&graph) || e.to_string().contains("hnsw"),
            "{what}: {e}"
        );
        assert!(!dest.exists(), "{what}: a partial download was left");
    }
    std::fs::write(&target, &original).unwrap();
    rt.block_on(s.fetch("c", id, None, &out.path().join("ok")))
        .unwrap();

    // An unfinished upload: files without publish.json.
    c.write((20..25).map(doc).collect()).unwrap();
    let stage = tempfile::tempdir().unwrap();
    let snap = c.snapshot(&stage.path().join("c")).unwrap();
    let next = GenerationId {
        generation: snap.manifest.generation,
        seq: snap.seq,
    };
    let unfinished = bucket.path().join(format!("collections/c/gen/{next}"));
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(stage.path().join("c/CURRENT"), unfinished.join("CURRENT")).unwrap();
    assert_eq!(rt.block_on(s.list("c")).unwrap(), vec![id]);
    // Publishing it uploads everything again and completes it.
    let r = rt
        .block_on(s.publish("c", &stage.path().join("c"), &snap))
        .unwrap();
    assert!(!r.already_published);
    assert_eq!(rt.block_on(s.list("c")).unwrap(), vec![id, next]);

    // A manifest naming a path outside the destination is refused before anything is written.
    let manifest = prefix.join("publish.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"CURRENT\"", "\"../CURRENT\"")).unwrap();
    let dest = out.path().join("escape");
    let e = rt.block_on(s.fetch("c", id, None, &dest)).unwrap_err();
    assert!(
        e.to_string().contains("leaves the generation's directory"),
        "{e}"
    );
    assert!(!dest.exists() && !out.path().join("CURRENT").exists());
}

#[test]
fn bad_urls_and_options_are_refused_clearly() {
    for (url, want) in [
        ("bucket/path", "expected s3://bucket/path"),
        ("ftp://host/x", "object store URL"),
    ] {
        let e = GenerationStore::open(url, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.kind(), ragd_core::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(want), "{url}: {e}");
    }
}
