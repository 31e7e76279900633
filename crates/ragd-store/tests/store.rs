//! Collection lifecycle with synthetic vectors: create, write, checkpoint, crash-free and
//! crash-like reopen (replay), corruption detection, rebuild.
#![allow(clippy::unwrap_used)]

use ragd_core::{ChunkSpan, DocumentInput, Metadata};
use ragd_store::{Collection, CollectionSettings, DocWrite, Error, WriteOutcome};
use std::path::Path;

const DIM: usize = 8;

fn settings() -> CollectionSettings {
    CollectionSettings {
        dim: DIM,
        ..CollectionSettings::default()
    }
}

/// A document whose single chunk is its text, with a vector derived from `seed`.
fn doc(id: &str, text: &str, seed: u64) -> DocWrite {
    // Distinct for every seed (a modular pattern would repeat and make nearest neighbours tie).
    let mut v: Vec<f32> = (0..DIM)
        .map(|i| ((seed as f32 + 1.0) * 0.618 * (i as f32 + 1.0)).sin() + 1.5)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    DocWrite::Upsert {
        doc: DocumentInput {
            id: id.into(),
            source: format!("{id}.txt"),
            title: format!("title {id}"),
            text: text.into(),
            metadata: Metadata::new(),
        },
        chunks: vec![ChunkSpan {
            start: 0,
            end: text.len(),
            tokens: 4,
            text: text.into(),
        }],
        vectors: vec![v],
        force: false,
    }
}

fn docs(range: std::ops::Range<u64>) -> Vec<DocWrite> {
    range
        .map(|i| doc(&format!("d{i}"), &format!("word{i} common text"), i))
        .collect()
}

fn open(dir: &Path) -> Collection {
    Collection::open(dir, "c").unwrap()
}

/// Creates collection `c` under `dir` holding `docs(0..n)`, checkpointed and closed.
fn checkpointed(dir: &Path, n: u64) {
    let c = Collection::create(dir, "c", &settings()).unwrap();
    c.write(docs(0..n)).unwrap();
    c.checkpoint().unwrap();
}

#[test]
fn create_list_stats_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(matches!(
        Collection::open(d, "c"),
        Err(Error::CollectionNotFound(_))
    ));
    let c = Collection::create(d, "c", &settings()).unwrap();
    assert!(matches!(
        Collection::create(d, "c", &settings()),
        Err(Error::CollectionExists(_))
    ));
    assert!(matches!(
        Collection::create(d, "../x", &settings()),
        Err(Error::InvalidName { .. })
    ));
    let s = c.stats().unwrap();
    assert_eq!(
        (s.documents, s.chunks, s.tombstones, s.generation),
        (0, 0, 0, 1)
    );
    assert!(s.bytes > 0);
    // In use while open.
    assert!(matches!(Collection::delete(d, "c"), Err(Error::InUse(_))));
    drop(c);
    Collection::create(d, "b", &settings()).unwrap();
    assert_eq!(Collection::list(d).unwrap(), ["b", "c"]);
    Collection::delete(d, "c").unwrap();
    assert_eq!(Collection::list(d).unwrap(), ["b"]);
    assert!(!d.join("c").exists());
}

#[test]
fn writes_are_searchable_and_survive_reopen_with_and_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collection::create(d, "c", &settings()).unwrap();
    let w = c.write(docs(0..50)).unwrap();
    assert!(w.outcomes.iter().all(|o| *o == WriteOutcome::Added));
    c.checkpoint().unwrap();
    c.verify().unwrap();
    // Acknowledged but never checkpointed: a crash-like close.
    c.write(docs(50..80)).unwrap();
    c.write(vec![DocWrite::Delete { id: "d3".into() }]).unwrap();
    c.write(vec![doc("d4", "word4 replaced text", 999)])
        .unwrap();
    let seq = c.counts().unwrap().seq;
    drop(c);

    let c = open(d);
    assert_eq!(c.recovery().replayed, 32);
    assert!(!c.recovery().rebuilt);
    c.verify().unwrap();
    let counts = c.counts().unwrap();
    assert_eq!(
        (
            counts.documents,
            counts.chunks,
            counts.tombstones,
            counts.seq
        ),
        (79, 79, 2, seq)
    );
    // BM25 sees replayed documents, not deleted ones, and the new text of a replaced one.
    let hit = |q: &str| {
        c.search_lexical(q, 5)
            .unwrap()
            .first()
            .map(|h| c.chunks(&[h.chunk]).unwrap()[0].1.doc_id.clone())
    };
    assert_eq!(hit("word65").as_deref(), Some("d65"));
    assert_eq!(hit("word3"), None);
    assert_eq!(hit("replaced").as_deref(), Some("d4"));
    // Dense search skips tombstones: the old vector of d4 no longer matches d4's old chunk.
    let (_, v) = c.vectors(&[70]).unwrap().pop().unwrap();
    let top = c.search_dense(&v, 3, None).unwrap();
    assert_eq!(c.chunks(&[top[0].chunk]).unwrap()[0].1.doc_id, "d70");
    let old_d3 = c.vectors(&[3]).unwrap().pop().unwrap().1;
    assert!(
        c.search_dense(&old_d3, 100, Some(200))
            .unwrap()
            .iter()
            .all(|h| h.chunk != 3)
    );
    drop(c);
    // A second open replays nothing: the first one checkpointed.
    assert_eq!(open(d).recovery().replayed, 0);
}

