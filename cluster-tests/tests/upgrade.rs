//! Rolling upgrades across a wire-format change (format 4 to 5: a generation carries its
//! operator's signature). A node of format 5 reads a store written by a build of format 4, and
//! nodes of both formats share one cluster until the last one is upgraded.
//!
//! The store fixture was written by the build of format 4 itself (commit 15805e4). The node
//! of format 4 in the mixed cluster is this build acting as one (`test_wire_version = 4`): it
//! writes and reads format 4 only, as that build did.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use grapevine_cluster_tests::{Cluster, Node, check, grapevine, http_get, wait_until};
use serde_json::Value;

const OLD_FORMAT: &str = "test_wire_version = 4\n";

/// The author a change of the test harness records: the name of its token.
const AUTHOR: &str = "token:tests";

fn history(node: &Node) -> Result<Vec<Value>> {
    let answer = node.cli_json(&["history"])?;
    Ok(answer["generations"].as_array().cloned().unwrap_or_default())
}

fn author_of(node: &Node, generation: &str) -> Result<Value> {
    let entry = history(node)?.into_iter().find(|g| g["id"] == generation);
    Ok(entry.with_context(|| format!("{generation} is not in the history of {}", node.name))?["author"].clone())
}

fn config_value(node: &Node, key: &str) -> Option<Value> {
    node.cli_json(&["config", "get", key]).ok().map(|answer| answer["value"].clone())
}

