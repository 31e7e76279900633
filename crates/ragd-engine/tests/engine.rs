//! The ingest pipeline with the real default encoder: chunk invariants (property test), mixed
//! formats with broken files, unchanged re-ingest, changes, deletes, rebuild with re-chunking.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ragd_engine::{Chunker, IngestOptions, Ingestor, ParsedDoc, RebuildOptions, embed_text};
use ragd_models::Embedder;
use ragd_models::registry::{self, DEFAULT_ENCODER};
use ragd_store::{ChunkSettings, Collection, DocWrite};
use std::path::Path;
use std::sync::OnceLock;

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| {
        let dir = registry::resolve_models_dir(None);
        assert!(
            DEFAULT_ENCODER.verify(&dir).unwrap_or(false),
            "{}",
            DEFAULT_ENCODER.missing(&dir)
        );
        Embedder::load(&DEFAULT_ENCODER.dir(&dir)).unwrap()
    })
}

fn chunker(max: usize, min: usize, overlap: usize) -> Chunker {
    let e = embedder();
    let s = ChunkSettings {
        max_tokens: max,
        min_tokens: min,
        overlap_tokens: overlap,
        title_in_embedding: true,
    };
    Chunker::new(e.token_counter(), s, e.max_len()).unwrap()
}

/// Text made of words, sentences, paragraphs, Markdown headings and odd characters.
fn text_strategy() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        "[a-z]{1,12}",
        "[A-Z][a-z]{0,8}",
        "[0-9]{1,6}",
        Just("naïve".to_string()),
        Just("日本語".to_string()),
        Just("🙂".to_string()),
        Just("x".repeat(300)),
    ];
    let sep = prop_oneof![
        6 => Just(" ".to_string()),
        1 => Just(". ".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\n## Heading\n".to_string()),
        1 => Just("  \t ".to_string()),
    ];
    prop::collection::vec((word, sep), 0..400)
        .prop_map(|parts| parts.into_iter().map(|(w, s)| w + &s).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Ranges are in order, slice to the chunk text, cover every non-whitespace byte, and no
    /// chunk exceeds the encoder budget (so none is ever truncated).
    #[test]
    fn chunk_ranges_are_exact_ordered_covering_and_fit(text in text_strategy(), markdown in any::<bool>(), title in "[A-Za-z ]{0,40}") {
        let c = chunker(64, 40, 8);
        let chunks = c.chunk(&title, &text, markdown).unwrap();
        let mut covered = vec![false; text.len()];
        let mut last_start = 0;
        for ch in &chunks {
            prop_assert!(ch.start >= last_start, "starts out of order");
            last_start = ch.start;
            prop_assert_eq!(&text[ch.start..ch.end], ch.text.as_str());
            prop_assert!(ch.tokens <= 64, "chunk of {} tokens", ch.tokens);
            let counted = embedder().count_tokens(&embed_text(c.title_prefix(&title), &ch.text)).unwrap();
            prop_assert!(counted <= 64, "encoder sees {} tokens", counted);
            covered[ch.start..ch.end].iter_mut().for_each(|b| *b = true);
        }
        for (i, b) in text.bytes().enumerate() {
            prop_assert!(covered[i] || b.is_ascii_whitespace(), "byte {} ({:?}) not covered", i, b as char);
        }
    }
}

fn ingestor_opts() -> IngestOptions {
    IngestOptions {
        batch_documents: 4,
        ..IngestOptions::default()
    }
}

fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::write(dir.join("notes/hnsw.md"), "# HNSW\n\nHierarchical navigable small world graphs index vectors.\n\n## Search\n\nA greedy walk descends the layers.").unwrap();
    std::fs::write(
        dir.join("notes/bm25.txt"),
        "BM25 ranks documents by term frequency and inverse document frequency.",
    )
    .unwrap();
    std::fs::write(dir.join("page.html"), "<html><head><title>Tantivy</title></head><body><p>Tantivy is a full-text search engine library.</p></body></html>").unwrap();
    std::fs::write(dir.join("broken.txt"), [0xc3, 0x28, 0x41]).unwrap();
    std::fs::write(dir.join("empty.md"), "\n").unwrap();
    std::fs::write(dir.join("corpus.jsonl"), concat!(
        "{\"_id\":\"s1\",\"title\":\"Vitamin D\",\"text\":\"Vitamin D deficiency is linked to bone loss.\",\"metadata\":{\"year\":2019}}\n",
        "{\"_id\":\"s2\",\"title\":\"Mitochondria\",\"text\":\"Mitochondria produce ATP through oxidative phosphorylation.\"}\n",
        "{\"_id\":\"s3\",\"text\":\"\"}\n",
    )).unwrap();
}

fn top_doc(c: &Collection, query: &str) -> String {
    let v = embedder().embed(&[query]).unwrap().remove(0).vector;
    let dense = c.search_dense(&v, 1, None).unwrap();
    c.chunks(&[dense[0].chunk]).unwrap()[0].1.doc_id.clone()
}

