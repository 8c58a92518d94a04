//! Rotating the cluster CA host by host, as `docs/operations.md` ("Rotate certificates")
//! says: trust both CAs everywhere, re-issue every node from the new one, then drop the old
//! one. The cluster keeps converging at every step, and at the end a certificate of the old CA
//! no longer gets in.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, check, grapevine, wait_until};
use serde_json::{Value, json};

fn config_value(node: &Node, key: &str) -> Value {
    node.cli_json(&["config", "get", key]).map(|answer| answer["value"].clone()).unwrap_or_default()
}

/// Puts `value` on the first node and waits until every running node serves it.
fn converges(cluster: &Cluster, value: u64) -> Result<()> {
    check(cluster.nodes[0].cli(&["config", "put", "step", "--value", &value.to_string()]))?;
    wait_until(Duration::from_secs(20), &format!("step {value} on every node"), || {
        cluster.nodes.iter().all(|n| config_value(n, "step") == json!(value))
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("a PEM file")
}

/// Restarts `node`, which then reads its certificate files again.
fn restart(node: &mut Node) -> Result<()> {
    node.terminate()?;
    node.start()
}

#[test]
fn the_cluster_ca_is_rotated_host_by_host_without_a_split() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    converges(&cluster, 0)?;
    let old_ca = read(&cluster.ca.join("ca.pem"));
    let new_ca_dir = cluster.dir.path().join("new-ca");
    check(grapevine(&["ca", "init", "--out", new_ca_dir.to_str().unwrap()]))?;
    let new_ca = read(&new_ca_dir.join("ca.pem"));

    // 1. Every node trusts both CAs, one restart at a time.
    for index in 0..cluster.nodes.len() {
        std::fs::write(cluster.nodes[index].tls.join("ca.pem"), format!("{old_ca}{new_ca}"))?;
        restart(&mut cluster.nodes[index])?;
        converges(&cluster, 1 + index as u64)?;
    }
    // 2. Every node gets a certificate of the new CA, one at a time; the others still hold
    //    certificates of the old one, which both sides trust.
    for index in 0..cluster.nodes.len() {
        let node = &cluster.nodes[index];
        let out = cluster.dir.path().join(format!("{}-new-tls", node.name));
        let ca = new_ca_dir.to_str().unwrap();
        check(grapevine(&[
            "ca",
            "issue",
            "--ca",
            ca,
            "--name",
            &node.name,
            "--ip",
            "127.0.0.1",
            "--out",
            out.to_str().unwrap(),
        ]))?;
        for file in ["node.pem", "node.key"] {
            std::fs::copy(out.join(file), node.tls.join(file))?;
        }
        restart(&mut cluster.nodes[index])?;
        converges(&cluster, 10 + index as u64)?;
    }
    // 3. The old CA is dropped everywhere.
    for index in 0..cluster.nodes.len() {
        std::fs::write(cluster.nodes[index].tls.join("ca.pem"), &new_ca)?;
        restart(&mut cluster.nodes[index])?;
        converges(&cluster, 20 + index as u64)?;
    }

    // A node whose certificate is from the old CA is now a stranger.
    let old_ca_dir = cluster.ca.clone();
    let stranger = cluster.add_node_with_ca("n9", &old_ca_dir)?;
    std::fs::write(stranger.tls.join("ca.pem"), format!("{old_ca}{new_ca}"))?;
    stranger.start()?;
    std::thread::sleep(Duration::from_secs(3));
    let members = cluster.nodes[0].cli_json(&["status"])?["members"].clone();
    let names: Vec<&str> = members.as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
    assert!(!names.contains(&"n9"), "a certificate of the dropped CA got in: {names:?}");
    Ok(())
}
