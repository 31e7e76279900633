//! `ragd ask`, `ragd quickstart` and `ragd eval answers`: grounded answers over a collection,
//! offline on the data directory.

use crate::backend::{Backend, engine, open_or_create};
use crate::flags::{DataDir, FusionFlags, ModelsDir, parse_filters};
use anyhow::{Context, Result, bail};
use clap::Args;
use ragd_engine::SamplingParams;
use ragd_engine::models::{self as registry, DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_engine::{
    Answer, AnswerConfig, AnswerKind, AnswerRequest, Answerer, Exclusion, IngestOptions, Mode,
    ScoredSentence, SearchParams, Turn,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Retrieval and generation flags shared by `ask`, `quickstart` and `eval answers`.
#[derive(Debug, Args, Clone)]
pub(crate) struct AnswerFlags {
    /// Retrieval mode: dense, lexical or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Chunks retrieved and offered to the model (at most 5 are packed by default).
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Metadata filter KEY=VALUE; repeat a key for one-of, different keys must all match.
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Only these documents; repeatable.
    #[arg(long = "doc-id")]
    doc_ids: Vec<String>,
    #[command(flatten)]
    fusion: FusionFlags,
    /// Rerank the best N fused candidates with the cross-encoder before answering (at least
    /// --top-k; 0: off).
    /// [default: the collection's `rerank` setting]
    #[arg(long)]
    rerank: Option<usize>,
    /// The cross-encoder offline: a model added with `ragd models add NAME --dir DIR` (a
    /// server reranks with its own `reranker.name`).
    #[arg(long, value_name = "NAME")]
    pub(crate) reranker: Option<String>,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = ragd_engine::DEFAULT_MAX_TOKENS)]
    max_tokens: usize,
    /// The decoder offline: a model added with `ragd models add` [default: the bundled
    /// SmolLM2-135M] (a server answers with its own `decoder.name`).
    #[arg(long, value_name = "NAME")]
    pub(crate) decoder: Option<String>,
    /// Sampling temperature, 0 to 2; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (with a temperature above 0).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed for sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop sequence; repeatable.
    #[arg(long)]
    stop: Vec<String>,
    /// Refuse without calling the decoder when no retrieved chunk is at least this similar to
    /// the question (cosine) [default: the calibrated threshold].
    #[arg(long)]
    min_relevance: Option<f32>,
    /// Most prompt tokens (sources, history and question together).
    #[arg(long, default_value_t = AnswerConfig::default().max_prompt_tokens)]
    max_prompt_tokens: usize,
    /// Also relevant: a chunk holding at least this weighted share of the question's terms
    /// (rare terms weigh more), whatever its cosine.
    #[arg(long, default_value_t = ragd_engine::DEFAULT_MIN_LEXICAL)]
    min_lexical: f32,
    /// Most bytes of a chunk given to the model (the sentences that best match the question);
    /// 0 gives whole chunks.
    #[arg(long, default_value_t = ragd_engine::DEFAULT_SOURCE_BYTES)]
    source_bytes: usize,
    /// generate (the model writes; each sentence is checked against its source) or extract
    /// (quote the best source sentence; no decoder).
    #[arg(long, default_value = "extract")]
    strategy: String,
    /// Unsupported answer sentences: drop them, or decline the whole draft.
    #[arg(long, default_value = "drop")]
    unsupported: String,
    /// Share of a sentence's own terms its source must hold.
    #[arg(long, default_value_t = ragd_engine::DEFAULT_MIN_SUPPORT)]
    min_support: f32,
    /// Question–sentence score a quoted extract needs.
    #[arg(long, default_value_t = ragd_engine::DEFAULT_MIN_EXTRACT)]
    min_extract: f32,
    /// A generated sentence must rest on one of this many source sentences that best match the
    /// question (0: on any).
    #[arg(long, default_value_t = ragd_engine::DEFAULT_ON_QUESTION)]
    on_question: usize,
    /// Search a second time with the best sentences found added to the question (for
    /// questions that name their subject through something else).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    second_hop: bool,
}

