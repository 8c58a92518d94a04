//! The replica: one node's log, clock, released set and states, and every decision a node
//! makes on them, with no I/O and no clock of its own.
//!
//! It is shaped like quinn-proto's `Connection` or chitchat's `Chitchat`: the node (its engine)
//! owns sockets, the store, gossip and timers, and hands the replica what it learned as plain
//! data, with the time (`Now`); the replica answers what to do. Where durability orders the
//! steps, a decision and its commit are two calls with the store's write between them: the
//! replica decides (`Replica::triage`, `Replica::gates`, `Replica::reverts_due`,
//! `Replica::compaction`), the node stores durably, and only then commits (`Replica::add`,
//! `Replica::release`, `Replica::add_reverts`, `Replica::commit_compaction`). A failed write
//! skips the commit and nothing changes. The simulator (`crate::sim`) drives the same replica
//! over a simulated network and disk.
//!
//! - `start` folds what the store held (snapshot, generations, released set, reverts) and says
//!   which released generations are judged again (`Judging`: their watch window is not over).
//! - `seal` turns a submitted change into the generation it becomes here, from the live
//!   members' facts (`Members`); `check_own` makes the checks every peer makes on it;
//!   `accept_own` adds it once stored.
//! - `triage` sorts generations from a peer into new (to store), known, conflicting
//!   (`conflict` below), unproven, unsigned and stamped too far ahead.
//! - `release.rs`: the gates of the waves (`gates`, `release`, `judging`, `controls_of`).
//! - `revert.rs`: the anomaly quorum with its deferral (`reverts_due`), revoked keys'
//!   changes (`revocations_due`), rollbacks (`rollback`) and reverts taking effect.
//! - `governance.rs`: what a vote on a proposal becomes (`vote`), and which proposals this node
//!   enacts when approvals written apart complete them (`ready_to_enact`).
//! - `compact.rs`: which generations fold into the snapshot (`compaction`), a peer's snapshot
//!   (`absorb`), and the end of a recovery (`caught_up`).
//!
//! **Architecture Invariant:** the replica is changed only by its commits, each called after
//! the store holds what it commits; its decisions change nothing but their own bookkeeping
//! (a revert's deferral, a refusal remembered so it is counted once).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::error::ValidationError;
use crate::hlc::{Clock, ClockError, Stamp, Standing};
use crate::log::{InsertOutcome, Log, Retention, Tally};
use crate::model::{Change, ContentHash, Generation, GenerationBody, Op, OriginProof, Revert, Terms, VersionVector};
use crate::name::{Author, GenId, NodeName};
use crate::rollout::Plan;
use crate::schedule::Freezes;
use crate::signing::{Signed, SigningError, revoked_by};
use crate::snapshot::Snapshot;
use crate::state::AppliedState;
use crate::trust::{Trust, revocations};
use crate::validate::{check_envelope_with, validate_submitted_terms};
use crate::wire::WIRE_VERSION;

mod compact;
mod governance;
mod release;
mod revert;

pub use compact::{Absorbed, RECOVERY_SETTLE_MS};
pub use governance::{Ballot, ProposalError, Vote};
pub use release::{Gates, Judging, Release, controls_of};
pub use revert::{Anomaly, Cause, REVERT_DEFER_MS, RollbackError, RollbackOutcome};

/// Most refused generation ids remembered; past it a refusal is counted every time it is
/// pulled again, and its holder counts as ahead (the cost of a flood is bounded, not its alarm).
pub const MAX_REFUSED: usize = 64 * 1024;

/// Conflicting ids remembered for `status` and alerted once each; past it the oldest (lowest
/// id) is dropped from `status`, and a new one is alerted still.
pub const MAX_CONFLICTS_SHOWN: usize = 64;

/// When a decision is made, on the two clocks the node reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// The wall clock, in ms since the Unix epoch: for stamps, holds and the age of a stamp.
    pub wall_ms: u64,
    /// A monotonic clock, in ms from any origin: for waits (a deferred revert, a recovery).
    pub mono_ms: u64,
}

/// What a replica is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: NodeName,
    /// The most a peer's stamp may run ahead of this node's wall clock.
    pub max_clock_offset_ms: u64,
    /// How much history stays whole before compaction.
    pub retention: Retention,
    /// Whose changes this node takes (signed changes).
    pub trust: Arc<Trust>,
    /// When no wave of an ordinary change opens here (`[[rollout.freeze]]`).
    pub freezes: Arc<Freezes>,
    /// Most members a change of this node may record: `limits::MAX_MEMBERS` in a node, whose
    /// gossip digest must fit a datagram; the simulator, which has none, may study more.
    pub max_members: usize,
}

