//! Files rendered on the host by real processes: a good change is rendered, checked and
//! reloaded; a failed check keeps the old file, a failed reload restores it, empty output is
//! refused, and each failure is an anomaly the cluster reverts (one node: the quorum is 1 of
//! 1); a node killed in the middle of a render leaves the whole old file, never a part.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, check, wait_until};
use grapevine_node::replies::FileStatus;
use serde_json::Value;

/// A one-node cluster rendering `app/limits` to `limits.json` (JSON) and `app/banner` to
/// `banner.txt` (raw), with the given check and reload commands for the first.
fn cluster(check_command: &str, reload_command: &str) -> Result<Cluster> {
    let mut cluster = Cluster::new(1)?;
    let dir = cluster.dir.path().to_owned();
    let node = &mut cluster.nodes[0];
    node.config_toml = format!(
        "[rollout]\nwaves = \"100%\"\n\n\
         [[files]]\npath = {:?}\nkey = \"app/limits\"\nformat = \"json\"\n\
         check = [\"sh\", \"-c\", {check_command:?}]\nreload = [\"sh\", \"-c\", {reload_command:?}]\ntimeout_ms = 5000\n\n\
         [[files]]\npath = {:?}\nkey = \"app/banner\"\nformat = \"raw\"\n",
        dir.join("limits.json"),
        dir.join("banner.txt"),
    );
    cluster.start_all()?;
    Ok(cluster)
}

