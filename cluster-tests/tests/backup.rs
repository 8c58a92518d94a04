//! `grapevine backup`: a consistent copy of a running node's store, which restores the node
//! (alone: what it held at the backup; with peers: that, then whatever is newer from them).

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, check, wait_until};
use grapevine_node::replies::History;
use serde_json::{Value, json};

fn config_value(node: &Node, key: &str) -> Value {
    node.config(key).map(|answer| answer.value).unwrap_or_default()
}

/// Each generation's id and content hash, newest first.
fn log_of(node: &Node) -> Result<Vec<(String, String)>> {
    let history: History = node.cli_as(&["history", "--limit", "100"])?;
    Ok(history.generations.into_iter().map(|g| (g.id, g.hash)).collect())
}

fn generations(node: &Node) -> Option<usize> {
    node.status().ok().map(|status| status.generations)
}

#[test]
fn a_backup_of_a_running_node_restores_it() -> Result<()> {
    let mut cluster = Cluster::start(2)?;
    let backup = cluster.dir.path().join("n1-backup.redb");
    for round in 0..20 {
        check(cluster.nodes[round % 2].cli(&[
            "config",
            "put",
            "limits",
            "--value",
            &format!("{{\"round\": {round}}}"),
        ]))?;
    }
    check(cluster.nodes[0].cli(&["rollback", "n2.10"]))?;
    wait_until(Duration::from_secs(10), "both nodes to hold the 20 changes", || {
        cluster.nodes.iter().all(|n| generations(n) == Some(20))
    })?;
    let before = log_of(&cluster.nodes[0])?;

    let saved = cluster.nodes[0].cli_json(&["backup", "--out", backup.to_str().unwrap()])?;
    assert!(saved["bytes"].as_u64().is_some_and(|b| b > 0), "{saved}");
    // Every value in the clear: the files are the user's alone, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&backup), 0o600, "the backup");
    assert_eq!(mode(&cluster.nodes[0].data), 0o700, "the data directory");
    assert_eq!(mode(&cluster.nodes[0].data.join("grapevine.redb")), 0o600, "the store");
    let again = cluster.nodes[0].cli(&["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "an existing file is never overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // A change after the backup, then the node's disk is lost.
    check(cluster.nodes[1].cli(&["config", "put", "limits", "--value", "{\"round\": 99}"]))?;
    cluster.nodes[0].terminate()?;
    std::fs::remove_dir_all(&cluster.nodes[0].data)?;
    std::fs::create_dir_all(&cluster.nodes[0].data)?;
    std::fs::copy(&backup, cluster.nodes[0].data.join("grapevine.redb"))?;

    // Restored: the same log, reverts and all, then the newer change from its peer.
    cluster.nodes[1].terminate()?;
    cluster.nodes[0].start()?;
    assert_eq!(log_of(&cluster.nodes[0])?, before, "the backup holds the log as it was");
    assert_eq!(config_value(&cluster.nodes[0], "limits"), json!({"round": 18}), "n2.10 (round 19) stays reverted");
    cluster.nodes[1].start()?;
    wait_until(Duration::from_secs(15), "the restored node to catch up", || {
        config_value(&cluster.nodes[0], "limits") == json!({"round": 99})
    })?;
    Ok(())
}
