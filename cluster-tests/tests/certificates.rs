//! Rotating the cluster CA host by host, as `docs/operations.md` ("Rotate certificates")
//! says: trust both CAs everywhere, re-issue every node from the new one, then drop the old
//! one. The cluster keeps converging at every step, and at the end a certificate of the old CA
//! no longer gets in. Once with a restart per step, once by replacing the files alone (the
//! nodes reload them), where a peer of the dropped CA that was connected is also cut off.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, alive_members, check, counter, grapevine, wait_until};
use serde_json::{Value, json};

fn config_value(node: &Node, key: &str) -> Value {
    node.config(key).map(|answer| answer.value).unwrap_or_default()
}

/// Puts `value` on the first of `nodes` and waits until each of them serves it.
fn converges(nodes: &[Node], value: u64) -> Result<()> {
    check(nodes[0].cli(&["config", "put", "step", "--value", &value.to_string()]))?;
    wait_until(Duration::from_secs(20), &format!("step {value} on every node"), || {
        nodes.iter().all(|n| config_value(n, "step") == json!(value))
    })
}

const RELOADS_OK: &str = "grapevine_tls_reloads_total{reason=\"ok\"}";

/// Replaces files of `node` with `replace`, then waits until the node has reloaded them, as
/// an operator waits for `reloaded TLS certificates` in its log.
fn replace_and_wait_for_reload(node: &Node, replace: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
    let before = counter(node, RELOADS_OK);
    replace()?;
    wait_until(Duration::from_secs(10), &format!("{} to reload its certificates", node.name), || {
        counter(node, RELOADS_OK) > before
    })
}

/// `ca issue` from the CA in `ca_dir` for `node`, into `out`.
fn issue(ca_dir: &Path, node: &Node, out: &Path) -> Result<()> {
    let ca = ca_dir.to_str().unwrap();
    let args = ["ca", "issue", "--ca", ca, "--name", &node.name, "--ip", "127.0.0.1", "--out", out.to_str().unwrap()];
    check(grapevine(&args)).map(drop)
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
    converges(&cluster.nodes, 0)?;
    let old_ca = read(&cluster.ca.join("ca.pem"));
    let new_ca_dir = cluster.dir.path().join("new-ca");
    check(grapevine(&["ca", "init", "--out", new_ca_dir.to_str().unwrap()]))?;
    let new_ca = read(&new_ca_dir.join("ca.pem"));

    // 1. Every node trusts both CAs, one restart at a time.
    for index in 0..cluster.nodes.len() {
        std::fs::write(cluster.nodes[index].tls.join("ca.pem"), format!("{old_ca}{new_ca}"))?;
        restart(&mut cluster.nodes[index])?;
        converges(&cluster.nodes, 1 + index as u64)?;
    }
    // 2. Every node gets a certificate of the new CA, one at a time; the others still hold
    //    certificates of the old one, which both sides trust.
    for index in 0..cluster.nodes.len() {
        let node = &cluster.nodes[index];
        let out = cluster.dir.path().join(format!("{}-new-tls", node.name));
        issue(&new_ca_dir, node, &out)?;
        for file in ["node.pem", "node.key"] {
            std::fs::copy(out.join(file), node.tls.join(file))?;
        }
        restart(&mut cluster.nodes[index])?;
        converges(&cluster.nodes, 10 + index as u64)?;
    }
    // 3. The old CA is dropped everywhere.
    for index in 0..cluster.nodes.len() {
        std::fs::write(cluster.nodes[index].tls.join("ca.pem"), &new_ca)?;
        restart(&mut cluster.nodes[index])?;
        converges(&cluster.nodes, 20 + index as u64)?;
    }

    // A node whose certificate is from the old CA is now a stranger.
    let old_ca_dir = cluster.ca.clone();
    let stranger = cluster.add_node_with_ca("n9", &old_ca_dir)?;
    std::fs::write(stranger.tls.join("ca.pem"), format!("{old_ca}{new_ca}"))?;
    stranger.start()?;
    std::thread::sleep(Duration::from_secs(3));
    let members = cluster.nodes[0].status()?.members;
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert!(!names.contains(&"n9"), "a certificate of the dropped CA got in: {names:?}");
    Ok(())
}

