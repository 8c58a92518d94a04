//! Rollout: the policy a change carries, its deterministic waves, and the gate that releases
//! it to a node, as pure functions of gossiped facts.
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
//! - `Policy { waves, bake_ms, health_quorum_permille, watch_window_ms, waves_by, emergency,
//!   anomaly_quorum_min, anomaly_quorum_permille, thresholds }`. `Policy::default()` is
//!   `1,10%,50%,100%`, 30 s bake, quorum 900 (0.9), 10 min watch window, anomaly quorum at least 1
//!   node and 340 (0.34) of those that applied it, and `Thresholds::default()`.
//!   `Policy::emergency()` is the default with one wave of `100%`, no bake, `emergency: true`.
//! - `Policy::validate` refuses, in this order: 0 or more than `MAX_WAVES` waves; waves that do not
//!   grow (counts before percents, each strictly larger); a percentage outside 1..=100 or a count
//!   of 0; a last wave other than `100%`; a bake of 0 with more than one wave unless `emergency`; a
//!   bake over `MAX_BAKE_MS`; a quorum outside 1..=1000; a watch window over `MAX_WATCH_WINDOW_MS`;
//!   an anomaly quorum minimum outside 1..=`MAX_MEMBERS`; an anomaly quorum outside 1..=1000;
//!   thresholds that fail `Thresholds::validate`; an emergency policy with any waves but `[100%]`,
//!   or with `waves_by`; a watch window shorter than the bake (with more than one wave).
//! - `PolicyOptions` is a policy in the notation the CLI flags, the HTTP query and the `[rollout]`
//!   config section share (`waves`, `bake`, `health_quorum`, `watch_window`, `waves_by`,
//!   `anomaly_quorum`, `anomaly_quorum_min`, `min_samples`, `max_error_rate`, `max_latency_p99_ms`,
//!   `max_error_ratio`, `max_latency_ratio`; unknown fields refused). `apply(base)` replaces each
//!   option given, converts shares to thousandths and ratios to percent, and validates the result.
//!   `parse_waves("1,10%,50%,100%")` and `parse_duration_ms` (`500ms`, `30s`, `2m`, `1h`; a bare
//!   number is seconds) parse the notation.
//! - `Plan::of(body)` ranks `body.members` by `sha256(origin, 0, seq big-endian, node)` and cuts
//!   them by the cumulative wave sizes (`WaveSize::Count` or `Percent`; a percentage rounds up);
//!   empty waves are dropped. With `waves_by`, the canary (the first wave size) is followed by one
//!   wave per label value, ordered by the hash of (generation id, value). Emergency or one-wave
//!   policies give one wave. `wave_of(node)` puts a node that is not among the members in the last
//!   wave.
//! - `Plan::is_open(wave, policy, controls, reports)`, `baked` and `open_waves` are the gate, with
//!   its latch: a wave is open once a member of it or of a later wave reports on the generation
//!   (D57). `Plan::opens_in` (from `baked_in` and `Report::baked_in`, the same rule) says in how
//!   many ms the gate opens if the reports only age: 0 when open, `None` when only a new report,
//!   control or member can open it (D69).
//! - `Control::{Pause, Resume, Promote { through_wave }}` each name a `target`; `Controls { paused,
//!   promoted_through }` folds them (`Controls::apply`).
//! - `Report { verdict, elapsed_ms }` prints and parses as `h:12000` (`i`, `a` for inconclusive and
//!   anomalous): the value of a `rep.<generation>` gossip key. `Verdict` orders `Healthy` <
//!   `Inconclusive` < `Anomalous`.
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
//! Tests: the default waves on 10 nodes are 1, 4, 5 (the empty 10% wave dropped); bad policies
//! are refused with their reason; a wave opens only on a baked healthy quorum of every earlier
//! wave (and pause and promote act); a gate opens in the time its slowest needed report takes to
//! bake and exactly then (`opens_in`, with a proptest against `is_open` on aged reports);
//! `waves_by` puts one label value in each wave after the canary; the anomaly quorum is the
//! larger of the minimum and the share of appliers; `PolicyOptions` replace what they set and
//! refuse nonsense.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::health::Thresholds;
use crate::limits::MAX_MEMBERS;
use crate::model::GenerationBody;
use crate::name::{GenId, NodeName};

