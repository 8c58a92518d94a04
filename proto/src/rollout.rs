//! Rollout: a generation's deterministic waves, and the gate that releases it to a node, as
//! pure functions of gossiped facts. They read data from below: the policy and the controls
//! (`policy.rs`) and the nodes' reports (`report.rs`).
//!
//! A generation records the members alive when it was accepted. Members are ranked by
//! `sha256(generation id, node)` and cut by the policy's cumulative wave sizes (or, with
//! `waves_by`, a canary then one label value per wave). Every node computes the same waves
//! from the same generation. A node in wave k is released when every earlier wave has at
//! least its quorum of members reporting `healthy` on the generation for at least the bake
//! time, or an operator promoted past it, and the rollout is not paused. Missing reports
//! never count: a silent or partitioned wave stalls the rollout, it never advances it.
//! Between facts, reports only age, so `Plan::opens_in` says when a gate will open if nothing
//! else happens: the engine sleeps until then instead of polling.
//!
//! `docs/protocol.md` states the rules; this module is their code:
//!
//! - `Plan::of(body)` ranks `body.members` by `sha256(origin, 0, seq big-endian, node)` and cuts
//!   them by the cumulative wave sizes (`WaveSize::Count` or `Percent`; a percentage rounds up);
//!   empty waves are dropped. With `waves_by`, the canary (the first wave size) is followed by one
//!   wave per label value, ordered by the hash of (generation id, value). Emergency or one-wave
//!   policies give one wave. `wave_of(node)` puts a node that is not among the members in the last
//!   wave. `Plan::shared(body)` is the same plan, ranked once and kept with the body's member list
//!   (`model::MemberList`), which every copy of the generation shares: a simulated fleet of
//!   10,000 ranks each generation once, not once per node. A plan indexes each member's wave, so
//!   `wave_of` and the gate look names up instead of searching waves that name every member.
//! - `Plan::is_open(wave, policy, controls, reports)`, `baked` and `open_waves` are the gate, with
//!   its latch: a wave is open once a member of it or of a later wave reports on the generation
//!   (D57). `Plan::opens_in` (from `baked_in` and `Report::baked_in`, the same rule) says in how
//!   many ms the gate opens if the reports only age: 0 when open, `None` when only a new report,
//!   control or member can open it (D69).
//! - `AnomalyQuorum::of(policy, reports)` counts the distinct reporters (`applied`: every node that
//!   applied a generation reports on it), those reporting `anomalous`, and `needed` =
//!   `max(anomaly_quorum_min, ceil(applied * anomaly_quorum_permille / 1000))`; `reached()` is at
//!   least one anomalous report and at least `needed` of them.
//!
//! **Architecture Invariant:** waves are a function of the generation alone (id, members,
//! groups, policy): every node computes the same plan, whatever order it holds the members in
//! (proptest `every_node_computes_the_same_waves_covering_every_member_once`). A silent wave
//! never advances the rollout: with the canary silent, a later wave opens only through a member
//! that already applied the generation (proptest
//! `a_silent_canary_opens_a_wave_only_through_a_member_that_went_through`).
//!
//! Tests: the default waves on 10 nodes are 1, 4, 5 (the empty 10% wave dropped); a wave opens
//! only on a baked healthy quorum of every earlier wave (and pause and promote act); a gate
//! opens in the time its slowest needed report takes to bake and exactly then (`opens_in`, with
//! a proptest against `is_open` on aged reports); `waves_by` puts one label value in each wave
//! after the canary; the anomaly quorum is the larger of the minimum and the share of appliers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::GenerationBody;
use crate::name::{GenId, NodeName};
use crate::policy::{Controls, Policy, WaveSize};
use crate::report::{Report, Verdict};

/// Whether the nodes that applied a generation say it hurts. Every node that applied it
/// reports on it (see `Report`), so the reporters are the nodes that applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyQuorum {
    /// Distinct nodes that report on the generation: those that applied it.
    pub applied: usize,
    /// Those that report it anomalous.
    pub anomalous: Vec<NodeName>,
    /// `max(min, ceil(fraction * applied))`.
    pub needed: usize,
}

