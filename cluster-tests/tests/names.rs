//! A node's name is its certificate's (issue 17): a process started with a certificate issued
//! for another node, or under the name of a node that is live, refuses to start, and the live
//! node's acknowledged writes stay on every node.

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, alive_members, check, counter, grapevine, http_get, wait_until};

const PROPAGATION: Duration = Duration::from_secs(10);

/// Writes `count` config keys through `node` (`<node>-1` = 1, ...), each acknowledged.
fn write(node: &Node, count: u64) -> Result<()> {
    for index in 1..=count {
        check(node.cli(&["config", "put", &format!("{}-{index}", node.name), "--value", &index.to_string()]))?;
    }
    Ok(())
}

/// Every node serves `writer`'s `count` writes, as `writer` wrote them, under its name.
fn held_everywhere(nodes: &[Node], writer: &str, count: u64) -> Result<()> {
    for node in nodes {
        for index in 1..=count {
            let key = format!("{writer}-{index}");
            wait_until(PROPAGATION, &format!("{} to hold {key}", node.name), || {
                node.config(&key)
                    .is_ok_and(|got| got.value == index && got.generation.starts_with(&format!("{writer}.")))
            })?;
        }
    }
    Ok(())
}

/// No node lists a conflict in `status`: no generation held with other content elsewhere, no
/// other process live under its name.
fn no_conflicts(nodes: &[Node]) -> Result<()> {
    for node in nodes {
        let conflicts = node.status()?.conflicts;
        assert!(conflicts.generations.is_empty() && conflicts.namesakes.is_empty(), "on {}: {conflicts:?}", node.name);
    }
    Ok(())
}

/// A process added to `cluster` under the name n2, with a second certificate issued for n2.
fn second_n2(cluster: &mut Cluster) -> Result<&mut Node> {
    let second_tls = cluster.dir.path().join("n2-second-tls");
    let (ca, out) = (cluster.ca.display().to_string(), second_tls.display().to_string());
    check(grapevine(&["ca", "issue", "--ca", &ca, "--name", "n2", "--ip", "127.0.0.1", "--out", &out]))?;
    let ca = cluster.ca.clone();
    let second = cluster.add_node_with_ca("n2-second", &ca)?;
    second.name = "n2".into();
    second.tls = second_tls;
    Ok(second)
}

/// Whether `node` has raised an alert of `kind` (`grapevine_alerts_total{reason=kind}`).
fn alerted(node: &Node, kind: &str) -> Result<bool> {
    let metrics = http_get(&format!("{}/metrics", node.url()))?.1;
    let series = format!(r#"grapevine_alerts_total{{reason="{kind}"}} "#);
    Ok(metrics.lines().any(|line| line.strip_prefix(&series).is_some_and(|count| count != "0")))
}

/// Every node shows `name` alive.
fn alive_everywhere(nodes: &[Node], name: &str) -> Result<()> {
    for node in nodes {
        wait_until(PROPAGATION, &format!("{} to show {name} alive", node.name), || {
            alive_members(node).is_ok_and(|alive| alive.iter().any(|n| n == name))
        })?;
    }
    Ok(())
}

/// Fails on the code before the fix: the impostor started, wrote `n3.1`... with its own
/// content, and the nodes that heard it first kept it instead of real n3's writes.
#[test]
fn a_node_whose_certificate_names_another_node_refuses_to_start() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    write(&cluster.nodes[2], 5)?;
    let ca = cluster.ca.clone();
    let impostor = cluster.add_node_with_ca("n7", &ca)?;
    impostor.name = "n3".into();
    let error = impostor.start().expect_err("a node with n7's certificate started as n3").to_string();
    assert!(error.contains("exit status: 1"), "{error}");
    let expected = format!(
        "error: node cannot start: --name n3 but the certificate in {} is issued for n7",
        impostor.tls.display()
    );
    assert!(error.contains(&expected), "{error}");
    cluster.nodes.pop();
    held_everywhere(&cluster.nodes, "n3", 5)?;
    alive_everywhere(&cluster.nodes, "n3")?;
    no_conflicts(&cluster.nodes)?;
    Ok(())
}

