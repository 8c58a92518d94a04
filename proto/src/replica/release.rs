//! Releases: which generations of the log this node applies, decided by `rollout`'s gate from
//! the generation's waves, the controls in the log, and the live members' reports.
//!
//! A released generation stays released (the node records it in its store), so a restart
//! never takes back what the node applied while the reports that opened the gate are still on
//! their way; only a revert does. A reverted generation is never released.
//!
//! - `waiting` lists the generations held whole, not released nor reverted, in fold order (the
//!   replica keeps them in `pending`, so a pass costs per generation waiting, not per
//!   generation held); `needs_reports` those of them whose gate reads reports now (not held,
//!   this node past the first wave): the node reads their reports from gossip.
//! - `gates(reports, now)`: for each, `schedule::hold` on the hybrid clock holds it before its
//!   scheduled start and, if ordinary, during a freeze window (its end is a deadline, like a
//!   bake); otherwise `Plan::of`, this node's `wave_of`, the controls (`controls_of`) and the
//!   reports decide with `Plan::opens_in`. It returns those whose gate is open, with the
//!   evidence (`Release`), how many wait and when the first of those opens if the reports only
//!   age (`next_in_ms`).
//! - `release(open, now)`, once the node recorded the ids in its store: adds them to the
//!   released set, applies them to the state, keeps their `Release`, and returns the
//!   generations with operations to judge (`Judging`: with the bake time when this node's wave
//!   gates a later one, so its report is pushed again the moment it is baked).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Now, Replica};
use crate::policy::{Controls, Thresholds};
use crate::report::Report;
use crate::rollout::Plan;
use crate::schedule::{self, Hold};
use crate::{GenId, Generation, Log, NodeName};

/// The gates of the generations waiting here, from one look at the log and the reports.
#[derive(Debug, Default)]
pub struct Gates {
    /// The generations whose gate is open for this node, in fold order, with the evidence
    /// that opened it.
    pub open: Vec<(Generation, Release)>,
    /// How many others wait for their wave.
    pub waiting: usize,
    /// In how many ms the first of those opens if the reports only age (`Plan::opens_in`);
    /// `None` when each waits for a new fact (a report, a control, a member).
    pub next_in_ms: Option<u64>,
}

/// The evidence a node applied a generation on: its wave, and the controls and reports that
/// opened the wave's gate in its view then. The chaos suite checks the gate rule against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// This node's wave.
    pub wave: usize,
    /// This node's wall clock (unix ms) when it applied it.
    pub at_unix_ms: u64,
    pub controls: Controls,
    /// The reports of live members it saw (none recorded for wave 0, which needs none).
    pub reports: BTreeMap<NodeName, Report>,
}

/// How a generation this node applied is judged: for how long, against what, and whether its
/// report gates a later wave (then it is pushed again the moment it is baked).
#[derive(Clone, Debug, PartialEq)]
pub struct Judging {
    pub id: GenId,
    pub watch_window_ms: u64,
    pub thresholds: Thresholds,
    /// The bake time, when this node's wave gates a later one.
    pub gate_bake_ms: Option<u64>,
}

/// The controls of every generation, folded from the log in `(hlc, origin, seq)` order. Only
/// the few generations that carry controls are read (the log keeps their index).
pub fn controls_of(log: &Log) -> BTreeMap<GenId, Controls> {
    let mut generations: Vec<&Generation> = log.with_controls().collect();
    generations.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut controls: BTreeMap<GenId, Controls> = BTreeMap::new();
    for control in generations.into_iter().flat_map(|g| &g.body.change.controls) {
        controls.entry(control.target().clone()).or_default().apply(control);
    }
    controls
}

impl Replica {
    /// The generations held whole, not released here nor reverted, in fold order.
    pub fn waiting(&self) -> impl Iterator<Item = &Generation> {
        self.waiting_plans().map(|(generation, _)| generation)
    }

    /// `waiting`, with each generation's waves.
    fn waiting_plans(&self) -> impl Iterator<Item = (&Generation, &Plan)> {
        let (released, log) = (&self.released, &self.log);
        let held = self.pending.iter().filter_map(|((_, id), plan)| Some((log.get(id)?, &**plan)));
        held.filter(move |(g, _)| !released.contains(g.id()) && !log.is_reverted(g.id()))
    }

