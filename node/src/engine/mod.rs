//! The engine: the one task that owns a node's log, clock and applied state.
//!
//! Every change to the log goes through its command queue: changes from the admin API
//! (`Submit`), generations and snapshots from peers (`Ingest`, `AbsorbSnapshot`). It stores
//! before it acknowledges, then publishes the new applied state to readers through a `watch`
//! channel and the new version vector to peers through gossip. Readers never wait on the
//! queue. It also compacts: generations outside the retention that every live peer holds are
//! folded into the snapshot. And it decides, from the reports in gossip, which generations this
//! node applies (`release.rs`) and which the cluster reverts (`revert.rs`).
//!
//! - Commands arrive on an `mpsc` channel of `COMMAND_QUEUE_CAPACITY` (256): `Submit`, `Preview {
//!   change }`, `Ingest { generations, from }`, `IngestReverts { reverts, from }`, `Rollback {
//!   target }`, `AbsorbSnapshot`, `History { limit, shown }` (the newest `limit` generations the
//!   filter accepts, from `Log::in_fold_order`: only those are copied), `Rollout { id }`,
//!   `Proposals` and `Vote` (`governance.rs`). Each is answered on a `oneshot`.
//! - The same `select!` ticks `COMPACTION_CHECK` (10 s; a `Submit` or `Ingest` compacts at once
//!   only when the log is a tenth of the retention past it, `COMPACTION_BATCH_DIVISOR`, since each
//!   compaction rewrites the whole snapshot) and `RELEASE_RECHECK` (1 s), wakes on
//!   `Gossip::reports_changed`, and sleeps until `next_deadline`: the earliest of `next_gate` (when
//!   a waiting gate opens by its reports aging, `Plan::opens_in`, set by each `release_pass`) and
//!   the end of a deferred revert's wait. There is no polling: a gate opens on the report that
//!   completes it, or at its deadline.
//! - `decide` is `revocation_pass` (the reverts of what revoked keys signed after their revocation,
//!   `signing::revoked_after`; skipped until a write of the log revokes a key,
//!   `holds_revocations`), `revert_pass` then `release_pass`. It runs at start, after every
//!   `Submit`, `Ingest` and `AbsorbSnapshot`, and whenever a peer's report changes; `ingest` and
//!   `absorb_snapshot` also run `revocation_pass` themselves, right after storing. The deadline and
//!   the `RELEASE_RECHECK` tick run `timed_pass`: `release_pass` (and `revert_pass` while a revert
//!   is deferred). The tick is only a safety net, for a member turning live again (chitchat fires
//!   no key event for it) and the end of a recovery.
//! - Signed changes (`EngineParts::trust`, from `[signing]`): `submit` checks the sealed generation
//!   with `Trust::check` and refuses a key its log revokes (`SubmitError::Signing`, 403); `ingest`
//!   refuses a generation that fails `Trust::check` for good, before the clock check, counts it
//!   once and remembers its id in `refused` (at most `MAX_REFUSED`, 65,536); `absorb_snapshot`
//!   refuses a snapshot with a write whose proof fails. `View::settled` is the version vector with
//!   refused ids counted as held: pulls, pushes, `/readyz`, the log-lag gauge and the end of a
//!   recovery compare peers against it, so a peer holding only refused generations is not ahead.
//! - Readers call `EngineHandle::view()` and get an `Arc<View>` (`state`, the applied state;
//!   `desired`, the fold of the whole log but the reverted generations; `version_vector`;
//!   `generations` held whole; `compacted`; `reverted`, the targets of the reverts held;
//!   `reverts_digest`; `recovering`, why the store was found damaged, while the node recovers) from
//!   a `watch` channel, without waiting on the queue; `EngineHandle::watch()` returns the receiver.
//! - While `EngineParts::recovering` is set, `seal` refuses every change
//!   (`SubmitError::Recovering`, 503), the API refuses reads, `/readyz` and `/v1/watch`, and the
//!   files task touches no file; each `RELEASE_RECHECK` tick (`end_recovery_if_caught_up`) clears
//!   it, and the store's mark, once live peers' log summaries are known
//!   (`Gossip::peer_version_vectors_known`) and none has been ahead of the log's for
//!   `RECOVERY_SETTLE` (3 s).
//! - `seal` also refuses a change (`SubmitError::BehindOwnName`, 503) while any other member, live
//!   or dead, advertises more of this node's own generations than its log holds (`Gossip::most_held_by_peers`): it lost its
//!   store, and a change now would reuse an id that peer holds (D84).
//! - `submit` runs `validate_submitted`, records the live members (`Gossip::live_names`, not
//!   truncated) and, for a `waves_by` policy, their label values (`groups_of`, through
//!   `Gossip::live_label`; refused with `--waves-by "LABEL": no live member has that label` when no
//!   live member has it), stamps the change (`Clock::tick`), seals it, and runs `check_envelope`.
//!   Past the member ceiling the change is refused (`SubmitError::Invalid`), not stored with a
//!   shortened list. Once stored it is added to the log and the desired state (`Engine::add`),
//!   handed to the pusher as a `PushJob` to sweep (pushed on until every live peer holds it),
//!   and every live peer is nudged (`Gossip::nudge_live_peers`).
//! - `ingest` skips duplicates and conflicts (`conflict.rs`), and **refuses** (does not store) a
//!   generation whose stamp `Clock::observe` finds more than `max_clock_offset_ms` ahead. It hands
//!   the rest to the pusher with the peer they came from, which the pusher leaves out (push on
//!   first receipt), before storing them in one transaction (forwarding waits for no relay's
//!   fsync; the acknowledgement does), then adds them to the log and the desired state (but not a
//!   generation whose revert arrived first) and publishes.
//! - `compact` runs on the tick and after any `Submit` or `Ingest` that leaves more than
//!   `retain_generations` held whole: `Log::compact` with `snapshot::compactable` over the live
//!   peers' advertised vectors **and** this node's released set, never a pending proposal nor its
//!   approvals (`approvals::pinned`), then `commit_snapshot` (size check
//!   against `MAX_SNAPSHOT_BYTES`, `Store::compact`). A reverted generation takes the place of a
//!   released one: it is compacted (leaving no write) once every live peer's `reverts` key equals
//!   this node's `reverts_digest`, so a peer that lacks the revert can still learn it with its
//!   target whole. A control stays whole while its target is held whole. `absorb_snapshot` takes a
//!   peer's snapshot the same way and refolds both states (`Log::state`). Either way
//!   `commit_snapshot` then stops judging the covered generations (`Health::forget`) and deletes
//!   this node's `rep.` and `rv.` keys on them (`Gossip::delete_reports`).
//! - `spawn` absorbs the stored snapshot, adds the stored reverts, folds the loaded generations,
//!   computes the applied state from the stored released set, hands every released generation with
//!   ops, not reverted and stamped within its watch window, to `Health::applied` again (their age
//!   restarts from zero), publishes, and runs a first `decide`. The node's own stamps are observed
//!   with `physical_ms = u64::MAX` (followed whatever the wall clock says); peers' stamps are
//!   observed against the current time, so a peer's far-future stamp does not move the clock at
//!   restart either.
//! - After every change, `publish` updates the view, `grapevine_generations_known`,
//!   `grapevine_reverts_known` and the gossip keys (`applied` and `digest` describe the applied
//!   state; `reverts` is `Log::reverts_digest`).
//! - The wall clock is `now_ms(clock_skew_ms)`; the skew is 0 outside `testsuite` builds.
//!
//! **Architecture Invariant:** a generation is stored durably (`Store::put`, one committed redb
//! transaction) before it is acknowledged to a client, added to the log, published, pushed, or
//! counted in `grapevine_sync_generations_stored_total`. If the store fails, nothing changes.
//!
//! **Architecture Invariant:** only released or reverted generations are compacted, and a reverted
//! one leaves no write, so the snapshot holds only applied writes and `state` = fold(snapshot,
//! released but not reverted) is unchanged by compaction. The log and the stored snapshot change
//! together: `Store::compact` writes the new snapshot and deletes the generations it covers (and
//! their `released` rows) in one transaction, and only then does the engine replace its `Log`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_proto::hlc::Stamp;
use grapevine_proto::limits::MAX_SNAPSHOT_BYTES;
use grapevine_proto::signing::{Signed, SigningError, Trust, revocations, revoked_by};
use grapevine_proto::snapshot::{Retention, compactable};
use grapevine_proto::validate::{check_envelope, validate_submitted_terms};
use grapevine_proto::wire::WIRE_VERSION;
use grapevine_proto::{
    AppliedState, Author, Change, Clock, ContentHash, GenId, Generation, GenerationBody, InsertOutcome, Log, NodeName,
    Op, Revert, Snapshot, Tally, Terms, ValidationError, VersionVector,
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
use crate::sync::PushJob;

/// How often the engine looks for generations to compact, besides after each change that
/// takes the log past the retention count.
const COMPACTION_CHECK: Duration = Duration::from_secs(10);

/// A change compacts at once only when the log holds a batch of this share of the retention
/// (a tenth) beyond it. Each compaction copies and rewrites the whole snapshot (all of the
/// state): done for every change past the retention, that made a write at the default
/// retention cost 2.7x one on a fresh node. `COMPACTION_CHECK` compacts a smaller excess.
const COMPACTION_BATCH_DIVISOR: usize = 10;

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
pub use release::{HoldView, MemberView, RolloutView, WaveView};
pub use revert::{RollbackError, RollbackOutcome};

/// The safety net under the event-driven gates. A gate opens on a new fact, which wakes the
/// engine itself (a report: `Gossip::reports_changed`; a generation or control: its command),
/// or when its last needed report is baked, which the engine sleeps until (`next_gate`). One
/// fact raises no event: a member turning live again (chitchat fires no key event for it),
/// whose report then counts again; and the end of a recovery is a condition held over time.
/// Both are rare and slow already (failure detection takes seconds), so once a second does.
const RELEASE_RECHECK: Duration = Duration::from_secs(1);
/// How long a node recovering from a damaged store must see every live peer's log summary
/// and none ahead of its own before it serves again: a few gossip rounds at the default 1 s.
const RECOVERY_SETTLE: Duration = Duration::from_secs(3);

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
    /// [`conflict::MAX_CONFLICTS_SHOWN`]): two processes wrote under one name (`conflict`).
    pub conflicts: BTreeSet<GenId>,
}

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
    pub policy: grapevine_proto::rollout::Policy,
    /// Its waves, from the members alive now.
    pub waves: Vec<Vec<NodeName>>,
    pub diff: Vec<DiffEntry>,
}

