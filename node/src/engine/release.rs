//! Releases, the engine's side: the reports the gates read, the store's record of a release,
//! and what `rollout status` shows. The gate itself is `proto::replica` (`release.rs` there).
//!
//! - `release_pass`: `gates` reads the live members' reports (`Gossip::reports_for`) on the
//!   generations waiting here whose gate reads them (`Replica::needs_reports`) and asks `Replica::gates`; it keeps
//!   `next_in_ms` as `next_gate`. The newly open ids are written to the store
//!   (`Store::release`) first; only then does `Replica::release` apply them, and the engine
//!   hands those with operations to `Health::applied` (`judge`), counts them in
//!   `grapevine_generations_applied_total` and logs `applied`. If the store fails, nothing is
//!   released and the next pass tries again.
//! - `rollout(id)` builds the `replies::Rollout` that `rollout status` shows (`generation`, `keys`,
//!   `policy`, `controls`, `waves` of `Wave { index, open, members: [WaveMember { name, report }] }`, `open_waves`,
//!   `all_waves_open`, `applied_here` (whether this node ever released it; a revert does not erase
//!   that), `reverted`, `anomaly_quorum`, `reverted_by` (the `rv.` keys in gossip), `judgement`
//!   (`Health::judgement`'s reason, when this node judges it), `release` (the evidence it was
//!   released on, `Replica::release_of`) and `hold` (`replies::Hold`: why it waits, before its
//!   scheduled start or in a freeze window, `Replica::hold_of`)) of a generation held whole, as
//!   this node sees it.
//!
//! **Architecture Invariant:** `Store::release` records a release before it is applied, and the
//! released set only grows (compaction removes a released id together with the generation, once the
//! snapshot holds its writes). Only the engine task changes the replica.

use std::collections::BTreeMap;
use std::time::Duration;

use grapevine_proto::replica::{Gates, controls_of};
use grapevine_proto::rollout::{AnomalyQuorum, Plan};
use grapevine_proto::schedule;
use grapevine_proto::{GenId, Generation};
use tracing::{error, info};

use super::Engine;
use crate::clock;
use crate::replies::{Hold, Rollout, Wave, WaveMember};

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
        let now = self.now();
        for (generation, _) in &newly {
            self.observe_propagation("applied", generation, now.wall_ms);
            info!(generation = %generation.id(), "applied");
        }
        for judging in self.replica.release(newly, now) {
            super::judge(&self.parts.health, judging);
        }
        self.parts.metrics.generations_applied.inc_by(ids.len() as u64);
        self.publish().await;
    }

    /// The gates of the generations not yet released here (nor reverted), as of now, from
    /// the live members' reports on each.
    pub(super) async fn gates(&self) -> Gates {
        let now = self.now();
        let mut reports = BTreeMap::new();
        for id in self.replica.needs_reports(now) {
            let seen = self.parts.gossip.reports_for(&id).await;
            reports.insert(id, seen);
        }
        self.replica.gates(&reports, now)
    }

    /// The generations not yet released here (nor reverted): id, open waves, waves.
    pub(super) async fn waiting(&self) -> Vec<(GenId, usize, usize)> {
        let changes = self.replica.waiting().filter(|g| !g.body.change.ops.is_empty());
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
    pub(super) async fn rollout(&self, id: &GenId) -> Option<Rollout> {
        let log = self.replica.log();
        let generation = log.get(id)?;
        let body = &generation.body;
        let plan = Plan::of(body);
        let reports = self.parts.gossip.reports_for(id).await;
        let controls = controls_of(log).get(id).copied().unwrap_or_default();
        let hold = self.hold_of(generation);
        let open_waves = match hold {
            // Held here: only the waves some member already applied (before a freeze) are open.
            Some(_) => (0..plan.waves.len())
                .take_while(|wave| plan.waves[*wave..].iter().flatten().any(|member| reports.contains_key(member)))
                .count(),
            None => plan.open_waves(&body.change.policy, controls, &reports),
        };
        let anomaly_quorum = AnomalyQuorum::of(&body.change.policy, &self.parts.gossip.all_reports_for(id).await);
        let reverted = log.is_reverted(id);
        let waves: Vec<Wave> = plan
            .waves
            .iter()
            .enumerate()
            .map(|(index, members)| Wave {
                index,
                open: index < open_waves,
                members: members
                    .iter()
                    .map(|name| WaveMember { name: name.clone(), report: reports.get(name).copied() })
                    .collect(),
            })
            .collect();
        Some(Rollout {
            generation: id.to_string(),
            keys: body.change.ops.iter().map(|op| format!("{} {}", op.kind(), op.key())).collect(),
            policy: body.change.policy.clone(),
            controls,
            waves,
            all_waves_open: open_waves == plan.waves.len(),
            open_waves,
            applied_here: self.replica.is_released(id),
            reverted,
            anomaly_quorum,
            reverted_by: self.parts.gossip.revert_causes(id).await,
            judgement: self.parts.health.judgement(id).map(|judgement| judgement.reason),
            release: self.replica.release_of(id).cloned(),
            start_at_ms: body.terms.as_ref().and_then(|terms| terms.start_at_ms),
            hold,
        })
    }

    /// Why this node holds `generation` now, if it has not applied it and it is not reverted.
    fn hold_of(&self, generation: &Generation) -> Option<Hold> {
        let now = self.now();
        let hold = self.replica.hold_of(generation, now)?;
        let until_ms = hold.until_ms();
        let (kind, window) = match &hold {
            schedule::Hold::Scheduled { .. } => ("scheduled", None),
            schedule::Hold::Frozen { window, .. } => ("frozen", Some(window.clone())),
        };
        Some(Hold {
            kind: kind.into(),
            window,
            until_ms,
            until: schedule::rfc3339(until_ms),
            in_ms: until_ms.saturating_sub(now.wall_ms),
            reason: hold.to_string(),
        })
    }
}
