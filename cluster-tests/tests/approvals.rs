//! Approvals (four eyes) with real processes: a change under `payments/` needs two operators.
//!
//! n1 to n3 trust one root and require 2 signatures for `payments/`. n4 trusts the same root
//! but its config lacks the rule (a misconfigured or rogue node): it takes a change of
//! `payments/` that one operator signed, and every other node refuses it and counts it.
//!
//! Checked: alice's proposal spreads to every node and applies nowhere; a plain signed change
//! of `payments/` is refused saying what it needs; alice's own approval, an approver out of
//! scope, an unknown proposal are refused with what was expected; bob's approval through
//! another node enacts it, and it applies on every node; approving it again, approving an
//! expired proposal and a rejected one are refused; `change show` names a newer change of the
//! same key as a conflict, and `approve` warns of it; a proposal made `--in 8s` is enacted by its
//! approval but applies at its start, and its audit record names the start and the approver;
//! `status` names n4 as a member of other rules.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use grapevine_cluster_tests::{Cluster, Node, check, counter, delegate, new_key, wait_until};
use grapevine_node::replies::{ConfigValue, ProposalSummary, Proposals, Proposed};
use grapevine_proto::approvals::ProposalState;
use serde_json::Value;

/// `args` with `--signing-key key`.
fn signed(node: &Node, args: &[&str], key: &Path) -> std::process::Output {
    let mut args = args.to_vec();
    args.extend(["--signing-key", key.to_str().unwrap()]);
    node.cli(&args)
}

fn value_of(node: &Node, key: &str) -> Option<Value> {
    node.cli_as::<ConfigValue>(&["config", "get", key, "--desired"]).ok().map(|answer| answer.value)
}

fn applied(node: &Node, key: &str) -> Option<Value> {
    node.config(key).ok().map(|answer| answer.value)
}

