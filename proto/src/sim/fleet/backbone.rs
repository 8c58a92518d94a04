//! The backbone between cells (`docs/simulation.md`, "Cells"; decision D90): how generations
//! and reverts leave a cell, cross the others, and how representatives repair what a push
//! missed.
//!
//! - **Representatives.** A node's view of a cell's representatives is the first
//!   `Options::representatives` of the cell's rendezvous order it holds live (the failure
//!   oracle also tells it about other cells' members: a node learns them from the backbone,
//!   which is not simulated member by member).
//! - **Leaving a cell.** A generation (or a revert, keyed by its target) leaves its writer's
//!   cell through the cell's entry (`cell::entry`): the writer's cell tree has the entry one hop
//!   down, a revert's writer sends it to the entry. The entry pushes it to the entries of its
//!   cell's children in the backbone tree rooted at its cell (`cell::backbone_order`).
//! - **Crossing.** A node that gets it from the backbone pushes it to its own backbone children
//!   and into its cell (as the root of the cell's tree; a revert by fanout and a nudge, as its
//!   writer does), then sweeps its cell as a writer does. A push down the backbone that cannot
//!   arrive is taken over `TAKEOVER_MS` later: the cell's next representative, then, with none
//!   left, the cell's backbone children directly.
//! - **Anti-entropy.** Each representative, each gossip round, sends its log summary (a fixed
//!   64 B: a digest, not the vector) to a live representative of another cell drawn at random;
//!   whichever side is behind pulls from the other, and what it pulls enters its cell as a
//!   backbone push would. Idle, this costs a representative two messages a round whatever the
//!   fleet's size.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Event, Generation, Msg, Revert, SWEEP_AFTER_ROUNDS, SWEEP_LIMIT_MS, TAKEOVER_MS, Tree, World};
use crate::GenId;

/// What a representative's backbone digest takes on the wire: a digest of its log summary and
/// a header.
const BACKBONE_DIGEST_BYTES: u64 = 64;

/// What crosses the backbone.
#[derive(Clone, Debug)]
pub(super) enum Payload {
    Generations(Vec<Generation>),
    Reverts(Vec<Revert>),
}

impl Payload {
    /// The id its trees are drawn for: the first generation's, or the first revert's target.
    fn key(&self) -> &GenId {
        match self {
            Payload::Generations(generations) => generations[0].id(),
            Payload::Reverts(reverts) => &reverts[0].target,
        }
    }
}

impl World {
    /// `cell`'s representatives as `viewer` sees them: the first of its rendezvous order that
    /// `viewer` holds live.
    pub(super) fn representatives_seen(&self, viewer: usize, cell: usize) -> Vec<usize> {
        let order = &self.cells.get(cell).rendezvous;
        let live = order.iter().copied().filter(|x| self.live(viewer, *x));
        live.take(self.options.representatives).collect()
    }

    /// The representative of `cell` that `key` enters and leaves it through, as `viewer` sees
    /// it.
    pub(super) fn entry_seen(&self, viewer: usize, cell: usize, key: &GenId) -> Option<usize> {
        self.entry_among(key, self.representatives_seen(viewer, cell))
    }

    /// Of the representatives `reps`, the one `key` enters their cell through (`cell::entry`).
    fn entry_among(&self, key: &GenId, reps: Vec<usize>) -> Option<usize> {
        let names: Vec<_> = reps.iter().map(|x| self.nodes[*x].name.clone()).collect();
        let entry = crate::cell::entry(key, &names)?;
        reps.into_iter().find(|x| self.nodes[*x].name == *entry)
    }

