//! The cluster undoes a bad change by itself, with real processes: a canary whose application
//! fails reports an anomaly, the quorum is reached, and every node converges on one revert,
//! even when the two sides of a partition decide on their own.
//!
//! The "application" on each node is a health check (an `exec` source) that fails while the
//! node serves the bad value: `grapevine config get risky` printing `bad`. It runs in the
//! node's own network namespace, so the same test works with iptables partitions (as root)
//! and with the link filter.
//!
//! It checks that:
//!
//! - a canary that turns bad (waves `1,50%,100%`, 3 s bake, `--min-samples 5`) is reverted on every
//!   node, every node serves the value before it again, only the canary ever applied it
//!   (`applied_here`), every node holds one revert, `history` shows `ANOMALOUS` and `REVERTED by
//!   ... (quorum)`, the webhook (`WebhookSink`) receives the canary's `anomaly` alert and a
//!   `quorum` `revert` alert, and `rollback` of it again answers `already_reverted`;
//! - an operator's `rollback` reverts a healthy change everywhere (`(rollback)` in `history`), and
//!   refuses an unknown generation (exit 1), a malformed id (exit 2) and a control generation (exit
//!   1);
//! - both sides of a 2|3 partition, with the change applied everywhere (`--emergency`) and judged
//!   after 25 samples, reach the quorum (2 of 5) and write the revert on their own; after the heal
//!   every node holds one revert and one state, and gossip shows writers from both sides;
//! - twenty healthy changes under seeded noisy metrics (1% errors, latency wandering by 30%,
//!   request counts varying threefold; `GRAPEVINE_SEED` replays) pushed to all five nodes are
//!   judged healthy by every node and never reverted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, WebhookSink, binary, can_use_netns, check, http_request, wait_until};
use grapevine_node::replies::{Rollback, Rollout};
use grapevine_proto::report::Verdict;

/// A node whose health is its application's check of the value it serves for `risky`.
fn app_health(node: &Node) -> String {
    let check = format!("! {} config get risky --node {} | grep -q bad", binary().display(), node.url());
    format!("[health]\nsample_interval_ms = 200\n[[health.exec]]\ncommand = [\"sh\", \"-c\", {check:?}]\n")
}

fn value(node: &Node, key: &str) -> Option<String> {
    node.config(key).ok()?.value.as_str().map(str::to_owned)
}

/// Whether every member of the rollout reports it healthy.
fn healthy_everywhere(rollout: &Rollout, members: usize) -> bool {
    let reports: Vec<_> = rollout.waves.iter().flat_map(|wave| &wave.members).map(|member| member.report).collect();
    reports.len() == members && reports.iter().all(|report| report.is_some_and(|r| r.verdict == Verdict::Healthy))
}

fn put(node: &Node, value: &str, options: &[&str]) -> Result<String> {
    let json = format!("{value:?}");
    let mut args = vec!["config", "put", "risky", "--value", &json];
    args.extend(options);
    Ok(node.change(&args)?.generation().context("a generation")?.to_owned())
}

fn every_node_serves(cluster: &Cluster, expected: &str, timeout: Duration) -> Result<()> {
    for node in &cluster.nodes {
        wait_until(timeout, &format!("{} to serve {expected}", node.name), || {
            value(node, "risky").as_deref() == Some(expected)
        })?;
    }
    Ok(())
}

