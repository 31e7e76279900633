//! `ragd ingest --server URL`: files are read and parsed here (the same readers as offline, so
//! HTML, PDF and BEIR JSONL work alike) and sent as text over Documents.IngestStream; the server
//! acknowledges each document once it is durable. (The commands that are unary either way run
//! over `backend.rs`.)

use crate::client::{Remote, status};
use crate::flags::{ChunkFlags, IngestArgs};
use crate::output::{bar, ingest_exit_code, print_failures, print_json};
use anyhow::{Result, bail};
use ragd_engine::{Failure, SourceOptions, collect_sources, read_source};
use ragd_proto::v1 as pb;
use std::process::ExitCode;
use std::time::Instant;
use tonic::Code;

/// Messages in flight between the file reader and the stream (bounds memory for large corpora).
const SEND_QUEUE: usize = 64;

/// Creates `name` with the server's defaults when it does not exist yet (like offline ingest).
fn ensure_collection(r: &Remote, name: &str, quiet: bool) -> Result<()> {
    match crate::backend::get(r, name) {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            if !quiet {
                eprintln!("creating collection {name} on the server");
            }
            match crate::backend::create_remote(
                r,
                name,
                &ChunkFlags::default(),
                pb::HnswSettings::default(),
            ) {
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
        print_json(&tally)?;
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
        print_failures(&tally.failed);
    }
    Ok(ingest_exit_code(&tally.failed))
}

/// Offline-only flags given with `--server`: refused rather than silently ignored.
pub(crate) fn offline_only(flag: &str, given: bool) -> Result<()> {
    if given {
        bail!("{flag} works on a data directory only, not with --server");
    }
    Ok(())
}
