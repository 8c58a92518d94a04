//! flagd compatibility, measured against a real `grapevine node` process on loopback:
//!
//! 1. **Change to in-process evaluation**: a flag changed on the node (`--emergency`) until an
//!    in-process provider's next evaluation returns the new value, p50 and p99 over 100 changes
//!    per provider. "Applied on the node" is when a sync stream of the benchmark's own receives
//!    the new configuration (the node's applied-state watch wakes every stream at once); the
//!    provider evaluates in a tight loop and reports when it first saw the value. Goal: p99
//!    under 20 ms.
//! 2. **Evaluations per second** of one flag with a targeting rule, in the Python and the
//!    JavaScript provider: in process (Grapevine's sync stream), rpc (the node evaluates), and
//!    the same language's OFREP provider (the node's HTTP API), each on one thread.
//! 3. **1,000 sync streams** on one node (4 HTTP/2 connections): the node's resident memory per
//!    stream, and the time from the node applying a change until the last stream received it.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench flagd` (`GRAPEVINE_BENCH_QUICK=1`: 10
//! changes, 0.5 s rates, 100 streams). Needs the providers (`.ci/run` installs them); a missing
//! one is skipped with a notice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::providers::{self, Language, Mode, Options, Provider, with_flagd};
use grapevine_cluster_tests::{Cluster, Node, bench_quick, next_sse_event, suite_row};
use grapevine_node::flagd::schema::sync::SyncFlagsRequest;
use grapevine_node::flagd::schema::sync::flag_sync_service_client::FlagSyncServiceClient;
use serde_json::json;

/// When the node applied each change, as seen by a sync stream of the benchmark's own (the
/// node sends every stream the configuration when its applied flags change): the wall clock
/// in milliseconds at each message's arrival, read as they arrive.
async fn applied_times(sync: u16) -> Result<tokio::sync::mpsc::UnboundedReceiver<f64>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{sync}"))?.connect().await?;
    let mut own = FlagSyncServiceClient::new(channel).sync_flags(SyncFlagsRequest::default()).await?.into_inner();
    own.message().await?.context("the first configuration")?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(_)) = own.message().await {
            if sender.send(providers::unix_ms()).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

fn set_variant(node: &Node, key: &str, variant: &str) -> Result<()> {
    let output = node.cli(&["flag", "set", key, "--variant", variant, "--emergency"]);
    anyhow::ensure!(output.status.success(), "flag set: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn node_rss_kib(node: &Node) -> Result<u64> {
    let pid = node.pid().context("the node runs")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("VmRSS")
}

/// (1): lag from the node applying a change to an in-process provider seeing it.
async fn change_lag(node: &Node, sync: u16, language: Language, changes: usize) -> Result<()> {
    let mut provider = Provider::start(language, Mode::InProcess, sync, &Options::default())?;
    provider.wait_for("string", "bench/lag", json!("none"), json!("a"), Duration::from_secs(10))?;
    let mut applied = applied_times(sync).await?;
    let mut lags = Vec::new();
    for change in 0..changes {
        let variant = if change % 2 == 0 { "b" } else { "a" };
        while applied.try_recv().is_ok() {}
        let (applied_at, seen_at) = std::thread::scope(|scope| -> Result<(f64, f64)> {
            let waiter = scope.spawn(|| {
                provider.wait_for("string", "bench/lag", json!("none"), json!(variant), Duration::from_secs(10))
            });
            set_variant(node, "bench/lag", variant)?;
            let applied_at = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(async { tokio::time::timeout(Duration::from_secs(10), applied.recv()).await })
            })?
            .context("the benchmark's own sync stream ended")?;
            Ok((applied_at, waiter.join().expect("the waiter does not panic")?))
        })?;
        // Below zero when the provider's stream woke before ours (both follow the same watch).
        lags.push((seen_at - applied_at).max(0.0));
    }
    lags.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    println!(
        "{language} in-process: change applied on the node to the next evaluation seeing it, over {changes} changes: p50 {p50:.1} ms, p99 {p99:.1} ms (max {:.1})",
        lags[lags.len() - 1]
    );
    suite_row(
        &format!("change to {language} in-process evaluation, p50 / p99 ({changes} changes)"),
        &format!("{p50:.1} / {p99:.1} ms"),
        "goal p99 < 20 ms",
        "",
    );
    Ok(())
}