/// A second certificate issued for n2 passes the certificate check; the process holding it
/// sees n2 live in gossip and refuses to start. Fails on the code before the fix: it started,
/// and on stopping left n2 shown dead (its later incarnation won) on every node.
#[test]
fn a_second_process_under_a_live_name_refuses_to_start() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    write(&cluster.nodes[1], 5)?;
    let n2_gossip = cluster.nodes[1].gossip;
    let second = second_n2(&mut cluster)?;
    let error = second.start().expect_err("a second n2 started while n2 was live").to_string();
    assert!(error.contains("exit status: 1"), "{error}");
    let expected = format!(
        "error: node cannot start: node n2 is already live at {n2_gossip}: refusing to start a second process under the same name"
    );
    assert!(error.contains(&expected), "{error}");
    cluster.nodes.pop();
    held_everywhere(&cluster.nodes, "n2", 5)?;
    alive_everywhere(&cluster.nodes, "n2")?;
    // A restart of n2 itself is no namesake: its earlier incarnation's heartbeat has stopped.
    cluster.nodes[1].kill9();
    cluster.nodes[1].start()?;
    alive_everywhere(&cluster.nodes, "n2")?;
    // Its earlier incarnation's heartbeat has stopped: it raises no namesake after a while.
    std::thread::sleep(Duration::from_secs(2));
    no_conflicts(&cluster.nodes[1..2])?;
    Ok(())
}

/// A modified build (the test suite's `test_skip_name_checks`: no check of its certificate's
/// name, no look for a live namesake) holds n7's certificate and runs as n3 beside the real
/// n3. It writes first, under ids real n3 then writes too. Every peer refuses its generations,
/// which n7's certificate cannot prove to be n3's, so real n3's acknowledged writes are the
/// ones every node holds. Fails on the code before origin proofs: every node stored the
/// impostor's `n3.1`..`n3.5` (and, had real n3 written under those ids at the same time, the
/// nodes that heard the impostor first would have kept its content instead of real n3's).
#[test]
fn generations_a_modified_build_writes_under_another_name_are_refused_everywhere() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let ca = cluster.ca.clone();
    let impostor = cluster.add_node_with_ca("n7", &ca)?;
    impostor.name = "n3".into();
    impostor.config_toml.insert_str(0, "test_skip_name_checks = true\n");
    impostor.start()?;
    let impostor = cluster.nodes.pop().expect("the impostor");
    // Peers leave the impostor out of membership (its connection's certificate names n7), so
    // they do not pull from it; it pushes what it accepts to the peers it sees.
    wait_until(PROPAGATION, "the impostor to see its peers", || {
        alive_members(&impostor).is_ok_and(|alive| ["n1", "n2"].iter().all(|p| alive.iter().any(|n| n == p)))
    })?;
    for index in 1..=5 {
        let value = (100 + index).to_string();
        check(impostor.cli(&["config", "put", &format!("n3-{index}"), "--value", &value]))?;
    }
    // Each peer has heard the impostor's five generations first: it refused them, or (before
    // origin proofs) it holds them.
    let refused = |node: &Node| counter(node, "grapevine_unproven_origins_refused_total");
    for node in &cluster.nodes {
        wait_until(PROPAGATION, &format!("{} to hear the impostor's generations", node.name), || {
            refused(node) >= 5 || node.config("n3-5").is_ok()
        })?;
    }
    for node in &cluster.nodes {
        for index in 1..=5 {
            let held = node.config(&format!("n3-{index}"));
            assert!(held.is_err(), "{} stored the impostor's n3-{index}: {held:?}", node.name);
        }
        assert_eq!(refused(node), 5, "each forgery counted once on {}", node.name);
    }
    write(&cluster.nodes[2], 5)?;
    held_everywhere(&cluster.nodes, "n3", 5)?;
    for node in &cluster.nodes {
        let conflicts = node.status()?.conflicts;
        assert!(conflicts.generations.is_empty(), "a forgery is no conflict: {conflicts:?}");
    }
    drop(impostor);
    Ok(())
}