/// A damaged derived file is detected (by the manifest's sha256, tantivy's checksums, a
/// manifest or `CURRENT` that does not parse or is gone) and the generation rebuilt from the
/// DocStore on open: nothing derived is ever a reason to refuse a collection. `verify` (what
/// `ragd collections stats --verify` runs) finds the same damage on an open collection.
#[test]
fn damaged_derived_files_are_detected_and_rebuilt_from_the_docstore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpointed(d, 20);
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&d.join("c"), saved.path());
    let restore = || {
        std::fs::remove_dir_all(d.join("c")).unwrap();
        copy_dir(saved.path(), &d.join("c"));
    };
    let flip = |p: &Path| {
        let mut b = std::fs::read(p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(p, b).unwrap();
    };
    let gen1 = d.join("c/gen-1");
    let mut bm25 = Vec::new();
    files_under(&gen1.join("bm25"), &mut bm25);
    let segment = |ext: &str| {
        bm25.iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} file in {bm25:?}"))
            .clone()
    };
    let basename = open(d).manifest().hnsw.unwrap().basename;
    type Damage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let damages: Vec<Damage<'_>> = vec![
        (
            "hnsw graph",
            Box::new(|| flip(&gen1.join(format!("{basename}.hnsw.graph")))),
        ),
        (
            "hnsw data",
            Box::new(|| flip(&gen1.join(format!("{basename}.hnsw.data")))),
        ),
        ("bm25 .idx", Box::new(|| flip(&segment("idx")))),
        ("bm25 .term", Box::new(|| flip(&segment("term")))),
        ("bm25 .store", Box::new(|| flip(&segment("store")))),
        (
            "truncated manifest",
            Box::new(|| {
                let p = gen1.join("manifest.json");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            }),
        ),
        (
            "missing CURRENT",
            Box::new(|| std::fs::remove_file(d.join("c/CURRENT")).unwrap()),
        ),
        (
            "missing generation",
            Box::new(|| std::fs::remove_dir_all(&gen1).unwrap()),
        ),
    ];
    for (what, damage) in &damages {
        restore();
        // Damage under an open collection: verify finds it (the files it can read).
        let c = open(d);
        damage();
        let e = c.verify().expect_err(what);
        assert!(
            matches!(e, Error::Corrupt { .. } | Error::Io { .. }),
            "{what}: {e}"
        );
        drop(c);
        // Opened again: rebuilt from the DocStore, complete and consistent.
        let c = open(d);
        let r = c.recovery();
        assert!(r.rebuilt && r.repaired.is_some(), "{what}: {r:?}");
        c.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.stats().unwrap().documents, 20, "{what}");
        let hit = c.search_lexical("word7", 1).unwrap()[0].chunk;
        assert_eq!(c.chunks(&[hit]).unwrap()[0].1.doc_id, "d7", "{what}");
        drop(c);
        // And the repair is durable: the next open replays nothing and rebuilds nothing.
        let c = open(d);
        assert!(!c.recovery().rebuilt, "{what}");
    }
}

