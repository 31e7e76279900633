//! The one long-lived object every front door (the gRPC server, the CLI) works through: it owns
//! the encoders, the decoder, the answer settings and the open collections, each with one
//! [`Searcher`] whose query-vector cache lives as long as the collection stays open.
//!
//! A server's engine is built with its models loaded ([`Engine::new`], [`Engine::load`]); the
//! CLI's loads them from the models directory when an operation first needs them
//! ([`Engine::offline`]: listing collections loads no model, searching loads the collection's
//! own encoder by name, asking loads the decoder).
//!
//! Every method blocks (indexes, tokenizers, the DocStore, the models' queues): a server calls
//! them from its blocking pool, never from an async worker.

use crate::answer::{AnswerConfig, AnswerRequest, AnswerStream, Answerer, Prepared};
use crate::chunk::Chunker;
use crate::error::{Error, Result};
use crate::ingest::{DocResult, IngestOptions, IngestReport, Ingestor, ProgressSink};
use crate::parse::ParsedDoc;
use crate::rebuild::{RebuildOptions, RebuildSummary};
use crate::search::{CacheStats, Hit, Mode, SearchParams, Searcher};
use ragd_models::registry::{DEFAULT_DECODER, DEFAULT_ENCODER};
use ragd_models::{
    AtPrecision, Embedder, EmbedderHandle, Embedding, Encode, Generator, GeneratorOptions,
    Precision,
};
use ragd_store::{
    ChunkRecord, Collection, CollectionSettings, CollectionStats, DocRecord, DocWrite, WriteOutcome,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

/// Most document ids one delete takes.
pub const MAX_DELETE_IDS: usize = 1024;
/// Documents per page of a listing when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most documents per page of a listing.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest text [`Engine::embed`] takes, in bytes.
pub const MAX_EMBED_TEXT_BYTES: usize = 16384;
/// Query vectors each open collection's searcher keeps.
pub const DEFAULT_QUERY_CACHE: usize = 1024;

/// What an engine is built with besides its models.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where collections live (one folder each).
    pub data_dir: PathBuf,
    /// Settings for every answer.
    pub answer: AnswerConfig,
    /// Query vectors cached per open collection.
    pub query_cache: usize,
}

impl EngineConfig {
    /// Default answer settings and cache size over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            answer: AnswerConfig::default(),
            query_cache: DEFAULT_QUERY_CACHE,
        }
    }
}

/// How [`Engine::load`] loads the default models.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Embedding requests that may wait for the encoder's thread.
    pub encoder_queue: usize,
    /// The decoder's sessions, context and queue; `None` loads no decoder.
    pub decoder: Option<GeneratorOptions>,
}

/// Every collection on disk: those that open with their counts, and those that do not with
/// the reason, each sorted by name (one damaged collection never hides the others).
#[derive(Debug, Default)]
pub struct Listing {
    /// Collections that open.
    pub open: Vec<CollectionStats>,
    /// Collections that do not, with why.
    pub unavailable: Vec<(String, Error)>,
}

/// One stored document.
#[derive(Debug)]
pub struct StoredDocument {
    /// Its id.
    pub id: String,
    /// Title, metadata, hash and chunk ids.
    pub record: DocRecord,
    /// Its text and chunks, when asked for.
    pub text: Option<(String, Vec<(u64, ChunkRecord)>)>,
}

/// One page of a collection's document ids, in id order.
#[derive(Debug, Default)]
pub struct DocumentPage {
    /// `(id, title)` of each document on the page.
    pub documents: Vec<(String, String)>,
    /// The token of the next page; empty on the last.
    pub next_page_token: String,
}

/// The result of [`Engine::delete_documents`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Ids that were deleted.
    pub deleted: Vec<String>,
    /// Ids that were not in the collection.
    pub not_found: Vec<String>,
}

/// Hits of one search and the index generation that served them.
#[derive(Debug)]
pub struct SearchResults {
    /// Best first.
    pub hits: Vec<Hit>,
    /// The generation searched.
    pub generation: u64,
    /// Whether the query's vector came from the collection's cache (`None`: lexical search,
    /// no vector).
    pub cached_vector: Option<bool>,
}