/// What the store holds at start.
#[derive(Debug, Default)]
pub struct Stored {
    pub snapshot: Snapshot,
    pub generations: Vec<Generation>,
    pub released: BTreeSet<GenId>,
    pub reverts: Vec<Revert>,
}

/// What readers see: the applied and desired states and a summary of the log, replaced as
/// a whole.
#[derive(Debug, Default)]
pub struct View {
    /// The fold of the generations released to this node: what applications get.
    pub state: AppliedState,
    /// The fold of the whole log: what the node will apply once every rollout is done.
    pub desired: AppliedState,
    pub version_vector: VersionVector,
    /// `version_vector` with the generations refused for good (no trusted operator signature)
    /// counted as held: a peer ahead of this vector has something to give; a peer ahead of
    /// `version_vector` only by refused generations has not.
    pub settled: VersionVector,
    /// Per origin, what the log holds whole of it up to `version_vector` (`Log::tallies`): a
    /// peer's tally of the same range that differs holds some id with other content.
    pub tallies: BTreeMap<NodeName, Tally>,
    /// Generations held whole.
    pub generations: usize,
    /// Generations folded into the snapshot.
    pub compacted: u64,
    /// Targets of the reverts held: generations that never count again.
    pub reverted: BTreeSet<GenId>,
    /// The summary of `reverted` that gossip carries.
    pub reverts_digest: String,
    /// Why this node's store was found damaged at start, while it recovers the log from its
    /// peers: until then it serves no reads and takes no changes (it could serve a stale state,
    /// and reuse ids of its own generations that peers hold).
    pub recovering: Option<String>,
    /// Ids under which a peer holds other content than this node (latest
    /// [`MAX_CONFLICTS_SHOWN`]): two processes wrote under one name.
    pub conflicts: BTreeSet<GenId>,
}

/// What the live members tell about a change about to be sealed (from gossip).
#[derive(Clone, Debug, Default)]
pub struct Members {
    /// The live members, this node included: the change's members, whose waves it spans.
    pub live: Vec<NodeName>,
    /// Each live member's value of the change's `waves_by` label (only members that have it).
    pub label_values: BTreeMap<NodeName, String>,
    /// The member (live or dead) that advertises the most of this node's own generations, and
    /// how many.
    pub most_held_own: Option<(String, u64)>,
    /// The live member that reads the oldest wire format, and that format.
    pub oldest_wire: Option<(String, u8)>,
    /// Where this node's clock stands against its peers' (`None` before any is measured): a
    /// node [`Standing::fenced`] takes no changes.
    pub clock: Option<Standing>,
}

/// Why a submitted change was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The change is invalid; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store failed; nothing was applied.
    #[error("the change was not stored: {0}")]
    Store(String),
    /// The engine has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
    /// The node's store was damaged and it has not caught up with its peers yet.
    #[error("this node is recovering its log from peers ({0}); send the change to another node")]
    Recovering(String),
    /// A peer holds more of this node's own generations than it does: it lost its store and is
    /// pulling them back, and a change now would reuse an id that peer holds; nothing was stored.
    #[error(
        "this node holds its own generations only up to {name}.{own}, but {peer} holds up to {name}.{held}: \
         it lost its store and is pulling them back, and a change now would reuse their ids; retry in a moment or send the change to another node"
    )]
    BehindOwnName { name: NodeName, own: u64, peer: String, held: u64 },
    /// The change is not signed by a trusted operator key; nothing was stored.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// This node's clock runs too far ahead of its peers' to stamp a change; nothing was stored.
    #[error(
        "this node's clock runs {ahead_ms} ms ahead of its peers' (the median of {peers}), past max_clock_offset_ms = {limit_ms}: \
         it takes no changes until its clock is fixed (NTP), since its stamps would win over newer writes; send the change to another node"
    )]
    ClockAhead { ahead_ms: i64, peers: usize, limit_ms: u64 },
    /// The change needs terms (a scheduled start, approvals, a governance record), which a live
    /// member of an older wire format could not hold; nothing was stored.
    #[error(
        "a scheduled start, approvals and governance records need wire format {WIRE_VERSION} on every live member, \
         but {member} reads format {format}; upgrade every node first"
    )]
    FormatTooOld { member: String, format: u8 },
}

