//! Issue 17, "a valid rule can freeze a node", against real processes: a targeting rule too
//! costly to evaluate is refused by `flag set` and `apply` with the limit named, and nothing is
//! stored; the costliest rule a node accepts, evaluated over and over through OFREP, leaves
//! `/healthz` answering promptly and the node alive in its peers' view; a costly rule on a large
//! context is evaluated off the request's task, within its budget (D85).
//!
//! `flag set --file`, `apply` and `apply --dry-run` of a rule like the issue's exit 1 with
//! `MAX_RULE_COST` named; the accepted rule is evaluated by two OFREP clients for 8 s while
//! `/healthz` must answer within 1 s and both peers still see the node alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use grapevine_cluster_tests::{Cluster, Node, alive_members, http_request_within};
use grapevine_proto::testing::{flag_with_rule, nested_some_rule, rule_just_under_the_bound, strings};
use serde_json::{Value, json};

/// The issue's rule: `some` over `some` over `in`, over arrays of 3,000 items (71 s an
/// evaluation on the build that accepted it).
const ISSUE_ITEMS: usize = 3000;

/// How long the OFREP clients hammer the node: several failure-detection periods.
const LOAD: Duration = Duration::from_secs(8);

/// How fast `/healthz` must answer under that load: the issue saw 68 s.
const PROMPT: Duration = Duration::from_secs(1);

fn write(dir: &std::path::Path, name: &str, value: &Value) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string())?;
    Ok(path.to_str().context("a UTF-8 path")?.to_owned())
}

fn assert_refused(output: std::process::Output, what: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "{what}: expected exit 1, got {} ({stderr})", output.status);
    ensure!(
        stderr.contains("flag \"x\": /targeting: rule costs up to ")
            && stderr.contains("above the limit of 250000 (MAX_RULE_COST); nested iterations multiply"),
        "{what}: expected the cost limit named, got {stderr}"
    );
    Ok(())
}

#[test]
fn a_rule_too_costly_to_evaluate_is_refused_by_flag_set_and_apply() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    let flag = flag_with_rule(nested_some_rule(ISSUE_ITEMS));
    let file = write(&dir, "x.json", &flag)?;
    assert_refused(node.cli(&["flag", "set", "x", "--file", &file]), "flag set --file")?;
    let set = write(&dir, "flags.json", &json!({"flags": {"x": flag}}))?;
    assert_refused(node.cli(&["apply", &set]), "apply")?;
    assert_refused(node.cli(&["apply", &set, "--dry-run"]), "apply --dry-run")?;
    let history = node.history()?;
    ensure!(history.total == 0, "nothing is stored, got {history:?}");
    let get = node.cli(&["flag", "get", "x", "--desired"]);
    ensure!(get.status.code() == Some(1), "flag x does not exist, got {}", String::from_utf8_lossy(&get.stdout));
    Ok(())
}

/// Sets flag `x` on every node at once to the first rule `node` accepts, the costliest
/// first: what was accepted, and its generation.
fn costliest_accepted(node: &Node, dir: &std::path::Path) -> Result<(&'static str, String)> {
    let candidates = [
        ("the issue's rule", nested_some_rule(ISSUE_ITEMS)),
        ("a rule just under the bound", rule_just_under_the_bound()),
    ];
    for (name, rule) in candidates {
        let file = write(dir, "x.json", &flag_with_rule(rule))?;
        if let Ok(answer) = node.change(&["flag", "set", "x", "--file", &file, "--emergency"]) {
            return Ok((name, answer.generation().context("a generation")?.to_owned()));
        }
    }
    anyhow::bail!("the node accepted neither rule")
}