impl AnomalyQuorum {
    pub fn of(policy: &Policy, reports: &BTreeMap<NodeName, Report>) -> AnomalyQuorum {
        let applied = reports.len();
        let anomalous: Vec<NodeName> =
            reports.iter().filter(|(_, r)| r.verdict == Verdict::Anomalous).map(|(n, _)| n.clone()).collect();
        let share = (applied * policy.anomaly_quorum_permille as usize).div_ceil(1000);
        AnomalyQuorum { applied, anomalous, needed: share.max(policy.anomaly_quorum_min as usize) }
    }

    /// Whether the generation is bad: enough distinct nodes report it anomalous.
    pub fn reached(&self) -> bool {
        !self.anomalous.is_empty() && self.anomalous.len() >= self.needed
    }
}

impl fmt::Display for AnomalyQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.anomalous.iter().map(NodeName::as_str).collect();
        write!(
            f,
            "{} of {} nodes that applied it report it anomalous ({}), {} needed",
            self.anomalous.len(),
            self.applied,
            names.join(", "),
            self.needed
        )
    }
}

/// The waves of one generation: disjoint, in order.
#[derive(Clone, Serialize)]
pub struct Plan {
    /// Read only: the index below is built from them with the plan.
    pub waves: Vec<Vec<NodeName>>,
    /// Each member's wave, when no member is in two: `wave_of` and the gate look a name up
    /// here instead of searching the waves, which in a flat fleet name every member.
    #[serde(skip)]
    index: Option<Arc<HashMap<NodeName, usize>>>,
}

impl PartialEq for Plan {
    fn eq(&self, other: &Plan) -> bool {
        self.waves == other.waves
    }
}

impl Eq for Plan {}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan").field("waves", &self.waves).finish()
    }
}

/// What a generation's waves are computed from besides its members: a plan kept with a member
/// list (`Plan::shared`) is used only for a body with the same inputs (a body changed after its
/// plan was computed, or another body given the same list, gets its own).
pub(crate) struct PlanInputs {
    id: GenId,
    emergency: bool,
    waves: Vec<WaveSize>,
    waves_by: Option<String>,
    groups: Vec<String>,
}

impl PlanInputs {
    fn of(body: &GenerationBody) -> PlanInputs {
        let policy = &body.change.policy;
        PlanInputs {
            id: body.id.clone(),
            emergency: policy.emergency,
            waves: policy.waves.clone(),
            waves_by: policy.waves_by.clone(),
            groups: body.groups.clone(),
        }
    }

    fn matches(&self, body: &GenerationBody) -> bool {
        let policy = &body.change.policy;
        self.id == body.id
            && self.emergency == policy.emergency
            && self.waves == policy.waves
            && self.waves_by == policy.waves_by
            && self.groups == body.groups
    }
}

impl Plan {
    /// The waves of `body`, from its recorded members (and their groups, with `waves_by`).
    pub fn of(body: &GenerationBody) -> Plan {
        Plan::clone(&Plan::shared(body))
    }

    /// `Plan::of`, shared: computed once per member list and kept with it, so every copy of a
    /// generation (every node of a simulated fleet) shares one plan, ranked once (ranking
    /// hashes every member).
    pub fn shared(body: &GenerationBody) -> Arc<Plan> {
        let memo = body.members.derived();
        if let Some((inputs, plan)) = memo.get().and_then(|kept| kept.downcast_ref::<(PlanInputs, Arc<Plan>)>())
            && inputs.matches(body)
        {
            return plan.clone();
        }
        let plan = Arc::new(Plan::rank(body));
        // The first body to ask keeps its plan with the list; another (the same list under
        // other inputs, in tests) computes its own each time.
        let _ = memo.set(Box::new((PlanInputs::of(body), plan.clone())));
        plan
    }