#[test]
fn the_cluster_ca_is_rotated_without_restarts() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let members = cluster.nodes.len();
    converges(&cluster.nodes, 0)?;
    let old_ca = read(&cluster.ca.join("ca.pem"));
    let new_ca_dir = cluster.dir.path().join("new-ca");
    check(grapevine(&["ca", "init", "--out", new_ca_dir.to_str().unwrap()]))?;
    let new_ca = read(&new_ca_dir.join("ca.pem"));
    let pids: Vec<Option<u32>> = cluster.nodes.iter().map(Node::pid).collect();

    // 1. Every node trusts both CAs, one at a time.
    for index in 0..members {
        let node = &cluster.nodes[index];
        replace_and_wait_for_reload(node, || std::fs::write(node.tls.join("ca.pem"), format!("{old_ca}{new_ca}")))?;
        converges(&cluster.nodes, 1 + index as u64)?;
    }
    // 2. Every node gets a certificate of the new CA, one at a time, copied file by file (a
    //    poll between the two copies sees a certificate without its key and keeps the old set).
    for index in 0..members {
        let node = &cluster.nodes[index];
        let out = cluster.dir.path().join(format!("{}-new-tls", node.name));
        issue(&new_ca_dir, node, &out)?;
        replace_and_wait_for_reload(node, || {
            std::fs::copy(out.join("node.pem"), node.tls.join("node.pem"))?;
            std::fs::copy(out.join("node.key"), node.tls.join("node.key")).map(drop)
        })?;
        converges(&cluster.nodes, 10 + index as u64)?;
    }

    // A node holding a certificate of the old CA joins while the old CA is still trusted.
    let old_ca_dir = cluster.ca.clone();
    let stranger = cluster.add_node_with_ca("n9", &old_ca_dir)?;
    std::fs::write(stranger.tls.join("ca.pem"), format!("{old_ca}{new_ca}"))?;
    stranger.start()?;
    let stranger_addr = stranger.gossip.to_string();
    let holds_stranger = |node: &Node| alive_members(node).is_ok_and(|alive| alive.iter().any(|n| n == "n9"));
    wait_until(Duration::from_secs(20), "n9 to join", || cluster.nodes[..members].iter().all(holds_stranger))?;
    let failures = "grapevine_tls_handshake_failures_total";
    let failures_before: Vec<u64> = cluster.nodes[..members].iter().map(|n| counter(n, failures)).collect();

    // 3. The old CA is dropped everywhere.
    for index in 0..members {
        let node = &cluster.nodes[index];
        replace_and_wait_for_reload(node, || std::fs::write(node.tls.join("ca.pem"), &new_ca))?;
        converges(&cluster.nodes[..members], 20 + index as u64)?;
    }
    assert_eq!(pids, cluster.nodes[..members].iter().map(Node::pid).collect::<Vec<_>>(), "a node restarted");

    // Each node closed its open connection to n9, whose certificate it no longer trusts, and
    // refuses n9's new handshakes: n9 is cut off without a restart and stays out.
    let nodes = &cluster.nodes[..members];
    wait_until(Duration::from_secs(20), "n9 to be dead on every node", || !nodes.iter().any(holds_stranger))?;
    for (node, before) in nodes.iter().zip(failures_before) {
        let closed = node.log_text().lines().any(|line| {
            line.contains("closed a connection whose peer certificate is no longer trusted")
                && line.contains(&stranger_addr)
        });
        assert!(closed, "{} did not close its connection to n9:\n{}", node.name, node.log_text());
        assert!(counter(node, failures) > before, "{} counted no refused handshake from n9", node.name);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(!nodes.iter().any(holds_stranger), "n9 got back in with a certificate of the dropped CA");
    converges(nodes, 30)
}