fn refused_count(node: &Node, reason: &str) -> u64 {
    counter(node, &format!("grapevine_unsigned_changes_refused_total{{reason=\"{reason}\"}}"))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Refused (exit 1) with a message holding `expected`.
fn refused(output: std::process::Output, expected: &str) -> Result<()> {
    ensure!(output.status.code() == Some(1), "expected exit 1, got {:?}: {}", output.status, stderr(&output));
    ensure!(stderr(&output).contains(expected), "expected {expected:?} in: {}", stderr(&output));
    Ok(())
}

/// `change propose ... --json` through `node`, signed by `key`; the proposal's id.
fn propose(node: &Node, what: &[&str], key: &Path) -> Result<String> {
    let mut args = vec!["change", "propose"];
    args.extend(what);
    args.push("--json");
    let answer: Proposed = serde_json::from_slice(&check(signed(node, &args, key))?.stdout)?;
    Ok(answer.proposal)
}

/// `change show ID` (its `--json` leaves out what to sign).
fn shown(node: &Node, id: &str) -> Result<ProposalSummary> {
    node.cli_as(&["change", "show", id])
}

fn state_of(node: &Node, id: &str) -> Option<ProposalState> {
    Some(shown(node, id).ok()?.state)
}

const RULE: &str = "[[signing.approvals]]\nprefix = \"payments/\"\nsignatures = 2\n";

#[test]
fn a_two_approval_change_applies_only_after_the_second_signature_on_every_node() -> Result<()> {
    let mut cluster = Cluster::new(4)?;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, root_public) = new_key(&keys, "root")?;
    let [(alice, _), (bob, _), (carol, _)] = ["alice", "bob", "carol"].map(|name| new_key(&keys, name).unwrap());
    delegate(&root, &alice, &[])?;
    delegate(&root, &bob, &[])?;
    delegate(&root, &carol, &["search/"])?;
    for (index, node) in cluster.nodes.iter_mut().enumerate() {
        node.config_toml.push_str(&format!("[signing]\nroots = [\"{root_public}\"]\n"));
        if index < 3 {
            node.config_toml.push_str(RULE);
        }
    }
    cluster.start_all()?;
    let [n1, n2, n3, n4] = [0, 1, 2, 3].map(|i| &cluster.nodes[i]);

    // One signature is not enough for payments/, and the refusal says what to do.
    let alone = signed(n1, &["config", "put", "payments/limit", "--value", "5"], &alice);
    refused(alone, "changes under \"payments/\" need the signatures of 2 distinct operators, got 1 (alice)")?;

    // Alice proposes: the proposal reaches every node and applies nowhere.
    let id = propose(n1, &["config", "payments/limit", "--value", "7"], &alice)?;
    wait_until(Duration::from_secs(15), "the proposal on every node", || {
        cluster.nodes.iter().all(|n| state_of(n, &id) == Some(ProposalState::Pending))
    })?;
    let listed = String::from_utf8_lossy(&check(n3.cli(&["change", "list"]))?.stdout).into_owned();
    ensure!(listed.contains(&id) && listed.contains("1/2") && listed.contains("payments/limit"), "{listed}");
    ensure!(cluster.nodes.iter().all(|n| value_of(n, "payments/limit").is_none()), "a proposal applied");

    // Bad approvals, each refused with what was expected.
    refused(signed(n1, &["change", "approve", &id], &alice), "is signed by alice's key")?;
    refused(signed(n2, &["change", "approve", &id], &carol), "may change keys under [\"search/\"] only")?;
    refused(signed(n2, &["change", "approve", "n1.99"], &bob), "no proposal n1.99")?;

    // Bob approves through another node: enacted, and applied on every node.
    let approved = check(signed(n2, &["change", "approve", &id], &bob))?;
    let said = String::from_utf8_lossy(&approved.stdout).into_owned();
    ensure!(said.contains(&format!("approved proposal {id}: enacted as generation n2.")), "{said}");
    wait_until(Duration::from_secs(20), "the enacted change applied on every node", || {
        cluster.nodes.iter().all(|n| applied(n, "payments/limit") == Some(Value::from(7)))
    })?;
    wait_until(Duration::from_secs(10), "the proposal enacted everywhere", || {
        cluster.nodes.iter().all(|n| state_of(n, &id) == Some(ProposalState::Enacted))
    })?;
    refused(signed(n3, &["change", "approve", &id], &carol), "is enacted, not pending")?;
    let listed = String::from_utf8_lossy(&check(n3.cli(&["history"]))?.stdout).into_owned();
    ensure!(listed.contains(&format!("enacts proposal {id} (approved by bob)")), "{listed}");
    let history = n3.history()?;
    let enacted = &history.generations[0];
    let governance = enacted.governance.as_ref().context("the enactment's governance")?;
    ensure!(enacted.author.as_ref().map(|a| a.as_str()) == Some("alice"), "{enacted:?}");
    ensure!(governance.record == "enact" && governance.approvals[0].operator.as_str() == "bob", "{enacted:?}");

    // The node without the rule takes alice's one-signature change; every other node refuses it
    // and counts it, and keeps the enacted value.
    check(signed(n4, &["config", "put", "payments/limit", "--value", "666"], &alice))?;
    wait_until(Duration::from_secs(15), "n1..n3 to refuse n4's one-signature change", || {
        [n1, n2, n3].iter().all(|n| refused_count(n, "approvals") == 1)
    })?;
    for node in [n1, n2, n3] {
        ensure!(value_of(node, "payments/limit") == Some(Value::from(7)), "{} took n4's change", node.name);
    }
    wait_until(Duration::from_secs(10), "n1's status to name n4's other rules", || {
        let status = String::from_utf8_lossy(&n1.cli(&["status"]).stdout).into_owned();
        status.contains("trusts other root keys than this node's")
            && status.contains("n4 (")
            && status.contains("approvals: changes under \"payments/\" need 2 operators' signatures")
    })?;
    Ok(())
}

