//! Published generations on object storage.
//!
//! Layout under the store URL's path (`<root>`):
//!
//! ```text
//! <root>/collections/<name>/gen/gen-<n>-seq-<s>/docstore.redb
//!                                              /CURRENT
//!                                              /gen-<n>/manifest.json, hnsw-*.hnsw.*, bm25/…
//!                                              /publish.json        (written last)
//! ```
//!
//! A generation id names the index generation and the DocStore sequence it holds, so a
//! checkpoint that moved the sequence is published under a new id and a published prefix is
//! never written again. `publish.json` ([`PublishedGeneration`]) lists every file with its size
//! and sha256 and is uploaded only after every file is: a prefix without it is an interrupted
//! upload, invisible to [`GenerationStore::list`], and uploaded again from the start by the
//! next publish. Its sha256 (the *digest*) identifies the generation's exact content, for
//! whoever points at it.

use crate::error::{Error, Result};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use ragd_store::{CollectionSettings, Snapshot, SnapshotFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Version of [`PublishedGeneration`]'s format; a replica refuses others.
pub const MANIFEST_FORMAT: u32 = 1;
const MANIFEST: &str = "publish.json";
/// Files uploaded or downloaded at once.
const CONCURRENCY: usize = 4;
/// Part size of multipart uploads (and the most a file's upload buffers).
const PART_BYTES: usize = 8 << 20;

/// `gen-<n>-seq-<s>`: index generation `n` of a collection as of DocStore sequence `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId {
    /// The index generation (`gen-<n>` in the collection directory).
    pub generation: u64,
    /// The DocStore sequence it holds.
    pub seq: u64,
}

impl std::fmt::Display for GenerationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gen-{}-seq-{}", self.generation, self.seq)
    }
}

impl std::str::FromStr for GenerationId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let parse = || {
            let rest = s.strip_prefix("gen-")?;
            let (g, seq) = rest.split_once("-seq-")?;
            let num = |x: &str| {
                (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| x.parse().ok())
                    .flatten()
            };
            Some(Self {
                generation: num(g)?,
                seq: num(seq)?,
            })
        };
        parse().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{s:?} is not a generation id (expected gen-<generation>-seq-<sequence>, as `ragd publish` prints)"
            ))
        })
    }
}

impl Serialize for GenerationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GenerationId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `publish.json`: what a published generation holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedGeneration {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The collection's name.
    pub collection: String,
    /// Its id (also its prefix).
    pub id: GenerationId,
    /// Documents and live chunks it holds.
    pub documents: u64,
    /// Live chunks.
    pub chunks: u64,
    /// The collection's settings as built (encoder name and dimension, chunking, HNSW): a
    /// replica must embed queries with this encoder.
    pub settings: CollectionSettings,
    /// Every file, relative to the prefix, with size and sha256.
    pub files: Vec<SnapshotFile>,
    /// Seconds since the Unix epoch when it was published.
    pub published_at: u64,
    /// The ragd version that published it.
    pub ragd_version: String,
}

impl PublishedGeneration {
    /// Total size of its files in bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// What [`GenerationStore::publish`] did.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The collection.
    pub collection: String,
    /// The generation id.
    pub id: GenerationId,
    /// Hex sha256 of its `publish.json`.
    pub digest: String,
    /// Where it is (`<store url>/collections/<name>/gen/<id>`).
    pub location: String,
    /// Files and bytes it holds.
    pub files: usize,
    /// Bytes it holds.
    pub bytes: u64,
    /// Bytes this call uploaded: 0 when the generation was published already.
    pub uploaded_bytes: u64,
    /// True when the id was published already (by an earlier call): nothing was written.
    pub already_published: bool,
    /// Seconds the upload took.
    pub seconds: f64,
}

impl PublishReport {
    /// The pointer that names this generation (what replicas follow once it is flipped).
    pub fn pointer(&self) -> crate::etcd::Pointer {
        crate::etcd::Pointer {
            id: self.id,
            digest: self.digest.clone(),
        }
    }
}

/// What [`GenerationStore::fetch`] brought.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The generation's manifest.
    pub manifest: PublishedGeneration,
    /// Hex sha256 of its `publish.json`.
    pub digest: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Seconds the download and verification took.
    pub seconds: f64,
}

