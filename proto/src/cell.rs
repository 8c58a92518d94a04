//! Cells: a fleet is cells joined by a backbone (`docs/protocol.md`, "Cells"; decision D90).
//!
//! A cell is one gossip cluster as a flat fleet is today: membership, failure detection,
//! reports and releases stay inside it. A few of its members, its representatives, also talk to
//! the other cells' representatives; generations and reverts cross cells through them.
//!
//! Everything here is a pure function of names, so every node that sees the same members draws
//! the same answer, with no coordination:
//!
//! - [`representatives`]: a cell's first `k` live members by rendezvous hashing (SHA-256 of the
//!   cell's name and the member's), so that a representative that dies is replaced by the next
//!   in rank and no other moves.
//! - [`entry`]: of a cell's representatives, the one a generation enters and leaves the cell
//!   through: the lowest in the generation's push rank (`push::rank`), so that different
//!   generations spread the load over the representatives.
//! - [`backbone_order`]: a generation's tree over the cells, rooted at its origin's cell, laid
//!   out as `push` lays out a cell's tree (`push::children_at` gives a cell's children).
//!
//! The hashes are SHA-256, never the standard library's hasher, so that nodes built by
//! different compiler versions agree.

use crate::name::{CellName, GenId, NodeName};
use crate::push;

/// The cell of a node that names none: a fleet of one cell, and the cell an existing cluster
/// becomes when cells are added beside it (its gossip keeps the cluster's id).
pub const DEFAULT_CELL: &str = "default";

/// The cell named [`DEFAULT_CELL`].
pub fn default_cell() -> CellName {
    DEFAULT_CELL.parse().expect("the default cell's name is valid")
}

/// Representatives per cell unless configured: one may die and one may be cut off while a
/// third still carries the cell's traffic.
pub const REPRESENTATIVES: usize = 3;

/// Where `member` stands among `cell`'s candidates for representative: the first 8 bytes of
/// SHA-256 over the cell's name, a zero byte and the member's name.
pub fn rendezvous_rank(cell: &CellName, member: &NodeName) -> [u8; 8] {
    push::hash_rank(&[cell.as_str().as_bytes(), &[0], member.as_str().as_bytes()])
}

/// The items of `members` (a member's name and what stands for it) in `cell`'s rendezvous
/// order, a member listed twice once.
pub fn rendezvous_order<T>(cell: &CellName, members: impl IntoIterator<Item = (NodeName, T)>) -> Vec<T> {
    let mut keyed: Vec<([u8; 8], NodeName, T)> =
        members.into_iter().map(|(name, item)| (rendezvous_rank(cell, &name), name, item)).collect();
    keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, _, item)| item).collect()
}

/// `cell`'s representatives among `live` (its live members, as one node sees them): the first
/// `k` in rendezvous order, fewer when fewer are live.
pub fn representatives<T>(cell: &CellName, live: impl IntoIterator<Item = (NodeName, T)>, k: usize) -> Vec<T> {
    let mut order = rendezvous_order(cell, live);
    order.truncate(k);
    order
}

/// The representative of a cell a generation with id `key` enters and leaves the cell through:
/// of `representatives`, the lowest in `key`'s push rank (ties, none in practice, by name).
/// A revert uses its target's id, so that every writer of one revert picks the same entry.
pub fn entry<'a>(key: &GenId, representatives: impl IntoIterator<Item = &'a NodeName>) -> Option<&'a NodeName> {
    representatives.into_iter().min_by_key(|rep| (push::rank(key, rep), *rep))
}

/// Where `cell` stands in `key`'s backbone tree among the cells other than the root: the first
/// 8 bytes of SHA-256 over the id, a byte 1 (a cell's rank never equals a member's, whose byte
/// is 0) and the cell's name.
pub fn backbone_rank(key: &GenId, cell: &CellName) -> [u8; 8] {
    push::hash_rank(&[key.to_string().as_bytes(), &[1], cell.as_str().as_bytes()])
}