fn counter(node: &Node, name: &str) -> f64 {
    let Ok((200, text)) = http_get(&format!("{}/metrics", node.url())) else {
        return 0.0;
    };
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Puts config `key` = `value` through `node` (as the harness's token); returns the generation.
fn put(node: &Node, key: &str, value: &str) -> Result<String> {
    let answer = node.cli_json(&["config", "put", key, "--value", value])?;
    Ok(answer["generation"].as_str().context("an accepted change names its generation")?.to_owned())
}

fn wire_formats(node: &Node) -> Vec<Value> {
    let status = node.cli_json(&["status"]).unwrap_or_default();
    status["members"].as_array().into_iter().flatten().map(|m| m["wire"].clone()).collect()
}

/// Starts node `old1` over the gzipped store `fixture` (in `node/tests/fixtures/`).
fn node_over(cluster: &mut Cluster, fixture: &str) -> Result<()> {
    let ca = cluster.ca.clone();
    let node = cluster.add_node_with_ca("old1", &ca)?;
    std::fs::create_dir_all(&node.data)?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/tests/fixtures").join(fixture);
    let unzipped = Command::new("gzip").arg("-dc").arg(&fixture).output().context("gzip runs")?;
    ensure!(unzipped.status.success(), "gunzip {}: {}", fixture.display(), String::from_utf8_lossy(&unzipped.stderr));
    std::fs::write(node.data.join("grapevine.redb"), &unzipped.stdout)?;
    node.start()
}

#[test]
fn a_store_written_by_the_previous_format_is_read_and_served() -> Result<()> {
    let mut cluster = Cluster::new(0)?;
    node_over(&mut cluster, "store-v4-old1.redb.gz")?;
    let node = &mut cluster.nodes[0];

    // What the build of format 4 wrote: a flag, a config value with a schema, a newer value of
    // it that was rolled back; each by the harness's token.
    let ids: Vec<Value> = history(node)?.iter().map(|g| g["id"].clone()).collect();
    assert_eq!(ids, ["old1.3", "old1.2", "old1.1"], "the whole log is read");
    assert!(history(node)?.iter().all(|g| g["author"] == AUTHOR && g["signed_by"].is_null()));
    assert_eq!(config_value(node, "limits"), Some(serde_json::json!({"burst": 50})), "old1.3 stays reverted");
    let flag = node.cli_json(&["flag", "get", "checkout"])?;
    assert_eq!(flag["value"], true, "{flag}");
    let refused = node.cli(&["config", "put", "limits", "--value", "{}"]);
    assert!(!refused.status.success(), "the schema stored in format 4 still holds");

    // New records go in format 5 beside the old ones, and the mixed store reads back.
    let id = put(node, "limits", r#"{"burst": 70}"#)?;
    node.terminate()?;
    node.start()?;
    assert_eq!(author_of(node, &id)?, AUTHOR);
    assert_eq!(config_value(node, "limits"), Some(serde_json::json!({"burst": 70})));
    assert_eq!(history(node)?.len(), 4);
    Ok(())
}

/// A cluster that started on format 3 upgraded through format 4, whose build read the old
/// records from its store and left them there: this build reads them too, and rewrites them
/// in format 5 at start, so that the build after it (which reads formats 5 and 6) reads them.
#[test]
fn a_store_the_format_3_build_wrote_is_read_and_rewritten() -> Result<()> {
    let mut cluster = Cluster::new(0)?;
    node_over(&mut cluster, "store-v3-old1.redb.gz")?;
    let node = &mut cluster.nodes[0];
    ensure!(node.log_text().contains("rewrote records of an older format in the newest"), "{}", node.log_text());
    for round in 0..2 {
        let ids: Vec<Value> = history(node)?.iter().map(|g| g["id"].clone()).collect();
        assert_eq!(ids, ["old1.3", "old1.2", "old1.1"], "round {round}: the whole log is read");
        assert!(history(node)?.iter().all(|g| g["author"].is_null()), "format 3 recorded no author");
        assert_eq!(config_value(node, "limits"), Some(serde_json::json!({"burst": 50})), "old1.3 stays reverted");
        node.terminate()?;
        node.start()?;
    }
    Ok(())
}

#[test]
fn nodes_of_two_formats_share_a_cluster_through_a_rolling_upgrade() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    // Top-level options go before the `[rollout]` table of the default config.
    cluster.nodes[2].config_toml.insert_str(0, OLD_FORMAT);
    cluster.start_all()?;
    let [new, _, old] = [0, 1, 2];
    wait_until(Duration::from_secs(10), "n1 to see n3's format", || wire_formats(&cluster.nodes[new]) == [5, 5, 4])?;

    // Unsigned changes (this cluster names no root key) flow both ways, with their authors.
    let from_new = put(&cluster.nodes[new], "a", "1")?;
    let from_old = put(&cluster.nodes[old], "b", "2")?;
    let spread = |cluster: &Cluster| {
        cluster.nodes.iter().all(|n| {
            config_value(n, "a") == Some(serde_json::json!(1)) && config_value(n, "b") == Some(serde_json::json!(2))
        })
    };
    wait_until(Duration::from_secs(15), "both changes on every node", || spread(&cluster))?;
    assert_eq!(author_of(&cluster.nodes[old], &from_new)?, AUTHOR);
    assert_eq!(author_of(&cluster.nodes[new], &from_old)?, AUTHOR);

    // A signed change cannot be held in format 4: it is withheld from the old node (counted),
    // and reaches it once it is upgraded in place (same data directory, written in format 4).
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, operator) = (keys.join("root.key"), keys.join("alice.key"));
    check(grapevine(&["key", "new", "--name", "root", "--out", root.to_str().unwrap()]))?;
    check(grapevine(&["key", "new", "--name", "alice", "--out", operator.to_str().unwrap()]))?;
    let (root_arg, operator_arg) = (root.to_str().unwrap(), operator.to_str().unwrap());
    check(grapevine(&["key", "delegate", "--root", root_arg, "--key", operator_arg, "--cluster", "grapevine"]))?;
    let answer = cluster.nodes[new].cli_json(&["config", "put", "a", "--value", "3", "--signing-key", operator_arg])?;
    let signed = answer["generation"].as_str().context("a generation")?.to_owned();
    let withheld = "grapevine_sync_format_withheld_total";
    wait_until(Duration::from_secs(15), "the signed generation withheld from the format 4 node", || {
        counter(&cluster.nodes[new], withheld) + counter(&cluster.nodes[1], withheld) > 0.0
    })?;
    assert_eq!(author_of(&cluster.nodes[1], &signed)?, "alice");
    assert!(author_of(&cluster.nodes[old], &signed).is_err(), "format 4 cannot hold {signed}");

    cluster.nodes[old].terminate()?;
    cluster.nodes[old].config_toml = cluster.nodes[old].config_toml.replace(OLD_FORMAT, "");
    cluster.nodes[old].start()?;
    wait_until(Duration::from_secs(10), "every member to publish format 5", || {
        wire_formats(&cluster.nodes[new]) == [5, 5, 5]
    })?;
    wait_until(Duration::from_secs(15), "the signed change on the upgraded node", || {
        author_of(&cluster.nodes[old], &signed).is_ok_and(|a| a == "alice")
    })?;
    assert_eq!(author_of(&cluster.nodes[old], &from_old)?, AUTHOR, "the old log reads back");
    Ok(())
}
