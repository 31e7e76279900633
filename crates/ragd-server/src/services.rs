//! The five ragd.v1 services: thin adapters from requests to the engine and back. Blocking work
//! goes through `State::blocking`; streams are driven by a task writing into a bounded channel,
//! so a slow or vanished client stops the work (a dropped answer stream cancels generation).

use crate::error::{Error, invalid};
use crate::state::State;
use ragd_engine::{AnswerEvent, Cancel, IngestOptions, RebuildOptions};
use ragd_proto::convert;
use ragd_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Every service shares one state.
#[derive(Debug, Clone)]
pub struct Services {
    pub state: Arc<State>,
}

/// Every collection on disk with its counts, and those that cannot be opened, each sorted by
/// name: one damaged collection never hides the others.
fn all_collections(
    s: &State,
) -> Result<(Vec<pb::Collection>, Vec<pb::UnavailableCollection>), Error> {
    let listing = s.engine.list()?;
    let open = listing.open.into_iter().map(Into::into).collect();
    let unavailable = listing
        .unavailable
        .into_iter()
        .map(|(name, e)| unavailable(name, &Error::from(e)))
        .collect();
    Ok((open, unavailable))
}

/// A collection that could not be opened, with a reason that names the kind of failure but no
/// internals (paths, OS errors: those go to the server log).
fn unavailable(name: String, e: &Error) -> pb::UnavailableCollection {
    let reason = match e.kind() {
        ragd_core::ErrorKind::Internal => "damaged or unreadable (see the server log)".to_string(),
        ragd_core::ErrorKind::StorageFull => "the server's disk is full".to_string(),
        _ => e.to_string(),
    };
    pb::UnavailableCollection { name, reason }
}

