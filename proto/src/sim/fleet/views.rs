//! What each simulated node's gossip holds of every member: which version of each member's
//! published state it has seen (chitchat's per-node view of every node's keys).
//!
//! A node's gossip holds only the members of its own cell (`Options::cells`), so a cell of c
//! nodes holds c views of c members: the table is one flat array of 4-byte entries, cell after
//! cell (400 MB for a flat fleet of 10,000 nodes, 13 MB for 100,000 nodes in cells of 32),
//! compared a block at a time when two nodes of a cell gossip. An entry
//! packs the version with the summary of the log that state names (version vector and reverts
//! digest), interned in `Summaries`: a run publishes few distinct ones. Each view also counts
//! how many members it holds at each summary. So "which members does this node see ahead of its
//! log, or lacking a generation", asked every gossip round and every push, is decided once per
//! distinct summary, and answered by one pass over a row instead of a lookup per member.

use crate::VersionVector;

/// A version of a member's published state: 1 for the first, 0 for none seen.
pub(super) type Version = u16;

/// Most states one member may publish in a run: a node publishes when its log, reverts,
/// reports or revert writers change, a few dozen times in a run.
const MAX_VERSION: usize = Version::MAX as usize;

/// Most distinct log summaries in a run (an entry holds the id in 16 bits): the fleet's logs
/// pass through a few dozen states (each change stored, each revert held, in any order).
const MAX_SUMMARIES: usize = u16::MAX as usize;

/// Most members a cell may have: a delta names a member in 16 bits.
pub(super) const MAX_NODES: usize = 1 << 16;

/// Entries compared at once when two views are diffed: most blocks are equal, and an equal
/// block is one memory comparison.
const BLOCK: usize = 64;

/// The distinct log summaries members published, by id.
#[derive(Default)]
pub(super) struct Summaries {
    list: Vec<(VersionVector, String)>,
}

impl Summaries {
    /// The id of a summary, new or already held.
    pub(super) fn intern(&mut self, vv: VersionVector, reverts_digest: String) -> u32 {
        // Few distinct summaries exist, and the newest is the likeliest.
        if let Some(held) = self.list.iter().rposition(|(v, d)| *v == vv && *d == reverts_digest) {
            return held as u32;
        }
        assert!(self.list.len() < MAX_SUMMARIES, "more than {MAX_SUMMARIES} distinct logs in one run");
        self.list.push((vv, reverts_digest));
        (self.list.len() - 1) as u32
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn vv(&self, id: u32) -> &VersionVector {
        &self.list[id as usize].0
    }

    pub(super) fn reverts_digest(&self, id: u32) -> &str {
        &self.list[id as usize].1
    }
}

pub(super) struct Views {
    /// Per cell: its first node, its size, and where its table starts in `entries`.
    cells: Vec<Table>,
    /// Each node's cell.
    cell_of: Vec<u32>,
    /// `entries[table.offset + (a - start) * len + (x - start)]`: the version of member x's
    /// state node a of the same cell holds (high 16 bits) and that state's summary id (low 16
    /// bits); 0 for none. Entries of one member order as their versions, since a version has
    /// one summary.
    entries: Vec<u32>,
    /// Per member, the summary of each state it published (version v at `v - 1`).
    summaries: Vec<Vec<u32>>,
    /// Per node a, per summary id: how many members other than a node a holds at that summary.
    seen: Vec<Vec<u32>>,
}

#[derive(Clone, Copy)]
struct Table {
    start: usize,
    len: usize,
    offset: usize,
}

impl Views {
    /// Views that have seen nothing, of cells of contiguous nodes: `cells[i]` is cell i's
    /// size.
    pub(super) fn new(cells: &[usize]) -> Views {
        let (mut tables, mut cell_of, mut start, mut offset) = (Vec::new(), Vec::new(), 0, 0);
        for (cell, len) in cells.iter().enumerate() {
            assert!(*len <= MAX_NODES, "a cell of {len} nodes: at most {MAX_NODES}");
            tables.push(Table { start, len: *len, offset });
            cell_of.extend(std::iter::repeat_n(cell as u32, *len));
            start += len;
            offset += len * len;
        }
        Views {
            cells: tables,
            cell_of,
            entries: vec![0; offset],
            summaries: vec![Vec::new(); start],
            seen: vec![Vec::new(); start],
        }
    }

    fn table(&self, a: usize) -> Table {
        self.cells[self.cell_of[a] as usize]
    }

    /// Where node a's entry of member x is (both of one cell).
    fn index(&self, a: usize, x: usize) -> usize {
        let table = self.table(a);
        debug_assert!(x >= table.start && x < table.start + table.len, "n{x} is not in n{a}'s cell");
        table.offset + (a - table.start) * table.len + (x - table.start)
    }

