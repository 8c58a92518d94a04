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
//! Each generation is judged by `proto::health::judge` with its policy's thresholds: the
//! samples since the apply against absolute limits, against this node's own baseline (the
//! samples of the [`BASELINE_WINDOW`] before the apply), and against live peers that have not
//! applied it (their KPIs over the last [`KPI_WINDOW`], which every node with a source
//! publishes in gossip as `kpi`). An anomalous verdict is final: it is reported, counted and
//! alerted once, and a generation that recovers does not take it back. An apply failure is an
//! anomaly at once ([`Health::apply_failed`]).
//!
//! After its watch window a generation takes no more samples, but its last verdict stays in
//! gossip until the generation is compacted (or evicted past [`MAX_TRACKED`]): a rollout that
//! outlasts the window, or a node that joins late, still finds the earlier waves' reports.
//!
//! The types: `Health` (a cheap-to-clone handle: a `Mutex`ed state and a `Notify`), `HealthConfig`
//! (`[health]`), `ProbeConfig`, `ExecConfig`, `PrometheusConfig`, `Sample`, `SourceStatus`,
//! `Anomaly`, `HealthTask` and `run` (the health task); limits `BASELINE_WINDOW` (600 s),
//! `KPI_WINDOW` (60 s), `KPI_PUBLISH_INTERVAL` (5 s), `MAX_SAMPLES` (8192), `MAX_TRACKED` (256),
//! `MAX_BAKED_NUDGES` (32) and `DEFAULT_SOURCE_TIMEOUT` (2 s).
//!
//! - `Health::applied(generation, watch_window, thresholds, gate_bake)` starts judging a generation
//!   just released here: a fresh `Instant`, the generation's thresholds, no samples yet, and as its
//!   baseline the window of this node's samples of the last `BASELINE_WINDOW` (none without
//!   samples). Its verdict starts `Inconclusive` ("just applied"), and the task is woken so the
//!   report goes out at once. `gate_bake` is the bake time when this node's wave gates a later one
//!   (`None` in the last wave): the report goes out again when it has been healthy that long. At
//!   most `MAX_TRACKED` generations are judged; past it the one applied longest ago is dropped.
//! - `Health::record(sample)` keeps a `Sample { requests, errors, latency_p99_ms }` in the recent
//!   samples (the last `BASELINE_WINDOW`, at most `MAX_SAMPLES`) and adds it to every generation
//!   still watched: not frozen, not anomalous, within its watch window.
//! - `judge_all`, every sample interval on a node with a source, judges every watched generation
//!   with `proto::health::judge`: its samples since the apply, against its baseline and against the
//!   pooled `kpi` windows of the live peers that do not report on it (`gossip::PeerHealth`, refreshed
//!   from gossip every interval, with the generations each peer reports healthy). Then the blame rule
//!   (`proto::health::blame`): the same samples count toward every generation watched, so only one
//!   suspect (not judged healthy, or anomalous and not yet reverted) may be anomalous: the newest
//!   that no live peer reports healthy, else the newest; the others stay `Inconclusive` (reason `...; deferred to
//!   <blamed>, also applied here and not judged healthy`). An anomalous verdict is final: the
//!   generation takes no more samples, and the anomaly is handed to the task once
//!   (`take_anomalies`).
//! - `freeze(generation)`, on a revert: the generation takes no more samples (its last verdict
//!   stays reported), and every other generation still watched (older or newer) drops the samples
//!   taken since the frozen one was applied, so none is judged on the harm the reverted one did.
//! - `apply_failed(generation, reason)` makes a generation this node tracks anomalous at once
//!   (`apply failed: ...`), with or without health sources, unless it already is; `files` calls it
//!   on each failed render, check or reload.
//! - Without any source, every generation this node tracks reports `Healthy` ("no health source:
//!   judged on the apply alone") unless `apply_failed` made it anomalous, `judge_all` does nothing,
//!   and no `kpi` key is published.
//! - `judgement(generation)` is the verdict and its reason (the rollout view's `judgement`);
//!   `sources()` the last outcome of each source (`SourceStatus { source, ok, detail }`,
//!   `/v1/status`'s `health`).
//! - `run` samples the sources every `sample_interval_ms` (default 1000, 100..=60000, checked by
//!   `HealthConfig::validate`) and wakes on `applied`. Each tick it refreshes the peers' KPIs and
//!   their reports on the generations it judges (`judged`: none without a source),
//!   publishes `kpi` (this node's window over the last `KPI_WINDOW`) if `KPI_PUBLISH_INTERVAL` has
//!   passed since it last did, and runs `judge_all`. Each time, it logs each new anomaly (`judged
//!   anomalous` at warn), counts it (`grapevine_anomaly_reports_total`) and raises an `anomaly`
//!   alert; deletes the `rep.` and `rv.` keys of generations dropped (`forget` on compaction,
//!   eviction past `MAX_TRACKED`); then publishes (`Gossip::publish_reports`) the reports
//!   `due_reports` finds: those whose verdict changed since it last published them, and those just
//!   baked for a wave they gate (healthy for `gate_bake`). An unchanged verdict is not otherwise
//!   republished: observers age a report themselves, but from their first sight of it, short by
//!   that sighting's gossip delay; so a baked report goes out the moment it is true, the task
//!   forces a gossip exchange with up to `MAX_BAKED_NUDGES` live peers
//!   (`Gossip::nudge_live_peers_up_to`), and the next wave opens within milliseconds (D69). The
//!   task sleeps until the next report gets baked, besides its tick and `applied`.
//! - Sources: `push` (samples from `POST /v1/health`); `probe` (an HTTP GET: one request, an error
//!   unless 2xx, its time as latency); `exec` (a command run by `command.rs`, stdio closed: one
//!   request, an error unless exit 0, a timeout kills it and counts as an error); `prometheus` (a
//!   scrape parsed with `prometheus-parse`: the sums over all series of the `requests` and `errors`
//!   metrics, turned into increases since the previous scrape, a decrease read as a counter reset,
//!   and the optional `latency_p99_ms` gauge). Each source times out after its `timeout_ms` or
//!   `DEFAULT_SOURCE_TIMEOUT`.
//!
//! **Architecture Invariant:** a node judges only itself, from its own sources' samples; peers'
//! `kpi` windows serve only as a reference. Other nodes learn its verdict only through its `rep.`
//! keys.
//!
//! Tests: verdicts against samples, baseline and peers, a final anomaly raised once, the blame rule
//! (the newest suspect takes the blame, unless a peer vouches for it and an older suspect has no
//! one vouching; a revert clears the others' samples), an apply failure and a frozen generation,
//! healthy without sources, and failing, hanging and missing `exec` commands.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grapevine_proto::health::{Judgement, References, Window, blame, judge};
use grapevine_proto::policy::Thresholds;
use grapevine_proto::report::{Report, Verdict};
use grapevine_proto::{GenId, NodeName};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::alerts::{Alert, AlertKind, Alerts};
use crate::clock;
use crate::command::Outcome;
use crate::gossip::{Gossip, PeerHealth};

