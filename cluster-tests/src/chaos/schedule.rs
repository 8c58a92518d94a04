//! Seeded schedules: what a chaos run does, step by step, derived from its seed alone.
//!
//! A schedule interleaves changes sent to random nodes (good ones, and bad ones whose canary
//! turns unhealthy; proposals of a key under an approval rule, and their approvals), faults,
//! and heals. The same seed gives the same schedule; the timing of
//! real processes makes each run's history differ in detail, so a replay repeats the schedule,
//! not the interleaving (see `docs/chaos.md`).

use std::fmt;

use grapevine_proto::sim::SplitMix64;

/// The keys and flags a schedule changes. `app` is rendered to a file on every node, whose
/// health check fails while the file holds a value starting with `BAD`.
pub const APP_KEY: &str = "app";
pub const OTHER_KEYS: &[&str] = &["limits", "banner"];
pub const FLAGS: &[&str] = &["checkout", "search"];
/// The key under an approval rule of two signatures (`[[signing.approvals]]`): changed only
/// through a proposal and another operator's approval.
pub const GOVERNED_KEY: &str = "payments/limit";
/// The prefix of that rule.
pub const GOVERNED_PREFIX: &str = "payments/";

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Change(Change),
    Fault(Fault),
    /// Ends every fault in force: links pass, frozen nodes resume, killed nodes restart.
    Heal,
    /// Lets the cluster run.
    Pause {
        ms: u64,
    },
}

/// A change a client sends to node `node`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub node: usize,
    pub kind: ChangeKind,
    /// Unique within the run: every value a schedule writes is distinct, so a value read back
    /// names the change that wrote it.
    pub serial: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChangeKind {
    /// `app` to a good value, in waves.
    GoodApp,
    /// `app` to a value its application fails on, in waves: the canary should report it.
    BadApp,
    /// `app` to a good value at once (`--emergency`): every node renders it now.
    AppAtOnce,
    /// Another config key, at once (`--emergency`).
    Config { key: &'static str },
    /// A flag with two string variants, in waves.
    Flag { key: &'static str },
    /// An operator's rollback of the `nth` change acknowledged so far (modulo their number).
    Rollback { nth: usize },
    /// Alice's proposal of [`GOVERNED_KEY`], at once (`--emergency`) once approved.
    Propose,
    /// Bob's approval of the `nth` proposal acknowledged so far (modulo their number).
    Approve { nth: usize },
}

/// A fault, injected while the cluster runs and ended by the next [`Step::Heal`] (or the final
/// heal), except where it says otherwise.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Links between different groups are cut both ways.
    Partition { groups: Vec<Vec<usize>> },
    /// What `from` sends to each of `to` is dropped; the other way passes.
    OneWay { from: usize, to: Vec<usize> },
    /// The links between two groups go down and up every `period_ms`, until healed.
    Flap { groups: Vec<Vec<usize>>, period_ms: u64 },
    /// This share of messages (iptables: packets) on every link is dropped.
    Loss { share: f64 },
    /// SIGSTOP now; SIGCONT at the heal.
    Freeze { node: usize },
    /// `kill -9` now; restarted at the heal. `during` says what it is timed to interrupt.
    Kill { node: usize, during: Interrupt },
    /// The node restarts with its wall clock skewed by `ms` (it stays skewed for the run).
    Skew { node: usize, ms: i64 },
    /// Once the cluster has converged, the node stops, its store file is damaged, and it
    /// restarts: it must move the file aside and recover from its peers. Ends by itself.
    Corrupt { node: usize, damage: Damage },
}

/// What a `kill -9` is timed to interrupt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Interrupt {
    /// Nothing in particular.
    Anything,
    /// A rollout in waves: killed 0.3 s after a change in waves was accepted.
    Wave,
    /// A revert: killed as soon as a bad change's canary reports it anomalous.
    Revert,
    /// A file render: killed 0-40 ms after a change of the rendered key was accepted.
    Render,
}