#[test]
fn expired_rejected_and_conflicting_proposals_say_so() -> Result<()> {
    let mut cluster = Cluster::new(2)?;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, root_public) = new_key(&keys, "root")?;
    let [(alice, _), (bob, _)] = ["alice", "bob"].map(|name| new_key(&keys, name).unwrap());
    delegate(&root, &alice, &[])?;
    delegate(&root, &bob, &[])?;
    for node in &mut cluster.nodes {
        node.config_toml.push_str(&format!("[signing]\nroots = [\"{root_public}\"]\n{RULE}"));
    }
    cluster.start_all()?;
    let [n1, n2] = [0, 1].map(|i| &cluster.nodes[i]);

    // A scheduled proposal: its start is signed with it, and its enactment waits for it.
    let scheduled = propose(n1, &["config", "payments/c", "--value", "3", "--in", "8s"], &alice)?;
    let short = propose(n1, &["config", "payments/a", "--value", "1", "--expires-in", "2s"], &alice)?;
    let rejected = propose(n1, &["config", "payments/b", "--value", "1"], &alice)?;
    // A key under no rule: alice's proposal then a plain change of the same key by her.
    let conflicting = propose(n1, &["flag", "search/beta", "--on"], &alice)?;
    check(signed(n1, &["flag", "set", "search/beta", "--off"], &alice))?;

    wait_until(Duration::from_secs(15), "the proposals on n2", || state_of(n2, &conflicting).is_some())?;
    check(signed(n2, &["change", "reject", &rejected], &bob))?;
    refused(signed(n2, &["change", "approve", &rejected], &bob), "is rejected, not pending")?;

    std::thread::sleep(Duration::from_millis(2500));
    refused(signed(n2, &["change", "approve", &short], &bob), "is expired, not pending")?;

    let conflicts = shown(n2, &conflicting)?.conflicts;
    ensure!(conflicts.first().is_some_and(|c| c.keys == ["search/beta"]), "{conflicts:?}");
    let approved = check(signed(n2, &["change", "approve", &conflicting], &bob))?;
    ensure!(stderr(&approved).contains("CONFLICT: generation n1."), "{}", stderr(&approved));
    let listed: Proposals = n1.cli_as(&["change", "list", "--all"])?;
    ensure!(listed.proposals.len() == 4, "{listed:?}");

    check(signed(n2, &["change", "approve", &scheduled], &bob))?;
    ensure!(applied(n1, "payments/c").is_none(), "the enactment waits for the proposal's start");
    wait_until(Duration::from_secs(20), "the scheduled proposal applied on both nodes at its start", || {
        [n1, n2].iter().all(|node| applied(node, "payments/c") == Some(serde_json::json!(3)))
    })?;
    let records = String::from_utf8(check(n1.cli(&["history", "--format", "jsonl"]))?.stdout)?;
    let enacted = records
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|record| record["proposal"] == scheduled.as_str() && record["kind"] == "generation");
    let enacted = enacted.context("the enactment's audit record")?;
    ensure!(enacted["start_at"].is_string() && enacted["approvers"][0]["operator"] == "bob", "{enacted}");
    Ok(())
}

/// Two approvals that complete a 3-signature proposal only together, made on two nodes cut
/// off from each other: each is written as a record, and once the cut heals the node that
/// wrote the newer one enacts the proposal, which then applies everywhere.
#[test]
fn approvals_made_apart_complete_a_proposal_once_they_meet() -> Result<()> {
    let mut cluster = Cluster::new(2)?;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, root_public) = new_key(&keys, "root")?;
    let [(alice, _), (bob, _), (carol, _)] = ["alice", "bob", "carol"].map(|name| new_key(&keys, name).unwrap());
    for key in [&alice, &bob, &carol] {
        delegate(&root, key, &[])?;
    }
    let rule = "[[signing.approvals]]\nprefix = \"payments/\"\nsignatures = 3\n";
    for node in &mut cluster.nodes {
        node.config_toml.push_str(&format!("[signing]\nroots = [\"{root_public}\"]\n{rule}"));
    }
    cluster.start_all()?;
    let [n1, n2] = [0, 1].map(|i| &cluster.nodes[i]);
    let id = propose(n1, &["config", "payments/limit", "--value", "9"], &alice)?;
    wait_until(Duration::from_secs(15), "the proposal on n2", || state_of(n2, &id).is_some())?;

    n1.set_link(&format!(r#"{{"peer": "{}", "drop": true}}"#, n2.gossip))?;
    n2.set_link(&format!(r#"{{"peer": "{}", "drop": true}}"#, n1.gossip))?;
    for (node, key) in [(n1, &bob), (n2, &carol)] {
        let said = String::from_utf8_lossy(&check(signed(node, &["change", "approve", &id], key))?.stdout).into_owned();
        ensure!(said.contains("2 of 3 signatures"), "{said}");
    }
    ensure!([n1, n2].iter().all(|n| value_of(n, "payments/limit").is_none()), "enacted with two signatures");
    n1.clear_links()?;
    n2.clear_links()?;
    wait_until(Duration::from_secs(20), "the proposal enacted and applied on both nodes", || {
        [n1, n2].iter().all(|n| applied(n, "payments/limit") == Some(Value::from(9)))
    })?;
    let shown = shown(n1, &id)?;
    ensure!(shown.enacted.len() == 1, "enacted once: {shown:?}");
    Ok(())
}
