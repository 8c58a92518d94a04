//! Propagation of one change to every node, Grapevine over QUIC side by side with chitchat's
//! own key propagation over UDP at the same gossip interval, in one run: until every node
//! stores it (its version vector covers it) and until every node serves it (its applied-state
//! watch, `GET /v1/watch`, sends the event an application following it would get); idle cost per node at
//! each size (bytes, CPU against chitchat's UDP transport, memory) and its growth with N; time
//! for a 1 MiB config value to reach 10 nodes. All nodes in this process, on loopback.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench spread`
//! (`GRAPEVINE_BENCH_SIZES=5,20,50`, `GRAPEVINE_BENCH_RUNS=10`, `GRAPEVINE_BENCH_INTERVAL_MS=1000`,
//! `GRAPEVINE_BENCH_CELLS=100/5`: the idle cost of that many nodes flat, then in that many cells).
//! Prints p50 and p99 and their ratio; asserts nothing about speed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_cluster_tests::watch::WatchRecorder;
use grapevine_cluster_tests::{bench_quick, free_port, process_rss_kib, suite_row};
use grapevine_node::daemon::RunningNode;
use grapevine_node::replies::Status;
use grapevine_proto::GenId;
use grapevine_proto::policy::PolicyOptions;
use grapevine_proto::sim::SplitMix64;
use serde_json::json;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

struct Grapevine {
    cluster: InProcessCluster,
    http: reqwest::Client,
    /// Every node's applied-state watch: when it serves each change.
    watch: WatchRecorder,
}

/// How long one change took to reach every node: until the last node stored it (its version
/// vector covers it), and until the last node served it (its applied-state watch sent it).
struct Spread {
    stored: Duration,
    served: Duration,
    /// Until the POST was answered (the writer stored it durably and applied it).
    answered: Duration,
    /// Each node's serve time, earliest first.
    curve: Vec<Duration>,
    /// CPU seconds this process spent from the POST until the last node stored it.
    cpu: f64,
}

impl Grapevine {
    async fn start(count: usize, interval_ms: u64) -> Result<Grapevine> {
        Grapevine::start_in_cells(count, 1, interval_ms).await
    }