#[test]
fn rebuild_switches_generation_and_drops_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collection::create(d, "c", &settings()).unwrap();
    c.write(docs(0..40)).unwrap();
    c.write(vec![
        DocWrite::Delete { id: "d1".into() },
        DocWrite::Delete { id: "d2".into() },
    ])
    .unwrap();
    c.checkpoint().unwrap();
    let before = c.stats().unwrap();
    assert_eq!((before.tombstones, before.generation), (2, 1));
    let r = c.rebuild(|_, _| {}).unwrap();
    assert_eq!(
        (r.generation, r.documents, r.chunks, r.dropped_tombstones),
        (2, 38, 38, 2)
    );
    let after = c.stats().unwrap();
    assert_eq!(
        (
            after.documents,
            after.chunks,
            after.tombstones,
            after.generation
        ),
        (38, 38, 0, 2)
    );
    c.verify().unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("c/CURRENT")).unwrap().trim(),
        "gen-2"
    );
    assert!(!d.join("c/gen-1").exists());
    // Writes after the rebuild land in the new generation and survive a reopen.
    c.write(docs(100..105)).unwrap();
    drop(c);
    let c = open(d);
    assert_eq!(c.recovery().replayed, 5);
    c.verify().unwrap();
    assert_eq!(c.stats().unwrap().generation, 2);
    assert_eq!(c.search_lexical("word102", 1).unwrap().len(), 1);
}

#[test]
fn leftovers_of_an_interrupted_rebuild_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpointed(d, 10);
    // A rebuild that died before switching CURRENT leaves a half-written directory behind.
    std::fs::create_dir_all(d.join("c/.building-2/bm25")).unwrap();
    std::fs::create_dir_all(d.join("c/gen-2")).unwrap();
    let c = open(d);
    assert_eq!(c.stats().unwrap().generation, 1);
    c.verify().unwrap();
    assert!(!d.join("c/.building-2").exists() && !d.join("c/gen-2").exists());
}

/// A write during a re-chunking rebuild (which writes the DocStore only) applies the entries the
/// rebuild left behind before its own, so the checkpoint that follows prunes nothing unapplied:
/// after a crash the indexes still match the DocStore (issue: 1548 BM25 chunks for 2088).
#[test]
fn a_write_during_a_docstore_only_phase_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collection::create(d, "c", &settings()).unwrap();
    c.write(docs(0..10)).unwrap();
    c.checkpoint().unwrap();
    // The rebuild's re-chunked documents, then a client's upsert before the rebuild switches.
    c.write_docstore_only(docs(10..20)).unwrap();
    c.write(docs(20..25)).unwrap();
    c.checkpoint().unwrap();
    c.verify().unwrap();
    assert_eq!(c.search_lexical("word15", 1).unwrap().len(), 1);
    // The process dies here (before the rebuild's switch): the reopened collection is whole
    // without needing a repair.
    drop(c);
    let c = open(d);
    assert!(!c.recovery().rebuilt);
    c.verify().unwrap();
    for i in [5, 15, 22] {
        let hits = c.search_lexical(&format!("word{i}"), 1).unwrap();
        assert_eq!(hits.len(), 1, "word{i}");
    }
}

/// Derived indexes that disagree with the DocStore on open (here: a generation restored from
/// before later, already pruned writes) are rebuilt from it, never served.
#[test]
fn indexes_that_disagree_with_the_docstore_are_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpointed(d, 10);
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&d.join("c/gen-1"), saved.path());
    let c = open(d);
    c.write(docs(10..20)).unwrap();
    c.checkpoint().unwrap();
    drop(c);
    // The old generation put back: it believes it is current but lacks ten documents, and the
    // log that held them was pruned.
    std::fs::remove_dir_all(d.join("c/gen-1")).unwrap();
    copy_dir(saved.path(), &d.join("c/gen-1"));
    let c = open(d);
    assert!(c.recovery().rebuilt);
    c.verify().unwrap();
    assert_eq!(c.search_lexical("word15", 1).unwrap().len(), 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A flipped byte anywhere in a collection (DocStore, BM25 segment files, HNSW dump, manifest)
/// never panics out of open (tantivy and redb panic on some damaged files: a panic used to
/// poison the server's lifecycle lock). Outside the DocStore it is repaired from the DocStore;
/// inside, the open is refused or the collection is intact. A collection refused can still be
/// deleted.
#[test]
fn a_damaged_file_never_panics_out_of_open_and_derived_damage_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpointed(d, 50);
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&d.join("c"), saved.path());
    let mut files = Vec::new();
    files_under(saved.path(), &mut files);
    let (mut tried, mut repaired) = (0, 0);
    for f in &files {
        let rel = f.strip_prefix(saved.path()).unwrap();
        let len = std::fs::metadata(f).unwrap().len() as usize;
        for frac in [0.1f64, 0.3, 0.5, 0.7, 0.9, 0.99] {
            if len == 0 {
                continue;
            }
            let _ = std::fs::remove_dir_all(d.join("c"));
            copy_dir(saved.path(), &d.join("c"));
            let mut b = std::fs::read(f).unwrap();
            b[((len as f64) * frac) as usize % len] ^= 0xff;
            std::fs::write(d.join("c").join(rel), &b).unwrap();
            let opened = std::panic::catch_unwind(|| Collection::open(d, "c"));
            let what = format!("a flipped byte at {frac} of {}", rel.display());
            let opened = opened.unwrap_or_else(|_| panic!("{what} panicked out of open"));
            tried += 1;
            let derived = !rel.ends_with("docstore.redb");
            match opened {
                Ok(c) => {
                    c.verify()
                        .unwrap_or_else(|e| panic!("{what}: served unverified: {e}"));
                    assert_eq!(c.stats().unwrap().documents, 50, "{what}");
                    repaired += usize::from(c.recovery().repaired.is_some());
                }
                Err(e) => {
                    assert!(!derived, "{what} was refused, not repaired: {e}");
                    Collection::delete(d, "c").unwrap();
                    assert!(!d.join("c").exists());
                }
            }
        }
    }
    assert!(
        tried >= 30 && repaired >= 10,
        "{tried} corruptions, {repaired} repaired"
    );
}

