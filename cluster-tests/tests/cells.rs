//! Cells (issue 19, `docs/operations.md` "Cells"): a node's `cell` makes its gossip a cluster of
//! that cell's nodes only, whatever its seeds list, and every node of a cell names the same
//! representatives, replaced by the next in rank when one dies.

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, alive_members, check, counter, wait_until};
use grapevine_proto::NodeName;
use grapevine_proto::cell::{REPRESENTATIVES, representatives};

const MEMBERSHIP: Duration = Duration::from_secs(30);

/// The representatives of `cell` among `names`, as every node must name them.
fn expected(cell: &str, names: &[&str]) -> Vec<String> {
    let names = names.iter().map(|n| n.parse::<NodeName>().expect("a valid name"));
    let reps = representatives(&cell.parse().expect("a valid cell"), names.map(|n| (n.clone(), n)), REPRESENTATIVES);
    reps.into_iter().map(String::from).collect()
}

/// Waits until `node` sees exactly `members` alive.
fn sees_exactly(node: &Node, members: &[&str]) -> Result<()> {
    let mut want: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
    want.sort();
    wait_until(MEMBERSHIP, &format!("{} to see exactly {want:?} alive", node.name), || {
        alive_members(node).is_ok_and(|mut alive| {
            alive.sort();
            alive == want
        })
    })
}

/// Waits until `node` names `reps` as its cell's representatives.
fn names_representatives(node: &Node, reps: &[String]) -> Result<()> {
    wait_until(MEMBERSHIP, &format!("{} to name {reps:?} its representatives", node.name), || {
        node.status().is_ok_and(|status| status.cell.representatives == reps)
    })
}

#[test]
fn a_cell_gossips_apart_and_replaces_a_representative_that_dies() -> Result<()> {
    // n1..n4 in cell "a", n5 and n6 in cell "b"; n6 lists a node of cell "a" as a seed too.
    let mut cluster = Cluster::new(6)?;
    let (a_seed, b_seed) = (cluster.nodes[0].gossip, cluster.nodes[4].gossip);
    for (index, node) in cluster.nodes.iter_mut().enumerate() {
        let cell = if index < 4 { "a" } else { "b" };
        node.config_toml = format!("cell = \"{cell}\"\n{}", node.config_toml);
        node.seeds = match index {
            0..4 => vec![a_seed],
            4 => vec![],
            _ => vec![a_seed, b_seed],
        };
        node.start()?;
    }
    let (cell_a, cell_b) = (["n1", "n2", "n3", "n4"], ["n5", "n6"]);
    for node in &cluster.nodes[..4] {
        sees_exactly(node, &cell_a)?;
    }
    for node in &cluster.nodes[4..] {
        sees_exactly(node, &cell_b)?;
    }
    let reps = expected("a", &cell_a);
    for node in &cluster.nodes[..4] {
        names_representatives(node, &reps)?;
        let status = node.status()?;
        assert_eq!(status.cell.name, "a");
        let text = String::from_utf8(check(node.cli(&["status"]))?.stdout)?;
        let line = format!("cell a: representatives {}", reps.join(", "));
        assert!(text.contains(&line), "{text}");
        let metric = r#"grapevine_cell_representative{cell="a"}"#;
        assert_eq!(counter(node, metric), u64::from(reps.contains(&node.name)), "{}", node.name);
    }
    names_representatives(&cluster.nodes[4], &expected("b", &cell_b))?;

    // The first representative dies: the next in rank takes its place, and the others stay.
    let dead = reps[0].clone();
    let index = cluster.nodes.iter().position(|n| n.name == dead).expect("a node of the cluster");
    cluster.nodes[index].kill9();
    let rest: Vec<&str> = cell_a.iter().copied().filter(|n| **n != dead).collect();
    let after = expected("a", &rest);
    assert_eq!(after[..2], reps[1..], "only the dead one is replaced");
    for node in cluster.nodes[..4].iter().filter(|n| n.name != dead) {
        names_representatives(node, &after)?;
    }
    Ok(())
}
