//! The audit trail with real processes: every node's `[audit]` file and webhook receive one
//! record per entry of the log, a rollout that the cluster reverts by itself included, and no
//! secret value appears in clear in either, nor in `history --format jsonl`.
//!
//! It checks that:
//!
//! - three nodes, each with an audit file and a webhook (`WebhookSink`), receive the records of a
//!   first change, of a config value whose schema marks a property `writeOnly` (and of a key marked
//!   `x-grapevine-secret`), of a control (`rollout pause`), of a canary change that turns bad, and
//!   of its revert: each once per node, with the value before and after, the revert's target and
//!   writer (`quorum`, with its reason on the node that wrote it);
//! - the secret values are in neither sink nor in `history --format jsonl`, which prints the same
//!   records, while the other fields of the same value are;
//! - a node restarted writes nothing twice (its cursor), and writes the change made while it was
//!   down once it is back;
//! - a bad `[audit]` section stops a node at start with a message that says what was expected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, WebhookSink, binary, check, wait_until};
use serde_json::{Value, json};

const NESTED_SECRET: &str = "s3cret-nested-password";
const WHOLE_SECRET: &str = "s3cret-whole-token";

/// A node whose health is its application's check of the value it serves for `risky`.
fn app_health(node: &Node) -> String {
    let check = format!("! {} config get risky --node {} | grep -q bad", binary().display(), node.url());
    format!("[health]\nsample_interval_ms = 200\n[[health.exec]]\ncommand = [\"sh\", \"-c\", {check:?}]\n")
}

fn audit_file(node: &Node) -> std::path::PathBuf {
    node.data.with_extension("audit.jsonl")
}

/// The records in a node's audit file.
fn file_records(node: &Node) -> Vec<Value> {
    let text = std::fs::read_to_string(audit_file(node)).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).expect("each line is a JSON record")).collect()
}

fn ids(records: &[Value]) -> Vec<String> {
    records.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect()
}

fn put(node: &Node, key: &str, value: &str, options: &[&str]) -> Result<String> {
    let mut args = vec!["config", "put", key, "--value", value];
    args.extend(options);
    Ok(node.change(&args)?.generation().context("a generation")?.to_owned())
}

fn write_schema(dir: &Path, name: &str, schema: &Value) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, schema.to_string())?;
    Ok(path.to_str().context("a UTF-8 path")?.to_owned())
}

