//! `llama-server` on loopback for the tests that call it or compare with it: the binary that
//! `deploy/llama-server/build.sh` builds (its path in `LLAMA_SERVER`; `.ci/run` sets it),
//! started on a free port, healthy within 60 s or the test fails with the tail of its log, and
//! killed when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value as Json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for a server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `llama-server`; killed when dropped.
pub struct LlamaServer {
    child: Child,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl LlamaServer {
    /// Serves `model` with `args` (context, slots, threads, features) added.
    pub fn start(model: &Path, args: &[&str]) -> Self {
        let bin = std::env::var("LLAMA_SERVER").unwrap_or_else(|_| {
            panic!(
                "LLAMA_SERVER is not set: build llama-server with deploy/llama-server/build.sh \
                 (it prints the path; .ci/run does this) and set LLAMA_SERVER to it"
            )
        });
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&bin)
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut server = Self { child, port, log };
        server.wait_healthy(model);
        server
    }

    /// Waits (at most 60 s) for `GET /health` to answer 200.
    fn wait_healthy(&mut self, model: &Path) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                panic!(
                    "llama-server refused {}: {status}\n{}",
                    model.display(),
                    tail.join("\n")
                );
            }
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("llama-server did not become healthy within 60 s");
    }

    /// The OpenAI-compatible base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// POSTs `body` to one of llama.cpp's own endpoints (`completion`, `tokenize`, ...).
    pub fn post(&self, endpoint: &str, body: &Json) -> Json {
        let url = format!("http://127.0.0.1:{}/{endpoint}", self.port);
        ureq::post(&url)
            .send_json(body)
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