/// Generations whose reports are kept at once; past it, the one applied longest ago goes.
const MAX_TRACKED: usize = 256;

/// How far back the baseline of a generation reaches before its apply.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(600);

/// The span of the KPIs each node publishes for its peers' comparisons.
pub const KPI_WINDOW: Duration = Duration::from_secs(60);

/// Pushed samples are judged as they come, at most this often (other sources every sample
/// interval), so a failing canary is caught within a push, not a sample interval.
const MIN_JUDGE_INTERVAL: Duration = Duration::from_millis(100);

/// Most live peers a node pushes its baked report to at once (a forced gossip exchange each,
/// three messages carrying both digests). Every member of a wave gets baked at about the same
/// moment, so pushing to every peer would cost wave size times cluster size exchanges in one
/// burst (64,000 for a 50% wave of 400 members); past this many peers, gossip rounds carry the
/// report on from the ones pushed to, and observers' aging bounds the wait.
const MAX_BAKED_NUDGES: usize = 32;

/// How often a node republishes its KPIs (a small gossip key that changes every time).
const KPI_PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept for the baseline and the KPIs, and per generation since its apply; past it the
/// oldest go (at the fastest sample interval, 100 ms, this still covers minutes).
const MAX_SAMPLES: usize = 8192;

/// `[health]` in the node config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often sources are sampled and reports published [default: 1000].
    pub sample_interval_ms: Option<u64>,
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

    /// Checks the section, saying what is wrong. (Thresholds belong to the rollout policy:
    /// `[rollout]` holds the cluster's defaults.)
    pub fn validate(&self) -> Result<(), String> {
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

impl Sample {
    fn parts(&self) -> (u64, u64, Option<f64>) {
        (self.requests, self.errors, self.latency_p99_ms)
    }
}

struct Tracked {
    applied_at: Instant,
    watch_window: Duration,
    thresholds: Thresholds,
    /// This node's KPIs over the [`BASELINE_WINDOW`] before the apply.
    baseline: Option<Window>,
    /// Samples since the apply, oldest first, with when they came.
    samples: VecDeque<(Instant, Sample)>,
    judgement: Judgement,
    /// No more samples: the generation was reverted.
    frozen: bool,
    /// The bake time of the wave this node's report gates (`None` in the last wave): once
    /// healthy for that long, the report is published again and pushed to peers at once.
    gate_bake: Option<Duration>,
}

impl Tracked {
    /// The KPIs since the apply.
    fn window(&self) -> Window {
        Window::of(self.samples.iter().map(|(_, sample)| sample.parts()))
    }

    fn watching(&self) -> bool {
        !self.frozen
            && self.judgement.verdict != Verdict::Anomalous
            && clock::elapsed(self.applied_at) <= self.watch_window
    }
}

/// A generation in the order of blame: when it was applied, and its judgement now with the
/// KPIs behind it (`None` for one judged anomalous before and not reverted since).
type Candidate = (Instant, GenId, Option<(Judgement, Window)>);

/// A generation this node just judged anomalous.
#[derive(Clone, Debug)]
pub struct Anomaly {
    pub generation: GenId,
    pub reason: String,
    pub kpis: Window,
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
    /// Recent samples of every source, for baselines and the published KPIs.
    recent: VecDeque<(Instant, Sample)>,
    /// Live peers' KPIs and reports, refreshed every sample interval.
    peers: BTreeMap<NodeName, PeerHealth>,
    /// Anomalies judged since the last call of [`Health::take_anomalies`].
    anomalies: Vec<Anomaly>,
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
            recent: VecDeque::new(),
            peers: BTreeMap::new(),
            anomalies: Vec::new(),
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
    /// its age starts again from zero, which only delays a gate); its report goes out at once,
    /// and again the moment it has been healthy for `gate_bake`, when its wave gates another.
    pub fn applied(
        &self,
        generation: GenId,
        watch_window: Duration,
        thresholds: Thresholds,
        gate_bake: Option<Duration>,
    ) {
        let mut state = self.lock();
        if state.tracked.len() >= MAX_TRACKED {
            let oldest = state.tracked.iter().min_by_key(|(_, t)| t.applied_at).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                state.tracked.remove(&oldest);
                state.dropped.push(oldest);
            }
        }
        let baseline = state.window_since(BASELINE_WINDOW);
        let judgement = Judgement { verdict: Verdict::Inconclusive, reason: "just applied".to_owned() };
        let tracked = Tracked {
            applied_at: clock::now(),
            watch_window,
            thresholds,
            baseline,
            samples: VecDeque::new(),
            judgement,
            frozen: false,
            gate_bake,
        };
        state.tracked.insert(generation, tracked);
        drop(state);
        self.publish.notify_one();
    }

    /// Applying the generation failed on this node (a render, a check or a reload hook): it
    /// is anomalous at once, whatever the samples say.
    pub fn apply_failed(&self, generation: &GenId, reason: String) {
        let mut state = self.lock();
        let Some(tracked) = state.tracked.get_mut(generation) else { return };
        if tracked.judgement.verdict == Verdict::Anomalous {
            return;
        }
        let reason = format!("apply failed: {reason}");
        tracked.judgement = Judgement { verdict: Verdict::Anomalous, reason: reason.clone() };
        let kpis = tracked.window();
        state.anomalies.push(Anomaly { generation: generation.clone(), reason, kpis });
        drop(state);
        self.publish.notify_one();
    }

    /// Stops sampling a generation (it was reverted); its last verdict stays reported. The
    /// samples taken while it was applied are its own: every other generation forgets them,
    /// so none is judged on the harm the reverted one did.
    pub fn freeze(&self, generation: &GenId) {
        let mut state = self.lock();
        let Some(tracked) = state.tracked.get_mut(generation) else { return };
        tracked.frozen = true;
        // Every other generation still watched forgets the samples taken while it was applied:
        // an older one keeps what came before, a newer one starts afresh.
        let since = tracked.applied_at;
        for other in state.tracked.values_mut().filter(|t| t.watching()) {
            other.samples.retain(|(at, _)| *at < since);
        }
    }

    /// Adds one sample to every generation within its watch window, and to the recent ones.
    pub fn record(&self, sample: Sample) {
        let mut state = self.lock();
        let now = clock::now();
        state.recent.push_back((now, sample));
        while state.recent.len() > MAX_SAMPLES
            || state.recent.front().is_some_and(|(at, _)| now.duration_since(*at) > BASELINE_WINDOW)
        {
            state.recent.pop_front();
        }
        for tracked in state.tracked.values_mut().filter(|t| t.watching()) {
            tracked.samples.push_back((now, sample));
            if tracked.samples.len() > MAX_SAMPLES {
                tracked.samples.pop_front();
            }
        }
        drop(state);
        self.publish.notify_one();
    }

    /// Judges every generation still watched, with the peers' KPIs last seen; anomalies
    /// found go to [`Health::take_anomalies`].
    fn judge_all(&self) {
        let mut state = self.lock();
        if !state.config.has_sources() {
            return;
        }
        let State { tracked, peers, anomalies, .. } = &mut *state;
        let mut judged: Vec<(GenId, Instant, Judgement, Window)> = Vec::new();
        for (id, tracked) in tracked.iter().filter(|(_, t)| t.watching()) {
            let without: Vec<&Window> =
                peers.values().filter(|p| !p.reported.contains(id)).filter_map(|p| p.kpis.as_ref()).collect();
            let references =
                References { baseline: tracked.baseline, peers: (!without.is_empty()).then(|| Window::pool(without)) };
            let since = tracked.window();
            judged.push((id.clone(), tracked.applied_at, judge(&tracked.thresholds, &since, &references), since));
        }
        // Blame goes to one suspect (`proto::health::blame`); the other anomalous ones wait.
        let latched = tracked
            .iter()
            .filter(|(_, t)| !t.watching() && !t.frozen && t.judgement.verdict == Verdict::Anomalous)
            .map(|(id, t)| (t.applied_at, id.clone(), None));
        let order: Vec<Candidate> = judged
            .into_iter()
            .map(|(id, applied_at, judgement, since)| (applied_at, id, Some((judgement, since))))
            .chain(latched)
            .collect();
        let verdicts: Vec<(Instant, GenId, Option<Verdict>)> =
            order.iter().map(|(at, id, judged)| (*at, id.clone(), judged.as_ref().map(|(j, _)| j.verdict))).collect();
        let blamed = blame(&verdicts, |id| peers.values().any(|peer| peer.healthy.contains(id)));
        for (_, id, judged) in order {
            let Some((mut judgement, since)) = judged else { continue };
            if judgement.verdict == Verdict::Anomalous {
                match &blamed {
                    Some(blamed) if *blamed != id => {
                        judgement = Judgement {
                            verdict: Verdict::Inconclusive,
                            reason: format!(
                                "{}; deferred to {blamed}, also applied here and not judged healthy",
                                judgement.reason
                            ),
                        }
                    }
                    _ => anomalies.push(Anomaly {
                        generation: id.clone(),
                        reason: judgement.reason.clone(),
                        kpis: since,
                    }),
                }
            }
            if let Some(tracked) = tracked.get_mut(&id) {
                tracked.judgement = judgement;
            }
        }
    }

    fn take_anomalies(&self) -> Vec<Anomaly> {
        std::mem::take(&mut self.lock().anomalies)
    }

    /// The generations [`Health::judge_all`] reads peers' reports on (those still watched,
    /// and those judged anomalous here and not reverted, which the blame rule weighs); `None`
    /// without a source, when it judges nothing and reads no peer at all. The task reads only
    /// these reports from gossip, each checked against its member's signature: a node's
    /// reports on the rest of its history would cost a check per member and report for nothing.
    fn judged(&self) -> Option<BTreeSet<GenId>> {
        let state = self.lock();
        if !state.config.has_sources() {
            return None;
        }
        let latched = |t: &Tracked| !t.frozen && t.judgement.verdict == Verdict::Anomalous;
        Some(state.tracked.iter().filter(|(_, t)| t.watching() || latched(t)).map(|(id, _)| id.clone()).collect())
    }

    fn set_peers(&self, peers: BTreeMap<NodeName, PeerHealth>) {
        self.lock().peers = peers;
    }

    /// This node's KPIs over the last [`KPI_WINDOW`], if it has any source.
    fn kpis(&self) -> Option<Window> {
        let state = self.lock();
        if !state.config.has_sources() {
            return None;
        }
        Some(state.window_since(KPI_WINDOW).unwrap_or_default())
    }

    /// Why this node judges a generation as it does, if it judges it.
    pub fn judgement(&self, generation: &GenId) -> Option<Judgement> {
        let state = self.lock();
        let tracked = state.tracked.get(generation)?;
        Some(state.verdict_of(tracked))
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
                let elapsed_ms = clock::elapsed(tracked.applied_at).as_millis() as u64;
                (id.clone(), Report { verdict: state.verdict_of(tracked).verdict, elapsed_ms })
            })
            .collect()
    }

    /// The bake time, in ms, of each generation whose report here gates a later wave.
    fn gate_bakes(&self) -> BTreeMap<GenId, u64> {
        let state = self.lock();
        let bake_ms = |t: &Tracked| t.gate_bake.map(|bake| bake.as_millis() as u64);
        state.tracked.iter().filter_map(|(id, tracked)| Some((id.clone(), bake_ms(tracked)?))).collect()
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

impl State {
    /// The window of the recent samples no older than `span`, if there are any.
    fn window_since(&self, span: Duration) -> Option<Window> {
        let now = clock::now();
        let samples: Vec<(u64, u64, Option<f64>)> =
            self.recent.iter().filter(|(at, _)| now.duration_since(*at) <= span).map(|(_, s)| s.parts()).collect();
        (!samples.is_empty()).then(|| Window::of(samples))
    }

    fn verdict_of(&self, tracked: &Tracked) -> Judgement {
        // An apply failure is an anomaly with or without a source.
        if self.config.has_sources() || tracked.judgement.verdict == Verdict::Anomalous {
            return tracked.judgement.clone();
        }
        let reason = "no health source: judged on the apply alone".to_owned();
        Judgement { verdict: Verdict::Healthy, reason }
    }
}

/// What the health task needs besides the health itself.
pub struct HealthTask {
    pub health: Health,
    pub gossip: Arc<Gossip>,
    pub alerts: Alerts,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub name: NodeName,
}

/// Samples the sources and publishes reports every sample interval, until shutdown.
pub async fn run(task: HealthTask, shutdown: CancellationToken) {
    let HealthTask { health, gossip, alerts, metrics, name } = task;
    let config = health.lock().config.clone();
    let mut ticker = tokio::time::interval(config.sample_interval());
    let http = reqwest::Client::new();
    let mut published = Published::new();
    let mut next_baked: Option<Instant> = None;
    let mut kpis_published: Option<Instant> = None;
    let mut judged = clock::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                sample_sources(&health, &config, &http).await;
                if let Some(judged) = health.judged() {
                    health.set_peers(gossip.peer_health(judged).await);
                }
                if let Some(kpis) = health.kpis().filter(|_| kpis_published.is_none_or(|at| clock::elapsed(at) >= KPI_PUBLISH_INTERVAL)) {
                    gossip.publish_kpis(kpis).await;
                    kpis_published = Some(clock::now());
                }
                health.judge_all();
                judged = clock::now();
            }
            _ = health.publish.notified() => {
                if clock::elapsed(judged) >= MIN_JUDGE_INTERVAL {
                    health.judge_all();
                    judged = clock::now();
                }
            }
            // A report getting baked is the one change that comes with no sample or event.
            _ = sleep_until(next_baked) => {}
        }
        raise_anomalies(&health, &alerts, &metrics, &name);
        let dropped = health.take_dropped();
        for id in &dropped {
            published.remove(id);
        }
        gossip.delete_reports(&dropped).await;
        next_baked = publish_reports(&health, &gossip, &mut published).await;
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Counts, logs and alerts the anomalies judged since the last call.
fn raise_anomalies(health: &Health, alerts: &Alerts, metrics: &crate::metrics::Metrics, name: &NodeName) {
    for anomaly in health.take_anomalies() {
        warn!(generation = %anomaly.generation, reason = %anomaly.reason, kpis = %anomaly.kpis, "judged anomalous");
        metrics.anomaly_reports.inc();
        alerts.raise(Alert {
            kind: AlertKind::Anomaly,
            node: name.to_string(),
            generation: anomaly.generation.to_string(),
            trigger: None,
            reason: anomaly.reason,
            reporting_nodes: vec![name.to_string()],
            kpis: BTreeMap::from([(name.to_string(), anomaly.kpis.to_string())]),
            at_ms: clock::unix_ms(),
        });
    }
}

