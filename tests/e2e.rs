//! End-to-end answer quality: QA sets ingested into fresh collections, every question asked
//! through the whole pipeline (gate, sentence selection, packing, the real decoder, per-sentence
//! checks, extracts, citations), and the rates held to floors under what the default models
//! reach (BENCHMARKS.md, "Answers on documents nobody tuned for").
#![allow(clippy::unwrap_used)]

use ragd_engine::{
    AnswerConfig, AnswerRequest, Answerer, IngestOptions, Ingestor, Searcher, Strategy,
};
use ragd_eval::answers::QaReport;
use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{Embedder, Generator, GeneratorOptions};
use ragd_store::Collection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn models() -> PathBuf {
    let models = registry::resolve_models_dir(None);
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        assert!(
            spec.verify(&models).unwrap_or(false),
            "{}",
            spec.missing(&models)
        );
    }
    models
}

fn embedder() -> &'static Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| Arc::new(Embedder::load(&DEFAULT_ENCODER.dir(&models())).unwrap()))
}

fn generator() -> &'static Generator {
    static G: OnceLock<Generator> = OnceLock::new();
    G.get_or_init(|| {
        Generator::load(
            &DEFAULT_DECODER.gguf_path(&models()),
            GeneratorOptions::default(),
        )
        .unwrap()
    })
}

/// Ingests `docs` into a fresh collection and asks every question of `questions` with `config`.
fn evaluate(docs: &Path, questions: &Path, config: &AnswerConfig) -> QaReport {
    let dir = tempfile::tempdir().unwrap();
    let c = Collection::create(dir.path(), "qa", &ragd_engine::settings_for(embedder())).unwrap();
    let report = Ingestor::new(&c, embedder(), IngestOptions::default())
        .unwrap()
        .ingest_paths(&[docs.to_path_buf()], &mut ())
        .unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let items = ragd_eval::answers::load_qa(questions).unwrap();
    let searcher = Searcher::new(Arc::new(c), embedder().clone(), 64).unwrap();
    let answerer = Answerer::new(&searcher, generator(), config);
    let mut template = AnswerRequest::new("");
    template.explain = true;
    let r = ragd_eval::answers::evaluate_answers(
        &answerer,
        &items,
        &template,
        config.min_relevance,
        |o| {
            eprintln!(
                "{} rel={:.3} lex={:.3} {} fact={} cited={:?} {:?}",
                o.id, o.top_relevance, o.top_lexical, o.kind, o.fact, o.cited, o.answer
            );
        },
    )
    .unwrap();
    eprintln!(
        "{}: fact {:.3} correct-cited {:.3} wrong {:.3} unanswerable refused {:.3} false refusals \
         {:.3} precision {:.3} generated/extracts/refusals {}/{}/{}",
        questions.display(),
        r.fact_rate,
        r.correct_cited_rate,
        r.wrong_rate,
        r.correct_refusal_rate,
        r.false_refusal_rate,
        r.citation_precision,
        r.generated,
        r.extracts,
        r.refusals
    );
    // The explanation agrees with what was answered: a quote is the best sentence it lists as
    // quotable, a refusal had none scoring `min_extract`.
    if config.strategy == Strategy::Extract {
        for o in &r.outcomes {
            let best = o
                .sentences
                .iter()
                .find(|s| s.sentence.excluded.is_none())
                .map(|s| s.sentence.score);
            match o.kind.as_str() {
                "extract" => assert_eq!(o.extract_score, best, "{}", o.id),
                _ => assert!(best.is_none_or(|b| b < config.min_extract), "{}", o.id),
            }
        }
    }
    // By construction, whatever the model writes.
    assert_eq!(r.citations_to_ungiven_sources, 0);
    assert_eq!(r.ungiven_markers, 0);
    assert_eq!(r.invented_source_blocks, 0);
    assert!(
        r.citation_precision >= 0.9,
        "precision {}",
        r.citation_precision
    );
    r
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel)
}

#[test]
fn generated_answers_on_the_qa_set_meet_the_floors() {
    let config = AnswerConfig {
        strategy: Strategy::Generate,
        ..AnswerConfig::default()
    };
    let r = evaluate(&data("qa/docs"), &data("qa/questions.jsonl"), &config);
    assert_eq!((r.answerable, r.unanswerable), (30, 10));
    assert!(r.retrieved_rate >= 0.95, "retrieved {}", r.retrieved_rate);
    assert!(
        r.correct_refusal_rate >= FLOOR_GEN_REFUSED,
        "{}",
        r.correct_refusal_rate
    );
    assert!(
        r.correct_cited_rate >= FLOOR_GEN_CORRECT_CITED,
        "{}",
        r.correct_cited_rate
    );
    assert!(
        r.false_refusal_rate <= CEIL_GEN_FALSE_REFUSALS,
        "{}",
        r.false_refusal_rate
    );
}