/// One key of a dry run: its desired value before, and after.
#[derive(Debug, serde::Serialize)]
pub struct DiffEntry {
    pub kind: &'static str,
    pub key: String,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
}

/// Why a submitted change was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The change is invalid; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store failed; nothing was applied.
    #[error("the change was not stored: {0}")]
    Store(#[from] StoreError),
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
        reply: oneshot::Sender<Option<RolloutView>>,
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
    pub async fn rollout(&self, id: GenId) -> Option<RolloutView> {
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

struct Engine {
    parts: EngineParts,
    log: Log,
    /// Generations released to (applied on) this node.
    released: BTreeSet<GenId>,
    /// The generations held whole, neither released here nor reverted, in fold order: those
    /// whose gates a pass looks at. Kept with the log, so a pass costs per generation waiting,
    /// not per generation held.
    pending: BTreeSet<(Stamp, GenId)>,
    /// Whether a write of the log (its snapshot or a generation) revokes an operator key:
    /// until one does, the revocation pass has nothing to find and reads nothing.
    holds_revocations: bool,
    /// The evidence each generation released since start was released on (pruned with the log).
    releases: BTreeMap<GenId, release::Release>,
    state: AppliedState,
    desired: AppliedState,
    clock: Clock,
    view: watch::Sender<Arc<View>>,
    warnings: WarnLimiter,
    /// Since when a recovering node has seen no live peer ahead of its log.
    caught_up_since: Option<Instant>,
    /// Generations whose quorum this node saw while a live member had written the revert,
    /// and since when it waits for that revert to arrive.
    deferred_reverts: BTreeMap<GenId, Instant>,
    /// When the first gate waiting here opens if the reports only age (`release_pass`).
    next_gate: Option<Instant>,
    /// Generations refused for good (no trusted operator signature), by origin, up to
    /// [`MAX_REFUSED`] ids: each is counted once, and a peer holding them is not ahead.
    refused: BTreeMap<NodeName, BTreeSet<u64>>,
    /// Ids under which a peer sent other content than this node holds (`conflict`).
    conflicts: BTreeSet<GenId>,
    /// Generations refused because their origin did not prove them, up to [`MAX_REFUSED`]:
    /// each is checked and counted once. Not [`Engine::refused`]: the id stays open for the
    /// real origin's content.
    unproven: HashSet<(GenId, ContentHash)>,
    /// When this node stored each of its latest reverts, and why when it wrote them (audit).
    revert_notes: BTreeMap<GenId, audit::RevertNote>,
}

/// Most refused generation ids remembered; past it a refusal is counted every time it is
/// pulled again, and its holder counts as ahead (the cost of a flood is bounded, not its alarm).
const MAX_REFUSED: usize = 64 * 1024;

/// Starts the engine over the generations loaded from the store. The task ends when every
/// handle is dropped; it holds the store until then.
pub async fn spawn(parts: EngineParts, stored: Stored) -> (EngineHandle, JoinHandle<()>) {
    let Stored { snapshot, generations: loaded, released, reverts } = stored;
    let mut log = Log::new();
    log.absorb_snapshot(&snapshot);
    for revert in &reverts {
        log.revert(revert);
    }
    let mut clock = Clock::new(parts.max_clock_offset_ms);
    let now = now_ms(parts.clock_skew_ms);
    let name = &parts.name;
    for generation in loaded {
        // Our own stamps are followed whatever the wall clock says now, so our changes stay in
        // order; peers' stamps under the same offset rule as when they arrived.
        let physical = if generation.id().origin == *name { u64::MAX } else { now };
        let _ = clock.observe(generation.body.hlc, physical);
        log.insert(generation);
    }
    let desired = log.state(|_| true);
    let state = log.state_sharing(|id| released.contains(id), &desired);
    let (view, view_receiver) = watch::channel(Arc::new(View::default()));
    let (commands, queue) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
    let warnings = WarnLimiter::new(Duration::from_secs(30));
    // Generations applied before a restart, and stamped within their watch window, are judged
    // again from zero: their reports may still open later waves.
    let recent = |g: &&Generation| now.saturating_sub(g.body.hlc.wall_ms) < g.body.change.policy.watch_window_ms;
    let judged =
        |g: &&Generation| released.contains(g.id()) && !log.is_reverted(g.id()) && !g.body.change.ops.is_empty();
    for generation in log.iter().filter(judged).filter(recent) {
        release::judge(&parts.health, generation, &parts.name);
    }
    let deferred_reverts = Default::default();
    let releases = BTreeMap::new();
    let holds_revocations = holds_revocations(&log);
    let mut engine = Engine {
        parts,
        log,
        released,
        pending: BTreeSet::new(),
        holds_revocations,
        releases,
        state,
        desired,
        clock,
        view,
        warnings,
        caught_up_since: None,
        deferred_reverts,
        next_gate: None,
        refused: BTreeMap::new(),
        conflicts: BTreeSet::new(),
        unproven: HashSet::new(),
        revert_notes: BTreeMap::new(),
    };
    engine.prune_pending();
    engine.publish().await;
    engine.decide().await;
    let task = tokio::spawn(engine.run(queue));
    (EngineHandle { commands, view: view_receiver }, task)
}

/// What the store holds at start.
pub struct Stored {
    pub snapshot: Snapshot,
    pub generations: Vec<Generation>,
    pub released: BTreeSet<GenId>,
    pub reverts: Vec<Revert>,
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
                    if self.parts.recovering.is_some() {
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
                    let submitted = self.submit(change, author, signed, terms).await;
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
                    let newest = self.log.in_fold_order().rev().filter(|g| shown(g)).take(limit);
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

    /// The next instant a decision may change with no new fact: a gate whose last needed
    /// report gets baked, or the end of a deferred revert's wait.
    fn next_deadline(&self) -> Option<Instant> {
        let reverts = self.deferred_reverts.values().map(|since| *since + revert::REVERT_DEFER);
        reverts.chain(self.next_gate).min()
    }

    /// What a deadline or the recheck decides: the quorum changes only with reports or the
    /// log, which wake `decide` themselves, so reverts are looked at only while one waits.
    async fn timed_pass(&mut self) {
        if !self.deferred_reverts.is_empty() {
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

    /// The generation `change` becomes here now, checked, stamped by `clock`; not stored.
    async fn seal(
        &self,
        change: Change,
        author: Option<Author>,
        signed: Option<Box<Signed>>,
        terms: Option<Box<Terms>>,
        clock: &mut Clock,
    ) -> Result<Generation, SubmitError> {
        if let Some(reason) = &self.parts.recovering {
            return Err(SubmitError::Recovering(reason.clone()));
        }
        let name = self.parts.name.clone();
        let own = self.log.version_vector().get(&name);
        if let Some((peer, held)) = self.parts.gossip.most_held_by_peers(&name).await
            && held > own
        {
            return Err(SubmitError::BehindOwnName { name, own, peer, held });
        }
        if terms.is_some()
            && let Some((member, format)) = self.parts.gossip.oldest_live_wire_version().await
            && format < WIRE_VERSION
        {
            return Err(SubmitError::FormatTooOld { member, format });
        }
        validate_submitted_terms(&change, terms.as_deref())?;
        let members = self.parts.gossip.live_names().await;
        let groups = self.groups_of(&members, &change).await?;
        let body = GenerationBody {
            id: GenId { seq: self.log.next_seq(&name), origin: name },
            hlc: clock.tick(now_ms(self.parts.clock_skew_ms)),
            members,
            groups,
            change,
            // A signed change is by its operator, whoever sent it.
            author: signed.as_ref().map_or(author, |signed| Some(signed.delegation.operator.clone())),
            signed,
            terms,
        };
        let generation = body.seal();
        let generation = {
            let proof = self.parts.origins.prove(&generation);
            generation.proven(proof)
        };
        check_envelope(&generation)?;
        Ok(generation)
    }

    /// Ends a recovery once, for [`RECOVERY_SETTLE`] on end, live peers' log summaries are
    /// known and none is ahead of this log: a peer whose summary has not arrived yet, or that
    /// is about to pull from the others, must not pass for one that holds nothing more.
    async fn end_recovery_if_caught_up(&mut self) {
        let peers = self.parts.gossip.peer_version_vectors_known().await;
        let ours = self.settled();
        if peers.is_empty() || peers.iter().any(|(_, theirs)| ours.is_behind(theirs)) {
            self.caught_up_since = None;
            return;
        }
        let since = *self.caught_up_since.get_or_insert_with(clock::now);
        if clock::elapsed(since) < RECOVERY_SETTLE {
            return;
        }
        let store = self.parts.store.clone();
        let cleared =
            tokio::task::spawn_blocking(move || store.set_recovering(None)).await.expect("store task panicked");
        if let Err(error) = cleared {
            // Serving on is safe; a restart would only recover again.
            warn!(%error, "could not record the end of the recovery");
        }
        self.parts.recovering = None;
        info!(
            generations = self.log.len(),
            reverts = self.log.reverts().count(),
            peers = peers.len(),
            "recovered the log from peers after a damaged store: serving again"
        );
        self.publish().await;
    }

    async fn readiness(&self) -> Readiness {
        let ours = self.settled();
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
        let recovering = self.parts.recovering.clone();
        let ready = behind.is_empty() && open.is_empty() && recovering.is_none();
        Readiness { ready, behind, open_not_applied: open, recovering }
    }

    /// What `change` would do, changing nothing: the generation it would become (its waves
    /// follow from it) and, per key, the desired value before and after.
    async fn preview(&self, change: Change) -> Result<Preview, SubmitError> {
        let generation = self.seal(change, None, None, None, &mut self.clock.clone()).await?;
        let diff = generation
            .body
            .change
            .ops
            .iter()
            .map(|op| {
                let key = op.key();
                let before = match op {
                    Op::SetFlag { .. } => self.desired.flags.get(key).map(|e| serde_json::json!(e.value)),
                    Op::PutConfig { .. } => self.desired.config.get(key).map(|e| e.value.to_value()),
                };
                let after = match op {
                    Op::SetFlag { definition, .. } => definition.to_value(),
                    Op::PutConfig { value, .. } => value.to_value(),
                };
                DiffEntry { kind: op.kind(), key: key.to_string(), before, after }
            })
            .collect();
        let waves = grapevine_proto::rollout::Plan::of(&generation.body).waves;
        Ok(Preview { generation: generation.id().to_string(), policy: generation.body.change.policy, waves, diff })
    }

    async fn submit(
        &mut self,
        change: Change,
        author: Option<Author>,
        signed: Option<Box<Signed>>,
        terms: Option<Box<Terms>>,
    ) -> Result<Generation, SubmitError> {
        let standing = self.parts.offsets.standing();
        if crate::clock::fenced(standing, self.parts.max_clock_offset_ms)
            && let Some(standing) = standing
        {
            let limit_ms = self.parts.max_clock_offset_ms;
            return Err(SubmitError::ClockAhead { ahead_ms: standing.ahead_ms, peers: standing.peers, limit_ms });
        }
        let mut clock = self.clock.clone();
        let generation = self.seal(change, author, signed, terms, &mut clock).await?;
        // The same check every peer makes on it, and, since this node knows the history, no
        // change under a key revoked already (peers would revert it at once).
        self.parts.trust.check(&generation.body)?;
        // The operator's key, and each approver's (an enactment's). The revocations are read
        // from the whole log, so only for a signed change of a log that holds any.
        let approvals = generation.body.terms.iter().flat_map(|terms| &terms.approvals);
        let signers: Vec<&Signed> = generation.body.signed.iter().map(|signed| &**signed).chain(approvals).collect();
        let mut revoked =
            if signers.is_empty() || !self.holds_revocations { BTreeMap::new() } else { revocations(&self.log) };
        for signed in signers {
            if let Some(by) = revoked.remove(&signed.delegation.key) {
                let (operator, key) = (signed.delegation.operator.clone(), signed.delegation.key);
                return Err(SigningError::Revoked { operator, key, by: by.1 }.into());
            }
        }
        self.clock = clock;
        self.store_durably(vec![generation.clone()]).await?;
        info!(generation = %generation.id(), "accepted change");
        self.add(generation.clone());
        self.publish().await;
        self.push(Vec::new(), vec![generation.clone()], None, true);
        // Push reaches a few peers at once; the nudge makes every live peer exchange gossip
        // with us now, learn our vector, and pull what push has not brought it yet.
        self.parts.gossip.nudge_live_peers().await;
        Ok(generation)
    }

    async fn ingest(&mut self, generations: Vec<Generation>, from: Option<SocketAddr>) -> usize {
        let mut new: Vec<Generation> = Vec::new();
        let mut conflicted = false;
        for generation in generations {
            if self.log.base().covers().covers(generation.id()) {
                // Folded into our snapshot already.
                continue;
            }
            let known = self.log.get(generation.id()).or_else(|| new.iter().find(|g| g.id() == generation.id()));
            if known.is_some_and(|existing| existing.hash == generation.hash) {
                continue;
            }
            let held_other = known.is_some();
            if !self.proven(&generation) {
                continue;
            }
            if held_other {
                conflicted |= self.conflict(&generation);
                continue;
            }
            if let Err(refusal) = self.parts.trust.check(&generation.body) {
                // Refused for good: no operator key the cluster trusts signed it.
                if self.remember_refusal(generation.id()) {
                    self.refused_signature(&refusal, generation.id());
                }
                continue;
            }
            if let Err(refusal) = self.clock.observe(generation.body.hlc, now_ms(self.parts.clock_skew_ms)) {
                // Refused, not stored: a node whose clock runs ahead must not win every key
                // until real time catches up. Once our clock is within the maximum offset of
                // the stamp, the next pull takes it.
                self.parts.metrics.clock_offset_refusals.inc();
                if self.warnings.allow(generation.id().origin.as_str()) {
                    warn!(generation = %generation.id(), %refusal, "refused a generation stamped in the future");
                }
                continue;
            }
            new.push(generation);
        }
        if new.is_empty() {
            if conflicted {
                self.publish().await;
            }
            return 0;
        }
        // Forwarded before our own commit: the writer stored it durably before anyone saw it,
        // and waiting for each relay's fsync would add one per hop. What we acknowledge (the
        // push's answer, our advertised vector) waits for the commit below.
        self.push(Vec::new(), new.clone(), from, false);
        if let Err(error) = self.store_durably(new.clone()).await {
            let generations: Vec<String> = new.iter().map(|g| g.id().to_string()).collect();
            error!(%error, ?generations, "could not store pulled generations; they will be pulled again");
            return 0;
        }
        let count = new.len();
        let now = now_ms(self.parts.clock_skew_ms);
        for generation in &new {
            self.observe_propagation("stored", generation, now);
            self.add(generation.clone());
        }
        self.parts.metrics.sync_generations_stored.inc_by(count as u64);
        let approvals = new.iter().any(approves);
        self.publish().await;
        self.revocation_pass().await;
        if approvals {
            self.enact_pass(now).await;
        }
        count
    }

    /// Whether `generation`'s origin proves it made it ([`crate::origin`]); a refusal is
    /// counted and logged (rate-limited) once per generation.
    fn proven(&mut self, generation: &Generation) -> bool {
        let key = (generation.id().clone(), generation.hash);
        if self.unproven.contains(&key) {
            return false;
        }
        let Err(refusal) = self.parts.origins.check(generation) else { return true };
        if self.unproven.len() >= MAX_REFUSED {
            self.unproven.clear();
        }
        self.unproven.insert(key);
        self.parts.metrics.unproven_origins.get_or_create(&crate::metrics::reason(refusal.reason())).inc();
        if self.warnings.allow(&format!("origin {}", generation.id().origin)) {
            let own = generation.id().origin == self.parts.name;
            error!(
                generation = %generation.id(),
                %refusal,
                own,
                "refused a generation its origin did not prove it made (another node writes under its name?)"
            );
        }
        false
    }

    /// Remembers a generation refused for good; false if it was refused before.
    fn remember_refusal(&mut self, id: &GenId) -> bool {
        let remembered: usize = self.refused.values().map(BTreeSet::len).sum();
        if remembered >= MAX_REFUSED {
            return true;
        }
        self.refused.entry(id.origin.clone()).or_default().insert(id.seq)
    }

    /// The version vector with the generations refused for good counted as held ([`View::settled`]).
    fn settled(&self) -> VersionVector {
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

    /// Counts and logs (rate-limited) a generation or snapshot refused for its signature.
    fn refused_signature(&self, refusal: &SigningError, what: &dyn std::fmt::Display) {
        self.parts.metrics.unsigned_changes.get_or_create(&crate::metrics::reason(refusal.reason())).inc();
        if self.warnings.allow(&format!("signature {}", refusal.reason())) {
            warn!(%what, %refusal, "refused a change without a trusted operator signature");
        }
    }

    /// With a `waves_by` policy, each member's value of the label (empty for members without
    /// it); a label no live member has is refused.
    async fn groups_of(&self, members: &[NodeName], change: &Change) -> Result<Vec<String>, SubmitError> {
        let Some(label) = &change.policy.waves_by else { return Ok(Vec::new()) };
        let values = self.parts.gossip.live_label(label).await;
        if values.is_empty() {
            let detail = format!("--waves-by {label:?}: no live member has that label");
            return Err(ValidationError::Policy { detail }.into());
        }
        Ok(members.iter().map(|member| values.get(member).cloned().unwrap_or_default()).collect())
    }

    /// Compacts after a change once the log is a batch past the retention
    /// ([`COMPACTION_BATCH_DIVISOR`]); the periodic check compacts what is past it by less.
    async fn compact_if_over_retention(&mut self) {
        let retention = self.parts.retention.generations;
        if self.log.len() > retention + retention / COMPACTION_BATCH_DIVISOR {
            self.compact().await;
        }
    }

    /// Folds into the snapshot the generations outside the retention that every live peer
    /// holds. The state does not change; the log holds fewer generations whole.
    async fn compact(&mut self) {
        if self.log.len() <= self.parts.retention.generations {
            // Every generation is among the newest `retention.generations`: none may go, so
            // the periodic check copies nothing.
            return;
        }
        let peers: Vec<VersionVector> =
            self.parts.gossip.peer_version_vectors().await.into_iter().map(|(_, vector)| vector).collect();
        let now = now_ms(self.parts.clock_skew_ms);
        let mut compacted = self.log.clone();
        // A reverted generation folds away (leaving no write) only once every live peer holds
        // the same reverts: one that lacks the revert must still be able to learn it.
        let ours = self.log.reverts_digest();
        let reverts_settled = self.parts.gossip.peer_reverts_digests().await.iter().all(|(_, digest)| *digest == ours);
        let covered = {
            // Only what this node has applied folds away: the snapshot is applied state. A
            // control stays whole while its target does: folded away, it would be forgotten.
            let mut eligible = compactable(&self.log, self.parts.retention, now, &peers);
            let (released, log) = (&self.released, &self.log);
            let controls_live = |g: &Generation| g.body.change.controls.iter().any(|c| log.get(c.target()).is_some());
            let settled = |g: &Generation| {
                if log.is_reverted(g.id()) { reverts_settled } else { released.contains(g.id()) }
            };
            // A pending proposal and its approvals stay whole: the snapshot keeps only writes.
            let pinned = grapevine_proto::approvals::pinned(log, now);
            compacted.compact(|g| settled(g) && !controls_live(g) && !pinned.contains(g.id()) && eligible(g))
        };
        if covered.is_empty() {
            return;
        }
        if self.commit_snapshot(compacted, covered.clone()).await {
            self.parts.metrics.generations_compacted.inc_by(covered.len() as u64);
            let generations: Vec<String> = covered.iter().map(ToString::to_string).collect();
            info!(count = covered.len(), ?generations, "compacted generations into the snapshot");
        }
    }

    /// Takes in a peer's snapshot: generations it covers are dropped, the state refolded.
    async fn absorb_snapshot(&mut self, snapshot: Snapshot) -> bool {
        if !self.log.version_vector().is_behind(snapshot.covers()) {
            return false;
        }
        // The same rule as for generations: a snapshot holding a write stamped beyond the
        // maximum offset is refused whole, until our clock catches up.
        let now = now_ms(self.parts.clock_skew_ms);
        let mut clock = self.clock.clone();
        if let Some(refusal) = snapshot.writes().find_map(|write| clock.observe(write.hlc, now).err()) {
            self.parts.metrics.clock_offset_refusals.inc();
            if self.warnings.allow("snapshot clock") {
                warn!(%refusal, "refused a snapshot with a write stamped in the future");
            }
            return false;
        }
        let trust = &self.parts.trust;
        let unproven =
            snapshot.writes().find_map(|w| trust.check_write(&w.op, &w.generation, w.hlc, w.proof.as_deref()).err());
        if let Some(refusal) = unproven {
            self.refused_signature(&refusal, &"a peer's snapshot");
            return false;
        }
        self.clock = clock;
        let mut absorbed = self.log.clone();
        let covered = absorbed.absorb_snapshot(&snapshot);
        if !self.commit_snapshot(absorbed, covered).await {
            return false;
        }
        self.refold().await;
        self.revocation_pass().await;
        true
    }

    /// Records how long `generation` took from its stamp to `stage` here. Clocks of different
    /// hosts differ by up to the maximum offset, so a figure below it is an upper bound.
    fn observe_propagation(&self, stage: &'static str, generation: &Generation, now_ms: u64) {
        let seconds = now_ms.saturating_sub(generation.body.hlc.wall_ms) as f64 / 1000.0;
        self.parts.metrics.propagation.get_or_create(&crate::metrics::reason(stage)).observe(seconds);
    }

    /// Recomputes both states from the log, and publishes them: after a revert or a snapshot,
    /// which can take a key back to an earlier value (a new generation only ever moves a key
    /// forward, and is applied alone: `add`, `release_pass`).
    async fn refold(&mut self) {
        self.desired = self.log.state(|_| true);
        self.state = self.log.state_sharing(|id| self.released.contains(id), &self.desired);
        self.holds_revocations = holds_revocations(&self.log);
        self.prune_pending();
        self.publish().await;
    }

    /// Makes `pending` hold exactly the generations held whole, neither released nor
    /// reverted: rebuilt from the log at start, trimmed after reverts and snapshots.
    fn prune_pending(&mut self) {
        let (log, released) = (&self.log, &self.released);
        let waiting = |id: &GenId| log.get(id).is_some() && !released.contains(id) && !log.is_reverted(id);
        if self.pending.is_empty() {
            let unreleased = log.iter().filter(|g| waiting(g.id()));
            self.pending = unreleased.map(|g| (g.body.hlc, g.id().clone())).collect();
        } else {
            self.pending.retain(|(_, id)| waiting(id));
        }
    }

    /// Stores `log`'s snapshot and deletes `covered`, then makes `log` ours. False (and
    /// nothing changed) when the snapshot would pass its size limit or the store failed.
    async fn commit_snapshot(&mut self, log: Log, covered: Vec<GenId>) -> bool {
        let size = grapevine_proto::wire::encode(log.base()).len();
        if size > MAX_SNAPSHOT_BYTES {
            if self.warnings.allow("snapshot size") {
                warn!(size, limit = MAX_SNAPSHOT_BYTES, "snapshot would pass its size limit; not compacting");
            }
            return false;
        }
        let (store, snapshot, deleting) = (self.parts.store.clone(), log.base().clone(), covered.clone());
        let stored = tokio::task::spawn_blocking(move || store.compact(&snapshot, &deleting)).await;
        if let Err(error) = stored.expect("store task panicked") {
            error!(%error, "could not store the snapshot");
            return false;
        }
        self.parts.health.forget(&covered);
        self.pending.retain(|(_, id)| !covered.contains(id));
        // Reports and revert causes go with the generations (health deletes the reports of
        // those it judged; a revert this node wrote of one it never applied is deleted here).
        self.parts.gossip.delete_reports(&covered).await;
        self.log = log;
        self.publish().await;
        true
    }

    /// Hands new generations and reverts to the pusher (`sweep` when this node wrote them: it
    /// pushes on until every live peer holds them); when its queue is full, anti-entropy spreads
    /// them instead.
    fn push(&self, reverts: Vec<Revert>, generations: Vec<Generation>, from: Option<SocketAddr>, sweep: bool) {
        // Only a job with reverts compares peers' reverts summaries.
        let reverts_digest = if reverts.is_empty() {
            String::new()
        } else {
            self.log.reverts_digest_with(reverts.iter().map(|r| &r.target))
        };
        let job = PushJob { reverts, generations, from, reverts_digest, sweep };
        if self.parts.pushes.try_send(job).is_err() {
            self.parts.metrics.push_jobs_dropped.inc();
        }
    }

    async fn store_durably(&self, generations: Vec<Generation>) -> Result<(), StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || store.put(&generations)).await.expect("store task panicked")
    }

    /// Adds a generation checked to be new (not in the log, not repeated in its batch) to the
    /// log and the desired state; its gate decides when it applies (`release_pass`).
    fn add(&mut self, generation: Generation) {
        if !self.log.is_reverted(generation.id()) {
            self.desired.apply(&generation);
            if !self.released.contains(generation.id()) {
                self.pending.insert((generation.body.hlc, generation.id().clone()));
            }
        }
        self.holds_revocations |= revokes(&generation);
        let outcome = self.log.insert(generation);
        debug_assert_eq!(outcome, InsertOutcome::Inserted);
    }

    async fn publish(&self) {
        let view = View {
            state: self.state.clone(),
            desired: self.desired.clone(),
            version_vector: self.log.version_vector().clone(),
            settled: self.settled(),
            tallies: self.log.tallies().clone(),
            generations: self.log.len(),
            compacted: self.log.base().covers().total(),
            reverted: self.log.reverts().map(|revert| revert.target).collect(),
            reverts_digest: self.log.reverts_digest(),
            recovering: self.parts.recovering.clone(),
            conflicts: self.conflicts.clone(),
        };
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
