//! The invariants a chaos run must keep (among them, since approvals: no generation applies
//! without the signatures its rule requires, `approvals_respected`), checked over its recorded history and the final
//! state of every node after the final heal and quiet period.
//!
//! The checker recomputes what it can on its own (the gate rule of a wave, the anomaly
//! quorum) from the numbers nodes report, rather than trusting their conclusions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use grapevine_proto::NodeName;
use grapevine_proto::replica::Release;
use grapevine_proto::report::Verdict as Judged;
use serde_json::Value;

use super::schedule::{APP_KEY, GOVERNED_KEY, GOVERNED_PREFIX};
use super::{Final, History};

/// A broken invariant, with the part of the history that shows it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// The events and observations of the history that involve what the detail names.
    pub history: Vec<String>,
}

/// How many instances of the invariants were checked, and which broke.
pub struct Verdict {
    pub checked: usize,
    pub violations: Vec<Violation>,
    /// Generations whose rollout stalled: applied by some nodes, waiting on others for a wave
    /// that stays closed (legal; the nodes differ in state by exactly those).
    pub stalled: BTreeSet<String>,
}

struct Checker<'a> {
    history: &'a History,
    checked: usize,
    violations: Vec<Violation>,
}

impl Checker<'_> {
    /// Counts one check; records a violation unless `ok`.
    fn expect(&mut self, ok: bool, invariant: &'static str, detail: impl FnOnce() -> (String, Vec<String>)) {
        self.checked += 1;
        if !ok {
            let (detail, needles) = detail();
            let history = minimal_history(self.history, &needles);
            self.violations.push(Violation { invariant, detail, history });
        }
    }
}

/// Checks every invariant. `not_converged` says why the cluster did not converge, if it did not.
pub fn check(
    history: &History,
    finals: &[Final],
    logs: &BTreeMap<String, String>,
    not_converged: Option<String>,
) -> Verdict {
    let mut checker = Checker { history, checked: 0, violations: Vec::new() };
    checker.expect(not_converged.is_none(), "the cluster converges after the final heal", || {
        (not_converged.clone().unwrap_or_default(), vec!["heal".to_owned()])
    });
    same_everywhere(&mut checker, finals);
    let stalled = stalled(&mut checker, finals);
    acknowledged_everywhere(&mut checker, finals);
    gates_respected(&mut checker, finals);
    reverts_match_quorums(&mut checker, finals, logs);
    served_only_written(&mut checker);
    approvals_respected(&mut checker, finals);
    damaged_stores_recovered(&mut checker, logs);
    Verdict { checked: checker.checked, violations: checker.violations, stalled }
}

/// A generation's rollout as one node's history shows it (its `rollout` view): the parts the
/// checks read. Its waves and release evidence are shared, not copied: in a flat fleet both
/// name up to every member, and a simulated fleet of 10,000 held them as 10,000 JSON copies of
/// 10,000 names per generation (the waves are the same in every view; the simulator's record
/// of a release is the evidence itself).
#[derive(Clone, Debug)]
pub struct Rollout {
    pub applied_here: bool,
    pub reverted: bool,
    pub open_waves: usize,
    pub waves: Waves,
    /// The generation's policy, as the view shows it.
    pub policy: Value,
    pub anomaly_quorum: Value,
    /// The evidence of its release here, if it was released.
    pub release: Option<Arc<Release>>,
}

/// The members of a rollout's waves, wave by wave.
pub type Waves = Arc<Vec<Vec<NodeName>>>;

impl Rollout {
    /// A rollout view as a node's API serves it; `None` for `null`. A member name or a release
    /// that does not read as one is left out (the checks then have less to go on).
    pub fn from_json(rollout: &Value) -> Option<Rollout> {
        if rollout.is_null() {
            return None;
        }
        let names = |wave: &Value| -> Vec<NodeName> {
            let members = wave["members"].as_array().into_iter().flatten();
            members.filter_map(|m| m["name"].as_str()?.parse().ok()).collect()
        };
        Some(Rollout {
            applied_here: rollout["applied_here"] == true,
            reverted: rollout["reverted"] == true,
            open_waves: rollout["open_waves"].as_u64().unwrap_or(0) as usize,
            waves: Arc::new(rollout["waves"].as_array().into_iter().flatten().map(names).collect()),
            policy: rollout["policy"].clone(),
            anomaly_quorum: rollout["anomaly_quorum"].clone(),
            release: serde_json::from_value(rollout["release"].clone()).ok().map(Arc::new),
        })
    }