/// What was last published per generation: the verdict, and whether it was baked (healthy
/// for the bake time of the wave it gates).
type Published = BTreeMap<GenId, (Verdict, bool)>;

/// Publishes the reports that changed since `published`; returns when the next one gets baked.
///
/// A report goes out again only when its verdict changes (observers age it on their own
/// clocks, `Gossip::reports_for`, so an unchanged verdict costs no gossip), or when it gets
/// baked for a wave it gates. Observers age a report from when they first saw it, a lower
/// bound short by the gossip delay of that first sight; so the report that says "baked" goes
/// out the moment it is true and is pushed to live peers at once: the next wave opens within
/// milliseconds of the bake, not a gossip delay later.
async fn publish_reports(health: &Health, gossip: &Gossip, published: &mut Published) -> Option<Instant> {
    let bakes = health.gate_bakes();
    let reports = health.reports();
    let now = clock::now();
    let due = due_reports(&reports, &bakes, published);
    for (id, report) in &due.changed {
        let baked = bakes.get(id).and_then(|bake| report.baked_in(*bake)) == Some(0);
        published.insert(id.clone(), (report.verdict, baked));
    }
    gossip.publish_reports(&due.changed).await;
    if due.baked {
        gossip.nudge_live_peers_up_to(MAX_BAKED_NUDGES).await;
    }
    due.next_baked_in_ms.map(|wait_ms| now + Duration::from_millis(wait_ms))
}