/// How a store file is damaged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Damage {
    /// Cut to half its length.
    Truncate,
    /// 64 random bytes written into each of a random half of its pages in use. Damage that
    /// hits only pages redb no longer uses is harmless: then the node must simply go on.
    Garble,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one-way partition",
            Fault::Flap { .. } => "flapping links",
            Fault::Loss { .. } => "loss on every link",
            Fault::Freeze { .. } => "SIGSTOP/SIGCONT",
            Fault::Kill { during: Interrupt::Anything, .. } => "kill -9",
            Fault::Kill { during: Interrupt::Wave, .. } => "kill -9 mid-wave",
            Fault::Kill { during: Interrupt::Revert, .. } => "kill -9 mid-revert",
            Fault::Kill { during: Interrupt::Render, .. } => "kill -9 mid-render",
            Fault::Skew { .. } => "clock skew",
            Fault::Corrupt { damage: Damage::Truncate, .. } => "store truncated",
            Fault::Corrupt { damage: Damage::Garble, .. } => "store garbled",
        }
    }

    /// Whether it is a fault of the network (as opposed to one of a process or its disk).
    pub fn is_network(&self) -> bool {
        matches!(self, Fault::Partition { .. } | Fault::OneWay { .. } | Fault::Flap { .. } | Fault::Loss { .. })
    }

    /// The node it takes down until the heal, if any.
    pub fn takes_down(&self) -> Option<usize> {
        match self {
            Fault::Freeze { node } | Fault::Kill { node, .. } => Some(*node),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |node: &usize| format!("n{}", node + 1);
        let names = |nodes: &[usize]| nodes.iter().map(name).collect::<Vec<_>>().join(",");
        let groups = |groups: &[Vec<usize>]| groups.iter().map(|g| names(g)).collect::<Vec<_>>().join(" | ");
        match self {
            Step::Change(change) => {
                let node = name(&change.node);
                match &change.kind {
                    ChangeKind::GoodApp => write!(f, "change on {node}: config {APP_KEY} good-{}", change.serial),
                    ChangeKind::BadApp => write!(f, "change on {node}: config {APP_KEY} BAD-{}", change.serial),
                    ChangeKind::AppAtOnce => {
                        write!(f, "change on {node}: config {APP_KEY} good-{} (emergency)", change.serial)
                    }
                    ChangeKind::Config { key } => {
                        write!(f, "change on {node}: config {key} {} (emergency)", change.serial)
                    }
                    ChangeKind::Flag { key } => write!(f, "change on {node}: flag {key} v{}", change.serial),
                    ChangeKind::Rollback { nth } => write!(f, "rollback on {node} of acknowledged change #{nth}"),
                    ChangeKind::Propose => write!(f, "proposal on {node}: config {GOVERNED_KEY} {}", change.serial),
                    ChangeKind::Approve { nth } => write!(f, "approval on {node} of acknowledged proposal #{nth}"),
                }
            }
            Step::Fault(fault) => {
                write!(f, "fault: {}", fault.name())?;
                match fault {
                    Fault::Partition { groups: g } | Fault::Flap { groups: g, .. } => write!(f, " {}", groups(g)),
                    Fault::OneWay { from, to } => write!(f, " {} -/-> {}", name(from), names(to)),
                    Fault::Loss { share } => write!(f, " {:.0}%", share * 100.0),
                    Fault::Freeze { node } | Fault::Kill { node, .. } => write!(f, " {}", name(node)),
                    Fault::Skew { node, ms } => write!(f, " {} by {ms:+} ms", name(node)),
                    Fault::Corrupt { node, .. } => write!(f, " {}", name(node)),
                }
            }
            Step::Heal => write!(f, "heal"),
            Step::Pause { ms } => write!(f, "pause {ms} ms"),
        }
    }
}

/// The quick mode (CI): these seeds, in clusters of this shape, inject every kind of fault
/// at least once (a test below keeps it so).
pub const QUICK_SEEDS: [u64; 4] = [1, 13, 22, 39];
pub const QUICK_SHAPE: Shape = Shape { nodes: 5, events: 14 };

