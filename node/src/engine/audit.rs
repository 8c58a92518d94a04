//! The engine's side of the audit trail: the records of the entries a sink has not written
//! (`audit_batch`, for `audit::run`) and of the newest generations (`audit_history`, for
//! `history --format jsonl`), built by `proto::audit::records` over the log the engine owns.
//!
//! A revert's record takes what only this node knows from `RevertNote`s: when it stored the
//! revert (`at`), and the reason when it wrote it; and from gossip who wrote it (`rv.` keys,
//! `reverted_by`). Notes are kept for the last `MAX_REVERT_NOTES` reverts since start.

use std::collections::BTreeSet;

use grapevine_proto::GenId;
use grapevine_proto::VersionVector;
use grapevine_proto::audit::{Cursor, Record, records, rfc3339_ms};

use super::{Engine, HistoryFilter};

/// Reverts whose time and reason this node remembers: a few bytes each, and a sink writes a
/// revert's record moments after it is stored.
pub(super) const MAX_REVERT_NOTES: usize = 4096;

/// What this node knows of a revert beyond the revert itself.
#[derive(Clone, Debug)]
pub(super) struct RevertNote {
    /// When this node stored it (its wall clock).
    pub at_ms: u64,
    /// Why, when this node wrote it (`quorum: ...`, `operator rollback on n1`, ...).
    pub reason: Option<String>,
}

/// The records of entries a cursor lacks, and which entries they are.
#[derive(Debug, Default)]
pub struct AuditBatch {
    pub records: Vec<Record>,
    /// The generations written in this batch.
    pub generations: Vec<GenId>,
    /// The targets of the reverts written in this batch.
    pub reverts: Vec<GenId>,
    /// What the snapshot covers: generations no longer held whole, which no record can show.
    pub compacted: VersionVector,
}

impl Engine {
    /// Notes a revert this node stored now, with the reason when it wrote it.
    pub(super) fn note_revert(&mut self, target: &GenId, reason: Option<String>) {
        let at_ms = super::now_ms(self.parts.clock_skew_ms);
        self.revert_notes.insert(target.clone(), RevertNote { at_ms, reason });
        while self.revert_notes.len() > MAX_REVERT_NOTES {
            self.revert_notes.pop_first();
        }
    }

    /// Up to `limit` records of entries `cursor` lacks: generations first, then reverts.
    pub(super) async fn audit_batch(&self, cursor: &Cursor, limit: usize) -> AuditBatch {
        let generations: BTreeSet<GenId> = self
            .replica
            .log()
            .missing_from(&cursor.through)
            .map(|g| g.id().clone())
            .filter(|id| !cursor.beyond.contains(id))
            .take(limit)
            .collect();
        let room = limit - generations.len();
        let reverts: Vec<GenId> =
            self.replica.log().reverts().map(|r| r.target).filter(|t| !cursor.reverts.contains(t)).take(room).collect();
        let records = self.records(&generations, &reverts).await;
        let compacted = self.replica.log().base().covers().clone();
        AuditBatch { records, generations: generations.into_iter().collect(), reverts, compacted }
    }

    /// The records of the newest `limit` generations `shown` accepts, oldest first, then of the
    /// reverts of those among them that are reverted.
    pub(super) async fn audit_history(&self, limit: usize, shown: HistoryFilter) -> Vec<Record> {
        let newest = self.replica.log().in_fold_order().rev().filter(|g| shown(g)).take(limit);
        let generations: BTreeSet<GenId> = newest.map(|g| g.id().clone()).collect();
        let reverts: Vec<GenId> = generations.iter().filter(|id| self.replica.log().is_reverted(id)).cloned().collect();
        self.records(&generations, &reverts).await
    }

    async fn records(&self, generations: &BTreeSet<GenId>, reverts: &[GenId]) -> Vec<Record> {
        let mut built = records(self.replica.log(), self.parts.name.as_str(), generations, reverts);
        for record in built.iter_mut() {
            let Some(target) = record.target.as_deref().and_then(|t| t.parse::<GenId>().ok()) else { continue };
            record.reverted_by = Some(self.parts.gossip.revert_causes(&target).await);
            if let Some(note) = self.revert_notes.get(&target) {
                record.at = Some(rfc3339_ms(note.at_ms));
                record.at_ms = Some(note.at_ms);
                record.reason = note.reason.clone();
            }
        }
        built
    }
}
