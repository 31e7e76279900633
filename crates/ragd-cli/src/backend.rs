//! Where a command runs: on a data directory through the engine, or on a running server over
//! gRPC (`--server URL`). Every command that does the same thing either way (collections list,
//! stats, create and delete, ingest, document delete, search, rebuild, ask) is written once over
//! [`Backend`] and prints the same domain types, so its text and `--json` output have one shape
//! whichever way it ran. (A server ingest reads the files here, on a thread feeding
//! IngestStream: `remote.rs`.)

use crate::client::{Remote, ServerFlags, status};
use crate::flags::{ChunkFlags, DataDir, ModelsDir};
use crate::output::{Bar, IngestSummary, bar};
use anyhow::{Result, bail};
use ragd_engine::{
    Answer, AnswerConfig, AnswerRequest, Answerer, ChunkSettings, CollectionStats, Deleted, Engine,
    EngineConfig, GeneratorOptions, Hit, HnswSettings, IngestOptions, MAX_DELETE_IDS, Precision,
    RebuildOptions, RebuildSummary, SearchParams,
};
use ragd_proto::v1 as pb;
use std::path::PathBuf;

/// An offline-only flag `given` with `--server`: refused rather than silently ignored.
pub(crate) fn offline_only(flag: &str, given: bool) -> Result<()> {
    if given {
        bail!("{flag} works on a data directory only, not with --server");
    }
    Ok(())
}

/// The engine over a data directory for one offline command: it loads models from the models
/// directory only when the command needs them (listing loads none; a search loads the
/// collection's own encoder; an answer the decoder too).
pub(crate) fn engine(data: &DataDir, models: &ModelsDir, answer: AnswerConfig) -> Engine {
    let config = EngineConfig {
        answer,
        ..EngineConfig::new(&data.data_dir)
    };
    Engine::offline(config, &models.resolve(), GeneratorOptions::default())
}

/// Opens collection `name`, creating it with the default settings and encoder when absent
/// (and saying so unless `quiet`).
pub(crate) fn open_or_create(engine: &Engine, name: &str, quiet: bool) -> Result<()> {
    if engine.open_or_create(name)? && !quiet {
        eprintln!(
            "creating collection {name} in {}",
            engine.data_dir().display()
        );
    }
    Ok(())
}

/// A data directory or a server.
pub(crate) enum Backend {
    /// Offline, through an engine that loads models when a command needs them.
    Local(Box<Engine>),
    /// A running server.
    Remote { client: Box<Remote> },
}

/// Every collection: those that open with their counts, and those that do not with why.
pub(crate) struct Listing {
    pub(crate) open: Vec<CollectionStats>,
    pub(crate) unavailable: Vec<(String, String)>,
}

/// HNSW flags of `collections create` (absent: the default).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HnswFlags {
    pub(crate) m: Option<usize>,
    pub(crate) ef_construction: Option<usize>,
    pub(crate) ef_search: Option<usize>,
}

impl Backend {
    /// The server when `--server` names one, else the data directory.
    pub(crate) fn new(data: &DataDir, models: &ModelsDir, server: &ServerFlags) -> Result<Self> {
        Self::answering(data, models, server, AnswerConfig::default(), None)
    }

    /// [`Backend::new`] answering with `answer` and `decoder` (added with `ragd models add`;
    /// `None`: the bundled one) offline (a server answers with its own settings).
    pub(crate) fn answering(
        data: &DataDir,
        models: &ModelsDir,
        server: &ServerFlags,
        answer: AnswerConfig,
        decoder: Option<&str>,
    ) -> Result<Self> {
        Ok(match &server.server {
            Some(spec) => Self::Remote {
                client: Box::new(Remote::connect(server, spec)?),
            },
            None => Self::Local(Box::new(
                engine(data, models, answer).with_decoder(decoder.unwrap_or_default()),
            )),
        })
    }

    /// Offline, searches that ask to rerank use cross-encoder `name` (added with `ragd models
    /// add`) from `models`; refused with a server, which reranks with its own.
    pub(crate) fn with_reranker(self, models: &ModelsDir, name: Option<&str>) -> Result<Self> {
        self.offline_only("--reranker", name.is_some())?;
        Ok(match (self, name) {
            (Self::Local(e), Some(name)) => {
                let r = ragd_engine::load_reranker(&models.resolve(), name, 16)?;
                Self::Local(Box::new(e.with_reranker(Some(r))))
            }
            (b, _) => b,
        })
    }

