//! Health judgement: a node's KPIs since it applied a generation, judged against absolute
//! limits, against its own baseline from before the apply, and against concurrently running
//! peers that have not applied it (canary against baseline, as Kayenta and LaunchDarkly judge).
//!
//! Noise must not revert a healthy change, so every comparison asks two questions: is the
//! difference large enough to matter (the policy's limits and ratios), and is it unlikely to
//! be chance? Error rates use the Chernoff bound of the binomial tail: the observed rate
//! `p̂` over `n` requests is significantly above a limit `p` when `n · KL(p̂ ‖ p) ≥ ln(1/α)`,
//! with `α` = [`SIGNIFICANCE`]. The bound holds at any sample size (no normal approximation)
//! and is conservative, so repeated looks during a watch window stay rare false alarms.
//! Latency compares medians of per-interval p99 values, which one slow interval cannot move.
//!
//! The node gathers the samples (`node::health`); this module only judges them, and says which
//! of the generations a node watches the bad samples are blamed on (`blame`).
//!
//! - `Window { requests, errors, latency_ms, latency_intervals }` is KPIs over a span:
//!   `Window::of(samples)` sums requests and errors (errors capped at requests) and takes the
//!   median of the per-interval p99 latencies; `Window::pool` joins several nodes' windows (counts
//!   add up, latency is the median of their medians). It prints and parses as
//!   `requests:errors:latency_ms:intervals` (`120:3:41.5:60`, latency empty when unknown): the
//!   value of the `kpi` gossip key and of the KPIs in alerts.
//! - The limits are the generation's policy's `Thresholds` (`policy.rs`), and the verdicts
//!   `report::Verdict`: both are data below this module.
//! - `judge(thresholds, since, references)`: fewer than `min_samples` requests since the apply is
//!   `Inconclusive`. Then `Anomalous` when the error rate is significantly above `max_error_rate`;
//!   when the median p99 is above `max_latency_p99_ms` with at least `MIN_LATENCY_INTERVALS`
//!   intervals; or, against each reference in `References` with at least `min_samples` requests
//!   (`baseline`, the node before the apply, then `peers`, live peers without the generation,
//!   pooled), when the error rate is significantly above `max(rate * ratio, rate +
//!   MIN_ERROR_RATE_DELTA)` (the reference's rate smoothed as `(errors + 1) / (requests + 2)`, the
//!   limit capped at 0.999), or the median latency above `max(latency * ratio, latency +
//!   MIN_LATENCY_DELTA_MS)` with enough intervals on both sides. Otherwise `Healthy`. The
//!   `Judgement`'s `reason` says which rule decided.
//! - Tests: besides each rule, no false alarm in 100 seeded runs of noisy but normal metrics
//!   (`noisy_but_normal_metrics_raise_no_false_alarm_in_a_hundred_seeded_runs`), and 30% errors or
//!   3x latency caught within seconds (`real_regressions_are_caught_within_seconds`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::GenId;
use crate::policy::{PolicyError, Thresholds};
use crate::report::Verdict;

/// The false-alarm probability each error-rate comparison allows (one in ten thousand).
pub const SIGNIFICANCE: f64 = 1e-4;

/// Per-interval latency values a side needs before its latency is compared.
pub const MIN_LATENCY_INTERVALS: u32 = 5;

/// A relative error-rate limit is never closer than this to the reference rate: from 0.1% to
/// 0.2% errors doubles the rate but is not an incident.
pub const MIN_ERROR_RATE_DELTA: f64 = 0.005;

/// A relative latency limit is never closer than this to the reference, in milliseconds.
pub const MIN_LATENCY_DELTA_MS: f64 = 5.0;

/// The most requests one sample may count: a billion requests a second over the longest
/// sample interval (60 s) is 6e10, so anything above 1e12 is a broken or hostile source.
/// Windows sum at most [`MAX_WINDOW_REQUESTS`] / this many samples without saturating.
pub const MAX_SAMPLE_REQUESTS: u64 = 1_000_000_000_000;

/// The most requests a window (a node's or a pool's) may count, as a peer's `kpi` says:
/// 1e6 samples at the per-sample limit. Beyond it a peer's KPIs are malformed.
pub const MAX_WINDOW_REQUESTS: u64 = MAX_SAMPLE_REQUESTS * 1_000_000;