impl AnswerFlags {
    fn config(&self) -> Result<AnswerConfig> {
        let d = AnswerConfig::default();
        for (flag, v) in [
            ("--min-lexical", self.min_lexical),
            ("--min-support", self.min_support),
            ("--min-extract", self.min_extract),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{flag} must be within 0..=1, got {v}");
            }
        }
        Ok(AnswerConfig {
            max_prompt_tokens: self.max_prompt_tokens,
            max_sources: self.top_k.max(1),
            min_relevance: self.min_relevance.unwrap_or(d.min_relevance),
            min_lexical: self.min_lexical,
            source_bytes: self.source_bytes,
            strategy: self.strategy.parse()?,
            unsupported: self.unsupported.parse()?,
            min_support: self.min_support,
            min_extract: self.min_extract,
            on_question: self.on_question,
            second_hop: self.second_hop,
            ..d
        })
    }

    fn request(&self, question: &str) -> Result<AnswerRequest> {
        let mut r = AnswerRequest::new(question);
        r.search = SearchParams {
            mode: self.mode.parse::<Mode>()?,
            top_k: self.top_k,
            ef: self.fusion.ef,
            fusion: self.fusion.fusion()?,
            filter: parse_filters(&self.filters, &self.doc_ids)?,
            rerank: self.rerank,
            ..SearchParams::default()
        };
        r.max_tokens = self.max_tokens;
        if self.temperature > 0.0 || self.top_p < 1.0 || self.seed.is_some() {
            r.sampling = Some(SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                repeat_penalty: AnswerConfig::default().repeat_penalty,
                ..SamplingParams::default()
            });
        }
        r.stop = self.stop.clone();
        r.min_relevance = self.min_relevance;
        Ok(r)
    }
}

#[derive(Debug, Args)]
pub(crate) struct AskArgs {
    /// The question.
    question: String,
    /// Collection to answer from.
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    #[command(flatten)]
    flags: AnswerFlags,
    /// Earlier turns of the conversation: a JSON file holding `[{"question", "answer"}, ...]`.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Also write the prompt the decoder sees (chat template applied) to this file, e.g. for
    /// `ragd bench generate --prompt-file`.
    #[arg(long)]
    prompt_out: Option<PathBuf>,
    /// Also show every sentence of the packed sources as the quote ranks it: its score and
    /// the parts it is made of, and why it could not be quoted (with --json: "sentences").
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    remote: crate::client::ServerFlags,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct QuickstartArgs {
    /// The question to ask about the sample collection.
    #[arg(default_value = "What does a rebuild write before it switches?")]
    question: String,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AnswersArgs {
    /// Documents: a directory, a file, or a BEIR-style JSONL corpus (ingested into the
    /// collection, unchanged ones skipped).
    #[arg(long)]
    docs: PathBuf,
    /// Questions, one JSON object per line: {"id", "question", "document" (or null), "expect",
    /// optionally "passage" (the gold text, verbatim)}.
    #[arg(long)]
    questions: PathBuf,
    /// Also run the naive RAG peer (SmolLM2 through llama.cpp, MiniLM top-2, LlamaIndex's QA
    /// prompt) on the same chunks and questions; needs ../shared/peers/setup.sh.
    #[arg(long)]
    compare: bool,
    /// Collection to use (default: qa-<name of the docs directory's parent>).
    #[arg(long)]
    collection: Option<String>,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    models: ModelsDir,
    #[command(flatten)]
    flags: AnswerFlags,
    /// Only retrieve: report the refusal threshold that best separates answerable from
    /// unanswerable questions by retrieval relevance, without calling the decoder.
    #[arg(long)]
    calibrate: bool,
    /// With --calibrate: the largest share of answerable questions the threshold may refuse.
    #[arg(long, default_value_t = 0.05)]
    max_false_refusals: f64,
    /// Add to each question's outcome every packed sentence with its score parts, why it
    /// could or could not be quoted, and whether it holds an expected string (in --json).
    #[arg(long)]
    explain: bool,
    #[arg(long)]
    json: bool,
}

fn read_history(path: Option<&Path>) -> Result<Vec<Turn>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: history must be a JSON array of {{\"question\", \"answer\"}} objects",
            path.display()
        )
    })
}

