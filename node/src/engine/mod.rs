//! The engine: the one task that owns a node's replica (`proto::replica::Replica`: the log,
//! clock, released set and states, and every decision on them) and does its I/O.
//!
//! The replica decides; the engine reads what it decides on from gossip (members, reports,
//! peers' vectors), stores durably what a decision needs stored, then commits it to the
//! replica, publishes, pushes, judges, alerts, counts and logs. A failed store skips the commit.
//!
//! - Commands arrive on an `mpsc` channel of `COMMAND_QUEUE_CAPACITY` (256): `Submit`, `Preview`,
//!   `Ingest { generations, from }`, `IngestReverts { reverts, from }`, `Rollback { target }`,
//!   `AbsorbSnapshot`, `History { limit, shown }` (the newest `limit` generations the filter
//!   accepts, from `Log::in_fold_order`: only those are copied), `Rollout { id }`, `Readiness`,
//!   `Waiting`, `Audit`, `AuditHistory`, `Proposals` and `Vote` (`governance.rs`). Each is
//!   answered on a `oneshot`; a full queue makes senders wait (back-pressure).
//! - The same `select!` ticks `COMPACTION_CHECK` (10 s; a `Submit` or `Ingest` compacts at once
//!   only when `Replica::over_retention_batch`), `RELEASE_RECHECK` (1 s), wakes on
//!   `Gossip::reports_changed`, and sleeps until `next_deadline`: the earliest of `next_gate` (when
//!   a waiting gate opens by its reports aging) and the end of a deferred revert's wait
//!   (`Replica::next_revert_deadline`). There is no polling: a gate opens on the report that
//!   completes it, or at its deadline.
//! - `decide` is `revocation_pass`, `revert_pass` (`revert.rs`) then `release_pass`
//!   (`release.rs`). It runs at start, after every `Submit`, `Ingest` and `AbsorbSnapshot`, and
//!   whenever a peer's report changes; `ingest` and `absorb_snapshot` also run
//!   `revocation_pass` themselves, right after storing. Deadlines and the tick run `timed_pass`.
//!   The tick is only a safety net, for a member turning live again (chitchat fires no key event
//!   for it) and the end of a recovery (`Replica::caught_up`).
//! - `submit`: `Replica::seal` from the live members' facts (`Members`: live names, the change's
//!   `waves_by` label values, the most of this node's own generations a peer advertises, the
//!   oldest wire format, and the clock's standing against its peers, which fences a node running
//!   ahead: 503), proven by `Origins::prove`; `Replica::check_own`; stored; then
//!   `accept_own`, published, and handed to the pusher as a `PushJob` to sweep (pushed down its
//!   push tree, then on to any live peer not yet holding it). No gossip nudge: peers that
//!   learned the new vector from one would pull what the tree is bringing them.
//! - `ingest`: `Replica::triage` (its origin checked by `Origins::check`, counted and logged once
//!   per generation and content), conflicts surfaced (`conflict.rs`), refusals counted; the new
//!   ones handed to the pusher with the peer they came from (left out: push on first receipt)
//!   before storing them in one transaction (forwarding waits for no relay's fsync; the
//!   acknowledgement does), then `Replica::add` and published.
//! - `compact`: `Replica::compaction` over the live peers' advertised vectors and whether every
//!   live peer's `reverts` key equals this node's, then `store_snapshot` (size check against
//!   `MAX_SNAPSHOT_BYTES`, `Store::compact`) and `commit_compaction`; `absorb_snapshot` takes a
//!   peer's snapshot the same way (`Replica::absorb`, `commit_absorbed`). Either way
//!   `snapshot_committed` stops judging the covered generations (`Health::forget`) and deletes
//!   this node's `rep.` and `rv.` keys on them (`Gossip::delete_reports`).
//! - `spawn` starts the replica over the store's contents (`Replica::start`), hands the
//!   released generations still within their watch window to `Health::applied` again (their
//!   age restarts from zero), publishes, and runs a first `decide`.
//! - `publish` sends the replica's `View` to readers (`EngineHandle::view()`, a `watch`
//!   channel: readers never wait on the queue), sets `grapevine_generations_known` and
//!   `grapevine_reverts_known`, and the gossip keys (`applied` and `digest` describe the applied
//!   state; `reverts` is `Log::reverts_digest`; `vv.` and `vh.` the log's summary).
//! - While the replica is recovering (`EngineParts::recovering`: the store was found damaged),
//!   `seal` refuses every change (503), the API refuses reads, `/readyz` and `/v1/watch`, and the
//!   files task touches no file, until `Replica::caught_up` (then the store's mark is cleared).
//! - The wall clock is `now_ms(clock_skew_ms)`; the skew is 0 outside `testsuite` builds. The
//!   replica's monotonic clock counts from the engine's start (`epoch`).
//!
//! **Architecture Invariant:** a generation is stored durably (`Store::put`, one committed redb
//! transaction) before it is acknowledged to a client, committed to the replica, published, or
//! counted in `grapevine_sync_generations_stored_total`; only forwarding to peers may come
//! first. If the store fails, nothing changes.
//!
//! **Architecture Invariant:** the log and the stored snapshot change together: `Store::compact`
//! writes the new snapshot and deletes the generations it covers (and their `released` rows) in
//! one transaction, and only then does the replica take the new log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_proto::limits::MAX_SNAPSHOT_BYTES;
use grapevine_proto::log::Retention;
use grapevine_proto::replica::{Absorbed, Config, Judging, Members, Now, Replica, Submission, Triage};
use grapevine_proto::signing::{Signed, SigningError};
use grapevine_proto::trust::Trust;
use grapevine_proto::{
    AppliedState, Author, Change, Clock, GenId, Generation, Log, NodeName, Revert, Snapshot, Terms, VersionVector,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::alerts::Alerts;
use crate::clock;
use crate::gossip::{Gossip, KEY_APPLIED, KEY_DIGEST, KEY_GENERATIONS, KEY_REVERTS, tally_keys, version_vector_keys};
use crate::health::Health;
use crate::metrics::{Metrics, WarnLimiter};
use crate::store::{Store, StoreError};

/// How often the engine looks for generations to compact, besides after each change that
/// takes the log a batch past the retention count (`Replica::over_retention_batch`).
const COMPACTION_CHECK: Duration = Duration::from_secs(10);

/// Commands waiting for the engine. Submissions come from HTTP handlers and ingests from the
/// sync task; a full queue makes them wait, which is the back-pressure we want.
const COMMAND_QUEUE_CAPACITY: usize = 256;

mod audit;
mod conflict;
mod governance;
mod release;
mod revert;

pub use audit::AuditBatch;
pub use governance::{ProposalError, ProposalView, Vote, record_change};
pub use grapevine_proto::replica::{DiffEntry, RollbackError, RollbackOutcome, Stored, SubmitError, View};

/// The safety net under the event-driven gates. A gate opens on a new fact, which wakes the
/// engine itself (a report: `Gossip::reports_changed`; a generation or control: its command),
/// or when its last needed report is baked, which the engine sleeps until (`next_gate`). One
/// fact raises no event: a member turning live again (chitchat fires no key event for it),
/// whose report then counts again; and the end of a recovery is a condition held over time.
/// Both are rare and slow already (failure detection takes seconds), so once a second does.
const RELEASE_RECHECK: Duration = Duration::from_secs(1);

/// What `/readyz` answers.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Live peers whose logs hold generations this node lacks.
    pub behind: Vec<String>,
    /// Generations whose wave is open for this node but that it has not applied yet.
    pub open_not_applied: Vec<String>,
    /// Why the store was damaged, while the node recovers from its peers (never ready then).
    pub recovering: Option<String>,
}