    /// The members of wave `index`.
    fn wave_members(&self, index: usize) -> &[NodeName] {
        self.waves.get(index).map_or(&[], Vec::as_slice)
    }
}

/// Generations of a node's final history, by id.
fn generations(last: &Final) -> BTreeMap<String, &Value> {
    last.history["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| Some((g["id"].as_str()?.to_owned(), g)))
        .collect()
}

/// The generations a node applied and holds unreverted.
fn applied_set(last: &Final) -> BTreeSet<String> {
    let applied = |id: &String| last.rollouts.get(id).is_some_and(|r| r.applied_here && !r.reverted);
    generations(last).into_keys().filter(applied).collect()
}

/// Generations some node applied and another did not: each must be waiting, on the node that
/// did not, for a wave closed in its view, and no member of that wave or a later one may have
/// applied it (else the gate's latch would have opened it: D57). That is a stalled rollout (an
/// earlier wave's report turned anomalous short of the anomaly quorum, or a canary stayed
/// inconclusive). Returns the stalled generations.
fn stalled(checker: &mut Checker, finals: &[Final]) -> BTreeSet<String> {
    let applied: BTreeMap<&str, BTreeSet<String>> = finals.iter().map(|l| (l.name.as_str(), applied_set(l))).collect();
    let everywhere: BTreeSet<String> = applied.values().flatten().cloned().collect();
    let mut stalled = BTreeSet::new();
    for last in finals {
        let held = generations(last);
        for id in everywhere.difference(&applied[last.name.as_str()]) {
            if !held.contains_key(id) {
                continue;
            }
            let Some(rollout) = last.rollouts.get(id).filter(|r| !r.reverted) else { continue };
            let open = rollout.open_waves;
            let is_last = |m: &NodeName| m.as_str() == last.name;
            let wave = (0..rollout.waves.len()).position(|w| rollout.wave_members(w).iter().any(is_last));
            let waiting = wave.is_some_and(|wave| wave >= open);
            checker.expect(waiting, "every node holds the same log, reverts and state", || {
                (format!("{id} is applied elsewhere but not on {}, whose wave is open", last.name), vec![id.clone()])
            });
            let Some(wave) = wave else { continue };
            let went_through: Vec<String> = (wave..rollout.waves.len())
                .flat_map(|w| rollout.wave_members(w))
                .filter(|m| applied.get(m.as_str()).is_some_and(|set| set.contains(id)))
                .map(ToString::to_string)
                .collect();
            checker.expect(went_through.is_empty(), "every node holds the same log, reverts and state", || {
                (
                    format!(
                        "{id} is not applied on {}, though {went_through:?} of its wave or later applied it",
                        last.name
                    ),
                    vec![id.clone(), last.name.clone()],
                )
            });
            if waiting && went_through.is_empty() {
                stalled.insert(id.clone());
            }
        }
    }
    stalled
}

fn reverted_set(last: &Final) -> BTreeSet<String> {
    generations(last).into_keys().filter(|id| last.rollouts.get(id).is_some_and(|r| r.reverted)).collect()
}

/// Every live node holds the same log and the same reverted set, and nodes that applied the
/// same generations hold the same state (those that did not differ only by stalled rollouts,
/// see [`stalled`]).
fn same_everywhere(checker: &mut Checker, finals: &[Final]) {
    const INVARIANT: &str = "every node holds the same log, reverts and state";
    let mut by_applied: BTreeMap<BTreeSet<String>, Vec<&Final>> = BTreeMap::new();
    for last in finals {
        by_applied.entry(applied_set(last)).or_default().push(last);
    }
    for group in by_applied.values() {
        for other in &group[1..] {
            let (first, a, b) = (group[0], &group[0].status["state_digest"], &other.status["state_digest"]);
            checker.expect(a == b, INVARIANT, || {
                let detail = format!(
                    "state digest: {} has {a}, {} has {b}, having applied the same generations",
                    first.name, other.name
                );
                (detail, vec![first.name.clone(), other.name.clone()])
            });
        }
    }
    let Some(first) = finals.first() else { return };
    let first_generations = generations(first);
    let ours = reverted_set(first);
    for other in &finals[1..] {
        let names = vec![first.name.clone(), other.name.clone()];
        for what in ["version_vector", "reverted"] {
            let (a, b) = (&first.status[what], &other.status[what]);
            checker.expect(a == b, INVARIANT, || {
                (format!("{what}: {} has {a}, {} has {b}", first.name, other.name), names.clone())
            });
        }
        let theirs = reverted_set(other);
        checker.expect(ours == theirs, INVARIANT, || {
            (format!("reverted: {} has {ours:?}, {} has {theirs:?}", first.name, other.name), names.clone())
        });
        for (id, generation) in generations(other) {
            if let Some(mine) = first_generations.get(&id) {
                checker.expect(mine["hash"] == generation["hash"], INVARIANT, || {
                    let detail = format!(
                        "{id}: {} holds hash {}, {} holds {}",
                        first.name, mine["hash"], other.name, generation["hash"]
                    );
                    (detail, vec![id.clone()])
                });
            }
        }
    }
}

/// `origin.seq` as a pair.
fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (origin, seq) = id.rsplit_once('.')?;
    Some((origin, seq.parse().ok()?))
}

