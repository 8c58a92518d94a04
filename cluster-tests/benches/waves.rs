//! Rollout timing and the cost of health sources, with 10 in-process nodes on loopback.
//!
//! 1. A change with waves 1, 50%, 100% and a 2 s bake: time from the POST until every node
//!    applied it, against the floor of two bakes (plus propagation, a few ms); and the overhead
//!    of each wave's gate: from the moment it is satisfied (the earlier wave's last needed member
//!    has served the change for the bake time) to the moment the wave's last member serves it.
//!    Every time is read on this process's clock, the one all in-process nodes share.
//! 2. CPU of the process over 20 s idle, without health sources and then with one HTTP probe
//!    per node at one sample per second: the difference, per node.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench waves` (`GRAPEVINE_BENCH_RUNS=5`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_node::daemon::RunningNode;
use grapevine_node::health::{HealthConfig, ProbeConfig};
use grapevine_proto::{GenId, Key, NodeName};
use serde_json::json;

const NODES: usize = 10;
const BAKE: Duration = Duration::from_secs(2);
/// Faster than the default 1 s, as in a small cluster tuned for quick rollouts.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

async fn start(health: impl Fn(&RunningNode) -> HealthConfig) -> Result<InProcessCluster> {
    InProcessCluster::start(NODES, |_, first, raw| {
        raw.gossip_interval_ms = Some(GOSSIP_INTERVAL.as_millis() as u64);
        raw.health = first.map(&health);
    })
    .await
}

/// Starts watching every node for `key`; each handle yields when that node served it.
fn watch_served(nodes: &[RunningNode], key: &Key) -> BTreeMap<NodeName, tokio::task::JoinHandle<Instant>> {
    nodes
        .iter()
        .map(|node| {
            let (mut watch, key) = (node.engine().watch(), key.clone());
            let served = tokio::spawn(async move {
                let _ = watch.wait_for(|view| view.state.config.contains_key(&key)).await;
                Instant::now()
            });
            (node.name.clone(), served)
        })
        .collect()
}

/// For each wave after the canary, how long after its gate was satisfied its last member
/// served the change. The gate is satisfied when the earlier wave's needed members (the
/// health quorum, each healthy at once without a health source) have served it for the bake
/// time: the clock starts at the needed-th earliest serve of the earlier wave plus the bake,
/// and stops at the latest serve of the wave.
async fn wave_overheads(node: &RunningNode, id: GenId, served: &BTreeMap<NodeName, Instant>) -> Result<Vec<Duration>> {
    let rollout = node.engine().rollout(id).await.context("the rollout of the change")?;
    let quorum = usize::from(rollout.policy.health_quorum_permille);
    let times = |wave: &grapevine_node::replies::Wave| -> Vec<Instant> {
        let mut times: Vec<Instant> = wave.members.iter().filter_map(|m| served.get(&m.name).copied()).collect();
        times.sort();
        times
    };
    let mut overheads = Vec::new();
    for pair in rollout.waves.windows(2) {
        let (earlier, wave) = (times(&pair[0]), times(&pair[1]));
        let needed = (pair[0].members.len() * quorum).div_ceil(1000).max(1);
        let satisfied = *earlier.get(needed - 1).context("the earlier wave served")? + BAKE;
        let last = *wave.last().context("the wave served")?;
        overheads.push(last.saturating_duration_since(satisfied));
    }
    Ok(overheads)
}

fn median_of(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// CPU of the whole process over an idle window, in % of a core.
async fn idle_cpu() -> f64 {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(if grapevine_cluster_tests::bench_quick() { 3 } else { 10 });
    let before = grapevine_cluster_tests::process_cpu_seconds();
    tokio::time::sleep(window).await;
    (grapevine_cluster_tests::process_cpu_seconds() - before) / window.as_secs_f64() * 100.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = grapevine_cluster_tests::bench_quick();
    let runs: usize =
        std::env::var("GRAPEVINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 1 } else { 5 });
    let cluster = start(|_| HealthConfig::default()).await?;
    let nodes = &cluster.nodes;
    let http = grapevine_cluster_tests::http_client();
    let (mut times, mut overheads) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let key = format!("wave-{run}");
        let url = format!("http://{}/v1/config/{key}?waves=1,50%25,100%25&bake=2s", nodes[run % NODES].api_addr);
        let watches = watch_served(nodes, &key.parse()?);
        let started = Instant::now();
        let answer: serde_json::Value = http.post(url).json(&json!({"value": run})).send().await?.json().await?;
        let id: GenId = answer["generation"].as_str().context("a generation")?.parse()?;
        let mut served = BTreeMap::new();
        for (name, watch) in watches {
            served.insert(name, watch.await?);
        }
        let last = served.values().max().context("nodes")?;
        times.push(last.duration_since(started));
        overheads.extend(wave_overheads(&nodes[run % NODES], id, &served).await?);
    }
    let median = median_of(&mut times);
    let overhead = median_of(&mut overheads);
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
    println!(
        "gate overhead per wave ({} waves): median {:.1} ms (min {:.1} ms, max {:.1} ms), from the earlier wave's last needed member serving for the bake time to the wave's last member serving",
        overheads.len(),
        overhead.as_secs_f64() * 1000.0,
        overheads[0].as_secs_f64() * 1000.0,
        overheads[overheads.len() - 1].as_secs_f64() * 1000.0,
    );
    grapevine_cluster_tests::suite_row(
        &format!("waves 1,50%,100%, {NODES} nodes: gate satisfied to the wave served (median per wave)"),
        &format!("{:.1} ms", overhead.as_secs_f64() * 1000.0),
        &format!("a gossip round {} ms", GOSSIP_INTERVAL.as_millis()),
        &format!("{:.2}x a round", overhead.as_secs_f64() / GOSSIP_INTERVAL.as_secs_f64()),
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
