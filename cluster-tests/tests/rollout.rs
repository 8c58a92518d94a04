//! Health-gated waves with real processes: a change reaches a canary first, then wider waves,
//! each only while the earlier waves report healthy for the bake time.
//!
//! Configs: `[health] push = true, sample_interval_ms = 200` with `[rollout] min_samples = 10`, or
//! no `[health]`, and the built-in default policy. It checks that:
//!
//! - an unhealthy canary (50% errors pushed for 5 s, with waves `1,50%,100%`, a 1 s bake and
//!   `--anomaly-quorum-min 2`, so that its report alone does not revert it) keeps the change on the
//!   canary: no other node applies it, every node holds it (`config get --desired`), and `rollout
//!   status` shows one open wave, the canary `anomalous`, `reverted` false and 2 reports needed;
//! - a healthy change reaches every wave in order (every node of a later wave applies after every
//!   node of an earlier one), wave 1 no sooner than one bake, and `all_waves_open` shows in the
//!   status;
//! - a partition that cuts off the canary (no health source, waves `1,100%`, 2 s bake) keeps the
//!   other nodes from applying for 5 s, and they apply after the heal;
//! - `rollout pause` shows in `controls`, `rollout promote` opens wave 1 of a one-hour bake, bad
//!   policies are refused with their messages (exit 1), and `--emergency` reaches every node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, check, http_request, wait_until};
use grapevine_proto::report::Verdict;

/// Nodes that judge by pushed samples (at least 10 requests).
const PUSH_HEALTH: &str = "[health]\npush = true\nsample_interval_ms = 200\n[rollout]\nmin_samples = 10\n";

fn cluster(count: usize, config_toml: &str) -> Result<Cluster> {
    let mut cluster = Cluster::new(count)?;
    for node in &mut cluster.nodes {
        node.config_toml = config_toml.to_owned();
    }
    cluster.start_all()?;
    Ok(cluster)
}

/// Wave index of each node in the rollout of `generation`.
fn waves(node: &Node, generation: &str) -> Result<BTreeMap<String, usize>> {
    let rollout = node.rollout(generation)?;
    let members = rollout.waves.iter().flat_map(|wave| wave.members.iter().map(|m| (m.name.to_string(), wave.index)));
    Ok(members.collect())
}

fn applied(node: &Node, key: &str) -> bool {
    node.cli(&["config", "get", key]).status.success()
}