#[test]
fn every_entry_of_a_reverted_rollout_reaches_both_sinks_once_and_no_secret_in_clear() -> Result<()> {
    let sink = WebhookSink::start()?;
    let mut cluster = Cluster::new(3)?;
    for node in &mut cluster.nodes {
        node.config_toml = format!(
            "{}[audit]\nfile = {:?}\nmax_bytes = 1000000\nkeep = 2\n[[audit.webhook]]\nurl = {:?}\n",
            app_health(node),
            audit_file(node),
            sink.url()
        );
    }
    cluster.start_all()?;
    let first = &cluster.nodes[0];
    let schemas = tempfile::tempdir()?;
    let nested = json!({"type": "object", "properties": {"user": {"type": "string"}, "password": {"type": "string", "writeOnly": true}}});
    let nested = write_schema(schemas.path(), "db.json", &nested)?;
    let whole = write_schema(schemas.path(), "token.json", &json!({"type": "string", "x-grapevine-secret": true}))?;

    let good = put(first, "risky", "\"good\"", &["--emergency"])?;
    let db_value = format!("{{\"user\": \"app\", \"password\": \"{NESTED_SECRET}\"}}");
    let db = put(first, "db", &db_value, &["--schema", &nested, "--emergency"])?;
    let token = put(first, "api.token", &format!("\"{WHOLE_SECRET}\""), &["--schema", &whole, "--emergency"])?;
    let control = first.change(&["rollout", "pause", &good])?.generation().context("a control generation")?.to_owned();
    let bad = put(first, "risky", "\"bad\"", &["--waves", "1,50%,100%", "--bake", "3s", "--min-samples", "5"])?;
    let revert = format!("{bad}/revert");
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(40), &format!("{} to hold the revert of {bad}", node.name), || {
            node.rollout(&bad).is_ok_and(|s| s.reverted)
        })?;
    }

    let expected: Vec<String> = [&good, &db, &token, &control, &bad, &revert].iter().map(|s| s.to_string()).collect();
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(15), &format!("{}'s audit file to hold every entry", node.name), || {
            let held = ids(&file_records(node));
            expected.iter().all(|id| held.contains(id))
        })?;
    }
    // The webhook gets the same records from each node.
    wait_until(Duration::from_secs(15), "the webhook to hold every entry from every node", || {
        let bodies = sink.bodies();
        cluster.nodes.iter().all(|node| {
            let from: Vec<String> = bodies
                .iter()
                .filter(|b| b["node"] == node.name.as_str())
                .filter_map(|b| b["id"].as_str().map(str::to_owned))
                .collect();
            expected.iter().all(|id| from.contains(id))
        })
    })?;

    for node in &cluster.nodes {
        let records = file_records(node);
        let held = ids(&records);
        let mut once: Vec<String> = held.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), held.len(), "{}: a record written twice: {held:?}", node.name);
        let by_id: BTreeMap<String, &Value> =
            records.iter().map(|r| (r["id"].as_str().unwrap().to_owned(), r)).collect();
        let bad_record = by_id[&bad];
        assert_eq!(bad_record["kind"], "generation", "{bad_record}");
        assert_eq!(bad_record["origin"], first.name.as_str());
        assert_eq!(
            bad_record["changes"],
            json!([{"key": "risky", "kind": "config", "before": "good", "after": "bad"}])
        );
        assert!(bad_record["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{bad_record}");
        assert!(bad_record["author"].is_string() && bad_record["hash"].is_string(), "{bad_record}");
        assert_eq!(by_id[&control]["kind"], "control");
        assert_eq!(by_id[&control]["controls"], json!([{"action": "pause", "target": good}]));
        let revert_record = by_id[&revert];
        assert_eq!(revert_record["kind"], "revert", "{revert_record}");
        assert_eq!(revert_record["target"], bad.as_str());
        assert_eq!(
            revert_record["changes"],
            json!([{"key": "risky", "kind": "config", "before": "bad", "after": "good"}])
        );
        let db_record = by_id[&db];
        assert_eq!(db_record["changes"][0]["after"]["user"], "app", "{db_record}");
        assert!(db_record["changes"][0]["after"]["password"].as_str().unwrap().starts_with("<redacted sha256:"));
        assert_eq!(db_record["changes"][0]["secret"], true);
        assert!(by_id[&token]["changes"][0]["after"].as_str().unwrap().starts_with("<redacted sha256:"));
    }
    // The node that wrote the revert says why; every node sees its writer in gossip.
    let written: Vec<Value> =
        cluster.nodes.iter().flat_map(file_records).filter(|r| r["id"] == revert.as_str()).collect();
    let writer = written.iter().find(|r| r["reason"].is_string()).context("the writer's record with its reason")?;
    assert!(writer["reason"].as_str().unwrap().starts_with("anomaly quorum"), "{writer}");
    assert_eq!(writer["reverted_by"][writer["node"].as_str().unwrap()], "quorum", "{writer}");

    // No secret in clear anywhere: the files, the webhook, history --format jsonl.
    let history = String::from_utf8(check(first.cli(&["history", "--format", "jsonl", "--limit", "100"]))?.stdout)?;
    let history_records: Vec<Value> = history.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let history_ids = ids(&history_records);
    assert!(expected.iter().all(|id| history_ids.contains(id)), "{history}");
    let webhook_text = serde_json::to_string(&sink.bodies())?;
    for node in &cluster.nodes {
        let text = std::fs::read_to_string(audit_file(node))?;
        for (what, text) in [("file", &text), ("webhook", &webhook_text), ("history", &history)] {
            assert!(
                !text.contains(NESTED_SECRET) && !text.contains(WHOLE_SECRET),
                "{what} of {} shows a secret",
                node.name
            );
            assert!(text.contains("<redacted sha256:"), "{what}");
        }
    }

    // A restart writes nothing twice, and what was made meanwhile once.
    let before = file_records(&cluster.nodes[2]).len();
    cluster.nodes[2].terminate()?;
    let later = put(&cluster.nodes[0], "other", "1", &["--emergency"])?;
    cluster.nodes[2].start()?;
    let last = &cluster.nodes[2];
    wait_until(Duration::from_secs(15), "the restarted node to write the change it missed", || {
        ids(&file_records(last)).contains(&later)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let after = file_records(last);
    assert_eq!(after.len(), before + 1, "{:?}", ids(&after));
    Ok(())
}

#[test]
fn a_bad_audit_section_stops_the_node_at_start_and_says_why() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    let node = &mut cluster.nodes[0];
    node.config_toml = "[audit]\nkeep = 3\n".to_owned();
    let refused = node.start().expect_err("a node without an audit sink to write to");
    let text = format!("{refused:#}");
    assert!(
        text.contains("[audit]: expected file = \"PATH\" or at least one [[audit.webhook]], found neither"),
        "{text}"
    );
    node.config_toml = "[audit]\nfile = \"/nonexistent-dir/audit.jsonl\"\n".to_owned();
    let text = format!("{:#}", node.start().expect_err("an audit file that cannot be opened"));
    assert!(text.contains("[audit]: audit file /nonexistent-dir/audit.jsonl"), "{text}");
    Ok(())
}
