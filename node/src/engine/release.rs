//! Releases: which generations of the log this node applies, decided by `proto::rollout`'s
//! gate from the generation's waves, the controls in the log, and the reports in gossip.
//!
//! A released generation stays released (it is recorded in the store), so a restart never
//! takes back what the node applied while the reports that opened the gate are still on
//! their way; only a revert does. The applied state is the fold of the snapshot and the
//! released generations not reverted; the desired state is the fold of the whole log but the
//! reverted generations. A reverted generation is never released.
//!
//! - `gates()` returns, with each generation whose gate is open, a `Release`: the node's wave, the
//!   controls, and the reports of the live members it saw (earlier waves' for the rule, its own and
//!   later waves' for the latch), plus the count waiting and the earliest deadline, which
//!   `release_pass` keeps as `next_gate`. `release_pass` stamps each `Release` with the wall clock
//!   and keeps it in `releases` (pruned with the log); `RolloutView` shows it as `release`.
//! - Holds: before the gate, `proto::schedule::hold` on this node's hybrid clock
//!   (`hybrid_now_ms`: the wall clock, or the greatest stamp seen if ahead) holds a generation
//!   before its scheduled start and, if ordinary, during a freeze window (`EngineParts::freezes`);
//!   a held generation waits, and the hold's end is a deadline like a bake (`next_in_ms`), so it
//!   opens on a timer. `RolloutView::hold` (`HoldView`) says why and until when.
//! - `release_pass`: for each generation held whole, not yet released and not reverted, in fold
//!   order (the engine keeps them in `pending`, so a pass costs per generation waiting, not per
//!   generation held), it computes `Plan::of`, this node's `wave_of`, the controls (`controls_of`:
//!   every control in the log, `Log::with_controls`, folded in `(hlc, origin, seq)` order) and the
//!   live members' reports (`Gossip::reports_for`), and asks `Plan::opens_in`. The newly released
//!   ids are written to the store (`Store::release`) first; only then are they added to the
//!   released set, applied to `state`, handed to `Health::applied` (generations with ops only, not
//!   control generations; with the bake time when this node's wave gates a later one, `judge`),
//!   counted in `grapevine_generations_applied_total` and logged (`applied`). If the store fails,
//!   nothing is released and the next pass tries again.
//! - `rollout(id)` builds the `RolloutView` (`generation`, `keys`, `policy`, `controls`, `waves` of
//!   `WaveView { index, open, members: [MemberView { name, report }] }`, `open_waves`,
//!   `all_waves_open`, `applied_here` (whether this node ever released it; a revert does not erase
//!   that), `reverted`, `anomaly_quorum`, `reverted_by` (the `rv.` keys in gossip) and `judgement`
//!   (`Health::judgement`'s reason, when this node judges it)) of a generation held whole, as this
//!   node sees it.
//!
//! **Architecture Invariant:** `Store::release` records a release before it is applied, and the
//! released set only grows (compaction removes a released id together with the generation, once the
//! snapshot holds its writes). Only the engine task changes the log and the released set.

use std::collections::BTreeMap;
use std::time::Duration;

use grapevine_proto::rollout::{AnomalyQuorum, Controls, Plan, Report};
use grapevine_proto::schedule::{self, Hold};
use grapevine_proto::{GenId, Generation, Log, NodeName};
use serde::Serialize;
use tracing::{error, info};

use super::Engine;
use crate::clock;
use crate::health::Health;

/// The gates of the generations waiting here, from one look at the log and the reports.
pub(super) struct Gates {
    /// The generations whose gate is open for this node, in fold order, with the evidence
    /// that opened it.
    pub open: Vec<(Generation, Release)>,
    /// How many others wait for their wave.
    pub waiting: usize,
    /// In how many ms the first of those opens if the reports only age (`Plan::opens_in`);
    /// `None` when each waits for a new fact (a report, a control, a member).
    pub next_in_ms: Option<u64>,
}

/// What `rollout status` shows about one generation, as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutView {
    pub generation: String,
    pub keys: Vec<String>,
    pub policy: grapevine_proto::rollout::Policy,
    pub controls: Controls,
    pub waves: Vec<WaveView>,
    /// Waves open in this node's view.
    pub open_waves: usize,
    /// Whether every wave is open in this node's view.
    pub all_waves_open: bool,
    /// Whether this node ever applied it (a revert since does not erase the record).
    pub applied_here: bool,
    /// Whether it is reverted.
    pub reverted: bool,
    /// Who reports it anomalous, against the quorum that reverts it.
    pub anomaly_quorum: AnomalyQuorum,
    /// The nodes that wrote its revert, and why (`quorum` or `rollback`), as gossip tells.
    pub reverted_by: BTreeMap<String, String>,
    /// Why this node judges it as it does, if it judges it.
    pub judgement: Option<String>,
    /// When and on what evidence this node applied it, if it did since it started.
    pub release: Option<Release>,
    /// When its first wave opens (Unix ms), if it was scheduled (`--at`, `--in`).
    pub start_at_ms: Option<u64>,
    /// Why this node holds it now, while it has not applied it: its scheduled start, or a
    /// freeze window.
    pub hold: Option<HoldView>,
}

