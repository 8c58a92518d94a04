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
//! - `rollout(id)` builds the `RolloutView` (`generation`, `keys`, `policy`, `controls`, `waves` of
//!   `WaveView { index, open, members: [MemberView { name, report }] }`, `open_waves`,
//!   `all_waves_open`, `applied_here` (whether this node ever released it; a revert does not erase
//!   that), `reverted`, `anomaly_quorum`, `reverted_by` (the `rv.` keys in gossip), `judgement`
//!   (`Health::judgement`'s reason, when this node judges it), `release` (the evidence it was
//!   released on, `Replica::release_of`) and `hold` (`HoldView`: why it waits, before its
//!   scheduled start or in a freeze window, `Replica::hold_of`)) of a generation held whole, as
//!   this node sees it.
//!
//! **Architecture Invariant:** `Store::release` records a release before it is applied, and the
//! released set only grows (compaction removes a released id together with the generation, once the
//! snapshot holds its writes). Only the engine task changes the replica.

use std::collections::BTreeMap;
use std::time::Duration;

use grapevine_proto::replica::{Gates, Release, controls_of};
use grapevine_proto::rollout::{AnomalyQuorum, Controls, Plan, Report};
use grapevine_proto::schedule::{self, Hold};
use grapevine_proto::{GenId, Generation, NodeName};
use serde::Serialize;
use tracing::{error, info};

use super::Engine;
use crate::clock;

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
    pub(super) async fn rollout(&self, id: &GenId) -> Option<RolloutView> {
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
    fn hold_of(&self, generation: &Generation) -> Option<HoldView> {
        let now = self.now();
        let hold = self.replica.hold_of(generation, now)?;
        let until_ms = hold.until_ms();
        let in_ms = until_ms.saturating_sub(now.wall_ms);
        Some(HoldView { reason: hold.to_string(), until: schedule::rfc3339(until_ms), in_ms, hold })
    }
}