/// What a change would do, from a dry run.
#[derive(Debug, serde::Serialize)]
pub struct Preview {
    /// The id it would take on this node now.
    pub generation: String,
    pub policy: grapevine_proto::policy::Policy,
    /// Its waves, from the members alive now.
    pub waves: Vec<Vec<NodeName>>,
    pub diff: Vec<DiffEntry>,
}

enum Command {
    Submit {
        change: Change,
        author: Option<Author>,
        signed: Option<Box<Signed>>,
        terms: Option<Box<Terms>>,
        reply: oneshot::Sender<Result<Generation, SubmitError>>,
    },
    Preview {
        change: Change,
        reply: oneshot::Sender<Result<Preview, SubmitError>>,
    },
    Readiness {
        reply: oneshot::Sender<Readiness>,
    },
    Waiting {
        reply: oneshot::Sender<Vec<(GenId, usize, usize)>>,
    },
    Ingest {
        generations: Vec<Generation>,
        from: Option<SocketAddr>,
        reply: oneshot::Sender<usize>,
    },
    IngestReverts {
        reverts: Vec<Revert>,
        from: Option<SocketAddr>,
        reply: oneshot::Sender<usize>,
    },
    Rollback {
        target: GenId,
        reply: oneshot::Sender<Result<RollbackOutcome, RollbackError>>,
    },
    AbsorbSnapshot {
        snapshot: Snapshot,
        reply: oneshot::Sender<bool>,
    },
    History {
        limit: usize,
        shown: HistoryFilter,
        reply: oneshot::Sender<Vec<Generation>>,
    },
    Rollout {
        id: GenId,
        reply: oneshot::Sender<Option<crate::replies::Rollout>>,
    },
    Audit {
        cursor: Arc<grapevine_proto::audit::Cursor>,
        limit: usize,
        reply: oneshot::Sender<AuditBatch>,
    },
    AuditHistory {
        limit: usize,
        shown: HistoryFilter,
        reply: oneshot::Sender<Vec<grapevine_proto::audit::Record>>,
    },
    Proposals {
        reply: oneshot::Sender<Vec<ProposalView>>,
    },
    Vote {
        proposal: GenId,
        signed: Box<Signed>,
        vote: Vote,
        reply: oneshot::Sender<Result<(Generation, bool), ProposalError>>,
    },
}

