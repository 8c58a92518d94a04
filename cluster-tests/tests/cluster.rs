//! Real `grapevine node` processes on loopback: changes on any node reach every node, survive
//! `kill -9`, and never cross to or from a node outside the cluster's CA.
//!
//! It checks that a change spreads to every node; a node that was SIGKILLed catches up on restart;
//! a node that starts empty receives everything; SIGTERM releases the data directory; a node with a
//! foreign-CA certificate never joins, and its handshakes are counted in
//! `grapevine_tls_handshake_failures_total`; a change acknowledged with `--wait-replicas 1`
//! survives a `kill -9` of its node at once; `--wait-replicas 1` with the only peer gone exits 1
//! with the timeout message, and the change is stored all the same; and a 3 MiB config value
//! (pushed as an announcement, then pulled) reaches every node intact.

use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, alive_members, check, http_get, wait_until};
use grapevine_node::replies::ChangeReply;
use serde_json::Value;

const PROPAGATION: Duration = Duration::from_secs(10);

fn flag(node: &Node, key: &str) -> Option<Value> {
    node.cli_json(&["flag", "get", key]).ok()
}

/// The value `node` serves for `key`, if any.
fn config(node: &Node, key: &str) -> Option<Value> {
    node.config(key).ok().map(|answer| answer.value)
}