fn push_health(node: &Node, errors: u64) {
    let body = format!(r#"{{"requests": 100, "errors": {errors}, "latency_p99_ms": 5}}"#);
    let _ = http_request("POST", &format!("{}/v1/health", node.url()), Some(&body));
}

fn put(node: &Node, key: &str, waves: &str, bake: &str) -> Result<String> {
    put_with(node, key, waves, bake, &[])
}

fn put_with(node: &Node, key: &str, waves: &str, bake: &str, options: &[&str]) -> Result<String> {
    let mut args = vec!["config", "put", key, "--value", "1", "--waves", waves, "--bake", bake];
    args.extend(options);
    Ok(node.change(&args)?.generation().context("a generation")?.to_owned())
}

#[test]
fn an_unhealthy_canary_keeps_the_change_on_the_canary() -> Result<()> {
    let cluster = cluster(5, PUSH_HEALTH)?;
    // Two anomaly reports revert it: the canary's alone only holds the rollout.
    let generation = put_with(&cluster.nodes[0], "risky", "1,50%,100%", "1s", &["--anomaly-quorum-min", "2"])?;
    let waves = waves(&cluster.nodes[0], &generation)?;
    // An absurd count is refused, not summed: once it wrapped into a small count whose errors
    // looked like a rate over 100%, "within limits".
    let absurd = r#"{"requests": 18446744073709551615, "errors": 0}"#;
    let (status, body) = http_request("POST", &format!("{}/v1/health", cluster.nodes[0].url()), Some(absurd))?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("requests must be at most 1000000000000 per sample"), "{body}");
    let started = Instant::now();
    // For 5 s (5 bakes), the canary's application reports 50% errors, the others none.
    while started.elapsed() < Duration::from_secs(5) {
        for node in &cluster.nodes {
            push_health(node, if waves[&node.name] == 0 { 50 } else { 0 });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in &cluster.nodes {
        let on_canary = waves[&node.name] == 0;
        assert_eq!(
            applied(node, "risky"),
            on_canary,
            "{} (wave {}) applied: {}",
            node.name,
            waves[&node.name],
            !on_canary
        );
        // Every node holds it in its log all the same.
        check(node.cli(&["config", "get", "risky", "--desired"]))?;
    }
    let status = cluster.nodes[1].rollout(&generation)?;
    assert_eq!(status.open_waves, 1, "{status:?}");
    let canary = status.waves[0].members[0].report.map(|report| report.verdict);
    assert_eq!(canary, Some(Verdict::Anomalous), "{status:?}");
    assert!(!status.reverted, "one report of the two needed: {status:?}");
    assert_eq!(status.anomaly_quorum.needed, 2, "{status:?}");
    Ok(())
}

#[test]
fn a_healthy_change_reaches_every_wave_in_order() -> Result<()> {
    let cluster = cluster(5, PUSH_HEALTH)?;
    // The clock starts before the change is sent: the canary applies it before `put` returns,
    // and the bake runs from then (a clock started after `put` saw wave 1 open 989 ms later).
    let started = Instant::now();
    let generation = put(&cluster.nodes[2], "good", "1,50%,100%", "1s")?;
    let waves = waves(&cluster.nodes[2], &generation)?;
    let mut applied_at: BTreeMap<String, Duration> = BTreeMap::new();
    while applied_at.len() < cluster.nodes.len() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "rollout did not finish: {applied_at:?}");
        for node in &cluster.nodes {
            push_health(node, 0);
            if !applied_at.contains_key(&node.name) && applied(node, "good") {
                applied_at.insert(node.name.clone(), started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every node of a later wave applied after every node of an earlier one.
    for (a, a_at) in &applied_at {
        for (b, b_at) in &applied_at {
            if waves[a] < waves[b] {
                assert!(a_at < b_at, "{a} (wave {}) at {a_at:?}, {b} (wave {}) at {b_at:?}", waves[a], waves[b]);
            }
        }
    }
    // Each wave after the first waited at least one bake.
    let first_of = |wave: usize| applied_at.iter().filter(|(n, _)| waves[*n] == wave).map(|(_, t)| *t).min().unwrap();
    assert!(first_of(1) >= Duration::from_secs(1), "wave 1 opened before the bake: {applied_at:?}");
    wait_until(Duration::from_secs(5), "every wave open in the status", || {
        cluster.nodes[0].rollout(&generation).is_ok_and(|s| s.all_waves_open)
    })?;
    Ok(())
}

#[test]
fn a_partition_that_cuts_off_the_canary_stalls_the_next_wave_until_it_heals() -> Result<()> {
    // No health source: an applied generation is healthy once baked.
    let cluster = cluster(4, "")?;
    let generation = put(&cluster.nodes[0], "cut", "1,100%", "2s")?;
    let waves = waves(&cluster.nodes[0], &generation)?;
    let canary = cluster.nodes.iter().position(|n| waves[&n.name] == 0).unwrap();
    let others: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != canary).collect();
    cluster.partition(&[vec![canary], others.clone()])?;
    std::thread::sleep(Duration::from_secs(5));
    for &other in &others {
        assert!(
            !applied(&cluster.nodes[other], "cut"),
            "{} applied without the canary's report",
            cluster.nodes[other].name
        );
    }
    cluster.heal()?;
    for &other in &others {
        wait_until(Duration::from_secs(20), "the wave to open after the heal", || {
            applied(&cluster.nodes[other], "cut")
        })?;
    }
    Ok(())
}

#[test]
fn operators_pause_and_promote_rollouts_and_bad_policies_are_refused() -> Result<()> {
    let cluster = cluster(3, "")?;
    let node = &cluster.nodes[0];
    let generation = put(node, "slow", "1,100%", "5m")?;
    let waves = waves(node, &generation)?;
    let later: Vec<&Node> = cluster.nodes.iter().filter(|n| waves[&n.name] == 1).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(later.iter().all(|n| !applied(n, "slow")), "a five-minute bake let wave 1 in");
    check(node.cli(&["rollout", "pause", &generation]))?;
    wait_until(Duration::from_secs(5), "the pause to show", || {
        node.rollout(&generation).is_ok_and(|s| s.controls.paused)
    })?;
    check(node.cli(&["rollout", "promote", &generation]))?;
    for n in &later {
        wait_until(Duration::from_secs(10), "promotion to open wave 1", || applied(n, "slow"))?;
    }
    let refused = |args: &[&str], message: &str| {
        let output = node.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    };
    refused(&["config", "put", "k", "--value", "1", "--waves", "50%,10%,100%"], "waves must grow");
    refused(&["config", "put", "k", "--value", "1", "--waves", "1,50%"], "last wave must be 100%");
    refused(&["config", "put", "k", "--value", "1", "--waves", "1,150%"], "from 1% to 100%");
    refused(&["config", "put", "k", "--value", "1", "--bake", "0s"], "--emergency");
    refused(&["config", "put", "k", "--value", "1", "--health-quorum", "1.5"], "health quorum must be in (0, 1]");
    refused(&["config", "put", "k", "--value", "1", "--waves-by", "zone"], "no live member has that label");
    refused(&["config", "put", "k", "--value", "1", "--bake", "1h"], "watch window must be at least the bake time");
    assert!(!applied(node, "k"), "a refused change was applied");
    // --emergency goes everywhere at once.
    check(node.cli(&["config", "put", "kill", "--value", "1", "--emergency"]))?;
    for n in &cluster.nodes {
        wait_until(Duration::from_secs(10), "the emergency change everywhere", || applied(n, "kill"))?;
    }
    Ok(())
}
