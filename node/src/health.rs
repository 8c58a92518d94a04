//! Health: samples from the node's sources turned into a verdict per applied generation, and
//! published as reports in gossip (`rep.<generation>` = `h:12000`, see `proto::rollout`).
//!
//! Sources, any combination (node config `[health]`): pushes from applications
//! (`POST /v1/health`), HTTP probes, commands, and Prometheus text endpoints. Every sample
//! counts toward each generation applied within its watch window. Without any source, a node
//! judges only the apply itself: an applied generation is healthy (documented decision).
//! A source that cannot be reached adds no sample, and its error shows in `status`: a
//! generation without enough samples stays inconclusive, never healthy.
//!
//! After its watch window a generation takes no more samples, but its last verdict stays in
//! gossip until the generation is compacted (or evicted past [`MAX_TRACKED`]): a rollout that
//! outlasts the window, or a node that joins late, still finds the earlier waves' reports.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grapevine_proto::GenId;
use grapevine_proto::rollout::{Report, Verdict};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::gossip::Gossip;

/// Generations whose reports are kept at once; past it, the one applied longest ago goes.
const MAX_TRACKED: usize = 256;

/// `[health]` in the node config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often sources are sampled and reports published [default: 1000].
    pub sample_interval_ms: Option<u64>,
    /// Requests a generation needs before it can be judged healthy [default: 5].
    pub min_samples: Option<u64>,
    /// The highest healthy error rate, 0 to 1 [default: 0.05].
    pub max_error_rate: Option<f64>,
    /// The highest healthy p99 latency in milliseconds [default: none].
    pub max_latency_p99_ms: Option<f64>,
    /// Applications push samples to `POST /v1/health`.
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub probe: Vec<ProbeConfig>,
    #[serde(default)]
    pub exec: Vec<ExecConfig>,
    #[serde(default)]
    pub prometheus: Vec<PrometheusConfig>,
}

/// An HTTP probe: a 2xx answer within the timeout is a success.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub url: String,
    pub timeout_ms: Option<u64>,
}

/// A command: exit status 0 within the timeout is a success.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub command: Vec<String>,
    pub timeout_ms: Option<u64>,
}

/// A Prometheus text endpoint of the application: counters of requests and errors (their
/// increase between scrapes counts), and optionally a gauge of the p99 latency in ms.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    pub url: String,
    pub requests: String,
    pub errors: String,
    pub latency_p99_ms: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Sample intervals outside this range are refused: faster would load the application,
/// slower would make gates wait on a single sample.
const SAMPLE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// How long a source may take unless it says otherwise.
const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(2);

impl HealthConfig {
    fn has_sources(&self) -> bool {
        self.push || !self.probe.is_empty() || !self.exec.is_empty() || !self.prometheus.is_empty()
    }

    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis(self.sample_interval_ms.unwrap_or(1_000))
    }

    /// Checks the thresholds, saying which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.max_error_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(format!("max_error_rate must be from 0 to 1, got {rate}"));
        }
        if let Some(latency) = self.max_latency_p99_ms.filter(|l| l.is_nan() || *l <= 0.0) {
            return Err(format!("max_latency_p99_ms must be above 0, got {latency}"));
        }
        if let Some(interval) = self.sample_interval_ms.filter(|i| !SAMPLE_INTERVAL_MS.contains(i)) {
            return Err(format!("sample_interval_ms must be from 100 to 60000, got {interval}"));
        }
        if let Some(command) = self.exec.iter().find(|e| e.command.is_empty()) {
            return Err(format!("exec needs a command, got {command:?}"));
        }
        Ok(())
    }
}

/// Counts observed by a source over one sample interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    errors: u64,
    worst_latency_p99_ms: Option<f64>,
}

struct Tracked {
    applied_at: Instant,
    watch_window: Duration,
    tally: Tally,
}

/// The last outcome of one source, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub ok: bool,
    pub detail: String,
}

struct State {
    config: HealthConfig,
    tracked: BTreeMap<GenId, Tracked>,
    sources: BTreeMap<String, SourceStatus>,
    /// Last counter values per Prometheus endpoint, to turn totals into increases.
    counters: HashMap<String, (f64, f64)>,
    /// Generations no longer reported on, whose keys are still to be deleted.
    dropped: Vec<GenId>,
}

/// A handle to the node's health; cheap to clone.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    publish: Arc<Notify>,
}

