//! The push tree: whom a node pushes a new generation to when it first holds it.
//!
//! Each generation has its own tree over the live members: the generation's origin (its writer)
//! at the root, every other member ranked by a hash of (generation, member), and the member at
//! rank `i` the parent of ranks `fanout * i + 1 ..= fanout * i + fanout` (a heap's layout). Each
//! node computes the tree from its own view of the live members, and pushes to its children on
//! first receipt, wherever the generation came from. When views agree, the generation reaches
//! every member once, in `ceil(log_fanout(n))` hops: `n - 1` pushes, where pushing to `fanout`
//! random peers on first receipt sends `fanout * (n - 1)` and still misses about
//! `e^-fanout` of the members. Where views disagree (a member joined or died and not everyone
//! has seen it yet), a subtree may be reached twice or not at all; the writer's sweep and
//! anti-entropy reach what the tree missed (`docs/protocol.md`, "Push").
//!
//! The rank hash is SHA-256, not the standard library's hasher, so that nodes built by
//! different compiler versions draw the same tree.

use sha2::{Digest, Sha256};

use crate::name::{GenId, NodeName};

/// `own`'s children in `generation`'s push tree over `members` (the live members as `own`
/// sees them; `own` and the origin are placed in the tree whether listed or not), in rank
/// order.
pub fn children(generation: &GenId, own: &NodeName, members: &[NodeName], fanout: usize) -> Vec<NodeName> {
    let order = order(generation, own, members);
    let Some(position) = order.iter().position(|member| member == own) else { return Vec::new() };
    children_at(&order, position, fanout).to_vec()
}

/// The children of the member at `position` of a tree's `order` (root first).
pub fn children_at<T>(order: &[T], position: usize, fanout: usize) -> &[T] {
    let first = position.saturating_mul(fanout).saturating_add(1).min(order.len());
    &order[first..first.saturating_add(fanout).min(order.len())]
}

/// How many hops a push tree over `members` (the root included) is deep: the hops from the
/// root to the member of the last rank.
pub fn depth(members: usize, fanout: usize) -> u32 {
    let (mut depth, mut last) = (0, members.saturating_sub(1));
    while last > 0 {
        // The parent of rank `i` is rank `(i - 1) / fanout`.
        last = (last - 1) / fanout.max(1);
        depth += 1;
    }
    depth
}

/// The members in `generation`'s tree order: the origin, then the rest (with `own`) by
/// [`rank`].
fn order(generation: &GenId, own: &NodeName, members: &[NodeName]) -> Vec<NodeName> {
    let mut all: Vec<&NodeName> = members.iter().chain([own, &generation.origin]).collect();
    all.sort();
    all.dedup();
    tree_order(generation, all.into_iter().map(|member| (member.clone(), member.clone())))
}

/// The items of `members` (each a distinct member's name and what stands for it) in
/// `generation`'s tree order: the origin's first, when listed, then the others by [`rank`],
/// ties (none in practice) by name.
pub fn tree_order<T>(generation: &GenId, members: impl IntoIterator<Item = (NodeName, T)>) -> Vec<T> {
    tree_order_rooted(generation, std::slice::from_ref(&generation.origin), members)
}

