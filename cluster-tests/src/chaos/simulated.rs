//! A simulated run (`proto::sim::fleet`) in the chaos suite's terms, so that one checker,
//! `check::check`, judges real processes and simulated fleets alike.
//!
//! The simulator keeps, per node at the end, what a real node's `/v1/status` and
//! `/v1/history` show (`NodeEnd`), and what happened (`Happened`): the changes acknowledged,
//! every release with its evidence, every revert written on the quorum with the numbers it saw.
//! This module writes them as the JSON the checker reads from real nodes: the status's
//! `state_digest`, `version_vector` and `reverted`; each generation's `rollout` view
//! (`applied_here`, `reverted`, `open_waves`, `waves`, `policy`, `anomaly_quorum`, `release`);
//! the `reverted ... trigger="quorum" reason=anomaly quorum: ...` log line of each revert; and,
//! as observations, the value each release made a node serve.
//!
//! Every node's view of a generation names the same waves: they are written once per
//! generation and shared by every view (`check::Waves`), as the simulator shares the plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use grapevine_proto::replica::Release;
use grapevine_proto::sim::fleet::{GenerationEnd, NodeEnd, Outcome};
use grapevine_proto::{Op, rollout::Plan};
use serde_json::{Value, json};

use super::check::{self, Rollout, Verdict, Waves};
use super::{Final, History, Observation, Op as ClientOp};

/// Judges a simulated run with the chaos suite's checker.
pub fn check(outcome: &Outcome) -> Verdict {
    let mut waves = WavesOf::default();
    let history = history(outcome, &mut waves);
    let finals: Vec<Final> = outcome.ends.iter().filter(|end| end.up).map(|end| final_of(end, &mut waves)).collect();
    let mut logs: BTreeMap<String, String> = BTreeMap::new();
    for (node, target, quorum) in &outcome.happened.quorum_reverts {
        let line = format!("WARN reverted generation={target} trigger=\"quorum\" reason=anomaly quorum: {quorum}\n");
        logs.entry(node.to_string()).or_default().push_str(&line);
    }
    let not_converged = outcome
        .violations
        .iter()
        .find(|v| v.invariant == "the fleet converges after the last heal")
        .map(|v| v.detail.clone());
    check::check(&history, &finals, &logs, not_converged)
}

/// The waves of each plan, written once per plan.
#[derive(Default)]
struct WavesOf {
    written: Vec<(Arc<Plan>, Waves)>,
}

impl WavesOf {
    fn of(&mut self, plan: &Arc<Plan>) -> Waves {
        if let Some((_, waves)) = self.written.iter().find(|(held, _)| Arc::ptr_eq(held, plan)) {
            return waves.clone();
        }
        let waves = Arc::new(plan.waves.clone());
        self.written.push((plan.clone(), Arc::clone(&waves)));
        waves
    }
}

fn history(outcome: &Outcome, waves: &mut WavesOf) -> History {
    let happened = &outcome.happened;
    let events = outcome
        .trace
        .iter()
        .filter_map(|line| {
            let (at, what) = line.trim_start().split_once(' ')?;
            Some((at.parse().ok()?, what.to_owned()))
        })
        .collect();
    let ops = happened
        .acknowledged
        .iter()
        .map(|(node, id, at, key, value)| ClientOp {
            t_ms: *at,
            node: node.to_string(),
            what: format!("config {key}"),
            values: vec![value.clone()],
            target: None,
            outcome: Ok(id.to_string()),
        })
        .collect();
    let ends: BTreeMap<String, &NodeEnd> = outcome.ends.iter().map(|end| (end.name.to_string(), end)).collect();
    let mut observations = Vec::new();
    let mut releases = BTreeMap::new();
    for (at, node, id, release) in &happened.releases {
        let end = ends.get(node.as_str()).and_then(|end| end.generations.iter().find(|g| g.generation.id() == id));
        let Some(end) = end else { continue };
        for op in &end.generation.body.change.ops {
            if let Op::PutConfig { key, value, .. } = op {
                observations.push(Observation {
                    t_ms: *at,
                    node: node.to_string(),
                    source: "config",
                    key: key.to_string(),
                    value: value.to_value(),
                    generation: Some(id.to_string()),
                });
            }
        }
        let rollout = rollout(end, Some(release), waves);
        releases.insert((node.to_string(), id.to_string()), rollout);
    }
    let quorum_seen = happened
        .quorum_reverts
        .iter()
        .map(|(node, target, quorum)| (target.to_string(), format!("{node} decided: {quorum}")))
        .collect();
    History { events, ops, observations, quorum_seen, releases, faults: BTreeMap::new(), corruptions: BTreeMap::new() }
}

/// The rollout view of a generation as its node sees it at the end; `release`, the evidence of
/// a release (the end's, by default).
fn rollout(end: &GenerationEnd, release: Option<&Arc<Release>>, waves: &mut WavesOf) -> Rollout {
    let release = release.or(end.release.as_ref()).cloned();
    Rollout {
        applied_here: end.applied_here,
        reverted: end.reverted,
        open_waves: end.open_waves,
        waves: waves.of(&end.plan),
        policy: json!(end.generation.body.change.policy),
        anomaly_quorum: json!(end.anomaly_quorum),
        release,
    }
}

fn final_of(end: &NodeEnd, waves: &mut WavesOf) -> Final {
    let version_vector: serde_json::Map<String, Value> =
        end.version_vector.iter().map(|(origin, seq)| (origin.to_string(), json!(seq))).collect();
    let reverted: Vec<String> = end.reverted.iter().map(ToString::to_string).collect();
    let status = json!({
        "state_digest": end.state_digest,
        "version_vector": version_vector,
        "reverted": reverted,
        "compacted": 0,
    });
    let generations: Vec<Value> = end
        .generations
        .iter()
        .map(|g| {
            let ops: Vec<Value> =
                g.generation.body.change.ops.iter().map(|op| json!({ "key": op.key().to_string() })).collect();
            json!({
                "id": g.generation.id().to_string(),
                "hash": g.generation.hash.to_string(),
                "ops": ops,
            })
        })
        .collect();
    let rollouts = end.generations.iter().map(|g| (g.generation.id().to_string(), rollout(g, None, waves))).collect();
    Final { name: end.name.to_string(), status, history: json!({ "generations": generations }), rollouts }
}

#[cfg(test)]
mod tests {
    use grapevine_proto::sim::fleet::{Options, run};

    use super::*;

    #[test]
    fn the_chaos_checker_passes_simulated_runs_with_faults() {
        for seed in 1..=3 {
            let outcome = run(Options { limit_ms: 60_000, ..Options::new(20, seed) });
            let verdict = check(&outcome);
            let violations: Vec<String> =
                verdict.violations.iter().map(|v| format!("{}: {}", v.invariant, v.detail)).collect();
            assert!(violations.is_empty(), "seed {seed}: {violations:#?}\n{}", outcome.summary());
            assert!(verdict.checked > 100, "seed {seed}: only {} checks", verdict.checked);
        }
    }

    #[test]
    fn the_chaos_checker_catches_a_gate_broken_on_purpose_in_the_simulator() {
        let outcome = run(Options { break_gates: true, faults: false, limit_ms: 60_000, ..Options::new(20, 3) });
        let verdict = check(&outcome);
        let gate = "no node applies a generation before its wave's gate opens";
        assert!(verdict.violations.iter().any(|v| v.invariant == gate), "{:#?}", verdict.violations);
    }
}
