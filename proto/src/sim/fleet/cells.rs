//! The fleet's cells as the simulator lays them out: node i is in cell `i * cells / nodes`,
//! so cells are contiguous blocks whose sizes differ by one at most, drawn from no random
//! number (a node's name ranks by SHA-256, so a block favours no place in any tree). Cell i is
//! named `c<i>`, zero-padded to five digits.

use std::ops::Range;

use super::node_name;
use crate::CellName;
use crate::cell::rendezvous_order;

pub(super) struct Cells {
    /// Each node's cell.
    of: Vec<u32>,
    list: Vec<Cell>,
}

pub(super) struct Cell {
    pub(super) name: CellName,
    pub(super) members: Range<usize>,
    /// The members in the cell's rendezvous order (`cell::rendezvous_order`): the first
    /// `Options::representatives` a node holds live are the representatives it sees, so none
    /// is hashed while the fleet runs.
    pub(super) rendezvous: Vec<usize>,
}

impl Cells {
    pub(super) fn new(nodes: usize, count: usize) -> Cells {
        let count = count.clamp(1, nodes.max(1));
        let of: Vec<u32> = (0..nodes).map(|node| (node * count / nodes) as u32).collect();
        let list = (0..count)
            .map(|cell| {
                let start = of.partition_point(|c| (*c as usize) < cell);
                let end = of.partition_point(|c| (*c as usize) <= cell);
                let name: CellName = format!("c{cell:05}").parse().expect("a valid cell name");
                let rendezvous = rendezvous_order(&name, (start..end).map(|x| (node_name(x), x)));
                Cell { name, members: start..end, rendezvous }
            })
            .collect();
        Cells { of, list }
    }

    /// How many cells the fleet has.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The cell `node` belongs to.
    pub(super) fn of(&self, node: usize) -> usize {
        self.of[node] as usize
    }

    pub(super) fn get(&self, cell: usize) -> &Cell {
        &self.list[cell]
    }

    /// `node`'s cell.
    pub(super) fn cell_of(&self, node: usize) -> &Cell {
        self.get(self.of(node))
    }

    /// Every cell's size, in order.
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.list.iter().map(|cell| cell.members.len()).collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Cell> {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_contiguous_and_differ_in_size_by_one_at_most() {
        let cells = Cells::new(1_000, 32);
        assert_eq!(cells.len(), 32);
        let sizes = cells.sizes();
        assert_eq!(sizes.iter().sum::<usize>(), 1_000);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        let mut next = 0;
        for (index, cell) in cells.iter().enumerate() {
            assert_eq!(cell.members.start, next);
            next = cell.members.end;
            assert!(cell.members.clone().all(|x| cells.of(x) == index));
            let mut ranked = cell.rendezvous.clone();
            ranked.sort_unstable();
            assert_eq!(ranked, cell.members.clone().collect::<Vec<_>>());
        }
        assert_eq!(Cells::new(20, 1).sizes(), [20]);
    }
}
