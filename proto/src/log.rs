//! The log: the grow-only set of every generation a node knows, and its version vector.
//!
//! Merge is set union keyed by [`GenId`], so it is commutative, associative and idempotent:
//! nodes that have seen the same generations hold the same log, whatever the order. The log
//! also holds the reverts (a grow-only set keyed by their target, so it too merges by union):
//! a reverted generation never counts in the state again.
//! A version vector summarises the log as `origin -> highest contiguous seq`; a peer whose
//! vector is ahead of ours on any origin has generations we lack.
//!
//! - `Log` is the generations held whole (a map `GenId -> Generation`), `base()`, the `Snapshot` of
//!   the generations compacted away, and the reverts it holds (a set of target ids, kept for good).
//!   `len()` and `iter()` see only the generations held whole.
//! - `revert(r)` adds a revert, of a generation held or not, and answers whether it was new;
//!   `is_reverted(id)` and `reverts()` read the set. `reverts_digest()` summarises it as
//!   `count.hash` (the count, a dot, and 16 hex digits of a SHA-256 over the targets in order): the
//!   value of the `reverts` gossip key.
//! - The log knows nothing of what its values mean: its fold into the desired and the applied
//!   state (`Log::state`, which parses flags) is `state.rs`'s, above it.
//! - Two indexes follow the generations held whole: `in_fold_order()` walks them in `(hlc, origin,
//!   seq)` order (`.rev()`: newest first, for history) and `with_controls()` walks the few that
//!   carry rollout controls (for the engine's `controls_of`), so neither sorts nor scans the log.
//! - `merge` is set union: it takes the other log's reverts, absorbs its snapshot, then inserts its
//!   generations. `insert` answers `InsertOutcome` (`Inserted`, `Duplicate`, `Conflict`), and
//!   `Duplicate` for an id the snapshot covers: its content can no longer be compared.
//! - `compact(eligible)` moves generations into the snapshot, oldest first per origin, stopping at
//!   the first one `eligible` refuses, so the snapshot covers a contiguous prefix of each origin. A
//!   reverted generation is covered without its write (`Snapshot::cover`): only its place in the
//!   vector remains. `absorb_snapshot(snapshot)` joins a peer's (or the stored) snapshot with ours
//!   and drops what it covers. `needs_snapshot(theirs)` is true when a peer lacks generations that
//!   only the snapshot still holds.
//! - The log's `version_vector()` (a `model::VersionVector`) maps each origin to its highest
//!   contiguous seq, counting the snapshot. `next_seq(origin)` is one past the highest seq the origin has used, held whole or compacted;
//!   `missing_from(theirs)` returns the generations held whole that a peer lacks.
//! - `tallies()` summarises, per origin, the generations held whole between the snapshot and the
//!   version vector (`Tally`: that range and a sum of their content hashes). Two logs whose tallies
//!   of one origin cover the same range but differ hold some id of it with other content: a
//!   conflict no version vector shows (the `vh.` gossip key; D84).
//! - `compactable(log, retention, now_ms, peers)` is the compaction rule: a generation may go when
//!   it is at least `Retention::age_ms` old (its stamp against `now_ms`), is not among the newest
//!   `Retention::generations` held whole, and every vector in `peers` (the live peers') covers it.
//!
//! **Architecture Invariant:** compaction never removes a generation a live peer lacks, by the
//! peers' advertised version vectors, and never changes the state: `Log::state` gives the same
//! fold, reverted generations left out, before and after (proptest
//! `compaction_keeps_the_state_and_the_vector`, over logs with reverts).
//!
//! **Architecture Invariant:** the reverts are a grow-only set keyed by their target. `Log::revert`
//! only adds, `Log::merge` takes the union, compaction keeps every revert, and the store never
//! deletes one (table `reverts`). A revert is derived from its target alone, so there is at most
//! one revert per generation in any log, whoever wrote it and however often it arrives (test
//! `a_revert_written_anywhere_in_any_order_is_one_revert_and_the_state_falls_back`; the merge and
//! compaction proptests, `merge_is_commutative`, `merge_is_associative`, `merge_is_idempotent`,
//! `any_interleaving_with_duplicates_gives_one_log`, `a_peer_gets_exactly_what_it_lacks`,
//! `compaction_keeps_the_state_and_the_vector` and `a_peer_behind_the_snapshot_catches_up_from_it`,
//! draw logs with reverts).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::hlc::Stamp;
use crate::model::{Generation, Revert, VersionVector};
use crate::name::{GenId, NodeName};
use crate::snapshot::Snapshot;

