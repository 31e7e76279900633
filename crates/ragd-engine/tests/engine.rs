//! The ingest pipeline with the real default encoder: chunk invariants (property test), mixed
//! formats with broken files, unchanged re-ingest, changes, deletes, rebuild with re-chunking.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ragd_engine::{
    Cancel, Chunker, IngestOptions, Ingestor, ParsedDoc, RebuildOptions, embed_text,
};
use ragd_models::registry::{self, DEFAULT_ENCODER};
use ragd_models::{Embedder, Precision};
use ragd_store::{ChunkSettings, Collection, DocWrite};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn embedder() -> &'static Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        let dir = registry::resolve_models_dir(None);
        assert!(
            DEFAULT_ENCODER.verify(&dir).unwrap_or(false),
            "{}",
            DEFAULT_ENCODER.missing(&dir)
        );
        Arc::new(Embedder::load(&DEFAULT_ENCODER.dir(&dir)).unwrap())
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

/// Twelve documents in three topics, with metadata, for the search tests.
fn search_fixture(data: &Path) -> Collection {
    let c = Collection::create(data, "s", &ragd_engine::settings_for(embedder())).unwrap();
    let topics = [
        (
            "cardiology",
            "The heart pumps blood through arteries; hypertension strains the heart muscle.",
        ),
        (
            "astronomy",
            "Stars fuse hydrogen into helium; supernovae scatter heavy elements.",
        ),
        (
            "botany",
            "Plants convert sunlight into sugar through photosynthesis in chloroplasts.",
        ),
    ];
    let docs: Vec<ParsedDoc> = (0..12)
        .map(|i| {
            let (topic, text) = topics[i % 3];
            let mut metadata = ragd_core::Metadata::new();
            metadata.insert("topic".into(), topic.into());
            metadata.insert("year".into(), (2000 + i as i64).into());
            ParsedDoc {
                doc: ragd_core::DocumentInput {
                    id: format!("{topic}-{i}"),
                    source: "fixture".into(),
                    title: format!("{topic} note {i}"),
                    text: format!("{text} Note number {i} with token uniq{i}q."),
                    metadata,
                },
                markdown: false,
            }
        })
        .collect();
    Ingestor::new(&c, embedder(), ingestor_opts())
        .unwrap()
        .ingest_documents(docs, &mut ())
        .unwrap();
    c
}