    /// Answers `request` from collection `name`, passing the text to `on_delta` as it streams;
    /// the request's deadline is the call's timeout on a server.
    pub(crate) fn ask(
        &self,
        name: &str,
        request: AnswerRequest,
        mut on_delta: impl FnMut(&str),
    ) -> Result<Answer> {
        match self {
            Self::Local(e) => {
                // The collection and its encoder first: a missing collection fails before the
                // decoder loads.
                let searcher = e.searcher(name)?;
                let answerer = Answerer::new(&searcher, e.generator()?, e.answer_config());
                Ok(answerer.answer_blocking(request, on_delta)?)
            }
            Self::Remote { client: r, .. } => {
                let mut call = r.request(ragd_proto::convert::ask_request(name, &request));
                if let Some(d) = request.deadline {
                    call.set_timeout(
                        d.saturating_duration_since(std::time::Instant::now())
                            .max(std::time::Duration::from_millis(1)),
                    );
                }
                let fin =
                    r.rt.block_on(stream_answer(r.channel.clone(), call, &mut on_delta))?;
                Ok(fin.into())
            }
        }
    }

    /// Ingests the files and directories `paths` into collection `name`, creating it with the
    /// defaults when absent (and saying so unless `quiet`, which also hides the progress bar).
    /// Offline the engine reads, embeds and commits; on a server the files are read here and
    /// streamed, and `options` other than the source filters are the server's business.
    pub(crate) fn ingest(
        &self,
        name: &str,
        paths: &[PathBuf],
        options: IngestOptions,
        quiet: bool,
    ) -> Result<IngestSummary> {
        match self {
            Self::Local(e) => {
                open_or_create(e, name, quiet)?;
                let mut sink = Bar(bar(quiet));
                let report = e.ingest_paths(name, paths, options, &mut sink)?;
                sink.0.finish_and_clear();
                Ok(report.into())
            }
            Self::Remote { client, .. } => {
                ensure_remote(client, name, quiet)?;
                crate::remote::ingest(client, name, paths, options.sources, quiet)
            }
        }
    }

    /// Where the collections are, for messages: `in DIR` or `on URL`.
    pub(crate) fn place(&self) -> String {
        match self {
            Self::Local(e) => format!("in {}", e.data_dir().display()),
            Self::Remote { client } => format!("on {}", client.url),
        }
    }

    /// A flag that only works on a data directory, refused with `--server` rather than ignored.
    pub(crate) fn offline_only(&self, flag: &str, given: bool) -> Result<()> {
        offline_only(flag, given && matches!(self, Self::Remote { .. }))
    }

    /// Every collection with its counts, and those that cannot be opened with why.
    pub(crate) fn list(&self) -> Result<Listing> {
        match self {
            Self::Local(e) => {
                let l = e.list()?;
                let unavailable = l
                    .unavailable
                    .into_iter()
                    .map(|(n, e)| (n, e.to_string()))
                    .collect();
                Ok(Listing {
                    open: l.open,
                    unavailable,
                })
            }
            Self::Remote { client: r, .. } => {
                let pb::ListCollectionsResponse {
                    collections,
                    unavailable,
                } =
                    r.rt.block_on(collections(r).list(r.request(pb::ListCollectionsRequest {})))
                        .map_err(status)?
                        .into_inner();
                Ok(Listing {
                    open: collections.into_iter().map(Into::into).collect(),
                    unavailable: unavailable
                        .into_iter()
                        .map(|pb::UnavailableCollection { name, reason }| (name, reason))
                        .collect(),
                })
            }
        }
    }

    /// Counts and settings of collection `name`.
    pub(crate) fn stats(&self, name: &str) -> Result<CollectionStats> {
        match self {
            Self::Local(e) => Ok(e.stats(name)?),
            Self::Remote { client: r, .. } => Ok(get(r, name).map_err(status)?.into()),
        }
    }

    /// Checks that the indexes hold exactly the DocStore's live chunks (offline only).
    pub(crate) fn verify(&self, name: &str) -> Result<()> {
        self.offline_only("--verify", true)?;
        if let Self::Local(e) = self {
            e.verify(name)?;
        }
        Ok(())
    }