/// KPIs over a span of time: request and error counts, and the median of the per-interval
/// p99 latencies (with how many intervals reported one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub latency_ms: Option<f64>,
    pub latency_intervals: u32,
}

impl Window {
    /// The window of per-interval samples `(requests, errors, p99 latency)`.
    pub fn of(samples: impl IntoIterator<Item = (u64, u64, Option<f64>)>) -> Window {
        let mut window = Window::default();
        let mut latencies = Vec::new();
        for (requests, errors, latency) in samples {
            // Saturating: counts were checked where they came in, but a sum must never wrap
            // into a small count whose errors then look like a high rate.
            window.requests = window.requests.saturating_add(requests);
            window.errors = window.errors.saturating_add(errors.min(requests));
            latencies.extend(latency.filter(|l| l.is_finite() && *l >= 0.0));
        }
        window.latency_intervals = latencies.len() as u32;
        window.latency_ms = median(&mut latencies);
        window
    }

    /// Several nodes' windows as one reference: counts add up, latency is the median of the
    /// nodes' medians.
    pub fn pool<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Window {
        let mut pooled = Window::default();
        let mut latencies = Vec::new();
        for window in windows {
            pooled.requests = pooled.requests.saturating_add(window.requests);
            pooled.errors = pooled.errors.saturating_add(window.errors.min(window.requests));
            pooled.latency_intervals = pooled.latency_intervals.saturating_add(window.latency_intervals);
            latencies.extend(window.latency_ms.filter(|_| window.latency_intervals > 0));
        }
        pooled.latency_ms = median(&mut latencies);
        pooled
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors.min(self.requests) as f64 / self.requests as f64 }
    }
}

impl fmt::Display for Window {
    /// The gossip form: `requests:errors:latency_ms:intervals` (latency empty when unknown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let latency = self.latency_ms.map(|l| format!("{l:.1}")).unwrap_or_default();
        write!(f, "{}:{}:{}:{}", self.requests, self.errors, latency, self.latency_intervals)
    }
}

impl std::str::FromStr for Window {
    type Err = PolicyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError(format!("expected KPIs like 120:3:41.5:60, got {text:?}"));
        let parts: Vec<&str> = text.split(':').collect();
        let [requests, errors, latency, intervals] = parts[..] else { return Err(bad()) };
        let latency_ms = match latency {
            "" => None,
            text => Some(text.parse::<f64>().ok().filter(|l| l.is_finite() && *l >= 0.0).ok_or_else(bad)?),
        };
        let window = Window {
            requests: requests.parse().map_err(|_| bad())?,
            errors: errors.parse().map_err(|_| bad())?,
            latency_ms,
            latency_intervals: intervals.parse().map_err(|_| bad())?,
        };
        if window.errors > window.requests || window.requests > MAX_WINDOW_REQUESTS {
            return Err(bad());
        }
        Ok(window)
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 })
}

/// What a node compares its KPIs since the apply with.
#[derive(Clone, Copy, Debug, Default)]
pub struct References {
    /// The node's own KPIs before the apply.
    pub baseline: Option<Window>,
    /// Live peers that have not applied the generation, pooled.
    pub peers: Option<Window>,
}

/// A verdict and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: String,
}