/// The generations a log holds whole of one origin, summarised: the seqs `after + 1 ..= through`
/// (the snapshot's cover to the version vector, all held whole) and the wrapping sum of the
/// first 8 bytes of their content hashes. Logs whose tallies of an origin have the same range
/// and another sum hold some id of it with other content. Written `after-through.sum` (the sum
/// in 16 hex digits), the value of the `vh.<origin>` gossip key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub after: u64,
    pub through: u64,
    pub sum: u64,
}

impl Tally {
    /// True when both tallies cover the same range with other content in it.
    pub fn contradicts(&self, other: &Tally) -> bool {
        (self.after, self.through) == (other.after, other.through) && self.sum != other.sum
    }

    fn add(&mut self, generation: &Generation) {
        let (first, _) = generation.hash.0.split_first_chunk::<8>().expect("a content hash has 32 bytes");
        self.sum = self.sum.wrapping_add(u64::from_be_bytes(*first));
        self.through = generation.id().seq;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}.{:016x}", self.after, self.through, self.sum)
    }
}

impl std::str::FromStr for Tally {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a tally `after-through.sum` (sum in 16 hex digits), found {text:?}");
        let (range, sum) = text.split_once('.').ok_or_else(expected)?;
        let (after, through) = range.split_once('-').ok_or_else(expected)?;
        let (after, through) = (after.parse().map_err(|_| expected())?, through.parse().map_err(|_| expected())?);
        if sum.len() != 16 || after > through {
            return Err(expected());
        }
        let sum = u64::from_str_radix(sum, 16).map_err(|_| expected())?;
        Ok(Tally { after, through, sum })
    }
}

/// What [`Log::insert`] did with a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The generation is new to this log.
    Inserted,
    /// The same generation (same id and hash) was already there.
    Duplicate,
    /// Another generation with the same id but different content is there; it was kept.
    /// Only a node that lost its store and reused sequence numbers causes this.
    Conflict,
}

