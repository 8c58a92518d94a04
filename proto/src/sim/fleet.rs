//! The whole fleet in one process: `Options::nodes` replicas of the real core
//! (`replica::Replica`) over a simulated network, disk and clock, every draw from one seed.
//!
//! Each simulated node is a shell like the node's engine: it reads what the replica decides on
//! from its view of gossip, stores what a decision needs stored on a simulated disk (the node is
//! busy for the write's time, as the engine task is), commits to the replica after, and sends
//! what the engine's pusher and puller send. What is simulated, and how:
//!
//! - **Time** is discrete events in ms, ordered by (time, sequence number): the same seed gives
//!   the same history, byte for byte (`Outcome::trace`).
//! - **Network**: every message takes `latency_ms` plus a uniform draw of up to `jitter_ms`;
//!   a message is lost with the run's loss rate; a partition (full, one way, or flapping) drops
//!   what crosses it. Gossip is chitchat's three-way exchange every `gossip_interval_ms` with
//!   `gossip_fanout` live peers: a digest of every member's version, the newer entries back,
//!   then the other side's newer entries. A member's state is what the node publishes in
//!   gossip: its version vector, reverts summary, reports and `rv.` keys.
//! - **Failure detection** is an oracle with chitchat's delays: a member that stops being
//!   reachable (down, or cut off by a partition) counts live for `failure_timeout_ms` more, and
//!   one that comes back counts live a gossip interval later.
//! - **Disk**: a write takes `disk_ms` (a slow disk more); a crash loses every write not done.
//!   A restart starts the replica over what the disk holds (`Replica::start`).
//! - **Clocks**: each node's wall clock runs `skew_ms` off the simulation's.
//! - **Applications** follow the value they are served: a node that serves `app = "bad"`
//!   reports the generation that wrote it anomalous `detect_ms` after applying it, any other
//!   generation healthy. A report ages from when it was published (the node ages it from when
//!   it first saw it: the difference is the gossip delay).
//! - **Cells** (`Options::cells`, more than one): gossip, failure detection and reports stay in
//!   a node's cell (`cells.rs`: contiguous blocks of nodes; `views.rs`: a table per cell), and
//!   generations and reverts cross cells through each cell's representatives down a backbone
//!   tree, with takeover and anti-entropy between representatives (`backbone.rs`, D90). One
//!   cell is the flat fleet, draw for draw.
//!
//! A run (`run`): the fleet settles, idles (`IDLE_WINDOW_MS`, measured), takes a good change
//! rolled out through its waves (when `Options::waves`), then a bad one (`app = "bad"`, in
//! waves: its canary applies it and reports it anomalous), with the faults drawn from the seed
//! around it; after the last heal it runs until every node up holds the same log, reverts and applied
//! state, or `limit_ms`. Then `check` verifies the invariants the chaos suite checks of real
//! processes (`Violation`s) and the run reports its figures (`Figures`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::sync::Arc;

mod backbone;
mod cells;
mod views;

use self::backbone::Payload;
use self::cells::Cells;
use self::views::{Delta, MAX_NODES, Summaries, Version, Views};
use super::SplitMix64;
use crate::log::Retention;
use crate::policy::Policy;
use crate::replica::{Anomaly, Cause, Config, Members, Now, Release, Replica, Stored, Submission};
use crate::report::{Report, Verdict};
use crate::rollout::{AnomalyQuorum, Plan};
use crate::schedule::Freezes;
use crate::trust::Trust;
use crate::{Change, ContentHash, GenId, Generation, JsonText, Key, NodeName, Op, Revert, VersionVector};

/// The simulation's clock starts here on the wall clock, so stamps look like real ones.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// Bytes a member's entry adds to a gossip digest (name, incarnation, heartbeat, versions).
const DIGEST_ENTRY_BYTES: u64 = 40;
/// The engine's safety-net recheck (`RELEASE_RECHECK`).
const RECHECK_MS: u64 = 1000;
/// How long a pull waits for its answer before another may start.
const PULL_TIMEOUT_MS: u64 = 2000;
/// How long the writer of a change sweeps, how many gossip intervals after its first pushes it
/// starts, and how many pushes it has in flight at once (the pusher's `SWEEP_LIMIT`,
/// `SWEEP_AFTER_ROUNDS` and `MAX_CONCURRENT_PUSHES`).
const SWEEP_LIMIT_MS: u64 = 5000;
const SWEEP_AFTER_ROUNDS: u64 = 2;
const MAX_CONCURRENT_PUSHES: usize = 16;
/// How long a push down the tree goes unanswered before its sender pushes to the child's
/// children (the pusher's `TAKEOVER_AFTER`).
const TAKEOVER_MS: u64 = 250;
/// Most generations one pull answer carries.
const PULL_BATCH: usize = 256;
/// The fleet gossips this long before the measured idle window.
const SETTLE_MS: u64 = 2000;
/// The window idle traffic is measured over.
pub const IDLE_WINDOW_MS: u64 = 10_000;
/// The key applications read their health from.
pub const APP_KEY: &str = "app";
/// The key of the good change.
pub const FEATURE_KEY: &str = "feature";
/// The value of `APP_KEY` that makes an application unhealthy (JSON text).
const BAD_VALUE: &str = "\"bad\"";

/// Most nodes one cell may have (a flat fleet is one cell): a gossip delta names a member of
/// its cell in 16 bits.
pub const MAX_CELL_NODES: usize = MAX_NODES;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub seed: u64,
    pub gossip_interval_ms: u64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub disk_ms: u64,
    /// Children of each node in a generation's push tree, and peers a node pushes a new revert
    /// to (the pusher's `FANOUT`).
    pub push_fanout: usize,
    /// Peers a node gossips with each round.
    pub gossip_fanout: usize,
    pub failure_timeout_ms: u64,
    /// From applying a change to the application's verdict on it.
    pub detect_ms: u64,
    pub bake_ms: u64,
    /// Faults drawn from the seed: loss, a partition (full, one way or flapping) around the bad
    /// change, a crash and restart, skewed clocks, a slow disk.
    pub faults: bool,
    /// A good change rolled out through all its waves before the bad one; without, only the
    /// bad one (a spread-and-revert run: it is stored everywhere, applied by its canary, and
    /// reverted everywhere).
    pub waves: bool,
    /// Test only: release every waiting generation without its gate; `check` must catch it.
    pub break_gates: bool,
    /// Simulated ms after the bad change by which the fleet must have converged.
    pub limit_ms: u64,
    /// Cells the fleet is split into (1: one flat cluster), joined by a backbone of each
    /// cell's representatives (`docs/simulation.md`, "Cells"). More than one needs `waves`
    /// off until waves move cell by cell.
    pub cells: usize,
    /// What a message between two cells takes, before the jitter.
    pub inter_cell_latency_ms: u64,
    /// Representatives per cell (`cell::REPRESENTATIVES`).
    pub representatives: usize,
}

impl Options {
    /// The defaults the figures are taken with: the node's defaults (1 s gossip, fanout 3),
    /// 1 ms links with 1 ms of jitter, 2 ms disk writes, 2 s bakes.
    pub fn new(nodes: usize, seed: u64) -> Options {
        Options {
            nodes,
            seed,
            gossip_interval_ms: 1000,
            latency_ms: 1,
            jitter_ms: 1,
            disk_ms: 2,
            push_fanout: 3,
            gossip_fanout: 3,
            failure_timeout_ms: 5000,
            detect_ms: 1000,
            bake_ms: 2000,
            faults: true,
            waves: true,
            break_gates: false,
            limit_ms: 120_000,
            cells: 1,
            inter_cell_latency_ms: 20,
            representatives: crate::cell::REPRESENTATIVES,
        }
    }

    /// The cells, and the idle messages between them per node per second.
    fn cells_line(&self, idle_backbone_messages: f64) -> String {
        let (smallest, largest) = (self.nodes / self.cells, self.nodes.div_ceil(self.cells));
        let size = if smallest == largest { smallest.to_string() } else { format!("{smallest} to {largest}") };
        format!(
            "cells: {} of {size} nodes, {} representatives each, {} ms between cells; idle between cells {:.2} messages per node per second",
            self.cells, self.representatives, self.inter_cell_latency_ms, idle_backbone_messages
        )
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "cargo run -p grapevine-cluster-tests --release -- sim --seed {} --nodes {}",
            self.seed, self.nodes
        );
        if !self.faults {
            command.push_str(" --no-faults");
        }
        if !self.waves {
            command.push_str(" --spread");
        }
        if self.cells > 1 {
            let _ = write!(command, " --cells {}", self.cells);
            let defaults = Options::new(self.nodes, self.seed);
            if self.inter_cell_latency_ms != defaults.inter_cell_latency_ms {
                let _ = write!(command, " --inter-cell-ms {}", self.inter_cell_latency_ms);
            }
            if self.representatives != defaults.representatives {
                let _ = write!(command, " --representatives {}", self.representatives);
            }
        }
        command
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// What a run measured; times are simulated ms.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// From the good change's acceptance (its writer stored it) to every node up storing it.
    pub good_stored_ms: Option<u64>,
    /// From the good change's acceptance to every node up serving it.
    pub good_served_ms: Option<u64>,
    /// Per wave of the good change, from its acceptance to every member of the wave serving it.
    pub waves_ms: Vec<Option<u64>>,
    /// From the good change's acceptance to 99% of the nodes up storing it.
    pub good_stored_p99_ms: Option<u64>,
    /// Most hops a generation took to a node that stored it first from a push.
    pub good_hops: u32,
    /// From the bad change's acceptance to the first revert written.
    pub revert_written_ms: Option<u64>,
    /// From the bad change's acceptance to no node serving the bad value: the last node that
    /// applied it holds the revert.
    pub revert_done_ms: Option<u64>,
    /// From the bad change's acceptance to every node holding the revert.
    pub revert_everywhere_ms: Option<u64>,
    /// Nodes that ever served the bad value.
    pub bad_applied: usize,
    /// Idle traffic per node per second: messages and bytes.
    pub idle_messages: f64,
    pub idle_bytes: f64,
    /// Of the idle messages, those between cells (per node per second).
    pub idle_backbone_messages: f64,
    /// Per node, from the good change's acceptance to every node storing it (or the bad
    /// change's, in a spread run): messages and bytes sent beyond the idle rate.
    pub change_messages: f64,
    pub change_bytes: f64,
    /// Simulated ms the run took.
    pub simulated_ms: u64,
    /// Events processed.
    pub events: u64,
}