/// An object store holding published generations, with the path under which they live.
#[derive(Debug, Clone)]
pub struct GenerationStore {
    store: Arc<dyn ObjectStore>,
    root: Key,
    url: String,
}

/// Retries of a failed request (connection refused, 5xx, throttling): a few, within 30 s, so a
/// store that is down is reported while the caller can still act (a replica keeps serving its
/// last generation and tries again later) rather than after object_store's default 3 minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

/// object_store's HTTP client takes TLS from rustls's process-wide provider: ring, which the
/// rest of ragd's TLS (tonic, ureq) uses too.
pub(crate) fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err: the process installed one already, which then serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl GenerationStore {
    /// The store at `url`: `s3://bucket/path`, `gs://bucket/path`, `az://container/path` (and the
    /// other forms object_store parses), `file:///abs/dir` or an absolute directory path.
    /// Credentials and endpoints come from `options` (object_store's keys: `aws_endpoint`,
    /// `aws_access_key_id`, `aws_allow_http`, `google_service_account`, `azure_storage_account_name`,
    /// …), and from the environment's `AWS_*`, `GOOGLE_*` and `AZURE_*` variables where `options`
    /// does not set them. Nothing is contacted until an operation runs.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        install_tls_provider();
        let parsed = if url.starts_with('/') {
            url::Url::from_directory_path(url)
                .map_err(|()| Error::InvalidInput(format!("{url:?} is not a directory path")))?
        } else {
            url::Url::parse(url).map_err(|e| {
                Error::InvalidInput(format!(
                    "object store URL {url:?}: {e} (expected s3://bucket/path, gs://…, az://…, file:///dir or /dir)"
                ))
            })?
        };
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| Error::InvalidInput(format!("{url:?} is not a local path")))?;
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let mut opts: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                ["AWS_", "GOOGLE_", "AZURE_"]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        opts.extend(
            options
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
        );
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidInput(format!("object store URL {url:?}: {e}"))
        };
        let (scheme, root) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(&e))?;
        // Each builder reads the keys it knows; any key none of them knows is refused, so a
        // misspelt option is not silently ignored.
        let mut unknown: Vec<&String> = Vec::new();
        macro_rules! build {
            ($builder:expr, $key:ty) => {{
                let mut b = $builder.with_url(parsed.as_str()).with_retry(retry());
                for (k, v) in &opts {
                    match k.parse::<$key>() {
                        Ok(key) => b = b.with_config(key, v.clone()),
                        Err(_) if options.contains_key(k) => unknown.push(k),
                        Err(_) => {}
                    }
                }
                Arc::new(b.build().map_err(|e| bad(&e))?) as Arc<dyn ObjectStore>
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            // Deleting a generation's files leaves no empty directories behind.
            ObjectStoreScheme::Local => {
                Arc::new(object_store::local::LocalFileSystem::new().with_automatic_cleanup(true))
            }
            ObjectStoreScheme::AmazonS3 => build!(
                object_store::aws::AmazonS3Builder::new(),
                object_store::aws::AmazonS3ConfigKey
            ),
            ObjectStoreScheme::GoogleCloudStorage => build!(
                object_store::gcp::GoogleCloudStorageBuilder::new(),
                object_store::gcp::GoogleConfigKey
            ),
            ObjectStoreScheme::MicrosoftAzure => build!(
                object_store::azure::MicrosoftAzureBuilder::new(),
                object_store::azure::AzureConfigKey
            ),
            other => {
                return Err(bad(&format!(
                    "{other:?} stores are not supported (expected s3://bucket/path, gs://…, az://…, file:///dir or /dir)"
                )));
            }
        };
        if !unknown.is_empty() {
            return Err(Error::InvalidInput(format!(
                "unknown object store option(s) {unknown:?} for {url:?}"
            )));
        }
        Ok(Self {
            store,
            root,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rel: &str) -> Key {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |k, p| k.join(p))
    }

    fn gen_prefix(collection: &str, id: GenerationId) -> String {
        format!("collections/{collection}/gen/{id}")
    }

    fn failed(&self, context: String) -> impl FnOnce(object_store::Error) -> Error + '_ {
        move |source| Error::Store {
            url: self.url.clone(),
            context,
            source: Box::new(source),
        }
    }

    /// Uploads `snapshot`, written at `dir` by [`ragd_store::Collection::snapshot`], as
    /// collection `collection`'s generation: every file, then `publish.json`. An id published
    /// already is left as it is (and reported so).
    pub async fn publish(
        &self,
        collection: &str,
        dir: &Path,
        snapshot: &Snapshot,
    ) -> Result<PublishReport> {
        ragd_store::validate_name(collection)?;
        let t0 = Instant::now();
        let id = GenerationId {
            generation: snapshot.manifest.generation,
            seq: snapshot.seq,
        };
        let prefix = Self::gen_prefix(collection, id);
        let manifest = PublishedGeneration {
            format: MANIFEST_FORMAT,
            collection: collection.to_string(),
            id,
            documents: snapshot.manifest.documents,
            chunks: snapshot.manifest.chunks,
            settings: snapshot.manifest.settings.clone(),
            files: snapshot.files.clone(),
            published_at: ragd_core::unix_now(),
            ragd_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let mut report = PublishReport {
            collection: collection.to_string(),
            id,
            digest: String::new(),
            location: format!("{}/{prefix}", self.url),
            files: manifest.files.len(),
            bytes: manifest.bytes(),
            uploaded_bytes: 0,
            already_published: false,
            seconds: 0.0,
        };
        if let Some((_, digest)) = self.manifest_if_any(collection, id).await? {
            report.digest = digest;
            report.already_published = true;
            report.seconds = t0.elapsed().as_secs_f64();
            return Ok(report);
        }
        // Collected first: a lazy `map` adapter held across awaits makes the future's `Send`
        // unprovable for the server's spawned tasks (a higher-ranked lifetime).
        let uploads: Vec<_> = manifest
            .files
            .iter()
            .map(|f| {
                let key = self.key(&format!("{prefix}/{}", f.path));
                self.upload(dir.join(&f.path), key, f.bytes)
            })
            .collect();
        let mut done = futures_util::stream::iter(uploads).buffer_unordered(CONCURRENCY);
        while let Some(r) = done.next().await {
            report.uploaded_bytes += r?;
        }
        drop(done);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Corrupt {
            what: prefix.clone(),
            reason: format!("encoding {MANIFEST}: {e}"),
        })?;
        report.digest = hex::encode(Sha256::digest(&json));
        let key = self.key(&format!("{prefix}/{MANIFEST}"));
        let put = self
            .store
            .put_opts(
                &key,
                PutPayload::from(json.clone()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => {}
            // Published by someone else meanwhile: theirs stands.
            Err(object_store::Error::AlreadyExists { .. }) => {
                let (_, digest) = self
                    .manifest_if_any(collection, id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("{prefix}/{MANIFEST}")))?;
                report.digest = digest;
                report.already_published = true;
            }
            // A store without conditional writes: checked above that none exists.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store
                    .put(&key, PutPayload::from(json))
                    .await
                    .map_err(self.failed(format!("writing {key}")))?;
            }
            Err(e) => return Err(self.failed(format!("writing {key}"))(e)),
        }
        report.seconds = t0.elapsed().as_secs_f64();
        tracing::info!(collection, id = %id, bytes = report.bytes, uploaded = report.uploaded_bytes, seconds = report.seconds, "generation published");
        Ok(report)
    }

    /// Uploads one file; multipart past [`PART_BYTES`]. Returns the bytes sent.
    async fn upload(&self, from: PathBuf, key: Key, bytes: u64) -> Result<u64> {
        let ctx = || format!("uploading {} to {key}", from.display());
        let mut file = tokio::fs::File::open(&from)
            .await
            .map_err(Error::io(ctx()))?;
        let mut w = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(&self.store),
            key.clone(),
            PART_BYTES,
        );
        let copied = tokio::io::copy(&mut file, &mut w).await;
        let closed = match copied {
            Ok(_) => w.shutdown().await,
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        };
        closed.map_err(|e| match store_error(e) {
            Ok(source) => Error::Store {
                url: self.url.clone(),
                context: ctx(),
                source: Box::new(source),
            },
            Err(e) => Error::io(ctx())(e),
        })?;
        Ok(bytes)
    }

    /// `publish.json` of `collection`'s generation `id` and its digest, or `None` when that
    /// generation is not (completely) published.
    async fn manifest_if_any(
        &self,
        collection: &str,
        id: GenerationId,
    ) -> Result<Option<(PublishedGeneration, String)>> {
        let key = self.key(&format!("{}/{MANIFEST}", Self::gen_prefix(collection, id)));
        let got = match self.store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(format!("reading {key}"))(e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(self.failed(format!("reading {key}")))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let m: PublishedGeneration =
            serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: key.to_string(),
                reason: format!("does not parse: {e}"),
            })?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Corrupt {
                what: key.to_string(),
                reason: format!(
                    "format {} (this ragd reads format {MANIFEST_FORMAT}: upgrade it)",
                    m.format
                ),
            });
        }
        if m.collection != collection || m.id != id {
            return Err(Error::Corrupt {
                what: key.to_string(),
                reason: format!(
                    "it describes {}/{}, not {collection}/{id}",
                    m.collection, m.id
                ),
            });
        }
        Ok(Some((m, digest)))
    }

    /// `publish.json` of `collection`'s generation `id` and its digest.
    pub async fn describe(
        &self,
        collection: &str,
        id: GenerationId,
    ) -> Result<(PublishedGeneration, String)> {
        self.manifest_if_any(collection, id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "generation {id} of collection {collection:?} is not published in {}",
                self.url
            ))
        })
    }

    /// The collections that have anything published, sorted.
    pub async fn collections(&self) -> Result<Vec<String>> {
        let prefix = self.key("collections");
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(self.failed(format!("listing {prefix}")))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter(|n| ragd_store::validate_name(n).is_ok())
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The completely published generations of `collection` (those with a `publish.json`),
    /// oldest first.
    pub async fn list(&self, collection: &str) -> Result<Vec<GenerationId>> {
        ragd_store::validate_name(collection)?;
        let prefix = self.key(&format!("collections/{collection}/gen"));
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(self.failed(format!("listing {prefix}")))?;
        let mut ids: Vec<GenerationId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| n.parse().ok()))
            .collect();
        ids.sort();
        let mut complete = Vec::with_capacity(ids.len());
        for id in ids {
            let key = self.key(&format!("{}/{MANIFEST}", Self::gen_prefix(collection, id)));
            match self.store.head(&key).await {
                Ok(_) => complete.push(id),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed(format!("reading {key}"))(e)),
            }
        }
        Ok(complete)
    }

    /// The newest completely published generation of `collection`.
    pub async fn latest(&self, collection: &str) -> Result<GenerationId> {
        self.list(collection).await?.pop().ok_or_else(|| {
            Error::NotFound(format!(
                "no generation of collection {collection:?} is published in {} (publish one with `ragd publish {collection} --to {}`)",
                self.url, self.url
            ))
        })
    }

    /// Deletes `collection`'s generation `id`: `publish.json` first, so it stops being a
    /// generation before any of its files goes, then every object under its prefix.
    pub async fn delete(&self, collection: &str, id: GenerationId) -> Result<()> {
        let prefix = self.key(&Self::gen_prefix(collection, id));
        let manifest = self.key(&format!("{}/{MANIFEST}", Self::gen_prefix(collection, id)));
        match self.store.delete(&manifest).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.failed(format!("deleting {manifest}"))(e)),
        }
        let keys: Vec<Key> = self
            .store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(self.failed(format!("listing {prefix}")))?;
        for k in keys {
            match self.store.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed(format!("deleting {k}"))(e)),
            }
        }
        Ok(())
    }

    /// Downloads `collection`'s generation `id` into `dest` (created; must not exist), laid
    /// out as a collection directory, checking every file's size and sha256 against
    /// `publish.json` — and, when `digest` is given, `publish.json` itself against it (what a
    /// pointer to the generation names). Nothing is left at `dest` when it fails.
    pub async fn fetch(
        &self,
        collection: &str,
        id: GenerationId,
        digest: Option<&str>,
        dest: &Path,
    ) -> Result<Fetched> {
        let t0 = Instant::now();
        let (manifest, got_digest) = self.describe(collection, id).await?;
        if let Some(want) = digest
            && want != got_digest
        {
            return Err(Error::Corrupt {
                what: format!("{collection}/{id}"),
                reason: format!("{MANIFEST} has sha256 {got_digest}, expected {want}"),
            });
        }
        for f in &manifest.files {
            safe_relative(&f.path).map_err(|reason| Error::Corrupt {
                what: format!("{collection}/{id}"),
                reason,
            })?;
        }
        tokio::fs::create_dir(dest)
            .await
            .map_err(Error::io(format!("creating {}", dest.display())))?;
        let prefix = Self::gen_prefix(collection, id);
        let downloads: Vec<_> = manifest
            .files
            .iter()
            .map(|f| {
                let key = self.key(&format!("{prefix}/{}", f.path));
                self.download(key, dest.join(&f.path), f)
            })
            .collect();
        let mut done = futures_util::stream::iter(downloads).buffer_unordered(CONCURRENCY);
        let mut bytes = 0;
        let mut failure = None;
        while let Some(r) = done.next().await {
            match r {
                Ok(n) => bytes += n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(done);
        if let Some(e) = failure {
            let _ = tokio::fs::remove_dir_all(dest).await;
            return Err(e);
        }
        Ok(Fetched {
            manifest,
            digest: got_digest,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Downloads one object to `to`, hashing as it goes; fails unless size and sha256 are
    /// `want`'s.
    async fn download(&self, key: Key, to: PathBuf, want: &SnapshotFile) -> Result<u64> {
        let ctx = || format!("writing {}", to.display());
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::io(ctx()))?;
        }
        let got = self
            .store
            .get(&key)
            .await
            .map_err(self.failed(format!("reading {key}")))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(&to)
            .await
            .map_err(Error::io(ctx()))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.failed(format!("reading {key}")))?;
            n += chunk.len() as u64;
            if n > want.bytes {
                break;
            }
            h.update(&chunk);
            file.write_all(&chunk).await.map_err(Error::io(ctx()))?;
        }
        file.sync_all().await.map_err(Error::io(ctx()))?;
        let sha = hex::encode(h.finalize());
        if n != want.bytes || sha != want.sha256 {
            return Err(Error::Corrupt {
                what: key.to_string(),
                reason: if n != want.bytes {
                    format!("{n}+ bytes, {MANIFEST} says {}", want.bytes)
                } else {
                    format!("sha256 is {sha}, {MANIFEST} says {}", want.sha256)
                },
            });
        }
        Ok(n)
    }
}