/// (2): evaluations per second in each mode.
fn rates(ports: (u16, u16, u16), language: Language, seconds: f64) -> Result<()> {
    let (evaluation, sync, api) = ports;
    let mut rates = Vec::new();
    for (mode, port) in [(Mode::InProcess, sync), (Mode::Rpc, evaluation), (Mode::Ofrep, api)] {
        let mut provider =
            Provider::start(language, mode, port, &Options { cache: Some("disabled".into()), ..Options::default() })?;
        let context = json!({"targetingKey": "user-1", "email": "a@example.com"});
        let warm = provider.eval("string", "bench/rule", json!("none"), context.clone())?;
        anyhow::ensure!(warm["value"] == "blue", "{language} {}: {warm}", mode.as_str());
        let answer = provider.call(json!({"op": "rate", "type": "string", "key": "bench/rule", "default": "none",
                                          "context": context, "seconds": seconds}))?;
        let rate = answer["per_second"].as_f64().context("per_second")?;
        println!("{language} {}: {rate:.0} evaluations per second", mode.as_str());
        rates.push(rate);
    }
    suite_row(
        &format!("{language} provider evaluations per second: in-process (Grapevine sync) vs rpc"),
        &format!("{:.0}/s", rates[0]),
        &format!("rpc {:.0}/s, OFREP {:.0}/s", rates[1], rates[2]),
        &format!("{:.0}x rpc", rates[0] / rates[1]),
    );
    Ok(())
}

/// (3): many sync streams on one node.
async fn streams(node: &Node, sync: u16, count: usize) -> Result<()> {
    let before = node_rss_kib(node)?;
    const CONNECTIONS: usize = 4;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{sync}"))?.connect().await?;
        clients.push(FlagSyncServiceClient::new(channel));
    }
    let mut streams = Vec::new();
    for index in 0..count {
        let request = SyncFlagsRequest { provider_id: format!("bench-{index}"), selector: String::new() };
        let mut stream = clients[index % CONNECTIONS].sync_flags(request).await?.into_inner();
        stream.message().await?.context("the first configuration")?;
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node_rss_kib(node)?;
    let per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    // A change: when did each stream have it, from the node applying it?
    let http = grapevine_cluster_tests::http_client();
    let mut events = http.get(format!("{}/ofrep/v1/events", node.url())).send().await?;
    let mut receivers = tokio::task::JoinSet::new();
    for mut stream in streams {
        receivers.spawn(async move { stream.message().await.map(|_| Instant::now()) });
    }
    let written = Instant::now();
    set_variant(node, "bench/lag", "c")?;
    tokio::time::timeout(Duration::from_secs(10), next_sse_event(&mut events)).await??;
    let (mut first, mut last) = (None::<Instant>, written);
    while let Some(received) = receivers.join_next().await {
        let received = received??;
        first = Some(first.map_or(received, |f| f.min(received)));
        last = last.max(received);
    }
    let first = first.context("no stream")?;
    let spread_ms = last.duration_since(first).as_secs_f64() * 1000.0;
    let write_ms = last.duration_since(written).as_secs_f64() * 1000.0;
    println!(
        "{count} sync streams: {per_stream:.0} bytes of node memory per stream ({before} KiB -> {after} KiB); a change reached the last stream {spread_ms:.1} ms after the first ({write_ms:.1} ms after `grapevine flag set` started)"
    );
    suite_row(
        &format!("{count} sync streams on one node: memory per stream; first to last stream with a change"),
        &format!("{:.1} KiB; {spread_ms:.1} ms", per_stream / 1024.0),
        &format!("{write_ms:.0} ms from the CLI's write"),
        "",
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = bench_quick();
    let (changes, seconds, stream_count) = if quick { (10, 0.5, 100) } else { (100, 3.0, 1000) };
    let mut cluster = Cluster::new(1)?;
    let (evaluation, sync) = with_flagd(&mut cluster.nodes[0]);
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    let flags = json!({"flags": {
        "bench/lag": {"state": "ENABLED", "variants": {"a": "a", "b": "b", "c": "c"}, "defaultVariant": "a"},
        "bench/rule": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red",
                       "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "blue", null]}}
    }});
    std::fs::write(dir.join("bench.json"), flags.to_string())?;
    anyhow::ensure!(
        node.cli(&["apply", dir.join("bench.json").to_str().context("UTF-8")?, "--emergency"]).status.success()
    );
    for language in [Language::Python, Language::JavaScript] {
        if !providers::available(language)? {
            continue;
        }
        change_lag(node, sync, language, changes).await?;
        rates((evaluation, sync, node.api.port()), language, seconds)?;
    }
    streams(node, sync, stream_count).await?;
    Ok(())
}
