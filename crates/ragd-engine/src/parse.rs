//! Turning files into documents: plain text, Markdown, HTML (html2text), PDF (pdf-extract) and
//! JSONL in the BEIR corpus layout, found by walking directories with include/exclude globs.
//!
//! A file that cannot become a document — not UTF-8, empty, over the size limit, unparseable —
//! is a [`Failure`] naming the file and the reason; it never stops the rest of the batch.

use crate::error::{Error, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use ragd_core::{DocumentInput, Metadata};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Formats ragd reads, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.txt`, `.text`
    Text,
    /// `.md`, `.markdown`
    Markdown,
    /// `.html`, `.htm`
    Html,
    /// `.pdf`
    Pdf,
    /// `.jsonl`: one document per line, BEIR corpus layout.
    Jsonl,
}

impl Format {
    /// The format for a path's extension, if ragd reads it.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            "html" | "htm" => Self::Html,
            "pdf" => Self::Pdf,
            "jsonl" => Self::Jsonl,
            _ => return None,
        })
    }
}

/// A document that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The file (or `file:line` for JSONL).
    pub source: String,
    /// What was wrong, for the person who supplied it.
    pub reason: String,
}

/// A parsed document and how to chunk it.
#[derive(Debug, Clone)]
pub struct ParsedDoc {
    /// The document.
    pub doc: DocumentInput,
    /// Split on Markdown structure rather than plain-text boundaries.
    pub markdown: bool,
}

/// Where documents come from.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Only files matching one of these globs (relative to the walked directory) are taken from
    /// directories; empty means every file of a supported format.
    pub include: Vec<String>,
    /// Files matching one of these are skipped.
    pub exclude: Vec<String>,
    /// Largest document accepted, in bytes of text (per line for JSONL).
    pub max_document_bytes: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            include: vec![],
            exclude: vec![],
            max_document_bytes: 16 << 20,
        }
    }
}

/// One input file and the document id prefix it gets.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path to read.
    pub path: PathBuf,
    /// Its format (None: unsupported, reported as a failure).
    pub format: Option<Format>,
    /// Document id: the path as given, or under a given directory (`docs/a/b.md`).
    pub id: String,
}

fn globset(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p).map_err(|e| Error::InvalidInput(format!("glob {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::InvalidInput(format!("globs: {e}")))
}

/// A path as a document id: `/` separators, no leading `./`.
fn path_id(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    let mut s = s.as_str();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.to_string()
}

/// Expands `paths`: files as given, directories walked recursively (sorted, hidden entries
/// skipped) keeping supported formats that pass the globs. A path that does not exist is an
/// error for the whole call: it is a typo, not a bad document.
pub fn collect_sources(paths: &[PathBuf], opts: &SourceOptions) -> Result<Vec<SourceFile>> {
    let include = globset(&opts.include)?;
    let exclude = globset(&opts.exclude)?;
    let mut out = Vec::new();
    for root in paths {
        let meta = std::fs::metadata(root)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", root.display())))?;
        if !meta.is_dir() {
            out.push(SourceFile {
                path: root.clone(),
                format: Format::of(root),
                id: path_id(root),
            });
            continue;
        }
        let walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walker {
            let entry = entry
                .map_err(|e| Error::InvalidInput(format!("walking {}: {e}", root.display())))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            let format = Format::of(entry.path());
            if format.is_none() && include.is_none() {
                continue;
            }
            if include.as_ref().is_some_and(|g| !g.is_match(rel)) {
                continue;
            }
            if exclude.as_ref().is_some_and(|g| g.is_match(rel)) {
                continue;
            }
            out.push(SourceFile {
                path: entry.path().to_path_buf(),
                format,
                id: path_id(entry.path()),
            });
        }
    }
    Ok(out)
}

/// How many documents a source will yield (lines for JSONL), for progress reporting.
pub fn estimate_documents(src: &SourceFile) -> u64 {
    if src.format != Some(Format::Jsonl) {
        return 1;
    }
    std::fs::File::open(&src.path)
        .map(|f| {
            std::io::BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .filter(|l| !l.trim().is_empty())
                .count() as u64
        })
        .unwrap_or(1)
}

/// Reads one source, calling `emit` for each document or failure in order (JSONL streams line
/// by line, so a large corpus is never held whole).
pub fn read_source(
    src: &SourceFile,
    opts: &SourceOptions,
    emit: &mut dyn FnMut(std::result::Result<ParsedDoc, Failure>) -> Result<()>,
) -> Result<()> {
    let source = src.path.display().to_string();
    let fail = |reason: String| Failure {
        source: source.clone(),
        reason,
    };
    let Some(format) = src.format else {
        return emit(Err(fail(
            "unsupported file type (ragd reads .txt, .md, .html, .pdf and .jsonl)".into(),
        )));
    };
    if format == Format::Jsonl {
        return read_jsonl(src, opts, emit);
    }
    let size = std::fs::metadata(&src.path).map(|m| m.len()).unwrap_or(0);
    // PDFs hold far more bytes than text; the text limit is checked after extraction.
    let raw_limit = if format == Format::Pdf {
        opts.max_document_bytes.saturating_mul(8)
    } else {
        opts.max_document_bytes
    };
    if size as usize > raw_limit {
        return emit(Err(fail(format!(
            "{size} bytes is over the limit of {raw_limit} bytes"
        ))));
    }
    let bytes = match std::fs::read(&src.path) {
        Ok(b) => b,
        Err(e) => return emit(Err(fail(format!("cannot read: {e}")))),
    };
    let stem = src
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doc = parse_bytes(
        &src.id,
        &source,
        &stem,
        format,
        bytes,
        opts.max_document_bytes,
    );
    emit(doc.map_err(fail))
}

/// Parses one document held in memory (`Jsonl` is not a single document and is refused).
/// `fallback_title` is used when the format carries no title. The error is the reason, for a
/// per-document failure.
pub fn parse_bytes(
    id: &str,
    source: &str,
    fallback_title: &str,
    format: Format,
    bytes: Vec<u8>,
    max_document_bytes: usize,
) -> std::result::Result<ParsedDoc, String> {
    let stem = fallback_title.to_string();
    let (title, text) = match format {
        Format::Text => utf8(bytes).map(|t| (stem, t)),
        Format::Markdown => utf8(bytes).map(|t| (markdown_title(&t).unwrap_or(stem), t)),
        Format::Html => html(&bytes).map(|(title, t)| (title.unwrap_or(stem), t)),
        Format::Pdf => pdf(&bytes).map(|t| (stem, t)),
        Format::Jsonl => Err("a JSONL file holds many documents; send them one by one".into()),
    }?;
    check_text(&text, max_document_bytes)?;
    // A title found in the content (a heading, <title>) is cut to the bound, not refused.
    let title = ragd_core::truncate_utf8(&title, ragd_core::MAX_TITLE_BYTES).to_string();
    Ok(ParsedDoc {
        doc: DocumentInput {
            id: id.to_string(),
            source: source.to_string(),
            title,
            text,
            metadata: Metadata::new(),
        },
        markdown: format == Format::Markdown,
    })
}

fn check_text(text: &str, max: usize) -> std::result::Result<(), String> {
    if text.trim().is_empty() {
        return Err("the document is empty (no text after parsing)".into());
    }
    if text.len() > max {
        return Err(format!(
            "{} bytes of text is over the limit of {max} bytes",
            text.len()
        ));
    }
    Ok(())
}

fn utf8(bytes: Vec<u8>) -> std::result::Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The first ATX heading of level 1, if the document starts its text with one.
fn markdown_title(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("---"))
        .and_then(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn html(bytes: &[u8]) -> std::result::Result<(Option<String>, String), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let title = html_title(text);
    let body = html2text::config::plain_no_decorate()
        .link_footnotes(false)
        .string_from_read(text.as_bytes(), 10_000)
        .map_err(|e| format!("cannot extract text from HTML: {e}"))?;
    Ok((title, body))
}

/// The `<title>` element's text, whitespace collapsed.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = html2text::config::plain_no_decorate()
        .string_from_read(&html.as_bytes()[start..end], 10_000)
        .ok()?;
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

fn pdf(bytes: &[u8]) -> std::result::Result<String, String> {
    // pdf-extract panics on some malformed files; a bad upload must not take the process down.
    let out = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes));
    match out {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("cannot extract text from PDF: {e}")),
        Err(_) => Err("cannot extract text from PDF: the file is malformed".into()),
    }
}

#[derive(serde::Deserialize)]
struct BeirLine {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    #[serde(default)]
    title: String,
    text: String,
    #[serde(default)]
    metadata: Metadata,
}

fn read_jsonl(
    src: &SourceFile,
    opts: &SourceOptions,
    emit: &mut dyn FnMut(std::result::Result<ParsedDoc, Failure>) -> Result<()>,
) -> Result<()> {
    let source = src.path.display().to_string();
    let file = match std::fs::File::open(&src.path) {
        Ok(f) => f,
        Err(e) => {
            return emit(Err(Failure {
                source,
                reason: format!("cannot read: {e}"),
            }));
        }
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(|e| Error::Io {
            context: format!("reading {source}"),
            source: e,
        })?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = format!("{source}:{n}");
        let fail = |reason: String| Failure {
            source: at.clone(),
            reason,
        };
        let parsed = (|| -> std::result::Result<ParsedDoc, String> {
            if line.len() > opts.max_document_bytes {
                return Err(format!(
                    "{} bytes is over the limit of {} bytes",
                    line.len(),
                    opts.max_document_bytes
                ));
            }
            let text = std::str::from_utf8(&line).map_err(|e| {
                format!(
                    "not valid UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                )
            })?;
            let l: BeirLine = serde_json::from_str(text)
                .map_err(|e| format!("not a BEIR corpus line ({{\"_id\", \"text\", ...}}): {e}"))?;
            let id = match l.id {
                serde_json::Value::String(s) if !s.trim().is_empty() => s,
                serde_json::Value::Number(n) => n.to_string(),
                _ => return Err("\"_id\" must be a non-empty string or a number".into()),
            };
            check_text(&l.text, opts.max_document_bytes)?;
            let doc = DocumentInput {
                id,
                source: at.clone(),
                title: l.title,
                text: l.text,
                metadata: l.metadata,
            };
            doc.check_bounds()?;
            Ok(ParsedDoc {
                doc,
                markdown: false,
            })
        })();
        emit(parsed.map_err(fail))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        src: &SourceFile,
        opts: &SourceOptions,
    ) -> Vec<std::result::Result<ParsedDoc, Failure>> {
        let mut out = vec![];
        read_source(src, opts, &mut |r| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn formats_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "plain words").unwrap();
        std::fs::write(d.join("b.md"), "# Heading\n\nBody text.").unwrap();
        std::fs::write(
            d.join("c.html"),
            "<html><head><title>The  Page</title><style>p{}</style></head><body><h1>Hi</h1><p>Para &amp; more</p><script>var x;</script></body></html>",
        )
        .unwrap();
        std::fs::write(d.join("bad.txt"), [0xff, 0xfe, b'a']).unwrap();
        std::fs::write(d.join("empty.md"), "  \n\n").unwrap();
        std::fs::write(d.join("broken.pdf"), "%PDF-1.4 not really").unwrap();
        std::fs::write(d.join("skip.bin"), "x").unwrap();
        std::fs::create_dir(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/x.txt"), "hidden").unwrap();
        std::fs::write(
            d.join("c.jsonl"),
            "{\"_id\":\"d1\",\"title\":\"T\",\"text\":\"one\",\"metadata\":{\"k\":\"v\"}}\n\n{\"_id\":7,\"text\":\"two\"}\nnot json\n{\"_id\":\"\",\"text\":\"x\"}\n",
        )
        .unwrap();
        let opts = SourceOptions::default();
        let srcs = collect_sources(&[d.to_path_buf()], &opts).unwrap();
        let names: Vec<_> = srcs
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "a.txt",
                "b.md",
                "bad.txt",
                "broken.pdf",
                "c.html",
                "c.jsonl",
                "empty.md"
            ]
        );
        let mut docs = vec![];
        let mut fails = vec![];
        for s in &srcs {
            for r in read_all(s, &opts) {
                match r {
                    Ok(p) => docs.push(p),
                    Err(f) => fails.push(f),
                }
            }
        }
        let ids: Vec<_> = docs.iter().map(|p| p.doc.id.as_str()).collect();
        let root = path_id(d);
        assert_eq!(
            ids,
            [
                format!("{root}/a.txt"),
                format!("{root}/b.md"),
                format!("{root}/c.html"),
                "d1".into(),
                "7".into()
            ]
        );
        assert_eq!(docs[0].doc.title, "a");
        assert_eq!(docs[1].doc.title, "Heading");
        assert!(docs[1].markdown);
        assert_eq!(docs[2].doc.title, "The Page");
        assert!(
            docs[2].doc.text.contains("Para & more"),
            "{:?}",
            docs[2].doc.text
        );
        assert!(
            !docs[2].doc.text.contains("var x"),
            "{:?}",
            docs[2].doc.text
        );
        assert_eq!(docs[3].doc.metadata["k"], "v");
        let reasons: Vec<_> = fails
            .iter()
            .map(|f| {
                (
                    f.source.rsplit('/').next().unwrap().to_string(),
                    f.reason.clone(),
                )
            })
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons[0].0 == "bad.txt" && reasons[0].1.contains("UTF-8"));
        assert!(reasons[1].0 == "broken.pdf" && reasons[1].1.contains("PDF"));
        assert!(reasons[2].0 == "c.jsonl:4" && reasons[2].1.contains("BEIR"));
        assert!(reasons[3].0 == "c.jsonl:5" && reasons[3].1.contains("_id"));
        assert!(reasons[4].0 == "empty.md" && reasons[4].1.contains("empty"));
    }

    /// A one-page PDF with `text` in Helvetica, cross-reference offsets computed.
    fn tiny_pdf(text: &str) -> Vec<u8> {
        let stream = format!("BT /F1 18 Tf 72 712 Td ({text}) Tj ET");
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
            format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
        ];
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = vec![];
        for (i, o) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).bytes());
        }
        let xref = out.len();
        out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
        for off in offsets {
            out.extend(format!("{off:010} 00000 n \n").bytes());
        }
        out.extend(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .bytes(),
        );
        out
    }

    /// Runs `f` on its own thread: `Err` when it panicked past the parser's own guard or did
    /// not finish within 20 s (a hang).
    fn guarded<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::result::Result<T, &'static str> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err("a panic escaped the parser"),
            Err(_) => Err("the parser hung (> 20 s)"),
        }
    }

    /// `base` damaged by `edits` (overwrite, insert or delete a byte at a position) and cut at
    /// `cut` (when below its length).
    fn damage(mut b: Vec<u8>, edits: &[(u16, u8, u8)], cut: u16) -> Vec<u8> {
        for &(at, byte, op) in edits {
            let i = at as usize % (b.len() + 1);
            match op {
                0 if i < b.len() => b[i] = byte,
                1 => b.insert(i, byte),
                _ if i < b.len() => {
                    b.remove(i);
                }
                _ => {}
            }
        }
        if (cut as usize) < b.len() {
            b.truncate(cut as usize);
        }
        b
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

        /// Every parser, on damaged versions of valid files (PDF, HTML, Markdown, text, JSONL)
        /// and on random bytes: a document or a failure, never a panic past the parser, never a
        /// hang. (A bounded-time fuzz that runs in every CI build.)
        #[test]
        fn parsers_never_panic_or_hang_on_damaged_input(
            kind in 0usize..5,
            edits in proptest::collection::vec((proptest::prelude::any::<u16>(), proptest::prelude::any::<u8>(), 0u8..3), 0..24),
            cut in proptest::prelude::any::<u16>(),
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let nested: String = (0..40).map(|i| format!("{}- item {i}\n", "  ".repeat(i))).collect();
            let (format, base) = match kind {
                0 => (Format::Pdf, tiny_pdf("Graphene conducts heat remarkably well")),
                1 => (Format::Html, b"<html><head><title>T</title><style>p{}</style></head><body><h1>Hi</h1><table><tr><td>a<td>b</table><p>Para &amp; more &#x1F600; <a href='x'>link</a></p><ul><li>one<li>two</ul></body></html>".to_vec()),
                2 => (Format::Markdown, format!("# Title\n\n{nested}\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```rust\nfn x() {{}}\n```\n> quote *em* **strong** [l](u)\n").into_bytes()),
                3 => (Format::Text, "Plain text. Naïve café 日本語 🙂\n\nSecond paragraph.".as_bytes().to_vec()),
                _ => (Format::Jsonl, b"{\"_id\":\"d1\",\"title\":\"T\",\"text\":\"one\",\"metadata\":{\"k\":\"v\",\"n\":[1,2]}}\n{\"_id\":7,\"text\":\"two\"}\n".to_vec()),
            };
            for bytes in [damage(base, &edits, cut), random.clone()] {
                let outcome = if format == Format::Jsonl {
                    guarded(move || {
                        let dir = tempfile::tempdir().unwrap();
                        let p = dir.path().join("c.jsonl");
                        std::fs::write(&p, bytes).unwrap();
                        let opts = SourceOptions::default();
                        let srcs = collect_sources(&[p], &opts).unwrap();
                        srcs.iter().map(|s| read_all(s, &opts).len()).sum::<usize>()
                    })
                } else {
                    guarded(move || {
                        usize::from(parse_bytes("f", "f", "f", format, bytes, 1 << 20).is_ok())
                    })
                };
                proptest::prop_assert!(outcome.is_ok(), "{:?} input: {}", format, outcome.unwrap_err());
            }
        }
    }

    #[test]
    fn pdf_text_is_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("paper.pdf");
        std::fs::write(&p, tiny_pdf("Graphene conducts heat remarkably well")).unwrap();
        let srcs = collect_sources(&[p], &SourceOptions::default()).unwrap();
        let r = read_all(&srcs[0], &SourceOptions::default());
        let doc = &r[0].as_ref().unwrap().doc;
        assert_eq!(doc.title, "paper");
        assert!(
            doc.text.contains("Graphene conducts heat remarkably well"),
            "{:?}",
            doc.text
        );
    }

    #[test]
    fn globs_limits_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/keep.md"), "# k\nx").unwrap();
        std::fs::write(d.join("sub/drop.md"), "# d\nx").unwrap();
        std::fs::write(d.join("top.txt"), "x".repeat(100)).unwrap();
        let opts = SourceOptions {
            include: vec!["**/*.md".into(), "*.txt".into()],
            exclude: vec!["**/drop.md".into()],
            max_document_bytes: 50,
        };
        let srcs = collect_sources(&[d.to_path_buf()], &opts).unwrap();
        assert_eq!(srcs.len(), 2);
        let big = srcs.iter().find(|s| s.path.ends_with("top.txt")).unwrap();
        let r = read_all(big, &opts);
        assert!(r[0].as_ref().unwrap_err().reason.contains("over the limit"));
        let e = collect_sources(&[d.join("nope")], &opts).unwrap_err();
        assert!(e.to_string().contains("nope"));
        let e = collect_sources(
            &[d.to_path_buf()],
            &SourceOptions {
                include: vec!["[".into()],
                ..opts
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("glob"));
        // A file given explicitly with an unknown extension is reported, not silently skipped.
        std::fs::write(d.join("x.bin"), "x").unwrap();
        let srcs = collect_sources(&[d.join("x.bin")], &SourceOptions::default()).unwrap();
        assert!(
            read_all(&srcs[0], &SourceOptions::default())[0]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("unsupported")
        );
    }
}
