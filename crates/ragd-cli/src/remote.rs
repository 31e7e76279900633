//! The server half of `ragd ingest --server URL` (`Backend::ingest`): files are read and parsed
//! here (the same readers as offline, so HTML, PDF and BEIR JSONL work alike) and sent as text
//! over Documents.IngestStream; the server acknowledges each document once it is durable.

use crate::client::{Remote, status};
use crate::output::{IngestSummary, bar};
use anyhow::{Result, bail};
use ragd_engine::{Failure, SourceOptions, collect_sources, read_source};
use ragd_proto::v1 as pb;
use std::path::PathBuf;
use std::time::Instant;

/// Messages in flight between the file reader and the stream (bounds memory for large corpora).
const SEND_QUEUE: usize = 64;

/// Counts one acknowledgement.
fn count(t: &mut IngestSummary, r: pb::DocumentResult) {
    match pb::DocumentStatus::try_from(r.status) {
        Ok(pb::DocumentStatus::Added) => t.added += 1,
        Ok(pb::DocumentStatus::Unchanged) => t.unchanged += 1,
        Ok(pb::DocumentStatus::Replaced) => t.replaced += 1,
        _ => t.failed.push(Failure {
            source: r.id,
            reason: r.error,
        }),
    }
    t.chunks += u64::from(r.chunks);
}

/// Reads and parses `paths` here, streams the documents to collection `name` and counts the server's acknowledgements. A stream the server
/// ends early is an error naming how many documents it had acknowledged (those are stored).
pub(crate) fn ingest(
    remote: &Remote,
    name: &str,
    paths: &[PathBuf],
    opts: SourceOptions,
    quiet: bool,
) -> Result<IngestSummary> {
    let sources = collect_sources(paths, &opts)?;
    let t0 = Instant::now();
    let pb = bar(quiet);
    pb.set_length(sources.iter().map(ragd_engine::estimate_documents).sum());

    // The reader runs on its own thread; the bounded channel holds it back when the server is
    // slower than parsing.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestStreamRequest>(SEND_QUEUE);
    let collection = name.to_string();
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
                            collection: collection.clone(),
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

    let mut tally = IngestSummary::default();
    let streamed: Result<(), tonic::Status> = remote.rt.block_on(async {
        let mut client = pb::documents_client::DocumentsClient::new(remote.channel.clone())
            .max_encoding_message_size(usize::MAX);
        let mut acks = client
            .ingest_stream(remote.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await?
            .into_inner();
        while let Some(ack) = acks.message().await? {
            if let Some(r) = ack.result {
                count(&mut tally, r);
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
        bail!(
            "the server acknowledged {answered} of the {sent} documents sent and ended the stream \
             without an error; the other {} are not stored",
            sent.saturating_sub(answered)
        );
    }
    local.append(&mut tally.failed);
    tally.failed = local;
    tally.seconds = t0.elapsed().as_secs_f64();
    tally.documents_per_s = tally.stored() as f64 / tally.seconds.max(1e-9);
    tally.chunks_per_s = tally.chunks as f64 / tally.seconds.max(1e-9);
    Ok(tally)
}