/// Most waves in one policy.
pub const MAX_WAVES: usize = 16;
/// The longest bake time: a day. A rollout slower than that is a paused one.
pub const MAX_BAKE_MS: u64 = 24 * 3600 * 1000;
/// The longest watch window: a week.
pub const MAX_WATCH_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

/// One cumulative wave size: a number of nodes or a percentage of the member set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaveSize {
    Count(u32),
    Percent(u8),
}

impl WaveSize {
    /// How many of `members` nodes the waves up to this one hold.
    fn cumulative(self, members: usize) -> usize {
        match self {
            WaveSize::Count(count) => (count as usize).min(members),
            WaveSize::Percent(percent) => (members * percent as usize).div_ceil(100),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(count) => write!(f, "{count}"),
            WaveSize::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout policy: {0}")]
pub struct PolicyError(pub String);

/// How a change rolls out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Cumulative wave sizes; the last is 100%.
    pub waves: Vec<WaveSize>,
    /// How long a wave's members must report healthy before the next wave opens.
    pub bake_ms: u64,
    /// The share of a wave, in thousandths, that must report healthy (1 to 1000).
    pub health_quorum_permille: u16,
    /// How long after apply a node keeps judging and reporting a generation.
    pub watch_window_ms: u64,
    /// Group the waves after the canary by this label: one label value per wave.
    pub waves_by: Option<String>,
    /// A kill switch: one wave, no bake.
    pub emergency: bool,
    /// Generation g is reverted when at least this many distinct nodes report it anomalous...
    pub anomaly_quorum_min: u32,
    /// ...and at least this share, in thousandths, of the nodes that applied it.
    pub anomaly_quorum_permille: u16,
    /// The limits each node judges the generation by.
    pub thresholds: Thresholds,
}

impl Default for Policy {
    /// The built-in default: 1 node, 10%, 50%, 100%, 30 s bake, 90% healthy, 10 min watch;
    /// reverted when at least 1 node and 34% of those that applied it report an anomaly.
    fn default() -> Self {
        Policy {
            waves: vec![WaveSize::Count(1), WaveSize::Percent(10), WaveSize::Percent(50), WaveSize::Percent(100)],
            bake_ms: 30_000,
            health_quorum_permille: 900,
            watch_window_ms: 600_000,
            waves_by: None,
            emergency: false,
            anomaly_quorum_min: 1,
            anomaly_quorum_permille: 340,
            thresholds: Thresholds::default(),
        }
    }
}

impl Policy {
    /// The emergency policy: every node at once, no bake.
    pub fn emergency() -> Self {
        Policy::default().as_emergency()
    }

    /// This policy as a kill switch: one wave of every node, no bake, no label waves; its
    /// watch window, anomaly quorum and thresholds stay.
    pub fn as_emergency(&self) -> Self {
        Policy { waves: vec![WaveSize::Percent(100)], bake_ms: 0, emergency: true, waves_by: None, ..self.clone() }
    }

    /// Checks the policy, saying what is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let error = |message: String| Err(PolicyError(message));
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return error(format!("expected 1 to {MAX_WAVES} waves, got {}", self.waves.len()));
        }
        for pair in self.waves.windows(2) {
            let in_order = match (pair[0], pair[1]) {
                (WaveSize::Count(a), WaveSize::Count(b)) => a < b,
                (WaveSize::Percent(a), WaveSize::Percent(b)) => a < b,
                (WaveSize::Count(_), WaveSize::Percent(_)) => true,
                (WaveSize::Percent(_), WaveSize::Count(_)) => false,
            };
            if !in_order {
                return error(format!("waves must grow, counts before percents, got {} after {}", pair[1], pair[0]));
            }
        }
        for wave in &self.waves {
            match wave {
                WaveSize::Percent(p) if *p == 0 || *p > 100 => {
                    return error(format!("a wave percentage must be from 1% to 100%, got {p}%"));
                }
                WaveSize::Count(0) => return error("a wave count must be at least 1, got 0".into()),
                _ => {}
            }
        }
        if self.waves.last() != Some(&WaveSize::Percent(100)) {
            return error(format!("the last wave must be 100%, got {}", self.waves.last().expect("not empty")));
        }
        if self.bake_ms == 0 && !self.emergency && self.waves.len() > 1 {
            return error("a bake time of 0 is for --emergency changes only, got 0 with waves".into());
        }
        if self.bake_ms > MAX_BAKE_MS {
            return error(format!("bake time must be at most 24h, got {} ms", self.bake_ms));
        }
        if self.health_quorum_permille == 0 || self.health_quorum_permille > 1000 {
            let found = f64::from(self.health_quorum_permille) / 1000.0;
            return error(format!("health quorum must be in (0, 1], got {found}"));
        }
        if self.watch_window_ms > MAX_WATCH_WINDOW_MS {
            return error(format!("watch window must be at most 7 days, got {} ms", self.watch_window_ms));
        }
        if self.anomaly_quorum_min == 0 || self.anomaly_quorum_min as usize > MAX_MEMBERS {
            return error(format!(
                "anomaly quorum min must be from 1 to {MAX_MEMBERS}, got {}",
                self.anomaly_quorum_min
            ));
        }
        if self.anomaly_quorum_permille == 0 || self.anomaly_quorum_permille > 1000 {
            let found = f64::from(self.anomaly_quorum_permille) / 1000.0;
            return error(format!("anomaly quorum must be in (0, 1], got {found}"));
        }
        self.thresholds.validate()?;
        if self.emergency && self.waves != [WaveSize::Percent(100)] {
            return error("an emergency change has one wave of 100%".into());
        }
        if self.emergency && self.waves_by.is_some() {
            return error("an emergency change has one wave: --waves-by does not apply".into());
        }
        if !self.emergency && self.waves.len() > 1 && self.watch_window_ms < self.bake_ms {
            return error(format!(
                "the watch window must be at least the bake time ({} ms), got {} ms",
                self.bake_ms, self.watch_window_ms
            ));
        }
        Ok(())
    }
}