    /// Member `x` publishes a state with log summary `summary`; its own view holds it at once.
    /// Returns the state's version.
    pub(super) fn publish(&mut self, x: usize, summary: u32) -> Version {
        let published = &mut self.summaries[x];
        assert!(published.len() < MAX_VERSION, "n{x} published more than {MAX_VERSION} states");
        published.push(summary);
        let version = published.len() as Version;
        let index = self.index(x, x);
        self.entries[index] = entry(version, summary);
        version
    }

    /// Every node holds every member of its cell at its latest state (they share their seeds at
    /// the start).
    pub(super) fn know_everyone(&mut self) {
        for table in self.cells.clone() {
            let members = table.start..table.start + table.len;
            let latest: Vec<u32> = members.clone().map(|x| self.latest(x)).collect();
            let mut everyone: Vec<u32> = Vec::new();
            for packed in &latest {
                count(&mut everyone, packed & 0xffff);
            }
            for (local, a) in members.enumerate() {
                let row = table.offset + local * table.len;
                self.entries[row..row + table.len].copy_from_slice(&latest);
                let mut seen = everyone.clone();
                seen[(latest[local] & 0xffff) as usize] -= 1;
                self.seen[a] = seen;
            }
        }
    }

    /// Member `x`'s latest state, as an entry.
    fn latest(&self, x: usize) -> u32 {
        let published = &self.summaries[x];
        published.last().map_or(0, |summary| entry(published.len() as Version, *summary))
    }

    /// Node a's row, and the node its first entry is of.
    fn row(&self, a: usize) -> (&[u32], usize) {
        let table = self.table(a);
        let row = self.index(a, table.start);
        (&self.entries[row..row + table.len], table.start)
    }

    /// The version of member `x`'s state node `a` holds.
    pub(super) fn get(&self, a: usize, x: usize) -> Version {
        (self.entries[self.index(a, x)] >> 16) as Version
    }

    /// Node `a` takes in member `x`'s state `version` (`x` is not `a`); returns the version it
    /// held, or `None` when it held that one or a newer one already.
    pub(super) fn raise(&mut self, a: usize, x: usize, version: Version) -> Option<Version> {
        let index = self.index(a, x);
        let current = self.entries[index];
        let summary = self.summaries[x][version as usize - 1];
        let new = entry(version, summary);
        if new <= current {
            return None;
        }
        self.entries[index] = new;
        if current != 0 {
            self.seen[a][(current & 0xffff) as usize] -= 1;
        }
        count(&mut self.seen[a], summary);
        Some((current >> 16) as Version)
    }

    /// The summary ids node `a` holds some member (other than itself) at.
    pub(super) fn seen(&self, a: usize) -> impl Iterator<Item = u32> + '_ {
        self.seen[a].iter().enumerate().filter(|(_, count)| **count > 0).map(|(id, _)| id as u32)
    }

    /// The members other than `a`, in order, that node `a` holds at a summary `chosen` marks
    /// (indexed by summary id).
    pub(super) fn members_at<'a>(&'a self, a: usize, chosen: &'a [bool]) -> impl Iterator<Item = usize> + 'a {
        let (row, start) = self.row(a);
        let row = row.iter().enumerate().map(move |(local, packed)| (start + local, packed));
        row.filter(move |(x, packed)| *x != a && chosen.get((**packed & 0xffff) as usize) == Some(&true))
            .map(|(x, _)| x)
    }

    /// The entries of `from`'s view newer than `to`'s (both of one cell).
    pub(super) fn newer(&self, from: usize, to: usize) -> Delta {
        let ((mine, start), (theirs, _)) = (self.row(from), self.row(to));
        let mut newer = Vec::new();
        for (start, (a, b)) in mine.chunks(BLOCK).zip(theirs.chunks(BLOCK)).enumerate() {
            if a == b {
                continue;
            }
            for (offset, (a, b)) in a.iter().zip(b).enumerate() {
                if a > b {
                    // The member in the high half, its version in the low one.
                    newer.push(((start * BLOCK + offset) as u32) << 16 | *a >> 16);
                }
            }
        }
        Delta { start, entries: newer }
    }
}

/// Members' versions one node sends another in gossip (the entries newer than the other's),
/// 4 bytes an entry: early in a change a node's view is behind its peer's on most members, and
/// a fleet of 10,000 has as many deltas in flight at once when a node nudges every peer.
#[derive(Debug)]
pub(super) struct Delta {
    /// The first node of the cell: an entry names a member by its place in the cell.
    start: usize,
    entries: Vec<u32>,
}

impl Delta {
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, Version)> + '_ {
        self.entries.iter().map(|packed| (self.start + (packed >> 16) as usize, *packed as Version))
    }
}

fn entry(version: Version, summary: u32) -> u32 {
    (version as u32) << 16 | summary
}

/// Counts one more member at summary `id`, growing the counts as new summaries appear.
fn count(seen: &mut Vec<u32>, id: u32) {
    let id = id as usize;
    if seen.len() <= id {
        seen.resize(id + 1, 0);
    }
    seen[id] += 1;
}
