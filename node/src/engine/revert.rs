//! Reverts: the cluster undoing a generation that hurts, without a human.
//!
//! Whenever reports change (and, while a revert is deferred, when its wait ends), the engine
//! looks at the generations some member reports anomalous. When the distinct members reporting
//! one anomalous reach its policy's anomaly quorum (`proto::rollout::AnomalyQuorum`), this node
//! writes its revert. The revert is derived from the generation alone (`proto::Revert`), so every node that sees the
//! quorum, on any side of a partition, writes the same one, and every log holds it once. An
//! operator's `rollback` writes the same revert.
//!
//! A revert skips waves: it takes effect on each node the moment it arrives, and spreads like a
//! generation (pushed at once, pulled by anti-entropy). Reverts are stored before they count,
//! and never undone: a reverted generation is never applied again.
//!
//! The writer's gossip (`rv.<generation>`) usually reaches a peer with the very report that
//! completes the quorum there. A node that sees a live member has written the revert waits up
//! to [`REVERT_DEFER`] for it to arrive instead of writing (and spreading) it again: without
//! that, every node writes the revert at once, and the storm of pushes and nudges makes it
//! spread slower than a change. A writer that dies, or whose revert does not arrive, is not
//! waited for longer.
//!
//! - `revert_pass`: for each generation some member, live or dead, reports anomalous
//!   (`Gossip::anomalous_generations`), held whole here and not yet reverted, it computes
//!   `AnomalyQuorum::of` the generation's policy over the reports of every member this node knows
//!   of (`Gossip::all_reports_for`: live or dead, the worst verdict per name). When the quorum is
//!   reached and another live member has already written the revert (`Gossip::live_revert_writers`,
//!   its `rv.` key), it waits (`deferred_reverts`), as above; otherwise, or once the wait is over,
//!   it writes the revert (`write_revert`). A store failure is logged and the next pass tries
//!   again. A revert that arrives ends the wait.
//! - `write_revert` stores the revert (`Store::put_reverts`, one committed transaction), adds it to
//!   the log, counts it (`grapevine_reverts_total{reason="quorum"|"rollback"|"revocation"}`), logs
//!   `reverted` at warn, publishes `rv.<generation>` = `quorum`, `rollback` or `revocation`
//!   (`Cause::Revoked`: signed by a key revoked before it; `revocation_pass`), then `take_effect`:
//!   `Health::freeze` the target, refold both states (`Log::state`) and publish, and hand a
//!   `PushJob` with the revert to the pusher. It then nudges every live peer and raises a `revert`
//!   alert.
//! - `rollback(target)` (an operator's `rollback`) answers `already_reverted` for a target already
//!   reverted (held or not), refuses a control generation (`RollbackError::Control`), a generation
//!   covered by the snapshot (`Compacted`) or unknown (`NotFound`), and otherwise writes the same
//!   revert as the quorum would, with the cause `rollback` (`RollbackOutcome`).
//! - `ingest_reverts` stores the reverts it did not hold in one transaction (a store failure drops
//!   them; they are pulled again), adds them to the log, logs `revert received`, counts
//!   `grapevine_reverts_total{reason="received"}`, and runs `take_effect` with the peer they came
//!   from, so they are pushed on (push on first receipt). It raises no alert.
//!
//! **Architecture Invariant:** a revert is stored durably (`Store::put_reverts`) before it is added
//! to the log, applied, published, pushed or counted, and it is never undone. A reverted generation
//! is never applied: `release_pass` never releases it, and both states are folds that leave it out
//! (`Log::state`), from the moment the revert is in the log, before or after its target arrives,
//! and after a restart. The one exception is a write that was already in this node's snapshot when
//! the revert arrived (`docs/operations.md`, "Automatic revert").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use grapevine_proto::rollout::AnomalyQuorum;
use grapevine_proto::signing::{PublicKey, revoked_after};
use grapevine_proto::{GenId, Revert};
use serde::Serialize;
use tracing::{debug, error, info, warn};