/// The items of `cells` (a cell's name and what stands for it) in `key`'s backbone tree order:
/// `root`'s first, when listed, then the others by [`backbone_rank`], a cell listed twice once.
/// A cell's children are `push::children_at(order, position, fanout)`.
pub fn backbone_order<T>(key: &GenId, root: &CellName, cells: impl IntoIterator<Item = (CellName, T)>) -> Vec<T> {
    let mut keyed: Vec<(bool, [u8; 8], CellName, T)> =
        cells.into_iter().map(|(name, item)| (name != *root, backbone_rank(key, &name), name, item)).collect();
    keyed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    keyed.dedup_by(|a, b| a.2 == b.2);
    keyed.into_iter().map(|(_, _, _, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn names(count: usize) -> Vec<NodeName> {
        (0..count).map(|i| format!("n{i}").parse().expect("a valid name")).collect()
    }

    fn cells(count: usize) -> Vec<CellName> {
        (0..count).map(|i| format!("c{i}").parse().expect("a valid cell name")).collect()
    }

    fn cell() -> CellName {
        "eu-west-1a".parse().expect("a valid cell name")
    }

    fn listed(members: &[NodeName]) -> impl Iterator<Item = (NodeName, NodeName)> + '_ {
        members.iter().map(|m| (m.clone(), m.clone()))
    }

    #[test]
    fn the_ranks_are_pinned() {
        // Nodes of different builds must pick the same representatives and the same backbone
        // tree: this fails if a rank changes. Computed apart with sha256sum:
        // printf 'eu-west-1a\0n<i>' for n0..n5, and printf 'n2.42\1c<i>' for c0..c4.
        let members = names(6);
        assert_eq!(representatives(&cell(), listed(&members), 3), ["n4", "n3", "n2"].map(|n| n.parse().unwrap()));
        let key = GenId { origin: members[2].clone(), seq: 42 };
        let order = backbone_order(&key, &cells(5)[3], cells(5).into_iter().map(|c| (c.clone(), c)));
        assert_eq!(order, ["c3", "c2", "c1", "c4", "c0"].map(|c| c.parse().unwrap()));
    }

    #[test]
    fn a_representative_that_dies_is_replaced_by_the_next_in_rank_and_no_other_moves() {
        let members = names(20);
        let order = rendezvous_order(&cell(), listed(&members));
        let before = representatives(&cell(), listed(&members), 3);
        let without: Vec<NodeName> = members.iter().filter(|m| **m != before[1]).cloned().collect();
        let after = representatives(&cell(), listed(&without), 3);
        assert_eq!(after, [before[0].clone(), before[2].clone(), order[3].clone()]);
    }

    #[test]
    fn an_entry_is_one_of_the_representatives_and_generations_spread_over_them() {
        let members = names(20);
        let reps = representatives(&cell(), listed(&members), 3);
        let entries: BTreeSet<&NodeName> = (1..50)
            .map(|seq| entry(&GenId { origin: members[0].clone(), seq }, &reps).expect("three representatives"))
            .collect();
        assert_eq!(entries.len(), 3, "fifty generations use all three: {entries:?}");
        assert!(entry(&GenId { origin: members[0].clone(), seq: 1 }, &[]).is_none());
    }

    proptest! {
        /// The same live members in any order, with duplicates, give the same representatives:
        /// the first `k` of the whole rendezvous order that are live.
        #[test]
        fn representatives_depend_only_on_who_is_live(
            count in 1usize..40, k in 1usize..6, live_mask in any::<u64>(), shuffle in any::<u64>()
        ) {
            let members = names(count);
            let live: Vec<NodeName> =
                members.iter().enumerate().filter(|(i, _)| live_mask >> (i % 64) & 1 == 1).map(|(_, m)| m.clone()).collect();
            let mut shuffled = live.clone();
            shuffled.extend(live.iter().take(2).cloned());
            let mut state = shuffle;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let reps = representatives(&cell(), listed(&live), k);
            prop_assert_eq!(&reps, &representatives(&cell(), listed(&shuffled), k));
            prop_assert_eq!(reps.len(), k.min(live.len()));
            let expected: Vec<NodeName> =
                rendezvous_order(&cell(), listed(&members)).into_iter().filter(|m| live.contains(m)).take(k).collect();
            prop_assert_eq!(reps, expected);
        }

        /// The root leads a backbone order, and every cell is in it once, whatever the order
        /// the cells are listed in.
        #[test]
        fn a_backbone_order_has_its_root_first_and_every_cell_once(
            count in 1usize..60, root in 0usize..60, seq in 1u64..1000, reversed in any::<bool>()
        ) {
            let all = cells(count);
            let root = all[root % count].clone();
            let key = GenId { origin: "n0".parse().unwrap(), seq };
            let mut input = all.clone();
            if reversed {
                input.reverse();
            }
            input.push(all[0].clone());
            let order = backbone_order(&key, &root, input.into_iter().map(|c| (c.clone(), c)));
            prop_assert_eq!(&order[0], &root);
            prop_assert_eq!(order.len(), count);
            prop_assert_eq!(order.iter().collect::<BTreeSet<_>>(), all.iter().collect::<BTreeSet<_>>());
            prop_assert_eq!(order, backbone_order(&key, &root, all.iter().map(|c| (c.clone(), c.clone()))));
        }
    }
}
