//! The rollout policy a change carries, and the controls an operator writes about other
//! generations' rollouts: plain data, with the checks that say what is wrong with it. The
//! model's `Change` holds both, so they sit below the model; the waves and the gate that read
//! them are `rollout.rs`, the judgement that reads the thresholds `health.rs`.
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
//! - `Thresholds { min_samples, max_error_rate_permille, max_latency_p99_ms,
//!   max_error_ratio_percent, max_latency_ratio_percent }`: the limits each node judges the
//!   generation by (`health::judge`). The default is 20 requests, 5% errors, no latency limit, 2x
//!   the reference's error rate and 1.5x its latency. `validate` refuses `min_samples` outside
//!   1..=1000000, an error rate outside (0, 1], a latency limit of 0, and ratios outside (1, 100].
//! - `PolicyOptions` is a policy in the notation the CLI flags, the HTTP query and the `[rollout]`
//!   config section share (`waves`, `bake`, `health_quorum`, `watch_window`, `waves_by`,
//!   `anomaly_quorum`, `anomaly_quorum_min`, `min_samples`, `max_error_rate`, `max_latency_p99_ms`,
//!   `max_error_ratio`, `max_latency_ratio`; unknown fields refused). `apply(base)` replaces each
//!   option given, converts shares to thousandths and ratios to percent, and validates the result.
//!   `parse_waves("1,10%,50%,100%")` and `parse_duration_ms` (`500ms`, `30s`, `2m`, `1h`; a bare
//!   number is seconds) parse the notation.
//! - `Control::{Pause, Resume, Promote { through_wave }}` each name a `target`; `Controls { paused,
//!   promoted_through }` folds them (`Controls::apply`).
//!
//! Tests: bad policies are refused with their reason; `PolicyOptions` replace what they set and
//! refuse nonsense.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_MEMBERS;
use crate::name::GenId;

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
    pub(crate) fn cumulative(self, members: usize) -> usize {
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

/// The limits a generation is judged by: part of its rollout policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Requests a node must see after the apply before it judges at all.
    pub min_samples: u32,
    /// Absolute: the highest acceptable error rate, in thousandths.
    pub max_error_rate_permille: u16,
    /// Absolute: the highest acceptable median p99 latency, in milliseconds.
    pub max_latency_p99_ms: Option<u32>,
    /// Relative: the error rate may grow to this share of the reference's, in percent.
    pub max_error_ratio_percent: u16,
    /// Relative: the latency may grow to this share of the reference's, in percent.
    pub max_latency_ratio_percent: u16,
}

impl Default for Thresholds {
    /// At least 20 requests; at most 5% errors; errors at most 2x and latency at most 1.5x the
    /// baseline's and the peers'.
    fn default() -> Self {
        Thresholds {
            min_samples: 20,
            max_error_rate_permille: 50,
            max_latency_p99_ms: None,
            max_error_ratio_percent: 200,
            max_latency_ratio_percent: 150,
        }
    }
}

impl Thresholds {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let error = |message: String| Err(PolicyError(message));
        if self.min_samples == 0 || self.min_samples > 1_000_000 {
            return error(format!("min samples must be from 1 to 1000000, got {}", self.min_samples));
        }
        if self.max_error_rate_permille == 0 || self.max_error_rate_permille > 1000 {
            let found = f64::from(self.max_error_rate_permille) / 1000.0;
            return error(format!("max error rate must be in (0, 1], got {found}"));
        }
        if self.max_latency_p99_ms == Some(0) {
            return error("max latency must be at least 1 ms, got 0".into());
        }
        for (what, percent) in [("error", self.max_error_ratio_percent), ("latency", self.max_latency_ratio_percent)] {
            if !(101..=10_000).contains(&percent) {
                let found = f64::from(percent) / 100.0;
                return error(format!("max {what} ratio must be above 1 and at most 100, got {found}"));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
