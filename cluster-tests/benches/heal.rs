//! Heal-to-converged time of a 2|3 split of 5 real processes at the default gossip interval
//! (1 s): both sides write while the partition holds, then the partition is healed.
//!
//! The clock starts when the fault is removed (the iptables rules flushed, or the link filters
//! cleared without root) and stops when the last node *serves* the merged state: an HTTP
//! `GET /v1/config/{key}` of every key written on the other side returns its new value, on
//! every node. A new user polling with the CLI would see the same state a few ms later.
//!
//! As root the nodes run in a private network namespace and the partition is iptables DROP
//! rules on their UDP ports (what a real network fault looks like to QUIC: packets vanish);
//! otherwise each node's link filter drops the messages, which says so in the output.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench heal` (GRAPEVINE_BENCH_RUNS=N sets the
//! number of partition/heal cycles, default 7; 2 in quick mode; GRAPEVINE_BENCH_NODE_LOG sets
//! the nodes' log filter, whose logs a failed run keeps). Prints the median; no assertion on
//! speed.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, can_use_netns, check, http_get, wait_until};

/// Nodes in the cluster, split [`LEFT`] | the rest.
const NODES: usize = 5;
/// The minority side of the split; the others form the majority.
const LEFT: [usize; 2] = [0, 1];

/// How long the partition holds after both sides served their own write: longer than the
/// failure detector takes to mark the other side dead (phi 8: about 8 gossip intervals) and
/// than the QUIC idle timeout (8 s), so the heal starts from what a real outage leaves: members
/// marked dead, connections across the cut closed, and handshakes to them timing out.
const PARTITION_HOLD: Duration = Duration::from_secs(12);

/// A run that has not converged by then failed: far above any heal the bench measures.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often each poller asks its node: fine enough for a figure in tenths of a second, light
/// enough not to load a 2-core machine.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The median this bench measured before log sync stopped waiting for the failure detector
/// (7 runs, as root with iptables, debug build, on a shared 2-core machine): the comparison of
/// the suite row, so the table shows what the heal path gained.
const BEFORE_SECONDS: f64 = 1.85;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Copies the nodes' logs to a directory that outlives the cluster, and says where.
fn keep_logs(cluster: &Cluster) {
    let Ok(dir) = tempfile::Builder::new().prefix("grapevine-heal-").tempdir().map(tempfile::TempDir::keep) else {
        return;
    };
    for node in &cluster.nodes {
        let _ = std::fs::write(dir.join(format!("{}.log", node.name)), node.log_text());
    }
    eprintln!("node logs kept in {}", dir.display());
}

fn start_cluster() -> Result<Cluster> {
    let mut cluster = if can_use_netns() {
        Cluster::new_in_netns(NODES)?
    } else {
        println!("not root (or no iptables): the partition goes through each node's link filter, not iptables");
        Cluster::new(NODES)?
    };
    for node in &mut cluster.nodes {
        // The default interval: the failure detector and the rounds then take what users see.
        node.gossip_interval_ms = None;
        if let Ok(filter) = std::env::var("GRAPEVINE_BENCH_NODE_LOG") {
            node.env.push(("GRAPEVINE_LOG".into(), filter));
        }
    }
    cluster.start_all()?;
    // The pollers' sockets must reach the nodes' loopback, inside the namespace if any; the
    // threads they run on inherit it from this one.
    cluster.enter_netns()?;
    Ok(cluster)
}

/// The value node `url` serves for config `key`, if any.
fn served(url: &str, key: &str) -> Option<String> {
    let (status, body) = http_get(&format!("{url}/v1/config/{key}")).ok()?;
    if status != 200 {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(body["value"].to_string())
}

/// Polls node `url` until it serves every `(key, value)`, from `since`; the time it took.
fn poll_until_served(url: String, wanted: Vec<(String, String)>, since: Instant) -> JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        let mut missing = wanted;
        while since.elapsed() < CONVERGE_TIMEOUT {
            missing.retain(|(key, value)| served(&url, key).as_deref() != Some(value));
            if missing.is_empty() {
                return Some(since.elapsed());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        None
    })
}

/// One partition/heal cycle: the seconds from the heal to the last node serving both writes.
fn cycle(cluster: &Cluster, run: usize) -> Result<f64> {
    let majority: Vec<usize> = (0..NODES).filter(|n| !LEFT.contains(n)).collect();
    cluster.partition(&[LEFT.to_vec(), majority.clone()])?;
    let left = (format!("heal-left-{run}"), run.to_string());
    let right = (format!("heal-right-{run}"), (run + 1000).to_string());
    check(cluster.nodes[LEFT[0]].cli(&["config", "put", &left.0, "--value", &left.1]))?;
    check(cluster.nodes[majority[0]].cli(&["config", "put", &right.0, "--value", &right.1]))?;
    // Each side holds its own write before the heal, so the clock measures only the crossing.
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    wait_until(Duration::from_secs(20), "each side to serve its own write", || {
        (0..NODES).all(|n| {
            let own = if LEFT.contains(&n) { &left } else { &right };
            served(&urls[n], &own.0).as_deref() == Some(own.1.as_str())
        })
    })?;
    std::thread::sleep(PARTITION_HOLD);

    cluster.heal()?;
    let healed = Instant::now();
    let pollers: Vec<_> = (0..NODES)
        .map(|n| {
            let other = if LEFT.contains(&n) { &right } else { &left };
            poll_until_served(urls[n].clone(), vec![other.clone()], healed)
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for (n, poller) in pollers.into_iter().enumerate() {
        let took = poller.join().expect("a poller thread").with_context(|| {
            format!("{} did not serve the other side's write within {CONVERGE_TIMEOUT:?}", cluster.nodes[n].name)
        })?;
        slowest = slowest.max(took);
    }
    Ok(slowest.as_secs_f64())
}

fn main() -> Result<()> {
    let quick = grapevine_cluster_tests::bench_quick();
    let runs: usize =
        std::env::var("GRAPEVINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 2 } else { 7 });
    let cluster = start_cluster()?;
    let fault = if cluster.in_netns() { "iptables in a network namespace" } else { "link filter" };
    let mut seconds = Vec::new();
    for run in 0..runs {
        let took = cycle(&cluster, run).inspect_err(|_| keep_logs(&cluster))?;
        println!("  run {run}: heal -> merged state served by all {NODES} nodes in {took:.2} s");
        seconds.push(took);
        // The next cycle starts from a whole cluster, as the first did.
        cluster.wait_formed(Duration::from_secs(30))?;
    }
    seconds.sort_by(f64::total_cmp);
    let median = percentile(&seconds, 0.5);
    println!(
        "heal, 2|3 split of {NODES} real processes ({fault}), gossip interval 1 s, partition held {} s, {runs} runs:",
        PARTITION_HOLD.as_secs()
    );
    println!(
        "  heal -> last node serves the merged state: median {median:.2} s, min {:.2} s, max {:.2} s",
        seconds[0],
        seconds[seconds.len() - 1]
    );
    // No `|` in a cell: it separates the cells of the row.
    grapevine_cluster_tests::suite_row(
        &format!(
            "5 real processes split 2 and 3, healed: last node serves the merged state, median (1 s gossip, {fault})"
        ),
        &format!("{median:.2} s"),
        &format!("{BEFORE_SECONDS:.2} s before pulls stopped waiting for the failure detector"),
        &format!("{:.1}x faster", BEFORE_SECONDS / median),
    );
    Ok(())
}
