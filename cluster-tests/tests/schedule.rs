//! Scheduled starts and freeze windows with real processes (issue 23; `proto::schedule`).
//!
//! It checks that:
//!
//! - a change made `--in 3s` is stored everywhere at once, applied nowhere before its start,
//!   shown as `scheduled` with the time left, and applied on every node at its start (each node's
//!   recorded apply time is at or after the start, and within 2 s of it: a timer, not a poll);
//!   with waves `1,100%` and a 1 s bake, wave 1 follows the canary by a bake;
//! - a scheduled change rolled back before its start is applied by no node, ever; a start time
//!   or duration that does not parse (exit 2), or lies in the past or more than a year ahead
//!   (exit 1), is refused, and a rollout control takes none;
//! - a freeze window covering now (a date window in UTC ending some 25 s after the config is
//!   written) holds an ordinary change on every node, canary included, and `rollout status` says
//!   why; an `--emergency` change passes it; every node shows the same fingerprint; when the
//!   window ends, the held change rolls out without anyone touching it;
//! - a node whose freeze window names an unknown zone refuses to start, saying so.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use grapevine_cluster_tests::{Cluster, Node, check, wait_until};
use grapevine_node::replies::{Accepted, ChangeReply, Freeze};
use grapevine_proto::schedule::rfc3339;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn applied(node: &Node, key: &str) -> bool {
    node.cli(&["config", "get", key]).status.success()
}

fn held(node: &Node, key: &str) -> bool {
    node.cli(&["config", "get", key, "--desired"]).status.success()
}

/// When `node` applied `generation`, by its own wall clock (Unix ms).
fn applied_at(node: &Node, generation: &str) -> Result<u64> {
    let status = node.rollout(generation)?;
    let release = status.release.as_ref();
    release.map(|release| release.at_unix_ms).with_context(|| format!("{} records no release: {status:?}", node.name))
}

/// `config put KEY --value 1 OPTIONS`, accepted.
fn put(node: &Node, key: &str, options: &[&str]) -> Result<Accepted> {
    let mut args = vec!["config", "put", key, "--value", "1"];
    args.extend(options);
    match node.change(&args)? {
        ChangeReply::Accepted(accepted) => Ok(accepted),
        other => bail!("expected an accepted change, got {other:?}"),
    }
}

#[test]
fn a_scheduled_change_opens_its_first_wave_at_its_time_on_every_node() -> Result<()> {
    let cluster = Cluster::start(4)?;
    let answer = put(&cluster.nodes[0], "at-three", &["--in", "3s"])?;
    let id = answer.generation.clone();
    let start = answer.start_at_ms.context("the answer names the start")?;
    assert_eq!(answer.start_at, Some(rfc3339(start)), "{answer:?}");
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(5), "the scheduled change everywhere", || held(node, "at-three"))?;
    }
    ensure!(now_ms() < start, "the test was too slow to look before the start");
    for node in &cluster.nodes {
        assert!(!applied(node, "at-three"), "{} applied it before its start", node.name);
        let status = node.rollout(&id)?;
        let hold = status.hold.as_ref().with_context(|| format!("not held: {status:?}"))?;
        assert_eq!((hold.kind.as_str(), hold.until_ms), ("scheduled", start), "{status:?}");
        assert!(hold.in_ms <= 3_000, "{status:?}");
        assert_eq!(status.open_waves, 0, "{status:?}");
    }
    let text = String::from_utf8_lossy(&check(cluster.nodes[1].cli(&["rollout", "status", &id]))?.stdout).into_owned();
    assert!(text.contains("SCHEDULED") && text.contains("scheduled to start at"), "{text}");
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(10), "the change to apply at its start", || applied(node, "at-three"))?;
        let at = applied_at(node, &id)?;
        assert!(at >= start, "{} applied it {} ms before its start", node.name, start - at);
        assert!(at <= start + 2_000, "{} applied it {} ms after its start", node.name, at - start);
    }

    // Waves after the first bake from when the first opened.
    let answer = put(&cluster.nodes[1], "waved", &["--in", "2s", "--waves", "1,100%", "--bake", "1s"])?;
    let (id, start) = (answer.generation, answer.start_at_ms.context("a start")?);
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(15), "the waved change everywhere", || applied(node, "waved"))?;
    }
    let status = cluster.nodes[1].rollout(&id)?;
    let canary = status.waves[0].members[0].name.to_string();
    let canary_at = applied_at(cluster.nodes.iter().find(|n| n.name == canary).context("the canary")?, &id)?;
    assert!(canary_at >= start, "the canary applied it before its start");
    for node in cluster.nodes.iter().filter(|n| n.name != canary) {
        let at = applied_at(node, &id)?;
        assert!(
            at >= canary_at + 1_000,
            "{} applied it {} ms after the canary, within the bake",
            node.name,
            at - canary_at
        );
    }
    Ok(())
}

