//! Rollout timing and the cost of health sources, with 10 in-process nodes on loopback.
//!
//! 1. A change with waves 1, 50%, 100% and a 2 s bake: time from the POST until every node
//!    applied it, against the floor of two bakes (plus propagation, a few ms).
//! 2. CPU of the process over 20 s idle, without health sources and then with one HTTP probe
//!    per node at one sample per second: the difference, per node.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench waves` (`GRAPEVINE_BENCH_RUNS=5`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_node::daemon::RunningNode;
use grapevine_node::health::{HealthConfig, ProbeConfig};
use serde_json::json;

const NODES: usize = 10;
const BAKE: Duration = Duration::from_secs(2);

async fn start(health: impl Fn(&RunningNode) -> HealthConfig) -> Result<InProcessCluster> {
    InProcessCluster::start(NODES, |_, first, raw| {
        raw.gossip_interval_ms = Some(200);
        raw.health = first.map(&health);
    })
    .await
}

fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).into_iter().flatten().filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// CPU of the whole process over an idle window, in % of a core.
async fn idle_cpu() -> f64 {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(if grapevine_cluster_tests::bench_quick() { 3 } else { 10 });
    let before = process_cpu_seconds();
    tokio::time::sleep(window).await;
    (process_cpu_seconds() - before) / window.as_secs_f64() * 100.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = grapevine_cluster_tests::bench_quick();
    let runs: usize =
        std::env::var("GRAPEVINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 1 } else { 5 });
    let cluster = start(|_| HealthConfig::default()).await?;
    let nodes = &cluster.nodes;
    let http = grapevine_cluster_tests::http_client();
    let mut times = Vec::new();
    for run in 0..runs {
        let key = format!("wave-{run}");
        let url = format!("http://{}/v1/config/{key}?waves=1,50%25,100%25&bake=2s", nodes[run % NODES].api_addr);
        let started = Instant::now();
        let answer: serde_json::Value = http.post(url).json(&json!({"value": run})).send().await?.json().await?;
        answer["generation"].as_str().context("a generation")?;
        let key: grapevine_proto::Key = key.parse()?;
        for node in nodes {
            let mut watch = node.engine().watch();
            watch.wait_for(|view| view.state.config.contains_key(&key)).await?;
        }
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "waves 1,50%,100% with a {} s bake, {NODES} nodes, {runs} changes: all applied after median {:.2} s (min {:.2} s, max {:.2} s); floor 2 bakes = {:.2} s, overhead {:.0} ms",
        BAKE.as_secs(),
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        2.0 * BAKE.as_secs_f64(),
        (median.as_secs_f64() - 2.0 * BAKE.as_secs_f64()) * 1000.0
    );
    grapevine_cluster_tests::suite_row(
        &format!("waves 1,50%,100%, {} s bake, {NODES} nodes: all applied (median)", BAKE.as_secs()),
        &format!("{:.2} s", median.as_secs_f64()),
        &format!("floor of two bakes {:.2} s", 2.0 * BAKE.as_secs_f64()),
        &format!("+{:.0} ms", (median.as_secs_f64() - 2.0 * BAKE.as_secs_f64()) * 1000.0),
    );
    let without = idle_cpu().await;
    cluster.stop().await;

    // Every node but the first probes the first one's /healthz once a second (the first is
    // started before any address is known, so it has no source).
    let cluster = start(|first| HealthConfig {
        probe: vec![ProbeConfig { url: format!("http://{}/healthz", first.api_addr), timeout_ms: Some(1000) }],
        sample_interval_ms: Some(1000),
        ..HealthConfig::default()
    })
    .await?;
    let with = idle_cpu().await;
    cluster.stop().await;
    let probing = (NODES - 1) as f64;
    println!(
        "idle CPU per node: {:.3}% of a core without health sources; with one HTTP probe a second, {:.3} points more per probing node ({NODES} nodes, {probing} probing: {without:.2}% -> {with:.2}% for the process)",
        without / NODES as f64,
        (with - without) / probing
    );
    Ok(())
}