/// Judges `since` (the KPIs since the apply) by `thresholds` and the references.
pub fn judge(thresholds: &Thresholds, since: &Window, references: &References) -> Judgement {
    let min = u64::from(thresholds.min_samples);
    if since.requests < min {
        let reason = format!("{} of {min} requests needed before judging", since.requests);
        return Judgement { verdict: Verdict::Inconclusive, reason };
    }
    let anomalous = |reason: String| Judgement { verdict: Verdict::Anomalous, reason };
    let rate = since.error_rate();
    let limit = f64::from(thresholds.max_error_rate_permille) / 1000.0;
    if significantly_above(since, limit) {
        return anomalous(format!(
            "error rate {} over {} requests, above the {} limit",
            percent(rate),
            since.requests,
            percent(limit)
        ));
    }
    let intervals = since.latency_intervals >= MIN_LATENCY_INTERVALS;
    if let (Some(max), Some(latency), true) = (thresholds.max_latency_p99_ms, since.latency_ms, intervals)
        && latency > f64::from(max)
    {
        return anomalous(format!("p99 latency {latency:.1} ms, above the {max} ms limit"));
    }
    let named = [("the baseline before the apply", references.baseline), ("peers without it", references.peers)];
    for (name, reference) in named {
        let Some(reference) = reference.filter(|r| r.requests >= min) else { continue };
        // The reference's rate, smoothed so that a reference without errors is not zero.
        let reference_rate = (reference.errors as f64 + 1.0) / (reference.requests as f64 + 2.0);
        let ratio = f64::from(thresholds.max_error_ratio_percent) / 100.0;
        let limit = (reference_rate * ratio).max(reference_rate + MIN_ERROR_RATE_DELTA).min(0.999);
        if significantly_above(since, limit) {
            return anomalous(format!(
                "error rate {} over {} requests, against {} on {name} (limit {})",
                percent(rate),
                since.requests,
                percent(reference.error_rate()),
                percent(limit)
            ));
        }
        let both = intervals && reference.latency_intervals >= MIN_LATENCY_INTERVALS;
        if let (Some(latency), Some(before), true) = (since.latency_ms, reference.latency_ms, both) {
            let ratio = f64::from(thresholds.max_latency_ratio_percent) / 100.0;
            let limit = (before * ratio).max(before + MIN_LATENCY_DELTA_MS);
            if latency > limit {
                return anomalous(format!(
                    "p99 latency {latency:.1} ms, against {before:.1} ms on {name} (limit {limit:.1} ms)"
                ));
            }
        }
    }
    let reason = format!("error rate {} over {} requests, within limits", percent(rate), since.requests);
    Judgement { verdict: Verdict::Healthy, reason }
}

/// Whether the error rate of `window` is above `limit` by more than chance allows: the
/// Chernoff bound `exp(-n · KL(p̂ ‖ limit))` of seeing this many errors if the true rate were
/// `limit` is below [`SIGNIFICANCE`].
fn significantly_above(window: &Window, limit: f64) -> bool {
    let rate = window.error_rate();
    if window.requests == 0 || rate <= limit {
        return false;
    }
    window.requests as f64 * kl_bernoulli(rate, limit) >= (1.0 / SIGNIFICANCE).ln()
}

/// The Kullback-Leibler divergence between Bernoulli(p) and Bernoulli(q), `0 < q < 1`.
/// The blame rule. The same samples count toward every generation a node watches, so bad
/// samples make each of them look bad; blame goes to one suspect. `watched` are the generations a
/// node judges, each with an ordering key of when it applied it (later is newer) and its
/// verdict now, `None` for one whose anomalous verdict is final and that is not reverted yet. A
/// suspect is one not judged healthy; the blamed is the newest suspect that no other node vouches
/// for (judges healthy), or the newest suspect when every one is vouched for. The other suspects
/// stay inconclusive, which holds their waves; once the blamed one is reverted they forget the
/// samples taken while it was applied (`node::health`'s `freeze`).
///
/// Newest first, because a change usually hurts at once; but a change that other nodes run
/// healthy is not what hurts here when an older change no one vouches for is also applied here
/// (found by the chaos suite: a bad canary applied just before an innocent change that was
/// healthy everywhere else deferred to it forever and was never reverted).
pub fn blame<K: Ord>(watched: &[(K, GenId, Option<Verdict>)], vouched: impl Fn(&GenId) -> bool) -> Option<GenId> {
    let mut order: Vec<&(K, GenId, Option<Verdict>)> = watched.iter().collect();
    order.sort_by(|a, b| (&b.0, &b.1).cmp(&(&a.0, &a.1)));
    let suspect = |(_, _, verdict): &&&(K, GenId, Option<Verdict>)| *verdict != Some(Verdict::Healthy);
    let blamed = order.iter().filter(suspect).find(|(_, id, _)| !vouched(id)).or_else(|| order.iter().find(suspect));
    blamed.map(|(_, id, _)| id.clone())
}