/// Every generation a node knows: those still held whole, and the snapshot of those
/// compacted away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    generations: BTreeMap<GenId, Generation>,
    version_vector: VersionVector,
    base: Snapshot,
    /// Targets of the reverts this log holds; kept for good (a few bytes each), so a peer that
    /// still holds a target whole always learns it is reverted.
    reverts: BTreeSet<GenId>,
    /// The ids of `generations` in fold order `(hlc, origin, seq)`: the newest or oldest are
    /// found without sorting the whole log (history, the gates of a new generation).
    order: BTreeSet<(Stamp, GenId)>,
    /// The ids of the `generations` that carry rollout controls: few, and folded whole
    /// whenever a gate is looked at.
    with_controls: BTreeSet<GenId>,
    /// Per origin, the generations held whole up to the version vector, summarised.
    tallies: BTreeMap<NodeName, Tally>,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    /// Generations held whole (not compacted).
    pub fn len(&self) -> usize {
        self.generations.len()
    }

    /// The snapshot of the generations compacted away.
    pub fn base(&self) -> &Snapshot {
        &self.base
    }

    pub fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }

    pub fn get(&self, id: &GenId) -> Option<&Generation> {
        self.generations.get(id)
    }

    pub fn version_vector(&self) -> &VersionVector {
        &self.version_vector
    }

    /// Per origin, what this log holds whole of it up to the version vector ([`Tally`]).
    pub fn tallies(&self) -> &BTreeMap<NodeName, Tally> {
        &self.tallies
    }

    /// Generations in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Generation> {
        self.generations.values()
    }

    /// Generations in fold order `(hlc, origin, seq)`; `.rev()` gives the newest first.
    pub fn in_fold_order(&self) -> impl DoubleEndedIterator<Item = &Generation> {
        self.order.iter().filter_map(|(_, id)| self.generations.get(id))
    }

    /// The generations that carry rollout controls, in id order.
    pub fn with_controls(&self) -> impl Iterator<Item = &Generation> {
        self.with_controls.iter().filter_map(|id| self.generations.get(id))
    }

    /// Adds the revert of a generation (held or not); true when it is new.
    pub fn revert(&mut self, revert: &Revert) -> bool {
        self.reverts.insert(revert.target.clone())
    }

    pub fn is_reverted(&self, id: &GenId) -> bool {
        self.reverts.contains(id)
    }

    /// The reverts held, in target order.
    pub fn reverts(&self) -> impl Iterator<Item = Revert> + '_ {
        self.reverts.iter().map(Revert::of)
    }

    /// A short summary of the reverts held: their count and a hash of their targets. Equal
    /// summaries mean (but for a hash collision) the same reverts.
    pub fn reverts_digest(&self) -> String {
        self.reverts_digest_with([])
    }

    /// The summary the reverts held would have with the reverts of `more` added (a node
    /// forwards reverts before it holds them).
    pub fn reverts_digest_with<'a>(&'a self, more: impl IntoIterator<Item = &'a GenId>) -> String {
        let mut targets: BTreeSet<&GenId> = self.reverts.iter().collect();
        targets.extend(more);
        let mut hasher = Sha256::new();
        for target in &targets {
            hasher.update(target.origin.as_str().as_bytes());
            hasher.update([0]);
            hasher.update(target.seq.to_be_bytes());
        }
        let hash = hex::encode(&hasher.finalize()[..8]);
        format!("{}.{hash}", targets.len())
    }

    /// The next sequence number for a generation accepted by `origin`: one past the highest
    /// it has used, contiguous or not.
    pub fn next_seq(&self, origin: &NodeName) -> u64 {
        let first = GenId { origin: origin.clone(), seq: 0 };
        let last = GenId { origin: origin.clone(), seq: u64::MAX };
        let held = self.generations.range(first..=last).next_back().map_or(0, |(id, _)| id.seq);
        held.max(self.base.covers().get(origin)) + 1
    }

    /// Adds one generation. The caller has verified its hash.
    pub fn insert(&mut self, generation: Generation) -> InsertOutcome {
        if self.base.covers().covers(generation.id()) {
            // Folded into the snapshot already; its content cannot be compared any more.
            return InsertOutcome::Duplicate;
        }
        if let Some(existing) = self.generations.get(generation.id()) {
            return if existing.hash == generation.hash { InsertOutcome::Duplicate } else { InsertOutcome::Conflict };
        }
        let origin = generation.id().origin.clone();
        self.order.insert((generation.body.hlc, generation.id().clone()));
        if !generation.body.change.controls.is_empty() {
            self.with_controls.insert(generation.id().clone());
        }
        self.generations.insert(generation.id().clone(), generation);
        self.advance(origin);
        InsertOutcome::Inserted
    }

    /// Takes a generation out of the log and its indexes (it went into the snapshot).
    fn remove(&mut self, id: &GenId) -> Option<Generation> {
        let generation = self.generations.remove(id)?;
        self.order.remove(&(generation.body.hlc, id.clone()));
        self.with_controls.remove(id);
        Some(generation)
    }

    /// Set union: every generation and revert of `other` that this log lacks, and its snapshot.
    pub fn merge(&mut self, other: &Log) {
        self.reverts.extend(other.reverts.iter().cloned());
        self.absorb_snapshot(&other.base);
        for generation in other.iter() {
            self.insert(generation.clone());
        }
    }

    /// Takes in a snapshot (from a peer, or read from disk): joins it with ours and drops the
    /// generations it covers. Returns the ids dropped.
    pub fn absorb_snapshot(&mut self, snapshot: &Snapshot) -> Vec<GenId> {
        if snapshot.is_empty() {
            return Vec::new();
        }
        self.base.merge(snapshot);
        let covered: Vec<GenId> = self.generations.keys().filter(|id| self.base.covers().covers(id)).cloned().collect();
        for id in &covered {
            self.remove(id);
        }
        let origins: Vec<NodeName> = self.base.covers().iter().map(|(origin, _)| origin.clone()).collect();
        for origin in origins {
            self.advance(origin);
        }
        covered
    }

    /// Moves into the snapshot every generation `eligible` accepts, oldest first per origin,
    /// stopping at the first one it refuses (so the snapshot covers a contiguous prefix of
    /// each origin). A reverted generation leaves no write in the snapshot, only its place.
    /// Returns the ids compacted.
    pub fn compact(&mut self, mut eligible: impl FnMut(&Generation) -> bool) -> Vec<GenId> {
        let origins: Vec<NodeName> = self.version_vector.iter().map(|(origin, _)| origin.clone()).collect();
        let mut compacted = Vec::new();
        for origin in origins {
            let mut next = GenId { seq: self.base.covers().get(&origin) + 1, origin: origin.clone() };
            while let Some(generation) = self.generations.get(&next).filter(|g| eligible(g)) {
                if self.reverts.contains(&next) {
                    self.base.cover(&next);
                } else {
                    self.base.absorb(generation);
                }
                self.remove(&next);
                compacted.push(next.clone());
                next.seq += 1;
            }
            self.retally(origin);
        }
        compacted
    }

    /// True when a peer with vector `theirs` lacks generations that only the snapshot still
    /// holds: it must take the snapshot before the generations.
    pub fn needs_snapshot(&self, theirs: &VersionVector) -> bool {
        theirs.is_behind(self.base.covers())
    }

    /// The generations a peer with vector `theirs` lacks, in id order.
    pub fn missing_from<'a>(&'a self, theirs: &'a VersionVector) -> impl Iterator<Item = &'a Generation> + 'a {
        self.generations.values().filter(move |g| g.id().seq > theirs.get(&g.id().origin))
    }

    fn advance(&mut self, origin: NodeName) {
        let mut seq = self.version_vector.get(&origin).max(self.base.covers().get(&origin));
        while self.generations.contains_key(&GenId { origin: origin.clone(), seq: seq + 1 }) {
            seq += 1;
        }
        self.version_vector.raise(origin.clone(), seq);
        self.retally(origin);
    }

    /// Brings the origin's tally up to the version vector: extends it, or counts it again
    /// from the snapshot's cover when that moved (compaction, a peer's snapshot).
    fn retally(&mut self, origin: NodeName) {
        let after = self.base.covers().get(&origin);
        let through = self.version_vector.get(&origin);
        if through == 0 {
            // Nothing of it held contiguously yet (the vector has no entry either).
            return;
        }
        let tally = self.tallies.entry(origin.clone()).or_default();
        if tally.after != after {
            *tally = Tally { after, through: after, sum: 0 };
        }
        if through <= tally.through {
            return;
        }
        let first = GenId { origin: origin.clone(), seq: tally.through + 1 };
        let last = GenId { origin, seq: through };
        for generation in self.generations.range(first..=last).map(|(_, g)| g) {
            debug_assert_eq!(generation.id().seq, tally.through + 1, "held whole and contiguous up to the vector");
            tally.add(generation);
        }
    }
}