#[test]
fn ingest_reingest_change_delete_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, corpus) = (tmp.path().join("data"), tmp.path().join("corpus"));
    write_corpus(&corpus);
    let c = Collection::create(&data, "mixed", &ragd_engine::settings_for(embedder())).unwrap();
    let ing = Ingestor::new(&c, embedder(), ingestor_opts()).unwrap();

    let r = ing
        .ingest_paths(std::slice::from_ref(&corpus), &mut ())
        .unwrap();
    assert_eq!((r.added, r.unchanged, r.replaced), (5, 0, 0), "{r:?}");
    let mut failed: Vec<String> = r
        .failed
        .iter()
        .map(|f| f.source.rsplit('/').next().unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(failed, ["broken.txt", "corpus.jsonl:3", "empty.md"]);
    assert!(r.failed.iter().any(|f| f.reason.contains("UTF-8")));
    assert!(r.chunks >= 5 && r.tokens > 0);
    c.verify().unwrap();
    assert_eq!(top_doc(&c, "what makes ATP in cells"), "s2");
    let lex = c.search_lexical("oxidative", 3).unwrap();
    assert_eq!(c.chunks(&[lex[0].chunk]).unwrap()[0].1.doc_id, "s2");
    let md_id = format!("{}/notes/hnsw.md", corpus.display());
    let (rec, text) = c.document(&md_id).unwrap().unwrap();
    assert_eq!(rec.title, "HNSW");
    for (_, ch) in c.chunks(&rec.chunks).unwrap() {
        assert_eq!(&text[ch.span.start..ch.span.end], ch.span.text);
    }

    // Unchanged: nothing embedded, nothing written.
    let seq = c.counts().unwrap().seq;
    let r = ing
        .ingest_paths(std::slice::from_ref(&corpus), &mut ())
        .unwrap();
    assert_eq!(
        (r.added, r.unchanged, r.replaced, r.tokens, r.chunks),
        (0, 5, 0, 0, 0)
    );
    assert_eq!(c.counts().unwrap().seq, seq);

    // Changed content replaces; old chunks become tombstones and stop matching.
    std::fs::write(
        corpus.join("notes/bm25.txt"),
        "Okapi BM25 saturates term frequency with k1 and normalises length with b.",
    )
    .unwrap();
    let r = ing.ingest_paths(&[corpus.join("notes")], &mut ()).unwrap();
    assert_eq!((r.added, r.unchanged, r.replaced), (0, 1, 1));
    assert!(c.search_lexical("inverse", 5).unwrap().is_empty());
    assert!(!c.search_lexical("saturates", 5).unwrap().is_empty());

    // In-memory documents, a repeated id in one run: the last one wins.
    let mk = |text: &str| ParsedDoc {
        doc: ragd_core::DocumentInput {
            id: "mem".into(),
            source: "mem".into(),
            title: String::new(),
            text: text.into(),
            metadata: Default::default(),
        },
        markdown: false,
    };
    let r = ing
        .ingest_documents(vec![mk("first version"), mk("second version")], &mut ())
        .unwrap();
    assert_eq!((r.added, r.replaced), (1, 1));
    assert_eq!(c.document("mem").unwrap().unwrap().1, "second version");

    c.write(vec![DocWrite::Delete { id: "s1".into() }]).unwrap();
    c.checkpoint().unwrap();
    c.verify().unwrap();
    let before = c.stats().unwrap();
    assert_eq!(before.documents, 5);
    assert!(before.tombstones >= 3);

    // Rebuild with new chunking: tiny chunks force a re-split and re-embedding.
    let opts = RebuildOptions {
        chunking: Some(ChunkSettings {
            max_tokens: 16,
            min_tokens: 8,
            overlap_tokens: 2,
            title_in_embedding: false,
        }),
        batch_documents: 2,
        ..RebuildOptions::default()
    };
    let s = ragd_engine::rebuild(&c, Some(embedder()), &opts, |_, _, _| {}).unwrap();
    assert_eq!((s.generation, s.documents), (2, 5));
    assert!(s.chunks > before.chunks, "{s:?} vs {before:?}");
    assert!(s.embedded > 0);
    let after = c.stats().unwrap();
    assert_eq!(
        (after.tombstones, after.generation, after.chunks),
        (0, 2, s.chunks)
    );
    assert_eq!(after.settings.chunking.max_tokens, 16);
    c.verify().unwrap();
    assert_eq!(top_doc(&c, "what makes ATP in cells"), "s2");

    // A plain rebuild reuses every vector.
    let s2 = ragd_engine::rebuild(
        &c,
        Some(embedder()),
        &RebuildOptions {
            rechunk: true,
            batch_documents: 8,
            ..Default::default()
        },
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!((s2.generation, s2.embedded, s2.reused), (3, 0, s.chunks));
}

#[test]
fn an_encoder_that_does_not_match_the_collection_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = ragd_engine::settings_for(embedder());
    s.encoder = "other-model".into();
    let c = Collection::create(tmp.path(), "x", &s).unwrap();
    let e = Ingestor::new(&c, embedder(), IngestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("other-model"), "{e}");
}
