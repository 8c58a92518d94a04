//! Eager push: a node that stores new generations (or reverts) sends them at once to the peers
//! that lack them, and each receiver does the same on first receipt, so a change crosses the
//! cluster in a few network hops instead of waiting for gossip rounds. Whatever a push misses,
//! pull repairs.
//!
//! Generations travel down their push tree (`grapevine_proto::push`): each node pushes to its
//! [`FANOUT`] children in the tree of the job's first generation, drawn over the live members it
//! sees, so a change reaches N members in about log_FANOUT(N) hops with N - 1 pushes. When a
//! push to a child fails, or goes unanswered for `TAKEOVER_AFTER`, the node pushes to that
//! child's children itself. Reverts go to [`FANOUT`] peers whose reverts summary differs from
//! ours, ranked by a hash of this node, the revert's target and the peer (many nodes write a
//! quorum's revert at once, so no one tree would do).
//!
//! Who lacks a generation is judged from each peer's advertised version vector joined with
//! what it acknowledged to our earlier pushes: a child known to hold the job is skipped (it
//! pushed to its own children when it first held it).
//!
//! A relay forwards before its own durable commit (the engine queues the job first). The writer
//! of a change pushes to its children, then, two gossip intervals later, sweeps: round after
//! round, to every live peer still not known to hold it, for what the tree missed (a view that
//! differed, a relay that died). `run_pusher` takes `PushJob { reverts, generations, from,
//! sweep, inline }`. Reverts always go inline; generations go inline when the engine found
//! their total encoding within `limits::PUSH_INLINE_BYTES` (`inline`), otherwise the push
//! carries only `sender_has`. `encode_for` writes each push in the peer's wire format and
//! drops what that format cannot hold. Limits: `FANOUT`, `MAX_CONCURRENT_PUSHES`,
//! `PUSH_QUEUE_CAPACITY`, `SWEEP_AFTER_ROUNDS`, `SWEEP_LIMIT`, `TAKEOVER_AFTER`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grapevine_proto::wire::{Push, PushAck, decode, encode_at};
use grapevine_proto::{GenId, Generation, NodeName, VersionVector};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{PeerHoldings, SyncError, read_frame, write_frame};
use crate::engine::{EngineHandle, PushJob};
use crate::gossip::Gossip;
use crate::metrics::{Metrics, reason};
use crate::transport::{STREAM_PUSH, Transport};

/// Children of each node in a generation's push tree, and peers each new revert is pushed to by
/// each node that stores it.
pub const FANOUT: usize = 3;

/// Pushes in flight at once; past it a push is skipped and anti-entropy does its work.
const MAX_CONCURRENT_PUSHES: usize = 16;

/// Push jobs waiting for the pusher; when full, the newest job is dropped (and counted).
pub const PUSH_QUEUE_CAPACITY: usize = 256;

/// Gossip intervals the writer of a change waits, after pushing to its children, before it
/// sweeps: by then the tree has long reached whom it reaches, and gossip has told the writer
/// of most holders, so the sweep pushes mostly to members the tree missed.
const SWEEP_AFTER_ROUNDS: u32 = 2;

/// How long a push down the tree may go unanswered before this node also pushes to that
/// child's children: a child cut off by a partition, or dead and not yet known to be, would
/// otherwise hold back its whole subtree until the writer's sweep or anti-entropy. An answer
/// waits for the child's commit: milliseconds on a healthy host.
const TAKEOVER_AFTER: Duration = Duration::from_millis(250);

/// How long the writer of a change keeps pushing it to peers not known to hold it, from its
/// first push.
const SWEEP_LIMIT: Duration = Duration::from_secs(5);

/// What a push needs: this node's name, the sockets, and what each peer holds.
#[derive(Clone)]
struct Pusher {
    own: NodeName,
    transport: Transport,
    engine: EngineHandle,
    gossip: Arc<Gossip>,
    holdings: Arc<PeerHoldings>,
    permits: Arc<Semaphore>,
}