/// One node at the end of a run, as the chaos checker reads a real node's status and history.
#[derive(Debug)]
pub struct NodeEnd {
    pub name: NodeName,
    /// Up at the end (every node is, unless the run did not converge).
    pub up: bool,
    pub state_digest: String,
    pub version_vector: VersionVector,
    pub reverted: Vec<GenId>,
    /// Every generation held whole, with its rollout as this node sees it.
    pub generations: Vec<GenerationEnd>,
}

/// A generation's rollout as one node sees it at the end (the fields of the node's
/// `RolloutView` the chaos checker reads).
#[derive(Debug)]
pub struct GenerationEnd {
    pub generation: Generation,
    /// Shared by every node that holds the generation (`Plan::shared`).
    pub plan: Arc<Plan>,
    pub applied_here: bool,
    pub reverted: bool,
    pub open_waves: usize,
    pub anomaly_quorum: AnomalyQuorum,
    /// The evidence it was applied on here, if it was.
    /// Shared with `Happened::releases` (in a flat fleet, the evidence names up to every member).
    pub release: Option<Arc<Release>>,
}

/// What happened in a run, in the terms of the chaos suite's history.
#[derive(Debug, Default)]
pub struct Happened {
    /// Changes acknowledged to their client: writer, id, when, and the key and value written.
    pub acknowledged: Vec<(NodeName, GenId, u64, String, serde_json::Value)>,
    /// Every release: when, where, what, and its evidence.
    pub releases: Vec<(u64, NodeName, GenId, Arc<Release>)>,
    /// Every revert written on the anomaly quorum: where, what, and the quorum it saw.
    pub quorum_reverts: Vec<(NodeName, GenId, AnomalyQuorum)>,
}

/// A run's result.
#[derive(Debug)]
pub struct Outcome {
    pub options: Options,
    pub figures: Figures,
    pub violations: Vec<Violation>,
    /// Every node at the end, and what happened: what the chaos checker reads.
    pub ends: Vec<NodeEnd>,
    pub happened: Happened,
    /// Every decision and fault, one line each, in order.
    pub trace: Vec<String>,
    /// The faults drawn, for the summary.
    pub faults: Vec<String>,
}

