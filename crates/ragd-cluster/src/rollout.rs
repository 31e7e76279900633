//! Moving a collection's pointer to a newly published generation, and deleting the published
//! generations nobody needs any more.

use crate::error::Result;
use crate::etcd::{Etcd, Pointer};
use crate::generations::{GenerationId, GenerationStore};
use serde::Serialize;

/// Compare-and-swap attempts before giving up (each re-reads the pointer first).
const FLIP_ATTEMPTS: usize = 5;

/// What [`point_and_prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rollout {
    /// The pointer moved to the new generation.
    pub flipped: bool,
    /// What it named before (or still names, when it was at least as new).
    pub previous: Option<GenerationId>,
    /// Published generations deleted.
    pub deleted: Vec<GenerationId>,
    /// Old generations kept because a live replica still serves them.
    pub kept_in_use: Vec<GenerationId>,
}

/// Points `collection` at `to` in etcd unless it names that generation or a newer one
/// already (compare-and-swap; when someone else moved it meanwhile, read again and decide
/// again), then deletes from `store` the published generations of `collection` older than the
/// `keep` newest that no live replica serves (their lease-bound keys) and that the pointer does
/// not name. `keep` is at least 1.
pub async fn point_and_prune(
    etcd: &Etcd,
    store: &GenerationStore,
    collection: &str,
    to: &Pointer,
    keep: usize,
) -> Result<Rollout> {
    let mut out = Rollout::default();
    for attempt in 1..=FLIP_ATTEMPTS {
        let current = etcd.current(collection).await?;
        out.previous = current.as_ref().map(|c| c.pointer.id);
        if current.as_ref().is_some_and(|c| c.pointer.id >= to.id) {
            break;
        }
        if etcd
            .flip(collection, current.map(|c| c.mod_revision), to)
            .await?
        {
            out.flipped = true;
            tracing::info!(collection, generation = %to.id, previous = ?out.previous, "pointer moved");
            break;
        }
        if attempt == FLIP_ATTEMPTS {
            return Err(crate::Error::Etcd(format!(
                "the pointer of {collection:?} kept moving under {FLIP_ATTEMPTS} compare-and-swap attempts"
            )));
        }
    }
    let pointed = etcd.current(collection).await?.map(|c| c.pointer.id);
    let in_use: Vec<GenerationId> = etcd
        .serving(collection)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let published = store.list(collection).await?;
    let old = published.len().saturating_sub(keep.max(1));
    for id in &published[..old] {
        if Some(*id) == pointed {
            continue;
        }
        if in_use.contains(id) {
            out.kept_in_use.push(*id);
            continue;
        }
        store.delete(collection, *id).await?;
        out.deleted.push(*id);
    }
    Ok(out)
}