/// A hold as `rollout status` shows it: `kind` (`scheduled` or `frozen`), `window` (frozen
/// only), `until_ms`, `until` (RFC 3339) and the time left, `in_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct HoldView {
    #[serde(flatten)]
    pub hold: Hold,
    pub until: String,
    pub in_ms: u64,
    /// `scheduled to start at ...` or `frozen by NAME until ...`.
    pub reason: String,
}

/// The evidence a node applied a generation on: its wave, and the controls and reports that
/// opened the wave's gate in its view then. The chaos suite checks the gate rule against it.
#[derive(Clone, Debug, Serialize)]
pub struct Release {
    /// This node's wave.
    pub wave: usize,
    /// This node's wall clock (unix ms) when it applied it.
    pub at_unix_ms: u64,
    pub controls: Controls,
    /// The reports of live members it saw (none recorded for wave 0, which needs none).
    pub reports: BTreeMap<NodeName, Report>,
}

/// One wave of a rollout.
#[derive(Clone, Debug, Serialize)]
pub struct WaveView {
    pub index: usize,
    pub open: bool,
    pub members: Vec<MemberView>,
}

/// One member of a wave: its report, if any.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub name: NodeName,
    pub report: Option<Report>,
}

/// The controls of every generation, folded from the log in `(hlc, origin, seq)` order. Only
/// the few generations that carry controls are read (the log keeps their index).
pub(super) fn controls_of(log: &Log) -> BTreeMap<GenId, Controls> {
    let mut generations: Vec<&Generation> = log.with_controls().collect();
    generations.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut controls: BTreeMap<GenId, Controls> = BTreeMap::new();
    for control in generations.into_iter().flat_map(|g| &g.body.change.controls) {
        controls.entry(control.target().clone()).or_default().apply(control);
    }
    controls
}

/// Starts judging a generation this node (`own`) applied; when its wave gates a later one,
/// its report is pushed again the moment it is baked.
pub(super) fn judge(health: &Health, generation: &Generation, own: &NodeName) {
    let policy = &generation.body.change.policy;
    let watch_window = Duration::from_millis(policy.watch_window_ms);
    let plan = Plan::of(&generation.body);
    let gates_a_wave = plan.wave_of(own) + 1 < plan.waves.len();
    let gate_bake = gates_a_wave.then(|| Duration::from_millis(policy.bake_ms));
    health.applied(generation.id().clone(), watch_window, policy.thresholds.clone(), gate_bake);
}

impl Engine {
    /// Releases every generation whose gate is open for this node, and sets when the next
    /// gate opens if no new fact arrives first.
    pub(super) async fn release_pass(&mut self) {
        let Gates { open: newly, waiting, next_in_ms } = self.gates().await;
        self.parts.metrics.generations_waiting.set(waiting as i64);
        self.next_gate = next_in_ms.map(|ms| clock::now() + Duration::from_millis(ms));
        if newly.is_empty() {
            return;
        }
        let ids: Vec<GenId> = newly.iter().map(|(g, _)| g.id().clone()).collect();
        let store = self.parts.store.clone();
        let recording = ids.clone();
        let stored = tokio::task::spawn_blocking(move || store.release(&recording)).await.expect("store task panicked");
        if let Err(error) = stored {
            let generations: Vec<String> = ids.iter().map(ToString::to_string).collect();
            error!(%error, ?generations, "could not record released generations; will try again");
            return;
        }
        let now = super::now_ms(self.parts.clock_skew_ms);
        let log = &self.log;
        self.releases.retain(|id, _| log.get(id).is_some());
        for (generation, release) in newly {
            self.releases.insert(generation.id().clone(), Release { at_unix_ms: now, ..release });
            self.observe_propagation("applied", &generation, now);
            self.released.insert(generation.id().clone());
            self.pending.remove(&(generation.body.hlc, generation.id().clone()));
            self.state.apply_sharing(&generation, &self.desired);
            if !generation.body.change.ops.is_empty() {
                judge(&self.parts.health, &generation, &self.parts.name);
            }
            info!(generation = %generation.id(), "applied");
        }
        self.parts.metrics.generations_applied.inc_by(ids.len() as u64);
        self.publish().await;
    }