    /// `key`'s backbone tree over every cell, rooted at `root`.
    pub(super) fn backbone_tree(&mut self, key: &GenId, root: usize) -> Arc<Tree> {
        let cached = (key.clone(), root);
        if let Some(tree) = self.backbone_trees.get(&cached) {
            return tree.clone();
        }
        let cells = self.cells.iter().enumerate().map(|(index, cell)| (cell.name.clone(), index));
        let order = crate::cell::backbone_order(key, &self.cells.get(root).name, cells);
        let mut position = vec![0; order.len()];
        for (at, cell) in order.iter().enumerate() {
            position[*cell] = at;
        }
        let tree = Arc::new(Tree { order, position, roots: 1 });
        self.backbone_trees.insert(cached, tree.clone());
        tree
    }

    /// A generation or revert first held by `node` from inside its cell (`hops` from its
    /// writer): the cell's entry pushes it down the backbone tree rooted at the cell. A
    /// generation leaves only its origin's cell; one that came in from the backbone or a pull
    /// from another cell goes on through `generations_cross`.
    pub(super) fn leave_cell(&mut self, node: usize, payload: Payload, hops: u32) {
        if self.cells.len() == 1 {
            return;
        }
        let cell = self.cells.of(node);
        if self.entry_seen(node, cell, payload.key()) == Some(node) {
            self.pass_down(node, payload, hops, cell);
        }
    }

    /// A revert `node` wrote: to its cell's entry, which takes it out (or out at once, when
    /// `node` is the entry).
    pub(super) fn revert_leaves(&mut self, node: usize, reverts: &[Revert]) {
        if self.cells.len() == 1 {
            return;
        }
        let cell = self.cells.of(node);
        match self.entry_seen(node, cell, &reverts[0].target) {
            Some(entry) if entry != node => {
                let msg = Msg::Reverts { reverts: reverts.to_vec(), hops: 1, root_cell: None };
                self.send(node, entry, msg, 64 * reverts.len() as u64);
            }
            _ => self.leave_cell(node, Payload::Reverts(reverts.to_vec()), 0),
        }
    }

    /// New generations `node` took in (pushed, or pulled; `crossed`: from another cell; `root`:
    /// down the backbone tree rooted there).
    pub(super) fn generations_cross(
        &mut self,
        node: usize,
        crossed: bool,
        new: &[Generation],
        hops: u32,
        root: Option<usize>,
    ) {
        let cell = self.cells.of(node);
        if let Some(root) = root {
            self.pass_down(node, Payload::Generations(new.to_vec()), hops, root);
        } else if !crossed && super::node_index(&new[0].id().origin).is_some_and(|o| self.cells.of(o) == cell) {
            self.leave_cell(node, Payload::Generations(new.to_vec()), hops);
        }
        if crossed {
            // The first holder of the cell sweeps it, as a writer sweeps its own.
            let until = self.now + SWEEP_LIMIT_MS;
            let after = SWEEP_AFTER_ROUNDS * self.options.gossip_interval_ms;
            for generation in new {
                let sweep =
                    Event::Sweep { node, generation: Box::new(generation.clone()), tried: BTreeSet::new(), until };
                self.at(after, sweep);
            }
        }
    }

    /// New reverts `node` holds from `from` (`root`: down the backbone tree rooted there).
    pub(super) fn revert_crosses(
        &mut self,
        node: usize,
        from: usize,
        fresh: &[Revert],
        hops: u32,
        root: Option<usize>,
    ) {
        let cell = self.cells.of(node);
        if cell != self.cells.of(from) {
            // Into the cell: as its writer does, beyond the fanout already sent.
            self.nudge(node);
        }
        match root {
            Some(root) => self.pass_down(node, Payload::Reverts(fresh.to_vec()), hops, root),
            None if cell == self.cells.of(from) => self.leave_cell(node, Payload::Reverts(fresh.to_vec()), hops),
            None => {}
        }
    }

    /// Pushes `payload` down the backbone tree rooted at `root` from `node`'s cell, once per
    /// node: also when `node` holds it already (a representative that pulled it from another
    /// cell before its parent's push came still passes that push down).
    pub(super) fn pass_down(&mut self, node: usize, payload: Payload, hops: u32, root: usize) {
        let revert = matches!(payload, Payload::Reverts(_));
        if self.nodes[node].passed_down.insert((revert, payload.key().clone())) {
            let cell = self.cells.of(node);
            self.push_down_backbone(node, cell, payload, hops, root);
        }
    }