    /// Creates collection `name`. Offline it embeds with `encoder`; a server embeds with its own.
    /// `precision`: the encoder's (default f32).
    pub(crate) fn create(
        &self,
        name: &str,
        encoder: &str,
        precision: Option<Precision>,
        chunk: &ChunkFlags,
        hnsw: HnswFlags,
        rerank: usize,
    ) -> Result<CollectionStats> {
        match self {
            Self::Local(e) => {
                let mut s = e.settings_with_encoder(encoder)?;
                s.encoder_precision = precision.unwrap_or_default();
                s.rerank = rerank;
                s.chunking = chunk.apply(s.chunking);
                s.hnsw = HnswSettings {
                    m: hnsw.m.unwrap_or(s.hnsw.m),
                    ef_construction: hnsw.ef_construction.unwrap_or(s.hnsw.ef_construction),
                    ef_search: hnsw.ef_search.unwrap_or(s.hnsw.ef_search),
                };
                let max_len = e.encoder_named(encoder)?.max_len();
                if s.chunking.max_tokens > max_len {
                    bail!(
                        "--chunk-max-tokens {} is more than the encoder's maximum input of {max_len} tokens",
                        s.chunking.max_tokens,
                    );
                }
                Ok(e.create(name, &s)?)
            }
            Self::Remote { client: r, .. } => {
                let hnsw = pb::HnswSettings {
                    m: hnsw.m.unwrap_or(0) as u32,
                    ef_construction: hnsw.ef_construction.unwrap_or(0) as u32,
                    ef_search: hnsw.ef_search.unwrap_or(0) as u32,
                };
                Ok(create_remote(r, name, precision, chunk, hnsw, rerank)?.into())
            }
        }
    }

    /// Deletes collection `name` and everything in it.
    pub(crate) fn delete_collection(&self, name: &str) -> Result<()> {
        match self {
            Self::Local(e) => e.delete_collection(name)?,
            Self::Remote { client: r, .. } => {
                r.rt.block_on(
                    collections(r).delete(r.request(pb::DeleteCollectionRequest {
                        name: name.to_string(),
                    })),
                )
                .map_err(status)?;
            }
        }
        Ok(())
    }

    /// Deletes documents by id (in batches of [`MAX_DELETE_IDS`]); saved before it returns.
    pub(crate) fn delete_documents(&self, name: &str, ids: &[String]) -> Result<Deleted> {
        let mut out = Deleted::default();
        for ids in ids.chunks(MAX_DELETE_IDS) {
            let d = match self {
                Self::Local(e) => e.delete_documents(name, ids.to_vec())?,
                Self::Remote { client: r, .. } => {
                    let pb::DeleteDocumentsResponse { deleted, not_found } =
                        r.rt.block_on(
                            pb::documents_client::DocumentsClient::new(r.channel.clone()).delete(
                                r.request(pb::DeleteDocumentsRequest {
                                    collection: name.to_string(),
                                    ids: ids.to_vec(),
                                }),
                            ),
                        )
                        .map_err(status)?
                        .into_inner();
                    Deleted { deleted, not_found }
                }
            };
            out.deleted.extend(d.deleted);
            out.not_found.extend(d.not_found);
        }
        if let Self::Local(e) = self {
            e.checkpoint_all();
        }
        Ok(out)
    }

    /// Searches collection `name`: the hits, the index generation searched and, from a read
    /// replica, the published generation it served.
    pub(crate) fn search(
        &self,
        name: &str,
        query: &str,
        p: &SearchParams,
    ) -> Result<(Vec<Hit>, u64, Option<String>)> {
        match self {
            Self::Local(e) => {
                let r = e.search(name, query, p)?;
                Ok((r.hits, r.generation, r.published.map(|id| id.to_string())))
            }
            Self::Remote { client: r, .. } => {
                let req = pb::SearchRequest {
                    collection: name.to_string(),
                    query: query.to_string(),
                    options: Some(p.into()),
                };
                let resp =
                    r.rt.block_on(
                        pb::search_client::SearchClient::new(r.channel.clone())
                            .search(r.request(req)),
                    )
                    .map_err(status)?
                    .into_inner();
                let published = Some(resp.published_generation).filter(|g| !g.is_empty());
                Ok((
                    resp.hits.into_iter().map(Hit::from).collect(),
                    resp.index_generation,
                    published,
                ))
            }
        }
    }