/// The engine. See the module docs.
pub struct Engine {
    config: EngineConfig,
    models: Models,
    open: RwLock<HashMap<String, Arc<Open>>>,
    /// Serialises collection creation, reopening and deletion.
    lifecycle: Mutex<()>,
}

/// One open collection and, once something searched it, its searcher.
struct Open {
    collection: Arc<Collection>,
    searcher: Mutex<Option<Arc<Searcher>>>,
}

/// The engine's models: those given, and those it may load from a models directory.
struct Models {
    /// Loaded encoders by name.
    encoders: Mutex<HashMap<String, Arc<dyn Encode>>>,
    /// The encoder new collections get.
    default_encoder: String,
    /// Where encoders and the decoder not loaded yet come from (`None`: only those given).
    dir: Option<PathBuf>,
    /// How the decoder is loaded from `dir`.
    decoder_opts: GeneratorOptions,
    generator: OnceLock<Generator>,
    /// Serialises loading.
    loading: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .field("encoder", &self.models.default_encoder)
            .field("decoder", &self.models.generator.get().map(Generator::name))
            .finish()
    }
}

impl Engine {
    /// An engine over `config.data_dir` with `encoder` (for every collection), and `generator`
    /// when it answers questions (ingest, search and rebuild need no decoder).
    pub fn new(
        config: EngineConfig,
        encoder: Arc<dyn Encode>,
        generator: Option<Generator>,
    ) -> Self {
        let default_encoder = encoder.name().to_string();
        let models = Models {
            encoders: Mutex::new(HashMap::from([(default_encoder.clone(), encoder)])),
            default_encoder,
            dir: None,
            decoder_opts: GeneratorOptions::default(),
            generator: OnceLock::new(),
            loading: Mutex::new(()),
        };
        if let Some(g) = generator {
            let _ = models.generator.set(g);
        }
        Self::with_models(config, models)
    }

    /// An engine that loads models from `models_dir` when an operation first needs them: each
    /// collection's own encoder by name, the default encoder for new collections, the default
    /// decoder (with `decoder`'s sessions and context) for answers.
    pub fn offline(config: EngineConfig, models_dir: &Path, decoder: GeneratorOptions) -> Self {
        Self::with_models(
            config,
            Models {
                encoders: Mutex::new(HashMap::new()),
                default_encoder: DEFAULT_ENCODER.name.to_string(),
                dir: Some(models_dir.to_path_buf()),
                decoder_opts: decoder,
                generator: OnceLock::new(),
                loading: Mutex::new(()),
            },
        )
    }

    fn with_models(config: EngineConfig, models: Models) -> Self {
        Self {
            config,
            models,
            open: RwLock::new(HashMap::new()),
            lifecycle: Mutex::new(()),
        }
    }

    /// An engine with the default encoder on its own thread (its queue holds
    /// `opts.encoder_queue` requests) and, when `opts.decoder` says so, the default decoder's
    /// session pool, both from `models_dir`.
    pub fn load(config: EngineConfig, models_dir: &Path, opts: &ModelOptions) -> Result<Self> {
        let specs: &[_] = if opts.decoder.is_some() {
            &[DEFAULT_ENCODER, DEFAULT_DECODER]
        } else {
            &[DEFAULT_ENCODER]
        };
        for spec in specs {
            if !spec.dir(models_dir).is_dir() {
                return Err(spec.missing(models_dir).into());
            }
        }
        let encoder = EmbedderHandle::load(&DEFAULT_ENCODER.dir(models_dir), opts.encoder_queue)?;
        let generator = opts
            .decoder
            .map(|o| Generator::load(&DEFAULT_DECODER.gguf_path(models_dir), o))
            .transpose()?;
        Ok(Self::new(config, Arc::new(encoder), generator))
    }

    /// Where collections live.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The encoder new collections get (loaded on first use by an offline engine).
    pub fn encoder(&self) -> Result<Arc<dyn Encode>> {
        self.encoder_named(&self.models.default_encoder)
    }

