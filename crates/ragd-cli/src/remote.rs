//! `ragd collections|ingest|delete|rebuild --server URL`: the same commands as in
//! `collections.rs`, done by a running server over gRPC. Files are read and parsed here (the
//! same readers as offline, so HTML, PDF and BEIR JSONL work alike) and sent as text over
//! Documents.IngestStream; the server acknowledges each document once it is durable.

use crate::client::{Remote, status};
use crate::collections::{ChunkFlags, IngestArgs, bar};
use anyhow::{Result, bail};
use ragd_engine::ChunkSettings;
use ragd_engine::{Failure, SourceOptions, collect_sources, read_source};
use ragd_proto::v1 as pb;
use serde_json::json;
use std::process::ExitCode;
use std::time::Instant;
use tonic::Code;

/// Messages in flight between the file reader and the stream (bounds memory for large corpora).
const SEND_QUEUE: usize = 64;

fn collections_client(
    r: &Remote,
) -> pb::collections_client::CollectionsClient<tonic::transport::Channel> {
    pb::collections_client::CollectionsClient::new(r.channel.clone())
}

/// Chunking flags over `base` as the API's message; sizes the user did not give are sent as 0
/// so the server keeps its own (encoder-capped) value.
pub(crate) fn chunking_msg(flags: &ChunkFlags, base: ChunkSettings) -> pb::ChunkingSettings {
    let c = flags.apply(base);
    pb::ChunkingSettings {
        max_tokens: flags.chunk_max_tokens.map_or(0, |_| c.max_tokens as u32),
        min_tokens: flags.chunk_min_tokens.map_or(0, |_| c.min_tokens as u32),
        overlap_tokens: c.overlap_tokens as u32,
        title_in_embedding: c.title_in_embedding,
    }
}

/// A collection as the offline `collections stats --json` prints it.
pub(crate) fn collection_json(c: &pb::Collection) -> serde_json::Value {
    let s = c.settings.clone().unwrap_or_default();
    let ch = s.chunking.unwrap_or_default();
    let h = s.hnsw.unwrap_or_default();
    json!({
        "name": c.name,
        "documents": c.documents,
        "chunks": c.chunks,
        "tombstones": c.tombstones,
        "generation": c.generation,
        "bytes": c.bytes,
        "seq": c.sequence,
        "settings": {
            "encoder": s.encoder,
            "dim": s.dim,
            "chunking": {
                "max_tokens": ch.max_tokens,
                "min_tokens": ch.min_tokens,
                "overlap_tokens": ch.overlap_tokens,
                "title_in_embedding": ch.title_in_embedding,
            },
            "hnsw": {"m": h.m, "ef_construction": h.ef_construction, "ef_search": h.ef_search},
        },
    })
}

pub(crate) fn create(
    r: &Remote,
    name: &str,
    chunk: &ChunkFlags,
    hnsw: pb::HnswSettings,
) -> Result<pb::Collection> {
    let req = pb::CreateCollectionRequest {
        name: name.to_string(),
        chunking: chunk
            .any()
            .then(|| chunking_msg(chunk, ChunkSettings::default())),
        hnsw: (hnsw != pb::HnswSettings::default()).then_some(hnsw),
    };
    r.rt.block_on(collections_client(r).create(r.request(req)))
        .map(tonic::Response::into_inner)
        .map_err(status)
}

pub(crate) fn list(r: &Remote, json: bool) -> Result<()> {
    let resp =
        r.rt.block_on(collections_client(r).list(r.request(pb::ListCollectionsRequest {})))
            .map_err(status)?
            .into_inner();
    if json {
        let mut rows: Vec<_> = resp
            .collections
            .iter()
            .map(|c| {
                json!({"name": c.name, "documents": c.documents, "chunks": c.chunks,
                    "generation": c.generation, "bytes": c.bytes})
            })
            .chain(
                resp.unavailable
                    .iter()
                    .map(|u| json!({"name": u.name, "error": u.reason})),
            )
            .collect();
        rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        return crate::collections::print_json(&json!({ "collections": rows }));
    }
    if resp.collections.is_empty() && resp.unavailable.is_empty() {
        println!("no collections on the server");
    }
    for c in &resp.collections {
        crate::collections::print_row(&c.name, c.documents, c.chunks, c.generation, c.bytes);
    }
    for u in &resp.unavailable {
        println!("{:<24} unavailable: {}", u.name, u.reason);
    }
    Ok(())
}

pub(crate) fn get(r: &Remote, name: &str) -> Result<pb::Collection, tonic::Status> {
    r.rt.block_on(
        collections_client(r).get(r.request(pb::GetCollectionRequest {
            name: name.to_string(),
        })),
    )
    .map(tonic::Response::into_inner)
}