impl Outcome {
    /// A hash of the trace (FNV-1a): the same seed and options give the same value.
    pub fn trace_digest(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for line in &self.trace {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// The figures, one per line.
    pub fn summary(&self) -> String {
        let f = &self.figures;
        let ms = |v: Option<u64>| v.map_or("never".to_owned(), |v| format!("{v} ms"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} nodes {}: {} violations",
            self.options.seed,
            self.options.nodes,
            self.violations.len()
        );
        let _ = writeln!(
            out,
            "  faults: {}",
            if self.faults.is_empty() { "none".to_owned() } else { self.faults.join("; ") }
        );
        if self.options.waves {
            let _ = writeln!(
                out,
                "  good change: stored by all {}, served by all {}, {} hops at most",
                ms(f.good_stored_ms),
                ms(f.good_served_ms),
                f.good_hops
            );
            let waves: Vec<String> = f.waves_ms.iter().map(|w| ms(*w)).collect();
            let _ = writeln!(out, "  good change, each wave served by all its members: {}", waves.join(", "));
        } else {
            let _ = writeln!(
                out,
                "  bad change: stored by all {} (by 99% {}), {} hops at most",
                ms(f.good_stored_ms),
                ms(f.good_stored_p99_ms),
                f.good_hops
            );
        }
        let _ = writeln!(
            out,
            "  bad change: revert written {}, no node serving it {}, every node holding the revert {}, served by {} nodes in all",
            ms(f.revert_written_ms),
            ms(f.revert_done_ms),
            ms(f.revert_everywhere_ms),
            f.bad_applied
        );
        let _ = writeln!(
            out,
            "  per node per second idle: {:.1} messages, {:.0} B; per node per change: {:.1} messages, {:.0} B",
            f.idle_messages, f.idle_bytes, f.change_messages, f.change_bytes
        );
        if self.options.cells > 1 {
            let _ = writeln!(out, "  {}", self.options.cells_line(f.idle_backbone_messages));
        }
        let _ = writeln!(out, "  simulated {} ms, {} events", f.simulated_ms, f.events);
        for violation in &self.violations {
            let _ = writeln!(out, "  VIOLATION {}: {}", violation.invariant, violation.detail);
        }
        if !self.violations.is_empty() {
            let _ = writeln!(out, "  replay: {}", self.options.replay_command());
        }
        out
    }
}

/// The median of each figure over `outcomes`, one per line (a figure some runs lack is the
/// median of those that have it, with how many do).
pub fn medians(outcomes: &[Outcome]) -> String {
    fn median(mut values: Vec<f64>) -> Option<f64> {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }
    let ms = |pick: &dyn Fn(&Figures) -> Option<u64>| {
        let values: Vec<f64> = outcomes.iter().filter_map(|o| pick(&o.figures)).map(|v| v as f64).collect();
        let count = values.len();
        match median(values) {
            Some(value) => format!("{value:.0} ms ({count} of {} runs)", outcomes.len()),
            None => format!("never (0 of {} runs)", outcomes.len()),
        }
    };
    let number =
        |pick: &dyn Fn(&Figures) -> f64| median(outcomes.iter().map(|o| pick(&o.figures)).collect()).unwrap_or(0.0);
    let mut out = String::from("medians over the runs:\n");
    let _ = writeln!(out, "  change stored by all: {}", ms(&|f| f.good_stored_ms));
    let _ = writeln!(out, "  change stored by 99%: {}", ms(&|f| f.good_stored_p99_ms));
    if outcomes.iter().any(|o| o.options.waves) {
        let _ = writeln!(out, "  change served by all (waves): {}", ms(&|f| f.good_served_ms));
    }
    let nodes = outcomes.first().map_or(2, |o| o.options.nodes);
    let fanout = outcomes.first().map_or(3, |o| o.options.push_fanout);
    let bound = super::epidemic_bound(nodes, fanout);
    let _ = writeln!(
        out,
        "  most hops to a node: {:.0} (epidemic bound {bound:.1}, 1.5 times it {:.1})",
        number(&|f| f.good_hops as f64),
        1.5 * bound
    );
    let _ = writeln!(out, "  bad change: revert written {}", ms(&|f| f.revert_written_ms));
    let _ = writeln!(out, "  bad change: no node serving it {}", ms(&|f| f.revert_done_ms));
    let _ = writeln!(out, "  bad change: every node holding the revert {}", ms(&|f| f.revert_everywhere_ms));
    let _ = writeln!(out, "  nodes that served the bad value: {:.0}", number(&|f| f.bad_applied as f64));
    let _ = writeln!(
        out,
        "  per node per second idle: {:.1} messages, {:.0} B; per node per change: {:.1} messages, {:.0} B",
        number(&|f| f.idle_messages),
        number(&|f| f.idle_bytes),
        number(&|f| f.change_messages),
        number(&|f| f.change_bytes)
    );
    if let Some(first) = outcomes.first().filter(|o| o.options.cells > 1) {
        let _ = writeln!(out, "  {}", first.options.cells_line(number(&|f| f.idle_backbone_messages)));
    }
    let _ = write!(
        out,
        "  simulated {:.0} ms, {:.0} events a run",
        number(&|f| f.simulated_ms as f64),
        number(&|f| f.events as f64)
    );
    out
}

/// Runs one simulation.
pub fn run(options: Options) -> Outcome {
    let mut world = World::new(options);
    world.play();
    world.finish()
}

/// What a node publishes in gossip.
#[derive(Debug, Default)]
struct Published {
    /// Its log: version vector and reverts digest (`Summaries`).
    summary: u32,
    /// This node's report on each generation it judges, and when it published it.
    reports: Arc<BTreeMap<GenId, (Report, u64)>>,
    /// The generations whose revert this node wrote (`rv.` keys).
    revert_writers: Arc<BTreeSet<GenId>>,
    /// What the state adds to a gossip delta: an upper bound (chitchat sends changed keys only).
    bytes: u64,
}

/// What a node's disk holds once written.
#[derive(Debug, Default)]
struct Disk {
    generations: BTreeMap<GenId, Generation>,
    released: BTreeSet<GenId>,
    reverts: BTreeMap<GenId, Revert>,
}

struct Node {
    name: NodeName,
    replica: Option<Replica>,
    disk: Disk,
    /// Bumped by a crash: work of an earlier incarnation is lost.
    incarnation: u32,
    /// A durable write is in flight, done at `busy_until`: the node waits for it.
    storing: bool,
    busy_until: u64,
    skew_ms: i64,
    extra_disk_ms: u64,
    down_since: Option<u64>,
    up_since: u64,
    /// Every state this node published; version v is `published[v - 1]`.
    published: Vec<Arc<Published>>,
    reports: Arc<BTreeMap<GenId, (Report, u64)>>,
    revert_writers: Arc<BTreeSet<GenId>>,
    applied_at: BTreeMap<GenId, u64>,
    /// Generations some member reports anomalous, in this node's view.
    anomalous: BTreeSet<GenId>,
    pull_until: u64,
    decide_scheduled: bool,
    deadline_token: u64,
    /// What this node pushed down the backbone (`backbone::World::pass_down`): whether a
    /// revert, and its key.
    passed_down: BTreeSet<(bool, GenId)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    /// Side 0 cannot reach side 1; side 1 reaches side 0.
    OneWay,
}

#[derive(Clone, Debug)]
struct Partition {
    side: Vec<bool>,
    mode: Mode,
    since: u64,
    healed_at: u64,
}

impl Partition {
    fn delivers(&self, from: usize, to: usize) -> bool {
        if self.side[from] == self.side[to] {
            return true;
        }
        self.mode == Mode::OneWay && self.side[from]
    }
}

#[derive(Debug)]
enum Msg {
    /// `root_cell`: pushed down the backbone tree rooted at that cell.
    Generations {
        generations: Vec<Generation>,
        hops: u32,
        pulled: bool,
        root_cell: Option<usize>,
    },
    Reverts {
        reverts: Vec<Revert>,
        hops: u32,
        root_cell: Option<usize>,
    },
    Pull {
        have: VersionVector,
        reverts_digest: String,
    },
    Syn,
    Ack(Delta),
    Ack2(Delta),
    /// A representative's log summary (`Summaries` id), to another cell's representative.
    BackboneSyn(u32),
    /// The answer's own summary.
    BackboneAck(u32),
}

#[derive(Debug)]
enum Work {
    Own { generation: Box<Generation>, clock: crate::Clock },
    Ingest { new: Vec<Generation>, hops: u32 },
    Reverts { reverts: Vec<Revert>, written: Option<Cause> },
    Release { open: Vec<(Generation, Release)> },
}

#[derive(Debug)]
enum Event {
    Gossip(usize),
    Recheck(usize),
    Decide(usize),
    Deadline {
        node: usize,
        token: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Stored {
        node: usize,
        incarnation: u32,
        work: Work,
    },
    Judge {
        node: usize,
        incarnation: u32,
        id: GenId,
    },
    Submit {
        node: usize,
        change: Box<Change>,
        bad: bool,
    },
    /// `node`'s push of `generations` to `child`, its child in their push tree, went
    /// unanswered: it pushes to the child's children itself.
    Takeover {
        node: usize,
        child: usize,
        generations: Vec<Generation>,
        hops: u32,
    },
    /// `node`'s push down the backbone to `cell`'s representative `tried.last()` went
    /// unanswered: it pushes to the cell's next representative, or, when each was tried, to
    /// the cell's children in the backbone tree itself.
    BackboneTakeover {
        node: usize,
        cell: usize,
        tried: Vec<usize>,
        payload: Payload,
        hops: u32,
        root: usize,
    },
    /// The writer's next sweep round of its own generation.
    Sweep {
        node: usize,
        generation: Box<Generation>,
        tried: BTreeSet<usize>,
        until: u64,
    },
    Crash(usize),
    Restart(usize),
    Cut(Partition),
    Heal,
}

impl Event {
    /// The node the event happens on, if it happens on one.
    fn node(&self) -> Option<usize> {
        match self {
            Event::Gossip(n) | Event::Recheck(n) | Event::Decide(n) => Some(*n),
            Event::Deadline { node, .. }
            | Event::Judge { node, .. }
            | Event::Submit { node, .. }
            | Event::Sweep { node, .. }
            | Event::Takeover { node, .. }
            | Event::BackboneTakeover { node, .. } => Some(*node),
            Event::Deliver { to, .. } => Some(*to),
            Event::Stored { .. } | Event::Crash(_) | Event::Restart(_) | Event::Cut(_) | Event::Heal => None,
        }
    }
}

struct Queued {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What happened, for the checker and the figures.
#[derive(Default)]
struct Record {
    /// Generations acknowledged to their client: id, writer, when.
    acknowledged: Vec<(GenId, usize, u64)>,
    /// When each node first stored each generation, and in how many hops (0: pulled or own).
    stored: BTreeMap<GenId, BTreeMap<usize, (u64, u32)>>,
    /// When each node applied each generation, and on what evidence.
    applied: BTreeMap<GenId, BTreeMap<usize, (u64, Arc<Release>)>>,
    /// When each node first held each revert.
    reverted: BTreeMap<GenId, BTreeMap<usize, u64>>,
    /// Reverts written, by whom, why, when.
    written: Vec<(usize, GenId, Cause, u64)>,
    /// Messages and bytes sent, in all, and messages between cells.
    messages: u64,
    bytes: u64,
    backbone_messages: u64,
}

/// A generation's push tree over a cell's nodes (or the backbone's over the cells): indices
/// in tree order, each one's position in it (by its place in the cell), and how many roots
/// lead the order.
struct Tree {
    order: Vec<usize>,
    position: Vec<usize>,
    roots: usize,
}

struct World {
    options: Options,
    random: SplitMix64,
    now: u64,
    seq: u64,
    events: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    /// The cells the fleet is split into.
    cells: Cells,
    /// What each node's gossip holds of every member of its cell.
    views: Views,
    /// The log summaries members published.
    summaries: Summaries,
    partition: Option<Partition>,
    last_partition: Option<Partition>,
    /// Nodes down now, and when a node last came back or a partition last healed (0: never):
    /// with none down, no partition and the last return a gossip interval ago, every node
    /// holds every other live, and no liveness need be asked member by member.
    down: usize,
    back_at: u64,
    /// Per generation, the members that ever published a report on it, and that ever wrote
    /// its revert: what a decision reads of a view, instead of every member's entry.
    reporters: BTreeMap<GenId, BTreeSet<usize>>,
    revert_writers: BTreeMap<GenId, BTreeSet<usize>>,
    /// The wire size of each generation submitted.
    encoded_bytes: BTreeMap<(GenId, ContentHash), u64>,
    /// Each generation's push tree over each cell's nodes (`crate::push`), by (generation,
    /// cell, the representative the tree is rooted at: `usize::MAX` for none).
    trees: BTreeMap<(GenId, usize, usize), Arc<Tree>>,
    /// Each generation's (or revert target's) backbone tree over the cells, by its root cell
    /// (`crate::cell::backbone_order`).
    backbone_trees: BTreeMap<(GenId, usize), Arc<Tree>>,
    loss: f64,
    trace: Vec<String>,
    faults: Vec<String>,
    record: Record,
    good: Option<GenId>,
    bad: Option<GenId>,
    /// When the good and bad changes were accepted.
    good_at: Option<u64>,
    bad_at: Option<u64>,
    /// Traffic at the idle window's start and end, and at the measured change's acceptance.
    idle: Option<((u64, u64), (u64, u64))>,
    /// Messages between cells in the idle window.
    idle_backbone: u64,
    change_start: Option<(u64, u64)>,
    change_traffic: Option<(u64, u64, u64)>,
    /// When the last fault ends.
    quiet_from: u64,
    /// Changes the run's writers refused (none should be).
    refused: Vec<String>,
}

fn node_name(index: usize) -> NodeName {
    format!("n{index:05}").parse().expect("a valid node name")
}

/// The index of the simulated node named `name` (`node_name`), if it is one.
fn node_index(name: &NodeName) -> Option<usize> {
    name.as_str().strip_prefix('n')?.parse().ok()
}

fn put(key: &str, value: &str) -> Op {
    Op::PutConfig {
        key: key.parse::<Key>().expect("a valid key"),
        value: JsonText::try_from(value.to_owned()).expect("valid JSON"),
        schema: None,
    }
}

impl World {
    fn new(options: Options) -> World {
        assert!(options.nodes >= 2, "a fleet of at least two nodes");
        assert!(options.cells == 1 || !options.waves, "waves do not move cell by cell yet: cells need a spread run");
        let cells = Cells::new(options.nodes, options.cells);
        assert!(cells.sizes().iter().all(|size| *size <= MAX_NODES), "a cell of at most {MAX_NODES} nodes");
        let random = SplitMix64::new(options.seed);
        let n = options.nodes;
        let nodes = (0..n)
            .map(|index| Node {
                name: node_name(index),
                replica: None,
                disk: Disk::default(),
                incarnation: 0,
                storing: false,
                busy_until: 0,
                skew_ms: 0,
                extra_disk_ms: 0,
                down_since: None,
                up_since: 0,
                published: Vec::new(),
                reports: Arc::default(),
                revert_writers: Arc::default(),
                applied_at: BTreeMap::new(),
                anomalous: BTreeSet::new(),
                pull_until: 0,
                decide_scheduled: false,
                deadline_token: 0,
                passed_down: BTreeSet::new(),
            })
            .collect();
        let mut world = World {
            options,
            random,
            now: 0,
            seq: 0,
            events: 0,
            queue: BinaryHeap::new(),
            nodes,
            views: Views::new(&cells.sizes()),
            cells,
            summaries: Summaries::default(),
            partition: None,
            last_partition: None,
            down: 0,
            back_at: 0,
            reporters: BTreeMap::new(),
            revert_writers: BTreeMap::new(),
            encoded_bytes: BTreeMap::new(),
            trees: BTreeMap::new(),
            backbone_trees: BTreeMap::new(),
            loss: 0.0,
            trace: Vec::new(),
            faults: Vec::new(),
            record: Record::default(),
            good: None,
            bad: None,
            good_at: None,
            bad_at: None,
            idle: None,
            idle_backbone: 0,
            change_start: None,
            change_traffic: None,
            quiet_from: 0,
            refused: Vec::new(),
        };
        for node in 0..n {
            world.boot(node);
        }
        // Every member knows every other from the start (they share their seeds).
        world.views.know_everyone();
        for node in 0..n {
            let gossip = world.random.below(world.options.gossip_interval_ms as usize) as u64;
            world.at(gossip, Event::Gossip(node));
            let recheck = world.random.below(RECHECK_MS as usize) as u64;
            world.at(recheck, Event::Recheck(node));
        }
        world
    }

    fn config(&self, node: usize) -> Config {
        Config {
            name: self.nodes[node].name.clone(),
            max_clock_offset_ms: 500,
            retention: Retention { generations: 1_000_000, age_ms: u64::MAX },
            trust: Arc::new(Trust::default()),
            freezes: Arc::new(Freezes::default()),
            max_members: self.options.nodes.max(crate::limits::MAX_MEMBERS),
        }
    }

    fn clock(&self, node: usize) -> Now {
        let wall_ms = (EPOCH_MS + self.now).saturating_add_signed(self.nodes[node].skew_ms);
        Now { wall_ms, mono_ms: self.now }
    }

    /// Starts (or restarts) a node's replica over what its disk holds.
    fn boot(&mut self, node: usize) {
        let disk = &self.nodes[node].disk;
        let stored = Stored {
            snapshot: Default::default(),
            generations: disk.generations.values().cloned().collect(),
            released: disk.released.clone(),
            reverts: disk.reverts.values().cloned().collect(),
        };
        let (replica, judging) = Replica::start(self.config(node), stored, None, self.clock(node));
        let state = &mut self.nodes[node];
        state.replica = Some(replica);
        state.reports = Arc::default();
        state.applied_at.clear();
        for judging in judging {
            self.judge(node, judging.id);
        }
        self.publish(node);
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { at: self.now + delay, seq: self.seq, event }));
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        let line = format!("{:>8} {}", self.now, line());
        self.trace.push(line);
    }

    fn replica(&self, node: usize) -> &Replica {
        self.nodes[node].replica.as_ref().expect("the node is up")
    }

    fn replica_mut(&mut self, node: usize) -> &mut Replica {
        self.nodes[node].replica.as_mut().expect("the node is up")
    }

    fn content(&self, x: usize, version: Version) -> &Arc<Published> {
        &self.nodes[x].published[version as usize - 1]
    }

    /// What node `a` holds of member `x`'s published state.
    fn seen_by(&self, a: usize, x: usize) -> &Arc<Published> {
        self.content(x, self.views.get(a, x))
    }

    /// The members of `node`'s cell that ever published a report on `id`: only they can show
    /// one in its view.
    fn reporters_of(&self, node: usize, id: &GenId) -> impl Iterator<Item = usize> + '_ {
        let members = self.cells.cell_of(node).members.clone();
        self.reporters.get(id).into_iter().flat_map(move |set| set.range(members.clone())).copied()
    }

    /// The members of `node`'s cell that ever wrote `id`'s revert (published it in their `rv.`
    /// keys).
    fn revert_writers_of(&self, node: usize, id: &GenId) -> impl Iterator<Item = usize> + '_ {
        let members = self.cells.cell_of(node).members.clone();
        self.revert_writers.get(id).into_iter().flat_map(move |set| set.range(members.clone())).copied()
    }