/// A change as submitted: what `seal` stamps.
#[derive(Debug)]
pub struct Submission {
    pub change: Change,
    pub author: Option<Author>,
    pub signed: Option<Box<Signed>>,
    pub terms: Option<Box<Terms>>,
}

/// How `triage` sorted a batch of generations from a peer.
#[derive(Debug, Default)]
pub struct Triage {
    /// New generations, in arrival order: to store, then `add`.
    pub new: Vec<Generation>,
    /// Generations under an id this node holds with other content (it keeps its own); `true`
    /// when the id is new to `View::conflicts`.
    pub conflicts: Vec<(Generation, bool)>,
    /// Generations refused for good for their signature, the first time each is refused.
    pub unsigned: Vec<(GenId, SigningError)>,
    /// Generations stamped further ahead than the maximum clock offset (pulled again later).
    pub ahead: Vec<(GenId, ClockError)>,
}

/// What a change would do to one key: its desired value before, and after.
#[derive(Debug, serde::Serialize)]
pub struct DiffEntry {
    pub kind: &'static str,
    pub key: String,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
}

/// One node's replica of the log and everything decided on it.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    log: Log,
    /// Generations released to (applied on) this node.
    released: BTreeSet<GenId>,
    /// The generations held whole, neither released here nor reverted, in fold order, with
    /// their waves: those whose gates a pass looks at. Kept with the log, so a pass costs per
    /// generation waiting, not per generation held, and ranks a generation's members once
    /// (`Plan::of` hashes every member), shared with every other copy of the generation
    /// (`Plan::shared`).
    pending: BTreeMap<(Stamp, GenId), Arc<Plan>>,
    /// Whether a write of the log (its snapshot or a generation) revokes an operator key:
    /// until one does, the revocation pass has nothing to find and reads nothing.
    holds_revocations: bool,
    /// The evidence each generation released since start was released on (pruned with the log).
    releases: BTreeMap<GenId, Release>,
    state: AppliedState,
    desired: AppliedState,
    clock: Clock,
    /// Why the store was damaged at start, while the node recovers from peers.
    recovering: Option<String>,
    /// Since when (monotonic ms) a recovering node has seen no live peer ahead of its log.
    caught_up_since: Option<u64>,
    /// Generations whose quorum this node saw while a live member had written the revert,
    /// and since when (monotonic ms) it waits for that revert to arrive.
    deferred_reverts: BTreeMap<GenId, u64>,
    /// Generations refused for good (no trusted operator signature), by origin, up to
    /// [`MAX_REFUSED`] ids: each is counted once, and a peer holding them is not ahead.
    refused: BTreeMap<NodeName, BTreeSet<u64>>,
    /// Ids under which a peer sent other content than this node holds.
    conflicts: BTreeSet<GenId>,
    /// Generations refused because their origin did not prove them, up to [`MAX_REFUSED`]:
    /// each is checked and counted once. Not `refused`: the id stays open for the real
    /// origin's content.
    unproven: HashSet<(GenId, ContentHash)>,
}

impl Replica {
    /// The replica over what the store held, and the released generations to judge again:
    /// those with operations, not reverted, stamped within their watch window (their age
    /// restarts from zero, so their reports may still open later waves).
    pub fn start(config: Config, stored: Stored, recovering: Option<String>, now: Now) -> (Replica, Vec<Judging>) {
        let Stored { snapshot, generations, released, reverts } = stored;
        let mut log = Log::new();
        log.absorb_snapshot(&snapshot);
        for revert in &reverts {
            log.revert(revert);
        }
        let mut clock = Clock::new(config.max_clock_offset_ms);
        for generation in generations {
            // Our own stamps are followed whatever the wall clock says now, so our changes stay
            // in order; peers' stamps under the same offset rule as when they arrived.
            let physical = if generation.id().origin == config.name { u64::MAX } else { now.wall_ms };
            let _ = clock.observe(generation.body.hlc, physical);
            log.insert(generation);
        }
        let desired = log.state(|_| true);
        let state = log.state_sharing(|id| released.contains(id), &desired);
        let holds_revocations = holds_revocations(&log);
        let mut replica = Replica {
            config,
            log,
            released,
            pending: BTreeMap::new(),
            holds_revocations,
            releases: BTreeMap::new(),
            state,
            desired,
            clock,
            recovering,
            caught_up_since: None,
            deferred_reverts: BTreeMap::new(),
            refused: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            unproven: HashSet::new(),
        };
        replica.prune_pending();
        let recent =
            |g: &&Generation| now.wall_ms.saturating_sub(g.body.hlc.wall_ms) < g.body.change.policy.watch_window_ms;
        let (log, released) = (&replica.log, &replica.released);
        let judged =
            |g: &&Generation| released.contains(g.id()) && !log.is_reverted(g.id()) && !g.body.change.ops.is_empty();
        let judging = log.iter().filter(judged).filter(recent).map(|g| replica.judging(g)).collect();
        (replica, judging)
    }