#[test]
fn extracts_on_the_qa_set_and_an_unseen_markdown_set_meet_the_floors() {
    let config = AnswerConfig {
        strategy: Strategy::Extract,
        ..AnswerConfig::default()
    };
    let r = evaluate(&data("qa/docs"), &data("qa/questions.jsonl"), &config);
    assert!(
        r.correct_refusal_rate >= FLOOR_EXT_REFUSED,
        "{}",
        r.correct_refusal_rate
    );
    assert!(
        r.correct_cited_rate >= FLOOR_EXT_CORRECT_CITED,
        "{}",
        r.correct_cited_rate
    );
    test_split_meets_the_floors(
        "markdown",
        &config,
        FLOOR_MD_CORRECT_CITED,
        FLOOR_MD_REFUSED,
        CEIL_MD_WRONG,
    );
}

#[test]
fn extracts_on_an_unseen_scientific_set_meet_the_floors() {
    let config = AnswerConfig {
        strategy: Strategy::Extract,
        ..AnswerConfig::default()
    };
    test_split_meets_the_floors(
        "scientific",
        &config,
        FLOOR_SCI_CORRECT_CITED,
        FLOOR_SCI_REFUSED,
        CEIL_SCI_WRONG,
    );
}

#[test]
fn extracts_on_an_unseen_encyclopedic_set_meet_the_floors() {
    let config = AnswerConfig {
        strategy: Strategy::Extract,
        ..AnswerConfig::default()
    };
    test_split_meets_the_floors(
        "encyclopedic",
        &config,
        FLOOR_ENC_CORRECT_CITED,
        FLOOR_ENC_REFUSED,
        CEIL_ENC_WRONG,
    );
}

/// Evaluates the test split of `tests/data/answers/SET` (45 answerable, 15 unanswerable
/// questions) and checks its correct-and-cited and unanswerable-refused rates against their
/// floors and its wrong answers (neither refused nor right) against their ceiling.
fn test_split_meets_the_floors(
    set: &str,
    config: &AnswerConfig,
    correct_cited: f64,
    refused: f64,
    wrong: f64,
) {
    let r = evaluate(
        &data(&format!("answers/{set}/corpus.jsonl")),
        &data(&format!("answers/{set}/test.jsonl")),
        config,
    );
    assert_eq!((r.answerable, r.unanswerable), (45, 15), "{set}");
    assert!(
        r.correct_cited_rate >= correct_cited,
        "{set}: correct and cited {}",
        r.correct_cited_rate
    );
    assert!(
        r.correct_refusal_rate >= refused,
        "{set}: unanswerable refused {}",
        r.correct_refusal_rate
    );
    assert!(r.wrong_rate <= wrong, "{set}: wrong {}", r.wrong_rate);
}

// Floors under the rates measured on this machine (greedy decoding is deterministic; the
// margin absorbs floating-point differences across CPUs). Measured with the gate at 0.5 / 0.4
// before its final calibration: generate on tests/data/qa 60.0% correct and cited, 50%
// unanswerable refused, 3.3% answerable refused; extract 53.3%, 70%, 6.7%; extract on the
// markdown test split 51.1% correct and cited, 80% refused (48.9% and 86.7% with the final gate,
// BENCHMARKS.md). 2026-12-03 (BENCHMARKS.md, "What a question asks for"): extract on the
// markdown test split 57.8% correct and cited, 93.3% unanswerable refused; on the scientific test
// split 62.2% and 86.7%. 2026-12-05 (BENCHMARKS.md, "The runner-up sentence"): markdown 66.7% and
// 86.7%, scientific 64.4% and 86.7%; then 93.3% refused on scientific ("Questions that ask for a
// measure"). Later that day (BENCHMARKS.md, "Names and links"): markdown 68.9% and 93.3%,
// encyclopedic 37.8% and 80.0%; unchanged by links back (same section). 2026-12-06
// (BENCHMARKS.md, "Passages that name what the question names"): encyclopedic 40.0% and 80.0%,
// wrong 24.4% (31.1% before); markdown wrong 13.3%, scientific 15.6%.
const FLOOR_GEN_REFUSED: f64 = 0.4;
const FLOOR_GEN_CORRECT_CITED: f64 = 0.5;
const CEIL_GEN_FALSE_REFUSALS: f64 = 0.15;
const FLOOR_EXT_REFUSED: f64 = 0.6;
const FLOOR_EXT_CORRECT_CITED: f64 = 0.45;
const FLOOR_MD_CORRECT_CITED: f64 = 0.65;
const FLOOR_MD_REFUSED: f64 = 0.85;
const FLOOR_SCI_CORRECT_CITED: f64 = 0.6;
const FLOOR_SCI_REFUSED: f64 = 0.85;
const FLOOR_ENC_CORRECT_CITED: f64 = 0.35;
const FLOOR_ENC_REFUSED: f64 = 0.7;
const CEIL_MD_WRONG: f64 = 0.2;
const CEIL_SCI_WRONG: f64 = 0.2;
const CEIL_ENC_WRONG: f64 = 0.28;