fn files_under(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// A snapshot is a collection directory that opens with nothing to replay or repair and holds
/// exactly what the collection held when it was taken, even with writes going on meanwhile (in
/// batches, so a copy that mixed two points in time would show a partial batch); its file list
/// names every file with its sha256; a destination that exists is refused and left alone.
#[test]
fn a_snapshot_opens_as_the_collection_was_at_one_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = std::sync::Arc::new(Collection::create(d, "c", &settings()).unwrap());
    c.write(docs(0..40)).unwrap();
    // Unflushed writes and a deletion: the snapshot checkpoints them first.
    c.write(vec![DocWrite::Delete { id: "d7".into() }]).unwrap();
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            for b in 0..20u64 {
                c.write(docs(100 + b * 10..110 + b * 10)).unwrap();
                if b % 5 == 4 {
                    c.checkpoint().unwrap();
                }
            }
        })
    };
    let copies = tempfile::tempdir().unwrap();
    let mut snaps = Vec::new();
    for i in 0..3 {
        snaps.push(c.snapshot(&copies.path().join(format!("s{i}"))).unwrap());
    }
    writer.join().unwrap();
    for (i, snap) in snaps.iter().enumerate() {
        let s = Collection::open(copies.path(), &format!("s{i}")).unwrap();
        assert_eq!(s.recovery().replayed, 0, "snapshot {i}");
        assert!(!s.recovery().rebuilt && s.recovery().repaired.is_none());
        s.verify().unwrap();
        let counts = s.counts().unwrap();
        assert_eq!(counts.seq, snap.seq);
        assert_eq!(snap.manifest.applied_seq, snap.seq);
        // 40 documents, one deleted, then whole batches of 10.
        assert_eq!((counts.documents - 39) % 10, 0, "snapshot {i}: {counts:?}");
        assert_eq!(counts.chunks, counts.documents);
        assert_eq!(s.search_lexical("word7", 3).unwrap().len(), 0);
        let top = s.search_lexical("word12", 1).unwrap();
        assert_eq!(s.chunks(&[top[0].chunk]).unwrap()[0].1.doc_id, "d12");
        // The file list: the DocStore, CURRENT, the manifest, both HNSW files, the BM25 index.
        let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
        let g = snap.manifest.generation;
        for want in [
            "docstore.redb".to_string(),
            "CURRENT".into(),
            format!("gen-{g}/manifest.json"),
            format!("gen-{g}/bm25/meta.json"),
        ] {
            assert!(paths.contains(&want.as_str()), "{want} not in {paths:?}");
        }
        assert!(paths.iter().any(|p| p.ends_with(".hnsw.graph")));
        assert!(!paths.iter().any(|p| p.ends_with(".lock")));
        for f in &snap.files {
            let bytes = std::fs::read(copies.path().join(format!("s{i}")).join(&f.path)).unwrap();
            assert_eq!(bytes.len() as u64, f.bytes);
        }
    }
    // The collection itself goes on: everything written is there.
    assert_eq!(c.counts().unwrap().documents, 39 + 200);
    let taken = copies.path().join("s0");
    assert!(c.snapshot(&taken).is_err());
    assert!(taken.join("docstore.redb").is_file());
}