/// Parses `1,10%,50%,100%`.
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>, PolicyError> {
    text.split(',')
        .map(str::trim)
        .map(|part| {
            let parsed = match part.strip_suffix('%') {
                Some(percent) => percent.parse::<u8>().map(WaveSize::Percent).ok(),
                None => part.parse::<u32>().map(WaveSize::Count).ok(),
            };
            parsed.ok_or_else(|| PolicyError(format!("a wave must be a count (5) or a percentage (10%), got {part:?}")))
        })
        .collect()
}

/// Parses a duration like `30s`, `500ms`, `2m` or `1h` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, PolicyError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(value) if scale > 0 => Ok(value.saturating_mul(scale)),
        _ => Err(PolicyError(format!("expected a duration like 30s, 500ms, 2m or 1h, got {text:?}"))),
    }
}

/// A control an operator writes about another generation's rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// No further wave opens until resumed.
    Pause { target: GenId },
    /// Undoes a pause.
    Resume { target: GenId },
    /// Opens every wave up to and including `through_wave`, whatever the health.
    Promote { target: GenId, through_wave: u32 },
}

impl Control {
    pub fn target(&self) -> &GenId {
        match self {
            Control::Pause { target } | Control::Resume { target } | Control::Promote { target, .. } => target,
        }
    }
}

/// What the controls in the log say about one generation's rollout. Controls fold in
/// `(hlc, origin, seq)` order: the last pause or resume wins; promotion only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controls {
    pub paused: bool,
    pub promoted_through: Option<u32>,
}

impl Controls {
    /// Folds one control (in log order).
    pub fn apply(&mut self, control: &Control) {
        match control {
            Control::Pause { .. } => self.paused = true,
            Control::Resume { .. } => self.paused = false,
            Control::Promote { through_wave, .. } => {
                self.promoted_through = Some(self.promoted_through.map_or(*through_wave, |p| p.max(*through_wave)));
            }
        }
    }
}

/// A node's verdict on a generation it applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Inconclusive,
    Anomalous,
}

impl Verdict {
    pub fn as_char(self) -> char {
        match self {
            Verdict::Healthy => 'h',
            Verdict::Inconclusive => 'i',
            Verdict::Anomalous => 'a',
        }
    }
}

/// What a node reports about one generation: its verdict, and how long ago (on its own
/// monotonic clock) it applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub elapsed_ms: u64,
}