    pub fn name(&self) -> &NodeName {
        &self.config.name
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The applied state: the fold of the snapshot and the released generations.
    pub fn state(&self) -> &AppliedState {
        &self.state
    }

    /// The desired state: the fold of the whole log but the reverted generations.
    pub fn desired(&self) -> &AppliedState {
        &self.desired
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn is_released(&self, id: &GenId) -> bool {
        self.released.contains(id)
    }

    /// The evidence `id` was released on here, if it was since start.
    pub fn release_of(&self, id: &GenId) -> Option<&Release> {
        self.releases.get(id)
    }

    /// Why the store was damaged at start, while the node recovers.
    pub fn recovering(&self) -> Option<&str> {
        self.recovering.as_deref()
    }

    /// Whether a write of the log revokes an operator key.
    pub fn holds_revocations(&self) -> bool {
        self.holds_revocations
    }

    /// The time of this node's hybrid clock: its wall clock, or the greatest stamp it has seen
    /// if that is ahead (by at most the clock-offset bound). Starts and freezes are judged by it.
    pub fn hybrid_now_ms(&self, now: Now) -> u64 {
        now.wall_ms.max(self.clock.last().wall_ms)
    }

    /// What readers see now.
    pub fn view(&self) -> View {
        View {
            state: self.state.clone(),
            desired: self.desired.clone(),
            version_vector: self.log.version_vector().clone(),
            settled: self.settled(),
            tallies: self.log.tallies().clone(),
            generations: self.log.len(),
            compacted: self.log.base().covers().total(),
            reverted: self.log.reverts().map(|revert| revert.target).collect(),
            reverts_digest: self.log.reverts_digest(),
            recovering: self.recovering.clone(),
            conflicts: self.conflicts.clone(),
        }
    }

    /// The version vector with the generations refused for good counted as held ([`View::settled`]).
    pub fn settled(&self) -> VersionVector {
        let mut settled = self.log.version_vector().clone();
        for (origin, seqs) in &self.refused {
            let mut seq = settled.get(origin);
            let held = |seq: u64| self.log.get(&GenId { origin: origin.clone(), seq }).is_some();
            while seqs.contains(&(seq + 1)) || held(seq + 1) {
                seq += 1;
            }
            settled.raise(origin.clone(), seq);
        }
        settled
    }

    /// The generation `submission` becomes here now, checked and stamped by `clock` (a copy
    /// of the replica's, committed by `accept_own`), proven by `prove`; not stored. Refused
    /// while this node's clock is fenced, recovering, or behind a peer on its own generations.
    pub fn seal(
        &self,
        submission: Submission,
        members: Members,
        now: Now,
        clock: &mut Clock,
        prove: impl FnOnce(&Generation) -> Option<OriginProof>,
    ) -> Result<Generation, SubmitError> {
        let Submission { change, author, signed, terms } = submission;
        let limit_ms = self.config.max_clock_offset_ms;
        if let Some(Standing { ahead_ms, peers }) = members.clock.filter(|standing| standing.fenced(limit_ms)) {
            return Err(SubmitError::ClockAhead { ahead_ms, peers, limit_ms });
        }
        if let Some(reason) = &self.recovering {
            return Err(SubmitError::Recovering(reason.clone()));
        }
        let name = self.config.name.clone();
        let own = self.log.version_vector().get(&name);
        if let Some((peer, held)) = members.most_held_own
            && held > own
        {
            return Err(SubmitError::BehindOwnName { name, own, peer, held });
        }
        if terms.is_some()
            && let Some((member, format)) = members.oldest_wire
            && format < WIRE_VERSION
        {
            return Err(SubmitError::FormatTooOld { member, format });
        }
        validate_submitted_terms(&change, terms.as_deref())?;
        let groups = groups_of(&members.live, &members.label_values, &change)?;
        let body = GenerationBody {
            id: GenId { seq: self.log.next_seq(&name), origin: name },
            hlc: clock.tick(now.wall_ms),
            members: members.live.into(),
            groups,
            change,
            // A signed change is by its operator, whoever sent it.
            author: signed.as_ref().map_or(author, |signed| Some(signed.delegation.operator.clone())),
            signed,
            terms,
        };
        let generation = body.seal();
        let proof = prove(&generation);
        let generation = generation.proven(proof);
        check_envelope_with(&generation, self.config.max_members)?;
        Ok(generation)
    }

    /// The checks every peer makes on this node's sealed `generation` ([`Trust::check`]) and,
    /// since this node knows the history, that no key that signed it (its operator's, its
    /// approvers') is revoked in the log: peers would revert it at once.
    pub fn check_own(&self, generation: &Generation) -> Result<(), SubmitError> {
        self.config.trust.check(&generation.body)?;
        let approvals = generation.body.terms.iter().flat_map(|terms| &terms.approvals);
        let signers: Vec<&Signed> = generation.body.signed.iter().map(|signed| &**signed).chain(approvals).collect();
        // The revocations are read from the whole log, so only for a signed change of a log
        // that holds any.
        let mut revoked =
            if signers.is_empty() || !self.holds_revocations { BTreeMap::new() } else { revocations(&self.log) };
        for signed in signers {
            if let Some(by) = revoked.remove(&signed.delegation.key) {
                let (operator, key) = (signed.delegation.operator.clone(), signed.delegation.key);
                return Err(SigningError::Revoked { operator, key, by: by.1 }.into());
            }
        }
        Ok(())
    }

    /// Commits this node's own `generation`, once stored, with the clock that stamped it.
    pub fn accept_own(&mut self, generation: Generation, clock: Clock) {
        self.clock = clock;
        self.add(generation);
    }

    /// Per key of `generation`, its desired value before and after (a dry run's diff).
    pub fn diff(&self, generation: &Generation) -> Vec<DiffEntry> {
        let ops = generation.body.change.ops.iter();
        ops.map(|op| {
            let key = op.key();
            let before = match op {
                Op::SetFlag { .. } => {
                    self.desired.flags.get(key).map(|e| serde_json::to_value(&*e.value).unwrap_or_default())
                }
                Op::PutConfig { .. } => self.desired.config.get(key).map(|e| e.value.to_value()),
            };
            let after = match op {
                Op::SetFlag { definition, .. } => definition.to_value(),
                Op::PutConfig { value, .. } => value.to_value(),
            };
            DiffEntry { kind: op.kind(), key: key.to_string(), before, after }
        })
        .collect()
    }

    /// Sorts generations from a peer ([`Triage`]). `proven` checks that a generation's origin
    /// made it (the node's certificates), and is asked once per generation and content;
    /// generations already folded into the snapshot, or held with the same content, are
    /// dropped. The stamps of the new ones are observed on the replica's clock.
    pub fn triage(
        &mut self,
        generations: Vec<Generation>,
        now: Now,
        mut proven: impl FnMut(&Generation) -> bool,
    ) -> Triage {
        let mut triage = Triage::default();
        for generation in generations {
            if self.log.base().covers().covers(generation.id()) {
                // Folded into our snapshot already.
                continue;
            }
            let known = self.log.get(generation.id()).or_else(|| triage.new.iter().find(|g| g.id() == generation.id()));
            if known.is_some_and(|existing| existing.hash == generation.hash) {
                continue;
            }
            let held_other = known.is_some();
            if !self.proven(&generation, &mut proven) {
                continue;
            }
            if held_other {
                let first = self.remember_conflict(generation.id());
                triage.conflicts.push((generation, first));
                continue;
            }
            if let Err(refusal) = self.config.trust.check(&generation.body) {
                // Refused for good: no operator key the cluster trusts signed it.
                if self.remember_refusal(generation.id()) {
                    triage.unsigned.push((generation.id().clone(), refusal));
                }
                continue;
            }
            if let Err(refusal) = self.clock.observe(generation.body.hlc, now.wall_ms) {
                // Refused, not stored: a node whose clock runs ahead must not win every key
                // until real time catches up. Once our clock is within the maximum offset of
                // the stamp, the next pull takes it.
                triage.ahead.push((generation.id().clone(), refusal));
                continue;
            }
            triage.new.push(generation);
        }
        triage
    }

    /// Whether `generation`'s origin proves it made it; a refusal is remembered (up to
    /// [`MAX_REFUSED`]), so `proven` is asked once per generation and content.
    fn proven(&mut self, generation: &Generation, proven: &mut impl FnMut(&Generation) -> bool) -> bool {
        let key = (generation.id().clone(), generation.hash);
        if self.unproven.contains(&key) {
            return false;
        }
        if proven(generation) {
            return true;
        }
        if self.unproven.len() >= MAX_REFUSED {
            self.unproven.clear();
        }
        self.unproven.insert(key);
        false
    }

    /// Remembers a generation refused for good; false if it was refused before.
    pub fn remember_refusal(&mut self, id: &GenId) -> bool {
        let remembered: usize = self.refused.values().map(BTreeSet::len).sum();
        if remembered >= MAX_REFUSED {
            return true;
        }
        self.refused.entry(id.origin.clone()).or_default().insert(id.seq)
    }

    /// Remembers a conflicting id for `View::conflicts`; false if it was known.
    fn remember_conflict(&mut self, id: &GenId) -> bool {
        if self.conflicts.contains(id) {
            return false;
        }
        if self.conflicts.len() >= MAX_CONFLICTS_SHOWN {
            self.conflicts.pop_first();
        }
        self.conflicts.insert(id.clone());
        true
    }

    /// Adds a generation checked to be new (`triage`, `seal`), once stored, to the log and the
    /// desired state; its gate decides when it applies (`release`).
    pub fn add(&mut self, generation: Generation) {
        if !self.log.is_reverted(generation.id()) {
            self.desired.apply(&generation);
            if !self.released.contains(generation.id()) {
                self.pending.insert((generation.body.hlc, generation.id().clone()), Plan::shared(&generation.body));
            }
        }
        self.holds_revocations |= revokes(&generation);
        let outcome = self.log.insert(generation);
        debug_assert_eq!(outcome, InsertOutcome::Inserted);
    }

    /// Recomputes both states from the log: after a revert or a snapshot, which can take a key
    /// back to an earlier value (a new generation only ever moves a key forward, and is
    /// applied alone: `add`, `release`).
    fn refold(&mut self) {
        self.desired = self.log.state(|_| true);
        self.state = self.log.state_sharing(|id| self.released.contains(id), &self.desired);
        self.holds_revocations = holds_revocations(&self.log);
        self.prune_pending();
    }

    /// Makes `pending` hold exactly the generations held whole, neither released nor
    /// reverted: rebuilt from the log at start, trimmed after reverts and snapshots.
    fn prune_pending(&mut self) {
        let (log, released) = (&self.log, &self.released);
        let waiting = |id: &GenId| log.get(id).is_some() && !released.contains(id) && !log.is_reverted(id);
        if self.pending.is_empty() {
            let unreleased = log.iter().filter(|g| waiting(g.id()));
            self.pending = unreleased.map(|g| ((g.body.hlc, g.id().clone()), Plan::shared(&g.body))).collect();
        } else {
            self.pending.retain(|(_, id), _| waiting(id));
        }
    }
}

/// With a `waves_by` policy, each member's value of the label (empty for members without
/// it); a label no live member has is refused.
fn groups_of(
    members: &[NodeName],
    values: &BTreeMap<NodeName, String>,
    change: &Change,
) -> Result<Vec<String>, SubmitError> {
    let Some(label) = &change.policy.waves_by else { return Ok(Vec::new()) };
    if values.is_empty() {
        let detail = format!("--waves-by {label:?}: no live member has that label");
        return Err(ValidationError::Policy { detail }.into());
    }
    Ok(members.iter().map(|member| values.get(member).cloned().unwrap_or_default()).collect())
}

/// Whether a write of `log` (its snapshot or a generation) is a key revocation.
fn holds_revocations(log: &Log) -> bool {
    let snapshot = log.base().writes().any(|write| revoked_by(write.op.key()).is_some());
    snapshot || log.iter().any(revokes)
}

/// Whether `generation` writes a key revocation.
fn revokes(generation: &Generation) -> bool {
    generation.body.change.ops.iter().any(|op| revoked_by(op.key()).is_some())
}

#[cfg(test)]
mod tests;