/// [`tree_order`] with `roots` first, in their order, each when listed (a cell's tree has the
/// representative that brought the generation into the cell at its root, or the origin and then
/// the representative that takes it out: `proto::cell`), then the others by [`rank`].
pub fn tree_order_rooted<T>(
    generation: &GenId,
    roots: &[NodeName],
    members: impl IntoIterator<Item = (NodeName, T)>,
) -> Vec<T> {
    let mut keyed: Vec<(usize, [u8; 8], NodeName, T)> = members
        .into_iter()
        .map(|(name, item)| {
            let root = roots.iter().position(|root| *root == name).unwrap_or(usize::MAX);
            (root, rank(generation, &name), name, item)
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    keyed.into_iter().map(|(_, _, _, item)| item).collect()
}

/// Where `member` stands in `generation`'s tree among the members other than the origin: the
/// first 8 bytes of SHA-256 over the generation's id, a zero byte and the member's name.
pub fn rank(generation: &GenId, member: &NodeName) -> [u8; 8] {
    hash_rank(&[generation.to_string().as_bytes(), &[0], member.as_str().as_bytes()])
}

/// The first 8 bytes of SHA-256 over `parts`, in order: the rank of a member in a push tree,
/// and of a member or a cell in `proto::cell`'s orders.
pub(crate) fn hash_rank(parts: &[&[u8]]) -> [u8; 8] {
    let digest = parts.iter().fold(Sha256::new(), |hasher, part| hasher.chain_update(part)).finalize();
    let mut rank = [0; 8];
    rank.copy_from_slice(&digest[..8]);
    rank
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn names(count: usize) -> Vec<NodeName> {
        (0..count).map(|i| format!("n{i}").parse().expect("a valid name")).collect()
    }

    fn id(origin: &NodeName, seq: u64) -> GenId {
        GenId { origin: origin.clone(), seq }
    }

    /// Who reaches whom, from the root, when every member holds the same view.
    fn reached(generation: &GenId, members: &[NodeName], fanout: usize) -> BTreeMap<NodeName, usize> {
        let mut hops = BTreeMap::from([(generation.origin.clone(), 0)]);
        let mut frontier = vec![generation.origin.clone()];
        while let Some(node) = frontier.pop() {
            let depth = hops[&node];
            for child in children(generation, &node, members, fanout) {
                assert!(hops.insert(child.clone(), depth + 1).is_none(), "{child} was pushed to twice");
                frontier.push(child);
            }
        }
        hops
    }

    #[test]
    fn with_one_view_every_member_is_pushed_to_once_within_the_depth_of_a_heap() {
        let members = names(50);
        for seq in 1..20 {
            let hops = reached(&id(&members[seq as usize % 50], seq), &members, 3);
            assert_eq!(hops.len(), 50, "every member is reached");
            // 1 + 3 + 9 + 27 = 40 < 50 <= 121: four hops.
            assert_eq!(hops.values().max(), Some(&4));
        }
        assert_eq!(depth(50, 3), 4);
    }

    #[test]
    fn generations_draw_different_trees() {
        let members = names(50);
        let first = children(&id(&members[0], 1), &members[0], &members, 3);
        let second = children(&id(&members[0], 2), &members[0], &members, 3);
        assert_eq!(first.len(), 3);
        assert_ne!(first, second, "the writer's children change with the generation");
    }

    #[test]
    fn the_origin_is_the_root_even_when_a_view_has_lost_it() {
        let members = names(10);
        let generation = id(&members[0], 7);
        let without_origin: Vec<NodeName> = members[1..].to_vec();
        for member in &members[1..] {
            assert_eq!(
                children(&generation, member, &members, 3),
                children(&generation, member, &without_origin, 3),
                "{member}'s children do not move when the origin leaves its view"
            );
        }
        assert_eq!(children(&generation, &members[0], &without_origin, 3).len(), 3);
    }

    #[test]
    fn the_tree_is_pinned() {
        // Nodes of different builds must draw the same tree: this fails if the rank changes.
        // The order (computed apart, SHA-256 of "n2.42\0<member>"): n2, n1, n4, n5, n3, n0.
        let members = names(6);
        let generation = id(&members[2], 42);
        let children_of = |member: usize| children(&generation, &members[member], &members, 2);
        assert_eq!(children_of(2), [members[1].clone(), members[4].clone()]);
        assert_eq!(children_of(1), [members[5].clone(), members[3].clone()]);
        assert_eq!(children_of(4), [members[0].clone()]);
        assert!(children_of(0).is_empty() && children_of(3).is_empty() && children_of(5).is_empty());
    }

    proptest! {
        /// Members listed in any order, with duplicates, give the same tree.
        #[test]
        fn the_tree_does_not_depend_on_the_order_of_the_view(
            count in 1usize..40, seq in 1u64..1000, fanout in 1usize..6, shuffle in any::<u64>()
        ) {
            let members = names(count);
            let generation = id(&members[0], seq);
            let mut shuffled = members.clone();
            shuffled.extend(members.iter().take(3).cloned());
            let mut state = shuffle;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            for member in &members {
                prop_assert_eq!(children(&generation, member, &members, fanout), children(&generation, member, &shuffled, fanout));
            }
            let hops = reached(&generation, &members, fanout);
            prop_assert_eq!(hops.keys().cloned().collect::<BTreeSet<_>>(), members.iter().cloned().collect());
            prop_assert_eq!(hops.values().max().map(|d| *d as u32), Some(depth(count, fanout)));
        }

        /// Rooted at the origin alone, a tree is the plain one; with more roots, they lead in
        /// their order and every other member keeps its relative place.
        #[test]
        fn a_rooted_tree_puts_its_roots_first_and_keeps_the_rest_in_rank_order(
            count in 2usize..40, seq in 1u64..1000, second in 0usize..40
        ) {
            let members = names(count);
            let generation = id(&members[0], seq);
            let listed = || members.iter().map(|m| (m.clone(), m.clone()));
            let plain = tree_order(&generation, listed());
            prop_assert_eq!(&tree_order_rooted(&generation, &[members[0].clone()], listed()), &plain);
            let second = members[1 + second % (count - 1)].clone();
            let roots = [members[0].clone(), second.clone()];
            let rooted = tree_order_rooted(&generation, &roots, listed());
            prop_assert_eq!(&rooted[0], &members[0]);
            prop_assert_eq!(&rooted[1], &second);
            let rest: Vec<&NodeName> = plain.iter().filter(|m| !roots.contains(m)).collect();
            prop_assert_eq!(rooted[2..].iter().collect::<Vec<_>>(), rest);
        }
    }
}