/// What [`due_reports`] finds to publish.
#[derive(Debug, PartialEq)]
struct Due {
    /// The reports whose verdict changed, or that got baked, since last published.
    changed: BTreeMap<GenId, Report>,
    /// Whether one of them got baked for a wave it gates: peers wait on it.
    baked: bool,
    /// In how many ms the next healthy report gets baked for a wave it gates.
    next_baked_in_ms: Option<u64>,
}

/// The reports to publish, from this node's `reports` now, the bake time of the waves they
/// gate (`bakes`), and what was `published` last.
fn due_reports(reports: &BTreeMap<GenId, Report>, bakes: &BTreeMap<GenId, u64>, published: &Published) -> Due {
    let baked_in = |id: &GenId, report: &Report| bakes.get(id).and_then(|bake| report.baked_in(*bake));
    let changed: BTreeMap<GenId, Report> = reports
        .iter()
        .filter(|(id, report)| published.get(*id) != Some(&(report.verdict, baked_in(id, report) == Some(0))))
        .map(|(id, report)| (id.clone(), *report))
        .collect();
    let baked = changed.iter().any(|(id, report)| baked_in(id, report) == Some(0));
    let next_baked_in_ms = reports.iter().filter_map(|(id, report)| baked_in(id, report)).filter(|w| *w > 0).min();
    Due { changed, baked, next_baked_in_ms }
}

