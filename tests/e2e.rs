//! End-to-end: the quickstart pipeline with both real models, from document to cited answer.
//! (The gRPC server's end-to-end tests join this crate when the service lands.)
#![allow(clippy::unwrap_used)]

use ragd_cli::DocQa;
use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};

const DOC: &str = include_str!("../deploy/sample/ragd-overview.md");

#[test]
fn answers_from_the_sample_document_and_cites_the_right_passage() {
    let dir = registry::resolve_models_dir(None);
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        assert!(spec.verify(&dir).unwrap_or(false), "{}", spec.missing(&dir));
    }
    let qa = DocQa::load(&dir).unwrap();
    let mut streamed = String::new();
    let a = qa
        .answer(
            "ragd-overview.md",
            DOC,
            "What does a rebuild write before it switches?",
            3,
            96,
            |d| streamed.push_str(d),
        )
        .unwrap();
    assert_eq!(streamed, a.answer);
    // Retrieval: the best passage is the one about rebuilding, and the answer takes its fact.
    let top = &a.sources[0];
    assert!(
        DOC[top.start..top.end].contains("## Rebuilding"),
        "top source: {:?}",
        top.snippet
    );
    assert!(
        a.answer.contains("temporary directory"),
        "answer: {:?}",
        a.answer
    );
    for m in &a.cited {
        assert!(
            a.sources.iter().any(|s| s.marker == *m),
            "cited marker {m} was not given"
        );
    }
}