/// Every change acknowledged to a client is in every node's log (held whole or compacted:
/// the version vector covers it).
fn acknowledged_everywhere(checker: &mut Checker, finals: &[Final]) {
    let acked: Vec<String> =
        checker.history.ops.iter().filter(|op| op.target.is_none()).filter_map(|op| op.outcome.clone().ok()).collect();
    for id in acked {
        let Some((origin, seq)) = parse_id(&id) else { continue };
        for last in finals {
            let held = last.status["version_vector"][origin].as_u64().unwrap_or(0);
            checker.expect(held >= seq, "no acknowledged change is lost", || {
                (
                    format!("{id} was acknowledged, but {}'s log holds {origin} only up to {held}", last.name),
                    vec![id.clone()],
                )
            });
        }
    }
}

/// No node applied a generation before its wave's gate was open in its view: each release's
/// evidence (the reports it saw) satisfies the gate rule, recomputed here, and every member it
/// counted as healthy did apply the generation.
fn gates_respected(checker: &mut Checker, finals: &[Final]) {
    const INVARIANT: &str = "no node applies a generation before its wave's gate opens";
    let mut releases: BTreeMap<(String, String), &Rollout> =
        checker.history.releases.iter().map(|(key, rollout)| (key.clone(), rollout)).collect();
    for last in finals {
        for id in generations(last).into_keys() {
            if let Some(rollout) = last.rollouts.get(&id).filter(|r| r.release.is_some()) {
                releases.entry((last.name.clone(), id)).or_insert(rollout);
            }
        }
    }
    // Whether `member` applied `id`, as far as its final view can tell: not when it does not
    // hold `id` whole, nor when its store was damaged (its record of releases went with it,
    // and a generation reverted since is never released again).
    let damaged: BTreeSet<&str> = checker.history.corruptions.keys().map(String::as_str).collect();
    let views: BTreeMap<&str, (&Final, BTreeMap<String, &Value>)> =
        finals.iter().map(|l| (l.name.as_str(), (l, generations(l)))).collect();
    let never_applied = |member: &str, id: &str| {
        let applied_here = |last: &Final| last.rollouts.get(id).is_some_and(|r| r.applied_here);
        !damaged.contains(member)
            && views.get(member).is_some_and(|(last, held)| held.contains_key(id) && !applied_here(last))
    };
    for ((node, id), rollout) in releases {
        let Some(release) = &rollout.release else { continue };
        let wave = release.wave;
        let promoted = release.controls.promoted_through.is_some_and(|p| p as usize >= wave);
        if wave == 0 || promoted {
            checker.checked += 1;
            continue;
        }
        // The latch: a member of this wave or a later one had applied it (it reports on it).
        let went_through = (wave..rollout.waves.len())
            .flat_map(|w| rollout.wave_members(w))
            .find(|m| m.as_str() != node && release.reports.contains_key(*m));
        if let Some(member) = went_through {
            checker.expect(!never_applied(member.as_str(), &id), INVARIANT, || {
                (format!("{node} applied {id} because {member} had, but {member} never applied it"), vec![id.clone()])
            });
            continue;
        }
        let bake = rollout.policy["bake_ms"].as_u64().unwrap_or(0);
        let permille = rollout.policy["health_quorum_permille"].as_u64().unwrap_or(1000) as usize;
        for earlier in 0..wave {
            let members = rollout.wave_members(earlier);
            let needed = (members.len() * permille).div_ceil(1000).max(1);
            let healthy: Vec<&NodeName> = members
                .iter()
                .filter(|m| {
                    let report = release.reports.get(*m);
                    report.is_some_and(|r| r.verdict == Judged::Healthy && r.elapsed_ms >= bake)
                })
                .collect();
            checker.expect(healthy.len() >= needed, INVARIANT, || {
                let detail = format!(
                    "{node} applied {id} in wave {wave}, but wave {earlier} had {} of the {needed} healthy baked reports needed: {}",
                    healthy.len(),
                    serde_json::to_string(&release.reports).unwrap_or_default()
                );
                (detail, vec![id.clone(), node.clone()])
            });
            for member in healthy {
                checker.expect(!never_applied(member.as_str(), &id), INVARIANT, || {
                    (format!("{node} counted {member} healthy on {id}, which {member} never applied"), vec![id.clone()])
                });
            }
        }
    }
}

