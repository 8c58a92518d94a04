//! Signed reports with real processes: a node that reports for another changes nothing.
//!
//! Two of five nodes forge their reports (the `testsuite` hook `GRAPEVINE_TEST_FORGE_REPORTS`):
//! n4 says every change it applied is healthy, signed with n1's key under its own name and
//! certificate; n5 says every change it applied is anomalous, speaking as n2 would (n2's key
//! and certificate, under the name n5). A change whose canary is n4 never leaves it, because
//! no valid report opens the next wave; a change whose canary is n5 is never reverted, because
//! forged anomaly reports make no quorum; and a change whose canary is honest rolls out to
//! everyone, in the same cluster, in less time than the others are watched.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grapevine_cluster_tests::{Cluster, Node, check, counter, grapevine, wait_until};
use grapevine_proto::report::Verdict;

const FORGE: &str = "GRAPEVINE_TEST_FORGE_REPORTS";

fn applied(node: &Node, key: &str) -> bool {
    node.cli(&["config", "get", key]).status.success()
}

fn forged(reason: &str) -> String {
    format!("grapevine_forged_reports_total{{reason=\"{reason}\"}}")
}

/// A change of `key` with a canary wave of one node and a bake of 1 s, and its canary.
fn put(node: &Node, key: &str) -> Result<(String, String)> {
    put_baked(node, key, "1s")
}

fn put_baked(node: &Node, key: &str, bake: &str) -> Result<(String, String)> {
    let args = ["config", "put", key, "--value", "1", "--waves", "1,100%", "--bake", bake];
    let generation = node.change(&args)?.generation().context("a generation")?.to_owned();
    let canary = node.rollout(&generation)?.waves[0].members[0].name.to_string();
    Ok((generation, canary))
}

#[test]
fn a_node_reporting_for_another_opens_no_gate_and_makes_no_quorum() -> Result<()> {
    let mut cluster = Cluster::new(5)?;
    let (n1_tls, n2_tls) = (cluster.nodes[0].tls.display().to_string(), cluster.nodes[1].tls.display().to_string());
    cluster.nodes[3].env.push((FORGE.into(), format!("h:key:{n1_tls}")));
    cluster.nodes[4].env.push((FORGE.into(), format!("a:cert:{n2_tls}")));
    cluster.start_all()?;
    let first = &cluster.nodes[0];

    // Changes until one has n4 for canary, one n5, and one an honest node. Wave membership is
    // a hash of the generation id and the names, so the same ids find the same canaries.
    let (mut gated, mut quorum, mut honest) = (None, None, None);
    for attempt in 0..40 {
        if gated.is_some() && quorum.is_some() && honest.is_some() {
            break;
        }
        let key = format!("k{attempt}");
        let (generation, canary) = put(first, &key)?;
        let slot = match canary.as_str() {
            "n4" => &mut gated,
            "n5" => &mut quorum,
            _ => &mut honest,
        };
        slot.get_or_insert((key, generation, canary));
    }
    let watched_from = Instant::now();
    let (Some(gated), Some(quorum), Some(honest)) = (gated, quorum, honest) else {
        bail!("40 changes did not give canaries n4, n5 and an honest node");
    };

    // The honest canary's report opens the gate: the change reaches everyone.
    wait_until(Duration::from_secs(20), &format!("{} (canary {}) everywhere", honest.1, honest.2), || {
        cluster.nodes.iter().all(|node| applied(node, &honest.0))
    })?;
    // Watched at least 8 s: eight times the bake, and longer than the honest change took.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(watched_from.elapsed()));

    for (key, generation, canary) in [&gated, &quorum] {
        for node in &cluster.nodes {
            assert_eq!(applied(node, key), node.name == *canary, "{} applied {generation} ({key})", node.name);
        }
        for node in &cluster.nodes[..3] {
            let status = node.rollout(generation)?;
            assert_eq!((status.open_waves, status.reverted), (1, false), "{}: {status:?}", node.name);
            let quorum = &status.anomaly_quorum;
            assert!(quorum.anomalous.is_empty() && quorum.applied == 0, "{}: {status:?}", node.name);
            assert!(status.waves[0].members[0].report.is_none(), "{}: {status:?}", node.name);
        }
    }
    let status = first.status()?;
    assert_eq!(status.reverted, 0, "{status:?}");
    // The forged reports reached every honest node and were refused there.
    for node in &cluster.nodes[..3] {
        for reason in ["bad_signature", "wrong_name"] {
            assert!(counter(node, &forged(reason)) > 0, "{} counted no {reason} refusal", node.name);
        }
    }
    eprintln!(
        "n1 refused {} badly signed and {} wrongly named reports",
        counter(first, &forged("bad_signature")),
        counter(first, &forged("wrong_name"))
    );
    Ok(())
}

/// A canary that renews its certificate while its wave bakes publishes the new certificate
/// and signs its report again: the gate still opens, with the report's age kept.
#[test]
fn a_canary_that_renews_its_certificate_still_opens_the_gate() -> Result<()> {
    let cluster = Cluster::start(3)?;
    let first = &cluster.nodes[0];
    let (generation, canary) = put_baked(first, "renewed", "4s")?;
    let canary = cluster.nodes.iter().find(|n| n.name == canary).context("the canary")?;
    let others: Vec<&Node> = cluster.nodes.iter().filter(|n| n.name != canary.name).collect();
    wait_until(Duration::from_secs(10), "the canary's report on the others", || {
        others.iter().all(|n| n.rollout(&generation).is_ok_and(|s| s.waves[0].members[0].report.is_some()))
    })?;

    let renewed = cluster.dir.path().join("renewed-tls");
    let ca = cluster.ca.display().to_string();
    let out = renewed.display().to_string();
    check(grapevine(&["ca", "issue", "--ca", &ca, "--name", &canary.name, "--ip", "127.0.0.1", "--out", &out]))?;
    let reloads = "grapevine_tls_reloads_total{reason=\"ok\"}";
    std::fs::copy(renewed.join("node.pem"), canary.tls.join("node.pem"))?;
    std::fs::copy(renewed.join("node.key"), canary.tls.join("node.key"))?;
    wait_until(Duration::from_secs(10), "the canary to reload its certificate", || counter(canary, reloads) > 0)?;

    wait_until(Duration::from_secs(15), &format!("{generation} everywhere"), || {
        cluster.nodes.iter().all(|node| applied(node, "renewed"))
    })?;
    for node in &others {
        let status = node.rollout(&generation)?;
        let verdict = status.waves[0].members[0].report.map(|report| report.verdict);
        assert_eq!(verdict, Some(Verdict::Healthy), "{}: {status:?}", node.name);
    }
    Ok(())
}
