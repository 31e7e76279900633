//! `ragd publish` and `ragd restore`: a collection's index generation to and from object
//! storage (S3 and S3-compatible stores, GCS, Azure, a directory), offline, on a data
//! directory. The engine stages a consistent copy; `ragd_engine::cluster` moves the bytes.

use crate::backend;
use crate::flags::{DataDir, ModelsDir};
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use clap::Args;
use ragd_engine::AnswerConfig;
use ragd_engine::cluster::{ETCD_PREFIX, Etcd, GenerationId, GenerationStore, point_and_prune};
use serde_json::json;
use std::collections::BTreeMap;

/// Where published generations live, and how to reach it.
#[derive(Debug, Args)]
pub(crate) struct StoreFlags {
    /// Store option KEY=VALUE (object_store's keys: aws_endpoint, aws_region,
    /// aws_access_key_id, aws_secret_access_key, aws_allow_http, google_service_account,
    /// azure_storage_account_name, …); repeatable. The environment's AWS_*, GOOGLE_* and
    /// AZURE_* variables are read too.
    #[arg(long = "store-option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

impl StoreFlags {
    fn open(&self, url: &str) -> Result<GenerationStore> {
        let mut opts = BTreeMap::new();
        for o in &self.options {
            let Some((k, v)) = o.split_once('=') else {
                bail!("--store-option {o:?}: expected KEY=VALUE");
            };
            opts.insert(k.trim().to_string(), v.to_string());
        }
        Ok(GenerationStore::open(url, &opts)?)
    }
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Collection name.
    name: String,
    /// Object store URL: s3://bucket/path, gs://bucket/path, az://container/path,
    /// file:///dir or /dir. The generation goes under
    /// <URL>/collections/<name>/gen/gen-<n>-seq-<s>/, publish.json last.
    #[arg(long, value_name = "URL")]
    to: String,
    #[command(flatten)]
    store: StoreFlags,
    /// etcd client endpoints (comma-separated or repeated): after publishing, point the
    /// collection's `/ragd/<name>/current` at the new generation (compare-and-swap; never back
    /// to an older one), then delete published generations older than the --keep newest that
    /// no live replica serves.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    etcd: Vec<String>,
    /// Published generations kept (with --etcd), the pointed one included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    keep: u64,
    #[command(flatten)]
    data: DataDir,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// Collection name (as published; installed under the same name, which must not exist).
    name: String,
    /// Object store URL the collection was published to.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The generation to restore (gen-<n>-seq-<s>); default: the newest published.
    #[arg(long)]
    generation: Option<String>,
    #[command(flatten)]
    store: StoreFlags,
    #[command(flatten)]
    data: DataDir,
    #[arg(long)]
    json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// Checkpoints the collection, stages a consistent copy beside it and uploads it; with
/// `--etcd`, points replicas at it and prunes what they no longer serve.
pub(crate) fn publish(a: PublishArgs) -> Result<()> {
    let store = a.store.open(&a.to)?;
    let etcd = (!a.etcd.is_empty())
        .then(|| Etcd::new(&a.etcd, ETCD_PREFIX))
        .transpose()?;
    let engine = backend::engine(&a.data, &ModelsDir::default(), AnswerConfig::default());
    let staged = engine.snapshot(&a.name)?;
    let rt = runtime()?;
    let report = rt.block_on(store.publish(&a.name, &staged.dir, &staged.snapshot))?;
    drop(staged);
    let rollout = match &etcd {
        Some(etcd) => {
            let keep = usize::try_from(a.keep).unwrap_or(usize::MAX);
            let to = report.pointer();
            Some(rt.block_on(point_and_prune(etcd, &store, &a.name, &to, keep))?)
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(r) = &rollout {
            v["rollout"] = serde_json::to_value(r)?;
        }
        return print_json(&v);
    }
    let what = if report.already_published {
        "already published"
    } else {
        "published"
    };
    println!(
        "{what} {} {}: {} files, {:.1} MB, {:.1}s\n  {}\n  digest sha256:{}",
        report.collection,
        report.id,
        report.files,
        report.bytes as f64 / 1e6,
        report.seconds,
        report.location,
        report.digest
    );
    if let Some(r) = rollout {
        let previous = r
            .previous
            .map_or_else(|| "nothing".to_string(), |p| p.to_string());
        if r.flipped {
            println!("  pointer moved from {previous} to {}", report.id);
        } else {
            println!("  pointer left at {previous} (it is not older)");
        }
        if !r.deleted.is_empty() || !r.kept_in_use.is_empty() {
            println!(
                "  deleted {} old generation(s); kept {} a replica still serves",
                r.deleted.len(),
                r.kept_in_use.len()
            );
        }
    }
    Ok(())
}

/// Downloads a published generation, checks every file and installs it as a collection.
pub(crate) fn restore(a: RestoreArgs) -> Result<()> {
    let store = a.store.open(&a.from)?;
    let engine = backend::engine(&a.data, &ModelsDir::default(), AnswerConfig::default());
    if engine.data_dir().join(&a.name).exists() {
        bail!(
            "collection {:?} exists in {}: restore into another --data-dir, or delete it first",
            a.name,
            engine.data_dir().display()
        );
    }
    let rt = runtime()?;
    let id: GenerationId = match &a.generation {
        Some(g) => g.parse()?,
        None => rt.block_on(store.latest(&a.name))?,
    };
    let staging = engine.restore_staging()?;
    let fetched = rt.block_on(store.fetch(&a.name, id, None, &staging.path().join(&a.name)))?;
    let stats = engine.install(&a.name, &staging)?;
    if a.json {
        return print_json(&json!({
            "collection": a.name,
            "generation": id,
            "digest": fetched.digest,
            "bytes": fetched.bytes,
            "seconds": fetched.seconds,
            "documents": stats.documents,
            "chunks": stats.chunks,
            "data_dir": engine.data_dir(),
        }));
    }
    println!(
        "restored {} {} into {}: {} documents, {} chunks ({:.1} MB in {:.1}s, every file checked)",
        a.name,
        id,
        engine.data_dir().display(),
        stats.documents,
        stats.chunks,
        fetched.bytes as f64 / 1e6,
        fetched.seconds
    );
    Ok(())
}