/// Whether a rollout view's anomaly reports reach its quorum, recomputed from its numbers.
pub fn quorum_reached(rollout: &Rollout) -> bool {
    let quorum = &rollout.anomaly_quorum;
    let anomalous = quorum["anomalous"].as_array().map_or(0, Vec::len);
    let applied = quorum["applied"].as_u64().unwrap_or(0) as usize;
    let permille = rollout.policy["anomaly_quorum_permille"].as_u64().unwrap_or(1000) as usize;
    let min = rollout.policy["anomaly_quorum_min"].as_u64().unwrap_or(1) as usize;
    anomalous > 0 && anomalous >= (applied * permille).div_ceil(1000).max(min)
}

/// Every generation whose anomaly quorum was reached (in any node's view, at any time) or
/// that an operator rolled back is reverted everywhere, and nothing else is.
fn reverts_match_quorums(checker: &mut Checker, finals: &[Final], logs: &BTreeMap<String, String>) {
    let mut expected: BTreeMap<String, String> = checker.history.quorum_seen.clone();
    let mut policies: BTreeMap<String, Value> = BTreeMap::new();
    for last in finals {
        for id in generations(last).into_keys() {
            let rollout = last.rollouts.get(&id);
            if rollout.is_some_and(quorum_reached) {
                expected.entry(id.clone()).or_insert_with(|| format!("{}'s final view", last.name));
            }
            policies.entry(id).or_insert_with(|| rollout.map_or(Value::Null, |r| r.policy.clone()));
        }
    }
    // A quorum can be reached in one node's view for an instant (say 1 of the 1 node it has
    // heard applied it, just before two more report): the writer logs the numbers it decided
    // on, and they must reach the quorum by the generation's own policy.
    for (node, log) in logs {
        for decision in logged_quorum_decisions(log) {
            let Some(policy) = policies.get(&decision.generation) else { continue };
            let permille = policy["anomaly_quorum_permille"].as_u64().unwrap_or(1000) as usize;
            let min = policy["anomaly_quorum_min"].as_u64().unwrap_or(1) as usize;
            let needed = (decision.applied * permille).div_ceil(1000).max(min);
            let reached = decision.anomalous.len() == decision.count
                && decision.count >= 1
                && decision.needed == needed
                && decision.count >= needed;
            checker.expect(reached, "reverted exactly where the anomaly quorum was reached", || {
                let detail = format!(
                    "{node} reverted {} on a quorum its numbers do not reach: {}",
                    decision.generation, decision.text
                );
                (detail, vec![decision.generation.clone()])
            });
            if reached {
                expected
                    .entry(decision.generation.clone())
                    .or_insert_with(|| format!("{node} decided: {}", decision.text));
            }
        }
    }
    for op in &checker.history.ops {
        if let (Some(target), Ok(_)) = (&op.target, &op.outcome) {
            expected.entry(target.clone()).or_insert_with(|| format!("rolled back on {}", op.node));
        }
    }
    for last in finals {
        let held = generations(last);
        let reverted = reverted_set(last);
        for (id, why) in &expected {
            if held.contains_key(id) {
                checker.expect(reverted.contains(id), "reverted exactly where the anomaly quorum was reached", || {
                    (format!("{id} should be reverted ({why}) but is not on {}", last.name), vec![id.clone()])
                });
            }
        }
        for id in &reverted {
            checker.expect(expected.contains_key(id), "reverted exactly where the anomaly quorum was reached", || {
                (format!("{id} is reverted on {} without a quorum seen or a rollback", last.name), vec![id.clone()])
            });
        }
    }
}