/// Every fault kind, as [`Fault::name`] names them.
pub const FAULT_KINDS: [&str; 12] = [
    "partition",
    "one-way partition",
    "flapping links",
    "loss on every link",
    "SIGSTOP/SIGCONT",
    "kill -9",
    "kill -9 mid-wave",
    "kill -9 mid-revert",
    "kill -9 mid-render",
    "clock skew",
    "store truncated",
    "store garbled",
];

/// How long a schedule is.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nodes: usize,
    /// Changes and faults, not counting pauses and heals.
    pub events: usize,
}

/// The schedule of `seed`.
pub fn generate(seed: u64, shape: Shape) -> Vec<Step> {
    let mut random = SplitMix64::new(seed);
    let n = shape.nodes;
    let mut steps = Vec::new();
    let mut serial = 0;
    // At most one node down (frozen or killed) at a time, and one network fault: a majority
    // stays up, as in the failure model of DESIGN.md.
    let (mut network_fault, mut down) = (false, false);
    for _ in 0..shape.events {
        let roll = random.next_unit();
        if roll < 0.55 {
            serial += 1;
            let node = random.below(n);
            let kind = match random.below(10) {
                0..=2 => ChangeKind::GoodApp,
                3..=4 => ChangeKind::BadApp,
                5..=6 => ChangeKind::Config { key: OTHER_KEYS[random.below(OTHER_KEYS.len())] },
                7..=8 => ChangeKind::Flag { key: FLAGS[random.below(FLAGS.len())] },
                _ => ChangeKind::Rollback { nth: random.below(8) },
            };
            steps.push(Step::Change(Change { node, kind, serial }));
        } else if roll < 0.85 {
            let fault = match random.below(12) {
                0..=1 if !network_fault => Fault::Partition { groups: split(&mut random, n) },
                2 if !network_fault => {
                    let from = random.below(n);
                    let mut to: Vec<usize> = (0..n).filter(|x| *x != from && random.next_unit() < 0.6).collect();
                    if to.is_empty() {
                        to.push((from + 1) % n);
                    }
                    Fault::OneWay { from, to }
                }
                3 if !network_fault => {
                    Fault::Flap { groups: split(&mut random, n), period_ms: 300 + random.below(700) as u64 }
                }
                4 if !network_fault => Fault::Loss { share: 0.1 + 0.3 * random.next_unit() },
                5 if !down => Fault::Freeze { node: random.below(n) },
                6..=7 if !down => {
                    let during =
                        [Interrupt::Anything, Interrupt::Wave, Interrupt::Revert, Interrupt::Render][random.below(4)];
                    Fault::Kill { node: random.below(n), during }
                }
                8 if !down => {
                    // Within the maximum clock offset (100 ms by default) and beyond it: beyond,
                    // a node ahead refuses changes (its clock is fenced), and peers hold back
                    // what it stamped before they measured it.
                    let magnitude = [40, 90, 1500][random.below(3)];
                    let sign = if random.below(2) == 0 { -1 } else { 1 };
                    Fault::Skew { node: random.below(n), ms: sign * magnitude }
                }
                9 if !down => {
                    let damage = if random.below(2) == 0 { Damage::Truncate } else { Damage::Garble };
                    Fault::Corrupt { node: random.below(n), damage }
                }
                _ => {
                    steps.push(Step::Heal);
                    (network_fault, down) = (false, false);
                    continue;
                }
            };
            if matches!(fault, Fault::Corrupt { .. }) {
                // A corruption waits for the cluster to converge, which a fault in force prevents.
                steps.push(Step::Heal);
                (network_fault, down) = (false, false);
            }
            network_fault |= fault.is_network();
            down |= fault.takes_down().is_some();
            steps.push(Step::Fault(fault));
        } else {
            steps.push(Step::Heal);
            (network_fault, down) = (false, false);
        }
        steps.push(Step::Pause { ms: 200 + random.below(1_300) as u64 });
    }
    with_proposals(steps, n)
}

