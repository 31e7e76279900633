//! Scratch directories that survive nobody: a temporary directory beside where its content
//! will be renamed (so the rename stays on one file system), hidden (its name starts with `.`,
//! so listings skip it), with a `<dir>.lock` file that its owner holds locked while it lives.
//! Dropping it removes both. Whatever a killed process left (a half-copied model, a half-made
//! snapshot of a collection: gigabytes) is swept by the next one that makes a scratch
//! directory in the same place: every directory of the given prefixes whose lock no live
//! process holds.

use std::path::{Path, PathBuf};

/// A scratch directory and the lock that tells other processes it is in use.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// `<dir>.lock`, exclusively locked while this lives; removed after the directory.
    _lock: tempfile::NamedTempFile,
}

impl Scratch {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Gone already when its content was renamed into place.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the scratch directories of `prefixes` in `parent`, and their lock files, that no live
/// process holds: a directory whose lock file can be locked, or that has none.
fn sweep(parent: &Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = entry.path();
        let (dir, lock) = match name.strip_suffix(".lock") {
            Some(stem) => (parent.join(stem), path),
            None => (path.clone(), parent.join(format!("{name}.lock"))),
        };
        // The lock stays held while both are removed: an owner that was about to lock it
        // waits, then finds its lock file gone and starts over.
        let held = match std::fs::File::options().write(true).open(&lock) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(Some(f)),
                Err(_) => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(None),
            Err(_) => None,
        };
        if let Some(_guard) = held {
            tracing::info!(path = %dir.display(), "removing a scratch directory a killed process left");
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&lock);
        }
    }
}

/// A new scratch directory in `parent` (created if absent) named `prefix` + a random suffix,
/// after sweeping the abandoned ones of `sweep_prefixes` (which should include `prefix`).
pub fn scratch_dir(
    parent: &Path,
    prefix: &str,
    sweep_prefixes: &[&str],
) -> std::io::Result<Scratch> {
    std::fs::create_dir_all(parent)?;
    sweep(parent, sweep_prefixes);
    // The lock first, then the directory named after it: a directory never exists unlocked
    // while its owner lives. A sweep may take a lock file in the instant before it is locked;
    // then it is gone once locked, and another is made.
    let mut attempts = 0;
    let lock = loop {
        let lock = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".lock")
            .tempfile_in(parent)?;
        lock.as_file().lock()?;
        attempts += 1;
        if lock.path().exists() || attempts >= 5 {
            break lock;
        }
    };
    let stem = lock
        .path()
        .to_string_lossy()
        .strip_suffix(".lock")
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other("a lock file without its suffix"))?;
    std::fs::create_dir(&stem)?;
    Ok(Scratch {
        dir: stem,
        _lock: lock,
    })
}