impl Health {
    pub fn new(config: HealthConfig) -> Health {
        let state = State {
            config,
            tracked: BTreeMap::new(),
            sources: BTreeMap::new(),
            counters: HashMap::new(),
            dropped: Vec::new(),
        };
        Health { state: Arc::new(Mutex::new(state)), publish: Arc::new(Notify::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("health lock poisoned")
    }

    /// Starts judging a generation just applied (or, after a restart, applied before it:
    /// its age starts again from zero, which only delays a gate); its report goes out at once.
    pub fn applied(&self, generation: GenId, watch_window: Duration) {
        let mut state = self.lock();
        if state.tracked.len() >= MAX_TRACKED {
            let oldest = state.tracked.iter().min_by_key(|(_, t)| t.applied_at).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                state.tracked.remove(&oldest);
                state.dropped.push(oldest);
            }
        }
        state.tracked.insert(generation, Tracked { applied_at: Instant::now(), watch_window, tally: Tally::default() });
        drop(state);
        self.publish.notify_one();
    }

    /// Adds one sample to every generation within its watch window.
    pub fn record(&self, sample: Sample) {
        let mut state = self.lock();
        for tracked in state.tracked.values_mut().filter(|t| t.applied_at.elapsed() <= t.watch_window) {
            tracked.tally.requests += sample.requests;
            tracked.tally.errors += sample.errors;
            if let Some(latency) = sample.latency_p99_ms {
                let worst = tracked.tally.worst_latency_p99_ms.map_or(latency, |w| w.max(latency));
                tracked.tally.worst_latency_p99_ms = Some(worst);
            }
        }
    }

    /// Whether `POST /v1/health` is a configured source.
    pub fn accepts_push(&self) -> bool {
        self.lock().config.push
    }

    /// This node's report on every generation it still judges.
    pub fn reports(&self) -> BTreeMap<GenId, Report> {
        let state = self.lock();
        state
            .tracked
            .iter()
            .map(|(id, tracked)| {
                let elapsed_ms = tracked.applied_at.elapsed().as_millis() as u64;
                (id.clone(), Report { verdict: verdict(&state.config, &tracked.tally), elapsed_ms })
            })
            .collect()
    }

    /// The last outcome of each source.
    pub fn sources(&self) -> Vec<SourceStatus> {
        self.lock().sources.values().cloned().collect()
    }

    fn note(&self, source: String, outcome: Result<Sample, String>) {
        let mut state = self.lock();
        let status = match &outcome {
            Ok(sample) => SourceStatus {
                source: source.clone(),
                ok: true,
                detail: format!("{} requests, {} errors", sample.requests, sample.errors),
            },
            Err(error) => SourceStatus { source: source.clone(), ok: false, detail: error.clone() },
        };
        state.sources.insert(source, status);
        drop(state);
        if let Ok(sample) = outcome {
            self.record(sample);
        }
    }

    /// Stops reporting on generations folded into the snapshot.
    pub fn forget(&self, generations: &[GenId]) {
        let mut state = self.lock();
        for id in generations {
            if state.tracked.remove(id).is_some() {
                state.dropped.push(id.clone());
            }
        }
    }

    /// Generations no longer reported on since the last call, for their keys to go.
    fn take_dropped(&self) -> Vec<GenId> {
        std::mem::take(&mut self.lock().dropped)
    }
}

fn verdict(config: &HealthConfig, tally: &Tally) -> Verdict {
    if !config.has_sources() {
        return Verdict::Healthy;
    }
    if tally.requests < config.min_samples.unwrap_or(5).max(1) {
        return Verdict::Inconclusive;
    }
    let error_rate = tally.errors as f64 / tally.requests as f64;
    let too_slow = config.max_latency_p99_ms.zip(tally.worst_latency_p99_ms).is_some_and(|(max, seen)| seen > max);
    if error_rate > config.max_error_rate.unwrap_or(0.05) || too_slow { Verdict::Anomalous } else { Verdict::Healthy }
}

/// Samples the sources and publishes reports every sample interval, until shutdown.
pub async fn run(health: Health, gossip: Arc<Gossip>, shutdown: CancellationToken) {
    let config = health.lock().config.clone();
    let mut ticker = tokio::time::interval(config.sample_interval());
    let http = reqwest::Client::new();
    // What was last published per generation. A report is republished only when its verdict
    // changes: observers age it on their own clocks (`Gossip::reports_for`), so an unchanged
    // verdict costs no gossip.
    let mut published: BTreeMap<GenId, Verdict> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => sample_sources(&health, &config, &http).await,
            _ = health.publish.notified() => {}
        }
        let dropped = health.take_dropped();
        for id in &dropped {
            published.remove(id);
        }
        gossip.delete_reports(&dropped).await;
        let changed: BTreeMap<GenId, Report> =
            health.reports().into_iter().filter(|(id, report)| published.get(id) != Some(&report.verdict)).collect();
        for (id, report) in &changed {
            published.insert(id.clone(), report.verdict);
        }
        gossip.publish_reports(&changed).await;
    }
}