pub(crate) fn stats(r: &Remote, name: &str, json: bool) -> Result<()> {
    let c = get(r, name).map_err(status)?;
    if json {
        return crate::collections::print_json(&collection_json(&c));
    }
    let s = c.settings.clone().unwrap_or_default();
    let ch = s.chunking.unwrap_or_default();
    println!("collection  {}", c.name);
    println!("documents   {}", c.documents);
    println!("chunks      {}", c.chunks);
    println!("tombstones  {}", c.tombstones);
    println!("generation  {}", c.generation);
    println!("bytes       {} ({:.1} MB)", c.bytes, c.bytes as f64 / 1e6);
    println!("encoder     {} ({} dimensions)", s.encoder, s.dim);
    println!(
        "chunking    {}..={} tokens, overlap {}, title embedded: {}",
        ch.min_tokens, ch.max_tokens, ch.overlap_tokens, ch.title_in_embedding
    );
    Ok(())
}

pub(crate) fn delete_collection(r: &Remote, name: &str) -> Result<()> {
    r.rt.block_on(
        collections_client(r).delete(r.request(pb::DeleteCollectionRequest {
            name: name.to_string(),
        })),
    )
    .map_err(status)?;
    Ok(())
}

/// Creates `name` with the server's defaults when it does not exist yet (like offline ingest).
fn ensure_collection(r: &Remote, name: &str, quiet: bool) -> Result<()> {
    match get(r, name) {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            if !quiet {
                eprintln!("creating collection {name} on the server");
            }
            match create(r, name, &ChunkFlags::default(), pb::HnswSettings::default()) {
                Ok(_) => Ok(()),
                // Someone else created it meanwhile: that is what we wanted.
                Err(e)
                    if e.downcast_ref::<crate::client::CallFailed>()
                        .is_some_and(|c| c.code == Code::AlreadyExists) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Err(s) => Err(status(s)),
    }
}

/// What the server said about the documents of one ingest run.
#[derive(Default, serde::Serialize)]
struct Tally {
    added: u64,
    unchanged: u64,
    replaced: u64,
    failed: Vec<Failure>,
    chunks: u64,
    seconds: f64,
    documents_per_s: f64,
}

impl Tally {
    fn count(&mut self, r: pb::DocumentResult) {
        match pb::DocumentStatus::try_from(r.status) {
            Ok(pb::DocumentStatus::Added) => self.added += 1,
            Ok(pb::DocumentStatus::Unchanged) => self.unchanged += 1,
            Ok(pb::DocumentStatus::Replaced) => self.replaced += 1,
            _ => self.failed.push(Failure {
                source: r.id,
                reason: r.error,
            }),
        }
        self.chunks += u64::from(r.chunks);
    }

    fn stored(&self) -> u64 {
        self.added + self.unchanged + self.replaced
    }
}

/// `ragd ingest --server URL`: reads and parses the files here, streams the documents and
/// counts the server's acknowledgements. Exit code 0 when every document was stored, 2 when
/// some failed; a stream the server ends early is an error naming how many documents it had
/// acknowledged (those are stored).
pub(crate) fn ingest(a: IngestArgs, url: &str) -> Result<ExitCode> {
    let remote = Remote::connect(&a.remote, url)?;
    let opts = SourceOptions {
        include: a.include,
        exclude: a.exclude,
        max_document_bytes: a.max_document_bytes,
    };
    let sources = collect_sources(&a.paths, &opts)?;
    ensure_collection(&remote, &a.collection, a.json)?;
    let t0 = Instant::now();
    let pb = bar(a.json);
    pb.set_length(sources.iter().map(ragd_engine::estimate_documents).sum());

    // The reader runs on its own thread; the bounded channel holds it back when the server is
    // slower than parsing.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestStreamRequest>(SEND_QUEUE);
    let name = a.collection.clone();
    let reader_bar = pb.clone();
    let reader = std::thread::spawn(move || -> Result<(Vec<Failure>, u64)> {
        let mut failed = Vec::new();
        let mut closed = false;
        let mut sent = 0u64;
        for src in &sources {
            read_source(src, &opts, &mut |r| {
                match r {
                    Err(f) => {
                        reader_bar.inc(1);
                        failed.push(f);
                    }
                    Ok(d) if !closed => {
                        let msg = pb::IngestStreamRequest {
                            collection: name.clone(),
                            document: Some(d.into()),
                        };
                        // The stream is gone: the error comes from the acknowledgements.
                        closed = tx.blocking_send(msg).is_err();
                        sent += u64::from(!closed);
                    }
                    Ok(_) => {}
                }
                Ok(())
            })?;
            if closed {
                break;
            }
        }
        Ok((failed, sent))
    });

    let mut tally = Tally::default();
    let streamed: Result<(), tonic::Status> = remote.rt.block_on(async {
        let mut client = pb::documents_client::DocumentsClient::new(remote.channel.clone())
            .max_encoding_message_size(usize::MAX);
        let mut acks = client
            .ingest_stream(remote.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await?
            .into_inner();
        while let Some(ack) = acks.message().await? {
            if let Some(r) = ack.result {
                tally.count(r);
            }
            pb.inc(1);
        }
        Ok(())
    });
    pb.finish_and_clear();
    if let Err(s) = streamed {
        // The reader may be blocked on a stream nobody reads any more: leave it to the exit.
        return Err(status(s).context(format!(
            "the server ended the ingest stream after acknowledging {} documents (those are stored)",
            tally.stored() + tally.failed.len() as u64
        )));
    }
    // The server ends the acks after the client's last message, so the reader is done.
    let (mut local, sent) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the file reader panicked"))??;
    let answered = tally.stored() + tally.failed.len() as u64;
    if answered != sent {
        anyhow::bail!(
            "the server acknowledged {answered} of the {sent} documents sent and ended the stream \
             without an error; the other {} are not stored",
            sent.saturating_sub(answered)
        );
    }
    local.append(&mut tally.failed);
    tally.failed = local;
    tally.seconds = t0.elapsed().as_secs_f64();
    tally.documents_per_s = tally.stored() as f64 / tally.seconds.max(1e-9);
    if a.json {
        crate::collections::print_json(&tally)?;
    } else {
        println!(
            "added {}, unchanged {}, replaced {}, failed {}; {} chunks in {:.1}s ({:.1} documents/s)",
            tally.added,
            tally.unchanged,
            tally.replaced,
            tally.failed.len(),
            tally.chunks,
            tally.seconds,
            tally.documents_per_s
        );
        crate::collections::print_failures(&tally.failed);
    }
    Ok(crate::collections::ingest_exit_code(&tally.failed))
}

/// `ragd delete --server URL`: Documents.Delete; returns (deleted, not found).
pub(crate) fn delete_documents(
    r: &Remote,
    collection: &str,
    ids: &[String],
) -> Result<(usize, Vec<String>)> {
    let resp =
        r.rt.block_on(
            pb::documents_client::DocumentsClient::new(r.channel.clone()).delete(r.request(
                pb::DeleteDocumentsRequest {
                    collection: collection.to_string(),
                    ids: ids.to_vec(),
                },
            )),
        )
        .map_err(status)?
        .into_inner();
    Ok((resp.deleted.len(), resp.not_found))
}

/// `ragd rebuild --server URL`: Admin.Rebuild, its progress on a bar, the summary at the end.
pub(crate) fn rebuild(
    r: &Remote,
    collection: &str,
    rechunk: bool,
    reembed: bool,
    chunk: &ChunkFlags,
    json: bool,
) -> Result<()> {
    let chunking = if chunk.any() {
        // Flags apply over the collection's current chunking, as offline.
        let cur = get(r, collection).map_err(status)?;
        let ch = cur.settings.and_then(|s| s.chunking).unwrap_or_default();
        let base = ChunkSettings {
            max_tokens: ch.max_tokens as usize,
            min_tokens: ch.min_tokens as usize,
            overlap_tokens: ch.overlap_tokens as usize,
            title_in_embedding: ch.title_in_embedding,
        };
        Some(chunking_msg(chunk, base))
    } else {
        None
    };
    let req = pb::RebuildRequest {
        collection: collection.to_string(),
        rechunk: rechunk || chunk.any(),
        reembed,
        chunking,
    };
    let pb = bar(json);
    let done = r.rt.block_on(async {
        let mut events = pb::admin_client::AdminClient::new(r.channel.clone())
            .rebuild(r.request(req))
            .await?
            .into_inner();
        while let Some(ev) = events.message().await? {
            match ev.event {
                Some(pb::rebuild_progress::Event::Progress(p)) => {
                    pb.set_length(p.total);
                    pb.set_position(p.done);
                }
                Some(pb::rebuild_progress::Event::Done(d)) => return Ok(d),
                None => {}
            }
        }
        Err(tonic::Status::internal(
            "the rebuild stream ended without a summary",
        ))
    });
    pb.finish_and_clear();
    let d = done.map_err(status)?;
    if json {
        return crate::collections::print_json(&json!({
            "generation": d.generation,
            "previous_generation": d.previous_generation,
            "documents": d.documents,
            "chunks": d.chunks,
            "seconds": d.seconds,
        }));
    }
    println!(
        "generation {} (was {}): {} documents, {} chunks; {:.1}s",
        d.generation, d.previous_generation, d.documents, d.chunks, d.seconds
    );
    Ok(())
}

/// Offline-only flags given with `--server`: refused rather than silently ignored.
pub(crate) fn offline_only(flag: &str, given: bool) -> Result<()> {
    if given {
        bail!("{flag} works on a data directory only, not with --server");
    }
    Ok(())
}