    /// Encoder `name`, loaded from the models directory on first use.
    pub fn encoder_named(&self, name: &str) -> Result<Arc<dyn Encode>> {
        if let Some(e) = lock(&self.models.encoders).get(name) {
            return Ok(Arc::clone(e));
        }
        let Some(dir) = &self.models.dir else {
            return Err(Error::InvalidInput(format!(
                "encoder {name:?} is not loaded (this engine runs {:?})",
                self.models.default_encoder
            )));
        };
        let _l = lock(&self.models.loading);
        if let Some(e) = lock(&self.models.encoders).get(name) {
            return Ok(Arc::clone(e));
        }
        let path = dir.join(name);
        if !path.join("config.json").is_file() {
            if name == DEFAULT_ENCODER.name {
                return Err(DEFAULT_ENCODER.missing(dir).into());
            }
            return Err(Error::InvalidInput(format!(
                "encoder {name:?} is not in the models directory {}",
                dir.display()
            )));
        }
        let e: Arc<dyn Encode> = Arc::new(Embedder::load(&path)?);
        lock(&self.models.encoders).insert(name.to_string(), Arc::clone(&e));
        Ok(e)
    }

    /// The encoder a collection with `settings` embeds with: its model, at its precision.
    pub fn encoder_for(&self, settings: &CollectionSettings) -> Result<Arc<dyn Encode>> {
        self.encoder_at(&settings.encoder, settings.encoder_precision)
    }

    /// Encoder `name` embedding at `precision`.
    pub fn encoder_at(&self, name: &str, precision: Precision) -> Result<Arc<dyn Encode>> {
        let e = self.encoder_named(name)?;
        Ok(match precision {
            Precision::F32 => e,
            p => Arc::new(AtPrecision::new(e, p)),
        })
    }

    /// The decoder (loaded from the models directory on first use by an offline engine; an
    /// error when the engine was built without one).
    pub fn generator(&self) -> Result<&Generator> {
        if let Some(g) = self.models.generator.get() {
            return Ok(g);
        }
        let Some(dir) = &self.models.dir else {
            return Err(Error::InvalidInput(
                "this engine was started without a decoder".into(),
            ));
        };
        let _l = lock(&self.models.loading);
        if let Some(g) = self.models.generator.get() {
            return Ok(g);
        }
        if !DEFAULT_DECODER.dir(dir).is_dir() {
            return Err(DEFAULT_DECODER.missing(dir).into());
        }
        let g = Generator::load(&DEFAULT_DECODER.gguf_path(dir), self.models.decoder_opts)?;
        Ok(self.models.generator.get_or_init(|| g))
    }

    /// The answer settings.
    pub fn answer_config(&self) -> &AnswerConfig {
        &self.config.answer
    }

    /// Settings a new collection gets with the default encoder.
    pub fn default_settings(&self) -> Result<CollectionSettings> {
        Ok(crate::settings_for(self.encoder()?.as_ref()))
    }

    /// Settings a new collection gets with encoder `name`.
    pub fn settings_with_encoder(&self, name: &str) -> Result<CollectionSettings> {
        Ok(crate::settings_for(self.encoder_named(name)?.as_ref()))
    }

    /// Creates collection `name` (ALREADY_EXISTS when it exists). Chunking the encoder cannot
    /// take is refused now, not at every later upsert.
    pub fn create(&self, name: &str, settings: &CollectionSettings) -> Result<CollectionStats> {
        ragd_store::validate_name(name)?;
        let encoder = self.encoder_for(settings)?;
        crate::check_encoder(settings, encoder.as_ref())?;
        Chunker::for_collection(settings, encoder.as_ref())?;
        let _l = self.lifecycle();
        let c = Arc::new(Collection::create(self.data_dir(), name, settings)?);
        let stats = c.stats()?;
        self.open_map_mut()
            .insert(name.to_string(), Arc::new(Open::new(c)));
        Ok(stats)
    }