async fn sample_sources(health: &Health, config: &HealthConfig, http: &reqwest::Client) {
    for probe in &config.probe {
        let timeout = probe.timeout_ms.map_or(DEFAULT_SOURCE_TIMEOUT, Duration::from_millis);
        let started = clock::now();
        let outcome = match http.get(&probe.url).timeout(timeout).send().await {
            Ok(response) => Ok(Sample {
                requests: 1,
                errors: u64::from(!response.status().is_success()),
                latency_p99_ms: Some(clock::elapsed(started).as_secs_f64() * 1000.0),
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
    let started = clock::now();
    match crate::command::run(command, timeout, false).await {
        Ok(Outcome::Exited { status, .. }) => Ok(Sample {
            requests: 1,
            errors: u64::from(!status.success()),
            latency_p99_ms: Some(clock::elapsed(started).as_secs_f64() * 1000.0),
        }),
        Err(error) => Err(format!("cannot run {}: {error}", command[0])),
        // Killed with its process group; a command that hangs is a failed check.
        Ok(Outcome::TimedOut) => {
            Ok(Sample { requests: 1, errors: 1, latency_p99_ms: Some(timeout.as_secs_f64() * 1000.0) })
        }
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
    use std::collections::BTreeSet;

    use super::*;

    fn id(seq: u64) -> GenId {
        GenId { origin: "n1".parse().unwrap(), seq }
    }

    fn verdict(health: &Health, seq: u64) -> Verdict {
        health.judge_all();
        health.reports()[&id(seq)].verdict
    }

    fn sample(requests: u64, errors: u64, latency: f64) -> Sample {
        Sample { requests, errors, latency_p99_ms: Some(latency) }
    }

    #[test]
    fn peers_are_read_only_on_the_generations_judged() {
        let silent = Health::new(HealthConfig::default());
        silent.applied(id(1), Duration::from_secs(60), Thresholds::default(), None);
        assert_eq!(silent.judged(), None, "a node without a source judges nothing and reads no peer");

        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        health.applied(id(1), Duration::from_millis(1), Thresholds::default(), None);
        health.applied(id(2), Duration::from_secs(60), Thresholds::default(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(health.judged(), Some(BTreeSet::from([id(2)])), "past its watch window, id 1 is not judged");
        health.apply_failed(&id(1), "render failed".into());
        assert_eq!(health.judged(), Some(BTreeSet::from([id(1), id(2)])), "an anomaly not reverted weighs in blame");
        health.freeze(&id(1));
        assert_eq!(health.judged(), Some(BTreeSet::from([id(2)])), "a reverted one does not");
    }

    #[test]
    fn verdicts_follow_samples_baseline_and_peers_and_an_anomaly_is_final() {
        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        let thresholds = Thresholds { min_samples: 50, ..Thresholds::default() };
        for _ in 0..20 {
            health.record(sample(100, 0, 40.0));
        }
        health.applied(id(1), Duration::from_secs(60), thresholds.clone(), None);
        assert_eq!(verdict(&health, 1), Verdict::Inconclusive, "no samples yet");
        health.record(sample(100, 1, 42.0));
        assert_eq!(verdict(&health, 1), Verdict::Healthy);
        // 4% errors: under the absolute 5%, but forty times the baseline's none.
        for _ in 0..5 {
            health.record(sample(100, 4, 41.0));
        }
        assert_eq!(verdict(&health, 1), Verdict::Anomalous);
        let anomalies = health.take_anomalies();
        assert_eq!(anomalies.len(), 1);
        assert!(anomalies[0].reason.contains("baseline"), "{}", anomalies[0].reason);
        for _ in 0..100 {
            health.record(sample(100, 0, 40.0));
        }
        assert_eq!(verdict(&health, 1), Verdict::Anomalous, "an anomaly is final");
        assert!(health.take_anomalies().is_empty(), "and raised once");

        // No baseline of its own, but peers without it run at 40 ms and this node at 120 ms.
        let fresh = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        let peer = PeerHealth {
            kpis: Some(Window { requests: 5_000, errors: 5, latency_ms: Some(40.0), latency_intervals: 60 }),
            reported: BTreeSet::new(),
            healthy: BTreeSet::new(),
        };
        fresh.set_peers(BTreeMap::from([("n2".parse().unwrap(), peer)]));
        fresh.applied(id(2), Duration::from_secs(60), thresholds, None);
        for _ in 0..6 {
            fresh.record(sample(100, 0, 120.0));
        }
        assert_eq!(verdict(&fresh, 2), Verdict::Anomalous);
        assert!(fresh.judgement(&id(2)).unwrap().reason.contains("peers without it"));
    }

    #[test]
    fn when_samples_look_bad_the_newest_generation_not_judged_healthy_takes_the_blame() {
        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        let thresholds = Thresholds { min_samples: 10, ..Thresholds::default() };
        health.applied(id(1), Duration::from_secs(60), thresholds.clone(), None);
        std::thread::sleep(Duration::from_millis(2));
        health.applied(id(2), Duration::from_secs(60), thresholds, None);
        health.record(sample(100, 60, 5.0));
        assert_eq!(verdict(&health, 2), Verdict::Anomalous);
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Inconclusive);
        assert_eq!(verdict(&health, 1), Verdict::Inconclusive, "still blamed on the newer one");
        assert_eq!(health.take_anomalies().len(), 1);
        assert!(health.judgement(&id(1)).unwrap().reason.contains("deferred to n1.2"));
        // Once the newer one is reverted, the older one forgets the samples taken while it was
        // applied, and is judged on what comes after.
        health.freeze(&id(2));
        assert_eq!(verdict(&health, 1), Verdict::Inconclusive, "no samples of its own yet");
        health.record(sample(100, 0, 5.0));
        assert_eq!(verdict(&health, 1), Verdict::Healthy);
        // Had it been bad on its own, it is anomalous then.
        health.record(sample(100, 90, 5.0));
        assert_eq!(verdict(&health, 1), Verdict::Anomalous);
    }

    #[test]
    fn a_newer_generation_other_nodes_run_healthy_does_not_shield_an_older_one() {
        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        let thresholds = Thresholds { min_samples: 10, ..Thresholds::default() };
        health.applied(id(1), Duration::from_secs(60), thresholds.clone(), None);
        std::thread::sleep(Duration::from_millis(2));
        health.applied(id(2), Duration::from_secs(60), thresholds, None);
        // Another node applied n1.2 and judges it healthy; no one vouches for n1.1.
        let peer = PeerHealth { kpis: None, reported: BTreeSet::from([id(2)]), healthy: BTreeSet::from([id(2)]) };
        health.set_peers(BTreeMap::from([("n2".parse().unwrap(), peer)]));
        health.record(sample(100, 60, 5.0));
        assert_eq!(verdict(&health, 1), Verdict::Anomalous, "the older one, vouched for by no one, is blamed");
        assert_eq!(verdict(&health, 2), Verdict::Inconclusive);
        assert!(health.judgement(&id(2)).unwrap().reason.contains("deferred to n1.1"));
        let anomalies = health.take_anomalies();
        assert_eq!(anomalies.iter().map(|a| a.generation.clone()).collect::<Vec<_>>(), vec![id(1)]);
        // Once n1.1 is reverted, n1.2 forgets the samples taken while n1.1 was applied.
        health.freeze(&id(1));
        health.record(sample(100, 0, 5.0));
        assert_eq!(verdict(&health, 2), Verdict::Healthy);
        // When every suspect is vouched for elsewhere, the newest takes the blame as before.
        let both = PeerHealth {
            kpis: None,
            reported: BTreeSet::from([id(3), id(4)]),
            healthy: BTreeSet::from([id(3), id(4)]),
        };
        let fresh = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        fresh.set_peers(BTreeMap::from([("n2".parse().unwrap(), both)]));
        let thresholds = Thresholds { min_samples: 10, ..Thresholds::default() };
        fresh.applied(id(3), Duration::from_secs(60), thresholds.clone(), None);
        std::thread::sleep(Duration::from_millis(2));
        fresh.applied(id(4), Duration::from_secs(60), thresholds, None);
        fresh.record(sample(100, 60, 5.0));
        assert_eq!(verdict(&fresh, 4), Verdict::Anomalous);
        assert_eq!(verdict(&fresh, 3), Verdict::Inconclusive);
    }

    #[test]
    fn an_older_generation_defers_to_a_newer_one_still_collecting_and_not_to_a_healthy_one() {
        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        health.applied(
            id(1),
            Duration::from_secs(60),
            Thresholds { min_samples: 1_000, ..Thresholds::default() },
            None,
        );
        for _ in 0..10 {
            health.record(sample(100, 50, 5.0));
        }
        std::thread::sleep(Duration::from_millis(2));
        health.applied(id(2), Duration::from_secs(60), Thresholds { min_samples: 100, ..Thresholds::default() }, None);
        assert_eq!(verdict(&health, 1), Verdict::Inconclusive, "the newer one may be the cause");
        assert_eq!(health.reports()[&id(2)].verdict, Verdict::Inconclusive);
        // The newer one turns out healthy on its own samples: the harm came before it.
        health.record(sample(100, 0, 5.0));
        assert_eq!(verdict(&health, 2), Verdict::Healthy);
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Anomalous);
    }

    #[test]
    fn an_apply_failure_is_anomalous_at_once_and_a_frozen_generation_takes_no_samples() {
        let health = Health::new(HealthConfig { push: true, ..HealthConfig::default() });
        health.applied(id(1), Duration::from_secs(60), Thresholds::default(), None);
        health.apply_failed(&id(1), "reload hook exited with status 1".into());
        assert_eq!(health.reports()[&id(1)].verdict, Verdict::Anomalous);
        assert_eq!(health.take_anomalies().len(), 1);
        health.applied(id(2), Duration::from_secs(60), Thresholds::default(), None);
        health.freeze(&id(2));
        health.record(sample(1_000, 1_000, 1.0));
        assert_eq!(verdict(&health, 2), Verdict::Inconclusive, "frozen before any sample");
    }

    #[test]
    fn without_sources_an_applied_generation_is_healthy() {
        let health = Health::new(HealthConfig::default());
        health.applied(id(1), Duration::from_secs(60), Thresholds::default(), None);
        assert_eq!(verdict(&health, 1), Verdict::Healthy);
        health.applied(id(2), Duration::from_secs(60), Thresholds::default(), None);
        health.apply_failed(&id(2), "reload hook exited with status 1".into());
        assert_eq!(verdict(&health, 2), Verdict::Anomalous, "a failed apply needs no source");
        assert_eq!(health.kpis(), None, "nothing to publish");
    }

    #[test]
    fn a_report_goes_out_again_when_its_verdict_changes_or_it_gets_baked_for_a_wave_it_gates() {
        let report = |verdict, elapsed_ms| Report { verdict, elapsed_ms };
        let bakes = BTreeMap::from([(id(1), 1_000)]);
        let mut published = Published::new();
        // First sight: published, not baked yet, due to be in 600 ms.
        let reports = BTreeMap::from([(id(1), report(Verdict::Healthy, 400)), (id(2), report(Verdict::Healthy, 400))]);
        let due = due_reports(&reports, &bakes, &published);
        assert_eq!(due.changed.len(), 2);
        assert_eq!((due.baked, due.next_baked_in_ms), (false, Some(600)));
        published.insert(id(1), (Verdict::Healthy, false));
        published.insert(id(2), (Verdict::Healthy, false));
        // Aging alone publishes nothing until the bake...
        let reports =
            BTreeMap::from([(id(1), report(Verdict::Healthy, 999)), (id(2), report(Verdict::Healthy, 5_000))]);
        let due = due_reports(&reports, &bakes, &published);
        assert!(due.changed.is_empty(), "{due:?}: id(2) gates no wave, so its age is never news");
        assert_eq!(due.next_baked_in_ms, Some(1));
        // ...then the report that says baked goes out, and peers must hear of it now.
        let reports = BTreeMap::from([(id(1), report(Verdict::Healthy, 1_000))]);
        let due = due_reports(&reports, &bakes, &published);
        assert_eq!(due.changed, BTreeMap::from([(id(1), report(Verdict::Healthy, 1_000))]));
        assert_eq!((due.baked, due.next_baked_in_ms), (true, None));
        published.insert(id(1), (Verdict::Healthy, true));
        assert_eq!(due_reports(&reports, &bakes, &published).changed.len(), 0, "once");
        // A verdict that is not healthy never gets baked: no deadline, no push.
        let reports = BTreeMap::from([(id(1), report(Verdict::Inconclusive, 300))]);
        let due = due_reports(&reports, &bakes, &published);
        assert_eq!((due.changed.len(), due.baked, due.next_baked_in_ms), (1, false, None));
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
