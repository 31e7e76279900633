//! The Helm chart (`deploy/helm/ragd`) rendered offline with the pinned `helm` and validated
//! with `kubernetes-validate` against Kubernetes 1.30's schemas (strict: unknown fields are
//! errors), in every shape an operator turns on; and the settings files it renders for the
//! writer and the replicas are accepted by this `ragd` binary. The tools come from
//! `deploy/helm/install.sh` (a venv of `deploy/helm/requirements.txt`); `HELM_TOOLS` names its
//! bin directory (`.ci/run` sets it).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn tools() -> PathBuf {
    std::env::var_os("HELM_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        panic!("HELM_TOOLS is not set: run deploy/helm/install.sh (.ci/run does this) and set HELM_TOOLS to the directory it prints")
    })
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/ragd")
}

/// What a scale-out install sets: an object store, replicas, credentials from Secrets.
const SCALE: &[&str] = &[
    "objectStorage.url=s3://example-bucket/ragd",
    "replica.enabled=true",
    "objectStorage.options.aws_region=us-east-1",
    "objectStorage.existingSecret=ragd-object-store",
    "apiKeys.existingSecret=ragd-api-keys",
];

/// `helm template` of the chart with `sets`; the manifests.
fn render(sets: &[&str]) -> String {
    let mut cmd = Command::new(tools().join("helm"));
    cmd.args(["template", "ragd"])
        .arg(chart())
        .args(["--namespace", "rag"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubernetes-validate --strict` of `manifests`.
fn validate(manifests: &str, what: &str) {
    let mut child = Command::new(tools().join("kubernetes-validate"))
        .args(["-k", "1.30.0", "--strict", "--quiet", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: kubernetes-validate refused the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The block scalar `key: |` of the ConfigMap in `manifests` (its lines, indentation removed).
fn config_file(manifests: &str, key: &str) -> Option<String> {
    let head = format!("  {key}: |");
    let mut lines = manifests.lines().skip_while(|l| *l != head);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    Some(body.join("\n"))
}

/// `ragd serve --print-config` accepts `toml` (as a replica when `replica`).
fn accepted(toml: &str, replica: bool, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ragd.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ragd"));
    cmd.args(["serve", "--print-config", "--config"]).arg(&path);
    if replica {
        cmd.arg("--replica");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: ragd refused the rendered settings:\n{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_renders_valid_manifests_and_settings_ragd_accepts() {
    let scale = |more: &[&'static str]| -> Vec<&'static str> {
        SCALE.iter().chain(more).copied().collect()
    };
    let variants: Vec<(&str, Vec<&str>)> = vec![
        ("defaults (the writer alone)", vec![]),
        (
            "replicas through an external etcd",
            scale(&["etcd.endpoints={http://etcd-0.etcd:2379,http://etcd-1.etcd:2379}"]),
        ),
        (
            "replicas with the bundled etcd",
            scale(&["etcd.deploy=true"]),
        ),
        (
            "a llama-server model server",
            vec![
                "llamaServer.enabled=true",
                "llamaServer.model.url=https://example.com/model.gguf",
            ],
        ),
        ("replicas behind Envoy", scale(&["proxy.enabled=true"])),
        (
            "the rebuild CronJob",
            vec![
                "rebuild.enabled=true",
                "rebuild.collections={docs,faq}",
                "apiKeys.existingSecret=ragd-api-keys",
            ],
        ),
        (
            "replicas without the autoscaler",
            scale(&["replica.autoscaling.enabled=false"]),
        ),
        (
            "everything",
            scale(&[
                "etcd.deploy=true",
                "llamaServer.enabled=true",
                "llamaServer.model.existingClaim=gguf",
                "proxy.enabled=true",
                "rebuild.enabled=true",
                "rebuild.collections={docs}",
                "models.existingClaim=ragd-models",
                "objectStorage.options.aws_allow_http=true",
                "writer.config.answer.second_hop=false",
            ]),
        ),
    ];
    for (what, sets) in &variants {
        let m = render(sets);
        validate(&m, what);
        let writer =
            config_file(&m, "writer.toml").unwrap_or_else(|| panic!("{what}: no writer.toml"));
        assert!(writer.contains("data_dir = "), "{what}: {writer}");
        accepted(&writer, false, what);
        let replicas = sets.contains(&"replica.enabled=true");
        match config_file(&m, "replica.toml") {
            Some(r) => {
                assert!(r.contains("[replica]"), "{what}: {r}");
                accepted(&r, true, what);
            }
            None => assert!(!replicas, "{what}: replicas without replica.toml"),
        }
        assert_eq!(
            m.contains("kind: HorizontalPodAutoscaler"),
            replicas && !sets.contains(&"replica.autoscaling.enabled=false"),
            "{what}"
        );
        // Kubernetes' service links would inject RAGD_* variables for a Service named `ragd`
        // (which ragd ignores): every pod turns them off.
        let workloads = m
            .lines()
            .filter(|l| {
                matches!(
                    *l,
                    "kind: Deployment" | "kind: StatefulSet" | "kind: CronJob"
                )
            })
            .count();
        assert_eq!(
            m.matches("enableServiceLinks: false").count(),
            workloads,
            "{what}"
        );
    }
    // The rendered settings reach the server: what the variant set is what it serves with.
    let m = render(&scale(&["etcd.deploy=true"]));
    let r = config_file(&m, "replica.toml").unwrap();
    assert!(
        r.contains("s3://example-bucket/ragd") && r.contains("etcd"),
        "{r}"
    );
    // Turning on replicas without an object store is refused at render time, saying what.
    let out = Command::new(tools().join("helm"))
        .args(["template", "ragd"])
        .arg(chart())
        .args(["--set", "replica.enabled=true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("objectStorage.url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