fn put(node: &Node, key: &str, value: &str) -> Result<String> {
    let answer = node.change(&["config", "put", key, "--value", value])?;
    Ok(answer.generation().context("a generation")?.to_owned())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn reverted(node: &Node, generation: &str) -> bool {
    node.rollout(generation).is_ok_and(|s| s.reverted)
}

fn file_status(node: &Node, path: &Path) -> Result<FileStatus> {
    let files = node.status()?.files;
    files.into_iter().find(|f| f.path == path).with_context(|| format!("no status of {}", path.display()))
}

#[test]
fn a_good_change_is_rendered_and_a_failed_check_keeps_the_old_file_and_reverts() -> Result<()> {
    // The check refuses a limit over 1000; the reload records that it ran.
    let cluster = cluster(
        "! grep -q '\"burst\": [0-9][0-9][0-9][0-9]' {path}",
        "echo reloaded >> \"$(dirname {path})/reloads\"",
    )?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path();
    let limits = dir.join("limits.json");
    put(node, "app/limits", r#"{"burst": 50}"#)?;
    wait_until(Duration::from_secs(10), "the file rendered", || read(&limits).contains("\"burst\": 50"))?;
    wait_until(Duration::from_secs(5), "the reload", || read(&dir.join("reloads")).contains("reloaded"))?;

    let bad = put(node, "app/limits", r#"{"burst": 50000}"#)?;
    wait_until(Duration::from_secs(15), "the failed check to revert the change", || reverted(node, &bad))?;
    assert!(read(&limits).contains("\"burst\": 50"), "the old file stays: {}", read(&limits));
    assert!(!read(&limits).contains("50000"));
    assert_eq!(node.config("app/limits")?.value["burst"], 50, "the revert is served");
    let status = node.rollout(&bad)?;
    assert!(status.judgement.as_deref().unwrap_or("").contains("check of"), "{status:?}");
    assert_eq!(status.anomaly_quorum.anomalous.first().map(|n| n.as_str()), Some(node.name.as_str()));
    assert!(!dir.join(".limits.json.grapevine-tmp").exists(), "the refused file is gone");

    // Empty output where the file was not empty is refused too.
    put(node, "app/banner", r#""welcome""#)?;
    let banner = dir.join("banner.txt");
    wait_until(Duration::from_secs(10), "the banner", || read(&banner) == "welcome")?;
    let empty = put(node, "app/banner", r#""""#)?;
    wait_until(Duration::from_secs(15), "the empty banner reverted", || reverted(node, &empty))?;
    assert_eq!(read(&banner), "welcome");
    Ok(())
}

#[test]
fn a_failed_reload_restores_the_last_known_good_file() -> Result<()> {
    // The reload fails when the file holds "burst": 7.
    let cluster = cluster("true", "! grep -q '\"burst\": 7' {path}")?;
    let node = &cluster.nodes[0];
    let limits = cluster.dir.path().join("limits.json");
    put(node, "app/limits", r#"{"burst": 5}"#)?;
    wait_until(Duration::from_secs(10), "the file rendered", || read(&limits).contains("\"burst\": 5"))?;
    let bad = put(node, "app/limits", r#"{"burst": 7}"#)?;
    wait_until(Duration::from_secs(15), "the failed reload to revert the change", || reverted(node, &bad))?;
    assert!(read(&limits).contains("\"burst\": 5"), "the last-known-good file is back: {}", read(&limits));
    let status = file_status(node, &limits)?;
    assert!(!status.ok, "{status:?}");
    assert!(status.detail.contains("the last-known-good file is back and reloaded"), "{status:?}");
    Ok(())
}

#[test]
fn a_node_killed_mid_render_leaves_the_whole_old_file() -> Result<()> {
    // The check takes 3 s: the node is killed while it runs.
    let mut cluster = cluster("sleep 3", "true")?;
    let limits = cluster.dir.path().join("limits.json");
    // The temp file has a random name: `.limits.json.XXXXXX.grapevine-tmp`.
    let dir = cluster.dir.path().to_path_buf();
    let temps = move || -> usize {
        let names = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.file_name());
        names.filter(|n| n.to_string_lossy().starts_with(".limits.json.")).count()
    };
    put(&cluster.nodes[0], "app/limits", r#"{"burst": 1}"#)?;
    wait_until(Duration::from_secs(15), "the first render", || read(&limits).contains("\"burst\": 1"))?;
    let old = read(&limits);
    put(&cluster.nodes[0], "app/limits", r#"{"burst": 2}"#)?;
    wait_until(Duration::from_secs(10), "the check to start", || temps() == 1)?;
    cluster.nodes[0].kill9();
    assert_eq!(read(&limits), old, "the file is whole and old after the kill");
    cluster.nodes[0].start()?;
    wait_until(Duration::from_secs(20), "the render after the restart", || read(&limits).contains("\"burst\": 2"))?;
    let new: Value = serde_json::from_str(&read(&limits))?;
    assert_eq!(new["burst"], 2, "whole and new");
    assert_eq!(temps(), 0, "the temp file the kill left is removed by the next render");
    check(cluster.nodes[0].cli(&["status"]))?;
    Ok(())
}

#[test]
fn a_file_whose_only_value_is_reverted_is_removed_and_reloaded() -> Result<()> {
    // Found by the chaos suite: the file kept the reverted value, so the application kept
    // failing after the revert, and its errors were blamed on an unrelated change.
    let cluster = cluster("true", "echo reloaded >> \"$(dirname {path})/reloads\"")?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path();
    let limits = dir.join("limits.json");
    let first = put(node, "app/limits", r#"{"burst": 9}"#)?;
    wait_until(Duration::from_secs(10), "the file rendered", || read(&limits).contains("\"burst\": 9"))?;
    check(node.cli(&["rollback", &first]))?;
    wait_until(Duration::from_secs(10), "the file removed", || !limits.exists())?;
    wait_until(Duration::from_secs(5), "a reload after the removal", || {
        read(&dir.join("reloads")).lines().count() == 2
    })?;
    let status = file_status(node, &limits)?;
    assert!(status.ok, "{status:?}");
    assert_eq!(status.detail, "removed: the key has no applied value", "{status:?}");
    // A new value renders the file again.
    put(node, "app/limits", r#"{"burst": 10}"#)?;
    wait_until(Duration::from_secs(10), "the file rendered again", || read(&limits).contains("\"burst\": 10"))?;
    Ok(())
}
