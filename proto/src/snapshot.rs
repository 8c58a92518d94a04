//! Snapshots: old generations folded into the winning write of each key.
//!
//! Compaction moves generations out of the log into the snapshot once every live node holds
//! them. A snapshot records which generations it covers (a version vector) and, per key, the
//! write that wins among them. Absorbing a write keeps the later in `(hlc, origin, seq)`
//! order, so snapshots merge like the fold itself: in any order, to the same result, and
//! `fold_from(snapshot, rest)` equals the fold of every generation.
//!
//! - `Write { op, generation, hlc, proof }`: `proof` is the generation's signed change
//!   (`WriteProof`: its change, the operator's `signing::Signed` on it and its terms), where it
//!   had one; `trust.rs` checks it. `absorb_write` keeps the later write; `absorb` folds in a
//!   generation's writes; `cover` covers a reverted generation without any.
//! - A snapshot serializes as `SnapshotParts { covers, writes }`; decoding rebuilds the map through
//!   `Snapshot::from_parts`.
//!
//! A snapshot is data below the log, which holds one: which generations may be compacted, and
//! the invariant that compaction keeps, are `log.rs`'s (`compactable`, `Log::compact`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hlc::Stamp;
use crate::model::{Change, Generation, Op, Terms, VersionVector};
use crate::name::{GenId, Key};
use crate::signing::Signed;

/// The winning write of one key: the operation, and the generation that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub op: Op,
    pub generation: GenId,
    pub hlc: Stamp,
    /// The generation's signed change, where it had one (format 5 on): a node that requires
    /// signatures takes a peer's snapshot only with every write proven.
    pub proof: Option<Box<WriteProof>>,
}

impl Write {
    fn order_key(&self) -> (Stamp, &GenId) {
        (self.hlc, &self.generation)
    }
}

/// A write in a snapshot with what makes it trusted: the whole change its generation carried
/// and the operator's signature on it (a signature covers the change, not one operation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteProof {
    pub change: Change,
    pub signed: Signed,
    /// The generation's terms, where it had any (format 7 on): its scheduled start, which the
    /// signature covers, and its approvals.
    pub terms: Option<Box<Terms>>,
}

/// Generations folded away: what they cover and what they left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    covers: VersionVector,
    writes: BTreeMap<(&'static str, Key), Write>,
}

impl Snapshot {
    /// Every generation up to these seqs is folded in.
    pub fn covers(&self) -> &VersionVector {
        &self.covers
    }

    /// The winning writes, one per key.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.writes.values()
    }

    pub fn is_empty(&self) -> bool {
        self.covers.iter().next().is_none()
    }

    /// Folds one generation in. The caller keeps `covers` contiguous (see [`Log::compact`]).
    ///
    /// [`Log::compact`]: crate::Log::compact
    pub fn absorb(&mut self, generation: &Generation) {
        let body = &generation.body;
        let proof = body.signed.as_ref().map(|signed| {
            let (change, signed, terms) = (body.change.clone(), (**signed).clone(), body.terms.clone());
            Box::new(WriteProof { change, signed, terms })
        });
        for op in &body.change.ops {
            let (op, generation, proof) = (op.clone(), body.id.clone(), proof.clone());
            self.absorb_write(Write { op, generation, hlc: body.hlc, proof });
        }
        self.covers.raise(body.id.origin.clone(), body.id.seq);
    }

    /// Covers a generation that leaves no write (a reverted one). The caller keeps `covers`
    /// contiguous, as for [`Snapshot::absorb`].
    pub fn cover(&mut self, id: &GenId) {
        self.covers.raise(id.origin.clone(), id.seq);
    }

    /// Keeps `write` if it is the latest for its key.
    pub fn absorb_write(&mut self, write: Write) {
        let slot = (write.op.kind(), write.op.key().clone());
        match self.writes.get(&slot) {
            Some(existing) if existing.order_key() >= write.order_key() => {}
            _ => {
                self.writes.insert(slot, write);
            }
        }
    }

    /// The join of two snapshots: every write's latest, and the union of what they cover.
    pub fn merge(&mut self, other: &Snapshot) {
        for write in other.writes() {
            self.absorb_write(write.clone());
        }
        self.covers.merge(&other.covers);
    }

    /// A snapshot from its parts, as received from a peer or read from disk.
    pub fn from_parts(covers: VersionVector, writes: impl IntoIterator<Item = Write>) -> Snapshot {
        let mut snapshot = Snapshot { covers, writes: BTreeMap::new() };
        for write in writes {
            snapshot.absorb_write(write);
        }
        snapshot
    }
}

/// The encoded form of a [`Snapshot`] (its map key is derived from each write).
#[derive(Serialize, Deserialize)]
struct SnapshotParts {
    covers: VersionVector,
    writes: Vec<Write>,
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SnapshotParts { covers: self.covers.clone(), writes: self.writes().cloned().collect() }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = SnapshotParts::deserialize(deserializer)?;
        Ok(Snapshot::from_parts(parts.covers, parts.writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::Log;

    fn put(origin: &str, seq: u64, wall_ms: u64) -> Generation {
        crate::testing::put(origin, seq, wall_ms, &format!("k{}", seq % 3), &seq.to_string())
    }

    fn log_of(count: u64) -> Log {
        let mut log = Log::new();
        for seq in 1..=count {
            log.insert(put("a", seq, seq * 1_000));
        }
        log
    }

    #[test]
    fn snapshots_round_trip_and_merge_in_any_order() {
        let mut left = log_of(6);
        left.compact(|g| g.id().seq <= 4);
        let mut right = Log::new();
        right.insert(put("b", 1, 4_500));
        right.compact(|_| true);
        let bytes = crate::wire::encode(left.base());
        let decoded: Snapshot = crate::wire::decode(&bytes, "snapshot").unwrap();
        assert_eq!(&decoded, left.base());
        let mut one = left.base().clone();
        one.merge(right.base());
        let mut other = right.base().clone();
        other.merge(left.base());
        assert_eq!(one, other);
        crate::validate::validate_snapshot(&one).unwrap();
    }
}
