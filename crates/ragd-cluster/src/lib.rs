//! ragd on existing distributed engines.
//!
//! [`GenerationStore`]: a collection's index generations published to object storage (S3 and
//! S3-compatible stores, Google Cloud Storage, Azure Blob Storage, a local directory; the
//! `object_store` crate) under an immutable prefix, manifest last, and fetched back with every
//! byte checked. A published generation is a [`ragd_store::Collection::snapshot`]: the DocStore
//! as of the generation's sequence and the generation's indexes, laid out as a collection
//! directory, so whoever fetches it (a read replica, a writer recovering from the loss of its
//! disk) opens it as a collection with nothing to replay.
//!
//! [`Etcd`]: the one pointer per collection that must be consistent — which published
//! generation replicas serve — moved by compare-and-swap, and the replicas' lease-bound keys
//! naming what they serve; [`point_and_prune`] moves the pointer after a publish and deletes old
//! generations no replica serves.
//!
//! Everything here is async (object_store's API); nothing blocks the runtime's workers except
//! the local file hashing of a download, which is streamed.

mod error;
mod etcd;
mod generations;
mod rollout;
pub mod testing;

pub use error::{Error, Result};
pub use etcd::{Current, ETCD_PREFIX, Etcd, Pointer};
pub use generations::{
    Fetched, GenerationId, GenerationStore, MANIFEST_FORMAT, PublishReport, PublishedGeneration,
};
pub use rollout::{Rollout, point_and_prune};