    /// The waiting generations whose gate reads reports now: not held by the clock, and this
    /// node past their first wave. Only theirs need reading from gossip for `gates`.
    pub fn needs_reports(&self, now: Now) -> Vec<GenId> {
        let hybrid = self.hybrid_now_ms(now);
        let waiting =
            self.waiting_plans().filter(|(g, _)| schedule::hold(&g.body, &self.config.freezes, hybrid).is_none());
        waiting.filter(|(_, plan)| plan.wave_of(&self.config.name) > 0).map(|(g, _)| g.id().clone()).collect()
    }

    /// Why this node holds `generation` now, if it has not applied it and it is not reverted:
    /// its scheduled start, or a freeze window.
    pub fn hold_of(&self, generation: &Generation, now: Now) -> Option<Hold> {
        if self.released.contains(generation.id()) || self.log.is_reverted(generation.id()) {
            return None;
        }
        schedule::hold(&generation.body, &self.config.freezes, self.hybrid_now_ms(now))
    }

    /// The gates of the generations waiting here, as of `now`, from the live members' reports
    /// on each (`reports`; a generation missing from it has none).
    pub fn gates(&self, reports: &BTreeMap<GenId, BTreeMap<NodeName, Report>>, now: Now) -> Gates {
        let candidates: Vec<(&Generation, &Plan)> = self.waiting_plans().collect();
        let mut gates = Gates::default();
        if candidates.is_empty() {
            // The common case: nothing waits, so no controls to fold.
            return gates;
        }
        let controls = controls_of(&self.log);
        let own = &self.config.name;
        let hybrid = self.hybrid_now_ms(now);
        for (generation, plan) in candidates {
            let body = &generation.body;
            if let Some(hold) = schedule::hold(body, &self.config.freezes, hybrid) {
                // Held by the clock: it opens when the hold ends (the hybrid clock is behind
                // the end, so the wall clock is too).
                gates.waiting += 1;
                let wait = hold.until_ms().saturating_sub(now.wall_ms);
                gates.next_in_ms = Some(gates.next_in_ms.map_or(wait, |next| next.min(wait)));
                continue;
            }
            let wave = plan.wave_of(own);
            let controls = controls.get(&body.id).copied().unwrap_or_default();
            let seen = reports.get(&body.id).filter(|_| wave > 0);
            let empty = BTreeMap::new();
            let opens_in = if wave == 0 {
                Some(0)
            } else {
                plan.opens_in(wave, &body.change.policy, controls, seen.unwrap_or(&empty))
            };
            match opens_in {
                Some(0) => {
                    // The evidence is copied only for a gate that opens (a closed one is asked
                    // again on every new report, and a flat fleet's reports name every member).
                    let reports = seen.cloned().unwrap_or_default();
                    gates.open.push((generation.clone(), Release { wave, at_unix_ms: 0, controls, reports }));
                }
                later => {
                    gates.waiting += 1;
                    gates.next_in_ms = gates.next_in_ms.into_iter().chain(later).min();
                }
            }
        }
        gates
    }

    /// Commits the release of `open` (from `gates`), once the node recorded their ids in its
    /// store; returns how to judge those with operations.
    pub fn release(&mut self, open: Vec<(Generation, Release)>, now: Now) -> Vec<Judging> {
        let log = &self.log;
        self.releases.retain(|id, _| log.get(id).is_some());
        let mut judging = Vec::new();
        for (generation, release) in open {
            self.releases.insert(generation.id().clone(), Release { at_unix_ms: now.wall_ms, ..release });
            self.released.insert(generation.id().clone());
            self.pending.remove(&(generation.body.hlc, generation.id().clone()));
            self.state.apply_sharing(&generation, &self.desired);
            if !generation.body.change.ops.is_empty() {
                judging.push(self.judging(&generation));
            }
        }
        judging
    }

    /// How this node judges `generation`, which it applied.
    pub fn judging(&self, generation: &Generation) -> Judging {
        let policy = &generation.body.change.policy;
        let plan = Plan::shared(&generation.body);
        let gates_a_wave = plan.wave_of(&self.config.name) + 1 < plan.waves.len();
        Judging {
            id: generation.id().clone(),
            watch_window_ms: policy.watch_window_ms,
            thresholds: policy.thresholds.clone(),
            gate_bake_ms: gates_a_wave.then_some(policy.bake_ms),
        }
    }
}