    /// Whether `viewer` holds `x` live (the failure-detection oracle, see the module doc).
    fn live(&self, viewer: usize, x: usize) -> bool {
        if viewer == x {
            return true;
        }
        let node = &self.nodes[x];
        let cut = self.partition.as_ref().filter(|p| !p.delivers(x, viewer)).map(|p| p.since);
        let unreachable = match (node.down_since, cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(since) = unreachable {
            return self.now.saturating_sub(since) < self.options.failure_timeout_ms;
        }
        let mut back = node.up_since;
        if let Some(p) = self.last_partition.as_ref().filter(|p| !p.delivers(x, viewer)) {
            back = back.max(p.healed_at);
        }
        back == 0 || self.now.saturating_sub(back) >= self.options.gossip_interval_ms
    }

    /// The peers of `node`'s cell it holds live.
    fn live_peers(&self, node: usize) -> Vec<usize> {
        let members = self.cells.cell_of(node).members.clone();
        if self.everyone_live() {
            return members.filter(|x| *x != node).collect();
        }
        members.filter(|x| *x != node && self.live(node, *x)).collect()
    }

    /// Whether every node holds every other live (`live` is true throughout): no node is down,
    /// no partition is in effect, and none ended or came back within a gossip interval.
    fn everyone_live(&self) -> bool {
        let settled = self.now.saturating_sub(self.back_at) >= self.options.gossip_interval_ms;
        self.partition.is_none() && self.down == 0 && (self.back_at == 0 || settled)
    }

    /// `count` distinct random live peers of `node`, but `not`.
    fn random_peers(&mut self, node: usize, count: usize, not: Option<usize>) -> Vec<usize> {
        let mut peers: Vec<usize> = self.live_peers(node);
        peers.retain(|p| Some(*p) != not);
        let mut chosen = Vec::with_capacity(count);
        while chosen.len() < count && !peers.is_empty() {
            let index = self.random.below(peers.len());
            chosen.push(peers.swap_remove(index));
        }
        chosen
    }

    /// Sends `msg`; whether it goes on its way (not lost, not cut off).
    fn send(&mut self, from: usize, to: usize, msg: Msg, bytes: u64) -> bool {
        self.record.messages += 1;
        self.record.bytes += bytes;
        if self.cells.of(from) != self.cells.of(to) {
            self.record.backbone_messages += 1;
        }
        if self.loss > 0.0 && self.random.next_unit() < self.loss {
            return false;
        }
        if self.partition.as_ref().is_some_and(|p| !p.delivers(from, to)) {
            return false;
        }
        let latency = if self.cells.of(from) == self.cells.of(to) {
            self.options.latency_ms
        } else {
            self.options.inter_cell_latency_ms
        };
        let delay = latency + self.random.below(self.options.jitter_ms as usize + 1) as u64;
        self.at(delay, Event::Deliver { from, to, msg });
        true
    }

    fn publish(&mut self, node: usize) {
        let state = &self.nodes[node];
        let replica = state.replica.as_ref().expect("the node is up");
        let vv = replica.settled();
        let vv_entries = vv.iter().count();
        let summary = self.summaries.intern(vv, replica.log().reverts_digest());
        if let Some(last) = state.published.last()
            && last.summary == summary
            && Arc::ptr_eq(&last.reports, &state.reports)
            && Arc::ptr_eq(&last.revert_writers, &state.revert_writers)
        {
            return;
        }
        let bytes = 24 * (vv_entries + state.reports.len() + state.revert_writers.len()) as u64 + 64;
        let published =
            Published { summary, reports: state.reports.clone(), revert_writers: state.revert_writers.clone(), bytes };
        let state = &mut self.nodes[node];
        state.published.push(Arc::new(published));
        let version = self.views.publish(node, summary);
        debug_assert_eq!(version as usize, state.published.len());
    }

    fn play(&mut self) {
        let n = self.options.nodes;
        let idle_start = SETTLE_MS;
        let first_change = idle_start + IDLE_WINDOW_MS;
        // The good change, when there is one, from a node drawn from the seed.
        let mut next = first_change;
        if self.options.waves {
            let writer = self.random.below(n);
            let mut change = Change::with_ops(vec![put(FEATURE_KEY, "\"on\"")]);
            change.policy = Policy { bake_ms: self.options.bake_ms, ..Policy::default() };
            self.at(next, Event::Submit { node: writer, change: Box::new(change), bad: false });
        }
        self.run_until(idle_start);
        let start = (self.record.messages, self.record.bytes);
        let backbone = self.record.backbone_messages;
        self.run_until(first_change);
        self.idle = Some((start, (self.record.messages, self.record.bytes)));
        self.idle_backbone = self.record.backbone_messages - backbone;
        if self.options.waves {
            // Until every node serves it (the last wave) or a minute.
            let deadline = next + 60_000;
            while self.now < deadline && !self.all_serve(FEATURE_KEY) {
                self.run_until(self.now + 100);
            }
            next = self.now + 1_000;
        }
        self.draw_faults(next);
        let writer = self.random.below(n);
        let mut change = Change::with_ops(vec![put(APP_KEY, BAD_VALUE)]);
        change.policy = Policy { bake_ms: self.options.bake_ms, ..Policy::default() };
        self.at(next - self.now, Event::Submit { node: writer, change: Box::new(change), bad: true });
        let limit = next + self.options.limit_ms;
        self.run_until(self.quiet_from.max(next + 1_000));
        while self.now < limit && !self.converged() {
            self.run_until(self.now + 500);
        }
        // A little more, for anything still in flight to land.
        self.run_until(self.now + 2 * self.options.gossip_interval_ms);
    }

    fn run_until(&mut self, until: u64) {
        while let Some(Reverse(queued)) = self.queue.peek() {
            if queued.at > until {
                break;
            }
            let Reverse(Queued { at, event, .. }) = self.queue.pop().expect("peeked");
            self.now = at;
            self.events += 1;
            self.handle(event);
        }
        self.now = until;
    }

    fn handle(&mut self, event: Event) {
        if let Some(node) = event.node() {
            if self.nodes[node].replica.is_none() {
                if let Event::Submit { bad, .. } = &event {
                    self.trace(|| format!("n{node} is down: submit refused (bad={bad})"));
                }
                return;
            }
            let state = &self.nodes[node];
            if state.storing {
                // The engine handles one thing at a time: this waits for the store (queued
                // after its completion, even when due at the same instant).
                self.at(state.busy_until.saturating_sub(self.now), event);
                return;
            }
        }
        match event {
            Event::Gossip(node) => self.gossip_round(node),
            Event::Recheck(node) => {
                self.decide(node);
                self.at(RECHECK_MS, Event::Recheck(node));
            }
            Event::Decide(node) => {
                self.nodes[node].decide_scheduled = false;
                self.decide(node);
            }
            Event::Deadline { node, token } => {
                if self.nodes[node].deadline_token == token {
                    self.decide(node);
                }
            }
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Stored { node, incarnation, work } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].replica.is_some() {
                    self.nodes[node].storing = false;
                    self.stored(node, work);
                }
            }
            Event::Judge { node, incarnation, id } => {
                if self.nodes[node].incarnation == incarnation {
                    self.verdict(node, id);
                }
            }
            Event::Submit { node, change, bad } => self.submit(node, *change, bad),
            Event::Sweep { node, generation, tried, until } => self.sweep(node, *generation, tried, until),
            Event::Takeover { node, child, generations, hops } => {
                for grandchild in self.tree_children(node, child, &generations, None) {
                    self.push_tree(node, grandchild, &generations, hops + 1);
                }
            }
            Event::BackboneTakeover { node, cell, tried, payload, hops, root } => {
                self.backbone_push(node, cell, payload, hops, root, tried);
            }
            Event::Crash(node) => self.crash(node),
            Event::Restart(node) => {
                let state = &mut self.nodes[node];
                if state.down_since.take().is_some() {
                    self.down -= 1;
                }
                state.up_since = self.now;
                self.back_at = self.now;
                state.busy_until = self.now;
                self.boot(node);
                self.trace(|| format!("n{node} restarts"));
                // Its timers died with it.
                self.at(self.options.gossip_interval_ms, Event::Gossip(node));
                self.at(RECHECK_MS, Event::Recheck(node));
                self.schedule_decide(node);
            }
            Event::Cut(partition) => {
                let cut = partition.side.iter().filter(|s| **s).count();
                let mode = partition.mode;
                self.trace(|| format!("partition {mode:?}: {cut} nodes apart"));
                self.partition = Some(partition);
            }
            Event::Heal => {
                if let Some(mut partition) = self.partition.take() {
                    partition.healed_at = self.now;
                    self.last_partition = Some(partition);
                    self.back_at = self.now;
                    self.trace(|| "heal".to_owned());
                }
            }
        }
    }

    /// Starts a durable write of `work`: the node is busy until it is done, then commits it.
    fn store(&mut self, node: usize, work: Work) {
        let state = &mut self.nodes[node];
        let took = self.options.disk_ms + state.extra_disk_ms;
        state.storing = true;
        state.busy_until = self.now + took;
        let incarnation = state.incarnation;
        self.at(took, Event::Stored { node, incarnation, work });
    }

    fn schedule_decide(&mut self, node: usize) {
        if !self.nodes[node].decide_scheduled {
            self.nodes[node].decide_scheduled = true;
            self.at(0, Event::Decide(node));
        }
    }

    fn submit(&mut self, node: usize, change: Change, bad: bool) {
        let members = self.cells.cell_of(node).members.clone();
        let live: Vec<NodeName> =
            members.clone().filter(|x| self.live(node, *x)).map(|x| self.nodes[x].name.clone()).collect();
        let own = &self.nodes[node].name;
        let most_held_own = members
            .filter(|x| *x != node)
            .map(|x| (x, self.summaries.vv(self.seen_by(node, x).summary).get(own)))
            .max_by_key(|(_, held)| *held)
            .map(|(x, held)| (self.nodes[x].name.to_string(), held));
        let members = Members { live, most_held_own, ..Members::default() };
        let now = self.clock(node);
        let replica = self.replica(node);
        let mut clock = replica.clock().clone();
        let submission = Submission { change, author: None, signed: None, terms: None };
        let sealed = replica.seal(submission, members, now, &mut clock, |_| None);
        let generation = match sealed.and_then(|g| replica.check_own(&g).map(|()| g)) {
            Ok(generation) => generation,
            Err(error) => {
                self.trace(|| format!("n{node} refuses a change: {error}"));
                self.refused.push(format!("n{node}: {error}"));
                return;
            }
        };
        let bytes = generation_bytes(&generation);
        self.encoded_bytes.insert((generation.id().clone(), generation.hash), bytes);
        if bad {
            self.bad = Some(generation.id().clone());
        } else {
            self.good = Some(generation.id().clone());
        }
        self.store(node, Work::Own { generation: Box::new(generation), clock });
    }

    fn stored(&mut self, node: usize, work: Work) {
        match work {
            Work::Own { generation, clock } => {
                let generation = *generation;
                let id = generation.id().clone();
                self.nodes[node].disk.generations.insert(id.clone(), generation.clone());
                self.replica_mut(node).accept_own(generation.clone(), clock);
                self.publish(node);
                self.record.acknowledged.push((id.clone(), node, self.now));
                self.record.stored.entry(id.clone()).or_default().entry(node).or_insert((self.now, 0));
                if Some(&id) == self.good.as_ref() || (Some(&id) == self.bad.as_ref() && !self.options.waves) {
                    self.change_start = Some((self.record.messages, self.record.bytes));
                }
                if Some(&id) == self.good.as_ref() {
                    self.good_at = Some(self.now);
                } else if Some(&id) == self.bad.as_ref() {
                    self.bad_at = Some(self.now);
                }
                self.trace(|| format!("n{node} accepts {id}"));
                // The writer pushes to its children in the generation's push tree, then,
                // two gossip intervals later, sweeps whom the tree missed.
                let until = self.now + SWEEP_LIMIT_MS;
                let generations = std::slice::from_ref(&generation);
                let children = self.tree_children(node, node, generations, None);
                for peer in &children {
                    self.push_tree(node, *peer, generations, 1);
                }
                self.leave_cell(node, Payload::Generations(vec![generation.clone()]), 0);
                let tried = children.into_iter().collect();
                let after = SWEEP_AFTER_ROUNDS * self.options.gossip_interval_ms;
                self.at(after, Event::Sweep { node, generation: Box::new(generation), tried, until });
                self.schedule_decide(node);
            }
            Work::Ingest { new, hops } => {
                for generation in new {
                    let id = generation.id().clone();
                    self.nodes[node].disk.generations.insert(id.clone(), generation.clone());
                    self.replica_mut(node).add(generation);
                    self.trace(|| format!("n{node} stores {id} ({hops} hops)"));
                    self.record.stored.entry(id).or_default().entry(node).or_insert((self.now, hops));
                }
                self.publish(node);
                self.note_change_traffic();
                self.schedule_decide(node);
            }
            Work::Reverts { reverts, written } => {
                for revert in &reverts {
                    self.nodes[node].disk.reverts.insert(revert.target.clone(), revert.clone());
                    let held = self.record.reverted.entry(revert.target.clone()).or_default();
                    held.entry(node).or_insert(self.now);
                    self.trace(|| format!("n{node} holds the revert of {}", revert.target));
                }
                self.replica_mut(node).add_reverts(&reverts);
                if let Some(cause) = written {
                    let target = reverts[0].target.clone();
                    let mut writers = (*self.nodes[node].revert_writers).clone();
                    writers.insert(target.clone());
                    self.nodes[node].revert_writers = Arc::new(writers);
                    self.revert_writers.entry(target.clone()).or_default().insert(node);
                    self.trace(|| format!("n{node} reverts {target} ({})", cause.trigger()));
                    self.record.written.push((node, target, cause, self.now));
                    let peers = self.random_peers(node, self.options.push_fanout, None);
                    for peer in peers {
                        self.send(node, peer, Msg::Reverts { reverts: reverts.clone(), hops: 1, root_cell: None }, 64);
                    }
                    self.nudge(node);
                    self.revert_leaves(node, &reverts);
                }
                self.publish(node);
                self.schedule_decide(node);
            }
            Work::Release { open } => {
                let now = self.clock(node);
                for (generation, release) in &open {
                    let id = generation.id().clone();
                    self.trace(|| format!("n{node} applies {id} in wave {}", release.wave));
                    self.nodes[node].disk.released.insert(id.clone());
                    let applied = self.record.applied.entry(id).or_default();
                    let evidence = || Arc::new(Release { at_unix_ms: now.wall_ms, ..release.clone() });
                    applied.entry(node).or_insert_with(|| (self.now, evidence()));
                }
                let judging = self.replica_mut(node).release(open, now);
                for judging in judging {
                    self.judge(node, judging.id);
                }
                self.publish(node);
                self.schedule_decide(node);
            }
        }
    }

    /// One round of the writer's sweep of its own `generation`: to up to
    /// `MAX_CONCURRENT_PUSHES` live peers not tried yet that its view does not show holding it,
    /// the next round a round trip later (a push's answer waits for the receiver's commit),
    /// until none is left or the sweep's time is up.
    fn sweep(&mut self, node: usize, generation: Generation, mut tried: BTreeSet<usize>, until: u64) {
        if self.now > until {
            return;
        }
        let lacking = self.lacking(node, std::slice::from_ref(&generation), None);
        let mut targets: Vec<usize> = lacking.into_iter().filter(|peer| !tried.contains(peer)).collect();
        let mut chosen = Vec::new();
        while chosen.len() < MAX_CONCURRENT_PUSHES && !targets.is_empty() {
            let index = self.random.below(targets.len());
            chosen.push(targets.swap_remove(index));
        }
        if chosen.is_empty() {
            return;
        }
        let bytes = self.bytes_of(&generation);
        for peer in &chosen {
            let msg =
                Msg::Generations { generations: vec![generation.clone()], hops: 1, pulled: false, root_cell: None };
            self.send(node, *peer, msg, bytes);
        }
        tried.extend(chosen);
        let round = 2 * (self.options.latency_ms + self.options.jitter_ms) + self.options.disk_ms;
        self.at(round, Event::Sweep { node, generation: Box::new(generation), tried, until });
    }

    /// Pushes `generations` to `peer`, a child in their push tree; when the push cannot arrive
    /// (lost, cut off, or the peer is down) `node` pushes to the child's children
    /// `TAKEOVER_MS` later, as the pusher does when a push goes unanswered.
    fn push_tree(&mut self, node: usize, peer: usize, generations: &[Generation], hops: u32) {
        let bytes = generations.iter().map(|g| self.bytes_of(g)).sum();
        let msg = Msg::Generations { generations: generations.to_vec(), hops, pulled: false, root_cell: None };
        let arrives = self.send(node, peer, msg, bytes) && self.nodes[peer].replica.is_some();
        if !arrives {
            let generations = generations.to_vec();
            self.at(TAKEOVER_MS, Event::Takeover { node, child: peer, generations, hops });
        }
    }

    /// `member`'s children in the push tree of the first of `generations`, drawn over the
    /// members of its cell that `node`'s view holds live, that `node` does not know to hold
    /// them all (and not `from`).
    fn tree_children(
        &mut self,
        node: usize,
        member: usize,
        generations: &[Generation],
        from: Option<usize>,
    ) -> Vec<usize> {
        let tree = self.cell_tree(node, generations[0].id());
        let (order, position) = (&tree.order, &tree.position);
        let fanout = self.options.push_fanout;
        let start = self.cells.cell_of(node).members.start;
        let children: Vec<usize> = if self.everyone_live() {
            crate::push::children_at(order, position[member - start], fanout).to_vec()
        } else {
            let roots = &order[..tree.roots];
            let placed = |x: usize| x == node || x == member || roots.contains(&x) || self.live(node, x);
            let view: Vec<usize> = order.iter().copied().filter(|x| placed(*x)).collect();
            let at = view.iter().position(|x| *x == member).expect("the member is placed in the view");
            crate::push::children_at(&view, at, fanout).to_vec()
        };
        let lacking: BTreeSet<usize> = self.lacking(node, generations, from).into_iter().collect();
        children.into_iter().filter(|child| lacking.contains(child)).collect()
    }

    /// Generation `id`'s push tree over `node`'s cell, as `node` draws it: rooted at the
    /// origin when it is of the cell (then at the representative that takes `id` out of the
    /// cell, one hop down), else at the representative `id` enters the cell through
    /// (`cell::entry` over the representatives `node` holds live).
    fn cell_tree(&mut self, node: usize, id: &GenId) -> Arc<Tree> {
        let cell = self.cells.of(node);
        let entry = if self.cells.len() > 1 { self.entry_seen(node, cell, id) } else { None };
        let key = (id.clone(), cell, entry.unwrap_or(usize::MAX));
        if let Some(tree) = self.trees.get(&key) {
            return tree.clone();
        }
        let members = &self.cells.get(cell).members;
        let origin = node_index(&id.origin).filter(|origin| members.contains(origin));
        let mut roots: Vec<NodeName> = origin.into_iter().map(node_name).collect();
        roots.extend(entry.filter(|entry| Some(*entry) != origin).map(node_name));
        let order = crate::push::tree_order_rooted(id, &roots, members.clone().map(|x| (node_name(x), x)));
        let mut position = vec![0; members.len()];
        for (at, x) in order.iter().enumerate() {
            position[*x - members.start] = at;
        }
        let tree = Arc::new(Tree { order, position, roots: roots.len() });
        self.trees.insert(key, tree.clone());
        tree
    }

    /// The bytes `generation` takes on the wire, encoded once per generation (a fleet's
    /// generation names every member).
    fn bytes_of(&self, generation: &Generation) -> u64 {
        let key = (generation.id().clone(), generation.hash);
        self.encoded_bytes.get(&key).copied().unwrap_or_else(|| generation_bytes(generation))
    }

    /// Live peers of `node` (but `not`) that its view does not show holding all of `generations`.
    fn lacking(&self, node: usize, generations: &[Generation], not: Option<usize>) -> Vec<usize> {
        let lacks = |summary, summaries: &Summaries| {
            let vv = summaries.vv(summary);
            !generations.iter().all(|g| vv.covers(g.id()))
        };
        match self.summaries_where(node, lacks) {
            Some(lacking) => self.live_members_at(node, &lacking, not),
            None => Vec::new(),
        }
    }

    /// The log summaries some member shows in `node`'s view that `pick` picks, marked by id;
    /// `None` when it picks none (then no member qualifies, and no row need be read).
    fn summaries_where(&self, node: usize, pick: impl Fn(u32, &Summaries) -> bool) -> Option<Vec<bool>> {
        let mut picked = vec![false; self.summaries.len()];
        let mut any = false;
        for summary in self.views.seen(node).filter(|summary| pick(*summary, &self.summaries)) {
            picked[summary as usize] = true;
            any = true;
        }
        any.then_some(picked)
    }

    /// The live peers of `node` (but `not`), in order, that its view shows at a summary `picked`
    /// marks.
    fn live_members_at(&self, node: usize, picked: &[bool], not: Option<usize>) -> Vec<usize> {
        let members = self.views.members_at(node, picked).filter(|x| Some(*x) != not);
        if self.everyone_live() { members.collect() } else { members.filter(|x| self.live(node, *x)).collect() }
    }

    /// Starts judging `id`, applied here now: inconclusive until the application's verdict.
    fn judge(&mut self, node: usize, id: GenId) {
        let now = self.now;
        let state = &mut self.nodes[node];
        state.applied_at.insert(id.clone(), now);
        let mut reports = (*state.reports).clone();
        reports.insert(id.clone(), (Report { verdict: Verdict::Inconclusive, elapsed_ms: 0 }, now));
        state.reports = Arc::new(reports);
        self.reporters.entry(id.clone()).or_default().insert(node);
        let incarnation = state.incarnation;
        self.at(self.options.detect_ms, Event::Judge { node, incarnation, id });
    }

    /// The application's verdict on `id`: anomalous when it serves the bad value `id` wrote.
    fn verdict(&mut self, node: usize, id: GenId) {
        let replica = self.replica(node);
        if replica.log().is_reverted(&id) {
            return;
        }
        let bad_key = APP_KEY.parse::<Key>().expect("a valid key");
        let serves_bad = replica
            .state()
            .config
            .get(&bad_key)
            .is_some_and(|entry| entry.generation == id && entry.value.as_str() == BAD_VALUE);
        let verdict = if serves_bad { Verdict::Anomalous } else { Verdict::Healthy };
        let state = &mut self.nodes[node];
        let elapsed_ms = self.now - state.applied_at.get(&id).copied().unwrap_or(self.now);
        let mut reports = (*state.reports).clone();
        reports.insert(id.clone(), (Report { verdict, elapsed_ms }, self.now));
        state.reports = Arc::new(reports);
        if verdict == Verdict::Anomalous {
            state.anomalous.insert(id.clone());
            self.trace(|| format!("n{node} reports {id} anomalous"));
        }
        self.publish(node);
        self.schedule_decide(node);
    }

    fn crash(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        if state.replica.is_none() {
            return;
        }
        state.replica = None;
        state.passed_down.clear();
        state.incarnation += 1;
        state.down_since = Some(self.now);
        self.down += 1;
        state.storing = false;
        state.busy_until = self.now;
        self.trace(|| format!("n{node} crashes"));
    }

    fn nudge(&mut self, node: usize) {
        let bytes = self.digest_bytes(node);
        for peer in self.live_peers(node) {
            self.send(node, peer, Msg::Syn, bytes);
        }
    }

    /// What a gossip digest of `node`'s cell takes: an entry per member.
    fn digest_bytes(&self, node: usize) -> u64 {
        self.cells.cell_of(node).members.len() as u64 * DIGEST_ENTRY_BYTES
    }

    fn gossip_round(&mut self, node: usize) {
        let bytes = self.digest_bytes(node);
        for peer in self.random_peers(node, self.options.gossip_fanout, None) {
            self.send(node, peer, Msg::Syn, bytes);
        }
        self.maybe_pull(node);
        if self.cells.len() > 1 {
            self.backbone_round(node);
        }
        self.at(self.options.gossip_interval_ms, Event::Gossip(node));
    }

    /// Entries of `from`'s view newer than `to`'s.
    fn newer(&self, from: usize, to: usize) -> Delta {
        self.views.newer(from, to)
    }

    fn delta_bytes(&self, entries: &Delta) -> u64 {
        entries.iter().map(|(x, v)| self.content(x, v).bytes).sum()
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        match msg {
            Msg::Syn => {
                let newer = self.newer(to, from);
                let bytes = self.digest_bytes(to) + self.delta_bytes(&newer);
                self.send(to, from, Msg::Ack(newer), bytes);
            }
            Msg::Ack(entries) => {
                self.merge(to, &entries);
                let newer = self.newer(to, from);
                let bytes = self.delta_bytes(&newer);
                self.send(to, from, Msg::Ack2(newer), bytes);
            }
            Msg::Ack2(entries) => self.merge(to, &entries),
            Msg::Pull { have, reverts_digest } => {
                let replica = self.replica(to);
                let generations: Vec<Generation> =
                    replica.log().missing_from(&have).take(PULL_BATCH).cloned().collect();
                let reverts: Vec<Revert> = if reverts_digest == replica.log().reverts_digest() {
                    Vec::new()
                } else {
                    replica.log().reverts().collect()
                };
                if !reverts.is_empty() {
                    let bytes = 64 * reverts.len() as u64;
                    self.send(to, from, Msg::Reverts { reverts, hops: 0, root_cell: None }, bytes);
                }
                let bytes = generations.iter().map(|g| self.bytes_of(g)).sum::<u64>() + 16;
                let msg = Msg::Generations { generations, hops: 0, pulled: true, root_cell: None };
                self.send(to, from, msg, bytes);
            }
            Msg::Generations { generations, hops, pulled, root_cell } => {
                if pulled {
                    self.nodes[to].pull_until = 0;
                }
                self.ingest(to, from, generations, hops, root_cell);
            }
            Msg::Reverts { reverts, hops, root_cell } => {
                let pushed_down = root_cell.map(|root| (root, reverts.clone()));
                let fresh = self.replica(to).fresh_reverts(reverts);
                if fresh.is_empty() {
                    if let Some((root, reverts)) = pushed_down {
                        self.pass_down(to, Payload::Reverts(reverts), hops, root);
                    }
                    return;
                }
                // Forwarded before the store, as the engine does.
                for peer in self.random_peers(to, self.options.push_fanout, Some(from)) {
                    let msg = Msg::Reverts { reverts: fresh.clone(), hops: hops + 1, root_cell: None };
                    self.send(to, peer, msg, 64);
                }
                if self.cells.len() > 1 {
                    self.revert_crosses(to, from, &fresh, hops, root_cell);
                }
                self.store(to, Work::Reverts { reverts: fresh, written: None });
            }
            Msg::BackboneSyn(summary) => self.backbone_syn(to, from, summary),
            Msg::BackboneAck(summary) => self.backbone_ack(to, from, summary),
        }
    }

    fn ingest(&mut self, node: usize, from: usize, generations: Vec<Generation>, hops: u32, root: Option<usize>) {
        if generations.is_empty() {
            return;
        }
        let now = self.clock(node);
        let pushed_down = root.map(|root| (root, generations.clone()));
        let triage = self.replica_mut(node).triage(generations, now, |_| true);
        if !triage.ahead.is_empty() {
            let ahead = triage.ahead.len();
            self.trace(|| format!("n{node} refuses {ahead} generations stamped ahead"));
        }
        if triage.new.is_empty() {
            if let Some((root, generations)) = pushed_down {
                let vv = self.replica(node).log().version_vector();
                let held: Vec<Generation> = generations.into_iter().filter(|g| vv.covers(g.id())).collect();
                if !held.is_empty() {
                    self.pass_down(node, Payload::Generations(held), hops, root);
                }
            }
            return;
        }
        // Push on first receipt, however they came (pushed or pulled, as the engine does), to
        // its children in the first generation's push tree: a node that pulled a generation
        // before its parent's push arrived still covers its subtree.
        let mut peers = self.tree_children(node, node, &triage.new, Some(from));
        let crossed = self.cells.of(from) != self.cells.of(node);
        if crossed {
            // Into the cell: the tree's root may be another representative (views differ, or
            // it was taken over), so its children are pushed to as well.
            let tree_root = self.cell_tree(node, triage.new[0].id()).order[0];
            if tree_root != node {
                for child in self.tree_children(node, tree_root, &triage.new, Some(from)) {
                    if !peers.contains(&child) {
                        peers.push(child);
                    }
                }
            }
        }
        for peer in peers {
            self.push_tree(node, peer, &triage.new, hops + 1);
        }
        if self.cells.len() > 1 {
            self.generations_cross(node, crossed, &triage.new, hops, root);
        }
        self.store(node, Work::Ingest { new: triage.new, hops });
    }

    /// Takes in newer gossip entries; reports or revert writers that changed wake a decision,
    /// and a member whose log is ahead is pulled from.
    fn merge(&mut self, node: usize, entries: &Delta) {
        let mut woken = false;
        let mut ahead = false;
        let settled = self.replica(node).settled();
        // Whether the node is behind each summary, decided once per summary.
        let mut behind: Vec<Option<bool>> = vec![None; self.summaries.len()];
        for (x, version) in entries.iter() {
            let Some(current) = self.views.raise(node, x, version) else { continue };
            let (old, new) = (self.content(x, current), self.content(x, version));
            let changed =
                !Arc::ptr_eq(&old.reports, &new.reports) || !Arc::ptr_eq(&old.revert_writers, &new.revert_writers);
            let anomalous = changed.then(|| new.reports.iter().filter(|(_, (r, _))| r.verdict == Verdict::Anomalous));
            let ids: Vec<GenId> = anomalous.into_iter().flatten().map(|(id, _)| id.clone()).collect();
            let (old, new) = (old.summary, new.summary);
            let summaries = &self.summaries;
            ahead = ahead
                || *behind[new as usize].get_or_insert_with(|| settled.is_behind(summaries.vv(new)))
                || (old != new && summaries.reverts_digest(old) != summaries.reverts_digest(new));
            if changed {
                woken = true;
                self.nodes[node].anomalous.extend(ids);
            }
        }
        if woken {
            self.schedule_decide(node);
        }
        if ahead {
            self.maybe_pull(node);
        }
    }

    /// Pulls from one live peer whose log is ahead, unless a pull is in flight.
    fn maybe_pull(&mut self, node: usize) {
        if self.now < self.nodes[node].pull_until {
            return;
        }
        let replica = self.replica(node);
        let (settled, digest) = (replica.settled(), replica.log().reverts_digest());
        let ahead = self.summaries_where(node, |summary, summaries| is_ahead(&settled, &digest, summary, summaries));
        let Some(ahead) = ahead else { return };
        let ahead = self.live_members_at(node, &ahead, None);
        if ahead.is_empty() {
            return;
        }
        let peer = ahead[self.random.below(ahead.len())];
        self.pull(node, peer, settled, digest);
    }

    /// Pulls from `peer`, whose log summary is `summary`, if it is ahead and no pull is in
    /// flight.
    fn pull_if_ahead(&mut self, node: usize, peer: usize, summary: u32) {
        if self.now < self.nodes[node].pull_until {
            return;
        }
        let replica = self.replica(node);
        let (settled, digest) = (replica.settled(), replica.log().reverts_digest());
        if is_ahead(&settled, &digest, summary, &self.summaries) {
            self.pull(node, peer, settled, digest);
        }
    }

    fn pull(&mut self, node: usize, peer: usize, settled: VersionVector, digest: String) {
        self.nodes[node].pull_until = self.now + PULL_TIMEOUT_MS;
        let bytes = 24 * settled.iter().count() as u64 + 64;
        self.send(node, peer, Msg::Pull { have: settled, reverts_digest: digest }, bytes);
    }

    /// The engine's `decide`: reverts the quorum calls for (one write at a time: the next
    /// decision follows its commit), then releases what the gates open.
    fn decide(&mut self, node: usize) {
        let now = self.clock(node);
        let mut anomalies = BTreeMap::new();
        let candidates: Vec<GenId> = self.nodes[node].anomalous.iter().cloned().collect();
        for id in candidates {
            if !self.replica(node).judges_revert_of(&id) {
                continue;
            }
            let mut anomaly = Anomaly::default();
            for x in self.reporters_of(node, &id) {
                if let Some((report, _)) = self.seen_by(node, x).reports.get(&id) {
                    anomaly.reports.insert(self.nodes[x].name.clone(), *report);
                }
            }
            for x in self.revert_writers_of(node, &id) {
                if x != node && self.seen_by(node, x).revert_writers.contains(&id) && self.live(node, x) {
                    anomaly.live_writers += 1;
                }
            }
            anomalies.insert(id, anomaly);
        }
        if !anomalies.is_empty() {
            let due = self.replica_mut(node).reverts_due(&anomalies, now);
            if let Some((id, quorum)) = due.into_iter().next() {
                self.store(
                    node,
                    Work::Reverts { reverts: vec![Revert::of(&id)], written: Some(Cause::Quorum(quorum)) },
                );
                return;
            }
        }
        let mut deadline = self.replica(node).next_revert_deadline().map(|ms| ms.saturating_sub(self.now));
        let mut reports = BTreeMap::new();
        for id in self.replica(node).needs_reports(now) {
            let seen = self.reporters_of(node, &id).filter(|x| self.live(node, *x)).filter_map(|x| {
                let (report, published) = self.seen_by(node, x).reports.get(&id)?;
                let elapsed_ms = report.elapsed_ms + self.now.saturating_sub(*published);
                Some((self.nodes[x].name.clone(), Report { elapsed_ms, ..*report }))
            });
            // Collected at once: the map is built from the sorted reports, not entry by entry.
            let seen: BTreeMap<NodeName, Report> = seen.collect();
            reports.insert(id, seen);
        }
        let mut gates = self.replica(node).gates(&reports, now);
        if self.options.break_gates {
            // The deliberately broken rule: every waiting generation opens, on no evidence.
            let name = self.nodes[node].name.clone();
            let waiting: Vec<Generation> = self.replica(node).waiting().cloned().collect();
            gates.open = waiting
                .into_iter()
                .map(|g| {
                    let wave = Plan::shared(&g.body).wave_of(&name);
                    (g, Release { wave, at_unix_ms: 0, controls: Default::default(), reports: BTreeMap::new() })
                })
                .collect();
        }
        deadline = deadline.into_iter().chain(gates.next_in_ms).min();
        if let Some(delay) = deadline {
            let state = &mut self.nodes[node];
            state.deadline_token += 1;
            let token = state.deadline_token;
            self.at(delay.max(1), Event::Deadline { node, token });
        }
        if !gates.open.is_empty() {
            self.store(node, Work::Release { open: gates.open });
        }
    }

    fn note_change_traffic(&mut self) {
        let Some(id) = (if self.options.waves { self.good.clone() } else { self.bad.clone() }) else { return };
        if self.change_traffic.is_some() {
            return;
        }
        let stored = self.record.stored.get(&id).map_or(0, BTreeMap::len);
        if stored == self.options.nodes
            && let Some((messages, bytes)) = self.change_start
        {
            self.change_traffic = Some((self.record.messages - messages, self.record.bytes - bytes, self.now));
        }
    }

    /// Whether every node up serves `key`.
    fn all_serve(&self, key: &str) -> bool {
        let key = key.parse::<Key>().expect("a valid key");
        self.nodes.iter().all(|node| node.replica.as_ref().is_some_and(|r| r.state().config.contains_key(&key)))
    }

    /// Whether every node is up and holds the same log, reverts and applied state, with nothing
    /// waiting.
    fn converged(&self) -> bool {
        let Some(first) = self.nodes[0].replica.as_ref() else { return false };
        let (vv, digest, state) = (first.log().version_vector(), first.log().reverts_digest(), first.state().digest());
        self.nodes.iter().all(|node| {
            node.replica.as_ref().is_some_and(|r| {
                r.log().version_vector() == vv
                    && r.log().reverts_digest() == digest
                    && r.state().digest() == state
                    && r.waiting().next().is_none()
            })
        })
    }

    fn draw_faults(&mut self, bad_at: u64) {
        if !self.options.faults {
            return;
        }
        let n = self.options.nodes;
        let random = &mut self.random;
        self.loss = random.below(4) as f64 / 100.0;
        if self.loss > 0.0 {
            self.faults.push(format!("loss {:.0}%", self.loss * 100.0));
        }
        // Skewed clocks on a tenth of the nodes, within the clock-offset bound.
        for node in 0..n {
            if random.below(10) == 0 {
                let skew = random.below(801) as i64 - 400;
                self.nodes[node].skew_ms = skew;
            }
        }
        let skewed = self.nodes.iter().filter(|node| node.skew_ms != 0).count();
        self.faults.push(format!("{skewed} clocks skewed up to 400 ms"));
        let cells = self.cells.len();
        if cells > 1 {
            // A cell whose clocks are all off by the same amount (NTP wrong for a whole zone).
            let cell = self.random.below(cells);
            let skew = self.random.below(801) as i64 - 400;
            for x in self.cells.get(cell).members.clone() {
                self.nodes[x].skew_ms = skew;
            }
            self.faults.push(format!("cell {cell}'s clocks all {skew} ms off"));
        }
        let slow = self.random.below(n);
        self.nodes[slow].extra_disk_ms = 50;
        self.faults.push(format!("n{slow}'s disk 50 ms slower"));
        let mut quiet = bad_at;
        // A partition from just before the bad change, for 3 to 15 s.
        let share = 20 + self.random.below(31);
        // With cells, half the time the cut falls between whole cells: a cell (or several) cut
        // off from the backbone, or the backbone split in two.
        let by_cells = cells > 1 && self.random.below(2) == 0;
        let side: Vec<bool> = if by_cells {
            let apart: Vec<bool> = (0..cells).map(|_| self.random.below(100) < share).collect();
            (0..n).map(|x| apart[self.cells.of(x)]).collect()
        } else {
            (0..n).map(|_| self.random.below(100) < share).collect()
        };
        let of = if by_cells { "cells" } else { "nodes" };
        let mode = if self.random.below(5) == 0 { Mode::OneWay } else { Mode::Full };
        // (In a spread run the bad change follows the idle window at once: the cut starts with
        // it.)
        let start = bad_at.saturating_sub(500).max(self.now);
        let length = 3_000 + self.random.below(12_001) as u64;
        let flapping = self.random.below(4) == 0;
        let partition = Partition { side, mode, since: start, healed_at: 0 };
        if flapping {
            self.faults.push(format!("a link flapping {mode:?} between {share}% of the {of} and the rest"));
            let mut at = start;
            for _ in 0..3 {
                self.at(at - self.now, Event::Cut(Partition { since: at, ..partition.clone() }));
                self.at(at + 1_000 - self.now, Event::Heal);
                at += 2_000;
            }
            quiet = quiet.max(at);
        } else {
            self.faults.push(format!("partition {mode:?} of {share}% of the {of} for {length} ms"));
            self.at(start - self.now, Event::Cut(partition));
            self.at(start + length - self.now, Event::Heal);
            quiet = quiet.max(start + length);
        }
        // A crash and a restart.
        let victim = self.random.below(n);
        let crash_at = bad_at + self.random.below(3_001) as u64;
        let down = 2_000 + self.random.below(6_001) as u64;
        self.faults.push(format!("n{victim} crashes for {down} ms"));
        self.at(crash_at - self.now, Event::Crash(victim));
        self.at(crash_at + down - self.now, Event::Restart(victim));
        quiet = quiet.max(crash_at + down);
        if cells > 1 {
            // Every representative of one cell crashes at once (the victim above aside).
            let cell = self.random.below(cells);
            let at = bad_at + self.random.below(3_001) as u64;
            let down = 2_000 + self.random.below(6_001) as u64;
            let reps = self.cells.get(cell).rendezvous.iter().take(self.options.representatives);
            let reps: Vec<usize> = reps.copied().filter(|x| *x != victim).collect();
            self.faults.push(format!("cell {cell}'s representatives {reps:?} crash for {down} ms"));
            for rep in reps {
                self.at(at - self.now, Event::Crash(rep));
                self.at(at + down - self.now, Event::Restart(rep));
            }
            quiet = quiet.max(at + down);
        }
        self.quiet_from = quiet;
    }

    fn finish(self) -> Outcome {
        let violations = self.check();
        let figures = self.figures();
        let ends = (0..self.options.nodes).map(|node| self.end_of(node)).collect();
        let happened = self.happened();
        Outcome { options: self.options, figures, violations, ends, happened, trace: self.trace, faults: self.faults }
    }

    /// `node` at the end, as its status and history would show it.
    fn end_of(&self, node: usize) -> NodeEnd {
        let state = &self.nodes[node];
        let Some(replica) = state.replica.as_ref() else {
            let (version_vector, reverted) = (VersionVector::default(), Vec::new());
            let state_digest = String::new();
            return NodeEnd {
                name: state.name.clone(),
                up: false,
                state_digest,
                version_vector,
                reverted,
                generations: Vec::new(),
            };
        };
        let mut generations = Vec::new();
        for generation in replica.log().iter() {
            let id = generation.id();
            let plan = Plan::shared(&generation.body);
            let policy = &generation.body.change.policy;
            let (mut live, mut all) = (BTreeMap::new(), BTreeMap::new());
            for x in self.reporters_of(node, id) {
                if let Some((report, published)) = self.seen_by(node, x).reports.get(id) {
                    all.insert(self.nodes[x].name.clone(), *report);
                    if self.live(node, x) {
                        let elapsed_ms = report.elapsed_ms + self.now.saturating_sub(*published);
                        live.insert(self.nodes[x].name.clone(), Report { elapsed_ms, ..*report });
                    }
                }
            }
            let release = self.record.applied.get(id).and_then(|applied| applied.get(&node)).map(|(_, r)| r.clone());
            generations.push(GenerationEnd {
                open_waves: plan.open_waves(policy, Default::default(), &live),
                anomaly_quorum: AnomalyQuorum::of(policy, &all),
                applied_here: replica.is_released(id),
                reverted: replica.log().is_reverted(id),
                release,
                plan,
                generation: generation.clone(),
            });
        }
        NodeEnd {
            name: state.name.clone(),
            up: true,
            state_digest: replica.state().digest().to_string(),
            version_vector: replica.log().version_vector().clone(),
            reverted: replica.log().reverts().map(|revert| revert.target).collect(),
            generations,
        }
    }

    fn happened(&self) -> Happened {
        let name = |node: usize| self.nodes[node].name.clone();
        let mut happened = Happened::default();
        for (id, writer, at) in &self.record.acknowledged {
            let Some(generation) = self.generation(id) else { continue };
            for op in &generation.body.change.ops {
                if let Op::PutConfig { key, value, .. } = op {
                    let entry = (name(*writer), id.clone(), *at, key.to_string(), value.to_value());
                    happened.acknowledged.push(entry);
                }
            }
        }
        for (id, applied) in &self.record.applied {
            for (node, (at, release)) in applied {
                happened.releases.push((*at, name(*node), id.clone(), release.clone()));
            }
        }
        happened.releases.sort_by_key(|(at, ..)| *at);
        for (node, target, cause, _) in &self.record.written {
            if let Cause::Quorum(quorum) = cause {
                happened.quorum_reverts.push((name(*node), target.clone(), quorum.clone()));
            }
        }
        happened
    }

    fn figures(&self) -> Figures {
        let n = self.options.nodes;
        let mut figures = Figures { simulated_ms: self.now, events: self.events, ..Figures::default() };
        let seconds = IDLE_WINDOW_MS as f64 / 1000.0;
        let idle_rate = self
            .idle
            .map(|((m0, b0), (m1, b1))| ((m1 - m0) as f64 / seconds / n as f64, (b1 - b0) as f64 / seconds / n as f64));
        if let Some((messages, bytes)) = idle_rate {
            figures.idle_messages = messages;
            figures.idle_bytes = bytes;
            figures.idle_backbone_messages = self.idle_backbone as f64 / seconds / n as f64;
        }
        let measured = if self.options.waves { (&self.good, self.good_at) } else { (&self.bad, self.bad_at) };
        if let (Some(id), Some(at)) = measured {
            let stored = self.record.stored.get(id);
            if stored.is_some_and(|s| s.len() == n) {
                let stored = stored.expect("checked");
                let mut times: Vec<u64> = stored.values().map(|(t, _)| t - at).collect();
                times.sort_unstable();
                figures.good_stored_ms = times.last().copied();
                figures.good_stored_p99_ms = times.get((times.len() * 99).div_ceil(100).saturating_sub(1)).copied();
                figures.good_hops = stored.values().map(|(_, h)| *h).max().unwrap_or(0);
            }
            if let Some((messages, bytes, end)) = self.change_traffic {
                let seconds = (end - at) as f64 / 1000.0;
                let (idle_m, idle_b) = idle_rate.unwrap_or((0.0, 0.0));
                figures.change_messages = (messages as f64 / n as f64 - idle_m * seconds).max(0.0);
                figures.change_bytes = (bytes as f64 / n as f64 - idle_b * seconds).max(0.0);
            }
        }
        if let (Some(good), Some(at)) = (&self.good, self.good_at) {
            let applied = self.record.applied.get(good);
            if applied.is_some_and(|a| a.len() == n) {
                figures.good_served_ms = applied.and_then(|a| a.values().map(|(t, _)| t - at).max());
            }
            if let Some(generation) = self.generation(good) {
                let plan = Plan::shared(&generation.body);
                let index_of: BTreeMap<&NodeName, usize> =
                    self.nodes.iter().enumerate().map(|(index, node)| (&node.name, index)).collect();
                figures.waves_ms = plan
                    .waves
                    .iter()
                    .map(|members| {
                        let times: Option<Vec<u64>> = members
                            .iter()
                            .map(|m| {
                                let index = *index_of.get(m)?;
                                applied?.get(&index).map(|(t, _)| t - at)
                            })
                            .collect();
                        times.and_then(|t| t.into_iter().max())
                    })
                    .collect();
            }
        }
        if let (Some(bad), Some(at)) = (&self.bad, self.bad_at) {
            figures.revert_written_ms = self.record.written.iter().filter(|w| &w.1 == bad).map(|w| w.3 - at).min();
            let applied = self.record.applied.get(bad);
            figures.bad_applied = applied.map_or(0, BTreeMap::len);
            let reverted = self.record.reverted.get(bad);
            if reverted.is_some_and(|r| r.len() == n) {
                figures.revert_everywhere_ms = reverted.and_then(|r| r.values().map(|t| t.saturating_sub(at)).max());
            }
            // Stopped serving it: every node that applied it holds the revert.
            let stopped: Option<Vec<u64>> = applied
                .into_iter()
                .flatten()
                .map(|(node, _)| reverted.and_then(|r| r.get(node)).map(|t| t.saturating_sub(at)))
                .collect();
            figures.revert_done_ms = stopped.and_then(|times| times.into_iter().max());
        }
        figures
    }

    /// A generation as some node holds it.
    fn generation(&self, id: &GenId) -> Option<&Generation> {
        self.nodes.iter().find_map(|node| node.disk.generations.get(id))
    }

    /// The invariants of the chaos suite (cluster-tests' `chaos::check`), over the simulated run.
    fn check(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut violation = |invariant, detail: String| violations.push(Violation { invariant, detail });
        for refusal in &self.refused {
            violation("a node up takes the run's changes", refusal.clone());
        }
        if self.bad_at.is_none() || (self.options.waves && self.good_at.is_none()) {
            violation("a node up takes the run's changes", "a change was never accepted".to_owned());
        }
        if !self.converged() {
            let differ: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(index, node)| {
                    let replica = node.replica.as_ref()?;
                    Some(format!(
                        "n{index}: {} generations, {} reverts, {} waiting",
                        replica.log().len(),
                        replica.log().reverts().count(),
                        replica.waiting().count()
                    ))
                })
                .take(5)
                .collect();
            violation("the fleet converges after the last heal", differ.join("; "));
        }
        for (id, writer, _) in &self.record.acknowledged {
            for (index, node) in self.nodes.iter().enumerate() {
                let Some(replica) = node.replica.as_ref() else { continue };
                if !replica.log().version_vector().covers(id) {
                    violation(
                        "an acknowledged write reaches every node",
                        format!("{id} (by n{writer}) is missing on n{index}"),
                    );
                }
            }
        }
        for (id, applied) in &self.record.applied {
            let Some(generation) = self.generation(id) else { continue };
            let plan = Plan::shared(&generation.body);
            for (node, (_, release)) in applied {
                let policy = &generation.body.change.policy;
                if !plan.is_open(release.wave, policy, release.controls, &release.reports) {
                    violation(
                        "a node applies a generation only when its wave's gate is open",
                        format!("n{node} applied {id} in wave {} on {} reports", release.wave, release.reports.len()),
                    );
                }
            }
        }
        for (node, target, cause, _) in &self.record.written {
            if let Cause::Quorum(quorum) = cause {
                let Some(generation) = self.generation(target) else { continue };
                let policy = &generation.body.change.policy;
                let share = (quorum.applied * policy.anomaly_quorum_permille as usize).div_ceil(1000);
                let needed = share.max(policy.anomaly_quorum_min as usize);
                if quorum.anomalous.len() < needed || quorum.anomalous.is_empty() {
                    violation(
                        "a revert is written only on its anomaly quorum",
                        format!("n{node} reverted {target}: {quorum}"),
                    );
                }
            }
        }
        for (id, reverted) in &self.record.reverted {
            let applied = self.record.applied.get(id);
            for (node, held_at) in reverted {
                if let Some((applied_at, _)) = applied.and_then(|a| a.get(node))
                    && applied_at > held_at
                {
                    violation(
                        "a reverted generation is never applied",
                        format!("n{node} applied {id} after holding its revert"),
                    );
                }
            }
        }
        let bad_key = APP_KEY.parse::<Key>().expect("a valid key");
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(replica) = node.replica.as_ref() else { continue };
            if let Some(entry) = replica.state().config.get(&bad_key)
                && entry.value.as_str() == BAD_VALUE
            {
                violation("no node serves a reverted value at the end", format!("n{index} serves {APP_KEY} = bad"));
            }
        }
        violations
    }
}

/// Whether a member at log summary `summary` is ahead of a log at `settled` with reverts
/// `digest`: it holds a generation the log lacks, or other reverts.
fn is_ahead(settled: &VersionVector, digest: &str, summary: u32, summaries: &Summaries) -> bool {
    let theirs = summaries.reverts_digest(summary);
    settled.is_behind(summaries.vv(summary)) || (theirs != digest && !theirs.is_empty())
}

/// The bytes a generation takes on the wire.
fn generation_bytes(generation: &Generation) -> u64 {
    crate::wire::encode(generation).len() as u64
}

#[cfg(test)]
mod tests;