impl Report {
    /// In how many ms this report says healthy for at least `bake_ms`, if it only ages: 0
    /// when it does now, `None` when it is not healthy (aging never makes it so).
    pub fn baked_in(&self, bake_ms: u64) -> Option<u64> {
        (self.verdict == Verdict::Healthy).then(|| bake_ms.saturating_sub(self.elapsed_ms))
    }

    /// The report as an observer reads it `seen_for_ms` after it first saw it: reports age on
    /// the observer's clock, from its first sight (short of the true age by that sighting's
    /// gossip delay, never beyond it).
    pub fn aged(self, seen_for_ms: u64) -> Report {
        Report { elapsed_ms: self.elapsed_ms.saturating_add(seen_for_ms), ..self }
    }
}

/// Every member's report on one generation, each name once with its worst verdict: a name
/// that ran as several incarnations (a restarted node) counts as one member, and an anomaly
/// one of them reported is not washed out by another's healthy report.
pub fn worst_per_member(reports: impl IntoIterator<Item = (NodeName, Report)>) -> BTreeMap<NodeName, Report> {
    let mut worst: BTreeMap<NodeName, Report> = BTreeMap::new();
    for (name, report) in reports {
        let slot = worst.entry(name).or_insert(report);
        if report.verdict > slot.verdict {
            *slot = report;
        }
    }
    worst
}

impl fmt::Display for Report {
    /// The gossip form: `h:12000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.verdict.as_char(), self.elapsed_ms)
    }
}

impl FromStr for Report {
    type Err = PolicyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError(format!("expected a report like h:12000, got {text:?}"));
        let (verdict, elapsed) = text.split_once(':').ok_or_else(bad)?;
        let verdict = match verdict {
            "h" => Verdict::Healthy,
            "i" => Verdict::Inconclusive,
            "a" => Verdict::Anomalous,
            _ => return Err(bad()),
        };
        Ok(Report { verdict, elapsed_ms: elapsed.parse().map_err(|_| bad())? })
    }
}

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

/// Policy options as the CLI, the HTTP query and the `[rollout]` config section name them;
/// each option set replaces the base policy's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOptions {
    /// Cumulative waves, like `1,10%,50%,100%`.
    pub waves: Option<String>,
    /// Bake time per wave, like `30s`.
    pub bake: Option<String>,
    /// Share of a wave that must report healthy, in (0, 1].
    pub health_quorum: Option<f64>,
    /// How long a node judges a generation after applying it, like `10m`.
    pub watch_window: Option<String>,
    /// After the canary, one wave per value of this label.
    pub waves_by: Option<String>,
    /// Share of the nodes that applied a generation whose anomaly reports revert it, in (0, 1].
    pub anomaly_quorum: Option<f64>,
    /// Fewest anomaly reports that revert a generation.
    pub anomaly_quorum_min: Option<u32>,
    /// Requests a node must see after the apply before it judges.
    pub min_samples: Option<u32>,
    /// Highest acceptable error rate, in (0, 1].
    pub max_error_rate: Option<f64>,
    /// Highest acceptable median p99 latency, in milliseconds.
    pub max_latency_p99_ms: Option<u32>,
    /// How many times the baseline's (and the peers') error rate is still acceptable.
    pub max_error_ratio: Option<f64>,
    /// How many times the baseline's (and the peers') latency is still acceptable.
    pub max_latency_ratio: Option<f64>,
}