    /// Rebuilds collection `name`'s indexes (re-chunking with `chunk` over its current chunking,
    /// re-embedding when asked or at a new `precision`); `progress(phase, done, total)` as it
    /// goes.
    pub(crate) fn rebuild(
        &self,
        name: &str,
        rechunk: bool,
        reembed: bool,
        precision: Option<Precision>,
        chunk: &ChunkFlags,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<RebuildSummary> {
        match self {
            Self::Local(e) => {
                let current = e.settings(name)?;
                let opts = RebuildOptions {
                    rechunk: rechunk || chunk.any(),
                    reembed,
                    chunking: chunk.any().then(|| chunk.apply(current.chunking)),
                    encoder_precision: precision,
                    batch_documents: 64,
                    ..RebuildOptions::default()
                };
                Ok(e.rebuild(name, &opts, progress)?)
            }
            Self::Remote { client: r, .. } => {
                let chunking = if chunk.any() {
                    // Flags apply over the collection's current chunking, as offline.
                    let cur: CollectionStats = get(r, name).map_err(status)?.into();
                    Some(chunking_msg(chunk, cur.settings.chunking))
                } else {
                    None
                };
                let req = pb::RebuildRequest {
                    collection: name.to_string(),
                    rechunk: rechunk || chunk.any(),
                    reembed,
                    chunking,
                    encoder_precision: precision.map(|p| p.to_string()).unwrap_or_default(),
                };
                let done = r.rt.block_on(async {
                    let mut events = pb::admin_client::AdminClient::new(r.channel.clone())
                        .rebuild(r.request(req))
                        .await?
                        .into_inner();
                    while let Some(pb::RebuildProgress { event }) = events.message().await? {
                        match event {
                            Some(pb::rebuild_progress::Event::Progress(pb::Progress {
                                done,
                                total,
                            })) => progress("rebuild", done, total),
                            Some(pb::rebuild_progress::Event::Done(d)) => return Ok(d),
                            None => {}
                        }
                    }
                    Err(tonic::Status::internal(
                        "the rebuild stream ended without a summary",
                    ))
                });
                Ok(done.map_err(status)?.into())
            }
        }
    }
}

/// AskStream on `channel`: each delta to `on_delta` as it arrives; the final answer.
pub(crate) async fn stream_answer(
    channel: tonic::transport::Channel,
    request: tonic::Request<pb::AskRequest>,
    on_delta: &mut impl FnMut(&str),
) -> Result<pb::AskResponse> {
    let mut events = pb::answer_client::AnswerClient::new(channel)
        .ask_stream(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut fin = None;
    while let Some(pb::AskEvent { event }) = events.message().await.map_err(status)? {
        match event {
            Some(pb::ask_event::Event::Delta(pb::TokenDelta { text })) => on_delta(&text),
            Some(pb::ask_event::Event::Answer(r)) => fin = Some(r),
            Some(pb::ask_event::Event::Sources(_)) | None => {}
        }
    }
    fin.ok_or_else(|| anyhow::anyhow!("the server ended the stream without an answer"))
}

fn collections(r: &Remote) -> pb::collections_client::CollectionsClient<tonic::transport::Channel> {
    pb::collections_client::CollectionsClient::new(r.channel.clone())
}

/// Collection `name` on the server (the status kept, so callers can tell NOT_FOUND).
pub(crate) fn get(r: &Remote, name: &str) -> Result<pb::Collection, tonic::Status> {
    r.rt.block_on(collections(r).get(r.request(pb::GetCollectionRequest {
        name: name.to_string(),
    })))
    .map(tonic::Response::into_inner)
}

/// Creates collection `name` on the server.
pub(crate) fn create_remote(
    r: &Remote,
    name: &str,
    precision: Option<Precision>,
    chunk: &ChunkFlags,
    hnsw: pb::HnswSettings,
    rerank: usize,
) -> Result<pb::Collection> {
    let req = pb::CreateCollectionRequest {
        name: name.to_string(),
        chunking: chunk
            .any()
            .then(|| chunking_msg(chunk, ChunkSettings::default())),
        hnsw: (hnsw != pb::HnswSettings::default()).then_some(hnsw),
        encoder_precision: precision.map(|p| p.to_string()).unwrap_or_default(),
        rerank: u32::try_from(rerank).unwrap_or(u32::MAX),
    };
    r.rt.block_on(collections(r).create(r.request(req)))
        .map(tonic::Response::into_inner)
        .map_err(status)
}

/// Creates `name` with the server's defaults when it does not exist yet (like offline ingest).
fn ensure_remote(r: &Remote, name: &str, quiet: bool) -> Result<()> {
    match get(r, name) {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => {
            if !quiet {
                eprintln!("creating collection {name} on the server");
            }
            match create_remote(
                r,
                name,
                None,
                &ChunkFlags::default(),
                pb::HnswSettings::default(),
                0,
            ) {
                Ok(_) => Ok(()),
                // Someone else created it meanwhile: that is what we wanted.
                Err(e)
                    if e.downcast_ref::<crate::client::CallFailed>()
                        .is_some_and(|c| c.code == tonic::Code::AlreadyExists) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Err(s) => Err(status(s)),
    }
}

/// Chunking flags over `base` as the API's message; sizes the user did not give are sent as 0
/// so the server keeps its own (encoder-capped) value.
fn chunking_msg(flags: &ChunkFlags, base: ChunkSettings) -> pb::ChunkingSettings {
    let c = flags.apply(base);
    pb::ChunkingSettings {
        max_tokens: flags.chunk_max_tokens.map_or(0, |_| c.max_tokens as u32),
        min_tokens: flags.chunk_min_tokens.map_or(0, |_| c.min_tokens as u32),
        overlap_tokens: c.overlap_tokens as u32,
        title_in_embedding: c.title_in_embedding,
    }
}