/// Which generations a history request lists (the API's filter of what its caller may see).
pub type HistoryFilter = Box<dyn Fn(&Generation) -> bool + Send>;

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<View>>,
}

impl EngineHandle {
    /// Sends the command `make` builds around a reply channel and waits for the reply;
    /// `None` when the engine has stopped (the node is shutting down).
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, response) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        response.await.ok()
    }

    /// Validates, stamps, stores and applies a change; returns its generation once durable.
    /// A signed change is recorded as by its operator; it must pass the checks every peer
    /// makes ([`Trust::check`]) and its key must not be revoked in this node's log.
    /// `terms` (a scheduled start, approvals, a governance record) need every live member to
    /// read wire format 7.
    pub async fn submit(
        &self,
        change: Change,
        author: Option<Author>,
        signed: Option<Box<Signed>>,
        terms: Option<Box<Terms>>,
    ) -> Result<Generation, SubmitError> {
        let submit = |reply| Command::Submit { change, author, signed, terms, reply };
        self.ask(submit).await.unwrap_or(Err(SubmitError::Stopped))
    }

    /// Stores and applies validated generations from peer `from`; returns how many were new.
    pub async fn ingest(&self, generations: Vec<Generation>, from: Option<SocketAddr>) -> usize {
        if generations.is_empty() {
            return 0;
        }
        self.ask(|reply| Command::Ingest { generations, from, reply }).await.unwrap_or(0)
    }

    /// Whether this node has caught up with its live peers' logs and applied every generation
    /// whose wave is open for it (`/readyz`).
    pub async fn readiness(&self) -> Readiness {
        let stopped = || Readiness { ready: false, behind: Vec::new(), open_not_applied: Vec::new(), recovering: None };
        self.ask(|reply| Command::Readiness { reply }).await.unwrap_or_else(stopped)
    }

    /// The generations waiting here for their wave: id, waves open in this node's view, waves.
    pub async fn waiting(&self) -> Vec<(GenId, usize, usize)> {
        self.ask(|reply| Command::Waiting { reply }).await.unwrap_or_default()
    }

    /// What a change would do (a dry run): checked like a submission, stored nowhere.
    pub async fn preview(&self, change: Change) -> Result<Preview, SubmitError> {
        self.ask(|reply| Command::Preview { change, reply }).await.unwrap_or(Err(SubmitError::Stopped))
    }

    /// Takes in reverts from peer `from`; returns how many were new.
    pub async fn ingest_reverts(&self, reverts: Vec<Revert>, from: Option<SocketAddr>) -> usize {
        if reverts.is_empty() {
            return 0;
        }
        self.ask(|reply| Command::IngestReverts { reverts, from, reply }).await.unwrap_or(0)
    }

    /// Writes the revert of `target`, as an operator asked.
    pub async fn rollback(&self, target: GenId) -> Result<RollbackOutcome, RollbackError> {
        self.ask(|reply| Command::Rollback { target, reply }).await.unwrap_or(Err(RollbackError::Stopped))
    }

    /// Takes in a peer's validated snapshot; true when it brought anything new.
    pub async fn absorb_snapshot(&self, snapshot: Snapshot) -> bool {
        self.ask(|reply| Command::AbsorbSnapshot { snapshot, reply }).await.unwrap_or(false)
    }

    /// The rollout of a generation held whole, as this node sees it.
    pub async fn rollout(&self, id: GenId) -> Option<crate::replies::Rollout> {
        self.ask(|reply| Command::Rollout { id, reply }).await.flatten()
    }

    /// The newest `limit` generations held whole that `shown` accepts, newest first in
    /// `(hlc, origin, seq)` order. Only those are copied: a log of thousands costs no more to
    /// list from than a fresh one.
    pub async fn history(&self, limit: usize, shown: HistoryFilter) -> Vec<Generation> {
        self.ask(|reply| Command::History { limit, shown, reply }).await.unwrap_or_default()
    }

    /// Up to `limit` audit records of the entries `cursor` lacks (`None`: the engine stopped).
    pub async fn audit(&self, cursor: Arc<grapevine_proto::audit::Cursor>, limit: usize) -> Option<AuditBatch> {
        self.ask(|reply| Command::Audit { cursor, limit, reply }).await
    }

    /// The audit records of the newest `limit` generations `shown` accepts, and of their reverts.
    pub async fn audit_history(&self, limit: usize, shown: HistoryFilter) -> Vec<grapevine_proto::audit::Record> {
        self.ask(|reply| Command::AuditHistory { limit, shown, reply }).await.unwrap_or_default()
    }

    /// Every proposal of the log, oldest first (`proto::approvals`).
    pub async fn proposals(&self) -> Vec<ProposalView> {
        self.ask(|reply| Command::Proposals { reply }).await.unwrap_or_default()
    }

    /// An operator's approval or rejection of `proposal`; returns the generation it became and
    /// whether it enacted the proposal (the signatures met every rule).
    pub async fn vote(
        &self,
        proposal: GenId,
        signed: Box<Signed>,
        vote: Vote,
    ) -> Result<(Generation, bool), ProposalError> {
        let vote = |reply| Command::Vote { proposal, signed, vote, reply };
        self.ask(vote).await.unwrap_or(Err(ProposalError::Submit(SubmitError::Stopped)))
    }

    /// The current view, without waiting on the engine.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A receiver that changes with every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }
}

