//! Compaction, peers' snapshots, and the end of a recovery.
//!
//! - `compaction(peers, reverts_settled, now)`: the log with the generations outside the
//!   retention that every live peer holds folded into its snapshot (`log::compactable`
//!   over the live peers' advertised vectors), and which they are. Only what this node applied
//!   folds away (the snapshot is applied state); a reverted generation takes the place of a
//!   released one, folded away (leaving no write) once every live peer's reverts summary
//!   equals this node's (`reverts_settled`), so a peer that lacks the revert can still learn it
//!   with its target whole. A control stays whole while its target is held whole, and a
//!   pending proposal and its approvals stay whole (`approvals::pinned`).
//! - `absorb(snapshot, now)`: a peer's snapshot the log is behind, refused whole when a write
//!   is stamped beyond the maximum clock offset or its operator's proof fails.
//! - `commit_compaction(log, covered)` and `commit_absorbed(log, covered)`, once the store wrote
//!   the snapshot and deleted the covered generations in one transaction: the replica takes
//!   `log` (and, for a peer's snapshot, refolds both states).
//! - `caught_up(peers, now)`: a node recovering from a damaged store serves again once, for
//!   [`RECOVERY_SETTLE_MS`] on end, live peers' log summaries are known and none is ahead of
//!   its log: a peer whose summary has not arrived yet, or that is about to pull from the
//!   others, must not pass for one that holds nothing more.
//!
//! **Architecture Invariant:** only released or reverted generations are compacted, and a
//! reverted one leaves no write, so the snapshot holds only applied writes and `state` =
//! fold(snapshot, released but not reverted) is unchanged by compaction.

use super::{Now, Replica};
use crate::hlc::ClockError;
use crate::log::compactable;
use crate::signing::SigningError;
use crate::{GenId, Generation, Log, Snapshot, VersionVector};

/// How long (ms) a node recovering from a damaged store must see every live peer's log summary
/// and none ahead of its own before it serves again: a few gossip rounds at the default 1 s.
pub const RECOVERY_SETTLE_MS: u64 = 3000;

/// A change compacts at once only when the log holds a batch of this share of the retention
/// (a tenth) beyond it. Each compaction copies and rewrites the whole snapshot (all of the
/// state): done for every change past the retention, that made a write at the default
/// retention cost 2.7x one on a fresh node. The periodic check compacts a smaller excess.
const COMPACTION_BATCH_DIVISOR: usize = 10;

/// What `absorb` decided about a peer's snapshot.
#[derive(Debug)]
pub enum Absorbed {
    /// It covers nothing this log lacks.
    Nothing,
    /// A write is stamped too far ahead of this node's clock (taken once the clock catches up).
    Ahead(ClockError),
    /// A write's operator proof fails.
    Unproven(SigningError),
    /// The log with the snapshot absorbed, and the generations it covers: to store, then
    /// `commit_snapshot`.
    Log(Log, Vec<GenId>),
}

impl Replica {
    /// Whether the log is a batch past the retention, so a change should compact at once.
    pub fn over_retention_batch(&self) -> bool {
        let retention = self.config.retention.generations;
        self.log.len() > retention + retention / COMPACTION_BATCH_DIVISOR
    }

    /// The log with what may be compacted now folded into its snapshot, and the generations
    /// that folded; `None` when none may. `peers` are the live peers' version vectors;
    /// `reverts_settled` whether every live peer holds the same reverts as this node.
    pub fn compaction(&self, peers: &[VersionVector], reverts_settled: bool, now: Now) -> Option<(Log, Vec<GenId>)> {
        if self.log.len() <= self.config.retention.generations {
            // Every generation is among the newest `retention.generations`: none may go.
            return None;
        }
        let mut compacted = self.log.clone();
        let mut eligible = compactable(&self.log, self.config.retention, now.wall_ms, peers);
        let (released, log) = (&self.released, &self.log);
        let controls_live = |g: &Generation| g.body.change.controls.iter().any(|c| log.get(c.target()).is_some());
        let settled =
            |g: &Generation| if log.is_reverted(g.id()) { reverts_settled } else { released.contains(g.id()) };
        let pinned = crate::approvals::pinned(log, now.wall_ms);
        let covered = compacted.compact(|g| settled(g) && !controls_live(g) && !pinned.contains(g.id()) && eligible(g));
        (!covered.is_empty()).then_some((compacted, covered))
    }

    /// Checks a peer's snapshot ([`Absorbed`]); the stamps of its writes are observed on the
    /// replica's clock when it is taken.
    pub fn absorb(&mut self, snapshot: &Snapshot, now: Now) -> Absorbed {
        if !self.log.version_vector().is_behind(snapshot.covers()) {
            return Absorbed::Nothing;
        }
        let mut clock = self.clock.clone();
        if let Some(refusal) = snapshot.writes().find_map(|write| clock.observe(write.hlc, now.wall_ms).err()) {
            return Absorbed::Ahead(refusal);
        }
        let trust = &self.config.trust;
        let unproven =
            snapshot.writes().find_map(|w| trust.check_write(&w.op, &w.generation, w.hlc, w.proof.as_deref()).err());
        if let Some(refusal) = unproven {
            return Absorbed::Unproven(refusal);
        }
        self.clock = clock;
        let mut absorbed = self.log.clone();
        let covered = absorbed.absorb_snapshot(snapshot);
        Absorbed::Log(absorbed, covered)
    }

    /// Commits `log` from `compaction` once the store holds its snapshot and has deleted
    /// `covered`. The states do not change: only applied writes fold.
    pub fn commit_compaction(&mut self, log: Log, covered: &[GenId]) {
        self.pending.retain(|(_, id), _| !covered.contains(id));
        self.log = log;
    }

    /// Commits `log` from `absorb` once the store holds its snapshot and has deleted
    /// `covered`; both states are refolded (the snapshot may hold writes not applied here).
    pub fn commit_absorbed(&mut self, log: Log, covered: &[GenId]) {
        self.commit_compaction(log, covered);
        self.refold();
    }

    /// Whether a recovering node may serve again now (see the module doc); `peers` are the live
    /// peers' version vectors known so far.
    pub fn caught_up(&mut self, peers: &[VersionVector], now: Now) -> bool {
        let ours = self.settled();
        if peers.is_empty() || peers.iter().any(|theirs| ours.is_behind(theirs)) {
            self.caught_up_since = None;
            return false;
        }
        let since = *self.caught_up_since.get_or_insert(now.mono_ms);
        now.mono_ms.saturating_sub(since) >= RECOVERY_SETTLE_MS
    }

    /// Ends the recovery: the node serves reads and takes changes again.
    pub fn end_recovery(&mut self) {
        self.recovering = None;
    }
}
