//! The one pointer that must be consistent: each collection's current published generation,
//! `<prefix>/<collection>/current` = [`Pointer`] in etcd, moved only by compare-and-swap; and
//! the replicas' lease-bound keys `<prefix>/<collection>/replicas/<replica>` = the generation
//! each serves, which tell the writer what it must not delete.
//!
//! etcd is reached through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/grant`, …; etcd ≥ 3.4 serves it on the client port), with the HTTP client
//! object_store already brings: the `etcd-client` crate generates its gRPC code with `protoc` at
//! build time, which a plain `cargo build` on a new machine does not have. Requests go to the
//! endpoints in turn, starting with the last that answered, so a member that is down (or a
//! leader election) costs one timeout, not an error.

use crate::error::{Error, Result};
use crate::generations::GenerationId;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where ragd keeps its keys in etcd unless told otherwise.
pub const ETCD_PREFIX: &str = "/ragd";

/// Per request, per endpoint.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What `<prefix>/<collection>/current` holds: the generation replicas serve, and the digest of
/// its `publish.json`, which a replica checks what it downloads against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// The generation.
    pub id: GenerationId,
    /// Hex sha256 of its `publish.json`.
    pub digest: String,
}

/// A pointer as read, with the revision a compare-and-swap must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The pointer.
    pub pointer: Pointer,
    /// etcd's modification revision of the key.
    pub mod_revision: i64,
}

/// An etcd cluster, by its client endpoints.
#[derive(Debug, Clone)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Arc<Vec<String>>,
    /// Index of the endpoint that answered last.
    preferred: Arc<AtomicUsize>,
    prefix: String,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// etcd's JSON encodes 64-bit integers as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just past every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return B64.encode(b);
        }
    }
    B64.encode([0u8])
}