/// The collection an ingest stream writes to: named by its first message, never changed.
fn stream_collection(current: &mut Option<String>, named: String) -> Result<(), Error> {
    match current {
        None if named.is_empty() => Err(invalid("the first message must name the collection")),
        None => {
            check_name(&named)?;
            *current = Some(named);
            Ok(())
        }
        Some(c) if !named.is_empty() && named != *c => Err(invalid(format!(
            "the stream writes to {c:?}; one message names {named:?}"
        ))),
        Some(_) => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    ragd_engine::validate_name(name).map_err(Error::from)
}

/// Resolves once shutdown has begun.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The `grpc-timeout` header as an instant (`5S`, `100m`, `2M`, …).
fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

#[tonic::async_trait]
impl pb::collections_server::Collections for Services {
    async fn create(&self, req: Request<pb::CreateCollectionRequest>) -> Reply<pb::Collection> {
        let r = req.into_inner();
        check_name(&r.name)?;
        let out = self
            .state
            .blocking(move |s| {
                let mut settings = s.engine.default_settings()?;
                if let Some(c) = &r.chunking {
                    settings.chunking = convert::chunking_from(c, &settings.chunking);
                }
                if let Some(h) = &r.hnsw {
                    settings.hnsw = convert::hnsw_from(h, &settings.hnsw);
                }
                if let Some(p) = convert::precision_from(&r.encoder_precision).map_err(invalid)? {
                    settings.encoder_precision = p;
                }
                settings.rerank = r.rerank as usize;
                Ok(s.engine.create(&r.name, &settings)?.into())
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn get(&self, req: Request<pb::GetCollectionRequest>) -> Reply<pb::Collection> {
        let name = req.into_inner().name;
        check_name(&name)?;
        let out = self
            .state
            .blocking(move |s| Ok(s.engine.stats(&name)?.into()))
            .await?;
        Ok(Response::new(out))
    }

    async fn list(
        &self,
        _: Request<pb::ListCollectionsRequest>,
    ) -> Reply<pb::ListCollectionsResponse> {
        let out = self
            .state
            .blocking(|s| {
                let (collections, unavailable) = all_collections(s)?;
                Ok(pb::ListCollectionsResponse {
                    collections,
                    unavailable,
                })
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Reply<pb::DeleteCollectionResponse> {
        let name = req.into_inner().name;
        check_name(&name)?;
        self.state
            .blocking(move |s| Ok(s.engine.delete_collection(&name)?))
            .await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }
}

/// Stores parsed documents and reports each one, failures included, in input order.
fn store_batch(
    s: &State,
    collection: &str,
    docs: Vec<pb::DocumentInput>,
    cancel: &Cancel,
) -> Result<Vec<pb::DocumentResult>, Error> {
    let max = s.settings.limits.max_document_bytes;
    let mut parsed = Vec::with_capacity(docs.len());
    // (position, result) for documents that failed before storage.
    let mut failures: Vec<(usize, pb::DocumentResult)> = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        match convert::document(d, max) {
            Ok(p) => parsed.push(p),
            Err((id, why)) => failures.push((i, convert::failed(id, why))),
        }
    }
    let opts = IngestOptions {
        cancel: cancel.clone(),
        ..IngestOptions::default()
    };
    let stored = s.engine.ingest(collection, parsed, opts)?;
    s.metrics.documents_acknowledged.inc_by(stored.len() as u64);
    s.metrics.documents_failed.inc_by(failures.len() as u64);
    let mut out: Vec<pb::DocumentResult> = stored.into_iter().map(Into::into).collect();
    for (i, f) in failures {
        out.insert(i.min(out.len()), f);
    }
    Ok(out)
}

/// The status that ends an ingest stream whose next message could not be read (over the
/// message size limit, or not a valid message), after `acked` acknowledged documents. When the
/// client itself broke off, nobody receives it.
fn unreadable(e: &Status, acked: u64) -> Status {
    let after = format!("after {acked} acknowledged documents (those are stored)");
    match e.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Status::resource_exhausted(
            format!("a message is larger than limits.max_message_bytes; the stream ended {after}"),
        ),
        tonic::Code::Cancelled => Status::cancelled(format!("the stream was cancelled {after}")),
        _ => Status::invalid_argument(format!(
            "a message could not be decoded; the stream ended {after}"
        )),
    }
}

/// Documents per transaction on an ingest stream.
const STREAM_BATCH: usize = 32;

#[tonic::async_trait]
impl pb::documents_server::Documents for Services {
    async fn upsert(&self, req: Request<pb::UpsertRequest>) -> Reply<pb::UpsertResponse> {
        let deadline = deadline(&req);
        let r = req.into_inner();
        check_name(&r.collection)?;
        let max = self.state.settings.limits.max_batch_documents;
        if r.documents.is_empty() || r.documents.len() > max {
            return Err(invalid(format!(
                "an upsert takes 1 to {max} documents, got {}",
                r.documents.len()
            ))
            .into());
        }
        let results = self
            .state
            .job(deadline, move |s, cancel| {
                store_batch(s, &r.collection, r.documents, cancel)
            })
            .await?;
        Ok(Response::new(pb::UpsertResponse { results }))
    }

    type IngestStreamStream = BoxStream<pb::IngestAck>;

    async fn ingest_stream(
        &self,
        req: Request<Streaming<pb::IngestStreamRequest>>,
    ) -> Reply<Self::IngestStreamStream> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::IngestAck, Status>>(STREAM_BATCH * 2);
        let state = Arc::clone(&self.state);
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut shutdown = state.shutdown.clone();
            let mut collection: Option<String> = None;
            let mut acked = 0u64;
            let idle = Duration::from_secs(state.settings.limits.stream_idle_seconds as u64);
            loop {
                // One message (or the end, or shutdown, or too long a silence), then whatever
                // else is ready.
                let first = tokio::select! {
                    m = incoming.next() => m,
                    () = stopped(&mut shutdown) => {
                        let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                        return;
                    }
                    () = tokio::time::sleep(idle) => {
                        let _ = tx.send(Err(Status::deadline_exceeded(format!(
                            "no message for {} s; the stream ended after {acked} acknowledged documents (those are stored)",
                            idle.as_secs()
                        )))).await;
                        return;
                    }
                };
                let mut batch = match first {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(unreadable(&e, acked))).await;
                        return;
                    }
                    Some(Ok(m)) => vec![m],
                };
                // A message that cannot be read ends the stream with an error once the
                // documents before it are stored and acknowledged: never an OK end with
                // documents silently left out.
                let mut broken = None;
                while batch.len() < STREAM_BATCH {
                    match tokio::time::timeout(Duration::from_millis(5), incoming.next()).await {
                        Ok(Some(Ok(m))) => batch.push(m),
                        Ok(Some(Err(e))) => {
                            broken = Some(e);
                            break;
                        }
                        _ => break,
                    }
                }
                let mut docs = Vec::with_capacity(batch.len());
                for m in batch {
                    if let Err(e) = stream_collection(&mut collection, m.collection) {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    match m.document {
                        Some(d) => docs.push(d),
                        None => {
                            let _ = tx
                                .send(Err(invalid("a message without a document").into()))
                                .await;
                            return;
                        }
                    }
                }
                let name = collection.clone().unwrap_or_default();
                // A client that goes away stops its batch (dropping the job cancels it).
                let job = state.job(None, move |s, cancel| store_batch(s, &name, docs, cancel));
                let results = tokio::select! {
                    r = job => r,
                    () = tx.closed() => return,
                };
                match results {
                    Ok(results) => {
                        for r in results {
                            acked += 1;
                            let ack = pb::IngestAck {
                                result: Some(r),
                                acknowledged: acked,
                            };
                            if tx.send(Ok(ack)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                if let Some(e) = broken {
                    let _ = tx.send(Err(unreadable(&e, acked))).await;
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteDocumentsRequest>,
    ) -> Reply<pb::DeleteDocumentsResponse> {
        let r = req.into_inner();
        check_name(&r.collection)?;
        let out = self
            .state
            .blocking(move |s| {
                let d = s.engine.delete_documents(&r.collection, r.ids)?;
                Ok(pb::DeleteDocumentsResponse {
                    deleted: d.deleted,
                    not_found: d.not_found,
                })
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn get(&self, req: Request<pb::GetDocumentRequest>) -> Reply<pb::Document> {
        let r = req.into_inner();
        check_name(&r.collection)?;
        let out = self
            .state
            .blocking(
                move |s| match s.engine.document(&r.collection, &r.id, r.include_text)? {
                    Some(d) => Ok(d.into()),
                    None => Err(Error::NotFound(format!(
                        "no document {:?} in collection {:?}",
                        r.id, r.collection
                    ))),
                },
            )
            .await?;
        Ok(Response::new(out))
    }

    async fn list(
        &self,
        req: Request<pb::ListDocumentsRequest>,
    ) -> Reply<pb::ListDocumentsResponse> {
        let r = req.into_inner();
        check_name(&r.collection)?;
        let out = self
            .state
            .blocking(move |s| {
                let page =
                    s.engine
                        .list_documents(&r.collection, &r.page_token, r.page_size as usize)?;
                Ok(pb::ListDocumentsResponse {
                    documents: page
                        .documents
                        .into_iter()
                        .map(|(id, title)| pb::DocumentSummary { id, title })
                        .collect(),
                    next_page_token: page.next_page_token,
                })
            })
            .await?;
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl pb::search_server::Search for Services {
    async fn search(&self, req: Request<pb::SearchRequest>) -> Reply<pb::SearchResponse> {
        let r = req.into_inner();
        check_name(&r.collection)?;
        let max = self.state.settings.limits.max_query_bytes;
        if r.query.len() > max {
            return Err(invalid(format!(
                "the query is {} bytes; the limit is {max}",
                r.query.len()
            ))
            .into());
        }
        let params = convert::search_params(r.options, 10).map_err(Error::from)?;
        let out = self
            .state
            .blocking(move |s| {
                let t = Instant::now();
                let found = s.engine.search(&r.collection, &r.query, &params)?;
                if let Some(cached) = found.cached_vector {
                    let outcome = if cached { "hit" } else { "miss" };
                    s.metrics
                        .query_cache
                        .get_or_create(&crate::metrics::CacheLabels { outcome })
                        .inc();
                }
                Ok(pb::SearchResponse {
                    hits: found.hits.into_iter().map(Into::into).collect(),
                    took_ms: t.elapsed().as_secs_f64() * 1e3,
                    index_generation: found.generation,
                    published_generation: found
                        .published
                        .map(|id| id.to_string())
                        .unwrap_or_default(),
                })
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Reply<pb::EmbedResponse> {
        let r = req.into_inner();
        let max = self.state.settings.limits.max_embed_texts;
        if r.texts.is_empty() || r.texts.len() > max {
            return Err(invalid(format!(
                "embed takes 1 to {max} texts, got {}",
                r.texts.len()
            ))
            .into());
        }
        let precision = convert::precision_from(&r.precision)
            .map_err(invalid)?
            .unwrap_or_default();
        let out = self
            .state
            .blocking(move |s| {
                let e = s.engine.embed(r.texts, precision)?;
                Ok(pb::EmbedResponse {
                    embeddings: e
                        .into_iter()
                        .map(|e| pb::Embedding {
                            values: e.vector,
                            tokens: e.tokens as u32,
                            truncated: e.truncated,
                        })
                        .collect(),
                    model: s.engine.encoder()?.name().to_string(),
                    dim: s.engine.encoder()?.dim() as u32,
                    precision: precision.to_string(),
                })
            })
            .await?;
        Ok(Response::new(out))
    }
}

impl Services {
    /// Retrieval and packing on the blocking pool, then generation started (queued on the
    /// decoder; a full queue is RESOURCE_EXHAUSTED at once).
    async fn start_answer(
        &self,
        req: Request<pb::AskRequest>,
    ) -> Result<(Vec<pb::Source>, ragd_engine::AnswerStream), Status> {
        let deadline = deadline(&req);
        let (collection, mut request) = convert::ask(
            req.into_inner(),
            self.state.engine.answer_config().max_sources,
            self.state.settings.limits.max_query_bytes,
        )
        .map_err(Error::from)?;
        check_name(&collection)?;
        request.deadline = deadline;
        let stream = self
            .state
            .blocking(move |s| Ok(s.engine.ask(&collection, request)?))
            .await?;
        let sources = stream.sources().iter().map(Into::into).collect();
        Ok((sources, stream))
    }

    fn count(&self, a: &ragd_engine::Answer) {
        self.state
            .metrics
            .tokens_generated
            .inc_by(a.usage.generated_tokens as u64);
        if a.refused {
            self.state.metrics.answers_refused.inc();
        }
    }
}

#[tonic::async_trait]
impl pb::answer_server::Answer for Services {
    async fn ask(&self, req: Request<pb::AskRequest>) -> Reply<pb::AskResponse> {
        let (_, mut stream) = self.start_answer(req).await?;
        while let Some(ev) = stream.next().await {
            match ev.map_err(Error::from)? {
                AnswerEvent::Delta(_) => {}
                AnswerEvent::Done(a) => {
                    self.count(&a);
                    return Ok(Response::new((*a).into()));
                }
            }
        }
        Err(Error::Worker("the answer stream ended early".into()).into())
    }

    type AskStreamStream = BoxStream<pb::AskEvent>;

    async fn ask_stream(&self, req: Request<pb::AskRequest>) -> Reply<Self::AskStreamStream> {
        let (sources, mut stream) = self.start_answer(req).await?;
        let (tx, rx) = mpsc::channel::<Result<pb::AskEvent, Status>>(64);
        let this = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let ev = pb::AskEvent {
                event: Some(pb::ask_event::Event::Sources(pb::SourcesEvent { sources })),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
            // Dropping `stream` (on any early return) cancels generation.
            while let Some(ev) = stream.next().await {
                let out = match ev {
                    Ok(AnswerEvent::Delta(text)) => {
                        pb::ask_event::Event::Delta(pb::TokenDelta { text })
                    }
                    Ok(AnswerEvent::Done(a)) => {
                        this.count(&a);
                        pb::ask_event::Event::Answer((*a).into())
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::from(e).into())).await;
                        return;
                    }
                };
                if tx
                    .send(Ok(pb::AskEvent { event: Some(out) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    type RebuildStream = BoxStream<pb::RebuildProgress>;

    async fn rebuild(&self, req: Request<pb::RebuildRequest>) -> Reply<Self::RebuildStream> {
        let r = req.into_inner();
        check_name(&r.collection)?;
        let encoder_precision = convert::precision_from(&r.encoder_precision).map_err(invalid)?;
        {
            // NOT_FOUND before the stream starts.
            let name = r.collection.clone();
            self.state
                .blocking(move |s| Ok(s.engine.collection(&name).map(drop)?))
                .await?;
        }
        let (tx, rx) = mpsc::channel::<Result<pb::RebuildProgress, Status>>(16);
        let state = Arc::clone(&self.state);
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let progress_tx = tx.clone();
            let out = state
                .job(None, move |s, cancel| {
                    let chunking = r
                        .chunking
                        .as_ref()
                        .map(|p| {
                            s.engine
                                .settings(&r.collection)
                                .map(|cur| convert::chunking_from(p, &cur.chunking))
                        })
                        .transpose()?;
                    let opts = RebuildOptions {
                        rechunk: r.rechunk,
                        reembed: r.reembed,
                        chunking,
                        encoder_precision,
                        cancel: cancel.clone(),
                        ..RebuildOptions::default()
                    };
                    let mut last = Instant::now();
                    let summary = s.engine.rebuild(&r.collection, &opts, |_, done, total| {
                        if last.elapsed() >= Duration::from_millis(200) || done == total {
                            last = Instant::now();
                            let ev = pb::RebuildProgress {
                                event: Some(pb::rebuild_progress::Event::Progress(pb::Progress {
                                    done,
                                    total,
                                })),
                            };
                            let _ = progress_tx.try_send(Ok(ev));
                        }
                    })?;
                    Ok(summary)
                })
                .await;
            let ev = match out {
                Ok(sum) => Ok(pb::RebuildProgress {
                    event: Some(pb::rebuild_progress::Event::Done(sum.into())),
                }),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(ev).await;
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Reply<pb::InfoResponse> {
        let out = self
            .state
            .blocking(|s| {
                let (collections, unavailable_collections) = all_collections(s)?;
                Ok(pb::InfoResponse {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    models: vec![
                        pb::Model {
                            role: "encoder".into(),
                            id: s.engine.encoder()?.name().to_string(),
                        },
                        pb::Model {
                            role: "decoder".into(),
                            id: s.engine.generator()?.name().to_string(),
                        },
                    ],
                    collections,
                    unavailable_collections,
                    replica: s.replica.as_ref().map(|r| r.to_pb(&s.engine)),
                })
            })
            .await?;
        Ok(Response::new(out))
    }
}