use super::Engine;
use crate::alerts::{Alert, AlertKind};
use crate::clock;
use crate::metrics::reason;
use crate::store::StoreError;

/// How long a node that sees the quorum waits for a revert a live member already wrote,
/// before it writes the revert itself.
pub const REVERT_DEFER: Duration = Duration::from_secs(1);

/// Why this node writes a revert.
enum Cause {
    /// It saw the anomaly quorum.
    Quorum(AnomalyQuorum),
    /// An operator asked.
    Rollback,
    /// It was signed by a key revoked before it was stamped.
    Revoked(PublicKey),
}

/// What `rollback` did.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackOutcome {
    pub generation: String,
    pub revert: String,
    /// True when the generation was already reverted: nothing was written.
    pub already_reverted: bool,
}

/// Why a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("generation {0} is not in the log of this node")]
    NotFound(GenId),
    #[error(
        "generation {0} is compacted into the snapshot and can no longer be reverted; ship the value you want as a new change"
    )]
    Compacted(GenId),
    #[error("generation {0} is a rollout control, not a change; write the opposite control instead")]
    Control(GenId),
    #[error("the revert was not stored: {0}")]
    Store(#[from] StoreError),
    #[error("the node is shutting down")]
    Stopped,
}

impl Engine {
    /// Writes the revert of every generation whose anomaly quorum is reached in this node's
    /// view of the reports.
    pub(super) async fn revert_pass(&mut self) {
        for id in self.parts.gossip.anomalous_generations().await {
            let Some(generation) = self.log.get(&id) else { continue };
            if self.log.is_reverted(&id) {
                continue;
            }
            let policy = generation.body.change.policy.clone();
            let quorum = AnomalyQuorum::of(&policy, &self.parts.gossip.all_reports_for(&id).await);
            if !quorum.reached() {
                continue;
            }
            let writers = self.parts.gossip.live_revert_writers(&id).await;
            let since = *self.deferred_reverts.entry(id.clone()).or_insert_with(clock::now);
            if !writers.is_empty() && clock::elapsed(since) < REVERT_DEFER {
                debug!(generation = %id, ?writers, "quorum reached; waiting for the revert a live member wrote");
                continue;
            }
            self.deferred_reverts.remove(&id);
            if let Err(error) = self.write_revert(&id, Cause::Quorum(quorum)).await {
                error!(generation = %id, %error, "could not store a revert; will try again");
            }
        }
    }

    /// Reverts every generation signed by a revoked key and ordered after its revocation. The
    /// rule reads only the log, so every node that holds the revocation and the generation
    /// writes the same revert; a node that lacks the revocation learns the revert itself.
    pub(super) async fn revocation_pass(&mut self) {
        if !self.holds_revocations {
            // No key revoked: nothing to find, and no need to read the whole log to know it.
            return;
        }
        for (target, key) in revoked_after(&self.log) {
            if let Err(error) = self.write_revert(&target, Cause::Revoked(key)).await {
                error!(generation = %target, %error, "could not store the revert of a revoked key's change; will try again");
            }
        }
    }

    /// An operator's rollback: the same revert the quorum would write.
    pub(super) async fn rollback(&mut self, target: GenId) -> Result<RollbackOutcome, RollbackError> {
        let outcome = |already_reverted| RollbackOutcome {
            generation: target.to_string(),
            revert: Revert::of(&target).to_string(),
            already_reverted,
        };
        if self.log.is_reverted(&target) {
            return Ok(outcome(true));
        }
        match self.log.get(&target) {
            Some(generation) if generation.body.change.ops.is_empty() => Err(RollbackError::Control(target)),
            Some(_) => {
                self.write_revert(&target, Cause::Rollback).await?;
                Ok(outcome(false))
            }
            None if self.log.base().covers().covers(&target) => Err(RollbackError::Compacted(target)),
            None => Err(RollbackError::NotFound(target)),
        }
    }

