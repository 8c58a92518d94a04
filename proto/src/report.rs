//! What a node says about a generation it applied: its `Verdict` and its `Report`, the value of
//! a `rep.<generation>` gossip key. Plain data: the gate (`rollout::Plan`) and the anomaly quorum
//! (`rollout::AnomalyQuorum`) read reports, the judgement (`health::judge`) makes verdicts.
//!
//! - `Report { verdict, elapsed_ms }` prints and parses as `h:12000` (`i`, `a` for inconclusive and
//!   anomalous). `Verdict` orders `Healthy` < `Inconclusive` < `Anomalous`.
//! - `Report::baked_in(bake_ms)` says in how many ms a report says healthy for the bake time if it
//!   only ages; `Report::aged` is the report as an observer reads it later.
//! - `worst_per_member(reports)`: each member once, with its worst verdict (a restarted node's
//!   healthy report does not wash out its anomaly).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::NodeName;
use crate::policy::PolicyError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