pub(crate) fn ask(a: AskArgs) -> Result<()> {
    let remote = a.remote.server.is_some();
    if remote {
        a.flags.check_remote()?;
    }
    let backend = Backend::answering(
        &a.data,
        &a.models,
        &a.remote,
        a.flags.config()?,
        a.flags.decoder.as_deref(),
    )?
    .with_reranker(&a.models, a.flags.reranker.as_deref())?;
    backend.offline_only("--prompt-out", a.prompt_out.is_some())?;
    backend.offline_only("--explain", a.explain)?;
    let mut request = a.flags.request(&a.question)?;
    request.history = read_history(a.history.as_deref())?;
    if let Some(t) = a.timeout {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--timeout must be a positive number of seconds, got {t}");
        }
        request.deadline = Some(Instant::now() + Duration::from_secs_f64(t));
    }
    let mut scored = Vec::new();
    if let (true, Backend::Local(engine)) = (a.prompt_out.is_some() || a.explain, &backend) {
        let mut r = request.clone();
        r.explain = a.explain;
        let prepared = engine.prepare(&a.collection, r)?;
        if let Some(path) = &a.prompt_out {
            let text = engine.generator()?.render_chat(prepared.messages())?;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        scored = prepared.scored_sentences().to_vec();
    }
    // The question is printed once the answer starts (or is complete): a failed call prints
    // nothing on stdout.
    let question = format!("Q: {}\n", request.question.trim());
    let mut shown = a.json;
    let mut stdout = std::io::stdout();
    let answer = backend.ask(&a.collection, request, |delta| {
        if !a.json {
            if !shown {
                println!("{question}");
                shown = true;
            }
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if !shown {
        println!("{question}");
    }
    if !a.explain {
        return print_answer(answer, a.json);
    }
    if a.json {
        let mut v = serde_json::to_value(&answer)?;
        v["sentences"] = serde_json::to_value(&scored)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_answer(answer, false)?;
    print_scored(&scored);
    Ok(())
}

/// The packed sentences as the quote ranks them, one per line: score (cosine, coverage), the
/// source's marker, why it could not be quoted, and its first 100 characters.
fn print_scored(scored: &[ScoredSentence]) {
    println!("\nSentences by score (cosine, coverage):");
    for s in scored {
        let why = match s.excluded {
            None => "",
            Some(Exclusion::Names) => " [passage lacks the question's names]",
            Some(Exclusion::Kind) => " [cannot hold what is asked]",
            Some(Exclusion::Fragment) => " [fragment]",
        };
        println!(
            "  {:.3} ({:.2}, {:.2}){} [{}]{} {}",
            s.score,
            s.cosine,
            s.coverage,
            if s.paired { " paired" } else { "" },
            s.marker,
            why,
            s.text.chars().take(100).collect::<String>()
        );
    }
}

impl AnswerFlags {
    /// Refuses flags that set the answer pipeline when a server answers: its settings are the
    /// server's (`[answer]` in its configuration).
    fn check_remote(&self) -> Result<()> {
        let d = AnswerConfig::default();
        for (flag, given) in [
            (
                "--max-prompt-tokens",
                self.max_prompt_tokens != d.max_prompt_tokens,
            ),
            ("--min-lexical", self.min_lexical != d.min_lexical),
            ("--source-bytes", self.source_bytes != d.source_bytes),
            ("--strategy", self.strategy != "extract"),
            ("--unsupported", self.unsupported != "drop"),
            ("--min-support", self.min_support != d.min_support),
            ("--min-extract", self.min_extract != d.min_extract),
            ("--on-question", self.on_question != d.on_question),
            ("--second-hop", self.second_hop != d.second_hop),
        ] {
            crate::backend::offline_only(flag, given)?;
        }
        Ok(())
    }
}

fn print_answer(answer: Answer, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_sources(&answer);
    }
    Ok(())
}

fn print_sources(a: &Answer) {
    if a.finish.is_none() && a.kind == AnswerKind::Refusal {
        // Refused before generation: nothing was streamed.
        println!("{}", a.answer);
    }
    let dropped: Vec<&ragd_engine::SentenceSupport> =
        a.support.iter().filter(|s| !s.supported).collect();
    if a.unsupported_draft.is_some() && !dropped.is_empty() {
        println!(
            "\n\n[{} sentence(s) of the model's draft left out: no source supports them{}]",
            dropped.len(),
            match a.kind {
                AnswerKind::Extract => "; quoting the best source sentence instead",
                _ => "",
            }
        );
        for s in dropped {
            if s.marker.is_some() && !s.on_question {
                println!("  - {} (beside the question)", s.sentence);
            } else if s.missing.is_empty() {
                println!("  - {}", s.sentence);
            } else {
                println!(
                    "  - {} (not in the sources: {})",
                    s.sentence,
                    s.missing.join(", ")
                );
            }
        }
    }
    if a.sources.is_empty() {
        println!("\n\n(no source was relevant enough to answer from)");
    } else {
        println!("\n\nSources{}:", if a.cited { "" } else { " (none cited)" });
    }
    for s in &a.sources {
        let cited = a.citations.iter().find(|c| c.marker == s.marker);
        println!(
            "{}[{}] {} — {} (bytes {}..{})",
            if cited.is_some() { "*" } else { " " },
            s.marker,
            s.title,
            s.document_id,
            s.start,
            s.end
        );
        if let Some(c) = cited {
            println!("      \"{}\"", c.snippet);
        }
    }
    if a.dropped_markers > 0 {
        println!(
            "({} citation marker(s) pointed to no source and were dropped)",
            a.dropped_markers
        );
    }
    let u = &a.usage;
    if u.generated_tokens == 0 {
        // A quote or a refusal made without the decoder: no token figures to report.
        println!(
            "\nanswered without the decoder in {:.2} s (retrieval {:.0} ms)",
            u.total_ms / 1e3,
            u.retrieval_ms
        );
        return;
    }
    println!(
        "\n{} prompt tokens, {} generated; first token after {:.2} s (retrieval {:.0} ms); \
         {:.1} tokens/s",
        u.prompt_tokens,
        u.generated_tokens,
        u.time_to_first_token_ms / 1e3,
        u.retrieval_ms,
        u.decode_tokens_per_s
    );
}

/// The documents bundled into the binary for the quickstart: (id, Markdown text).
pub(crate) const SAMPLE_DOCUMENTS: &[(&str, &str)] = &[(
    "ragd-overview.md",
    include_str!("../../../deploy/sample/ragd-overview.md"),
)];

/// Name of the quickstart's collection.
pub(crate) const SAMPLE_COLLECTION: &str = "sample";

/// Fetches the default models when absent.
pub(crate) fn ensure_models(models: &ModelsDir) -> Result<()> {
    let dir = models.resolve();
    for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
        if !matches!(spec.verify(&dir), Ok(true)) {
            eprintln!("fetching {} into {} ...", spec.name, dir.display());
            registry::fetch(&spec, &dir)?;
        }
    }
    Ok(())
}

/// Creates (or updates) the sample collection from the bundled documents.
pub(crate) fn sample_collection(data: &DataDir, models: &ModelsDir, quiet: bool) -> Result<()> {
    let engine = engine(data, models, AnswerConfig::default());
    open_or_create(&engine, SAMPLE_COLLECTION, quiet)?;
    let docs = SAMPLE_DOCUMENTS
        .iter()
        .map(|(id, text)| {
            ragd_engine::parse_bytes(
                id,
                id,
                id,
                ragd_engine::Format::Markdown,
                text.as_bytes().to_vec(),
                usize::MAX,
            )
            .map_err(|reason| anyhow::anyhow!("sample document {id}: {reason}"))
        })
        .collect::<Result<Vec<_>>>()?;
    engine.ingest_documents(SAMPLE_COLLECTION, docs, IngestOptions::default(), &mut ())?;
    Ok(())
}

/// Builds the sample collection, starts the gRPC server on a free local port, asks the question
/// over AskStream, prints the cited answer and shuts the server down.
pub(crate) fn quickstart(a: QuickstartArgs) -> Result<()> {
    ensure_models(&a.models)?;
    // Offline ingest (unchanged documents are skipped); its encoder is released before the
    // server loads its own.
    sample_collection(&a.data, &a.models, a.json)?;
    let settings = ragd_server::Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: a.data.data_dir.clone(),
        models_dir: a.models.resolve(),
        ..ragd_server::Settings::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json = a.json;
    let fin = rt.block_on(async move {
        let bound = ragd_server::bind(settings).await?;
        let addr = bound
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("the server has no local address"))?;
        if !json {
            eprintln!("ragd server listening on {addr}; asking over gRPC");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        let asked = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .context("connecting to the server")?;
            let request = tonic::Request::new(ragd_proto::v1::AskRequest {
                collection: SAMPLE_COLLECTION.into(),
                question: a.question.clone(),
                ..Default::default()
            });
            if !json {
                println!("Q: {}\n", a.question.trim());
            }
            let mut stdout = std::io::stdout();
            crate::backend::stream_answer(channel, request, &mut |delta: &str| {
                if !json {
                    let _ = stdout.write_all(delta.as_bytes());
                    let _ = stdout.flush();
                }
            })
            .await
        }
        .await;
        let _ = stop.send(());
        server.await.context("the server task failed")??;
        asked
    })?;
    print_answer(fin.into(), json)
}

pub(crate) fn eval_answers(a: AnswersArgs) -> Result<()> {
    let items = ragd_eval::answers::load_qa(&a.questions)?;
    if items.is_empty() {
        bail!("{} holds no questions", a.questions.display());
    }
    let name = match &a.collection {
        Some(n) => n.clone(),
        None => {
            let abs = a
                .docs
                .canonicalize()
                .with_context(|| format!("documents {}", a.docs.display()))?;
            let set = abs
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "docs".into());
            format!("qa-{set}")
        }
    };
    let reranker = match a.flags.reranker.as_deref() {
        Some(r) => Some(ragd_engine::load_reranker(&a.models.resolve(), r, 16)?),
        None => None,
    };
    let engine = engine(&a.data, &a.models, a.flags.config()?)
        .with_decoder(a.flags.decoder.clone().unwrap_or_default())
        .with_reranker(reranker);
    open_or_create(&engine, &name, a.json)?;
    let report = engine.ingest_paths(
        &name,
        std::slice::from_ref(&a.docs),
        IngestOptions::default(),
        &mut (),
    )?;
    if !report.failed.is_empty() {
        bail!(
            "{} documents failed to ingest: {:?}",
            report.failed.len(),
            report.failed
        );
    }
    let searcher = engine.searcher(&name)?;
    let config = engine.answer_config();
    let mut template = a.flags.request("placeholder")?;
    template.explain = a.explain;
    let answerer = Answerer::new(&searcher, engine.generator()?, config);
    if a.calibrate {
        return calibrate(&answerer, &items, &template, a.max_false_refusals, a.json);
    }
    let report = ragd_eval::answers::evaluate_answers(
        &answerer,
        &items,
        &template,
        config.min_relevance,
        |o| {
            if !a.json {
                eprintln!(
                    "{:<5} rel {:.3} lex {:.2} {} {:<9} fact={} cite={} {:?}",
                    o.id,
                    o.top_relevance,
                    o.top_lexical,
                    if o.answerable { "ans " } else { "none" },
                    o.kind,
                    o.fact,
                    o.correct_cited,
                    o.answer.chars().take(100).collect::<String>()
                );
            }
        },
    )?;
    let peer = if a.compare {
        Some(ragd_eval::peer_answers::run(
            searcher.collection(),
            &items,
            &a.models.resolve(),
            template.max_tokens,
        )?)
    } else {
        None
    };
    if a.json {
        let v = match &peer {
            Some(p) => serde_json::json!({"ragd": report, "peer": p}),
            None => serde_json::to_value(&report)?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&report);
        if let Some(p) = &peer {
            println!("\npeer: {}", p.peer);
            println!("expected fact in answer      {:.1}%", p.fact_rate * 100.0);
            println!("answered but wrong           {:.1}%", p.wrong_rate * 100.0);
            println!(
                "gold document in its top 2   {:.1}%",
                p.retrieved_rate * 100.0
            );
            println!(
                "time to first token p50      {:.0} ms",
                p.time_to_first_token_p50_ms
            );
        }
    }
    Ok(())
}

