//! Signed changes with real processes: only an operator key delegated by a root changes the
//! fleet.
//!
//! n1 to n3 require signatures under one root key. n4 is a compromised node: it holds a valid
//! cluster certificate but its config trusts no root, so it takes whatever it is given and
//! spreads it. What it makes (unsigned, or signed by a key it delegated itself) is refused by
//! every honest node and counted; what an operator signs reaches every node, n4 included. A
//! revoked key's change made behind a partition is reverted everywhere once the partition
//! heals.
//!
//! The refusals checked: unsigned changes, changes of an untrusted root, of a key not delegated yet
//! and outside a key's prefixes, each with its reason (a scoped key signs no rollout control);
//! `status` names the member whose roots differ; the compromised node's inventions are counted once
//! each and leave no honest node `behind`; an operator's signed config change, flag and control
//! reach all four, recorded as by the operator, with `signed_by` naming the root (a change
//! scheduled `--in 1s` too, its start signed with it, applied everywhere after it); a rollback's
//! `prepare` is refused (nothing to sign). The second test revokes a key while a node is cut off,
//! changes a key with it through that node, and checks that the change is reverted on every node
//! once the partition heals, and that the key's earlier change stays.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use grapevine_cluster_tests::{Cluster, Node, check, counter, delegate, http_get, http_request, new_key, wait_until};
use grapevine_node::replies::{Accepted, ConfigValue, GenerationSummary, Readiness};
use serde_json::Value;

/// `config put KEY --value VALUE`, signed by `key` when given.
fn put(node: &Node, key: &str, value: &str, signer: Option<&Path>) -> std::process::Output {
    let mut args = vec!["config", "put", key, "--value", value];
    if let Some(signer) = signer {
        args.extend(["--signing-key", signer.to_str().unwrap()]);
    }
    node.cli(&args)
}

fn value_of(node: &Node, key: &str) -> Option<Value> {
    node.cli_as::<ConfigValue>(&["config", "get", key, "--desired"]).ok().map(|answer| answer.value)
}

fn refused_count(node: &Node, reason: &str) -> u64 {
    counter(node, &format!("grapevine_unsigned_changes_refused_total{{reason=\"{reason}\"}}"))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn only_a_delegated_operator_key_changes_the_fleet() -> Result<()> {
    let mut cluster = Cluster::new(4)?;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, root_public) = new_key(&keys, "root")?;
    let (alice, _) = new_key(&keys, "alice")?;
    delegate(&root, &alice, &[])?;
    let (carol, _) = new_key(&keys, "carol")?;
    delegate(&root, &carol, &["payments."])?;
    // The compromised node's own "root", which no honest node trusts.
    let (rogue_root, _) = new_key(&keys, "rogue")?;
    let (mallory, _) = new_key(&keys, "mallory")?;
    delegate(&rogue_root, &mallory, &[])?;
    for node in &mut cluster.nodes[..3] {
        node.config_toml.push_str(&format!("[signing]\nroots = [\"{root_public}\"]\n"));
    }
    cluster.start_all()?;
    let [n1, n2, n3, n4] = [0, 1, 2, 3].map(|i| &cluster.nodes[i]);

    // An honest node refuses what is not signed, saying how to sign.
    let unsigned = put(n1, "limits", "1", None);
    ensure!(!unsigned.status.success(), "an unsigned change was accepted by n1");
    let message = stderr(&unsigned);
    ensure!(message.contains("accepts signed changes only") && message.contains("--signing-key"), "{message}");
    let untrusted = put(n2, "limits", "1", Some(&mallory));
    ensure!(stderr(&untrusted).contains("not one of this cluster's root keys"), "{}", stderr(&untrusted));
    // A key not delegated yet signs nothing, and stands in the way of no read.
    let (dave, _) = new_key(&keys, "dave")?;
    check(n1.cli(&["status", "--signing-key", dave.to_str().unwrap()]))?;
    let undelegated = put(n1, "limits", "1", Some(&dave));
    ensure!(stderr(&undelegated).contains("has no delegation"), "{}", stderr(&undelegated));
    let scoped = put(n1, "search.limit", "1", Some(&carol));
    ensure!(stderr(&scoped).contains("may change keys under [\"payments.\"] only"), "{}", stderr(&scoped));

    // `status` names the member whose [signing] differs.
    wait_until(Duration::from_secs(10), "n1's status to name n4's other roots", || {
        let status = String::from_utf8_lossy(&n1.cli(&["status"]).stdout).into_owned();
        status.contains("changes: signed by operator keys of 1 root key(s)")
            && status.contains("trusts other root keys than this node's")
            && status.contains("n4 (none)")
    })?;

    // The compromised node takes anything, and tries to spread it: nobody else stores it.
    check(put(n4, "limits", "666", None))?;
    check(put(n4, "admins", "\"mallory\"", Some(&mallory)))?;
    wait_until(Duration::from_secs(15), "n1..n3 to refuse n4's inventions", || {
        [n1, n2, n3].iter().all(|n| refused_count(n, "unsigned") > 0 && refused_count(n, "unknown_root") > 0)
    })?;
    // Refused for good, and once: n4 holding them is not "ahead", so nobody keeps pulling them
    // (gossip runs every 100 ms here) nor reports itself behind n4.
    std::thread::sleep(Duration::from_secs(2));
    for node in [n1, n2, n3] {
        ensure!(refused_count(node, "unsigned") == 1 && refused_count(node, "unknown_root") == 1, "{}", node.name);
        let (_, readiness) = http_get(&format!("{}/readyz", node.url()))?;
        let readiness: Readiness = serde_json::from_str(&readiness)?;
        ensure!(readiness.behind.is_empty(), "{}: {readiness:?}", node.name);
    }

    // An operator's signed change reaches every node, the compromised one too.
    let answer: Accepted = serde_json::from_slice(
        &check(n2.cli(&[
            "config",
            "put",
            "limits",
            "--value",
            "5",
            "--json",
            "--signing-key",
            alice.to_str().unwrap(),
        ]))?
        .stdout,
    )?;
    assert_eq!(
        answer.author.as_ref().map(|a| a.as_str()),
        Some("alice"),
        "a signed change is by its operator: {answer:?}"
    );
    check(put(n3, "payments.limit", "7", Some(&carol)))?;
    // Every kind of change signs the same way: a flag (checked against what was asked), a
    // rollout control (an unscoped key only).
    let alice_arg = alice.to_str().unwrap();
    check(n1.cli(&["flag", "set", "beta", "--on", "--signing-key", alice_arg]))?;
    // A scheduled start is signed with the change (the node that takes it cannot move it).
    let later = ["config", "put", "later", "--value", "1", "--in", "1s", "--json", "--signing-key", alice_arg];
    let scheduled: Accepted = serde_json::from_slice(&check(n1.cli(&later))?.stdout)?;
    let author = scheduled.author.as_ref().map(|a| a.as_str());
    ensure!(scheduled.start_at_ms.is_some() && author == Some("alice"), "{scheduled:?}");
    let limits = answer.generation.as_str();
    let control = n1.cli(&["rollout", "pause", limits, "--signing-key", carol.to_str().unwrap()]);
    ensure!(stderr(&control).contains("only, got a rollout control"), "{}", stderr(&control));
    check(n1.cli(&["rollout", "pause", limits, "--signing-key", alice_arg]))?;
    // A rollback is a revert, not a change: nothing to prepare, and a prepare writes nothing.
    let url = format!("{}/v1/rollouts/{limits}/rollback?prepare=true", n1.url());
    let (status, body) = http_request("POST", &url, None)?;
    ensure!(status == 400 && body.contains("nothing to sign"), "{status} {body}");
    wait_until(Duration::from_secs(15), "the signed changes on every node", || {
        cluster.nodes.iter().all(|n| {
            value_of(n, "payments.limit") == Some(Value::from(7))
                && (n.name == "n4" || value_of(n, "limits") == Some(Value::from(5)))
                && n.cli(&["config", "get", "later"]).status.success()
        })
    })?;
    wait_until(Duration::from_secs(15), "the five signed changes in every honest history", || {
        [n1, n2, n3].iter().all(|n| n.history().is_ok_and(|h| h.total == 5))
    })?;
    for node in [n1, n2, n3] {
        ensure!(value_of(node, "admins").is_none(), "{} holds mallory's change", node.name);
        let history = node.history()?;
        let by_root = |g: &GenerationSummary| g.signed_by.as_ref().is_some_and(|by| by.root == root_public);
        ensure!(history.generations.iter().all(by_root), "{history:?}");
    }
    Ok(())
}