async fn sample_sources(health: &Health, config: &HealthConfig, http: &reqwest::Client) {
    for probe in &config.probe {
        let timeout = probe.timeout_ms.map_or(DEFAULT_SOURCE_TIMEOUT, Duration::from_millis);
        let started = Instant::now();
        let outcome = match http.get(&probe.url).timeout(timeout).send().await {
            Ok(response) => Ok(Sample {
                requests: 1,
                errors: u64::from(!response.status().is_success()),
                latency_p99_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            }),
            Err(error) => Err(format!("probe {} failed: {error}", probe.url)),
        };
        health.note(format!("probe {}", probe.url), outcome);
    }
    for exec in &config.exec {
        let timeout = exec.timeout_ms.map_or(DEFAULT_SOURCE_TIMEOUT, Duration::from_millis);
        health.note(format!("exec {}", exec.command.join(" ")), run_command(&exec.command, timeout).await);
    }
    for endpoint in &config.prometheus {
        let outcome = scrape(http, endpoint).await.map(|(requests, errors, latency)| {
            let mut state = health.lock();
            let (last_requests, last_errors) =
                state.counters.insert(endpoint.url.clone(), (requests, errors)).unwrap_or((requests, errors));
            // A counter that went down was reset (the application restarted): count from zero.
            let increase = |now: f64, last: f64| if now >= last { now - last } else { now };
            Sample {
                requests: increase(requests, last_requests) as u64,
                errors: increase(errors, last_errors) as u64,
                latency_p99_ms: latency,
            }
        });
        health.note(format!("prometheus {}", endpoint.url), outcome);
    }
}

async fn run_command(command: &[String], timeout: Duration) -> Result<Sample, String> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", command[0]))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(Sample {
            requests: 1,
            errors: u64::from(!status.success()),
            latency_p99_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        }),
        Ok(Err(error)) => Err(format!("{} failed: {error}", command[0])),
        // Killed on drop; a command that hangs is a failed check.
        Err(_) => Ok(Sample { requests: 1, errors: 1, latency_p99_ms: Some(timeout.as_secs_f64() * 1000.0) }),
    }
}

/// Totals of the request and error counters, and the latency gauge, of one endpoint.
async fn scrape(http: &reqwest::Client, endpoint: &PrometheusConfig) -> Result<(f64, f64, Option<f64>), String> {
    let timeout = endpoint.timeout_ms.map_or(DEFAULT_SOURCE_TIMEOUT, Duration::from_millis);
    let text = async { http.get(&endpoint.url).timeout(timeout).send().await?.error_for_status()?.text().await }
        .await
        .map_err(|error| format!("scraping {} failed: {error}", endpoint.url))?;
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).map_err(|error| format!("{}: {error}", endpoint.url))?;
    let total = |name: &str| -> Option<f64> {
        let values: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    let requests =
        total(&endpoint.requests).ok_or_else(|| format!("{}: no metric {:?}", endpoint.url, endpoint.requests))?;
    let errors = total(&endpoint.errors).unwrap_or(0.0);
    let latency = endpoint.latency_p99_ms.as_deref().and_then(total);
    Ok((requests, errors, latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> GenId {
        GenId { origin: "n1".parse().unwrap(), seq }
    }

    #[test]
    fn verdicts_follow_samples_and_thresholds() {
        let config = HealthConfig {
            push: true,
            min_samples: Some(10),
            max_latency_p99_ms: Some(200.0),
            ..HealthConfig::default()
        };
        let health = Health::new(config);
        health.applied(id(1), Duration::from_secs(60));
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Inconclusive, "no samples yet");
        health.record(Sample { requests: 100, errors: 1, latency_p99_ms: Some(50.0) });
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Healthy);
        health.record(Sample { requests: 100, errors: 30, latency_p99_ms: None });
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Anomalous, "error rate 15%");
        health.applied(id(2), Duration::from_secs(60));
        health.record(Sample { requests: 100, errors: 0, latency_p99_ms: Some(500.0) });
        assert_eq!(health.reports()[&id(2)].verdict, Verdict::Anomalous, "too slow");
    }

    #[test]
    fn without_sources_an_applied_generation_is_healthy() {
        let health = Health::new(HealthConfig::default());
        health.applied(id(1), Duration::from_secs(60));
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Healthy);
    }

    #[tokio::test]
    async fn a_failing_or_hanging_command_is_an_error_sample_and_a_missing_one_an_outage() {
        let ok = run_command(&["true".into()], Duration::from_secs(5)).await.unwrap();
        assert_eq!((ok.requests, ok.errors), (1, 0));
        let failed = run_command(&["false".into()], Duration::from_secs(5)).await.unwrap();
        assert_eq!(failed.errors, 1);
        let hung = run_command(&["sleep".into(), "5".into()], Duration::from_millis(50)).await.unwrap();
        assert_eq!(hung.errors, 1);
        assert!(run_command(&["/nonexistent/check".into()], Duration::from_secs(1)).await.is_err());
    }
}