impl PolicyOptions {
    /// `base` with every option set here replacing its value, checked.
    pub fn apply(&self, mut policy: Policy) -> Result<Policy, PolicyError> {
        if let Some(waves) = &self.waves {
            policy.waves = parse_waves(waves)?;
        }
        if let Some(bake) = &self.bake {
            policy.bake_ms = parse_duration_ms(bake)?;
        }
        if let Some(quorum) = self.health_quorum {
            policy.health_quorum_permille = share_permille("health quorum", quorum)?;
        }
        if let Some(window) = &self.watch_window {
            policy.watch_window_ms = parse_duration_ms(window)?;
        }
        if let Some(label) = &self.waves_by {
            policy.waves_by = Some(label.clone());
        }
        if let Some(quorum) = self.anomaly_quorum {
            policy.anomaly_quorum_permille = share_permille("anomaly quorum", quorum)?;
        }
        if let Some(min) = self.anomaly_quorum_min {
            policy.anomaly_quorum_min = min;
        }
        let thresholds = &mut policy.thresholds;
        if let Some(min) = self.min_samples {
            thresholds.min_samples = min;
        }
        if let Some(rate) = self.max_error_rate {
            thresholds.max_error_rate_permille = share_permille("max error rate", rate)?;
        }
        if let Some(latency) = self.max_latency_p99_ms {
            thresholds.max_latency_p99_ms = Some(latency);
        }
        if let Some(ratio) = self.max_error_ratio {
            thresholds.max_error_ratio_percent = ratio_percent("max error ratio", ratio)?;
        }
        if let Some(ratio) = self.max_latency_ratio {
            thresholds.max_latency_ratio_percent = ratio_percent("max latency ratio", ratio)?;
        }
        policy.validate()?;
        Ok(policy)
    }
}

/// A share in (0, 1] as thousandths.
fn share_permille(what: &str, share: f64) -> Result<u16, PolicyError> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(PolicyError(format!("{what} must be in (0, 1], got {share}")));
    }
    Ok((share * 1000.0).round().max(1.0) as u16)
}

/// A ratio above 1 and at most 100 as percent.
fn ratio_percent(what: &str, ratio: f64) -> Result<u16, PolicyError> {
    if !(ratio > 1.0 && ratio <= 100.0) {
        return Err(PolicyError(format!("{what} must be above 1 and at most 100, got {ratio}")));
    }
    Ok((ratio * 100.0).round() as u16)
}

/// The waves of one generation: disjoint, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub waves: Vec<Vec<NodeName>>,
}

impl Plan {
    /// The waves of `body`, from its recorded members (and their groups, with `waves_by`).
    pub fn of(body: &GenerationBody) -> Plan {
        let policy = &body.change.policy;
        let mut ranked: Vec<(Vec<u8>, &NodeName)> =
            body.members.iter().map(|member| (rank(&body.id, member.as_str()), member)).collect();
        ranked.sort();
        let ranked: Vec<NodeName> = ranked.into_iter().map(|(_, member)| member.clone()).collect();
        if policy.emergency || policy.waves.len() == 1 {
            return Plan { waves: vec![ranked] };
        }
        let waves = match &policy.waves_by {
            Some(_) => grouped(body, &ranked),
            None => cut(&ranked, &policy.waves),
        };
        Plan { waves: waves.into_iter().filter(|wave| !wave.is_empty()).collect() }
    }