/// What the engine hands the pusher (`sync::push`): generations and reverts a node just
/// stored, and the peer they came from (not pushed back to it).
pub struct PushJob {
    pub reverts: Vec<Revert>,
    pub generations: Vec<Generation>,
    pub from: Option<SocketAddr>,
    /// The summary of this node's reverts with the job's: peers with another one may lack them.
    pub reverts_digest: String,
    /// This node wrote the job's generations (or an operator's rollback): after its push tree
    /// it keeps pushing to every live peer not known to hold them (`sync::push`'s sweep), so
    /// none waits for anti-entropy.
    pub sweep: bool,
    /// The generations go in the push itself (their encodings add up to at most
    /// `limits::PUSH_INLINE_BYTES`); otherwise the push only announces them and receivers pull
    /// them from this node.
    pub inline: bool,
}

/// What the engine is made of.
pub struct EngineParts {
    pub name: NodeName,
    pub max_clock_offset_ms: u64,
    /// Added to the wall clock: zero, except in tests of skewed clocks.
    pub clock_skew_ms: i64,
    pub store: Arc<Store>,
    pub gossip: Arc<Gossip>,
    pub metrics: Arc<Metrics>,
    /// Where newly stored generations go to be pushed to peers.
    pub pushes: mpsc::Sender<PushJob>,
    /// How much history stays whole before compaction.
    pub retention: Retention,
    /// Judges the generations this node applies.
    pub health: Health,
    /// Where reverts this node writes are announced.
    pub alerts: Alerts,
    /// Why the store was damaged at start, while the node recovers from peers.
    pub recovering: Option<String>,
    /// Whose changes this node takes (signed changes).
    pub trust: Arc<Trust>,
    /// This node's clock against its peers': ahead by more than `max_clock_offset_ms`, it
    /// takes no changes.
    pub offsets: crate::clock::Offsets,
    /// Proves this node's generations and checks its peers' ([`crate::origin`]).
    pub origins: crate::origin::Origins,
    /// When no wave of an ordinary change opens here (`[[rollout.freeze]]`).
    pub freezes: Arc<grapevine_proto::schedule::Freezes>,
}

/// The shell around the replica: what it does not decide (the store, gossip, health, alerts,
/// metrics and logs), done in the order the replica's decisions and commits need.
struct Engine {
    parts: EngineParts,
    replica: Replica,
    /// The origin of the replica's monotonic clock (`Now::mono_ms`).
    epoch: Instant,
    view: watch::Sender<Arc<View>>,
    warnings: WarnLimiter,
    /// When the first gate waiting here opens if the reports only age (`release_pass`).
    next_gate: Option<Instant>,
    /// When this node stored each of its latest reverts, and why when it wrote them (audit).
    revert_notes: BTreeMap<GenId, audit::RevertNote>,
}

/// Starts the engine over the generations loaded from the store. The task ends when every
/// handle is dropped; it holds the store until then.
pub async fn spawn(parts: EngineParts, stored: Stored) -> (EngineHandle, JoinHandle<()>) {
    let config = Config {
        name: parts.name.clone(),
        max_clock_offset_ms: parts.max_clock_offset_ms,
        retention: parts.retention,
        trust: parts.trust.clone(),
        freezes: parts.freezes.clone(),
        max_members: grapevine_proto::limits::MAX_MEMBERS,
    };
    let epoch = clock::now();
    let now = Now { wall_ms: now_ms(parts.clock_skew_ms), mono_ms: 0 };
    let (replica, judging) = Replica::start(config, stored, parts.recovering.clone(), now);
    for judging in judging {
        judge(&parts.health, judging);
    }
    let (view, view_receiver) = watch::channel(Arc::new(View::default()));
    let (commands, queue) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
    let warnings = WarnLimiter::new(Duration::from_secs(30));
    let mut engine = Engine { parts, replica, epoch, view, warnings, next_gate: None, revert_notes: BTreeMap::new() };
    engine.publish().await;
    engine.decide().await;
    let task = tokio::spawn(engine.run(queue));
    (EngineHandle { commands, view: view_receiver }, task)
}