    /// Stores the revert of `target`, applies it, spreads it, and says why.
    async fn write_revert(&mut self, target: &GenId, cause: Cause) -> Result<(), StoreError> {
        let revert = Revert::of(target);
        let (trigger, reason_text, reporting) = match &cause {
            Cause::Quorum(quorum) => ("quorum", format!("anomaly quorum: {quorum}"), quorum.anomalous.clone()),
            Cause::Rollback => ("rollback", format!("operator rollback on {}", self.parts.name), Vec::new()),
            Cause::Revoked(key) => ("revocation", format!("signed by {key}, revoked before it"), Vec::new()),
        };
        self.store_reverts(vec![revert.clone()]).await?;
        // Logged as soon as it is durable, before anything that awaits: a node killed later
        // still leaves the reason for the revert it stored (the chaos checker reads it).
        warn!(generation = %target, revert = %revert, trigger, reason = %reason_text, "reverted");
        self.note_revert(target, Some(reason_text.clone()));
        self.log.revert(&revert);
        // An operator's rollback is swept to every live peer, like a new change; a quorum's
        // revert is written by every node that sees the quorum, each pushing on first write.
        self.push(vec![revert.clone()], Vec::new(), None, matches!(cause, Cause::Rollback));
        self.take_effect(std::slice::from_ref(&revert)).await;
        // As for a new change: every live peer exchanges gossip with us now, learns our
        // reverts summary, and pulls what the push has not brought it yet.
        self.parts.gossip.nudge_live_peers().await;
        self.parts.metrics.reverts.get_or_create(&reason(trigger)).inc();
        self.parts.gossip.publish_revert_cause(target, trigger).await;
        let names: Vec<String> = reporting.iter().map(ToString::to_string).collect();
        let kpis = self.parts.gossip.kpis_of(&reporting).await;
        self.parts.alerts.raise(Alert {
            kind: AlertKind::Revert,
            node: self.parts.name.to_string(),
            generation: target.to_string(),
            trigger: Some(trigger),
            reason: reason_text,
            reporting_nodes: names,
            kpis,
            at_ms: clock::unix_ms(),
        });
        Ok(())
    }

    /// Stores and applies reverts from peer `from`; returns how many were new.
    pub(super) async fn ingest_reverts(&mut self, reverts: Vec<Revert>, from: Option<SocketAddr>) -> usize {
        let mut new: BTreeMap<GenId, Revert> = BTreeMap::new();
        for revert in reverts.into_iter().filter(|r| !self.log.is_reverted(&r.target)) {
            new.insert(revert.target.clone(), revert);
        }
        if new.is_empty() {
            return 0;
        }
        let new: Vec<Revert> = new.into_values().collect();
        // Forwarded before our own commit, as generations are (`Engine::ingest`).
        self.push(new.clone(), Vec::new(), from, false);
        if let Err(error) = self.store_reverts(new.clone()).await {
            let generations: Vec<String> = new.iter().map(|r| r.target.to_string()).collect();
            error!(%error, ?generations, "could not store reverts from a peer; they will be pulled again");
            return 0;
        }
        for revert in &new {
            self.deferred_reverts.remove(&revert.target);
            self.note_revert(&revert.target, None);
            self.log.revert(revert);
            info!(generation = %revert.target, revert = %revert, "revert received");
        }
        self.parts.metrics.reverts.get_or_create(&reason("received")).inc_by(new.len() as u64);
        let count = new.len();
        self.take_effect(&new).await;
        count
    }

    /// Reverts just added to the log: stop judging their targets and refold both states
    /// without them.
    async fn take_effect(&mut self, reverts: &[Revert]) {
        for revert in reverts {
            self.parts.health.freeze(&revert.target);
        }
        self.refold().await;
    }

    async fn store_reverts(&self, reverts: Vec<Revert>) -> Result<(), StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || store.put_reverts(&reverts)).await.expect("store task panicked")
    }
}