    /// Opens collection `name`, creating it with the default settings when absent; true when
    /// this call created it.
    pub fn open_or_create(&self, name: &str) -> Result<bool> {
        match self.open(name) {
            Ok(_) => Ok(false),
            Err(Error::Store(ragd_store::Error::CollectionNotFound(_))) => {
                match self.create(name, &self.default_settings()?) {
                    Ok(_) => Ok(true),
                    // Created by another call in between.
                    Err(Error::Store(ragd_store::Error::CollectionExists(_))) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Collection `name`, opened on first use (NOT_FOUND when absent). A handle that an I/O
    /// error left unusable (a full disk) is dropped and the collection opened again, so it
    /// recovers once the cause is gone, without a restart.
    fn open(&self, name: &str) -> Result<Arc<Open>> {
        ragd_store::validate_name(name)?;
        if let Some(o) = self.open_map().get(name).cloned()
            && !o.collection.needs_reopen()
        {
            return Ok(o);
        }
        let _l = self.lifecycle();
        // A statement of its own: the read guard must be gone before the write below.
        let cached = self.open_map().get(name).cloned();
        if let Some(o) = cached {
            if !o.collection.needs_reopen() {
                return Ok(o);
            }
            tracing::info!(
                collection = name,
                "reopening the collection after an I/O error"
            );
            self.open_map_mut().remove(name);
            // Requests still holding the old handle finish on it; the DocStore's file lock is
            // released with the last of them, and until then the open below is UNAVAILABLE.
            drop(o);
        }
        let c = Collection::open(self.data_dir(), name)?;
        let o = Arc::new(Open::new(Arc::new(c)));
        self.open_map_mut().insert(name.to_string(), Arc::clone(&o));
        Ok(o)
    }

    /// The searcher of collection `name` (opened on first use), with the collection's own
    /// encoder: one per open collection, so its query-vector cache serves every request.
    pub fn searcher(&self, name: &str) -> Result<Arc<Searcher>> {
        let o = self.open(name)?;
        let mut slot = lock(&o.searcher);
        if let Some(s) = slot.as_ref() {
            return Ok(Arc::clone(s));
        }
        let encoder = self.encoder_for(&o.collection.settings()?)?;
        let s = Arc::new(Searcher::new(
            Arc::clone(&o.collection),
            encoder,
            self.config.query_cache,
        )?);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    /// The open collection `name` (opened on first use; loads no model).
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        Ok(Arc::clone(&self.open(name)?.collection))
    }

    /// Counts and settings of collection `name`.
    pub fn stats(&self, name: &str) -> Result<CollectionStats> {
        Ok(self.open(name)?.collection.stats()?)
    }

    /// Checks that collection `name`'s indexes hold exactly its DocStore's live chunks.
    pub fn verify(&self, name: &str) -> Result<()> {
        Ok(self.open(name)?.collection.verify()?)
    }

    /// Current settings of collection `name`.
    pub fn settings(&self, name: &str) -> Result<CollectionSettings> {
        Ok(self.open(name)?.collection.settings()?)
    }

    /// Every collection on disk (see [`Listing`]).
    pub fn list(&self) -> Result<Listing> {
        let mut names = Collection::list(self.data_dir())?;
        names.sort();
        let mut out = Listing::default();
        for name in names {
            match self.stats(&name) {
                Ok(stats) => out.open.push(stats),
                Err(e) => {
                    tracing::error!(collection = %name, error = %e, "collection unavailable");
                    out.unavailable.push((name, e));
                }
            }
        }
        Ok(out)
    }

    /// Deletes collection `name` (requests holding it finish on their open handle).
    pub fn delete_collection(&self, name: &str) -> Result<()> {
        ragd_store::validate_name(name)?;
        let _l = self.lifecycle();
        let removed = self.open_map_mut().remove(name);
        drop(removed);
        Collection::delete(self.data_dir(), name)?;
        Ok(())
    }

    /// Stores parsed documents in collection `name` in one pass of transactions and makes
    /// them searchable; one result per document, in input order.
    #[tracing::instrument(level = "debug", skip_all, fields(collection = name, documents = docs.len()))]
    pub fn ingest(
        &self,
        name: &str,
        docs: Vec<ParsedDoc>,
        opts: IngestOptions,
    ) -> Result<Vec<DocResult>> {
        let s = self.searcher(name)?;
        let stored = Ingestor::new(s.collection(), s.embedder(), opts)?.ingest_batch(docs)?;
        s.collection().refresh()?;
        Ok(stored)
    }

    /// Reads, parses and stores the files under `paths` in collection `name`, reporting
    /// progress to `sink`; checkpointed (and so searchable) on return.
    pub fn ingest_paths(
        &self,
        name: &str,
        paths: &[PathBuf],
        opts: IngestOptions,
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let s = self.searcher(name)?;
        Ingestor::new(s.collection(), s.embedder(), opts)?.ingest_paths(paths, sink)
    }

    /// Stores parsed documents in collection `name` in batches, reporting progress to `sink`;
    /// checkpointed (and so searchable) on return.
    pub fn ingest_documents(
        &self,
        name: &str,
        docs: Vec<ParsedDoc>,
        opts: IngestOptions,
        sink: &mut dyn ProgressSink,
    ) -> Result<IngestReport> {
        let s = self.searcher(name)?;
        Ingestor::new(s.collection(), s.embedder(), opts)?.ingest_documents(docs, sink)
    }

    /// Deletes documents by id (1 to [`MAX_DELETE_IDS`]).
    pub fn delete_documents(&self, name: &str, ids: Vec<String>) -> Result<Deleted> {
        if ids.is_empty() || ids.len() > MAX_DELETE_IDS {
            return Err(Error::InvalidInput(format!(
                "delete takes 1 to {MAX_DELETE_IDS} ids, got {}",
                ids.len()
            )));
        }
        let o = self.open(name)?;
        let c = &o.collection;
        let writes = ids
            .iter()
            .map(|id| DocWrite::Delete { id: id.clone() })
            .collect();
        let w = c.write(writes)?;
        c.refresh()?;
        let mut out = Deleted::default();
        for (id, o) in ids.into_iter().zip(w.outcomes) {
            match o {
                WriteOutcome::Deleted => out.deleted.push(id),
                _ => out.not_found.push(id),
            }
        }
        Ok(out)
    }

    /// Document `id` of collection `name`, with its text and chunks when `with_text`.
    pub fn document(
        &self,
        name: &str,
        id: &str,
        with_text: bool,
    ) -> Result<Option<StoredDocument>> {
        let o = self.open(name)?;
        let c = &o.collection;
        let Some((record, text)) = c.document(id)? else {
            return Ok(None);
        };
        let text = if with_text {
            Some((text, c.chunks(&record.chunks)?))
        } else {
            None
        };
        Ok(Some(StoredDocument {
            id: id.to_string(),
            record,
            text,
        }))
    }

    /// The page of collection `name`'s documents after `page_token` (the last id of the
    /// previous page; empty for the first), `page_size` of them (0: [`DEFAULT_PAGE_SIZE`]).
    pub fn list_documents(
        &self,
        name: &str,
        page_token: &str,
        page_size: usize,
    ) -> Result<DocumentPage> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n @ 1..=MAX_PAGE_SIZE => n,
            n => {
                return Err(Error::InvalidInput(format!(
                    "page_size must be 1..={MAX_PAGE_SIZE}, got {n}"
                )));
            }
        };
        let o = self.open(name)?;
        let c = &o.collection;
        let mut ids = c.document_ids()?;
        ids.sort();
        let from = if page_token.is_empty() {
            0
        } else {
            ids.partition_point(|id| id.as_str() <= page_token)
        };
        let page: Vec<String> = ids.iter().skip(from).take(size).cloned().collect();
        let refs: Vec<&str> = page.iter().map(String::as_str).collect();
        let recs = c.doc_records(&refs)?;
        let next_page_token = if from + page.len() < ids.len() {
            page.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok(DocumentPage {
            documents: page
                .into_iter()
                .zip(recs)
                .map(|(id, rec)| (id, rec.map(|r| r.title).unwrap_or_default()))
                .collect(),
            next_page_token,
        })
    }

    /// Searches collection `name` (the query's vector from the collection's cache when it
    /// was asked before).
    pub fn search(&self, name: &str, query: &str, params: &SearchParams) -> Result<SearchResults> {
        let s = self.searcher(name)?;
        params.validate()?;
        let vector = if params.mode == Mode::Lexical || query.trim().is_empty() {
            None
        } else {
            Some(s.query_vector(query)?)
        };
        let hits = s.search(query, vector.as_ref().map(|(v, _)| v.as_slice()), params)?;
        Ok(SearchResults {
            hits,
            generation: s.collection().manifest().generation,
            cached_vector: vector.map(|(_, cached)| cached),
        })
    }

    /// How often collection `name`'s query cache answered since it was opened.
    pub fn query_cache_stats(&self, name: &str) -> Result<CacheStats> {
        Ok(self.searcher(name)?.cache_stats())
    }

    /// Embeds texts with the engine's encoder (1 or more, none empty, none longer than
    /// [`MAX_EMBED_TEXT_BYTES`]).
    pub fn embed(&self, texts: Vec<String>, precision: Precision) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("nothing to embed".into()));
        }
        if let Some(i) = texts
            .iter()
            .position(|t| t.trim().is_empty() || t.len() > MAX_EMBED_TEXT_BYTES)
        {
            return Err(Error::InvalidInput(format!(
                "text {i} is empty or longer than {MAX_EMBED_TEXT_BYTES} bytes"
            )));
        }
        Ok(self.encoder()?.encode_with(texts, precision)?)
    }

