//! `ragd bench load`: a concurrent load of Search or AskStream calls against a running server.
//! Reports throughput, latency percentiles and every outcome by gRPC code, so overload shows as
//! RESOURCE_EXHAUSTED counts beside the latencies of the calls that were served.

use crate::client::{Remote, ServerFlags};
use anyhow::{Context, Result, bail};
use clap::Args;
use ragd_eval::percentiles;
use ragd_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    remote: ServerFlags,
    /// Collection to query.
    #[arg(long)]
    collection: String,
    /// Queries: one per line, or JSONL with a `text` or `question` field (BEIR queries).
    #[arg(long)]
    queries: PathBuf,
    /// `search` (Search, hybrid) or `ask` (AskStream).
    #[arg(long, default_value = "search")]
    call: String,
    /// Retrieval mode: hybrid, dense or lexical.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Calls in all (queries are reused round-robin).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Most tokens per answer (`--call ask`).
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    #[arg(long)]
    json: bool,
}

fn read_queries(path: &PathBuf) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let q = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => v
                .get("text")
                .or_else(|| v.get("question"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}: a JSON line without text", path.display()))?,
            _ => line.to_string(),
        };
        out.push(q);
    }
    if out.is_empty() {
        bail!("{} holds no queries", path.display());
    }
    Ok(out)
}

/// One finished call.
struct Outcome {
    code: tonic::Code,
    ms: f64,
    /// AskStream: time to the first delta, and tokens generated.
    first_ms: Option<f64>,
    tokens: u32,
}

async fn one_search(
    client: &mut pb::search_client::SearchClient<tonic::transport::Channel>,
    r: &Remote,
    collection: &str,
    q: &str,
    options: &pb::SearchOptions,
) -> Outcome {
    let t = Instant::now();
    let req = pb::SearchRequest {
        collection: collection.to_string(),
        query: q.to_string(),
        options: Some(options.clone()),
    };
    let code = match client.search(r.request(req)).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    Outcome {
        code,
        ms: t.elapsed().as_secs_f64() * 1e3,
        first_ms: None,
        tokens: 0,
    }
}

async fn one_ask(
    client: &mut pb::answer_client::AnswerClient<tonic::transport::Channel>,
    r: &Remote,
    collection: &str,
    q: &str,
    max_tokens: u32,
) -> Outcome {
    let t = Instant::now();
    let req = pb::AskRequest {
        collection: collection.to_string(),
        question: q.to_string(),
        generation: Some(pb::GenerationOptions {
            max_tokens,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut first_ms = None;
    let mut tokens = 0;
    let code = match client.ask_stream(r.request(req)).await {
        Err(s) => s.code(),
        Ok(resp) => {
            let mut events = resp.into_inner();
            loop {
                match events.message().await {
                    Ok(Some(ev)) => match ev.event {
                        Some(pb::ask_event::Event::Delta(_)) if first_ms.is_none() => {
                            first_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Some(pb::ask_event::Event::Answer(a)) => {
                            tokens = a.usage.map_or(0, |u| u.generated_tokens);
                        }
                        _ => {}
                    },
                    Ok(None) => break tonic::Code::Ok,
                    Err(s) => break s.code(),
                }
            }
        }
    };
    Outcome {
        code,
        ms: t.elapsed().as_secs_f64() * 1e3,
        first_ms,
        tokens,
    }
}

pub(crate) fn run(a: &LoadArgs) -> Result<()> {
    let Some(url) = &a.remote.server else {
        bail!("--server URL is required: bench load measures a running server");
    };
    let ask = match a.call.as_str() {
        "search" => false,
        "ask" => true,
        other => bail!("--call {other:?}: expected search or ask"),
    };
    if a.concurrency == 0 || a.requests == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    let mode = match a.mode.as_str() {
        "hybrid" => pb::SearchMode::Hybrid,
        "dense" => pb::SearchMode::Dense,
        "lexical" => pb::SearchMode::Lexical,
        other => bail!("--mode {other:?}: expected hybrid, dense or lexical"),
    };
    let options = pb::SearchOptions {
        mode: mode as i32,
        ..Default::default()
    };
    let queries = Arc::new(read_queries(&a.queries)?);
    // Several servers: worker i calls server i mod n (client-side balancing).
    let remote = Arc::new(Remote::connect_all(&a.remote, url)?);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let outcomes: Vec<Outcome> = remote.rt.block_on(async {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..a.concurrency {
            let (remote, queries, next) =
                (Arc::clone(&remote), Arc::clone(&queries), Arc::clone(&next));
            let channel = remote.all[w % remote.all.len()].clone();
            let (collection, requests, max_tokens) =
                (a.collection.clone(), a.requests, a.max_tokens);
            let options = options.clone();
            workers.spawn(async move {
                let mut search = pb::search_client::SearchClient::new(channel.clone());
                let mut answer = pb::answer_client::AnswerClient::new(channel);
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return mine;
                    }
                    let q = &queries[i % queries.len()];
                    mine.push(if ask {
                        one_ask(&mut answer, &remote, &collection, q, max_tokens).await
                    } else {
                        one_search(&mut search, &remote, &collection, q, &options).await
                    });
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = workers.join_next().await {
            all.extend(done.unwrap_or_default());
        }
        all
    });
    let seconds = t0.elapsed().as_secs_f64();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        *by_code.entry(format!("{:?}", o.code)).or_default() += 1;
    }
    let ok: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.code == tonic::Code::Ok)
        .collect();
    let tokens: u64 = ok.iter().map(|o| u64::from(o.tokens)).sum();
    let report = json!({
        "call": a.call,
        "mode": (!ask).then_some(&a.mode),
        "collection": a.collection,
        "concurrency": a.concurrency,
        "servers": remote.all.len(),
        "requests": outcomes.len(),
        "by_code": by_code,
        "seconds": seconds,
        "served_per_s": ok.len() as f64 / seconds.max(1e-9),
        "latency_ok": percentiles(ok.iter().map(|o| o.ms).collect()),
        "latency_refused": percentiles(
            outcomes.iter().filter(|o| o.code != tonic::Code::Ok).map(|o| o.ms).collect()
        ),
        "time_to_first_token": ask.then(|| percentiles(ok.iter().filter_map(|o| o.first_ms).collect())),
        "generated_tokens_per_s": ask.then(|| tokens as f64 / seconds.max(1e-9)),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} {} calls, {} at once, in {:.1}s: {:.1} served/s",
        outcomes.len(),
        a.call,
        a.concurrency,
        seconds,
        report["served_per_s"].as_f64().unwrap_or(0.0)
    );
    for (code, n) in &by_code {
        println!("  {code:<18} {n}");
    }
    let l = &report["latency_ok"];
    println!(
        "latency (served): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        l["p50_ms"].as_f64().unwrap_or(0.0),
        l["p95_ms"].as_f64().unwrap_or(0.0),
        l["p99_ms"].as_f64().unwrap_or(0.0)
    );
    if ask {
        let f = &report["time_to_first_token"];
        println!(
            "time to first token: p50 {:.0} ms, p99 {:.0} ms; {:.1} generated tokens/s in all",
            f["p50_ms"].as_f64().unwrap_or(0.0),
            f["p99_ms"].as_f64().unwrap_or(0.0),
            report["generated_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