/// Pushes every job: generations to this node's children in their push tree, reverts to up to
/// [`FANOUT`] peers whose reverts differ, until shutdown; the jobs of this node's own changes
/// are then swept to every live peer still lacking them ([`sweep`]).
pub async fn run_pusher(
    own: NodeName,
    transport: Transport,
    engine: EngineHandle,
    gossip: Arc<Gossip>,
    holdings: Arc<PeerHoldings>,
    mut jobs: mpsc::Receiver<PushJob>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PUSHES));
    let pusher = Pusher { own, transport, engine, gossip, holdings, permits };
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => return,
            job = jobs.recv() => match job { Some(job) => Arc::new(job), None => return },
        };
        let first = pusher.first_targets(&job).await;
        let push = pusher.encoded(&job);
        if job.sweep {
            tokio::spawn(sweep(pusher.clone(), job, push, first, shutdown.clone()));
        } else {
            tokio::spawn(pusher.clone().push_down(job, push, first, false));
        }
    }
}

/// Pushes this node's own job to its children (`first`), then, after [`SWEEP_AFTER_ROUNDS`]
/// gossip intervals (at once for a rollback's revert: reverts spread by fanout, not a tree,
/// and miss about e^-FANOUT of the members), round after round to every live peer still not
/// known to hold it (by its advertised vector and its acknowledgements), each at most once, up
/// to [`MAX_CONCURRENT_PUSHES`] a round, until [`SWEEP_LIMIT`] from the start. The tree
/// reaches every member whose view agrees with ours; this reaches the rest without waiting for
/// anti-entropy. It waits for permits rather than skipping.
async fn sweep(pusher: Pusher, job: Arc<PushJob>, push: Encoded, first: Targets, shutdown: CancellationToken) {
    let rounds = async {
        let mut tried: BTreeSet<SocketAddr> = first.peers.iter().copied().collect();
        let tree = first.tree.is_some();
        pusher.clone().push_down(job.clone(), push.clone(), first, true).await;
        if tree {
            tokio::time::sleep(pusher.gossip.interval() * SWEEP_AFTER_ROUNDS).await;
        }
        loop {
            let mut targets = pusher.targets(&job, &tried).await;
            targets.truncate(MAX_CONCURRENT_PUSHES);
            if targets.is_empty() {
                return;
            }
            tried.extend(targets.iter().copied());
            let targets = Targets { peers: targets, tree: None };
            pusher.clone().push_down(job.clone(), push.clone(), targets, true).await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::timeout(SWEEP_LIMIT, rounds) => {}
    }
}

/// Whom a job goes to first, and the tree they were drawn from (a job with generations).
struct Targets {
    peers: Vec<SocketAddr>,
    tree: Option<Tree>,
}

/// One generation's push tree as this node sees it, to push to a failed child's children.
struct Tree {
    generation: GenId,
    members: Vec<NodeName>,
    /// The live peers' addresses.
    addrs: BTreeMap<NodeName, SocketAddr>,
}

impl Tree {
    /// `member`'s children, by address.
    fn children_of(&self, member: &NodeName) -> Vec<SocketAddr> {
        let children = grapevine_proto::push::children(&self.generation, member, &self.members, FANOUT);
        children.iter().filter_map(|child| self.addrs.get(child)).copied().collect()
    }

    /// The children of the live peer at `addr` (a push to it failed or is slow: rare).
    fn children_of_addr(&self, addr: SocketAddr) -> Vec<SocketAddr> {
        let name = self.addrs.iter().find(|(_, at)| **at == addr).map(|(name, _)| name);
        name.map(|name| self.children_of(name)).unwrap_or_default()
    }
}

impl Pusher {
    /// The first targets of a job: this node's children in the push tree of its first
    /// generation that lack it, or, for reverts, up to [`FANOUT`] peers by rank. Only the
    /// children's vectors are read: a relay does this before it forwards.
    async fn first_targets(&self, job: &PushJob) -> Targets {
        let Some(first) = job.generations.first() else {
            return Targets { peers: self.targets(job, &BTreeSet::new()).await, tree: None };
        };
        let peers = self.gossip.named_live_peers().await;
        let tree = Tree {
            generation: first.id().clone(),
            members: peers.iter().map(|(name, _)| name.clone()).collect(),
            addrs: peers.into_iter().collect(),
        };
        let peers = self.lacking(job, tree.children_of(&self.own)).await;
        Targets { peers, tree: Some(tree) }
    }

    /// Those of `peers` that are live, not the job's sender, and not known to hold all of its
    /// generations (by their advertised vectors joined with their acknowledgements).
    async fn lacking(&self, job: &PushJob, peers: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let only: BTreeSet<SocketAddr> = peers.iter().copied().filter(|peer| Some(*peer) != job.from).collect();
        let vectors = self.holdings.merged(self.gossip.peer_version_vectors_of(only).await);
        let lacks: BTreeSet<SocketAddr> = vectors
            .into_iter()
            .filter(|(_, have)| job.generations.iter().any(|g| !have.covers(g.id())))
            .map(|(peer, _)| peer)
            .collect();
        peers.into_iter().filter(|peer| lacks.contains(peer)).collect()
    }

    /// The live peers lacking the job, other than its sender and `skip`: the first [`FANOUT`]
    /// by rank when `skip` is empty (a revert's first push), every one otherwise (a sweep).
    async fn targets(&self, job: &PushJob, skip: &BTreeSet<SocketAddr>) -> Vec<SocketAddr> {
        let peers = self.holdings.merged(self.gossip.peer_version_vectors().await);
        let other_reverts: Vec<SocketAddr> = if job.reverts.is_empty() {
            Vec::new()
        } else {
            let digests = self.gossip.peer_reverts_digests().await;
            digests.into_iter().filter(|(_, digest)| *digest != job.reverts_digest).map(|(peer, _)| peer).collect()
        };
        let peers = peers.into_iter().filter(|(peer, _)| !skip.contains(peer)).collect();
        let limit = if skip.is_empty() { FANOUT } else { usize::MAX };
        choose_targets(&self.own, job, peers, &other_reverts, limit)
    }

    /// Pushes to each target, and to the children of each target of the tree whose push failed
    /// or has not been answered within [`TAKEOVER_AFTER`] (and so on down); a slow push goes
    /// on. With `wait`, it waits for a permit; otherwise a push over [`MAX_CONCURRENT_PUSHES`]
    /// is skipped and counted.
    async fn push_down(self, job: Arc<PushJob>, push: Encoded, targets: Targets, wait: bool) {
        let Targets { peers, tree } = targets;
        let mut pushes = tokio::task::JoinSet::new();
        let (slow_tx, mut slow) = mpsc::unbounded_channel();
        let mut pending = peers;
        loop {
            for peer in pending.drain(..) {
                let permit = if wait {
                    let Ok(permit) = self.permits.clone().acquire_owned().await else { return };
                    permit
                } else {
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        self.transport.metrics().sync_pushes.get_or_create(&reason("skipped_busy")).inc();
                        continue;
                    };
                    permit
                };
                let (pusher, push, slow_tx) = (self.clone(), push.clone(), slow_tx.clone());
                pushes.spawn(async move {
                    let send = pusher.send(peer, &push);
                    tokio::pin!(send);
                    let (delivered, taken_over) = tokio::select! {
                        delivered = &mut send => (delivered, false),
                        () = tokio::time::sleep(TAKEOVER_AFTER) => {
                            let _ = slow_tx.send(peer);
                            (send.await, true)
                        }
                    };
                    drop(permit);
                    // A failed push is taken over now, unless it was already for being slow.
                    (!delivered && !taken_over).then_some(peer)
                });
            }
            let failed = tokio::select! {
                // A slow push's takeover comes before the last push's end.
                biased;
                Some(peer) = slow.recv() => Some(peer),
                joined = pushes.join_next() => match joined {
                    Some(Ok(failed)) => failed,
                    Some(Err(_)) => None,
                    None => return,
                },
            };
            if let (Some(peer), Some(tree)) = (failed, &tree) {
                pending = self.lacking(&job, tree.children_of_addr(peer)).await;
            }
        }
    }

    /// The job as a push in each wire format a peer may read, encoded once per format.
    fn encoded(&self, job: &PushJob) -> Encoded {
        let generations = if job.inline { job.generations.clone() } else { Vec::new() };
        let sender_has = self.engine.view().version_vector.clone();
        let push = Push { reverts: job.reverts.clone(), generations, sender_has };
        Encoded { push: Arc::new(push), formats: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// Pushes to `peer` in its wire format and records what it acknowledged holding; whether
    /// the peer answered.
    async fn send(&self, peer: SocketAddr, push: &Encoded) -> bool {
        let version = self.gossip.wire_version_of(peer).await;
        let bytes = push.at(version, self.transport.metrics());
        let outcome = match push_to(&self.transport, peer, &bytes).await {
            Ok(have) => {
                self.holdings.record_ack(peer, &have);
                "ok"
            }
            Err(error) => {
                debug!(%peer, %error, "push failed");
                if error.is_malformed() { "malformed" } else { "failed" }
            }
        };
        self.transport.metrics().sync_pushes.get_or_create(&reason(outcome)).inc();
        outcome == "ok"
    }
}

/// One push, and its encoding in each wire format asked for so far.
#[derive(Clone)]
struct Encoded {
    push: Arc<Push>,
    formats: Arc<Mutex<BTreeMap<u8, Arc<Vec<u8>>>>>,
}

impl Encoded {
    fn at(&self, version: u8, metrics: &Metrics) -> Arc<Vec<u8>> {
        let mut formats = self.formats.lock().expect("push encodings lock poisoned");
        formats.entry(version).or_insert_with(|| Arc::new(encode_for(&self.push, version, metrics))).clone()
    }
}

/// The push in wire format `version` (a peer's, when older than ours), without the
/// generations that format cannot hold: the peer cannot store those until it is upgraded.
fn encode_for(push: &Push, version: u8, metrics: &Metrics) -> Vec<u8> {
    if let Ok(bytes) = encode_at(push, version, "push") {
        return bytes;
    }
    let (held, withheld): (Vec<Generation>, Vec<Generation>) =
        push.generations.iter().cloned().partition(|g| encode_at(g, version, "generation").is_ok());
    metrics.sync_format_withheld.inc_by(withheld.len() as u64);
    let push = Push { generations: held, ..push.clone() };
    encode_at(&push, version, "push").expect("a push of generations each in the format is in the format")
}

/// Up to `limit` peers that lack at least one of the job's generations, or whose reverts
/// differ from ours (`other_reverts`) when the job has reverts, ranked by a hash of (this
/// node, the job's first generation or revert target, peer).
fn choose_targets(
    own: &NodeName,
    job: &PushJob,
    peers: Vec<(SocketAddr, VersionVector)>,
    other_reverts: &[SocketAddr],
    limit: usize,
) -> Vec<SocketAddr> {
    let first = match (job.generations.first(), job.reverts.first()) {
        (Some(generation), _) => generation.id(),
        (None, Some(revert)) => &revert.target,
        (None, None) => return Vec::new(),
    };
    let lacks = |peer: &SocketAddr, have: &VersionVector| {
        job.generations.iter().any(|g| !have.covers(g.id())) || other_reverts.contains(peer)
    };
    let mut lacking: Vec<(u64, SocketAddr)> = peers
        .into_iter()
        .filter(|(peer, _)| Some(*peer) != job.from)
        .filter(|(peer, have)| lacks(peer, have))
        .map(|(peer, _)| {
            let mut hasher = DefaultHasher::new();
            (own, first, peer).hash(&mut hasher);
            (hasher.finish(), peer)
        })
        .collect();
    lacking.sort();
    lacking.into_iter().take(limit).map(|(_, peer)| peer).collect()
}

async fn push_to(transport: &Transport, peer: SocketAddr, push: &[u8]) -> Result<VersionVector, SyncError> {
    let (mut send, mut recv) = transport.open_stream(peer, STREAM_PUSH).await?;
    write_frame(&mut send, push).await?;
    let _ = send.finish();
    let ack = read_frame(&mut recv, super::MAX_REQUEST_BYTES).await?;
    let ack: PushAck = decode(&ack, "push ack").map_err(|e| SyncError::Malformed(e.to_string()))?;
    Ok(ack.have)
}
