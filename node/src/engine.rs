//! The engine: the one task that owns a node's log, clock and applied state.
//!
//! Every change to the log goes through its command queue: changes from the admin API
//! (`Submit`) and generations pulled from peers (`Ingest`). It stores before it acknowledges,
//! then publishes the new applied state to readers through a `watch` channel and the new
//! version vector to peers through gossip. Readers never wait on the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use grapevine_proto::validate::{check_envelope, validate_change};
use grapevine_proto::{
    AppliedState, Change, Clock, Generation, GenerationBody, InsertOutcome, Log, NodeName, ValidationError,
    VersionVector,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::gossip::{Gossip, KEY_APPLIED, KEY_DIGEST, KEY_GENERATIONS, version_vector_keys};
use crate::metrics::{Metrics, WarnLimiter};
use crate::store::{Store, StoreError};
use crate::sync::PushJob;

/// Commands waiting for the engine. Submissions come from HTTP handlers and ingests from the
/// sync task; a full queue makes them wait, which is the back-pressure we want.
const COMMAND_QUEUE_CAPACITY: usize = 256;

/// What readers see: the applied state and a summary of the log, replaced as a whole.
#[derive(Debug, Default)]
pub struct View {
    pub state: AppliedState,
    pub version_vector: VersionVector,
    pub generations: usize,
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
}

enum Command {
    Submit { change: Change, reply: oneshot::Sender<Result<Generation, SubmitError>> },
    Ingest { generations: Vec<Generation>, from: Option<SocketAddr>, reply: oneshot::Sender<usize> },
    History { reply: oneshot::Sender<Vec<Generation>> },
}

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<View>>,
}

impl EngineHandle {
    /// Validates, stamps, stores and applies a change; returns its generation once durable.
    pub async fn submit(&self, change: Change) -> Result<Generation, SubmitError> {
        let (reply, response) = oneshot::channel();
        self.commands.send(Command::Submit { change, reply }).await.map_err(|_| SubmitError::Stopped)?;
        response.await.map_err(|_| SubmitError::Stopped)?
    }

    /// Stores and applies validated generations from peer `from`; returns how many were new.
    pub async fn ingest(&self, generations: Vec<Generation>, from: Option<SocketAddr>) -> usize {
        if generations.is_empty() {
            return 0;
        }
        let (reply, response) = oneshot::channel();
        if self.commands.send(Command::Ingest { generations, from, reply }).await.is_err() {
            return 0;
        }
        response.await.unwrap_or(0)
    }

    /// Every generation of the log, in `(hlc, origin, seq)` order.
    pub async fn history(&self) -> Vec<Generation> {
        let (reply, response) = oneshot::channel();
        if self.commands.send(Command::History { reply }).await.is_err() {
            return Vec::new();
        }
        response.await.unwrap_or_default()
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
}

struct Engine {
    parts: EngineParts,
    log: Log,
    state: AppliedState,
    clock: Clock,
    view: watch::Sender<Arc<View>>,
    warnings: WarnLimiter,
}

/// Starts the engine over the generations loaded from the store. The task ends when every
/// handle is dropped; it holds the store until then.
pub async fn spawn(parts: EngineParts, loaded: Vec<Generation>) -> (EngineHandle, JoinHandle<()>) {
    let mut log = Log::new();
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
    let state = AppliedState::fold(log.iter());
    let (view, view_receiver) = watch::channel(Arc::new(View::default()));
    let (commands, queue) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
    let engine =
        Engine { parts, log, state, clock, view, warnings: WarnLimiter::new(std::time::Duration::from_secs(30)) };
    engine.publish().await;
    let task = tokio::spawn(engine.run(queue));
    (EngineHandle { commands, view: view_receiver }, task)
}

fn now_ms(skew_ms: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(skew_ms)
}

impl Engine {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        while let Some(command) = queue.recv().await {
            match command {
                Command::Submit { change, reply } => {
                    let _ = reply.send(self.submit(change).await);
                }
                Command::Ingest { generations, from, reply } => {
                    let _ = reply.send(self.ingest(generations, from).await);
                }
                Command::History { reply } => {
                    let mut generations: Vec<Generation> = self.log.iter().cloned().collect();
                    generations.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
                    let _ = reply.send(generations);
                }
            }
        }
    }

