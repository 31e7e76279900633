//! What the CLI tests share: running the `ragd` binary and reading its `--json` output.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn ragd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragd"))
        .args(args)
        .output()
        .unwrap()
}

/// Its stdout as JSON, after checking it succeeded (else the stderr is the failure).
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The models directory the tests use: `RAGD_MODELS`, else `~/.cache/ragd/models`.
pub fn ragd_models_dir() -> std::path::PathBuf {
    match std::env::var_os("RAGD_MODELS") {
        Some(p) if !p.is_empty() => p.into(),
        _ => std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap()
            .join(".cache/ragd/models"),
    }
}

/// `ragd ingest --collection NAME DOCS --data-dir DATA` with the test models, checked.
pub fn ingest_offline(name: &str, docs: &std::path::Path, data: &std::path::Path) {
    let (docs, data) = (docs.to_string_lossy(), data.to_string_lossy());
    let out = ragd(&[
        "ingest",
        "--collection",
        name,
        &docs,
        "--data-dir",
        &data,
        "--models-dir",
        &models_dir(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`ragd_models_dir`] as a flag value.
pub fn models_dir() -> String {
    ragd_models_dir().to_string_lossy().into_owned()
}

/// `ragd serve` on an ephemeral port over `data`, its log collected as it is written.
pub struct Served {
    pub child: std::process::Child,
    pub addr: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    pub fn start(data: &std::path::Path, api_key: Option<&str>) -> Self {
        Self::start_env(data, api_key, &[])
    }

    /// [`Served::start`] with settings from the environment.
    pub fn start_env(data: &std::path::Path, api_key: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::start_args(data, api_key, env, &[])
    }

    /// [`Served::start_env`] with more `ragd serve` flags.
    pub fn start_args(
        data: &std::path::Path,
        api_key: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ragd"));
        cmd.envs(env.iter().copied());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--models-dir",
            &models_dir(),
        ])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stderr(std::process::Stdio::piped());
        if let Some(k) = api_key {
            cmd.env("RAGD_API_KEYS", k);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("ragd serve ended before listening:\n{log}"))
                .unwrap();
            log.push_str(&line);
            log.push('\n');
            if let Some(i) = line.find("listening on ") {
                break line[i + "listening on ".len()..].trim().to_string();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(log));
        let sink = std::sync::Arc::clone(&log);
        // Keep reading so that the server never blocks on a full pipe.
        let drain = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            addr,
            log,
            drain: Some(drain),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no shutdown, no checkpoint.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the whole log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap();
        if let Some(d) = self.drain.take() {
            d.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        (code, log)
    }
}

impl Drop for Served {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