#[test]
fn a_scheduled_change_rolled_back_before_its_start_is_never_applied() -> Result<()> {
    let cluster = Cluster::start(3)?;
    let answer = put(&cluster.nodes[0], "cancelled", &["--in", "8s"])?;
    let id = answer.generation;
    let start = answer.start_at_ms.context("a start")?;
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(5), "the scheduled change everywhere", || held(node, "cancelled"))?;
    }
    // Bad starts are refused before anything is stored, and a control takes none.
    let refused = |args: &[&str], code: i32, message: &str| {
        let output = cluster.nodes[1].cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    };
    refused(&["config", "put", "bad", "--value", "1", "--at", "monday"], 2, "--at: expected an RFC 3339 time");
    refused(
        &["config", "put", "bad", "--value", "1", "--at", "2020-01-01T00:00:00Z"],
        1,
        "expected a time from now on",
    );
    refused(&["config", "put", "bad", "--value", "1", "--in", "400d"], 2, "--in: expected a duration");
    refused(&["config", "put", "bad", "--value", "1", "--in", "9000h"], 1, "more than 366 days ahead");
    assert!(!held(&cluster.nodes[1], "bad"), "a refused start stored a change");
    let url = format!("{}/v1/rollouts/{id}/pause?start_in=5s", cluster.nodes[1].url());
    let (status, body) = grapevine_cluster_tests::http_request("POST", &url, None)?;
    assert!(status == 400 && body.contains("a pause applies at once"), "{status} {body}");

    check(cluster.nodes[2].cli(&["rollback", &id]))?;
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(5), "the revert everywhere", || {
            node.rollout(&id).is_ok_and(|status| status.reverted)
        })?;
    }
    ensure!(now_ms() < start, "the test was too slow to roll back before the start");
    // Past its start, and then some: nobody applies it, nobody ever did.
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now_ms()) + 2_000));
    for node in &cluster.nodes {
        assert!(!applied(node, "cancelled"), "{} applied a cancelled change", node.name);
        assert!(!held(node, "cancelled"), "{} still wants it", node.name);
        let status = node.rollout(&id)?;
        assert!(!status.applied_here, "{status:?}");
        assert!(status.hold.is_none(), "a reverted change is not held: {status:?}");
        assert!(status.waves[0].members.iter().all(|m| m.report.is_none()), "{status:?}");
    }
    Ok(())
}

/// A `[[rollout.freeze]]` date window in UTC from a minute ago to `ends_ms`.
fn freeze_toml(ends_ms: u64) -> String {
    let civil = |ms: u64| rfc3339(ms).trim_end_matches('Z').to_owned();
    format!(
        "[rollout]\nwaves = \"1,100%\"\nbake = \"1s\"\n[[rollout.freeze]]\nname = \"release-party\"\nfrom = \"{}\"\nto = \"{}\"\nzone = \"UTC\"\n",
        civil(now_ms() - 60_000),
        civil(ends_ms),
    )
}

#[test]
fn a_freeze_holds_a_rollout_while_an_emergency_change_passes() -> Result<()> {
    let mut cluster = Cluster::new(3)?;
    // To the second: the window's end is written as a civil time without milliseconds.
    let ends_ms = (now_ms() + 25_000) / 1000 * 1000;
    for node in &mut cluster.nodes {
        node.config_toml = freeze_toml(ends_ms);
    }
    cluster.start_all()?;
    ensure!(now_ms() + 8_000 < ends_ms, "the cluster took too long to start to see the freeze");
    let freezes: Vec<Freeze> = cluster.nodes.iter().map(|n| n.status().map(|s| s.freeze)).collect::<Result<_>>()?;
    for freeze in &freezes {
        assert_eq!(freeze.fingerprint, freezes[0].fingerprint, "{freezes:?}");
        let active = freeze.active.as_ref().map(|active| (active.window.as_str(), active.until_ms));
        assert_eq!(active, Some(("release-party", ends_ms)), "{freeze:?}");
    }

    let ordinary = put(&cluster.nodes[0], "ordinary", &[])?.generation;
    check(cluster.nodes[1].cli(&["config", "put", "kill", "--value", "1", "--emergency"]))?;
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(10), "the emergency change to pass the freeze", || applied(node, "kill"))?;
        wait_until(Duration::from_secs(5), "the held change everywhere", || held(node, "ordinary"))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    ensure!(now_ms() + 1_000 < ends_ms, "the test was too slow to look inside the freeze");
    for node in &cluster.nodes {
        assert!(!applied(node, "ordinary"), "{} applied an ordinary change during a freeze", node.name);
        let status = node.rollout(&ordinary)?;
        let hold = status.hold.as_ref().with_context(|| format!("not held: {status:?}"))?;
        let window = hold.window.as_deref();
        assert_eq!(
            (hold.kind.as_str(), window, hold.until_ms),
            ("frozen", Some("release-party"), ends_ms),
            "{status:?}"
        );
    }
    let text =
        String::from_utf8_lossy(&check(cluster.nodes[2].cli(&["rollout", "status", &ordinary]))?.stdout).into_owned();
    assert!(text.contains(&format!("frozen by release-party until {}", rfc3339(ends_ms))), "{text}");

    // The window ends: the change rolls out on its own, from the canary on.
    for node in &cluster.nodes {
        let timeout = Duration::from_millis(ends_ms.saturating_sub(now_ms()) + 10_000);
        wait_until(timeout, "the held change to roll out after the freeze", || applied(node, "ordinary"))?;
        let at = applied_at(node, &ordinary)?;
        assert!(at >= ends_ms, "{} applied it {} ms before the freeze ended", node.name, ends_ms - at);
    }
    Ok(())
}

#[test]
fn a_freeze_window_in_an_unknown_zone_is_refused_at_start() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    cluster.nodes[0].config_toml =
        "[[rollout.freeze]]\nname = \"weekend\"\nfrom = \"Fri 16:00\"\nto = \"Mon 08:00\"\nzone = \"Europe/Berln\"\n"
            .into();
    let error = cluster.nodes[0].start().expect_err("an unknown zone").to_string();
    assert!(
        error.contains("[rollout]: freeze window \"weekend\": expected an IANA time zone like Europe/Berlin or UTC, got zone = \"Europe/Berln\""),
        "{error}"
    );
    Ok(())
}