    /// `count` nodes in `cells` cells of contiguous indices (`c0`, `c1`, ...; one cell: the
    /// default cell).
    async fn start_in_cells(count: usize, cells: usize, interval_ms: u64) -> Result<Grapevine> {
        let cluster = InProcessCluster::start(count, |index, _, raw| {
            if cells > 1 {
                raw.cell = Some(format!("c{}", index * cells / count));
            }
            raw.gossip_interval_ms = Some(interval_ms);
            raw.rollout = Some(PolicyOptions { waves: Some("100%".into()), ..PolicyOptions::default() }.into());
        })
        .await?;
        let apis: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api_addr)).collect();
        let watch = WatchRecorder::start(&apis, "").await?;
        Ok(Grapevine { cluster, http: grapevine_cluster_tests::http_client(), watch })
    }

    /// Puts `value` under `key` on node `writer`; returns the times from the POST until every
    /// node stores it and serves it.
    async fn spread(&self, writer: usize, key: &str, value: serde_json::Value) -> Result<Spread> {
        let url = format!("http://{}/v1/config/{key}", self.cluster.nodes[writer].api_addr);
        let (started, cpu_before) = (Instant::now(), grapevine_cluster_tests::process_cpu_seconds());
        let answer: serde_json::Value =
            self.http.post(url).json(&json!({ "value": value })).send().await?.json().await?;
        let answered = started.elapsed();
        let id: GenId = answer["generation"].as_str().with_context(|| format!("a generation in {answer}"))?.parse()?;
        for node in &self.cluster.nodes {
            let mut watch = node.engine().watch();
            let got =
                tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|view| view.version_vector.covers(&id)));
            if got.await.is_err() {
                anyhow::bail!("{id} did not reach every node within 60 s: {}", self.lacking(&id, writer).await);
            }
        }
        let (stored, cpu) = (started.elapsed(), grapevine_cluster_tests::process_cpu_seconds() - cpu_before);
        let arrivals = self.watch.arrivals(key, |_| true, Duration::from_secs(60)).await?;
        let mut curve: Vec<Duration> = arrivals.iter().map(|at| at.saturating_duration_since(started)).collect();
        curve.sort();
        let served = *curve.last().context("nodes")?;
        Ok(Spread { stored, served, answered, curve, cpu })
    }

    /// Who lacks `id`, how each of them sees the cluster, and how the writer sees them (from
    /// their `/v1/status`): what a bench that never finishes reports instead of only timing out.
    async fn lacking(&self, id: &GenId, writer: usize) -> String {
        let origin = id.origin.as_str();
        let holds = |vector: &std::collections::BTreeMap<String, u64>| vector.get(origin).is_some_and(|s| *s >= id.seq);
        let writer_view = self.status(writer).await;
        let mut seen = Vec::new();
        for (index, node) in self.cluster.nodes.iter().enumerate() {
            if node.engine().view().version_vector.covers(id) {
                continue;
            }
            let Some(status) = self.status(index).await else {
                seen.push(format!("node {index}: no status"));
                continue;
            };
            let members = &status.members;
            let alive = members.iter().filter(|m| m.alive).count();
            let holders = members.iter().filter(|m| !m.is_self && holds(&m.version_vector)).count();
            let silent = members.iter().filter(|m| m.last_heard_ms.is_none_or(|ms| ms > 5_000)).count();
            let by_writer = writer_view.as_ref().and_then(|w| w.members.iter().find(|m| m.name == status.node));
            let by_writer = by_writer.map(|m| {
                format!("alive {}, holds it {}, heard {:?} ms ago", m.alive, holds(&m.version_vector), m.last_heard_ms)
            });
            let text = node.metrics().render();
            let counters: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .filter(|l| {
                    let watched = ["dropped", "refused", "failures", "malformed", "sync_", "push", "gossip_messages"];
                    watched.iter().any(|k| l.contains(k))
                })
                .collect();
            seen.push(format!(
                "{} (holds {} generations; {} members known, {alive} alive, {holders} seen holding it, {silent} not heard \
                 from directly for 5 s; the writer sees it: {by_writer:?}; {counters:?})",
                status.node,
                status.generations,
                members.len()
            ));
        }
        let mut drops: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for node in &self.cluster.nodes {
            let text = node.metrics().render();
            for line in text.lines().filter(|l| {
                let failed = l.contains("reason=\"failed\"") || l.contains("malformed");
                failed || l.contains("dropped") || l.contains("refused") || l.contains("failures")
            }) {
                if let Some((name, value)) = line.rsplit_once(' ')
                    && !name.starts_with('#')
                {
                    *drops.entry(name.to_owned()).or_default() += value.parse::<u64>().unwrap_or(0);
                }
            }
        }
        drops.retain(|_, n| *n > 0);
        format!("{}; across all nodes: {drops:?}", seen.join("; "))
    }

    /// The sync and gossip counters of every node, summed by series: pulls, probes, pushes
    /// sent and received by outcome, generations stored by sync, gossip messages sent.
    fn traffic(&self) -> std::collections::BTreeMap<String, u64> {
        let watched = ["sync_pulls", "sync_probes", "sync_pushes", "sync_generations_stored", "gossip_messages_sent"];
        let mut sums = std::collections::BTreeMap::new();
        for node in &self.cluster.nodes {
            for line in node.metrics().render().lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else { continue };
                let name = series.trim_start_matches("grapevine_");
                if watched.iter().any(|w| name.starts_with(w))
                    && let Ok(value) = value.parse::<u64>()
                {
                    *sums.entry(name.to_owned()).or_default() += value;
                }
            }
        }
        sums
    }

    /// Node `index`'s `/v1/status`, if it answers.
    async fn status(&self, index: usize) -> Option<Status> {
        let url = format!("http://{}/v1/status", self.cluster.nodes[index].api_addr);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn stop(self) {
        self.watch.stop();
        self.cluster.stop().await;
    }
}

struct Chitchats {
    handles: Vec<ChitchatHandle>,
}

