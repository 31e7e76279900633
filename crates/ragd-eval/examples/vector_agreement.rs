//! How closely two collections built from the same documents agree, chunk by chunk: the cosine
//! between the stored vectors of every chunk present in both (matched by document id and chunk
//! position, with the same byte range). Used to check an int8 collection against an f32 one
//! over every chunk of a corpus (issue 15's quality gate, cosine ≥ 0.99):
//!
//! ```sh
//! cargo run --release -p ragd-eval --example vector_agreement -- DATA_DIR_A DATA_DIR_B COLLECTION
//! ```
//!
//! Prints one JSON line: chunks compared, chunks unmatched, min / p0.1 / p1 / mean cosine, and
//! how many fall below 0.99.

use anyhow::{Context, Result, bail};
use ragd_store::{Collection, dot};
use std::collections::HashMap;
use std::path::Path;

/// A chunk: document id, position in the document, byte range.
type ChunkKey = (String, u32, usize, usize);

/// Every live chunk's vector.
fn vectors(dir: &Path, name: &str) -> Result<HashMap<ChunkKey, Vec<f32>>> {
    let c = Collection::open(dir, name).with_context(|| format!("opening {}", dir.display()))?;
    let live = c.live_vectors()?;
    let ids: Vec<u64> = live.iter().map(|(id, _)| *id).collect();
    let records: HashMap<u64, ragd_store::ChunkRecord> = c.chunks(&ids)?.into_iter().collect();
    Ok(live
        .into_iter()
        .filter_map(|(id, v)| {
            let r = records.get(&id)?;
            Some(((r.doc_id.clone(), r.ordinal, r.span.start, r.span.end), v))
        })
        .collect())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b, name] = args.as_slice() else {
        bail!("usage: vector_agreement DATA_DIR_A DATA_DIR_B COLLECTION");
    };
    let (va, vb) = (vectors(Path::new(a), name)?, vectors(Path::new(b), name)?);
    let mut cos: Vec<f32> = va
        .iter()
        .filter_map(|(k, x)| {
            let y = vb.get(k)?;
            Some(dot(x, y) / (dot(x, x).sqrt() * dot(y, y).sqrt()))
        })
        .collect();
    if cos.is_empty() {
        bail!("the two collections share no chunk");
    }
    cos.sort_by(f32::total_cmp);
    let at = |q: f64| cos[((cos.len() - 1) as f64 * q) as usize];
    let mean = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
    let report = serde_json::json!({
        "compared": cos.len(),
        "only_in_a": va.len() - cos.len(),
        "only_in_b": vb.len() - cos.len(),
        "min": cos[0],
        "p0.1": at(0.001),
        "p1": at(0.01),
        "mean": mean,
        "below_0.99": cos.iter().filter(|&&c| c < 0.99).count(),
    });
    println!("{report}");
    Ok(())
}
