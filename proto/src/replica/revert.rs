//! Reverts: the cluster undoing a generation that hurts, without a human.
//!
//! When the distinct members reporting a generation anomalous reach its policy's anomaly
//! quorum (`rollout::AnomalyQuorum`, over every member this node knows of, live or dead, the
//! worst verdict per name), this node writes its revert. The revert is derived from the
//! generation alone (`Revert::of`), so every node that sees the quorum, on any side of a
//! partition, writes the same one, and every log holds it once. An operator's `rollback`
//! writes the same revert.
//!
//! The writer's gossip (`rv.<generation>`) usually reaches a peer with the very report that
//! completes the quorum there. A node that sees a live member has written the revert waits up
//! to [`REVERT_DEFER_MS`] for it to arrive instead of writing (and spreading) it again: without
//! that, every node writes the revert at once, and the storm of pushes and nudges makes it
//! spread slower than a change. A writer that dies, or whose revert does not arrive, is not
//! waited for longer. A revert that arrives ends the wait.
//!
//! - `judges_revert_of(id)`: held whole and not reverted (the node reads its reports then).
//! - `reverts_due(anomalies, now)`: the generations to revert now, with their quorum.
//! - `revocations_due()`: generations signed by a revoked key and ordered after the
//!   revocation (`trust::revoked_after`), read only once the log revokes a key.
//! - `rollback(target)`: an operator's rollback, checked (`RollbackError`).
//! - `fresh_reverts(reverts)`: the reverts the log lacks, one per target; `add_reverts`, once
//!   they are stored, adds them to the log and refolds both states without their targets.
//!
//! **Architecture Invariant:** a reverted generation is never applied: `release` never releases
//! it, and both states are folds that leave it out (`Log::state`), from the moment the revert
//! is in the log, before or after its target arrives.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Now, Replica};
use crate::report::Report;
use crate::rollout::AnomalyQuorum;
use crate::signing::PublicKey;
use crate::trust::revoked_after;
use crate::{GenId, NodeName, Revert};

/// How long (ms) a node that sees the quorum waits for a revert a live member already wrote,
/// before it writes the revert itself.
pub const REVERT_DEFER_MS: u64 = 1000;

/// What gossip tells of a generation some member reports anomalous.
#[derive(Clone, Debug, Default)]
pub struct Anomaly {
    /// Every member's report on it (live or dead; the worst verdict per name).
    pub reports: BTreeMap<NodeName, Report>,
    /// How many live members (this node excluded) wrote its revert.
    pub live_writers: usize,
}

/// Why this node writes a revert.
#[derive(Clone, Debug, PartialEq)]
pub enum Cause {
    /// It saw the anomaly quorum.
    Quorum(AnomalyQuorum),
    /// An operator asked.
    Rollback,
    /// It was signed by a key revoked before it was stamped.
    Revoked(PublicKey),
}

impl Cause {
    /// What gossip's `rv.` key and the metrics call it.
    pub fn trigger(&self) -> &'static str {
        match self {
            Cause::Quorum(_) => "quorum",
            Cause::Rollback => "rollback",
            Cause::Revoked(_) => "revocation",
        }
    }
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
    Store(String),
    #[error("the node is shutting down")]
    Stopped,
}

impl Replica {
    /// Whether this node decides on `id`'s revert: it holds it whole and has not reverted it.
    pub fn judges_revert_of(&self, id: &GenId) -> bool {
        self.log.get(id).is_some() && !self.log.is_reverted(id)
    }

    /// The generations whose revert this node writes now: their anomaly quorum is reached in
    /// `anomalies`, and no live member wrote the revert, or this node has waited
    /// [`REVERT_DEFER_MS`] for it. Remembers when each wait began.
    pub fn reverts_due(&mut self, anomalies: &BTreeMap<GenId, Anomaly>, now: Now) -> Vec<(GenId, AnomalyQuorum)> {
        let mut due = Vec::new();
        for (id, anomaly) in anomalies {
            let Some(generation) = self.log.get(id) else { continue };
            if self.log.is_reverted(id) {
                continue;
            }
            let quorum = AnomalyQuorum::of(&generation.body.change.policy, &anomaly.reports);
            if !quorum.reached() {
                continue;
            }
            let since = *self.deferred_reverts.entry(id.clone()).or_insert(now.mono_ms);
            if anomaly.live_writers > 0 && now.mono_ms.saturating_sub(since) < REVERT_DEFER_MS {
                continue;
            }
            self.deferred_reverts.remove(id);
            due.push((id.clone(), quorum));
        }
        due
    }

    /// When the first deferred revert's wait ends (monotonic ms).
    pub fn next_revert_deadline(&self) -> Option<u64> {
        self.deferred_reverts.values().map(|since| since + REVERT_DEFER_MS).min()
    }

    /// Whether a revert waits for a live member's copy to arrive.
    pub fn defers_reverts(&self) -> bool {
        !self.deferred_reverts.is_empty()
    }

    /// The generations signed by a revoked key and ordered after its revocation. The rule
    /// reads only the log, so every node that holds the revocation and the generation writes
    /// the same revert; a node that lacks the revocation learns the revert itself.
    pub fn revocations_due(&self) -> Vec<(GenId, PublicKey)> {
        if !self.holds_revocations {
            // No key revoked: nothing to find, and no need to read the whole log to know it.
            return Vec::new();
        }
        revoked_after(&self.log)
    }

    /// Checks an operator's rollback of `target`: `Ok(None)` when it is already reverted
    /// (nothing to write), `Ok(Some(revert))` for the revert to write.
    pub fn rollback(&self, target: &GenId) -> Result<Option<Revert>, RollbackError> {
        if self.log.is_reverted(target) {
            return Ok(None);
        }
        match self.log.get(target) {
            Some(generation) if generation.body.change.ops.is_empty() => Err(RollbackError::Control(target.clone())),
            Some(_) => Ok(Some(Revert::of(target))),
            None if self.log.base().covers().covers(target) => Err(RollbackError::Compacted(target.clone())),
            None => Err(RollbackError::NotFound(target.clone())),
        }
    }

    /// The reverts of `reverts` the log lacks, one per target, in target order.
    pub fn fresh_reverts(&self, reverts: Vec<Revert>) -> Vec<Revert> {
        let mut fresh: BTreeMap<GenId, Revert> = BTreeMap::new();
        for revert in reverts.into_iter().filter(|r| !self.log.is_reverted(&r.target)) {
            fresh.insert(revert.target.clone(), revert);
        }
        fresh.into_values().collect()
    }

    /// Commits `reverts`, once stored: into the log, ending any wait for them, and both states
    /// refolded without their targets.
    pub fn add_reverts(&mut self, reverts: &[Revert]) {
        for revert in reverts {
            self.deferred_reverts.remove(&revert.target);
            self.log.revert(revert);
        }
        self.refold();
    }
}