#[test]
fn a_canary_that_turns_bad_is_reverted_everywhere_and_no_other_node_ever_applies_it() -> Result<()> {
    let sink = WebhookSink::start()?;
    let mut cluster = Cluster::new(5)?;
    for node in &mut cluster.nodes {
        node.config_toml = format!("{}[[alerts.webhook]]\nurl = {:?}\n", app_health(node), sink.url());
    }
    cluster.start_all()?;
    let first = &cluster.nodes[0];
    put(first, "good", &["--emergency"])?;
    every_node_serves(&cluster, "good", Duration::from_secs(10))?;

    let started = Instant::now();
    let generation = put(first, "bad", &["--waves", "1,50%,100%", "--bake", "3s", "--min-samples", "5"])?;
    let status = first.rollout(&generation)?;
    let canary = status.waves[0].members[0].name.to_string();
    // The canary's check fails, it reports, the quorum (1 of the 1 node that applied it) is
    // reached, and the revert reaches every node.
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(30), &format!("{} to hold the revert", node.name), || {
            node.rollout(&generation).is_ok_and(|s| s.reverted)
        })?;
    }
    let reverted_after = started.elapsed();
    every_node_serves(&cluster, "good", Duration::from_secs(5))?;
    eprintln!("reverted everywhere {reverted_after:?} after the change was accepted");

    for node in &cluster.nodes {
        let status = node.rollout(&generation)?;
        let applied = status.applied_here;
        assert_eq!(applied, node.name == canary, "{} applied it: {applied}; canary {canary}", node.name);
        let anomalous: Vec<String> = status.anomaly_quorum.anomalous.iter().map(ToString::to_string).collect();
        assert_eq!(anomalous, std::slice::from_ref(&canary), "{status:?}");
        // One revert in every log.
        let node_status = node.status()?;
        assert_eq!(node_status.reverted, 1, "{node_status:?}");
    }
    // History says who reported what and why it was reverted.
    let other = cluster.nodes.iter().find(|n| n.name != canary).context("a node besides the canary")?;
    let history = String::from_utf8(check(other.cli(&["history"]))?.stdout)?;
    assert!(history.contains(&format!("{canary} ANOMALOUS")), "{history}");
    assert!(history.contains("REVERTED by") && history.contains("(quorum)"), "{history}");

    // The canary alerted its anomaly; a node that saw the quorum alerted the revert.
    wait_until(Duration::from_secs(10), "both alerts at the webhook", || {
        let bodies = sink.bodies();
        let has = |kind: &str| bodies.iter().any(|b| b["kind"] == kind && b["generation"] == generation.as_str());
        has("anomaly") && has("revert")
    })?;
    let bodies = sink.bodies();
    let anomaly = bodies.iter().find(|b| b["kind"] == "anomaly").context("an anomaly alert")?;
    assert_eq!(anomaly["node"], canary.as_str(), "{anomaly}");
    let revert = bodies.iter().find(|b| b["kind"] == "revert").context("a revert alert")?;
    assert_eq!(revert["trigger"], "quorum", "{revert}");
    assert_eq!(revert["reporting_nodes"], serde_json::json!([canary]), "{revert}");

    // A reverted generation stays reverted: re-shipping the value is a new change.
    check(first.cli(&["rollback", &generation]))?;
    let again: Rollback = first.cli_as(&["rollback", &generation])?;
    assert!(again.already_reverted, "{again:?}");
    let (status, _) = http_request("GET", &format!("{}/v1/rollouts/{generation}", first.url()), None)?;
    assert_eq!(status, 200);
    Ok(())
}

#[test]
fn an_operator_rollback_reverts_a_healthy_change_and_refuses_what_it_cannot_revert() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    cluster.start_all()?;
    let first = &cluster.nodes[0];
    put(first, "good", &[])?;
    let generation = put(first, "bad", &[])?;
    every_node_serves(&cluster, "bad", Duration::from_secs(10))?;
    let output = check(cluster.nodes[2].cli(&["rollback", &generation]))?;
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{generation}/revert")));
    every_node_serves(&cluster, "good", Duration::from_secs(10))?;
    let history = String::from_utf8(check(first.cli(&["history"]))?.stdout)?;
    assert!(history.contains("(rollback)"), "{history}");
    let refused = |args: &[&str], code: i32, message: &str| {
        let output = first.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    };
    refused(&["rollback", "n1.99"], 1, "not in the log");
    refused(&["rollback", "nonsense"], 2, "ORIGIN.SEQ");
    let pause = first.change(&["rollout", "pause", &generation])?;
    let control = pause.generation().context("a control generation")?;
    refused(&["rollback", control], 1, "rollout control");
    Ok(())
}