    /// Retrieves, gates, selects and packs an answer over collection `name` without starting
    /// the decoder.
    pub fn prepare(&self, name: &str, request: AnswerRequest) -> Result<Prepared> {
        let generator = self.generator()?;
        let s = self.searcher(name)?;
        Answerer::new(&s, generator, &self.config.answer).prepare(request)
    }

    /// [`Engine::prepare`], then the answer started (queued on the decoder).
    pub fn ask(&self, name: &str, request: AnswerRequest) -> Result<AnswerStream> {
        let prepared = self.prepare(name, request)?;
        prepared.start(self.generator()?)
    }

    /// Rebuilds collection `name`'s indexes as a new generation (re-chunking and re-embedding
    /// as `opts` says); `progress(phase, done, total)` as it goes.
    pub fn rebuild(
        &self,
        name: &str,
        opts: &RebuildOptions,
        progress: impl FnMut(&str, u64, u64),
    ) -> Result<RebuildSummary> {
        let o = self.open(name)?;
        let c = &o.collection;
        let settings = c.settings()?;
        let encoder = if opts.rechunk
            || opts.reembed
            || opts.chunking.is_some()
            || opts.encoder_precision.is_some()
        {
            let precision = opts.encoder_precision.unwrap_or(settings.encoder_precision);
            Some(self.encoder_at(&settings.encoder, precision)?)
        } else {
            None
        };
        let summary = crate::rebuild(c, encoder.as_deref(), opts, progress);
        if opts.encoder_precision.is_some() {
            // The searcher embeds queries (and caches their vectors) at the old precision.
            *lock(&o.searcher) = None;
        }
        summary
    }

    /// Checkpoints every open collection that has unsaved writes.
    pub fn checkpoint_all(&self) {
        let open: Vec<Arc<Open>> = self.open_map().values().cloned().collect();
        for o in open {
            let c = &o.collection;
            if c.needs_reopen() {
                // Checkpointing it would only fail again; the next request reopens it, and
                // the open replays what this handle had not checkpointed.
                continue;
            }
            if let Err(e) = c.checkpoint() {
                tracing::error!(collection = c.name(), error = %e, "checkpoint failed");
            }
        }
    }

    // The lifecycle lock and the map guard no invariant a panic could break halfway (a panic
    // while opening a damaged collection is caught in the store anyway), so a poisoned lock is
    // taken as it is: one failed request never disables the others.
    fn lifecycle(&self) -> MutexGuard<'_, ()> {
        lock(&self.lifecycle)
    }

    fn open_map(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Open>>> {
        self.open.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_map_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Open>>> {
        self.open.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Open {
    fn new(collection: Arc<Collection>) -> Self {
        Self {
            collection,
            searcher: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