    /// The wave `node` is in: a node that joined after the generation is in the last.
    pub fn wave_of(&self, node: &NodeName) -> usize {
        self.waves.iter().position(|wave| wave.contains(node)).unwrap_or(self.waves.len().saturating_sub(1))
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
        let later = &self.waves[wave.min(self.waves.len())..];
        if later.iter().flatten().any(|member| reports.contains_key(member)) {
            return true;
        }
        self.waves[..wave.min(self.waves.len())].iter().all(|members| self.baked(members, policy, reports))
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
        let earlier = &self.waves[..wave.min(self.waves.len())];
        earlier.iter().try_fold(0, |slowest, members| Some(slowest.max(self.baked_in(members, policy, reports)?)))
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
    let group_of = |node: &NodeName| {
        let index = body.members.iter().position(|m| m == node).expect("ranked from the members");
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
    fn bad_policies_are_refused_with_the_reason() {
        let with = |waves: &str| Policy { waves: parse_waves(waves).unwrap(), ..Policy::default() }.validate();
        assert!(with("50%,10%,100%").unwrap_err().to_string().contains("waves must grow"));
        assert!(with("1,10%,50%").unwrap_err().to_string().contains("last wave must be 100%"));
        assert!(parse_waves("1,150%").is_err() || with("1,150%").is_err());
        assert!(with("1,0%,100%").is_err());
        assert!(Policy { bake_ms: 0, ..Policy::default() }.validate().unwrap_err().to_string().contains("--emergency"));
        assert!(Policy { health_quorum_permille: 0, ..Policy::default() }.validate().is_err());
        assert!(Policy { health_quorum_permille: 1001, ..Policy::default() }.validate().is_err());
        let short_window = Policy { watch_window_ms: 1_000, ..Policy::default() };
        assert!(short_window.validate().unwrap_err().to_string().contains("watch window must be at least"));
        let grouped = Policy { waves_by: Some("zone".into()), ..Policy::emergency() };
        assert!(grouped.validate().is_err());
        assert_eq!(Policy::emergency().validate(), Ok(()));
        assert_eq!(Policy::default().validate(), Ok(()));
        assert_eq!(parse_duration_ms("2s"), Ok(2_000));
        assert_eq!(parse_duration_ms("150ms"), Ok(150));
        assert!(parse_duration_ms("soon").is_err());
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

    #[test]
    fn a_member_counts_once_with_its_worst_verdict_and_reports_age_from_first_sight() {
        let (n1, n2): (NodeName, NodeName) = ("n1".parse().unwrap(), "n2".parse().unwrap());
        let report = |verdict, elapsed_ms| Report { verdict, elapsed_ms };
        let worst = worst_per_member([
            (n1.clone(), report(Verdict::Anomalous, 5)),
            (n1.clone(), report(Verdict::Healthy, 900)),
            (n2.clone(), report(Verdict::Healthy, 10)),
            (n2.clone(), report(Verdict::Inconclusive, 1)),
        ]);
        assert_eq!(
            worst[&n1],
            report(Verdict::Anomalous, 5),
            "a restarted node's healthy report does not wash out its anomaly"
        );
        assert_eq!(worst[&n2], report(Verdict::Inconclusive, 1));
        assert_eq!(worst.len(), 2);
        assert_eq!(report(Verdict::Healthy, 400).aged(600), report(Verdict::Healthy, 1000));
        assert_eq!(report(Verdict::Healthy, u64::MAX).aged(1).elapsed_ms, u64::MAX);
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
    fn policy_options_replace_what_they_set_and_refuse_nonsense() {
        let options = PolicyOptions {
            anomaly_quorum: Some(0.5),
            anomaly_quorum_min: Some(2),
            max_error_rate: Some(0.01),
            max_error_ratio: Some(3.0),
            ..PolicyOptions::default()
        };
        let policy = options.apply(Policy::default()).unwrap();
        assert_eq!((policy.anomaly_quorum_permille, policy.anomaly_quorum_min), (500, 2));
        assert_eq!(policy.thresholds.max_error_rate_permille, 10);
        assert_eq!(policy.thresholds.max_error_ratio_percent, 300);
        assert_eq!(policy.waves, Policy::default().waves);
        let refused = |options: PolicyOptions| options.apply(Policy::default()).unwrap_err().to_string();
        assert!(refused(PolicyOptions { anomaly_quorum: Some(0.0), ..Default::default() }).contains("(0, 1]"));
        assert!(refused(PolicyOptions { anomaly_quorum_min: Some(0), ..Default::default() }).contains("from 1"));
        assert!(refused(PolicyOptions { max_error_ratio: Some(1.0), ..Default::default() }).contains("above 1"));
        assert!(refused(PolicyOptions { min_samples: Some(0), ..Default::default() }).contains("min samples"));
        assert!(refused(PolicyOptions { bake: Some("soon".into()), ..Default::default() }).contains("duration"));
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
            shuffled.members.reverse();
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
            let policy = Policy {
                waves: parse_waves("1,30%,70%,100%").unwrap(),
                bake_ms: 1_000,
                health_quorum_permille: quorum,
                ..Policy::default()
            };
            let plan = Plan::of(&body(members, policy.clone(), vec![]));
            let wave = wave_pick % plan.waves.len();
            let controls = Controls { paused, promoted_through: None };
            // Some members report (healthy, inconclusive or anomalous, of any age); the rest are silent.
            let reports: BTreeMap<NodeName, Report> = plan.waves.iter().flatten().zip(&reported)
                .filter_map(|(node, (kind, elapsed_ms))| {
                    let verdict = [Verdict::Healthy, Verdict::Inconclusive, Verdict::Anomalous].get(*kind as usize)?;
                    Some((node.clone(), Report { verdict: *verdict, elapsed_ms: *elapsed_ms }))
                })
                .collect();
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
    }
}