/// Every other config change (the first, the third, ...) made a proposal of [`GOVERNED_KEY`],
/// approved through the next node after the pause that follows it. Derived from the steps
/// without drawing from the seed's generator, so the faults of every seed stay as they were.
fn with_proposals(steps: Vec<Step>, nodes: usize) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len());
    let (mut configs, mut proposals, mut approve_after_pause) = (0, 0, None);
    let mut serial = steps.iter().filter(|s| matches!(s, Step::Change(_))).count() as u64;
    for step in steps {
        let step = match step {
            Step::Change(Change { node, kind: ChangeKind::Config { key }, serial }) => {
                configs += 1;
                if configs % 2 == 0 {
                    Step::Change(Change { node, kind: ChangeKind::Config { key }, serial })
                } else {
                    approve_after_pause = Some(((node + 1) % nodes, proposals));
                    proposals += 1;
                    Step::Change(Change { node, kind: ChangeKind::Propose, serial })
                }
            }
            other => other,
        };
        let pause = matches!(step, Step::Pause { .. });
        out.push(step);
        if let Some((node, nth)) = approve_after_pause.take_if(|_| pause) {
            serial += 1;
            out.push(Step::Change(Change { node, kind: ChangeKind::Approve { nth }, serial }));
            out.push(Step::Pause { ms: 300 });
        }
    }
    out
}

/// Two non-empty groups, the first the larger (or equal).
fn split(random: &mut SplitMix64, n: usize) -> Vec<Vec<usize>> {
    let minority = 1 + random.below((n / 2).max(1));
    let mut nodes: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        nodes.swap(i, random.below(i + 1));
    }
    let (small, large) = nodes.split_at(minority);
    let (mut small, mut large) = (small.to_vec(), large.to_vec());
    small.sort_unstable();
    large.sort_unstable();
    vec![large, small]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_seeds_inject_every_kind_of_fault() {
        let mut kinds: Vec<&str> = QUICK_SEEDS
            .iter()
            .flat_map(|seed| generate(*seed, QUICK_SHAPE))
            .filter_map(|step| if let Step::Fault(fault) = step { Some(fault.name()) } else { None })
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let mut all = FAULT_KINDS.to_vec();
        all.sort_unstable();
        assert_eq!(kinds, all);
    }

    #[test]
    fn the_quick_seeds_propose_and_approve() {
        let steps: Vec<Step> = QUICK_SEEDS.iter().flat_map(|seed| generate(*seed, QUICK_SHAPE)).collect();
        let count = |wanted: fn(&ChangeKind) -> bool| {
            steps.iter().filter(|s| matches!(s, Step::Change(c) if wanted(&c.kind))).count()
        };
        let proposals = count(|k| *k == ChangeKind::Propose);
        assert!(proposals > 0, "no proposal in the quick seeds");
        assert_eq!(count(|k| matches!(k, ChangeKind::Approve { .. })), proposals, "one approval per proposal");
    }

    #[test]
    fn a_seed_gives_one_schedule_and_seeds_differ() {
        let shape = Shape { nodes: 5, events: 30 };
        assert_eq!(generate(7, shape), generate(7, shape));
        assert_ne!(generate(7, shape), generate(8, shape));
    }

    #[test]
    fn schedules_keep_a_majority_up_and_corrupt_only_after_a_heal() {
        for seed in 0..300 {
            let steps = generate(seed, Shape { nodes: 5, events: 40 });
            let (mut network, mut down) = (0, 0);
            for (i, step) in steps.iter().enumerate() {
                match step {
                    Step::Heal => (network, down) = (0, 0),
                    Step::Fault(fault) => {
                        if let Fault::Corrupt { .. } = fault {
                            assert_eq!(steps[i - 1], Step::Heal, "seed {seed}: a corruption follows a heal");
                        }
                        network += usize::from(fault.is_network());
                        down += usize::from(fault.takes_down().is_some());
                        assert!(network <= 1 && down <= 1, "seed {seed}: {network} network faults, {down} down");
                    }
                    _ => {}
                }
            }
            for step in &steps {
                if let Step::Fault(Fault::Partition { groups } | Fault::Flap { groups, .. }) = step {
                    assert_eq!(groups.len(), 2);
                    assert!(groups[0].len() >= groups[1].len() && !groups[1].is_empty(), "seed {seed}: {groups:?}");
                }
            }
        }
    }
}