    /// The gates of the generations not yet released here (nor reverted), as of now.
    pub(super) async fn gates(&self) -> Gates {
        let candidates: Vec<&Generation> = self.waiting_here().collect();
        let mut gates = Gates { open: Vec::new(), waiting: 0, next_in_ms: None };
        if candidates.is_empty() {
            // The common case: nothing waits, so no controls to fold.
            return gates;
        }
        let controls = controls_of(&self.log);
        let own = self.parts.name.clone();
        let (now, physical) = (self.hybrid_now_ms(), super::now_ms(self.parts.clock_skew_ms));
        for generation in candidates {
            let body = &generation.body;
            if let Some(hold) = schedule::hold(body, &self.parts.freezes, now) {
                // Held by the clock: the timer wakes the engine when the hold ends (the hybrid
                // clock is behind the end, so the wall clock is too).
                gates.waiting += 1;
                let wait = hold.until_ms().saturating_sub(physical);
                gates.next_in_ms = Some(gates.next_in_ms.map_or(wait, |next| next.min(wait)));
                continue;
            }
            let plan = Plan::of(body);
            let wave = plan.wave_of(&own);
            let controls = controls.get(&body.id).copied().unwrap_or_default();
            let mut release = Release { wave, at_unix_ms: 0, controls, reports: BTreeMap::new() };
            let opens_in = if wave == 0 {
                Some(0)
            } else {
                let reports = self.parts.gossip.reports_for(&body.id).await;
                let opens_in = plan.opens_in(wave, &body.change.policy, controls, &reports);
                release.reports = reports;
                opens_in
            };
            match opens_in {
                Some(0) => gates.open.push((generation.clone(), release)),
                later => {
                    gates.waiting += 1;
                    gates.next_in_ms = gates.next_in_ms.into_iter().chain(later).min();
                }
            }
        }
        gates
    }

    /// The generations held whole, not released here nor reverted, in fold order.
    fn waiting_here(&self) -> impl Iterator<Item = &Generation> {
        let (released, log) = (&self.released, &self.log);
        let held = self.pending.iter().filter_map(|(_, id)| log.get(id));
        held.filter(move |g| !released.contains(g.id()) && !log.is_reverted(g.id()))
    }

    /// The generations not yet released here (nor reverted): id, open waves, waves.
    pub(super) async fn waiting(&self) -> Vec<(GenId, usize, usize)> {
        let changes = self.waiting_here().filter(|g| !g.body.change.ops.is_empty());
        let ids: Vec<GenId> = changes.map(|g| g.id().clone()).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(view) = self.rollout(&id).await {
                out.push((id, view.open_waves, view.waves.len()));
            }
        }
        out
    }

    /// The rollout of one generation as this node sees it, or `None` if it is not held whole.
    pub(super) async fn rollout(&self, id: &GenId) -> Option<RolloutView> {
        let generation = self.log.get(id)?;
        let body = &generation.body;
        let plan = Plan::of(body);
        let reports = self.parts.gossip.reports_for(id).await;
        let controls = controls_of(&self.log).get(id).copied().unwrap_or_default();
        let hold = self.hold_of(generation);
        let open_waves = match hold {
            // Held here: only the waves some member already applied (before a freeze) are open.
            Some(_) => (0..plan.waves.len())
                .take_while(|wave| plan.waves[*wave..].iter().flatten().any(|member| reports.contains_key(member)))
                .count(),
            None => plan.open_waves(&body.change.policy, controls, &reports),
        };
        let anomaly_quorum = AnomalyQuorum::of(&body.change.policy, &self.parts.gossip.all_reports_for(id).await);
        let reverted = self.log.is_reverted(id);
        let waves: Vec<WaveView> = plan
            .waves
            .iter()
            .enumerate()
            .map(|(index, members)| WaveView {
                index,
                open: index < open_waves,
                members: members
                    .iter()
                    .map(|name| MemberView { name: name.clone(), report: reports.get(name).copied() })
                    .collect(),
            })
            .collect();
        Some(RolloutView {
            generation: id.to_string(),
            keys: body.change.ops.iter().map(|op| format!("{} {}", op.kind(), op.key())).collect(),
            policy: body.change.policy.clone(),
            controls,
            waves,
            all_waves_open: open_waves == plan.waves.len(),
            open_waves,
            applied_here: self.released.contains(id),
            reverted,
            anomaly_quorum,
            reverted_by: self.parts.gossip.revert_causes(id).await,
            judgement: self.parts.health.judgement(id).map(|judgement| judgement.reason),
            release: self.releases.get(id).cloned(),
            start_at_ms: body.terms.as_ref().and_then(|terms| terms.start_at_ms),
            hold,
        })
    }

    /// Why this node holds `generation` now, if it has not applied it and it is not reverted.
    fn hold_of(&self, generation: &Generation) -> Option<HoldView> {
        if self.released.contains(generation.id()) || self.log.is_reverted(generation.id()) {
            return None;
        }
        let hold = schedule::hold(&generation.body, &self.parts.freezes, self.hybrid_now_ms())?;
        let until_ms = hold.until_ms();
        let in_ms = until_ms.saturating_sub(super::now_ms(self.parts.clock_skew_ms));
        Some(HoldView { reason: hold.to_string(), until: schedule::rfc3339(until_ms), in_ms, hold })
    }

    /// The time of this node's hybrid clock: its wall clock, or the greatest stamp it has seen
    /// if that is ahead (by at most the clock-offset bound). Starts and freezes are judged by it.
    pub(super) fn hybrid_now_ms(&self) -> u64 {
        super::now_ms(self.parts.clock_skew_ms).max(self.clock.last().wall_ms)
    }
}