#[test]
fn search_modes_filters_and_options() {
    use ragd_engine::{Fusion, Mode, SearchParams, Searcher};
    use ragd_store::SearchFilter;
    let tmp = tempfile::tempdir().unwrap();
    let c = Arc::new(search_fixture(tmp.path()));
    let s = Searcher::new(c.clone(), embedder().clone(), 8).unwrap();
    let q = "how does the heart pump blood";
    for mode in [Mode::Dense, Mode::Lexical, Mode::Hybrid] {
        let hits = s
            .search(
                q,
                None,
                &SearchParams {
                    mode,
                    top_k: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(hits.len(), 3, "{mode:?}");
        assert!(
            hits.iter().all(|h| h.doc_id.starts_with("cardiology")),
            "{mode:?}: {hits:?}"
        );
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let h = &hits[0];
        assert_eq!(
            c.document(&h.doc_id).unwrap().unwrap().1[h.start..h.end],
            h.text
        );
        assert_eq!(h.metadata["topic"], "cardiology");
        match mode {
            Mode::Dense => assert!(h.dense_score.is_some() && h.lexical_score.is_none()),
            Mode::Lexical => assert!(h.lexical_score.is_some() && h.dense_score.is_none()),
            Mode::Hybrid => assert!(h.dense_score.is_some() && h.lexical_score.is_some()),
        }
    }
    // A filter that excludes every good match still returns a full top_k, from inside both
    // indexes, and only what it allows.
    let only_botany = SearchFilter {
        doc_ids: vec![],
        metadata: vec![("topic".into(), vec!["botany".into()])],
    };
    for mode in [Mode::Dense, Mode::Lexical, Mode::Hybrid] {
        let p = SearchParams {
            mode,
            top_k: 4,
            filter: only_botany.clone(),
            ..Default::default()
        };
        let hits = s.search("heart blood plants sunlight", None, &p).unwrap();
        assert_eq!(hits.len(), 4, "{mode:?}");
        assert!(
            hits.iter().all(|h| h.doc_id.starts_with("botany")),
            "{mode:?}"
        );
    }
    let years = SearchFilter {
        doc_ids: vec![],
        metadata: vec![
            ("year".into(), vec!["2001".into(), "2004".into()]),
            ("topic".into(), vec!["astronomy".into()]),
        ],
    };
    let hits = s
        .search(
            "stars",
            None,
            &SearchParams {
                top_k: 5,
                filter: years,
                ..Default::default()
            },
        )
        .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.contains(&"astronomy-1") && ids.contains(&"astronomy-4"),
        "{ids:?}"
    );
    let by_id = SearchFilter {
        doc_ids: vec!["botany-2".into()],
        metadata: vec![],
    };
    let hits = s
        .search(
            "heart",
            None,
            &SearchParams {
                mode: Mode::Dense,
                top_k: 5,
                filter: by_id,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(),
        ["botany-2"]
    );

    // Exact token: BM25 puts its document first; RRF fusion keeps it on top.
    let p = SearchParams {
        top_k: 1,
        fusion: Fusion::Rrf { k: 60.0 },
        ..Default::default()
    };
    assert_eq!(
        s.search("uniq7q", None, &p).unwrap()[0].doc_id,
        "astronomy-7"
    );
    // Minimum score and one hit per document.
    let hits = s
        .search(
            q,
            None,
            &SearchParams {
                mode: Mode::Dense,
                top_k: 12,
                min_score: Some(0.5),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!hits.is_empty() && hits.len() < 12 && hits.iter().all(|h| h.score >= 0.5));
    let hits = s
        .search(
            q,
            None,
            &SearchParams {
                top_k: 12,
                one_per_document: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut docs: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
    docs.sort();
    docs.dedup();
    assert_eq!(docs.len(), hits.len());
    // MMR with a low lambda spreads the top 3 over topics.
    let p = SearchParams {
        mode: Mode::Dense,
        top_k: 3,
        mmr_lambda: Some(0.2),
        ..Default::default()
    };
    let hits = s.search(q, None, &p).unwrap();
    let topics: std::collections::HashSet<&str> = hits
        .iter()
        .map(|h| h.doc_id.split('-').next().unwrap())
        .collect();
    assert!(topics.len() >= 2, "{hits:?}");
    // The query-vector cache: a repeated query is not embedded again; the oldest entry is evicted.
    let first = s.embed_query("cache me").unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &s.embed_query("cache me").unwrap()
    ));
    for i in 0..8 {
        s.embed_query(&format!("filler {i}")).unwrap();
    }
    assert!(!std::sync::Arc::ptr_eq(
        &first,
        &s.embed_query("cache me").unwrap()
    ));
    // Bad requests are refused with a message.
    let e = s.search(" ", None, &SearchParams::default()).unwrap_err();
    assert!(e.to_string().contains("empty"));
    let e = s
        .search(
            q,
            None,
            &SearchParams {
                top_k: 0,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("top_k"));
    let e = s
        .search(
            q,
            None,
            &SearchParams {
                fusion: Fusion::Convex { dense_weight: 2.0 },
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("weight"));
}

/// The optional reranking stage: the best N fused candidates are scored by the cross-encoder
/// (here the tiny random-weight BERT cross-encoder of the parity tests), hits come back in its
/// order with its logit beside the fused score; asking without a reranker, or for fewer than
/// top_k, is refused.
#[test]
fn a_search_reranks_its_best_candidates_with_the_cross_encoder() {
    use ragd_engine::{SearchParams, Searcher};
    use ragd_models::{Reranker, RerankerHandle};
    let tmp = tempfile::tempdir().unwrap();
    let c = Arc::new(search_fixture(tmp.path()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ragd-models/tests/fixtures/tiny-encoders/bert-reranker");
    let plain = Searcher::new(c.clone(), embedder().clone(), 8).unwrap();
    let q = "orbits of planets around the sun";
    let p = SearchParams {
        top_k: 5,
        rerank: Some(8),
        ..Default::default()
    };
    let e = plain.search(q, None, &p).unwrap_err();
    assert!(e.to_string().contains("no reranker"), "{e}");
    let s = Searcher::new(c.clone(), embedder().clone(), 8)
        .unwrap()
        .with_reranker(Some(RerankerHandle::load(&dir, 4).unwrap()));
    let fused = s
        .search(
            q,
            None,
            &SearchParams {
                top_k: 8,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(fused.iter().all(|h| h.rerank_score.is_none()));
    let hits = s.search(q, None, &p).unwrap();
    assert_eq!(hits.len(), 5);
    // The cross-encoder's own scores of the 8 best fused candidates, best first.
    let direct = Reranker::load(&dir).unwrap();
    let texts: Vec<&str> = fused.iter().map(|h| h.text.as_str()).collect();
    let mut want: Vec<(f32, u64)> = direct
        .score(q, &texts)
        .unwrap()
        .into_iter()
        .zip(fused.iter().map(|h| h.chunk_id))
        .collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (h, (score, chunk)) in hits.iter().zip(&want) {
        assert_eq!(h.chunk_id, *chunk, "{hits:?}");
        assert!((h.rerank_score.unwrap() - score).abs() < 1e-5);
        let before = fused.iter().find(|f| f.chunk_id == h.chunk_id).unwrap();
        assert_eq!(h.score, before.score, "the fused score is kept");
    }
    let e = s
        .search(
            q,
            None,
            &SearchParams {
                top_k: 5,
                rerank: Some(3),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("rerank"), "{e}");
}

/// Deeply nested Markdown lists (each line one level deeper) made chunking quadratic: the
/// splitter re-tokenized every candidate, and a 161 KB file took 79 s (30 s in this profile).
/// The text is tokenized once now (measured here: 161 KB in 0.08 s, 4 MB in 2.5 s); and a
/// cancelled job, or one past its deadline, stops chunking at once.
#[test]
fn nested_lists_chunk_in_bounded_time_and_chunking_stops_when_told() {
    let c = chunker(256, 64, 16);
    let nested =
        |n: usize| -> String { (0..n).map(|i| format!("{}- a\n", "  ".repeat(i))).collect() };
    let text = nested(400);
    for markdown in [true, false] {
        let t = Instant::now();
        let chunks = c.chunk("", &text, markdown).unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "161 KB of nested lists took {took:?}"
        );
        let (mut start, mut end) = (0, 0);
        for ch in &chunks {
            assert!(ch.start >= start && ch.end > end && ch.tokens <= 256);
            assert_eq!(&text[ch.start..ch.end], ch.text);
            (start, end) = (ch.start, ch.end);
        }
        assert_eq!(text[end..].trim(), "");
    }
    let cancelled = Cancel::new();
    cancelled.cancel();
    assert!(matches!(
        c.chunk_until("", &text, true, &cancelled),
        Err(ragd_engine::Error::Cancelled)
    ));
    let big = nested(2000);
    let expired = Cancel::new().child(Some(Instant::now()));
    let t = Instant::now();
    assert!(matches!(
        c.chunk_until("", &big, true, &expired),
        Err(ragd_engine::Error::DeadlineExceeded)
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// An ingest whose token is cancelled writes nothing more and says why.
#[test]
fn a_cancelled_ingest_stops_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collection::create(dir.path(), "c", &ragd_engine::settings_for(embedder())).unwrap();
    let cancel = Cancel::new();
    cancel.cancel();
    let opts = IngestOptions {
        cancel,
        ..ingestor_opts()
    };
    let docs = vec![ParsedDoc {
        doc: ragd_core::DocumentInput {
            id: "a".into(),
            source: "a.txt".into(),
            title: String::new(),
            text: "Some text about bridges.".into(),
            metadata: Default::default(),
        },
        markdown: false,
    }];
    let r = Ingestor::new(&c, embedder(), opts)
        .unwrap()
        .ingest_batch(docs);
    assert!(matches!(r, Err(ragd_engine::Error::Cancelled)), "{r:?}");
    assert_eq!(c.counts().unwrap().documents, 0);
}

fn note(id: &str, text: &str) -> ParsedDoc {
    ParsedDoc {
        doc: ragd_core::DocumentInput {
            id: id.into(),
            source: "fixture".into(),
            title: format!("note {id}"),
            text: text.into(),
            metadata: ragd_core::Metadata::new(),
        },
        markdown: false,
    }
}

/// The engine every front door uses: collections opened once, each with one searcher whose
/// query cache serves repeated queries; documents written, paged, read and deleted; limits
/// and missing things reported with their kind.
#[test]
fn the_engine_keeps_collections_open_and_caches_query_vectors() {
    use ragd_core::ErrorKind;
    use ragd_engine::{Engine, EngineConfig, Mode, SearchParams};
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::new(tmp.path()), embedder().clone(), None);
    let stats = engine
        .create("a", &engine.default_settings().unwrap())
        .unwrap();
    assert_eq!((stats.name.as_str(), stats.documents), ("a", 0));
    let again = engine
        .create("a", &engine.default_settings().unwrap())
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        engine
            .create("no/slash", &engine.default_settings().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );

    let texts = [
        "The heart pumps blood through arteries.",
        "Stars fuse hydrogen into helium.",
        "Plants turn sunlight into sugar.",
        "Glaciers carve valleys over millennia.",
        "Bees dance to point at flowers.",
    ];
    let docs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| note(&format!("d{i}"), t))
        .collect();
    let results = engine.ingest("a", docs, ingestor_opts()).unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(engine.stats("a").unwrap().documents, 5);

    // The same searcher serves every request: the second identical query is a cache hit.
    let p = SearchParams::default();
    let first = engine.search("a", "how do bees find flowers", &p).unwrap();
    assert_eq!(first.hits[0].doc_id, "d4");
    assert_eq!(first.cached_vector, Some(false));
    let second = engine.search("a", "how do bees find flowers", &p).unwrap();
    assert_eq!(second.cached_vector, Some(true));
    assert_eq!(second.hits[0].chunk_id, first.hits[0].chunk_id);
    let lexical = SearchParams {
        mode: Mode::Lexical,
        ..SearchParams::default()
    };
    assert_eq!(
        engine
            .search("a", "glaciers", &lexical)
            .unwrap()
            .cached_vector,
        None
    );
    let cache = engine.query_cache_stats("a").unwrap();
    assert_eq!((cache.hits, cache.misses), (1, 1));

    // Pages in id order, each after the last id of the one before.
    let page = engine.list_documents("a", "", 2).unwrap();
    let ids: Vec<&str> = page.documents.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["d0", "d1"]);
    assert_eq!(page.documents[0].1, "note d0");
    let last = engine.list_documents("a", "d3", 2).unwrap();
    assert_eq!(last.documents.len(), 1);
    assert!(last.next_page_token.is_empty());
    assert_eq!(page.next_page_token, "d1");
    assert_eq!(
        engine.list_documents("a", "", 1001).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    let d = engine.document("a", "d2", true).unwrap().unwrap();
    let (text, chunks) = d.text.unwrap();
    assert_eq!(text, texts[2]);
    assert!(!chunks.is_empty());
    assert!(engine.document("a", "nope", false).unwrap().is_none());

    let deleted = engine
        .delete_documents("a", vec!["d0".into(), "nope".into()])
        .unwrap();
    assert_eq!(
        (deleted.deleted, deleted.not_found),
        (vec!["d0".to_string()], vec!["nope".to_string()])
    );
    assert_eq!(
        engine.delete_documents("a", vec![]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(
        engine
            .search("a", "heart pumps blood", &p)
            .unwrap()
            .hits
            .iter()
            .all(|h| h.doc_id != "d0")
    );

    // Embedding checks its input; asking needs a decoder this engine was built without.
    assert_eq!(
        engine
            .embed(vec!["x".into()], Precision::F32)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        engine
            .embed(vec![" ".into()], Precision::F32)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let ask = engine.ask("a", ragd_engine::AnswerRequest::new("what do bees do?"));
    assert_eq!(ask.unwrap_err().kind(), ErrorKind::InvalidInput);

    let listing = engine.list().unwrap();
    assert_eq!(listing.open.len(), 1);
    assert!(listing.unavailable.is_empty());
    engine.checkpoint_all();
    engine.delete_collection("a").unwrap();
    assert_eq!(engine.stats("a").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(engine.list().unwrap().open.is_empty());
}

/// An int8 collection embeds its documents and its queries at int8 (a chunk's own embedded
/// text finds it at cosine 1, which a query embedded in f32 would not reach), keeps the setting
/// across a reopen, and a rebuild to f32 embeds every chunk again with queries following.
#[test]
fn an_int8_collection_embeds_documents_and_queries_alike() {
    use ragd_engine::{Engine, EngineConfig, Mode, Precision, SearchParams};
    let tmp = tempfile::tempdir().unwrap();
    let texts = [
        "The heart pumps blood through arteries.",
        "Stars fuse hydrogen into helium.",
        "Plants turn sunlight into sugar.",
        "Glaciers carve valleys over millennia.",
    ];
    let dense = SearchParams {
        mode: Mode::Dense,
        ..SearchParams::default()
    };
    let exact = embed_text(Some("note d3"), texts[3]);
    let top = |engine: &Engine| {
        let hits = engine.search("q", &exact, &dense).unwrap().hits;
        (hits[0].doc_id.clone(), hits[0].dense_score.unwrap())
    };
    {
        let engine = Engine::new(EngineConfig::new(tmp.path()), embedder().clone(), None);
        let mut settings = engine.default_settings().unwrap();
        settings.encoder_precision = Precision::Int8;
        engine.create("q", &settings).unwrap();
        let docs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| note(&format!("d{i}"), t))
            .collect();
        engine.ingest("q", docs, ingestor_opts()).unwrap();
        let (doc, score) = top(&engine);
        assert_eq!(doc, "d3");
        assert!(score > 0.9999, "int8 query against int8 documents: {score}");
    }
    // The two precisions give close but different vectors.
    let f32_v = embedder()
        .embed(&[exact.as_str()])
        .unwrap()
        .remove(0)
        .vector;
    let int8_v = embedder()
        .embed_with(&[exact.as_str()], Precision::Int8)
        .unwrap()
        .remove(0)
        .vector;
    let cos: f32 = f32_v.iter().zip(&int8_v).map(|(a, b)| a * b).sum();
    assert!(cos > 0.99 && cos < 0.99999, "{cos}");

    // Reopened: the setting is the collection's, not the engine's.
    let engine = Engine::new(EngineConfig::new(tmp.path()), embedder().clone(), None);
    assert_eq!(
        engine.settings("q").unwrap().encoder_precision,
        Precision::Int8
    );
    assert!(top(&engine).1 > 0.9999);
    let summary = engine
        .rebuild(
            "q",
            &RebuildOptions {
                encoder_precision: Some(Precision::F32),
                batch_documents: 2,
                ..RebuildOptions::default()
            },
            |_, _, _| {},
        )
        .unwrap();
    assert_eq!((summary.embedded, summary.reused), (summary.chunks, 0));
    assert_eq!(
        engine.settings("q").unwrap().encoder_precision,
        Precision::F32
    );
    let (doc, score) = top(&engine);
    assert_eq!(doc, "d3");
    assert!(score > 0.9999, "f32 query against f32 documents: {score}");
}

/// The real encoder, recording when each call starts and failing from call `fail_from` on.
struct Recording {
    starts: std::sync::Mutex<Vec<Instant>>,
    fail_from: usize,
}

impl ragd_models::Encode for Recording {
    fn encode_with(
        &self,
        texts: Vec<String>,
        precision: ragd_engine::Precision,
    ) -> ragd_models::Result<Vec<ragd_models::Embedding>> {
        let call = {
            let mut s = self.starts.lock().unwrap();
            s.push(Instant::now());
            s.len()
        };
        if call >= self.fail_from {
            return Err(ragd_models::Error::InvalidInput("the encoder broke".into()));
        }
        embedder().encode_with(texts, precision)
    }
    fn name(&self) -> &str {
        embedder().name()
    }
    fn dim(&self) -> usize {
        embedder().dim()
    }
    fn max_len(&self) -> usize {
        embedder().max_len()
    }
    fn token_counter(&self) -> ragd_models::TokenCounter {
        embedder().token_counter()
    }
}

/// A progress sink (it runs on the committing thread) that takes its time and notes when each
/// batch was acknowledged.
struct SlowSink(Vec<Instant>);

impl ragd_engine::ProgressSink for SlowSink {
    fn update(&mut self, _: &ragd_engine::Progress) {
        std::thread::sleep(Duration::from_millis(200));
        self.0.push(Instant::now());
    }
}

fn small_docs(n: usize) -> Vec<ParsedDoc> {
    (0..n)
        .map(|i| ParsedDoc {
            doc: ragd_core::DocumentInput {
                id: format!("d{i}"),
                source: "mem".into(),
                title: String::new(),
                text: format!("Document {i} is about topic number {i} and nothing else."),
                metadata: Default::default(),
            },
            markdown: false,
        })
        .collect()
}

#[test]
fn the_encoder_embeds_the_next_batch_while_the_last_one_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collection::create(tmp.path(), "pipe", &ragd_engine::settings_for(embedder())).unwrap();
    let enc = Recording {
        starts: Default::default(),
        fail_from: usize::MAX,
    };
    let opts = IngestOptions {
        batch_documents: 2,
        ..IngestOptions::default()
    };
    let ing = Ingestor::new(&c, &enc, opts).unwrap();
    let mut sink = SlowSink(Vec::new());
    let r = ing.ingest_documents(small_docs(10), &mut sink).unwrap();
    assert_eq!((r.added, r.chunks), (10, 10));
    let starts = enc.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 5, "one encoder call per batch of two");
    // Serially, batch 2 would be embedded only after batch 1 was acknowledged; pipelined, the
    // encoder is already done with it (and with batch 3) while batch 1's acknowledgement runs.
    assert!(starts[1] < sink.0[0] && starts[2] < sink.0[0]);
    let p = r.pipeline;
    assert!(p.encoder_waiting_for_commit > 0.3, "{p:?}");
    assert!(p.encoder_busy > 0.0 && p.encoder_busy <= 1.0, "{p:?}");
    assert!(r.phases.embed > 0.0 && r.phases.commit > 0.0);
    c.verify().unwrap();
}

#[test]
fn an_encoder_failure_stops_the_pipeline_with_its_own_error_and_keeps_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collection::create(tmp.path(), "pipe", &ragd_engine::settings_for(embedder())).unwrap();
    let enc = Recording {
        starts: Default::default(),
        fail_from: 3,
    };
    let opts = IngestOptions {
        batch_documents: 2,
        ..IngestOptions::default()
    };
    let ing = Ingestor::new(&c, &enc, opts).unwrap();
    let err = ing.ingest_documents(small_docs(40), &mut ()).unwrap_err();
    assert!(err.to_string().contains("the encoder broke"), "{err}");
    // Batches 1 and 2 were embedded before the failure and commit; nothing after them does.
    assert_eq!(c.counts().unwrap().documents, 4);
    assert!(c.document("d3").unwrap().is_some() && c.document("d4").unwrap().is_none());
    assert_eq!(
        enc.starts.lock().unwrap().len(),
        3,
        "the pipeline stopped at the failure"
    );
}

#[test]
fn an_interrupted_precision_rebuild_is_flagged_and_finishes_when_run_again() {
    use ragd_engine::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let c = Collection::create(tmp.path(), "p", &ragd_engine::settings_for(embedder())).unwrap();
    Ingestor::new(&c, embedder(), ingestor_opts())
        .unwrap()
        .ingest_documents(small_docs(6), &mut ())
        .unwrap();
    let int8 = ragd_models::AtPrecision::new(embedder().clone(), Precision::Int8);
    // Each document's chunk vector, and whether it is the int8 embedding of its text.
    let at_int8 = |c: &Collection| -> Vec<bool> {
        (0..6)
            .map(|i| {
                let (rec, _) = c.document(&format!("d{i}")).unwrap().unwrap();
                let (_, chunk) = c.chunks(&rec.chunks).unwrap().remove(0);
                let stored = c.vectors(&rec.chunks).unwrap().remove(0).1;
                let text = embed_text(None, &chunk.span.text);
                let fresh = embedder()
                    .embed_with(&[text.as_str()], Precision::Int8)
                    .unwrap()
                    .remove(0)
                    .vector;
                stored.iter().zip(&fresh).map(|(a, b)| a * b).sum::<f32>() > 0.99999
            })
            .collect()
    };
    let cancel = ragd_engine::Cancel::new();
    let opts = RebuildOptions {
        encoder_precision: Some(Precision::Int8),
        batch_documents: 2,
        cancel: cancel.clone(),
        ..RebuildOptions::default()
    };
    // Stopped after the first batch of two documents, as a crash between batches would.
    let stopped = ragd_engine::rebuild(&c, Some(&int8), &opts, |_, done, _| {
        if done >= 2 {
            cancel.cancel();
        }
    });
    assert!(stopped.is_err());
    drop(c);
    let c = Collection::open(tmp.path(), "p").unwrap();
    c.verify().unwrap();
    let s = c.settings().unwrap();
    assert_eq!(s.encoder_precision, Precision::Int8);
    assert!(s.reembedding, "the interruption is on record");
    assert_eq!(at_int8(&c), [true, true, false, false, false, false]);

    let opts = RebuildOptions {
        encoder_precision: Some(Precision::Int8),
        batch_documents: 2,
        ..RebuildOptions::default()
    };
    let done = ragd_engine::rebuild(&c, Some(&int8), &opts, |_, _, _| {}).unwrap();
    assert_eq!(done.embedded, 6);
    assert!(!c.settings().unwrap().reembedding);
    assert_eq!(at_int8(&c), [true; 6]);
    c.verify().unwrap();
}

/// A read replica's engine: nothing served until a published copy is installed; every write
/// refused as FAILED_PRECONDITION naming the writer; a newer copy swapped in while a request
/// still holds the old one, whose files go only once it lets go.
#[test]
fn a_replica_swaps_published_copies_in_and_removes_replaced_ones_once_unused() {
    use ragd_core::ErrorKind;
    use ragd_engine::cluster::GenerationId;
    use ragd_engine::{Engine, EngineConfig, Role, SearchParams, Served};
    let w = tempfile::tempdir().unwrap();
    let writer = Engine::new(EngineConfig::new(w.path()), embedder().clone(), None);
    writer
        .create("a", &writer.default_settings().unwrap())
        .unwrap();
    writer
        .ingest(
            "a",
            vec![note("d0", "Bees dance to point at flowers.")],
            ingestor_opts(),
        )
        .unwrap();
    let r = tempfile::tempdir().unwrap();
    let replica = Engine::new(EngineConfig::new(r.path()), embedder().clone(), None).with_role(
        Role::Replica {
            writer: "writer.example:50051".into(),
        },
    );
    let p = SearchParams::default();
    assert_eq!(
        replica.search("a", "bees", &p).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let settings = writer.default_settings().unwrap();
    let refusals = [
        replica.create("b", &settings).unwrap_err(),
        replica
            .ingest("a", vec![note("x", "text")], ingestor_opts())
            .unwrap_err(),
        replica
            .delete_documents("a", vec!["d0".into()])
            .unwrap_err(),
        replica.delete_collection("a").unwrap_err(),
        replica
            .rebuild("a", &RebuildOptions::default(), |_, _, _| {})
            .unwrap_err(),
    ];
    for e in refusals {
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(e.to_string().contains("writer.example:50051"), "{e}");
    }

    // A published copy of the writer's collection, staged in the replica's data directory.
    let stage = || {
        let staging = replica.restore_staging().unwrap();
        let snap = writer
            .collection("a")
            .unwrap()
            .snapshot(&staging.path().join("a"))
            .unwrap();
        let id = GenerationId {
            generation: snap.manifest.generation,
            seq: snap.seq,
        };
        (staging, id)
    };
    let (staging, first) = stage();
    let first_dir = staging.path().to_path_buf();
    replica.serve_published("a", staging, first).unwrap();
    let found = replica.search("a", "how do bees find flowers", &p).unwrap();
    assert_eq!(found.hits[0].doc_id, "d0");
    assert_eq!(found.published, Some(first));
    assert_eq!(
        writer.search("a", "bees", &p).unwrap().published,
        None,
        "the writer serves no published copy"
    );
    let held = replica.searcher("a").unwrap();

    writer
        .ingest(
            "a",
            vec![note("d1", "Glaciers carve valleys over millennia.")],
            ingestor_opts(),
        )
        .unwrap();
    let (staging, second) = stage();
    assert!(second > first, "{second} after {first}");
    replica.serve_published("a", staging, second).unwrap();
    let found = replica.search("a", "what carves valleys", &p).unwrap();
    assert_eq!(found.hits[0].doc_id, "d1");
    assert_eq!(found.published, Some(second));
    assert_eq!(
        replica.served(),
        [Served {
            collection: "a".into(),
            id: second
        }]
    );
    let names: Vec<String> = replica
        .list()
        .unwrap()
        .open
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a"]);

    // The request that held the first copy still searches it; its files go after it lets go.
    assert_eq!(held.published(), Some(first));
    assert_eq!(held.collection().counts().unwrap().documents, 1);
    assert!(first_dir.exists());
    assert_eq!(replica.sweep_retired(), 1);
    drop(held);
    assert_eq!(replica.sweep_retired(), 0);
    assert!(!first_dir.exists());

    // A writer does not serve published copies (it restores them).
    let staging = writer.restore_staging().unwrap();
    assert_eq!(
        writer
            .serve_published("a", staging, second)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

/// A collection's own `rerank` setting: searches (and so answers) that do not say rerank that
/// many fused candidates (raised to `top_k`); `Some(0)` turns it off for one search; without a
/// reranker loaded the collection is searched as if unset; the setting is validated at create.
#[test]
fn a_collection_reranks_by_default_when_it_says_so() {
    use ragd_core::ErrorKind;
    use ragd_engine::{Engine, EngineConfig, SearchParams};
    use ragd_models::RerankerHandle;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ragd-models/tests/fixtures/tiny-encoders/bert-reranker");
    let tmp = tempfile::tempdir().unwrap();
    let plain = Engine::new(EngineConfig::new(tmp.path()), embedder().clone(), None);
    let mut settings = plain.default_settings().unwrap();
    settings.rerank = 201;
    assert_eq!(
        plain.create("r", &settings).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    settings.rerank = 4;
    plain.create("r", &settings).unwrap();
    let docs = [
        "The heart pumps blood through arteries.",
        "Stars fuse hydrogen into helium.",
        "Plants turn sunlight into sugar.",
        "Glaciers carve valleys over millennia.",
        "Bees dance to point at flowers.",
        "Rivers carry silt to the sea.",
    ];
    let docs = docs
        .iter()
        .enumerate()
        .map(|(i, t)| note(&format!("d{i}"), t))
        .collect();
    plain.ingest("r", docs, ingestor_opts()).unwrap();
    let p = |top_k: usize, rerank: Option<usize>| SearchParams {
        top_k,
        rerank,
        ..Default::default()
    };
    let q = "what do bees do";
    // No reranker loaded: searched as if the setting were unset.
    let hits = plain.search("r", q, &p(3, None)).unwrap().hits;
    assert!(hits.iter().all(|h| h.rerank_score.is_none()), "{hits:?}");
    assert_eq!(plain.stats("r").unwrap().settings.rerank, 4);
    drop(plain);

    let engine = Engine::new(EngineConfig::new(tmp.path()), embedder().clone(), None)
        .with_reranker(Some(RerankerHandle::load(&dir, 4).unwrap()));
    let hits = engine.search("r", q, &p(3, None)).unwrap().hits;
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.rerank_score.is_some()), "{hits:?}");
    // Raised to top_k: five hits, all reranked.
    let hits = engine.search("r", q, &p(5, None)).unwrap().hits;
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.rerank_score.is_some()), "{hits:?}");
    let hits = engine.search("r", q, &p(3, Some(0))).unwrap().hits;
    assert!(hits.iter().all(|h| h.rerank_score.is_none()), "{hits:?}");
}