    fn rank(body: &GenerationBody) -> Plan {
        let policy = &body.change.policy;
        let mut ranked: Vec<(Vec<u8>, &NodeName)> =
            body.members.iter().map(|member| (rank(&body.id, member.as_str()), member)).collect();
        ranked.sort();
        let ranked: Vec<NodeName> = ranked.into_iter().map(|(_, member)| member.clone()).collect();
        if policy.emergency || policy.waves.len() == 1 {
            return Plan::from_waves(vec![ranked]);
        }
        let waves = match &policy.waves_by {
            Some(_) => grouped(body, &ranked),
            None => cut(&ranked, &policy.waves),
        };
        Plan::from_waves(waves.into_iter().filter(|wave| !wave.is_empty()).collect())
    }

    fn from_waves(waves: Vec<Vec<NodeName>>) -> Plan {
        let mut index = HashMap::new();
        for (wave, members) in waves.iter().enumerate() {
            for member in members {
                if index.insert(member.clone(), wave).is_some() {
                    // A name in two waves (a malformed member list): searched, as it always was.
                    return Plan { waves, index: None };
                }
            }
        }
        Plan { waves, index: Some(Arc::new(index)) }
    }

    /// The wave `node` is in: a node that joined after the generation is in the last.
    pub fn wave_of(&self, node: &NodeName) -> usize {
        let last = self.waves.len().saturating_sub(1);
        match &self.index {
            Some(index) => index.get(node).copied().unwrap_or(last),
            None => self.waves.iter().position(|wave| wave.contains(node)).unwrap_or(last),
        }
    }

    /// Whether wave `wave` may apply: every earlier wave reached its quorum of healthy
    /// reports baked for at least the bake time, or was promoted past; and not paused.
    pub fn is_open(
        &self,
        wave: usize,
        policy: &Policy,
        controls: Controls,
        reports: &BTreeMap<NodeName, Report>,
    ) -> bool {
        if wave == 0 || controls.promoted_through.is_some_and(|through| through as usize >= wave) {
            return true;
        }
        if controls.paused {
            return false;
        }
        // A gate that opened stays open: a member of this wave or a later one that reports on
        // the generation applied it, so the gate was open in its view. Without this latch, a
        // wave-mate that was down while the gate was open, and came back after an earlier
        // wave's report turned anomalous (short of the anomaly quorum), would never apply what
        // the rest of its wave did: the cluster would stay split for good.
        if self.latched(wave, reports) {
            return true;
        }
        (0..wave.min(self.waves.len())).all(|earlier| self.wave_baked_in(earlier, policy, reports) == Some(0))
    }

    /// Whether a member of wave `wave` or a later one reports (the gate's latch), from the
    /// shorter of the reports and those waves' members.
    fn latched(&self, wave: usize, reports: &BTreeMap<NodeName, Report>) -> bool {
        let later = &self.waves[wave.min(self.waves.len())..];
        match &self.index {
            Some(index) if reports.len() < later.iter().map(Vec::len).sum() => {
                reports.keys().any(|member| index.get(member).is_some_and(|w| *w >= wave))
            }
            _ => later.iter().flatten().any(|member| reports.contains_key(member)),
        }
    }

    /// `baked_in` of the members of wave `wave`, from the shorter of the reports and the wave.
    fn wave_baked_in(&self, wave: usize, policy: &Policy, reports: &BTreeMap<NodeName, Report>) -> Option<u64> {
        let members = &self.waves[wave];
        let Some(index) = self.index.as_ref().filter(|_| reports.len() < members.len()) else {
            return self.baked_in(members, policy, reports);
        };
        let needed = (members.len() * policy.health_quorum_permille as usize).div_ceil(1000).max(1);
        let in_wave = reports.iter().filter(|(member, _)| index.get(*member) == Some(&wave));
        let mut waits: Vec<u64> = in_wave.filter_map(|(_, report)| report.baked_in(policy.bake_ms)).collect();
        waits.sort_unstable();
        waits.get(needed - 1).copied()
    }

