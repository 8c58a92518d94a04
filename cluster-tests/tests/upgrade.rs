//! Rolling upgrades across a wire-format change (format 6 to 7: a generation may carry terms, a
//! scheduled start, approvals and governance records). A node of format 7 reads a store written
//! by a build of format 6, and nodes of both formats share one cluster until the last one is
//! upgraded.
//!
//! The store fixture was written by the build of format 6 itself (commit b213200, opening the
//! format-5 fixture, which it rewrote in format 6). The node of format 6 in the mixed cluster is
//! this build acting as one (`test_wire_version = 6`): it writes and reads format 6 only, as that
//! build did.
//!
//! The tests: a store of format 6 is read and rewritten, one of format 5 is refused, and a cluster
//! runs a node of format 6 through its in-place upgrade (refusing a scheduled change, which needs
//! format 7, while that node is live).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use grapevine_cluster_tests::{Cluster, Node, counter, wait_until};
use grapevine_node::replies::GenerationSummary;
use serde_json::Value;

const OLD_FORMAT: &str = "test_wire_version = 6\n";

/// The author a change of the test harness records: the name of its token.
const AUTHOR: &str = "token:tests";

fn history(node: &Node) -> Result<Vec<GenerationSummary>> {
    Ok(node.history()?.generations)
}

/// Who `generation` is by, as `node`'s history records it.
fn author_of(node: &Node, generation: &str) -> Result<Option<String>> {
    let entry = history(node)?.into_iter().find(|g| g.id == generation);
    let entry = entry.with_context(|| format!("{generation} is not in the history of {}", node.name))?;
    Ok(entry.author.map(|author| author.to_string()))
}

fn config_value(node: &Node, key: &str) -> Option<Value> {
    node.config(key).ok().map(|answer| answer.value)
}

/// Puts config `key` = `value` through `node` (as the harness's token); returns the generation.
fn put(node: &Node, key: &str, value: &str) -> Result<String> {
    let answer = node.change(&["config", "put", key, "--value", value])?;
    Ok(answer.generation().context("an accepted change names its generation")?.to_owned())
}

fn wire_formats(node: &Node) -> Vec<u8> {
    node.status().map(|status| status.members.iter().map(|m| m.wire).collect()).unwrap_or_default()
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
    node_over(&mut cluster, "store-v6-old1.redb.gz")?;
    let node = &mut cluster.nodes[0];
    ensure!(node.log_text().contains("rewrote records of an older format in the newest"), "{}", node.log_text());

    // What the build of format 5 wrote and that of format 6 rewrote: a flag, a config value with a schema, a newer value of
    // it that was rolled back; each by the harness's token.
    for round in 0..2 {
        let ids: Vec<String> = history(node)?.into_iter().map(|g| g.id).collect();
        assert_eq!(ids, ["old1.3", "old1.2", "old1.1"], "round {round}: the whole log is read");
        let by_harness = |g: &GenerationSummary| g.author.as_ref().is_some_and(|a| a.as_str() == AUTHOR);
        assert!(history(node)?.iter().all(|g| by_harness(g) && g.signed_by.is_none()));
        assert_eq!(config_value(node, "limits"), Some(serde_json::json!({"burst": 50})), "old1.3 stays reverted");
        let flag = node.cli_json(&["flag", "get", "checkout"])?;
        assert_eq!(flag["value"], true, "{flag}");
        node.terminate()?;
        node.start()?;
    }
    let refused = node.cli(&["config", "put", "limits", "--value", "5"]);
    assert!(!refused.status.success(), "the schema stored in format 6 still holds");

    // New records go in format 7 beside the rewritten ones, and the store reads back.
    let id = put(node, "limits", r#"{"burst": 70}"#)?;
    node.terminate()?;
    node.start()?;
    assert_eq!(author_of(node, &id)?.as_deref(), Some(AUTHOR));
    assert_eq!(config_value(node, "limits"), Some(serde_json::json!({"burst": 70})));
    assert_eq!(history(node)?.len(), 4);
    Ok(())
}

/// A store a build of format 5 wrote and no build of format 6 opened: this build does not read
/// it, and says which build does, instead of taking it for damage and starting empty.
#[test]
fn a_store_of_format_5_is_refused_naming_the_build_that_reads_it() -> Result<()> {
    let mut cluster = Cluster::new(0)?;
    let error = node_over(&mut cluster, "store-v5-old1.redb.gz").expect_err("a format-5 store").to_string();
    assert!(error.contains("expected format version 6 to 7, got version 5"), "{error}");
    assert!(error.contains("Format version"), "points to the upgrade notes: {error}");
    Ok(())
}

#[test]
fn nodes_of_two_formats_share_a_cluster_through_a_rolling_upgrade() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    // Top-level options go before the `[rollout]` table of the default config.
    cluster.nodes[2].config_toml.insert_str(0, OLD_FORMAT);
    cluster.start_all()?;
    let [new, _, old] = [0, 1, 2];
    wait_until(Duration::from_secs(10), "n1 to see n3's format", || wire_formats(&cluster.nodes[new]) == [7, 7, 6])?;

    // Changes flow both ways, with their authors and origin proofs.
    let from_new = put(&cluster.nodes[new], "a", "1")?;
    let from_old = put(&cluster.nodes[old], "b", "2")?;
    let spread = |cluster: &Cluster| {
        cluster.nodes.iter().all(|n| {
            config_value(n, "a") == Some(serde_json::json!(1)) && config_value(n, "b") == Some(serde_json::json!(2))
        })
    };
    wait_until(Duration::from_secs(15), "both changes on every node", || spread(&cluster))?;
    assert_eq!(author_of(&cluster.nodes[old], &from_new)?.as_deref(), Some(AUTHOR));
    assert_eq!(author_of(&cluster.nodes[new], &from_old)?.as_deref(), Some(AUTHOR));
    let unproven = "grapevine_unproven_origins_refused_total";
    assert!(cluster.nodes.iter().all(|node| counter(node, unproven) == 0), "format 6 proves its generations");

    // A scheduled start needs format 7 on every live member: refused, stored nowhere.
    let scheduled = cluster.nodes[new].cli(&["config", "put", "later", "--value", "1", "--in", "1m"]);
    let stderr = String::from_utf8_lossy(&scheduled.stderr);
    assert_eq!(scheduled.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("need wire format 7 on every live member, but n3 reads format 6"), "{stderr}");
    assert!(cluster.nodes[new].cli(&["config", "get", "later", "--desired"]).status.code() == Some(1));

    // Upgraded in place (same data directory, written in format 6).
    cluster.nodes[old].terminate()?;
    cluster.nodes[old].config_toml = cluster.nodes[old].config_toml.replace(OLD_FORMAT, "");
    cluster.nodes[old].start()?;
    wait_until(Duration::from_secs(10), "every member to publish format 7", || {
        wire_formats(&cluster.nodes[new]) == [7, 7, 7]
    })?;
    assert_eq!(author_of(&cluster.nodes[old], &from_old)?.as_deref(), Some(AUTHOR), "the old log reads back");
    let after = put(&cluster.nodes[old], "c", "3")?;
    wait_until(Duration::from_secs(15), "the change after the upgrade everywhere", || {
        cluster.nodes.iter().all(|n| author_of(n, &after).is_ok())
    })?;
    Ok(())
}