    /// Pushes `payload` to the entries of `cell`'s children in its backbone tree rooted at
    /// `root`.
    fn push_down_backbone(&mut self, node: usize, cell: usize, payload: Payload, hops: u32, root: usize) {
        let tree = self.backbone_tree(payload.key(), root);
        let children = crate::push::children_at(&tree.order, tree.position[cell], self.options.push_fanout);
        for child in children.iter().copied() {
            self.backbone_push(node, child, payload.clone(), hops, root, Vec::new());
        }
    }

    /// Pushes `payload` across to `cell`, to its first representative in entry order not
    /// `tried`; when the push cannot arrive, the next is tried `TAKEOVER_MS` later, and with
    /// none left `node` pushes to the cell's backbone children itself.
    pub(super) fn backbone_push(
        &mut self,
        node: usize,
        cell: usize,
        payload: Payload,
        hops: u32,
        root: usize,
        tried: Vec<usize>,
    ) {
        let key = payload.key().clone();
        let mut reps = self.representatives_seen(node, cell);
        reps.retain(|rep| !tried.contains(rep));
        let Some(target) = self.entry_among(&key, reps) else {
            if !tried.is_empty() {
                self.trace(|| format!("n{node} pushes {key} past cell {cell}: none of its representatives answered"));
            }
            self.push_down_backbone(node, cell, payload, hops, root);
            return;
        };
        if let Some(last) = tried.last() {
            self.trace(|| format!("n{node} pushes {key} to n{target} of cell {cell}: n{last} did not answer"));
        }
        let (msg, bytes) = match &payload {
            Payload::Generations(generations) => {
                let bytes = generations.iter().map(|g| self.bytes_of(g)).sum();
                let msg = Msg::Generations {
                    generations: generations.clone(),
                    hops: hops + 1,
                    pulled: false,
                    root_cell: Some(root),
                };
                (msg, bytes)
            }
            Payload::Reverts(reverts) => {
                let msg = Msg::Reverts { reverts: reverts.clone(), hops: hops + 1, root_cell: Some(root) };
                (msg, 64 * reverts.len() as u64)
            }
        };
        let arrives = self.send(node, target, msg, bytes) && self.nodes[target].replica.is_some();
        if !arrives {
            let mut tried = tried;
            tried.push(target);
            self.at(TAKEOVER_MS, Event::BackboneTakeover { node, cell, tried, payload, hops, root });
        }
    }

    /// A representative's backbone round: its log summary to a live representative of another
    /// cell drawn at random.
    pub(super) fn backbone_round(&mut self, node: usize) {
        let cell = self.cells.of(node);
        if !self.representatives_seen(node, cell).contains(&node) {
            return;
        }
        let mut other = self.random.below(self.cells.len() - 1);
        if other >= cell {
            other += 1;
        }
        let reps = self.representatives_seen(node, other);
        if reps.is_empty() {
            return;
        }
        let peer = reps[self.random.below(reps.len())];
        let summary = self.summary_of(node);
        self.send(node, peer, Msg::BackboneSyn(summary), BACKBONE_DIGEST_BYTES);
    }

    pub(super) fn backbone_syn(&mut self, node: usize, from: usize, summary: u32) {
        self.pull_if_ahead(node, from, summary);
        let own = self.summary_of(node);
        self.send(node, from, Msg::BackboneAck(own), BACKBONE_DIGEST_BYTES);
    }

    pub(super) fn backbone_ack(&mut self, node: usize, from: usize, summary: u32) {
        self.pull_if_ahead(node, from, summary);
    }

    /// The log summary `node` publishes now.
    fn summary_of(&self, node: usize) -> u32 {
        self.nodes[node].published.last().expect("a node publishes when it starts").summary
    }
}