    /// Whether a wave's members report healthy, baked, in at least the quorum.
    pub fn baked(&self, members: &[NodeName], policy: &Policy, reports: &BTreeMap<NodeName, Report>) -> bool {
        self.baked_in(members, policy, reports) == Some(0)
    }

    /// In how many ms a wave's members will report healthy, baked, in at least the quorum, if
    /// their reports only age from here: 0 when they do now, `None` when too few report
    /// healthy for aging alone to get there (only a new report can).
    pub fn baked_in(&self, members: &[NodeName], policy: &Policy, reports: &BTreeMap<NodeName, Report>) -> Option<u64> {
        let needed = (members.len() * policy.health_quorum_permille as usize).div_ceil(1000).max(1);
        let mut waits: Vec<u64> = members
            .iter()
            .filter_map(|member| reports.get(member))
            .filter_map(|report| report.baked_in(policy.bake_ms))
            .collect();
        waits.sort_unstable();
        // The quorum is baked once its `needed`-th fastest healthy member is.
        waits.get(needed - 1).copied()
    }

    /// In how many ms wave `wave`'s gate opens if no report, control or member changes and the
    /// reports only age: 0 when it is open now, `None` when only a new fact can open it (a
    /// pause, or an earlier wave short of healthy reports). The engine sleeps until then, so
    /// a gate opens the moment its last needed report is baked, without polling; reports it
    /// has not seen yet wake it on their own.
    pub fn opens_in(
        &self,
        wave: usize,
        policy: &Policy,
        controls: Controls,
        reports: &BTreeMap<NodeName, Report>,
    ) -> Option<u64> {
        if self.is_open(wave, policy, controls, reports) {
            return Some(0);
        }
        if controls.paused {
            return None;
        }
        // The latch needs a new report, so aging opens the gate only through the rule: when
        // the slowest earlier wave is baked.
        let earlier = 0..wave.min(self.waves.len());
        earlier.into_iter().try_fold(0, |slowest, w| Some(slowest.max(self.wave_baked_in(w, policy, reports)?)))
    }

    /// How many waves are open.
    pub fn open_waves(&self, policy: &Policy, controls: Controls, reports: &BTreeMap<NodeName, Report>) -> usize {
        (0..self.waves.len()).take_while(|wave| self.is_open(*wave, policy, controls, reports)).count()
    }
}