fn kl_bernoulli(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn blame_goes_to_the_newest_suspect_no_other_node_vouches_for() {
        use crate::report::Verdict::{Anomalous, Healthy, Inconclusive};
        let id = |seq: u64| crate::GenId { origin: "n1".parse().unwrap(), seq };
        let none = |_: &crate::GenId| false;
        let watched = [(1, id(1), Some(Anomalous)), (2, id(2), Some(Anomalous)), (3, id(3), Some(Healthy))];
        assert_eq!(super::blame(&watched, none), Some(id(2)), "the newest not judged healthy");
        assert_eq!(super::blame(&watched, |g| *g == id(2)), Some(id(1)), "the newest no one vouches for");
        assert_eq!(super::blame(&watched, |_| true), Some(id(2)), "all vouched for: the newest suspect");
        let latched = [(5, id(5), Some(Inconclusive)), (9, id(9), None)];
        assert_eq!(super::blame(&latched, none), Some(id(9)), "an anomaly not reverted yet stays a suspect");
        assert_eq!(super::blame(&[(1, id(1), Some(Healthy))], none), None, "no suspect, no blame");
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever counts come in, sums never wrap: the errors never exceed the requests and
        /// the rate stays a rate.
        #[test]
        fn counts_never_wrap_into_a_false_rate(
            samples in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
            extremes in proptest::collection::vec(prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(0u64)], 0..4),
        ) {
            let mut all: Vec<(u64, u64, Option<f64>)> = samples.iter().map(|&(r, e)| (r, e, None)).collect();
            all.extend(extremes.iter().map(|&r| (r, r, None)));
            let window = Window::of(all.iter().copied());
            prop_assert!(window.errors <= window.requests);
            prop_assert!((0.0..=1.0).contains(&window.error_rate()));
            let pooled = Window::pool([&window, &window, &Window::of([(30, 30, None)])]);
            prop_assert!(pooled.errors <= pooled.requests);
            prop_assert!((0.0..=1.0).contains(&pooled.error_rate()));
            let total: u128 = all.iter().map(|&(r, _, _)| u128::from(r)).sum();
            prop_assert_eq!(u128::from(window.requests), total.min(u128::from(u64::MAX)));
        }
    }

    #[test]
    fn a_peers_absurd_counts_are_malformed() {
        assert!("18446744073709551615:0::0".parse::<Window>().is_err());
        assert!(format!("{}:0::0", MAX_WINDOW_REQUESTS).parse::<Window>().is_ok());
    }

    use super::*;
    use crate::sim::SplitMix64;

    fn window(requests: u64, errors: u64, latency: Option<f64>, intervals: u32) -> Window {
        Window { requests, errors, latency_ms: latency, latency_intervals: intervals }
    }

    #[test]
    fn too_few_samples_is_inconclusive() {
        let judgement = judge(&Thresholds::default(), &window(19, 19, None, 0), &References::default());
        assert_eq!(judgement.verdict, Verdict::Inconclusive, "{}", judgement.reason);
    }

    #[test]
    fn a_failing_node_is_anomalous_on_the_absolute_limit() {
        let judgement = judge(&Thresholds::default(), &window(20, 10, None, 0), &References::default());
        assert_eq!(judgement.verdict, Verdict::Anomalous, "{}", judgement.reason);
        assert!(judgement.reason.contains("above the 5.00% limit"), "{}", judgement.reason);
        // One error in twenty is 5%, not above the limit by more than chance.
        let judgement = judge(&Thresholds::default(), &window(20, 2, None, 0), &References::default());
        assert_eq!(judgement.verdict, Verdict::Healthy, "{}", judgement.reason);
    }

    #[test]
    fn relative_limits_catch_what_the_absolute_ones_miss() {
        let references = References { baseline: Some(window(10_000, 10, Some(40.0), 100)), peers: None };
        // 3% errors is under the 5% limit, but thirty times the baseline's 0.1%.
        let judgement = judge(&Thresholds::default(), &window(2_000, 60, Some(41.0), 20), &references);
        assert_eq!(judgement.verdict, Verdict::Anomalous, "{}", judgement.reason);
        assert!(judgement.reason.contains("baseline"), "{}", judgement.reason);
        // Latency doubled against peers.
        let references = References { baseline: None, peers: Some(window(10_000, 10, Some(40.0), 100)) };
        let judgement = judge(&Thresholds::default(), &window(2_000, 2, Some(85.0), 20), &references);
        assert_eq!(judgement.verdict, Verdict::Anomalous, "{}", judgement.reason);
        assert!(judgement.reason.contains("peers without it"), "{}", judgement.reason);
        // Within 1.5x: healthy.
        let judgement = judge(&Thresholds::default(), &window(2_000, 2, Some(55.0), 20), &references);
        assert_eq!(judgement.verdict, Verdict::Healthy, "{}", judgement.reason);
    }

    #[test]
    fn an_absolute_latency_limit_needs_enough_intervals() {
        let thresholds = Thresholds { max_latency_p99_ms: Some(100), ..Thresholds::default() };
        let judgement = judge(&thresholds, &window(100, 0, Some(300.0), 2), &References::default());
        assert_eq!(judgement.verdict, Verdict::Healthy, "{}", judgement.reason);
        let judgement = judge(&thresholds, &window(100, 0, Some(300.0), 5), &References::default());
        assert_eq!(judgement.verdict, Verdict::Anomalous, "{}", judgement.reason);
    }

    #[test]
    fn windows_round_trip_through_gossip_text_and_refuse_nonsense() {
        let window = Window::of([(10, 1, Some(30.0)), (12, 0, Some(50.0)), (8, 0, None)]);
        assert_eq!(window, Window { requests: 30, errors: 1, latency_ms: Some(40.0), latency_intervals: 2 });
        assert_eq!(window.to_string().parse::<Window>().unwrap(), window);
        assert_eq!("5:0::0".parse::<Window>().unwrap().latency_ms, None);
        for bad in ["", "1:2:3", "1:2:x:1", "1:5::0", "a:0::0", "1:0:-3:1", "1:0:NaN:1"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    /// A healthy application with noisy but normal metrics: 1% errors, latency that wanders
    /// by up to 30% from interval to interval, request counts that vary twofold.
    fn noisy(rng: &mut SplitMix64, error_rate: f64, latency_ms: f64) -> (u64, u64, Option<f64>) {
        let requests = 25 + rng.below(50) as u64;
        let errors = (0..requests).filter(|_| rng.next_unit() < error_rate).count() as u64;
        let latency = latency_ms * (0.7 + 0.6 * rng.next_unit());
        (requests, errors, Some(latency))
    }

    /// Judges a node through a watch window of 600 one-second intervals, looking after every
    /// interval (as the node does); returns the first interval judged anomalous.
    fn first_anomaly(seed: u64, error_rate_after: f64, latency_after: f64) -> Option<usize> {
        let mut rng = SplitMix64::new(seed);
        let baseline = Window::of((0..300).map(|_| noisy(&mut rng, 0.01, 40.0)).collect::<Vec<_>>());
        let peers: Vec<Window> =
            (0..4).map(|_| Window::of((0..60).map(|_| noisy(&mut rng, 0.01, 40.0)).collect::<Vec<_>>())).collect();
        let references = References { baseline: Some(baseline), peers: Some(Window::pool(&peers)) };
        let mut since = Vec::new();
        for interval in 0..600 {
            since.push(noisy(&mut rng, error_rate_after, latency_after));
            let judgement = judge(&Thresholds::default(), &Window::of(since.iter().copied()), &references);
            if judgement.verdict == Verdict::Anomalous {
                return Some(interval);
            }
        }
        None
    }

    #[test]
    fn noisy_but_normal_metrics_raise_no_false_alarm_in_a_hundred_seeded_runs() {
        for seed in 0..100 {
            assert_eq!(first_anomaly(seed, 0.01, 40.0), None, "seed {seed}: a healthy change judged anomalous");
        }
    }

    #[test]
    fn real_regressions_are_caught_within_seconds() {
        for seed in 0..20 {
            let errors = first_anomaly(seed, 0.30, 40.0).expect("30% errors must be anomalous");
            assert!(errors <= 2, "seed {seed}: 30% errors caught only at interval {errors}");
            let slow = first_anomaly(seed, 0.01, 120.0).expect("3x latency must be anomalous");
            assert!(slow <= MIN_LATENCY_INTERVALS as usize, "seed {seed}: 3x latency caught at interval {slow}");
        }
    }
}