/// Starts judging a generation this node applied.
fn judge(health: &Health, judging: Judging) {
    let Judging { id, watch_window_ms, thresholds, gate_bake_ms } = judging;
    health.applied(id, Duration::from_millis(watch_window_ms), thresholds, gate_bake_ms.map(Duration::from_millis));
}

/// Whether `generation` is an approval record.
fn approves(generation: &Generation) -> bool {
    let terms = generation.body.terms.as_deref();
    matches!(terms.and_then(|t| t.governance.as_ref()), Some(grapevine_proto::Governance::Approve { .. }))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms(skew_ms: i64) -> u64 {
    crate::clock::wall_ms(skew_ms)
}

impl Engine {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut compaction = tokio::time::interval(COMPACTION_CHECK);
        let mut recheck = tokio::time::interval(RELEASE_RECHECK);
        let reports_changed = self.parts.gossip.reports_changed();
        loop {
            let deadline = self.next_deadline();
            let command = tokio::select! {
                command = queue.recv() => match command { Some(command) => command, None => return },
                _ = compaction.tick() => {
                    self.compact().await;
                    continue;
                }
                _ = sleep_until(deadline) => {
                    self.timed_pass().await;
                    continue;
                }
                _ = recheck.tick() => {
                    if self.replica.recovering().is_some() {
                        self.end_recovery_if_caught_up().await;
                    }
                    self.timed_pass().await;
                    continue;
                }
                _ = reports_changed.notified() => {
                    self.decide().await;
                    continue;
                }
            };
            match command {
                Command::AbsorbSnapshot { snapshot, reply } => {
                    let _ = reply.send(self.absorb_snapshot(snapshot).await);
                    self.decide().await;
                }
                Command::Submit { change, author, signed, terms, reply } => {
                    let submitted = self.submit(Submission { change, author, signed, terms }).await;
                    // Released here before the answer: a client that reads back its change from
                    // the node that took it sees it applied when this node's wave is open (the
                    // first wave, an emergency, or a single wave).
                    self.decide().await;
                    let _ = reply.send(submitted);
                    self.compact_if_over_retention().await;
                }
                Command::Ingest { generations, from, reply } => {
                    let _ = reply.send(self.ingest(generations, from).await);
                    self.decide().await;
                    self.compact_if_over_retention().await;
                }
                Command::Preview { change, reply } => {
                    let _ = reply.send(self.preview(change).await);
                }
                Command::Readiness { reply } => {
                    let _ = reply.send(self.readiness().await);
                }
                Command::Waiting { reply } => {
                    let _ = reply.send(self.waiting().await);
                }
                Command::IngestReverts { reverts, from, reply } => {
                    let _ = reply.send(self.ingest_reverts(reverts, from).await);
                }
                Command::Rollback { target, reply } => {
                    let _ = reply.send(self.rollback(target).await);
                }
                Command::Rollout { id, reply } => {
                    let _ = reply.send(self.rollout(&id).await);
                }
                Command::Proposals { reply } => {
                    let _ = reply.send(self.proposal_views(now_ms(self.parts.clock_skew_ms)));
                }
                Command::Vote { proposal, signed, vote, reply } => {
                    let voted = self.vote(proposal, signed, vote, now_ms(self.parts.clock_skew_ms)).await;
                    if let Err(ProposalError::Submit(SubmitError::Signing(refusal))) = &voted {
                        // A forged or misdirected vote is counted like a forged change.
                        self.refused_signature(refusal, &"a vote on a proposal");
                    }
                    self.decide().await;
                    let _ = reply.send(voted);
                }
                Command::History { limit, shown, reply } => {
                    let newest = self.replica.log().in_fold_order().rev().filter(|g| shown(g)).take(limit);
                    let _ = reply.send(newest.cloned().collect());
                }
                Command::Audit { cursor, limit, reply } => {
                    let _ = reply.send(self.audit_batch(&cursor, limit).await);
                }
                Command::AuditHistory { limit, shown, reply } => {
                    let _ = reply.send(self.audit_history(limit, shown).await);
                }
            }
        }
    }

    /// Now, on the replica's two clocks.
    fn now(&self) -> Now {
        let mono_ms = clock::elapsed(self.epoch).as_millis() as u64;
        Now { wall_ms: now_ms(self.parts.clock_skew_ms), mono_ms }
    }

    /// The next instant a decision may change with no new fact: a gate whose last needed
    /// report gets baked, or the end of a deferred revert's wait.
    fn next_deadline(&self) -> Option<Instant> {
        let revert = self.replica.next_revert_deadline().map(|ms| self.epoch + Duration::from_millis(ms));
        revert.into_iter().chain(self.next_gate).min()
    }

    /// What a deadline or the recheck decides: the quorum changes only with reports or the
    /// log, which wake `decide` themselves, so reverts are looked at only while one waits.
    async fn timed_pass(&mut self) {
        if self.replica.defers_reverts() {
            self.revert_pass().await;
        }
        self.release_pass().await;
    }

    /// Reverts what revoked keys signed and what the reports say hurts, then releases what
    /// they say is safe.
    async fn decide(&mut self) {
        self.revocation_pass().await;
        self.revert_pass().await;
        self.release_pass().await;
    }

    /// What the live members tell about `change`, for sealing it.
    async fn members(&self, change: &Change) -> Members {
        let gossip = &self.parts.gossip;
        let label_values = match &change.policy.waves_by {
            Some(label) => gossip.live_label(label).await,
            None => BTreeMap::new(),
        };
        Members {
            live: gossip.live_names().await,
            label_values,
            most_held_own: gossip.most_held_by_peers(&self.parts.name).await,
            oldest_wire: gossip.oldest_live_wire_version().await,
            clock: self.parts.offsets.standing(),
        }
    }

    /// The generation `submission` becomes here now, checked, stamped by `clock`; not stored.
    async fn seal(&self, submission: Submission, clock: &mut Clock) -> Result<Generation, SubmitError> {
        let members = self.members(&submission.change).await;
        let origins = &self.parts.origins;
        self.replica.seal(submission, members, self.now(), clock, |generation| origins.prove(generation))
    }

    /// Ends a recovery once the replica says the node caught up with its live peers.
    async fn end_recovery_if_caught_up(&mut self) {
        let peers: Vec<VersionVector> =
            self.parts.gossip.peer_version_vectors_known().await.into_iter().map(|(_, vector)| vector).collect();
        let now = self.now();
        if !self.replica.caught_up(&peers, now) {
            return;
        }
        let store = self.parts.store.clone();
        let cleared =
            tokio::task::spawn_blocking(move || store.set_recovering(None)).await.expect("store task panicked");
        if let Err(error) = cleared {
            // Serving on is safe; a restart would only recover again.
            warn!(%error, "could not record the end of the recovery");
        }
        self.replica.end_recovery();
        let log = self.replica.log();
        info!(
            generations = log.len(),
            reverts = log.reverts().count(),
            peers = peers.len(),
            "recovered the log from peers after a damaged store: serving again"
        );
        self.publish().await;
    }

    async fn readiness(&self) -> Readiness {
        let ours = self.replica.settled();
        let behind: Vec<String> = self
            .parts
            .gossip
            .peer_version_vectors()
            .await
            .into_iter()
            .filter(|(_, theirs)| ours.is_behind(theirs))
            .map(|(peer, _)| peer.to_string())
            .collect();
        let open: Vec<String> = self.gates().await.open.iter().map(|(g, _)| g.id().to_string()).collect();
        let recovering = self.replica.recovering().map(str::to_owned);
        let ready = behind.is_empty() && open.is_empty() && recovering.is_none();
        Readiness { ready, behind, open_not_applied: open, recovering }
    }

    /// What `change` would do, changing nothing: the generation it would become (its waves
    /// follow from it) and, per key, the desired value before and after.
    async fn preview(&self, change: Change) -> Result<Preview, SubmitError> {
        let submission = Submission { change, author: None, signed: None, terms: None };
        let generation = self.seal(submission, &mut self.replica.clock().clone()).await?;
        let diff = self.replica.diff(&generation);
        let waves = grapevine_proto::rollout::Plan::of(&generation.body).waves;
        Ok(Preview { generation: generation.id().to_string(), policy: generation.body.change.policy, waves, diff })
    }

    async fn submit(&mut self, submission: Submission) -> Result<Generation, SubmitError> {
        let mut clock = self.replica.clock().clone();
        let generation = self.seal(submission, &mut clock).await?;
        self.replica.check_own(&generation)?;
        self.store_durably(vec![generation.clone()]).await.map_err(|error| SubmitError::Store(error.to_string()))?;
        info!(generation = %generation.id(), "accepted change");
        self.replica.accept_own(generation.clone(), clock);
        self.publish().await;
        // Down its push tree to every live member, then swept to any the tree missed; no
        // gossip nudge: peers that learned our vector from one would pull what the tree is
        // already bringing them.
        self.push(Vec::new(), vec![generation.clone()], None, true);
        Ok(generation)
    }

    async fn ingest(&mut self, generations: Vec<Generation>, from: Option<SocketAddr>) -> usize {
        let now = self.now();
        let (origins, metrics, warnings, name) =
            (&self.parts.origins, &self.parts.metrics, &self.warnings, &self.parts.name);
        let triage = self.replica.triage(generations, now, |generation| match origins.check(generation) {
            Ok(()) => true,
            Err(refusal) => {
                metrics.unproven_origins.get_or_create(&crate::metrics::reason(refusal.reason())).inc();
                if warnings.allow(&format!("origin {}", generation.id().origin)) {
                    let own = generation.id().origin == *name;
                    error!(
                        generation = %generation.id(),
                        %refusal,
                        own,
                        "refused a generation its origin did not prove it made (another node writes under its name?)"
                    );
                }
                false
            }
        });
        let Triage { new, conflicts, unsigned, ahead } = triage;
        let mut conflicted = false;
        for (generation, first) in &conflicts {
            conflicted |= self.conflict(generation, *first);
        }
        for (id, refusal) in &unsigned {
            self.refused_signature(refusal, id);
        }
        for (id, refusal) in &ahead {
            self.parts.metrics.clock_offset_refusals.inc();
            if self.warnings.allow(id.origin.as_str()) {
                warn!(generation = %id, %refusal, "refused a generation stamped in the future");
            }
        }
        if new.is_empty() {
            if conflicted {
                self.publish().await;
            }
            return 0;
        }
        // Forwarded before our own commit: the writer stored it durably before anyone saw it,
        // and waiting for each relay's fsync would add one per hop. What we acknowledge (the
        // push's answer, our advertised vector) waits for the commit below. Generations too
        // large to push inline are only announced, and a receiver pulls them from us: that
        // push waits until we hold them and our vector says so.
        let job = self.push_job(Vec::new(), new.clone(), from, false);
        let announced = if job.inline {
            self.send_push(job);
            None
        } else {
            Some(job)
        };
        if let Err(error) = self.store_durably(new.clone()).await {
            let generations: Vec<String> = new.iter().map(|g| g.id().to_string()).collect();
            error!(%error, ?generations, "could not store pulled generations; they will be pulled again");
            return 0;
        }
        let count = new.len();
        let approvals = new.iter().any(approves);
        let stored_ms = now_ms(self.parts.clock_skew_ms);
        for generation in new {
            self.observe_propagation("stored", &generation, stored_ms);
            self.replica.add(generation);
        }
        self.parts.metrics.sync_generations_stored.inc_by(count as u64);
        self.publish().await;
        if let Some(job) = announced {
            self.send_push(job);
        }
        self.revocation_pass().await;
        if approvals {
            self.enact_pass(stored_ms).await;
        }
        count
    }

    /// Counts and logs (rate-limited) a generation or snapshot refused for its signature.
    fn refused_signature(&self, refusal: &SigningError, what: &dyn std::fmt::Display) {
        self.parts.metrics.unsigned_changes.get_or_create(&crate::metrics::reason(refusal.reason())).inc();
        if self.warnings.allow(&format!("signature {}", refusal.reason())) {
            warn!(%what, %refusal, "refused a change without a trusted operator signature");
        }
    }

    /// Compacts after a change once the log is a batch past the retention; the periodic
    /// check compacts what is past it by less.
    async fn compact_if_over_retention(&mut self) {
        if self.replica.over_retention_batch() {
            self.compact().await;
        }
    }

    /// Folds into the snapshot the generations outside the retention that every live peer
    /// holds. The state does not change; the log holds fewer generations whole.
    async fn compact(&mut self) {
        if self.replica.log().len() <= self.parts.retention.generations {
            // Nothing may go: no need to read the peers' vectors.
            return;
        }
        let peers: Vec<VersionVector> =
            self.parts.gossip.peer_version_vectors().await.into_iter().map(|(_, vector)| vector).collect();
        let ours = self.replica.log().reverts_digest();
        let reverts_settled = self.parts.gossip.peer_reverts_digests().await.iter().all(|(_, digest)| *digest == ours);
        let Some((compacted, covered)) = self.replica.compaction(&peers, reverts_settled, self.now()) else { return };
        if self.store_snapshot(&compacted, &covered).await {
            self.replica.commit_compaction(compacted, &covered);
            self.snapshot_committed(&covered).await;
            self.parts.metrics.generations_compacted.inc_by(covered.len() as u64);
            let generations: Vec<String> = covered.iter().map(ToString::to_string).collect();
            info!(count = covered.len(), ?generations, "compacted generations into the snapshot");
        }
    }

    /// Takes in a peer's snapshot: generations it covers are dropped, the state refolded.
    async fn absorb_snapshot(&mut self, snapshot: Snapshot) -> bool {
        let (absorbed, covered) = match self.replica.absorb(&snapshot, self.now()) {
            Absorbed::Nothing => return false,
            Absorbed::Ahead(refusal) => {
                // The same rule as for generations: refused whole, until our clock catches up.
                self.parts.metrics.clock_offset_refusals.inc();
                if self.warnings.allow("snapshot clock") {
                    warn!(%refusal, "refused a snapshot with a write stamped in the future");
                }
                return false;
            }
            Absorbed::Unproven(refusal) => {
                self.refused_signature(&refusal, &"a peer's snapshot");
                return false;
            }
            Absorbed::Log(log, covered) => (log, covered),
        };
        if !self.store_snapshot(&absorbed, &covered).await {
            return false;
        }
        self.replica.commit_absorbed(absorbed, &covered);
        self.snapshot_committed(&covered).await;
        self.revocation_pass().await;
        true
    }

    /// Records how long `generation` took from its stamp to `stage` here. Clocks of different
    /// hosts differ by up to the maximum offset, so a figure below it is an upper bound.
    fn observe_propagation(&self, stage: &'static str, generation: &Generation, now_ms: u64) {
        let seconds = now_ms.saturating_sub(generation.body.hlc.wall_ms) as f64 / 1000.0;
        self.parts.metrics.propagation.get_or_create(&crate::metrics::reason(stage)).observe(seconds);
    }

    /// Stores `log`'s snapshot and deletes `covered`. False (and nothing stored) when the
    /// snapshot would pass its size limit or the store failed.
    async fn store_snapshot(&self, log: &Log, covered: &[GenId]) -> bool {
        let size = grapevine_proto::wire::encode(log.base()).len();
        if size > MAX_SNAPSHOT_BYTES {
            if self.warnings.allow("snapshot size") {
                warn!(size, limit = MAX_SNAPSHOT_BYTES, "snapshot would pass its size limit; not compacting");
            }
            return false;
        }
        let (store, snapshot, deleting) = (self.parts.store.clone(), log.base().clone(), covered.to_vec());
        let stored = tokio::task::spawn_blocking(move || store.compact(&snapshot, &deleting)).await;
        if let Err(error) = stored.expect("store task panicked") {
            error!(%error, "could not store the snapshot");
            return false;
        }
        true
    }

    /// After the replica took a snapshot covering `covered`: stop judging them and delete this
    /// node's reports and revert causes on them (health deletes the reports of those it judged;
    /// a revert this node wrote of one it never applied is deleted here), and publish.
    async fn snapshot_committed(&mut self, covered: &[GenId]) {
        self.parts.health.forget(covered);
        self.parts.gossip.delete_reports(covered).await;
        self.publish().await;
    }

    /// Hands new generations and reverts to the pusher (`sweep` when this node wrote them: it
    /// pushes on until every live peer holds them); when its queue is full, anti-entropy spreads
    /// them instead.
    fn push(&self, reverts: Vec<Revert>, generations: Vec<Generation>, from: Option<SocketAddr>, sweep: bool) {
        self.send_push(self.push_job(reverts, generations, from, sweep));
    }

    /// The pusher's job for new generations and reverts, its generations measured once.
    fn push_job(
        &self,
        reverts: Vec<Revert>,
        generations: Vec<Generation>,
        from: Option<SocketAddr>,
        sweep: bool,
    ) -> PushJob {
        // Only a job with reverts compares peers' reverts summaries.
        let reverts_digest = if reverts.is_empty() {
            String::new()
        } else {
            self.replica.log().reverts_digest_with(reverts.iter().map(|r| &r.target))
        };
        let bytes: usize = generations.iter().map(|g| grapevine_proto::wire::encode(g).len()).sum();
        let inline = bytes <= grapevine_proto::limits::PUSH_INLINE_BYTES;
        PushJob { reverts, generations, from, reverts_digest, sweep, inline }
    }

    fn send_push(&self, job: PushJob) {
        if self.parts.pushes.try_send(job).is_err() {
            self.parts.metrics.push_jobs_dropped.inc();
        }
    }

    async fn store_durably(&self, generations: Vec<Generation>) -> Result<(), StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || store.put(&generations)).await.expect("store task panicked")
    }

    async fn publish(&self) {
        let view = self.replica.view();
        self.parts.metrics.generations_known.set(view.generations as i64);
        self.parts.metrics.reverts_known.set(view.reverted.len() as i64);
        let mut keys: Vec<(String, String)> = version_vector_keys(&view.version_vector).collect();
        keys.extend(tally_keys(&view.tallies));
        keys.push((KEY_GENERATIONS.to_owned(), view.generations.to_string()));
        keys.push((KEY_APPLIED.to_owned(), view.state.latest().map(ToString::to_string).unwrap_or_default()));
        keys.push((KEY_DIGEST.to_owned(), short_digest(&view.state)));
        keys.push((KEY_REVERTS.to_owned(), view.reverts_digest.clone()));
        self.parts.gossip.set_keys(keys).await;
        self.view.send_replace(Arc::new(view));
    }
}

/// The first 16 hex digits of the state digest: enough to tell states apart at a glance.
pub fn short_digest(state: &AppliedState) -> String {
    state.digest().to_string()[..16].to_owned()
}
