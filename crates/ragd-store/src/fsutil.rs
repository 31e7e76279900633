//! Durable file operations: fsync'd writes, atomic replace, checksums.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// fsyncs a file's data.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(format!("syncing {}", path.display())))
}

/// fsyncs a directory so that renames and creations inside it survive a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(format!("syncing directory {}", path.display())))
}

/// Replaces `path` with `bytes` atomically: write a sibling temporary file, fsync it, rename it
/// over `path`, fsync the directory. Readers see the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let ctx = || format!("writing {}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(ctx()))?;
    f.write_all(bytes).map_err(Error::io(ctx()))?;
    f.sync_all().map_err(Error::io(ctx()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(ctx()))?;
    sync_dir(dir)
}

/// Hex sha256 of a file's content.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let ctx = || format!("reading {}", path.display());
    let mut f = std::fs::File::open(path).map_err(Error::io(ctx()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(ctx()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Recreates the tree under `src` at `dst` (which must not exist) with hard links to its files,
/// or copies where linking fails (another filesystem), leaving out names `skip` rejects.
/// Linking is a snapshot only of files that are replaced rather than modified in place, which
/// is how the generation's files are written (new names, atomic renames).
pub(crate) fn link_tree(src: &Path, dst: &Path, skip: &dyn Fn(&str) -> bool) -> Result<()> {
    std::fs::create_dir(dst).map_err(Error::io(format!("creating {}", dst.display())))?;
    let entries =
        std::fs::read_dir(src).map_err(Error::io(format!("reading {}", src.display())))?;
    for e in entries {
        let e = e.map_err(Error::io(format!("reading {}", src.display())))?;
        let name = e.file_name();
        if skip(&name.to_string_lossy()) {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&name));
        let kind = e
            .file_type()
            .map_err(Error::io(format!("reading {}", from.display())))?;
        if kind.is_dir() {
            link_tree(&from, &to, skip)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(Error::io(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
        }
    }
    Ok(())
}

/// Every file under `root`: its path relative to `root` with `/` separators, size and hex
/// sha256, sorted by path.
pub(crate) fn file_digests(root: &Path) -> Result<Vec<(String, u64, String)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64, String)>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).map_err(Error::io(format!("reading {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(Error::io(format!("reading {}", dir.display())))?;
            let p = e.path();
            let meta = e
                .metadata()
                .map_err(Error::io(format!("reading {}", p.display())))?;
            if meta.is_dir() {
                walk(root, &p, out)?;
                continue;
            }
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, meta.len(), sha256_file(&p)?));
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Total size in bytes of the files under `path`.
pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("CURRENT");
        write_atomic(&p, b"gen-1\n").unwrap();
        write_atomic(&p, b"gen-2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "gen-2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(dir_size(dir.path()), 6);
        assert_eq!(
            sha256_file(&p).unwrap(),
            hex::encode(Sha256::digest(b"gen-2\n"))
        );
    }
}