fn rank(id: &GenId, node: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(id.origin.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(id.seq.to_be_bytes());
    hasher.update(node.as_bytes());
    hasher.finalize().to_vec()
}

/// Cuts ranked members by cumulative sizes.
fn cut(ranked: &[NodeName], waves: &[WaveSize]) -> Vec<Vec<NodeName>> {
    let mut start = 0;
    waves
        .iter()
        .map(|size| {
            let end = size.cumulative(ranked.len()).max(start).min(ranked.len());
            let wave = ranked[start..end].to_vec();
            start = end;
            wave
        })
        .collect()
}

/// The canary (the first wave size), then one wave per label value, ordered by rank.
fn grouped(body: &GenerationBody, ranked: &[NodeName]) -> Vec<Vec<NodeName>> {
    let canary_size = body.change.policy.waves[0].cumulative(ranked.len()).min(ranked.len());
    let (canary, rest) = ranked.split_at(canary_size);
    // Each member's first place in the list (one pass, not a search per member).
    let mut places: HashMap<&NodeName, usize> = HashMap::new();
    for (place, member) in body.members.iter().enumerate() {
        places.entry(member).or_insert(place);
    }
    let group_of = |node: &NodeName| {
        let index = places[node];
        body.groups.get(index).cloned().unwrap_or_default()
    };
    let mut groups: BTreeMap<Vec<u8>, Vec<NodeName>> = BTreeMap::new();
    let mut ranks: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for node in rest {
        let group = group_of(node);
        let key = ranks.entry(group.clone()).or_insert_with(|| rank(&body.id, &group)).clone();
        groups.entry(key).or_default().push(node.clone());
    }
    std::iter::once(canary.to_vec()).chain(groups.into_values()).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hlc::Stamp;
    use crate::model::{Change, Op};
    use crate::policy::{MAX_BAKE_MS, parse_waves};

    fn body(members: usize, policy: Policy, groups: Vec<String>) -> GenerationBody {
        GenerationBody {
            id: GenId { origin: "n0".parse().unwrap(), seq: 7 },
            hlc: Stamp::default(),
            members: (0..members).map(|i| format!("n{i}").parse().unwrap()).collect(),
            groups,
            change: Change {
                ops: vec![Op::PutConfig {
                    key: "k".parse().unwrap(),
                    value: "1".to_owned().try_into().unwrap(),
                    schema: None,
                }],
                policy,
                controls: vec![],
            },
            author: None,
            signed: None,
            terms: None,
        }
    }

    fn healthy(elapsed_ms: u64) -> Report {
        Report { verdict: Verdict::Healthy, elapsed_ms }
    }

    #[test]
    fn default_waves_on_ten_nodes_are_one_one_three_five() {
        let plan = Plan::of(&body(10, Policy::default(), vec![]));
        let sizes: Vec<usize> = plan.waves.iter().map(Vec::len).collect();
        // 10% of 10 is 1, already the canary: that wave is empty and dropped.
        assert_eq!(sizes, vec![1, 4, 5]);
    }

    #[test]
    fn a_wave_opens_only_on_a_baked_healthy_quorum_of_every_earlier_wave() {
        let policy = Policy { waves: parse_waves("1,50%,100%").unwrap(), bake_ms: 1_000, ..Policy::default() };
        let plan = Plan::of(&body(6, policy.clone(), vec![]));
        assert_eq!(plan.waves.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2, 3]);
        let canary = plan.waves[0][0].clone();
        let mut reports = BTreeMap::new();
        let none = Controls::default();
        assert!(plan.is_open(0, &policy, none, &reports));
        assert!(!plan.is_open(1, &policy, none, &reports), "no report is not healthy");
        reports.insert(canary.clone(), healthy(999));
        assert!(!plan.is_open(1, &policy, none, &reports), "not baked yet");
        reports.insert(canary.clone(), Report { verdict: Verdict::Anomalous, elapsed_ms: 5_000 });
        assert!(!plan.is_open(1, &policy, none, &reports), "anomalous");
        reports.insert(canary, healthy(1_000));
        assert!(plan.is_open(1, &policy, none, &reports));
        assert!(!plan.is_open(2, &policy, none, &reports), "wave 1 has not reported");
        assert!(!plan.is_open(1, &policy, Controls { paused: true, promoted_through: None }, &reports));
        assert!(plan.is_open(2, &policy, Controls { paused: true, promoted_through: Some(2) }, &reports));
        assert_eq!(plan.open_waves(&policy, none, &reports), 2);
        // A gate that opened stays open: once a wave-2 member applied it (and reports), the
        // rest of wave 2 follows, even though the canary's report has since turned anomalous.
        let wave_mate = plan.waves[2][0].clone();
        reports.insert(plan.waves[0][0].clone(), Report { verdict: Verdict::Anomalous, elapsed_ms: 9_000 });
        assert!(!plan.is_open(2, &policy, none, &reports));
        reports.insert(wave_mate, healthy(10));
        assert!(plan.is_open(2, &policy, none, &reports));
        assert!(plan.is_open(1, &policy, none, &reports), "a later wave's member went through wave 1 too");
    }

    /// The waves `1, 30%, 70%, 100%`, baked for 1 s, under a health quorum of `quorum`.
    fn four_waves(quorum: u16) -> Policy {
        Policy {
            waves: parse_waves("1,30%,70%,100%").unwrap(),
            bake_ms: 1_000,
            health_quorum_permille: quorum,
            ..Policy::default()
        }
    }

    /// Reports of `nodes` as drawn: each `(kind, age)` a healthy, inconclusive or anomalous
    /// report of that age, or (a kind past those) none.
    fn drawn_reports<'a>(nodes: impl Iterator<Item = &'a NodeName>, drawn: &[(u8, u64)]) -> BTreeMap<NodeName, Report> {
        let verdicts = [Verdict::Healthy, Verdict::Inconclusive, Verdict::Anomalous];
        nodes
            .zip(drawn)
            .filter_map(|(node, (kind, elapsed_ms))| {
                Some((node.clone(), Report { verdict: *verdicts.get(*kind as usize)?, elapsed_ms: *elapsed_ms }))
            })
            .collect()
    }

    /// `reports` as they read `ms` later, with nothing new.
    fn aged(reports: &BTreeMap<NodeName, Report>, ms: u64) -> BTreeMap<NodeName, Report> {
        reports.iter().map(|(n, r)| (n.clone(), Report { elapsed_ms: r.elapsed_ms + ms, ..*r })).collect()
    }

    #[test]
    fn a_gate_opens_in_the_time_its_slowest_needed_report_takes_to_bake() {
        let policy = Policy { waves: parse_waves("1,50%,100%").unwrap(), bake_ms: 1_000, ..Policy::default() };
        let plan = Plan::of(&body(6, policy.clone(), vec![]));
        let (canary, wave_1) = (plan.waves[0][0].clone(), plan.waves[1].clone());
        let none = Controls::default();
        let mut reports = BTreeMap::new();
        assert_eq!(plan.opens_in(0, &policy, none, &reports), Some(0), "the canary never waits");
        assert_eq!(plan.opens_in(1, &policy, none, &reports), None, "no report: only a report can open it");
        reports.insert(canary.clone(), Report { verdict: Verdict::Inconclusive, elapsed_ms: 5_000 });
        assert_eq!(plan.opens_in(1, &policy, none, &reports), None, "aging never makes a verdict healthy");
        reports.insert(canary.clone(), healthy(300));
        assert_eq!(plan.opens_in(1, &policy, none, &reports), Some(700));
        let paused = Controls { paused: true, promoted_through: None };
        assert_eq!(plan.opens_in(1, &policy, paused, &reports), None, "a pause waits for a resume");
        let promoted = Controls { paused: true, promoted_through: Some(1) };
        assert_eq!(plan.opens_in(1, &policy, promoted, &reports), Some(0));
        // Wave 2 waits for the slowest earlier wave, and in wave 1 for the quorum's slowest:
        // at 0.9 both members of wave 1, at 0.5 the faster one.
        reports.insert(wave_1[0].clone(), healthy(900));
        assert_eq!(plan.opens_in(2, &policy, none, &reports), None, "wave 1 is short of its quorum");
        reports.insert(wave_1[1].clone(), healthy(200));
        assert_eq!(plan.opens_in(2, &policy, none, &reports), Some(800));
        let half = Policy { health_quorum_permille: 500, ..policy.clone() };
        assert_eq!(plan.opens_in(2, &half, none, &reports), Some(700), "the canary is slower than wave 1's quorum");
        reports.insert(canary, healthy(1_000));
        assert_eq!(plan.opens_in(2, &half, none, &reports), Some(100));
        assert_eq!(plan.opens_in(2, &policy, none, &aged(&reports, 800)), Some(0));
        reports.insert(wave_1[1].clone(), Report { verdict: Verdict::Anomalous, elapsed_ms: 2_000 });
        assert_eq!(plan.opens_in(2, &policy, none, &reports), None, "an anomalous member never bakes");
    }

    #[test]
    fn waves_by_label_put_one_zone_in_each_wave_after_the_canary() {
        let policy = Policy { waves_by: Some("zone".into()), ..Policy::default() };
        let groups: Vec<String> = (0..9).map(|i| format!("z{}", i % 3)).collect();
        let generation = body(9, policy, groups.clone());
        let plan = Plan::of(&generation);
        assert_eq!(plan.waves.len(), 4);
        assert_eq!(plan.waves[0].len(), 1);
        for wave in &plan.waves[1..] {
            let zones: std::collections::BTreeSet<&String> =
                wave.iter().map(|n| &groups[generation.members.iter().position(|m| m == n).unwrap()]).collect();
            assert_eq!(zones.len(), 1, "{wave:?}");
        }
    }

    fn reports(verdicts: &[(&str, Verdict)]) -> BTreeMap<NodeName, Report> {
        verdicts.iter().map(|(n, v)| (n.parse().unwrap(), Report { verdict: *v, elapsed_ms: 0 })).collect()
    }

    #[test]
    fn the_anomaly_quorum_is_the_larger_of_the_minimum_and_the_share_of_appliers() {
        use Verdict::*;
        let policy = Policy::default();
        // The canary alone applied it and reports an anomaly: 1 of 1, quorum max(1, ceil(0.34)) = 1.
        let quorum = AnomalyQuorum::of(&policy, &reports(&[("a", Anomalous)]));
        assert_eq!((quorum.applied, quorum.needed, quorum.reached()), (1, 1, true));
        // Ten applied it: ceil(3.4) = 4 reports needed.
        let mut ten: Vec<(String, Verdict)> = (0..10).map(|i| (format!("n{i}"), Healthy)).collect();
        for entry in ten.iter_mut().take(3) {
            entry.1 = Anomalous;
        }
        fn as_refs(v: &[(String, Verdict)]) -> Vec<(&str, Verdict)> {
            v.iter().map(|(n, v)| (n.as_str(), *v)).collect()
        }
        let quorum = AnomalyQuorum::of(&policy, &reports(&as_refs(&ten)));
        assert_eq!((quorum.anomalous.len(), quorum.needed, quorum.reached()), (3, 4, false));
        ten[3].1 = Anomalous;
        assert!(AnomalyQuorum::of(&policy, &reports(&as_refs(&ten))).reached());
        // A minimum above the share wins; nobody anomalous never reaches it.
        let strict = Policy { anomaly_quorum_min: 2, ..Policy::default() };
        assert!(!AnomalyQuorum::of(&strict, &reports(&[("a", Anomalous), ("b", Healthy)])).reached());
        assert!(AnomalyQuorum::of(&strict, &reports(&[("a", Anomalous), ("b", Anomalous)])).reached());
        assert!(!AnomalyQuorum::of(&policy, &BTreeMap::new()).reached());
        assert!(!AnomalyQuorum::of(&policy, &reports(&[("a", Inconclusive)])).reached());
    }

    #[test]
    fn copies_of_a_generation_share_its_plan_and_a_changed_body_gets_its_own() {
        let generation = body(40, Policy::default(), vec![]);
        let plan = Plan::shared(&generation);
        assert!(Arc::ptr_eq(&plan, &Plan::shared(&generation.clone())), "a copy shares the plan");
        // The same member list under another id ranks otherwise: never the kept plan.
        let mut other = generation.clone();
        other.id.seq += 1;
        let theirs = Plan::shared(&other);
        assert!(!Arc::ptr_eq(&plan, &theirs));
        assert_eq!(*theirs, Plan::rank(&other));
        assert_ne!(theirs.waves, plan.waves, "another id, another ranking");
        assert_eq!(Plan::of(&generation), *plan);
    }

    proptest! {
        #[test]
        fn every_node_computes_the_same_waves_covering_every_member_once(
            members in 1..60usize, seq in 1..1000u64, cut_at in 1..99u8,
        ) {
            let policy = Policy { waves: vec![WaveSize::Count(1), WaveSize::Percent(cut_at), WaveSize::Percent(100)], ..Policy::default() };
            let mut generation = body(members, policy, vec![]);
            generation.id.seq = seq;
            let plan = Plan::of(&generation);
            let mut shuffled = generation.clone();
            shuffled.members = shuffled.members.iter().rev().cloned().collect();
            prop_assert_eq!(&Plan::of(&shuffled), &plan, "member order must not matter");
            let mut all: Vec<&NodeName> = plan.waves.iter().flatten().collect();
            all.sort();
            all.dedup();
            prop_assert_eq!(all.len(), members);
            prop_assert_eq!(plan.waves.iter().map(Vec::len).sum::<usize>(), members);
            prop_assert_eq!(plan.waves[0].len(), 1);
        }

        #[test]
        fn a_gate_opens_exactly_when_opens_in_says_if_reports_only_age(
            members in 2..30usize,
            quorum in 1..=1000u16,
            reported in proptest::collection::vec((0..4u8, 0..3_000u64), 30),
            wave_pick in 0..16usize,
            paused in any::<bool>(),
        ) {
            let policy = four_waves(quorum);
            let plan = Plan::of(&body(members, policy.clone(), vec![]));
            let wave = wave_pick % plan.waves.len();
            let controls = Controls { paused, promoted_through: None };
            // Some members report (healthy, inconclusive or anomalous, of any age); the rest are silent.
            let reports = drawn_reports(plan.waves.iter().flatten(), &reported);
            match plan.opens_in(wave, &policy, controls, &reports) {
                Some(wait) => {
                    prop_assert!(plan.is_open(wave, &policy, controls, &aged(&reports, wait)), "not open after {wait} ms");
                    if wait > 0 {
                        prop_assert!(!plan.is_open(wave, &policy, controls, &aged(&reports, wait - 1)), "open before {wait} ms");
                    }
                }
                None => prop_assert!(!plan.is_open(wave, &policy, controls, &aged(&reports, MAX_BAKE_MS)), "aging opened it"),
            }
        }

        #[test]
        fn a_silent_canary_opens_a_wave_only_through_a_member_that_went_through(
            members in 3..40usize, reporting in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let policy = Policy { waves: parse_waves("1,50%,100%").unwrap(), bake_ms: 10, ..Policy::default() };
            let plan = Plan::of(&body(members, policy.clone(), vec![]));
            // Only members of wave 1 and later report: the canary is silent, so the rule never
            // holds, and a wave is open only when one of its members (or a later wave's)
            // already applied the generation.
            let reports: BTreeMap<NodeName, Report> = plan.waves[1..].iter().flatten()
                .zip(&reporting).filter(|(_, r)| **r).map(|(n, _)| (n.clone(), healthy(1_000))).collect();
            for wave in 1..plan.waves.len() {
                let went_through = plan.waves[wave..].iter().flatten().any(|m| reports.contains_key(m));
                prop_assert_eq!(plan.is_open(wave, &policy, Controls::default(), &reports), went_through);
                let paused = Controls { paused: true, promoted_through: None };
                prop_assert!(!plan.is_open(wave, &policy, paused, &reports), "a pause holds every later wave");
            }
        }

        #[test]
        fn the_index_of_the_waves_answers_as_searching_them(
            members in 2..60usize,
            quorum in 1..=1000u16,
            reported in proptest::collection::vec((0..5u8, 0..3_000u64), 64),
        ) {
            let policy = four_waves(quorum);
            let plan = Plan::of(&body(members, policy.clone(), vec![]));
            prop_assert!(plan.index.is_some());
            let searched = Plan { waves: plan.waves.clone(), index: None };
            // Nodes that joined after the generation, then its members; some report, of any
            // verdict and age, so the gate reads the shorter of the reports and the waves.
            let late = (0..4).map(|i| format!("late{i}").parse::<NodeName>().unwrap());
            let names: Vec<NodeName> = late.chain(plan.waves.iter().flatten().cloned()).collect();
            let reports = drawn_reports(names.iter(), &reported);
            for node in &names {
                prop_assert_eq!(plan.wave_of(node), searched.wave_of(node));
            }
            let controls = Controls::default();
            for wave in 0..plan.waves.len() {
                prop_assert_eq!(plan.is_open(wave, &policy, controls, &reports), searched.is_open(wave, &policy, controls, &reports));
                prop_assert_eq!(plan.opens_in(wave, &policy, controls, &reports), searched.opens_in(wave, &policy, controls, &reports));
            }
        }
    }
}