/// A revert a node logged as written on the anomaly quorum, with the numbers it decided on.
struct QuorumDecision {
    generation: String,
    count: usize,
    applied: usize,
    anomalous: Vec<String>,
    needed: usize,
    text: String,
}

/// Parses the node log's `reverted generation=G ... trigger="quorum" reason=anomaly quorum:
/// K of N nodes that applied it report it anomalous (NAMES), M needed` lines (text format,
/// colours stripped).
fn logged_quorum_decisions(log: &str) -> Vec<QuorumDecision> {
    let mut decisions = Vec::new();
    for line in log.lines().map(strip_ansi) {
        let Some(rest) = line.split_once("reverted generation=").map(|(_, rest)| rest) else { continue };
        if !line.contains("trigger=\"quorum\"") {
            continue;
        }
        let Some(generation) = rest.split_whitespace().next() else { continue };
        let Some(text) = line.split_once("anomaly quorum: ").map(|(_, text)| text.trim().to_owned()) else { continue };
        let parse = || -> Option<QuorumDecision> {
            let (count, rest) = text.split_once(" of ")?;
            let (applied, rest) = rest.split_once(" nodes that applied it report it anomalous (")?;
            let (names, rest) = rest.split_once("), ")?;
            let needed = rest.strip_suffix(" needed")?;
            Some(QuorumDecision {
                generation: generation.to_owned(),
                count: count.parse().ok()?,
                applied: applied.parse().ok()?,
                anomalous: names.split(", ").filter(|n| !n.is_empty()).map(str::to_owned).collect(),
                needed: needed.parse().ok()?,
                text: text.clone(),
            })
        };
        if let Some(decision) = parse() {
            decisions.push(decision);
        }
    }
    decisions
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for end in chars.by_ref() {
                if end.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// No node served a config value, a flag value or a file that no change ever wrote; and a
/// config value served under an acknowledged generation is the one that change wrote.
fn served_only_written(checker: &mut Checker) {
    let mut written: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_generation: BTreeMap<String, String> = BTreeMap::new();
    for op in &checker.history.ops {
        let Some(key) = op.what.split_once(' ').map(|(_, key)| key.to_owned()) else { continue };
        for value in &op.values {
            written.entry(key.clone()).or_default().insert(value.to_string());
        }
        if let (Ok(generation), [value]) = (&op.outcome, op.values.as_slice()) {
            by_generation.insert(generation.clone(), value.to_string());
        }
    }
    let observations = checker.history.observations.clone();
    for seen in observations {
        let value = seen.value.to_string();
        let key = if seen.source == "file" { APP_KEY.to_owned() } else { seen.key.clone() };
        let known = written.get(&key).is_some_and(|values| values.contains(&value));
        checker.expect(known, "nothing served that no change wrote", || {
            (
                format!(
                    "{} served {} {key} = {value} at {} ms, a value no change wrote",
                    seen.node, seen.source, seen.t_ms
                ),
                vec![key.clone(), seen.node.clone()],
            )
        });
        if let Some(expected) = seen.generation.as_ref().and_then(|g| by_generation.get(g)) {
            checker.expect(*expected == value, "nothing served that no change wrote", || {
                let generation = seen.generation.clone().unwrap_or_default();
                (
                    format!("{} served {key} = {value} as {generation}, which wrote {expected}", seen.node),
                    vec![generation],
                )
            });
        }
    }
}

/// No generation is applied anywhere without the signatures its rule requires: every change of
/// [`GOVERNED_PREFIX`] in a node's final log is an enactment signed by two distinct operator
/// keys, and every generation a node served [`GOVERNED_KEY`] from is one of those (unless
/// compaction folded it away, after every node had checked it).
fn approvals_respected(checker: &mut Checker, finals: &[Final]) {
    const INVARIANT: &str = "no generation applies without the signatures its rule requires";
    let mut enacted: BTreeSet<String> = BTreeSet::new();
    for last in finals {
        for (id, generation) in generations(last) {
            let ops = generation["ops"].as_array().into_iter().flatten();
            if !ops.filter_map(|op| op["key"].as_str()).any(|key| key.starts_with(GOVERNED_PREFIX)) {
                continue;
            }
            let approvals = generation["governance"]["approvals"].as_array().into_iter().flatten();
            let mut keys: BTreeSet<&str> = generation["signed_by"]["key"].as_str().into_iter().collect();
            keys.extend(approvals.filter_map(|approval| approval["key"].as_str()));
            let signed_enough = generation["governance"]["record"] == "enact" && keys.len() >= 2;
            checker.expect(signed_enough, INVARIANT, || {
                let governance = &generation["governance"];
                let detail = format!(
                    "{} holds {id}, a change of {GOVERNED_PREFIX} signed by {} distinct key(s) ({governance})",
                    last.name,
                    keys.len()
                );
                (detail, vec![id.clone()])
            });
            if signed_enough {
                enacted.insert(id);
            }
        }
    }
    let compacted = finals.iter().any(|last| last.status["compacted"].as_u64().unwrap_or(0) > 0);
    let observations = checker.history.observations.clone();
    for seen in observations.iter().filter(|seen| seen.key == GOVERNED_KEY) {
        let Some(generation) = &seen.generation else { continue };
        if compacted && !enacted.contains(generation) {
            continue;
        }
        checker.expect(enacted.contains(generation), INVARIANT, || {
            let detail = format!(
                "{} served {GOVERNED_KEY} = {} as {generation} at {} ms, which no node holds as a two-signature enactment",
                seen.node, seen.value, seen.t_ms
            );
            (detail, vec![generation.clone(), seen.node.clone()])
        });
    }
}

/// A node whose store was truncated said so; every node that found its store damaged said
/// when it had recovered from its peers. (Garbage that hit only pages redb no longer uses is
/// harmless and goes unnoticed: the other invariants check that such a node serves the truth.)
fn damaged_stores_recovered(checker: &mut Checker, logs: &BTreeMap<String, String>) {
    for (node, damage) in &checker.history.corruptions.clone() {
        let log = logs.get(node).map(String::as_str).unwrap_or_default();
        let detected = log.matches("the store is damaged").count();
        let recovered = log.matches("recovered the log from peers").count();
        checker.expect(
            detected >= damage.truncated,
            "a damaged store is detected, never served, and recovered",
            || {
                (
                    format!(
                        "{node}'s store was truncated {} times; its log says so {detected} times",
                        damage.truncated
                    ),
                    vec![node.clone()],
                )
            },
        );
        checker.expect(recovered >= detected, "a damaged store is detected, never served, and recovered", || {
            (
                format!("{node} found its store damaged {detected} times; it recovered {recovered} times"),
                vec![node.clone()],
            )
        });
    }
}

/// The events and observations that mention any of `needles`: the last 12 of each.
fn minimal_history(history: &History, needles: &[String]) -> Vec<String> {
    let mentions = |text: &str| needles.iter().any(|needle| text.contains(needle.as_str()));
    let events: Vec<String> = history
        .events
        .iter()
        .filter(|(_, text)| mentions(text))
        .map(|(t, text)| format!("{t:>7} ms  {text}"))
        .collect();
    let observations: Vec<String> = history
        .observations
        .iter()
        .filter(|o| mentions(&o.node) || mentions(&o.key) || o.generation.as_deref().is_some_and(mentions))
        .map(|o| {
            let generation = o.generation.as_deref().unwrap_or("-");
            format!("{:>7} ms  {} serves {} {} = {} ({generation})", o.t_ms, o.node, o.source, o.key, o.value)
        })
        .collect();
    let tail = |lines: Vec<String>| lines[lines.len().saturating_sub(12)..].to_vec();
    let mut lines = tail(events);
    lines.extend(tail(observations));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_decisions_are_read_back_from_the_log() {
        let line = "\u{1b}[2m2026-11-22T03:23:04.756368Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m grapevine_node::engine::revert: \
                    reverted \u{1b}[3mgeneration\u{1b}[0m\u{1b}[2m=\u{1b}[0mn5.3 revert=n5.3/revert trigger=\"quorum\" \
                    reason=anomaly quorum: 2 of 4 nodes that applied it report it anomalous (n2, n4), 2 needed";
        let rollback =
            "INFO reverted generation=n1.1 revert=n1.1/revert trigger=\"rollback\" reason=an operator's rollback";
        let decisions = logged_quorum_decisions(&format!("{line}\n{rollback}\n"));
        assert_eq!(decisions.len(), 1);
        let decision = &decisions[0];
        assert_eq!(decision.generation, "n5.3");
        assert_eq!((decision.count, decision.applied, decision.needed), (2, 4, 2));
        assert_eq!(decision.anomalous, vec!["n2".to_owned(), "n4".to_owned()]);
    }

    /// A rollout view reads back as a node serves it: waves by name, the release evidence whole.
    #[test]
    fn a_rollout_view_reads_back_its_waves_and_its_release() {
        let report = grapevine_proto::report::Report { verdict: Judged::Healthy, elapsed_ms: 1_500 };
        let release = Release {
            wave: 1,
            at_unix_ms: 7,
            controls: Default::default(),
            reports: [("n1".parse().unwrap(), report)].into_iter().collect(),
        };
        let view = serde_json::json!({
            "applied_here": true, "open_waves": 2, "release": release,
            "waves": [{"index": 0, "members": [{"name": "n1"}]}, {"index": 1, "members": [{"name": "n2"}, {"name": "n3"}]}],
        });
        let rollout = Rollout::from_json(&view).unwrap();
        assert!(rollout.applied_here && !rollout.reverted);
        assert_eq!((rollout.open_waves, rollout.wave_members(1).len()), (2, 2));
        assert_eq!(rollout.release.as_deref(), Some(&release));
        let unreleased = Rollout::from_json(&serde_json::json!({"release": null})).unwrap();
        assert!(unreleased.release.is_none());
        assert!(Rollout::from_json(&Value::Null).is_none());
    }

    /// The approvals invariant breaks on a one-signature change of the governed prefix, and on
    /// a value served from a generation no node holds as an enactment.
    #[test]
    fn a_change_of_the_governed_prefix_needs_an_enactment_of_two_keys() {
        let put = serde_json::json!([{"op": "put_config", "key": GOVERNED_KEY}]);
        let history = serde_json::json!({"generations": [
            {"id": "n1.2", "ops": put, "signed_by": {"key": "ed25519:a"},
             "governance": {"record": "enact", "approvals": [{"key": "ed25519:b"}]}},
            {"id": "n1.3", "ops": put, "signed_by": {"key": "ed25519:a"}},
            {"id": "n1.4", "ops": put, "signed_by": {"key": "ed25519:a"},
             "governance": {"record": "enact", "approvals": [{"key": "ed25519:a"}]}},
        ]});
        let last = Final::new("n1".into(), serde_json::json!({"compacted": 0}), history);
        let seen = |generation: &str| super::super::Observation {
            t_ms: 1,
            node: "n2".into(),
            source: "config",
            key: GOVERNED_KEY.into(),
            value: serde_json::json!(1),
            generation: Some(generation.into()),
        };
        let recorded = History { observations: vec![seen("n1.2"), seen("n1.3")], ..History::default() };
        let mut checker = Checker { history: &recorded, checked: 0, violations: Vec::new() };
        approvals_respected(&mut checker, &[last]);
        let broken: Vec<&str> = checker.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].contains("n1.3, a change of payments/ signed by 1 distinct key(s)"), "{broken:?}");
        assert!(broken[1].contains("n1.4"), "the proposer's own approval counts once: {broken:?}");
        assert!(broken[2].contains("as n1.3"), "{broken:?}");
    }
}