#[test]
fn a_revoked_keys_change_behind_a_partition_is_reverted_everywhere() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (root, root_public) = new_key(&keys, "root")?;
    let (alice, _) = new_key(&keys, "alice")?;
    let (bob, bob_public) = new_key(&keys, "bob")?;
    delegate(&root, &alice, &[])?;
    delegate(&root, &bob, &[])?;
    for node in &mut cluster.nodes {
        node.config_toml.push_str(&format!("[signing]\nroots = [\"{root_public}\"]\n"));
    }
    cluster.start_all()?;
    check(put(&cluster.nodes[0], "before", "1", Some(&bob)))?;
    wait_until(Duration::from_secs(15), "bob's first change everywhere", || {
        cluster.nodes.iter().all(|n| value_of(n, "before").is_some())
    })?;

    // n3 is cut off; alice revokes bob's key through n1, and bob, through n3, which has not
    // heard of it, changes a key after the revocation.
    let lone = cluster.nodes[2].gossip;
    cluster.nodes[2].set_link(r#"{"peer": null, "drop": true}"#)?;
    for node in &cluster.nodes[..2] {
        node.set_link(&format!(r#"{{"peer": "{lone}", "drop": true}}"#))?;
    }
    let revoke = ["key", "revoke", &bob_public, "--reason", "laptop stolen", "--signing-key", alice.to_str().unwrap()];
    check(cluster.nodes[0].cli(&revoke))?;
    let refused = put(&cluster.nodes[1], "after", "1", Some(&bob));
    ensure!(stderr(&refused).contains("is revoked"), "n2 knows the revocation: {}", stderr(&refused));
    std::thread::sleep(Duration::from_millis(50));
    check(put(&cluster.nodes[2], "after", "1", Some(&bob)))?;
    ensure!(value_of(&cluster.nodes[2], "after").is_some());

    for node in &cluster.nodes {
        node.clear_links()?;
    }
    wait_until(Duration::from_secs(20), "bob's late change reverted on every node", || {
        cluster.nodes.iter().all(|n| value_of(n, "after").is_none() && value_of(n, "before").is_some())
    })?;
    let status = cluster.nodes[0].status()?;
    ensure!(status.reverted == 1, "one revert: {status:?}");
    Ok(())
}
