//! Partitions and loss between real `grapevine node` processes. As root (CI) the nodes run in
//! a private network namespace and faults are iptables rules on their UDP ports (the kernel
//! has no netem); otherwise the same faults go through each node's link filter endpoint.
//! The faults: a 2|3 split, 20% loss on every link, and a node deaf to gossip (link filter only).

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, can_use_netns, check, counter, wait_until};

/// How long after the heal every node must serve the other side's writes. The heal bench
/// measures about 0.1 s (`docs/benchmarks.md`); this bound only catches a heal that waits on
/// timeouts again (a 3 s handshake, an 8 s idle connection), with room for a loaded 2-core CI
/// machine, where one round of CLI polls of 5 nodes takes up to a second.
const HEAL_BOUND: Duration = Duration::from_secs(6);

fn cluster(count: usize) -> Result<Cluster> {
    let mut cluster = if can_use_netns() {
        Cluster::new_in_netns(count)?
    } else {
        eprintln!("not root (or no iptables): faults go through the link filter instead of iptables");
        Cluster::new(count)?
    };
    cluster.start_all()?;
    Ok(cluster)
}

fn serves(node: &Node, key: &str) -> bool {
    node.cli(&["config", "get", key]).status.success()
}

/// Every node reports `generations` generations and one state digest.
fn converged(cluster: &Cluster, generations: usize) -> bool {
    let states: Vec<(usize, String)> =
        cluster.nodes.iter().filter_map(|n| n.status().ok()).map(|s| (s.generations, s.state_digest)).collect();
    states.len() == cluster.nodes.len() && states.iter().all(|s| *s == states[0]) && states[0].0 == generations
}

#[test]
fn a_2_3_split_of_real_processes_heals_to_one_state() -> Result<()> {
    let cluster = cluster(5)?;
    cluster.partition(&[vec![0, 1], vec![2, 3, 4]])?;
    let nodes = &cluster.nodes;
    check(nodes[0].cli(&["config", "put", "left", "--value", "1"]))?;
    check(nodes[3].cli(&["config", "put", "right", "--value", "2"]))?;
    check(nodes[1].cli(&["config", "put", "shared", "--value", "10"]))?;
    check(nodes[4].cli(&["config", "put", "shared", "--value", "20"]))?;
    std::thread::sleep(Duration::from_millis(1500));
    for node in &nodes[2..] {
        assert!(!serves(node, "left"), "{} got a change across the partition", node.name);
    }
    for node in &nodes[..2] {
        assert!(!serves(node, "right"), "{} got a change across the partition", node.name);
    }

    cluster.heal()?;
    wait_until(HEAL_BOUND, "every node to serve the other side's writes after the heal", || {
        nodes[..2].iter().all(|n| serves(n, "right")) && nodes[2..].iter().all(|n| serves(n, "left"))
    })?;
    wait_until(Duration::from_secs(15), "one state after the heal", || converged(&cluster, 4))?;
    let shared: Vec<String> =
        nodes.iter().map(|n| n.config("shared").map(|c| c.value.to_string())).collect::<Result<_>>()?;
    assert!(shared.iter().all(|v| *v == shared[0]), "shared differs: {shared:?}");
    Ok(())
}

#[test]
fn real_processes_converge_under_twenty_percent_loss() -> Result<()> {
    let cluster = cluster(4)?;
    cluster.loss(0.2)?;
    for i in 0..12 {
        check(cluster.nodes[i % 4].cli(&["config", "put", &format!("k{}", i % 5), "--value", &i.to_string()]))?;
    }
    wait_until(Duration::from_secs(20), "one state under loss", || converged(&cluster, 12))?;
    cluster.heal()?;
    Ok(())
}

/// A node whose gossip stops while pushes and pulls still pass (its view of its peers frozen
/// from before a change) gets the change from the anti-entropy probe (D88): no gossip trigger
/// shows it a peer ahead, and the writer's sweep and the relay's push tried it while it was cut
/// off. Gossip runs every 1 s here so that its frozen view still holds the peers live (the
/// failure detector waits about 18 intervals of silence) while it probes.
#[test]
fn a_node_deaf_to_gossip_gets_a_change_it_missed_by_probing() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    for node in &mut cluster.nodes {
        node.gossip_interval_ms = Some(1_000);
    }
    cluster.start_all()?;
    let nodes = &cluster.nodes;
    nodes[2].set_link(r#"{"peer": null, "drop": true}"#)?;
    check(nodes[0].cli(&["config", "put", "missed", "--value", "1"]))?;
    wait_until(Duration::from_secs(5), "the other node to serve the change", || serves(&nodes[1], "missed"))?;
    // The writer's sweep and the relay's push to the cut-off node have failed by now.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!serves(&nodes[2], "missed"), "the change crossed a cut link");
    nodes[2].set_link(r#"{"peer": null, "drop": true, "gossip_only": true}"#)?;
    wait_until(Duration::from_secs(8), "the node deaf to gossip to serve the change", || serves(&nodes[2], "missed"))?;
    let found = counter(&nodes[2], r#"grapevine_sync_probes_total{reason="found"}"#);
    assert!(found >= 1, "a probe brought the change, and is counted so: {found}");
    Ok(())
}