impl Etcd {
    /// A client of the etcd members at `endpoints` (`http://host:2379`, …), keeping ragd's keys
    /// under `prefix` (`/ragd`). Nothing is contacted until an operation runs.
    pub fn new(endpoints: &[String], prefix: &str) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::InvalidInput("no etcd endpoint given".into()));
        }
        let mut urls = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let u = url::Url::parse(e.trim()).map_err(|err| {
                Error::InvalidInput(format!(
                    "etcd endpoint {e:?}: {err} (expected http://host:2379)"
                ))
            })?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(Error::InvalidInput(format!(
                    "etcd endpoint {e:?}: expected http://host:port or https://host:port"
                )));
            }
            urls.push(e.trim().trim_end_matches('/').to_string());
        }
        crate::generations::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| Error::InvalidInput(format!("etcd client: {e}")))?;
        let prefix = format!("/{}", prefix.trim_matches('/'));
        Ok(Self {
            http,
            endpoints: Arc::new(urls),
            preferred: Arc::new(AtomicUsize::new(0)),
            prefix,
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn current_key(&self, collection: &str) -> String {
        format!("{}/{collection}/current", self.prefix)
    }

    fn replicas_prefix(&self, collection: &str) -> String {
        format!("{}/{collection}/replicas/", self.prefix)
    }

    /// Indexes of the endpoints in the order to try them: the last that answered first.
    fn rotation(&self) -> impl Iterator<Item = usize> {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (first + i) % n)
    }

    /// `POST /v3/<method>` with `body` on the first endpoint that answers.
    async fn call(&self, method: &str, body: &Value) -> Result<Value> {
        let mut failures = Vec::new();
        for at in self.rotation() {
            let url = format!("{}/v3/{method}", self.endpoints[at]);
            let sent = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[at]));
                    continue;
                }
            };
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[at]));
                    continue;
                }
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() && v.get("error").is_none() {
                self.preferred.store(at, Ordering::Relaxed);
                return Ok(v);
            }
            // No leader, a member starting or stopping: the next member may serve.
            let message = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map_or_else(
                    || String::from_utf8_lossy(&bytes).into_owned(),
                    str::to_string,
                );
            failures.push(format!("{}: {status}: {message}", self.endpoints[at]));
        }
        Err(Error::Etcd(format!("{method}: {}", failures.join("; "))))
    }

    /// etcd's current revision (every change under any key moves it).
    pub async fn revision(&self) -> Result<i64> {
        let prefix = format!("{}/", self.prefix);
        let v = self
            .call(
                "kv/range",
                &json!({"key": b64(&prefix), "range_end": range_end(&prefix), "count_only": true}),
            )
            .await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Waits until a pointer changes after `revision` (as [`Etcd::revision`] read it: a change
    /// made since then counts, even one made before this call), or `wait` passes: true on a
    /// change. An etcd watch on the pointers through the gateway's streaming `/v3/watch`, on
    /// the first endpoint that takes it. Replica keys coming and going are not changes.
    pub async fn changed_since(&self, revision: i64, wait: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        let prefix = format!("{}/", self.prefix);
        let body = json!({"create_request": {
            "key": b64(&prefix),
            "range_end": range_end(&prefix),
            "start_revision": (revision + 1).to_string(),
        }})
        .to_string();
        let mut failures = Vec::new();
        for at in self.rotation() {
            let sent = self
                .http
                .post(format!("{}/v3/watch", self.endpoints[at]))
                .header("content-type", "application/json")
                .body(body.clone())
                // The stream stays open until a change or the wait ends, beyond the client's
                // per-request timeout.
                .timeout(wait + TIMEOUT)
                .send()
                .await;
            let mut resp = match sent {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    failures.push(format!("{}: {}", self.endpoints[at], r.status()));
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[at]));
                    continue;
                }
            };
            let mut buf = Vec::new();
            loop {
                let chunk = tokio::select! {
                    c = resp.chunk() => c,
                    _ = tokio::time::sleep_until(deadline) => return Ok(false),
                };
                match chunk {
                    Ok(Some(bytes)) => buf.extend_from_slice(&bytes),
                    // The member went away mid-watch: try the next one.
                    Ok(None) | Err(_) => break,
                }
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let r = &v["result"];
                    let pointers_moved = r["events"].as_array().is_some_and(|events| {
                        events.iter().any(|e| {
                            B64.decode(e["kv"]["key"].as_str().unwrap_or_default())
                                .is_ok_and(|k| k.ends_with(b"/current"))
                        })
                    });
                    // Cancelled (the revision was compacted away): say "changed", the caller
                    // reads everything again.
                    if pointers_moved || r["canceled"].as_bool().unwrap_or(false) {
                        return Ok(true);
                    }
                }
            }
            failures.push(format!("{}: the watch ended", self.endpoints[at]));
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
        }
        Err(Error::Etcd(format!("watch: {}", failures.join("; "))))
    }

    /// Collection `collection`'s pointer, if any.
    pub async fn current(&self, collection: &str) -> Result<Option<Current>> {
        let key = self.current_key(collection);
        let v = self.call("kv/range", &json!({ "key": b64(&key) })).await?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        let raw = B64
            .decode(kv["value"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let pointer: Pointer = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            what: format!("etcd key {key}"),
            reason: format!("does not hold a generation pointer: {e}"),
        })?;
        Ok(Some(Current {
            pointer,
            mod_revision: int(&kv["mod_revision"]),
        }))
    }

    /// Moves collection `collection`'s pointer to `to` if its key is still at `expected` (its
    /// modification revision as read; `None`: the key must not exist). True when it moved;
    /// false when someone else moved it first (read it again and decide).
    pub async fn flip(
        &self,
        collection: &str,
        expected: Option<i64>,
        to: &Pointer,
    ) -> Result<bool> {
        let key = b64(&self.current_key(collection));
        let compare = match expected {
            Some(rev) => {
                json!({"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
            }
            None => {
                json!({"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
        };
        let value = serde_json::to_string(to).unwrap_or_default();
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": {"key": key, "value": b64(&value)}}],
        });
        let v = self.call("kv/txn", &body).await?;
        // proto3 JSON leaves out false.
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// The collections that have a pointer, sorted.
    pub async fn collections(&self) -> Result<Vec<String>> {
        let prefix = format!("{}/", self.prefix);
        let v = self
            .call(
                "kv/range",
                &json!({"key": b64(&prefix), "range_end": range_end(&prefix), "keys_only": true}),
            )
            .await?;
        let mut out: Vec<String> = v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| B64.decode(kv["key"].as_str()?).ok())
            .filter_map(|k| String::from_utf8(k).ok())
            .filter_map(|k| {
                k.strip_prefix(&prefix)?
                    .strip_suffix("/current")
                    .map(str::to_string)
            })
            .filter(|name| !name.contains('/'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// A lease of `ttl_seconds`: keys put with it go when it is not kept alive.
    pub async fn grant(&self, ttl_seconds: i64) -> Result<i64> {
        let v = self
            .call("lease/grant", &json!({"TTL": ttl_seconds.to_string()}))
            .await?;
        match int(&v["ID"]) {
            0 => Err(Error::Etcd(format!("lease/grant: no lease in {v}"))),
            id => Ok(id),
        }
    }

    /// Renews `lease`; false when it has expired (its keys are gone: grant another).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool> {
        let v = self
            .call("lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        Ok(int(&v["result"]["TTL"]) > 0)
    }

    /// Ends `lease` now: its keys go at once (a replica stopping cleanly).
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.call("lease/revoke", &json!({"ID": lease.to_string()}))
            .await?;
        Ok(())
    }

    /// Records, under `lease`, that replica `replica` serves `serving` of `collection`.
    pub async fn register(
        &self,
        collection: &str,
        replica: &str,
        lease: i64,
        serving: GenerationId,
    ) -> Result<()> {
        let key = format!("{}{replica}", self.replicas_prefix(collection));
        self.call(
            "kv/put",
            &json!({"key": b64(&key), "value": b64(&serving.to_string()), "lease": lease.to_string()}),
        )
        .await?;
        Ok(())
    }

    /// The generations live replicas of `collection` serve (by replica name).
    pub async fn serving(&self, collection: &str) -> Result<Vec<(String, GenerationId)>> {
        let prefix = self.replicas_prefix(collection);
        let v = self
            .call(
                "kv/range",
                &json!({"key": b64(&prefix), "range_end": range_end(&prefix)}),
            )
            .await?;
        let decode = |s: &Value| {
            B64.decode(s.as_str().unwrap_or_default())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        };
        Ok(v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| {
                let key = decode(&kv["key"])?;
                let id = decode(&kv["value"])?.parse().ok()?;
                Some((key.strip_prefix(&prefix)?.to_string(), id))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_just_past_the_prefix() {
        assert_eq!(B64.decode(range_end("/ragd/")).unwrap(), b"/ragd0");
        assert_eq!(B64.decode(range_end("a\u{7f}")).unwrap(), b"a\x80");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(Etcd::new(&[], "/ragd").is_err());
        for bad in ["127.0.0.1:2379", "ftp://x:1", "http://"] {
            let e = Etcd::new(&[bad.to_string()], "/ragd").unwrap_err();
            assert!(e.to_string().contains("etcd endpoint"), "{bad}: {e}");
        }
        let ok = Etcd::new(&["http://127.0.0.1:2379/".into()], "ragd/").unwrap();
        assert_eq!(ok.endpoints(), ["http://127.0.0.1:2379"]);
        assert_eq!(ok.current_key("c"), "/ragd/c/current");
    }
}