impl Chitchats {
    async fn start(count: usize, interval: Duration) -> Result<Chitchats> {
        let addrs: Vec<SocketAddr> = (0..count).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port(true)))).collect();
        let mut handles = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            let config = ChitchatConfig {
                chitchat_id: ChitchatId::new(format!("c{index}"), 1, *addr),
                cluster_id: "bench".into(),
                gossip_interval: interval,
                listen_addr: *addr,
                seed_nodes: vec![addrs[0].to_string()],
                failure_detector_config: FailureDetectorConfig {
                    initial_interval: interval,
                    max_interval: interval * 10,
                    ..FailureDetectorConfig::default()
                },
                marked_for_deletion_grace_period: Duration::from_secs(3600),
                catchup_callback: None,
                extra_liveness_predicate: None,
            };
            handles.push(spawn_chitchat(config, Vec::new(), &UdpTransport).await?);
        }
        let chitchats = Chitchats { handles };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let mut formed = true;
            for handle in &chitchats.handles {
                formed &= handle.with_chitchat(|c| c.live_nodes().count()).await == count;
            }
            if formed {
                return Ok(chitchats);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{count} chitchat nodes did not form within 120 s")
    }

    /// Sets `key` on node `writer`; returns the time until every node sees it.
    async fn spread(&self, writer: usize, key: &str) -> Result<Duration> {
        let started = Instant::now();
        let writer_id = self.handles[writer].chitchat_id().clone();
        self.handles[writer].with_chitchat(|c| c.self_node_state().set(key, "1")).await;
        let mut waiting: BTreeSet<usize> = (0..self.handles.len()).collect();
        while !waiting.is_empty() {
            for index in waiting.clone() {
                let seen = self.handles[index]
                    .with_chitchat(|c| c.node_state(&writer_id).is_some_and(|s| s.get(key).is_some()))
                    .await;
                if seen {
                    waiting.remove(&index);
                }
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "chitchat never spread {key}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(started.elapsed())
    }

    async fn stop(self) {
        for handle in self.handles {
            let _ = handle.shutdown().await;
        }
    }
}

fn gossip_bytes(node: &RunningNode) -> u64 {
    let text = node.metrics().render();
    text.lines()
        .filter(|l| l.starts_with("grapevine_gossip_bytes_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

async fn compare(sizes: &[usize], runs: usize, interval_ms: u64) -> Result<()> {
    println!(
        "one change to all nodes, gossip interval {interval_ms} ms, {runs} changes per size (writer drawn from seed 1):"
    );
    println!(
        "clocks start at the POST; stop when the last node stores it (version vector), serves it (watch event), or holds the chitchat key"
    );
    println!(
        "{:>5}  {:>24}  {:>24}  {:>24}  {:>12}",
        "nodes", "stored p50 / p99", "served p50 / p99", "chitchat UDP p50 / p99", "stored ratio"
    );
    for &count in sizes {
        let mut random = SplitMix64::new(1);
        let grapevine = Grapevine::start(count, interval_ms).await?;
        let (mut ours, mut served, mut spreads) = (Vec::new(), Vec::new(), Vec::new());
        let before = grapevine.traffic();
        for run in 0..runs {
            let spread = grapevine.spread(random.below(count), &format!("bench-{run}"), json!(run)).await?;
            ours.push(spread.stored);
            served.push(spread.served);
            spreads.push(spread);
        }
        let after = grapevine.traffic();
        let per_change: Vec<String> = after
            .iter()
            .map(|(series, n)| (series, n - before.get(series).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .map(|(series, n)| format!("{series} {:.1}", n as f64 / runs as f64))
            .collect();
        println!("{count} nodes, sync and gossip traffic per change, all nodes summed: {}", per_change.join(", "));
        let probes =
            |outcome: &str| after.get(&format!("sync_probes_total{{reason=\"{outcome}\"}}")).copied().unwrap_or(0);
        println!(
            "{count} nodes, anti-entropy probes (D88): {} found what gossip had missed, {} found nothing, {} failed",
            probes("found"),
            probes("none"),
            probes("failed")
        );
        grapevine.stop().await;
        served.sort();
        print_where_the_time_goes(count, &spreads);
        let chitchats = Chitchats::start(count, Duration::from_millis(interval_ms)).await?;
        let mut theirs = Vec::new();
        for run in 0..runs {
            theirs.push(chitchats.spread(random.below(count), &format!("bench-{run}")).await?);
        }
        chitchats.stop().await;
        ours.sort();
        theirs.sort();
        let (p50, their_p50) = (percentile(&ours, 0.5), percentile(&theirs, 0.5));
        let depth = grapevine_proto::push::depth(count, grapevine_node::sync::FANOUT);
        suite_row(
            &format!("change served by all {count} nodes (watch), p50 / p99"),
            &format!("{:.1} / {:.1} ms", ms(percentile(&served, 0.5)), ms(percentile(&served, 0.99))),
            &format!("stored by all {:.1} / {:.1} ms", ms(p50), ms(percentile(&ours, 0.99))),
            &format!("+{:.1} ms to serve (p50)", ms(percentile(&served, 0.5)) - ms(p50)),
        );
        suite_row(
            &format!("change stored by all {count} nodes, p50 / p99 (1 s gossip)"),
            &format!("{:.1} / {:.1} ms", ms(p50), ms(percentile(&ours, 0.99))),
            &format!("chitchat UDP {:.0} / {:.0} ms", ms(their_p50), ms(percentile(&theirs, 0.99))),
            &format!("{:.0}x faster (push tree {depth} hops deep)", their_p50.as_secs_f64() / p50.as_secs_f64()),
        );
        println!(
            "{count:>5}  {:>10.1} / {:>8.1} ms  {:>10.1} / {:>8.1} ms  {:>10.1} / {:>8.1} ms  {:>11.0}x",
            ms(p50),
            ms(percentile(&ours, 0.99)),
            ms(percentile(&served, 0.5)),
            ms(percentile(&served, 0.99)),
            ms(their_p50),
            ms(percentile(&theirs, 0.99)),
            their_p50.as_secs_f64() / p50.as_secs_f64()
        );
    }
    Ok(())
}

/// Where the time of a change goes, medians over the changes: the POST's answer (the writer
/// stored and applied it), then the first node, half, 90% and all of them serving it, and the CPU
/// the whole process (every node) spent until the last stored it.
fn print_where_the_time_goes(count: usize, spreads: &[Spread]) {
    let median = |pick: &dyn Fn(&Spread) -> Duration| {
        let mut all: Vec<Duration> = spreads.iter().map(pick).collect();
        all.sort();
        ms(percentile(&all, 0.5))
    };
    let nth =
        |fraction: f64| move |spread: &Spread| spread.curve[((count as f64 * fraction).ceil() as usize).max(1) - 1];
    let mut cpu: Vec<f64> = spreads.iter().map(|s| s.cpu * 1000.0).collect();
    cpu.sort_by(f64::total_cmp);
    println!(
        "{count} nodes, where the time goes (medians over {} changes, from the POST): answered {:.1} ms; served by the first node {:.1}, half {:.1}, 90% {:.1}, all {:.1} ms; process CPU until all stored {:.1} ms ({:.1} ms per node)",
        spreads.len(),
        median(&|s| s.answered),
        median(&nth(1.0 / count as f64)),
        median(&nth(0.5)),
        median(&nth(0.9)),
        median(&nth(1.0)),
        cpu[cpu.len() / 2],
        cpu[cpu.len() / 2] / count as f64,
    );
}

/// Idle cost per node at `count` nodes in `cells` cells: gossip payload bytes/s sent, % of a
/// core, and resident memory (the process's growth over the cluster's start, divided by the
/// nodes: an in-process approximation); then the same CPU for chitchat's own UDP transport at
/// the same size (in one cluster) and interval, which sends the same chitchat messages (its
/// loop is the same code).
async fn idle(count: usize, cells: usize, interval_ms: u64, window: Duration) -> Result<f64> {
    let rss_before = process_rss_kib();
    let cluster = Grapevine::start_in_cells(count, cells, interval_ms).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bytes_before: u64 = cluster.cluster.nodes.iter().map(gossip_bytes).sum();
    let cpu_before = grapevine_cluster_tests::process_cpu_seconds();
    tokio::time::sleep(window).await;
    let cpu =
        (grapevine_cluster_tests::process_cpu_seconds() - cpu_before) / window.as_secs_f64() / count as f64 * 100.0;
    let bytes: u64 = cluster.cluster.nodes.iter().map(gossip_bytes).sum::<u64>() - bytes_before;
    let rss_mib = process_rss_kib().saturating_sub(rss_before) as f64 / 1024.0 / count as f64;
    // Each byte is counted once sent and once received: halve for bytes on the wire.
    let per_node = bytes as f64 / 2.0 / count as f64 / window.as_secs_f64();
    cluster.stop().await;
    let chitchats = Chitchats::start(count, Duration::from_millis(interval_ms)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = grapevine_cluster_tests::process_cpu_seconds();
    tokio::time::sleep(window).await;
    let udp_cpu =
        (grapevine_cluster_tests::process_cpu_seconds() - cpu_before) / window.as_secs_f64() / count as f64 * 100.0;
    chitchats.stop().await;
    let nodes = if cells > 1 { format!("{count} nodes in {cells} cells") } else { format!("{count} nodes") };
    println!(
        "idle, {nodes}, gossip interval {interval_ms} ms, {}-second window: {:.0} gossip payload bytes/s sent per node, {cpu:.2}% of a core per node, {rss_mib:.1} MiB per node; chitchat UDP ({count} in one cluster) {udp_cpu:.2}% of a core per node",
        window.as_secs(),
        per_node
    );
    suite_row(
        &format!("idle per node, {nodes}"),
        &format!("{per_node:.0} B/s, {cpu:.2}% core, {rss_mib:.1} MiB"),
        &format!("chitchat UDP {udp_cpu:.2}% core"),
        // Under one clock tick (10 ms) in the window, chitchat's CPU reads as 0: no ratio then.
        &if udp_cpu >= 0.01 {
            format!("{:.1}x the CPU per message (QUIC + TLS)", cpu / udp_cpu)
        } else {
            "chitchat below the CPU clock's resolution".to_owned()
        },
    );
    Ok(per_node)
}

/// The least-squares slope and intercept of `ys` over `xs`.
fn fit(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let covariance: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let variance: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = if variance > 0.0 { covariance / variance } else { 0.0 };
    (slope, my - slope * mx)
}

async fn large_value(count: usize, interval_ms: u64) -> Result<()> {
    let cluster = Grapevine::start(count, interval_ms).await?;
    let value = json!("x".repeat(1024 * 1024 - 2));
    let (mut times, mut served) = (Vec::new(), Vec::new());
    for run in 0..if bench_quick() { 2 } else { 5 } {
        let spread = cluster.spread(run % count, &format!("large-{run}"), value.clone()).await?;
        times.push(spread.stored);
        served.push(spread.served);
    }
    times.sort();
    served.sort();
    println!(
        "a 1 MiB config value to all {count} nodes: median {:.1} ms stored, {:.1} ms served, max {:.1} ms stored ({} values, from the POST to the last node storing it / sending it on its watch)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&served, 0.5)),
        ms(times[times.len() - 1]),
        times.len()
    );
    suite_row(
        &format!("1 MiB config value to all {count} nodes, median stored / served"),
        &format!("{:.1} / {:.1} ms", ms(percentile(&times, 0.5)), ms(percentile(&served, 0.5))),
        "-",
        "-",
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = bench_quick();
    let sizes: Vec<usize> = std::env::var("GRAPEVINE_BENCH_SIZES")
        .unwrap_or_else(|_| if quick { "5".into() } else { "5,20,50".into() })
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs = env_or("GRAPEVINE_BENCH_RUNS", if quick { 3 } else { 10 });
    let interval_ms = env_or("GRAPEVINE_BENCH_INTERVAL_MS", 1000);
    compare(&sizes, runs, interval_ms).await?;
    let window = Duration::from_secs(env_or("GRAPEVINE_BENCH_IDLE_SECONDS", if quick { 3 } else { 10 }));
    let mut per_node = Vec::new();
    for &count in &sizes {
        per_node.push(idle(count, 1, interval_ms, window).await?);
    }
    if sizes.len() >= 2 {
        let xs: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
        let (slope, intercept) = fit(&xs, &per_node);
        println!("idle gossip bytes/s per node = {intercept:.0} + {slope:.1} * nodes (least squares over {sizes:?})");
        suite_row(
            "idle gossip per node, growth with N",
            &format!("{intercept:.0} + {slope:.1} B/s per node"),
            "-",
            "linear fit",
        );
    }
    // The same nodes in cells, beside the flat cluster (`GRAPEVINE_BENCH_CELLS=NODES/CELLS`):
    // a node gossips with its cell only, so its idle cost is its cell's.
    let (count, cells) = std::env::var("GRAPEVINE_BENCH_CELLS")
        .ok()
        .and_then(|v| v.split_once('/').and_then(|(n, c)| Some((n.parse().ok()?, c.parse().ok()?))))
        .unwrap_or(if quick { (6, 2) } else { (100, 5) });
    idle(count, 1, interval_ms, window).await?;
    idle(count, cells, interval_ms, window).await?;
    large_value(if quick { 3 } else { 10 }, interval_ms).await?;
    Ok(())
}