/// OFREP clients evaluating flag `x` on `node` until `stop`, each request given up after 30 s.
fn hammer(node: &Node, clients: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<usize>> {
    (0..clients)
        .map(|_| {
            let (url, stop) = (format!("{}/ofrep/v1/evaluate/flags/x", node.url()), stop.clone());
            std::thread::spawn(move || {
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = r#"{"context": {"targetingKey": "u1"}}"#;
                    if let Ok((200, _)) = http_request_within("POST", &url, Some(body), Duration::from_secs(30)) {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect()
}

#[test]
fn evaluating_the_costliest_accepted_rule_leaves_healthz_and_gossip_live() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    cluster.start_all()?;
    cluster.wait_formed(Duration::from_secs(30))?;
    let dir = cluster.dir.path().to_owned();
    let (node, peers) = (&cluster.nodes[0], &cluster.nodes[1..]);
    let (accepted, generation) = costliest_accepted(node, &dir)?;
    // Without evaluating it: `flag get` would.
    grapevine_cluster_tests::wait_until(Duration::from_secs(30), "flag x applied", || {
        node.status().is_ok_and(|status| status.applied.as_ref() == Some(&generation))
    })?;
    // Two clients, as in the issue.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = hammer(node, 2, &stop);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut failure = None;
    while started.elapsed() < LOAD && failure.is_none() {
        let asked = Instant::now();
        let healthz = http_request_within("GET", &format!("{}/healthz", node.url()), None, PROMPT * 2);
        let took = asked.elapsed();
        slowest = slowest.max(took);
        if !matches!(healthz, Ok((200, _))) || took > PROMPT {
            failure = Some(format!("/healthz took {took:?} ({healthz:?}) while evaluating {accepted}"));
        }
        for peer in peers {
            let alive = alive_members(peer)?;
            if !alive.contains(&node.name) {
                failure =
                    Some(format!("{} sees {} dead while it evaluates {accepted}: {alive:?}", peer.name, node.name));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let answered: usize = clients.into_iter().map(|client| client.join().unwrap_or(0)).sum();
    if let Some(failure) = failure {
        anyhow::bail!(failure);
    }
    ensure!(answered > 0, "no evaluation of {accepted} answered within {LOAD:?}");
    eprintln!("{accepted}: {answered} evaluations in {LOAD:?}, slowest /healthz {slowest:?}");
    Ok(())
}

/// The run-time budget (D85): a rule of about 5,000 steps on a context of 100 KB is more work
/// than a request does on its own task (its steps times the context's bytes), so OFREP runs it
/// on the blocking pool within its budget (at least 100 ms; it takes a few), and still answers
/// it; nothing runs past its budget.
/// Past the budget, or with every permit taken, a request would get a 503 at once (the unit
/// tests of `node/src/api/budget.rs` hold a slow evaluation and check both).
#[test]
fn a_costly_rule_on_a_large_context_is_evaluated_off_the_request_task_within_its_budget() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let rule = json!({"if": [{"some": [strings("a", 5), {"in": [{"var": ""}, strings("c", 1000)]}]}, "a", "b"]});
    let file = write(cluster.dir.path(), "x.json", &flag_with_rule(rule))?;
    node.cli_json(&["flag", "set", "x", "--file", &file])?;
    // An OFREP evaluation of `path` (after `/ofrep/v1/evaluate/`) on `context`: 200 and the answer.
    let ofrep = |path: &str, context: &str| -> Result<Value> {
        let url = format!("{}/ofrep/v1/evaluate/{path}", node.url());
        let (status, body) = http_request_within("POST", &url, Some(context), Duration::from_secs(30))?;
        ensure!(status == 200, "a costly evaluation still answers: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    };
    let context = json!({"context": {"targetingKey": "u1", "padding": "p".repeat(100_000)}}).to_string();
    let single = ofrep("flags/x", &context)?;
    ensure!(single["value"] == "B" && single["variant"] == "b", "no item matches, so `b`: {single}");
    let bulk = ofrep("flags", &context)?;
    ensure!(bulk["flags"][0]["value"] == "B", "{bulk}");
    let counter = |name| grapevine_cluster_tests::counter(node, name);
    ensure!(counter("grapevine_costly_evaluations_total") == 2, "both ran off the request's task");
    ensure!(counter("grapevine_evaluations_over_budget_total") == 0, "neither ran past its budget");
    // A small context keeps the same rule on the request's task.
    ofrep("flags/x", &json!({"context": {"targetingKey": "u1"}}).to_string())?;
    ensure!(counter("grapevine_costly_evaluations_total") == 2, "a small context runs inline");
    Ok(())
}