#[test]
fn a_change_on_any_node_is_visible_on_every_node() -> Result<()> {
    let cluster = Cluster::start(3)?;
    let accepted = cluster.nodes[1].change(&["flag", "set", "checkout", "--on"])?;
    let generation = accepted.generation().context("a generation")?.to_owned();
    assert!(generation.starts_with("n2."), "accepted by n2: {accepted:?}");
    for node in &cluster.nodes {
        wait_until(PROPAGATION, &format!("{} to serve checkout", node.name), || {
            flag(node, "checkout").is_some_and(|f| f["value"] == true && f["generation"] == generation.as_str())
        })?;
    }
    let answer = flag(&cluster.nodes[0], "checkout").unwrap();
    assert_eq!(answer["variant"], "on");
    assert_eq!(answer["reason"], "STATIC");

    // A second change, on another node and to a config key, converges to one state digest.
    check(cluster.nodes[2].cli(&["config", "put", "ratelimit", "--value", r#"{"burst": 50}"#]))?;
    wait_until(PROPAGATION, "every node to hold the same state", || {
        let digests: Vec<String> = cluster
            .nodes
            .iter()
            .filter_map(|n| n.status().ok())
            .map(|s| format!("{}/{}", s.state_digest, s.generations))
            .collect();
        digests.len() == 3 && digests.iter().all(|d| *d == digests[0]) && digests[0].ends_with("/2")
    })?;
    assert_eq!(config(&cluster.nodes[0], "ratelimit").unwrap()["burst"], 50);
    Ok(())
}

#[test]
fn a_node_killed_with_sigkill_catches_up_on_restart_and_keeps_what_it_had() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    check(cluster.nodes[1].cli(&["config", "put", "first", "--value", "1"]))?;
    wait_until(PROPAGATION, "n3 to get the first change", || config(&cluster.nodes[2], "first").is_some())?;

    cluster.nodes[2].kill9();
    check(cluster.nodes[0].cli(&["config", "put", "second", "--value", "2"]))?;
    cluster.nodes[2].start()?;

    let n3 = &cluster.nodes[2];
    assert_eq!(config(n3, "first").expect("kept across kill -9"), 1);
    wait_until(PROPAGATION, "restarted n3 to catch up", || config(n3, "second").is_some_and(|c| c == 2))?;
    assert_eq!(n3.history()?.total, 2);
    Ok(())
}

#[test]
fn a_node_started_empty_gets_every_generation() -> Result<()> {
    let mut cluster = Cluster::start(2)?;
    for i in 0..5 {
        check(cluster.nodes[i % 2].cli(&["config", "put", &format!("k{i}"), "--value", &i.to_string()]))?;
    }
    cluster.add_node()?.start()?;
    let late = &cluster.nodes[2];
    wait_until(PROPAGATION, "the late joiner to hold all 5 generations", || {
        late.history().is_ok_and(|h| h.total == 5)
    })?;
    assert_eq!(config(late, "k4").unwrap(), 4);
    Ok(())
}

#[test]
fn sigterm_stops_a_node_cleanly_and_releases_its_data_directory() -> Result<()> {
    let mut cluster = Cluster::start(1)?;
    check(cluster.nodes[0].cli(&["config", "put", "k", "--value", "\"v\""]))?;
    let status = cluster.nodes[0].terminate()?;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    cluster.nodes[0].start()?;
    assert_eq!(config(&cluster.nodes[0], "k").unwrap(), "v");
    Ok(())
}

#[test]
fn a_node_with_a_foreign_ca_certificate_never_joins_and_its_changes_never_arrive() -> Result<()> {
    let mut cluster = Cluster::start(2)?;
    let foreign_ca = cluster.dir.path().join("foreign-ca");
    check(grapevine_cluster_tests::grapevine(&["ca", "init", "--out", foreign_ca.to_str().unwrap()]))?;
    cluster.add_node_with_ca("rogue", &foreign_ca)?.start()?;
    let rogue = &cluster.nodes[2];
    check(rogue.cli(&["flag", "set", "takeover", "--on"]))?;
    check(cluster.nodes[0].cli(&["flag", "set", "legit", "--on"]))?;

    // Give gossip many rounds (100 ms each) to do what it would do.
    std::thread::sleep(Duration::from_secs(3));
    for node in &cluster.nodes[..2] {
        let status = node.status()?;
        let names: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
        assert!(!names.contains(&"rogue"), "{} lists the rogue node: {names:?}", node.name);
        assert!(flag(node, "takeover").is_none(), "{} serves the rogue change", node.name);
        assert!(flag(node, "legit").is_some());
    }
    assert_eq!(alive_members(rogue)?, vec!["rogue".to_owned()]);
    assert!(flag(rogue, "legit").is_none(), "the rogue node read the cluster's change");

    // The cluster did refuse it: its handshakes failed and were counted.
    let (_, metrics) = http_get(&format!("{}/metrics", cluster.nodes[0].url()))?;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("grapevine_tls_handshake_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures > 0.0, "no TLS handshake failure counted on n1:\n{metrics}");
    Ok(())
}

#[test]
fn a_change_acknowledged_with_wait_replicas_survives_the_crash_of_its_node() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let answer = cluster.nodes[0].change(&["config", "put", "durable", "--value", "42", "--wait-replicas", "1"])?;
    let ChangeReply::Accepted(accepted) = &answer else { panic!("not accepted: {answer:?}") };
    assert!(accepted.replicas.is_some_and(|replicas| replicas >= 1), "{answer:?}");
    // kill -9 at once: the change must live on the node(s) that acknowledged it.
    cluster.nodes[0].kill9();
    for node in &cluster.nodes[1..] {
        wait_until(PROPAGATION, &format!("{} to hold the change", node.name), || {
            config(node, "durable").is_some_and(|c| c == 42)
        })?;
    }
    Ok(())
}

#[test]
fn wait_replicas_times_out_with_a_clear_error_when_peers_are_gone() -> Result<()> {
    let mut cluster = Cluster::start(2)?;
    cluster.nodes[1].kill9();
    let output = cluster.nodes[0].cli(&[
        "config",
        "put",
        "alone",
        "--value",
        "1",
        "--wait-replicas",
        "1",
        "--wait-timeout-ms",
        "500",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is stored on n1 but reached 0 of the 1 other nodes asked for within 500 ms"), "{stderr}");
    // Accepted and durable all the same.
    assert_eq!(config(&cluster.nodes[0], "alone").unwrap(), 1);
    Ok(())
}

#[test]
fn a_large_config_value_reaches_every_node_intact() -> Result<()> {
    let cluster = Cluster::start(3)?;
    // 3 MiB: far over what travels inline in a push, under the 4 MiB value limit.
    let text = "0123456789abcdef".repeat(3 * 1024 * 1024 / 16);
    let file = cluster.dir.path().join("large.json");
    std::fs::write(&file, serde_json::to_string(&text)?)?;
    check(cluster.nodes[0].cli(&["config", "put", "large", "--file", file.to_str().unwrap()]))?;
    for node in &cluster.nodes {
        wait_until(PROPAGATION, &format!("{} to hold the large value", node.name), || {
            config(node, "large").is_some_and(|c| c.as_str() == Some(text.as_str()))
        })?;
    }
    Ok(())
}