/// How much history a node keeps whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many generations are never compacted.
    pub generations: usize,
    /// Generations younger than this (by their stamp, against our clock) are never compacted.
    pub age_ms: u64,
}

/// Which generations of `log` may be compacted now: outside the retention (both its count
/// and its age), and held by every live peer (`peers`: their version vectors), so compaction
/// never drops a generation a live node still lacks.
pub fn compactable<'a>(
    log: &'a Log,
    retention: Retention,
    now_ms: u64,
    peers: &'a [VersionVector],
) -> impl FnMut(&Generation) -> bool + 'a {
    let mut order: Vec<(Stamp, &GenId)> = log.iter().map(Generation::order_key).collect();
    order.sort_unstable();
    // Everything at or after the cutoff is among the newest `retention.generations`.
    let cutoff = order.len().checked_sub(retention.generations).and_then(|index| order.get(index).copied());
    move |generation| {
        let old_enough = now_ms.saturating_sub(generation.body.hlc.wall_ms) >= retention.age_ms;
        let beyond_count = cutoff.is_some_and(|cutoff| generation.order_key() < cutoff);
        old_enough && beyond_count && peers.iter().all(|peer| peer.covers(generation.id()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::state::AppliedState;

    fn generation(origin: &str, seq: u64, wall_ms: u64, value: u8) -> Generation {
        crate::testing::put(origin, seq, wall_ms, "k", &value.to_string())
    }

    fn arb_log() -> impl Strategy<Value = Log> {
        // Some generations, and some reverts (of generations held or not).
        let one = (0..3usize, 1..6u64, proptest::bool::weighted(0.2));
        proptest::collection::vec(one, 0..12).prop_map(|specs| {
            let mut log = Log::new();
            for (origin, seq, reverted) in specs {
                // The same id always carries the same content, as it does in a real cluster.
                let origin = ["a", "b", "c"][origin];
                let generation = generation(origin, seq, seq * 10, seq as u8);
                if reverted {
                    log.revert(&Revert::of(generation.id()));
                } else {
                    log.insert(generation);
                }
            }
            log
        })
    }

    fn merged(a: &Log, b: &Log) -> Log {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_log(), b in arb_log()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_log(), b in arb_log(), c in arb_log()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_log()) {
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn any_interleaving_with_duplicates_gives_one_log(a in arb_log(), seed in any::<u64>()) {
            // Every generation twice, in an order drawn from the seed.
            let mut arrivals: Vec<Generation> = a.iter().chain(a.iter()).cloned().collect();
            let mut random = crate::sim::SplitMix64::new(seed);
            for i in (1..arrivals.len()).rev() {
                arrivals.swap(i, random.below(i + 1));
            }
            let mut log = Log::new();
            for revert in a.reverts() {
                log.revert(&revert);
            }
            for generation in arrivals {
                log.insert(generation);
            }
            prop_assert_eq!(log.version_vector(), a.version_vector());
            prop_assert_eq!(state_of(&log), state_of(&a));
            prop_assert_eq!(log, a);
        }

        #[test]
        fn the_fold_order_index_follows_inserts_and_compaction(a in arb_log(), cut in 0..8u64) {
            let sorted = |log: &Log| {
                let mut all: Vec<Generation> = log.iter().cloned().collect();
                all.sort_by(|x, y| x.order_key().cmp(&y.order_key()));
                all
            };
            let in_order = |log: &Log| log.in_fold_order().cloned().collect::<Vec<_>>();
            prop_assert_eq!(in_order(&a), sorted(&a));
            let mut compacted = a.clone();
            compacted.compact(|g| g.id().seq <= cut);
            prop_assert_eq!(in_order(&compacted), sorted(&compacted));
            let newest: Vec<Generation> = compacted.in_fold_order().rev().cloned().collect();
            let oldest_first = sorted(&compacted);
            prop_assert_eq!(newest.first(), oldest_first.last());
        }

        #[test]
        fn a_peer_gets_exactly_what_it_lacks(a in arb_log(), b in arb_log()) {
            let mut b_after = b.clone();
            for generation in a.missing_from(b.version_vector()) {
                b_after.insert(generation.clone());
            }
            prop_assert!(!b_after.version_vector().is_behind(a.version_vector()));
        }
    }

    fn log_of(count: u64) -> Log {
        let mut log = Log::new();
        for seq in 1..=count {
            log.insert(generation("a", seq, seq * 1_000, seq as u8));
        }
        log
    }

    #[test]
    fn retention_keeps_the_newest_and_the_young() {
        let log = log_of(10);
        let retention = Retention { generations: 4, age_ms: 3_000 };
        let mut all_have = log.version_vector().clone();
        let mut compacted = log.clone();
        let peers = [all_have.clone()];
        let ids = compacted.compact(compactable(&log, retention, 10_000, &peers));
        // 10 generations, the newest 4 kept: seqs 1..=6 may go, all old enough at 10 s.
        assert_eq!(ids.len(), 6);
        assert_eq!(AppliedState::fold_from(compacted.base(), compacted.iter()), AppliedState::fold(log.iter()));
        // At 7 s only generations at least 3 s old (seqs 1..=4) may go.
        let ids = log.clone().compact(compactable(&log, retention, 7_000, &peers));
        assert_eq!(ids.len(), 4);
        // A live peer that lacks seq 3 stops compaction before it.
        all_have = VersionVector::default();
        all_have.raise("a".parse().unwrap(), 2);
        let lagging = [all_have];
        let ids = log.clone().compact(compactable(&log, retention, 10_000, &lagging));
        assert_eq!(ids.len(), 2);
    }

    fn state_of(log: &Log) -> AppliedState {
        log.state(|_| true)
    }

    #[test]
    fn a_revert_written_anywhere_in_any_order_is_one_revert_and_the_state_falls_back() {
        let before = generation("a", 1, 10, 1);
        let bad = generation("b", 1, 20, 2);
        let other_key = crate::testing::put("c", 1, 30, "other", "3");
        // Two nodes decide on their own (different reports, different times): the same revert.
        let (left, right) = (Revert::of(bad.id()), Revert::of(bad.id()));
        assert_eq!(left, right);
        assert_eq!(left.to_string(), "b.1/revert");
        let mut one = Log::new();
        one.insert(before.clone());
        one.insert(bad.clone());
        one.revert(&left);
        one.insert(other_key.clone());
        // The other node hears of the revert before the generation it undoes.
        let mut two = Log::new();
        assert_eq!(two.reverts_digest_with([&right.target]), one.reverts_digest(), "the summary it will have");
        assert_ne!(two.reverts_digest(), one.reverts_digest());
        assert!(two.revert(&right));
        assert!(!two.revert(&right), "a revert is held once");
        for generation in [other_key, bad, before.clone()] {
            two.insert(generation);
        }
        assert_eq!(one, two);
        assert_eq!(one.reverts().count(), 1);
        assert_eq!(one.reverts_digest(), two.reverts_digest());
        let state = state_of(&one);
        let key: crate::Key = "k".parse().unwrap();
        assert_eq!(state.config[&key].generation, *before.id(), "k falls back to the value before");
        assert_eq!(state.config.len(), 2, "the later generation on another key is untouched");
        // Compaction folds the reverted generation away without its write.
        let mut compacted = one.clone();
        compacted.compact(|_| true);
        assert!(compacted.is_empty());
        assert_eq!(state_of(&compacted), state);
    }

    proptest! {
        #[test]
        fn compaction_keeps_the_state_and_the_vector(a in arb_log(), b in arb_log(), cut in 0..8u64) {
            // Compaction waits until every live peer holds the same reverts (D44): `a` holds
            // `b`'s before it compacts.
            let mut a = a;
            for revert in b.reverts() {
                a.revert(&revert);
            }
            let mut compacted = a.clone();
            compacted.compact(|g| g.id().seq <= cut);
            prop_assert_eq!(state_of(&compacted), state_of(&a));
            prop_assert_eq!(compacted.version_vector(), a.version_vector());
            // A compacted log and a whole one merge to the same state, from either side.
            let (whole, mixed) = (merged(&a, &b), merged(&compacted, &b));
            prop_assert_eq!(state_of(&mixed), state_of(&whole));
            prop_assert_eq!(state_of(&merged(&b, &compacted)), state_of(&whole));
            prop_assert_eq!(mixed.version_vector(), whole.version_vector());
        }

        #[test]
        fn a_peer_behind_the_snapshot_catches_up_from_it(a in arb_log(), cut in 0..8u64) {
            let mut server = a.clone();
            server.compact(|g| g.id().seq <= cut);
            let mut peer = Log::new();
            // A pull brings the reverts first, then the snapshot if needed, then generations.
            for revert in server.reverts() {
                peer.revert(&revert);
            }
            if server.needs_snapshot(peer.version_vector()) {
                peer.absorb_snapshot(server.base());
            }
            let missing: Vec<Generation> = server.missing_from(peer.version_vector()).cloned().collect();
            for generation in missing {
                peer.insert(generation);
            }
            prop_assert_eq!(state_of(&peer), state_of(&a));
            prop_assert_eq!(peer.version_vector(), a.version_vector());
        }
    }

    #[test]
    fn version_vector_counts_only_contiguous_seqs() {
        let mut log = Log::new();
        log.insert(generation("a", 1, 1, 1));
        log.insert(generation("a", 3, 3, 3));
        let a: NodeName = "a".parse().unwrap();
        assert_eq!(log.version_vector().get(&a), 1);
        assert_eq!(log.next_seq(&a), 4);
        log.insert(generation("a", 2, 2, 2));
        assert_eq!(log.version_vector().get(&a), 3);
    }

    /// Found by `fuzz/` (`wire_push_ack`, minimized): a peer's vector `{a: u64::MAX, b: 1}`,
    /// whose total overflowed (a panic in a debug build, a wrong count in a release one). The
    /// engine publishes the total of its snapshot's vector, which a peer's snapshot sets.
    #[test]
    fn same_id_with_other_content_is_a_conflict_and_the_first_is_kept() {
        let mut log = Log::new();
        let first = generation("a", 1, 1, 1);
        assert_eq!(log.insert(first.clone()), InsertOutcome::Inserted);
        assert_eq!(log.insert(first.clone()), InsertOutcome::Duplicate);
        assert_eq!(log.insert(generation("a", 1, 1, 9)), InsertOutcome::Conflict);
        assert_eq!(log.get(first.id()), Some(&first));
    }

    /// The tallies counted again from scratch: what `retally` keeps up incrementally.
    fn tallies_from_scratch(log: &Log) -> BTreeMap<NodeName, Tally> {
        let mut tallies = BTreeMap::new();
        for (origin, through) in log.version_vector().iter() {
            let after = log.base().covers().get(origin);
            let mut tally = Tally { after, through: after, sum: 0 };
            for seq in after + 1..=through {
                tally.add(log.get(&GenId { origin: origin.clone(), seq }).expect("held whole up to the vector"));
            }
            tallies.insert(origin.clone(), tally);
        }
        tallies
    }

    proptest! {
        #[test]
        fn tallies_follow_inserts_compaction_and_snapshots(a in arb_log(), b in arb_log(), cut in 0..8u64) {
            prop_assert_eq!(a.tallies(), &tallies_from_scratch(&a));
            let mut compacted = a.clone();
            compacted.compact(|g| g.id().seq <= cut);
            prop_assert_eq!(compacted.tallies(), &tallies_from_scratch(&compacted));
            let mut joined = b.clone();
            joined.merge(&compacted);
            // Logs that hold the same generations tally the same, whatever their order: the
            // merge and interleaving proptests compare whole logs, tallies included.
            prop_assert_eq!(joined.tallies(), &tallies_from_scratch(&joined));
        }
    }

    #[test]
    fn a_conflict_the_vectors_cannot_show_is_a_contradicting_tally() {
        let a: NodeName = "a".parse().unwrap();
        let (mut one, mut two, mut same) = (Log::new(), Log::new(), Log::new());
        for seq in 1..=3 {
            one.insert(generation("a", seq, seq, seq as u8));
            same.insert(generation("a", seq, seq, seq as u8));
            // `two` holds other content under a.1 (a node that lost its store wrote again).
            two.insert(generation("a", seq, seq, if seq == 1 { 9 } else { seq as u8 }));
        }
        assert_eq!(one.version_vector(), two.version_vector(), "no vector tells them apart");
        let (tally, other) = (one.tallies()[&a], two.tallies()[&a]);
        assert!(tally.contradicts(&other));
        assert!(!tally.contradicts(&same.tallies()[&a]));
        assert_eq!(tally, same.tallies()[&a]);
        // A tally of another range says nothing: the log behind catches up first.
        let mut behind = Log::new();
        behind.insert(generation("a", 1, 1, 9));
        assert!(!behind.tallies()[&a].contradicts(&tally));
        // The gossip value reads back, and a malformed one says what was expected.
        assert_eq!(tally.to_string().parse::<Tally>(), Ok(tally));
        assert!(tally.to_string().starts_with("0-3."), "{tally}");
        for bad in ["", "3", "0-3", "0-3.xyz", "3-0.0000000000000000", "0-3.00"] {
            let error = bad.parse::<Tally>().unwrap_err();
            assert!(error.contains("expected a tally `after-through.sum`"), "{error}");
        }
    }
}