fn calibrate(
    answerer: &Answerer<'_>,
    items: &[ragd_eval::answers::QaItem],
    template: &AnswerRequest,
    max_false_refusals: f64,
    json: bool,
) -> Result<()> {
    let mut points = Vec::with_capacity(items.len());
    for item in items {
        let (rel, lex) = ragd_eval::answers::top_relevance(answerer, template, &item.question)?;
        points.push((item.id.clone(), rel, lex, item.document.is_some()));
    }
    let dense: Vec<(f32, bool)> = points.iter().map(|p| (p.1, p.3)).collect();
    let best = ragd_eval::answers::calibrate_threshold(&dense, max_false_refusals);
    let both: Vec<(f32, f32, bool)> = points.iter().map(|p| (p.1, p.2, p.3)).collect();
    let gate = ragd_eval::answers::calibrate_gate(&both, max_false_refusals);
    if json {
        let v = serde_json::json!({
            "threshold": best.map(|b| b.0),
            "balanced_accuracy": best.map(|b| b.1),
            "gate": gate.map(|g| serde_json::json!({
                "min_relevance": g.0, "min_lexical": g.1, "balanced_accuracy": g.2
            })),
            "questions": points.iter().map(|(id, r, l, ans)| serde_json::json!({
                "id": id, "top_relevance": r, "top_lexical": l, "answerable": ans
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut sorted = points.clone();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (id, r, l, ans) in &sorted {
        println!(
            "{id:<6} cos {r:.3} lex {l:.3} {}",
            if *ans { "answerable" } else { "unanswerable" }
        );
    }
    match best {
        Some((t, acc)) => println!(
            "best cosine-only threshold {t:.3} (balanced accuracy {acc:.3} on these questions)"
        ),
        None => println!("need both answerable and unanswerable questions to calibrate"),
    }
    if let Some((td, tl, acc)) = gate {
        println!("best gate: cosine >= {td:.3} or lexical >= {tl:.3} (balanced accuracy {acc:.3})");
    }
    Ok(())
}

fn print_report(r: &ragd_eval::answers::QaReport) {
    println!(
        "{} questions ({} answerable, {} unanswerable), refusal threshold {:.2}",
        r.questions, r.answerable, r.unanswerable, r.min_relevance
    );
    println!("expected fact in answer      {:.1}%", r.fact_rate * 100.0);
    println!(
        "... and gold passage cited   {:.1}%",
        r.correct_cited_rate * 100.0
    );
    println!("answered but wrong           {:.1}%", r.wrong_rate * 100.0);
    println!(
        "answers: {} generated, {} extracts, {} refusals",
        r.generated, r.extracts, r.refusals
    );
    println!("citation precision           {:.3}", r.citation_precision);
    println!(
        "right document cited         {:.1}%",
        r.right_citation_rate * 100.0
    );
    println!(
        "only right document cited    {:.1}%",
        r.only_right_citation_rate * 100.0
    );
    println!(
        "... among answered questions {:.1}%",
        r.answered_right_citation_rate * 100.0
    );
    println!(
        "right document retrieved     {:.1}%",
        r.retrieved_rate * 100.0
    );
    println!(
        "unanswerable refused         {:.1}%",
        r.correct_refusal_rate * 100.0
    );
    println!(
        "answerable refused           {:.1}%",
        r.false_refusal_rate * 100.0
    );
    println!(
        "unanswerable answered        {:.1}%",
        r.unanswerable_answered_rate * 100.0
    );
    println!(
        "markers to sources not given {} in answers ({} in drafts); source blocks in answers {}",
        r.ungiven_markers, r.dropped_markers, r.invented_source_blocks
    );
    println!(
        "time to first token p50      {:.0} ms",
        r.time_to_first_token_p50_ms
    );
}