/// object_store's writer reports its errors as `io::Error`s wrapping the store's.
fn store_error(e: std::io::Error) -> std::result::Result<object_store::Error, std::io::Error> {
    match e.get_ref().map(|inner| inner.is::<object_store::Error>()) {
        Some(true) => match e.into_inner().map(|b| b.downcast::<object_store::Error>()) {
            Some(Ok(b)) => Ok(*b),
            _ => Err(std::io::Error::other("object store write failed")),
        },
        _ => Err(e),
    }
}

/// A manifest's file path must stay inside the directory it is fetched to.
fn safe_relative(p: &str) -> std::result::Result<(), String> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!("file path {p:?} leaves the generation's directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_ids_round_trip_and_order_by_number() {
        let id: GenerationId = "gen-12-seq-3400".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            id,
            GenerationId {
                generation: 12,
                seq: 3400
            }
        );
        assert_eq!(id.to_string(), "gen-12-seq-3400");
        let older: GenerationId = "gen-2-seq-99999".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(older < id);
        for bad in [
            "gen-1",
            "gen--seq-1",
            "gen-1-seq-",
            "gen-+1-seq-2",
            "x-1-seq-2",
            "gen-1-seq-2/",
        ] {
            assert!(bad.parse::<GenerationId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_paths_cannot_leave_the_destination() {
        for ok in ["CURRENT", "gen-3/bm25/meta.json", ".managed.json"] {
            assert!(safe_relative(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "gen-3/../../x",
            "a//b",
            "a\\b",
            "./a",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }
}