    async fn submit(&mut self, change: Change) -> Result<Generation, SubmitError> {
        validate_change(&change)?;
        let members = self.parts.gossip.live_names().await;
        let name = self.parts.name.clone();
        let body = GenerationBody {
            id: grapevine_proto::GenId { seq: self.log.next_seq(&name), origin: name },
            hlc: self.clock.tick(now_ms(self.parts.clock_skew_ms)),
            members,
            change,
        };
        let generation = body.seal();
        check_envelope(&generation)?;
        self.store_durably(vec![generation.clone()]).await?;
        info!(generation = %generation.id(), "accepted change");
        self.apply(generation.clone());
        self.publish().await;
        self.push(vec![generation.clone()], None);
        // Push reaches a few peers at once; the nudge makes every live peer exchange gossip
        // with us now, learn our vector, and pull what push has not brought it yet.
        self.parts.gossip.nudge_live_peers().await;
        Ok(generation)
    }

    async fn ingest(&mut self, generations: Vec<Generation>, from: Option<SocketAddr>) -> usize {
        let mut new: Vec<Generation> = Vec::new();
        for generation in generations {
            let known = self.log.get(generation.id()).or_else(|| new.iter().find(|g| g.id() == generation.id()));
            match known {
                Some(existing) if existing.hash == generation.hash => continue,
                Some(_) => {
                    self.parts.metrics.generation_conflicts.inc();
                    if self.warnings.allow(&format!("conflict {}", generation.id().origin)) {
                        error!(generation = %generation.id(), "a peer holds other content under a known generation id; kept ours");
                    }
                    continue;
                }
                None => {}
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
            return 0;
        }
        if let Err(error) = self.store_durably(new.clone()).await {
            error!(%error, "could not store pulled generations; they will be pulled again");
            return 0;
        }
        let count = new.len();
        for generation in &new {
            self.apply(generation.clone());
        }
        self.parts.metrics.sync_generations_stored.inc_by(count as u64);
        self.publish().await;
        self.push(new, from);
        count
    }

    /// Hands newly stored generations to the pusher; when its queue is full, anti-entropy
    /// spreads them instead.
    fn push(&self, generations: Vec<Generation>, from: Option<SocketAddr>) {
        if self.parts.pushes.try_send(PushJob { generations, from }).is_err() {
            self.parts.metrics.push_jobs_dropped.inc();
        }
    }

    async fn store_durably(&self, generations: Vec<Generation>) -> Result<(), StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || store.put(&generations)).await.expect("store task panicked")
    }

    /// Adds a generation checked to be new (not in the log, not repeated in its batch).
    fn apply(&mut self, generation: Generation) {
        self.state.apply(&generation);
        let outcome = self.log.insert(generation);
        debug_assert_eq!(outcome, InsertOutcome::Inserted);
    }

    async fn publish(&self) {
        let view = View {
            state: self.state.clone(),
            version_vector: self.log.version_vector().clone(),
            generations: self.log.len(),
        };
        self.parts.metrics.generations_known.set(view.generations as i64);
        let mut keys: Vec<(String, String)> = version_vector_keys(&view.version_vector).collect();
        keys.push((KEY_GENERATIONS.to_owned(), view.generations.to_string()));
        keys.push((KEY_APPLIED.to_owned(), view.state.latest().map(ToString::to_string).unwrap_or_default()));
        keys.push((KEY_DIGEST.to_owned(), short_digest(&view.state)));
        self.parts.gossip.set_keys(keys).await;
        self.view.send_replace(Arc::new(view));
    }
}

/// The first 16 hex digits of the state digest: enough to tell states apart at a glance.
pub fn short_digest(state: &AppliedState) -> String {
    state.digest().to_string()[..16].to_owned()
}