/// A node that lost its store and wrote before it caught up reuses its own generation ids
/// (issue 17's window that names cannot close: the process is the rightful n3). No node's
/// acknowledged write is replaced (each keeps what it holds), and every node surfaces the
/// conflict: in `status`, in `grapevine_generation_conflicts_total` and as an alert.
///
/// Failed before tallies (D84): no node ever learned of the conflict. A pull asks only for what
/// the puller's vector does not cover, and both sides cover `n3.1`, so neither content
/// travelled and the states differed for good without a word. Now each node publishes a tally
/// of what it holds of each origin (`vh.n3`), and a peer with the same range and another
/// tally is asked for that range again.
#[test]
fn a_wiped_node_that_writes_before_catching_up_is_a_conflict_every_node_surfaces() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    write(&cluster.nodes[2], 1)?;
    held_everywhere(&cluster.nodes, "n3", 1)?;
    // n3 loses its disk and comes back while n1 and n2 drop all traffic to and from it.
    cluster.nodes[2].kill9();
    std::fs::remove_dir_all(&cluster.nodes[2].data)?;
    let n3 = cluster.nodes[2].gossip;
    for node in &cluster.nodes[..2] {
        node.set_link(&format!(r#"{{"peer": "{n3}", "drop": true}}"#))?;
    }
    cluster.nodes[2].start()?;
    check(cluster.nodes[2].cli(&["config", "put", "after-wipe", "--value", "2"]))?;
    let own = cluster.nodes[2].config("after-wipe")?;
    assert_eq!(own.generation, "n3.1", "the empty store starts its ids again: {own:?}");
    for node in &cluster.nodes[..2] {
        node.clear_links()?;
    }
    for node in &cluster.nodes {
        wait_until(PROPAGATION, &format!("{} to surface the conflict on n3.1", node.name), || {
            node.status().is_ok_and(|status| status.conflicts.generations == ["n3.1"])
        })?;
        assert!(counter(node, "grapevine_generation_conflicts_total") >= 1, "counted on {}", node.name);
        assert!(alerted(node, "conflict")?, "no conflict alert raised on {}", node.name);
    }
    // Each kept the write it held: n1 and n2 serve n3's write from before the wipe, n3 its new one.
    for node in &cluster.nodes[..2] {
        assert_eq!(node.config("n3-1")?.value, 1, "on {}", node.name);
    }
    assert!(cluster.nodes[2].config("n3-1").is_err(), "n3 kept its own n3.1");
    Ok(())
}

/// A node that lost its store, and hears from peers holding its old generations before it has
/// pulled them back, refuses changes (503, naming the peer and what it holds) instead of
/// reusing their ids; once caught up, its next change takes the next id and no write is lost.
/// Everything n3 sends is held 4 s (`test_link_delay_ms`, from its start), so the window between
/// hearing of its old generations and having pulled them is wide. Fails on the code before the check: the write is accepted as `n3.1` again.
#[test]
fn a_wiped_node_that_hears_its_peers_first_refuses_changes_until_it_has_its_own_generations() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    write(&cluster.nodes[2], 1)?;
    held_everywhere(&cluster.nodes, "n3", 1)?;
    cluster.nodes[2].kill9();
    std::fs::remove_dir_all(&cluster.nodes[2].data)?;
    // Everything n3 sends waits 4 s from its start: it hears of n3.1 in its peers' answers to its
    // first gossip, and its pull of it goes out 4 s later.
    cluster.nodes[2].config_toml.insert_str(0, "test_link_delay_ms = 4000\n");
    cluster.nodes[2].start()?;
    let n3 = &cluster.nodes[2];
    wait_until(Duration::from_secs(30), "n3 to hear a peer holding n3.1", || {
        n3.status().is_ok_and(|status| {
            status.members.iter().any(|m| !m.is_self && m.version_vector.get("n3").is_some_and(|seq| *seq >= 1))
        })
    })?;
    let refused = n3.cli(&["config", "put", "after-wipe", "--value", "2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    if refused.status.success() {
        let held = n3.config("after-wipe")?;
        anyhow::bail!("n3 took a change before it had its own generations back: {held:?}");
    }
    assert!(
        stderr.contains("this node holds its own generations only up to n3.0, but n")
            && stderr.contains("holds up to n3.1: it lost its store and is pulling them back"),
        "{stderr}"
    );
    n3.clear_links()?;
    held_everywhere(&cluster.nodes, "n3", 1)?;
    check(n3.cli(&["config", "put", "after-wipe", "--value", "2"]))?;
    let own = n3.config("after-wipe")?;
    assert_eq!(own.generation, "n3.2", "the next id: {own:?}");
    for node in &cluster.nodes {
        wait_until(PROPAGATION, &format!("{} to hold after-wipe", node.name), || {
            node.config("after-wipe").is_ok_and(|got| got.generation == "n3.2")
        })?;
    }
    no_conflicts(&cluster.nodes)?;
    Ok(())
}

/// A second process under a live name that skipped the start-up look (the test suite's
/// `test_skip_name_checks`, as a modified build or a race at start would) is surfaced by the
/// node it shadows while both run: in `status` (`conflicts.namesakes`, its address), in
/// `grapevine_live_namesakes_total` and as a `namesake` alert.
#[test]
fn a_namesake_that_starts_anyway_is_surfaced_by_the_node_it_shadows() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    write(&cluster.nodes[1], 1)?;
    let second = second_n2(&mut cluster)?;
    second.config_toml.insert_str(0, "test_skip_name_checks = true\n");
    second.start()?;
    let second = cluster.nodes.pop().expect("the second n2");
    let n2 = &cluster.nodes[1];
    let address = second.gossip;
    wait_until(Duration::from_secs(30), "n2 to list the second process as a namesake", || {
        n2.status().is_ok_and(|status| status.conflicts.namesakes.iter().any(|n| n.address == address))
    })?;
    assert!(counter(n2, "grapevine_live_namesakes_total") >= 1, "counted");
    assert!(alerted(n2, "namesake")?, "no namesake alert raised on n2");
    drop(second);
    held_everywhere(&cluster.nodes, "n2", 1)?;
    Ok(())
}