#[test]
fn both_sides_of_a_partition_revert_on_their_own_and_converge_on_one_revert() -> Result<()> {
    let mut cluster = if can_use_netns() { Cluster::new_in_netns(5)? } else { Cluster::new(5)? };
    for node in &mut cluster.nodes {
        node.config_toml = app_health(node);
    }
    cluster.start_all()?;
    let first = &cluster.nodes[0];
    put(first, "good", &["--emergency"])?;
    every_node_serves(&cluster, "good", Duration::from_secs(10))?;
    // Applied everywhere at once, and judged only after 25 samples (5 s): time to split the
    // cluster before anyone reports.
    let generation = put(first, "bad", &["--emergency", "--min-samples", "25"])?;
    every_node_serves(&cluster, "bad", Duration::from_secs(5))?;
    let sides = [vec![0, 1], vec![2, 3, 4]];
    cluster.partition(&sides)?;
    // Each side sees its own anomalies: 2 of the 5 that applied it is the quorum (0.34 * 5).
    for side in &sides {
        for &index in side {
            let node = &cluster.nodes[index];
            wait_until(Duration::from_secs(30), &format!("{} to revert on its side", node.name), || {
                node.rollout(&generation).is_ok_and(|s| s.reverted)
            })?;
        }
    }
    // Each side wrote the revert itself: the writers a node sees are all on its own side.
    for side in &sides {
        for &index in side {
            let status = cluster.nodes[index].rollout(&generation)?;
            let writers: Vec<&String> = status.reverted_by.keys().collect();
            assert!(!writers.is_empty(), "{status:?}");
            for writer in writers {
                let at = cluster.nodes.iter().position(|n| n.name == *writer).context("a writer")?;
                assert!(side.contains(&at), "{} sees a revert written across the partition by {writer}", index);
            }
        }
    }
    cluster.heal()?;
    // One revert in every log, one state everywhere.
    let states = || -> Vec<(String, usize, usize)> {
        cluster
            .nodes
            .iter()
            .filter_map(|n| n.status().ok())
            .map(|s| (s.state_digest, s.reverted, s.generations))
            .collect()
    };
    let converged = wait_until(Duration::from_secs(30), "one state and one revert everywhere", || {
        let states = states();
        states.len() == 5 && states.iter().all(|s| *s == states[0]) && states[0].1 == 1
    });
    converged.with_context(|| format!("(digest, reverts, generations) of each node: {:?}", states()))?;
    every_node_serves(&cluster, "good", Duration::from_secs(5))?;
    // After the heal, gossip shows writers from both sides: both wrote the same revert.
    wait_until(Duration::from_secs(20), "writers from both sides in gossip", || {
        first.rollout(&generation).is_ok_and(|s| {
            let writers: Vec<usize> =
                s.reverted_by.keys().filter_map(|name| cluster.nodes.iter().position(|n| n.name == *name)).collect();
            sides.iter().all(|side| writers.iter().any(|w| side.contains(w)))
        })
    })?;
    Ok(())
}

/// The applications of every node report noisy but normal metrics (1% errors, latency that
/// wanders by 30%, request counts that vary threefold), drawn from a seed, until `stop`.
fn noisy_applications(
    cluster: &Cluster,
    seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let urls: Vec<String> = cluster.nodes.iter().map(|n| format!("{}/v1/health", n.url())).collect();
    std::thread::spawn(move || {
        let mut rng = grapevine_proto::sim::SplitMix64::new(seed);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for url in &urls {
                let requests = 25 + rng.below(51) as u64;
                let errors = (0..requests).filter(|_| rng.next_unit() < 0.01).count();
                let latency = 40.0 * (0.7 + 0.6 * rng.next_unit());
                let body = format!(r#"{{"requests": {requests}, "errors": {errors}, "latency_p99_ms": {latency:.1}}}"#);
                let _ = http_request("POST", url, Some(&body));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn healthy_changes_under_noisy_metrics_are_never_reverted() -> Result<()> {
    const CHANGES: usize = 20;
    let seed = std::env::var("GRAPEVINE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    eprintln!("noise seed {seed} (set GRAPEVINE_SEED to replay)");
    let mut cluster = Cluster::new(5)?;
    for node in &mut cluster.nodes {
        node.config_toml = "[health]\npush = true\nsample_interval_ms = 200\n".to_owned();
    }
    cluster.start_all()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let applications = noisy_applications(&cluster, seed, stop.clone());
    // A baseline first, then twenty healthy changes, each judged by all five nodes against
    // absolute limits, its baseline and the peers that have not applied it yet.
    std::thread::sleep(Duration::from_secs(3));
    let mut generations = Vec::new();
    for change in 0..CHANGES {
        let node = &cluster.nodes[change % cluster.nodes.len()];
        let answer = node.change(&[
            "config",
            "put",
            &format!("k{change}"),
            "--value",
            "1",
            "--waves",
            "1,100%",
            "--bake",
            "1s",
        ])?;
        generations.push(answer.generation().context("a generation")?.to_owned());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every change reaches every node, judged healthy by each.
    let first = &cluster.nodes[0];
    for generation in &generations {
        wait_until(Duration::from_secs(60), &format!("{generation} judged healthy by every node"), || {
            first.rollout(generation).is_ok_and(|s| healthy_everywhere(&s, 5))
        })?;
    }
    // And they stay so: ten more seconds of noise.
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    applications.join().expect("the application thread");
    for node in &cluster.nodes {
        let status = node.status()?;
        assert_eq!(status.reverted, 0, "seed {seed}: {} reverted a healthy change", node.name);
    }
    for generation in &generations {
        let status = first.rollout(generation)?;
        assert!(status.anomaly_quorum.anomalous.is_empty(), "seed {seed}: {status:?}");
    }
    Ok(())
}
