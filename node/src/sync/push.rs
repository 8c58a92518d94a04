//! Eager push: a node that stores new generations (or reverts) sends them at once to a few live
//! peers that lack them, and each receiver does the same on first receipt (push on first receipt,
//! fanout [`FANOUT`]), so a change crosses the cluster in about log_FANOUT(N) network hops
//! instead of waiting for gossip rounds. Whatever a push misses, pull repairs.
//!
//! Who lacks a generation is judged from each peer's advertised version vector joined with
//! what it acknowledged to our earlier pushes; who lacks a revert, from each peer's reverts
//! summary in gossip (any peer whose summary differs from ours). Targets are ranked by a hash of this node,
//! the generation and the peer: different nodes and generations pick different peers, with no
//! random number drawn.
//!
//! A relay forwards before its own durable commit (the engine queues the job first); the writer
//! of a change keeps pushing, round after round, until every live peer is known to hold it
//! (`sweep`). `run_pusher` takes `PushJob { reverts, generations, from, sweep }`;
//! `choose_targets` picks up to `FANOUT` live peers other than `from` that lack one of the job's
//! generations (by
//! `PeerHoldings::merged`) or, for a job with reverts, whose `reverts` summary differs, ranked by a
//! hash of (this node, the job's first generation id or revert target, the peer). Reverts always go
//! inline; generations go inline when their total encoding is at most `PUSH_INLINE_BYTES`,
//! otherwise the push carries only `sender_has`. `encode_for` writes each push in the peer's wire
//! format and drops what that format cannot hold. Limits: `FANOUT`, `PUSH_INLINE_BYTES`,
//! `MAX_CONCURRENT_PUSHES`, `PUSH_QUEUE_CAPACITY`, `SWEEP_LIMIT`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grapevine_proto::wire::{Push, PushAck, decode, encode, encode_at};
use grapevine_proto::{Generation, NodeName, VersionVector};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{PeerHoldings, SyncError, read_frame, write_frame};
use crate::engine::{EngineHandle, PushJob};
use crate::gossip::Gossip;
use crate::metrics::{Metrics, reason};
use crate::transport::{STREAM_PUSH, Transport};

/// Peers each new generation is pushed to by each node that stores it. With push on first
/// receipt, a fanout of 3 leaves about e^-3 (5%) of nodes to anti-entropy in the worst case;
/// the accepting node also nudges every live peer through gossip, which closes that gap.
pub const FANOUT: usize = 3;

/// Largest total of generation bytes sent inline in one push. Larger generations are announced
/// (the receiver learns our vector) and pulled, so one stream never carries megabytes that
/// the receiver may already hold.
pub const PUSH_INLINE_BYTES: usize = 64 * 1024;

/// Pushes in flight at once; past it a push is skipped and anti-entropy does its work.
const MAX_CONCURRENT_PUSHES: usize = 16;

/// Push jobs waiting for the pusher; when full, the newest job is dropped (and counted).
pub const PUSH_QUEUE_CAPACITY: usize = 256;

/// How long the writer of a change keeps pushing it to peers not known to hold it.
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

/// Pushes every job to up to [`FANOUT`] peers lacking its generations, until shutdown; the
/// jobs of this node's own changes go on to every live peer that lacks them ([`sweep`]).
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
            job = jobs.recv() => match job { Some(job) => job, None => return },
        };
        let targets = pusher.targets(&job, &BTreeSet::new()).await;
        if job.sweep {
            tokio::spawn(sweep(pusher.clone(), job, targets, shutdown.clone()));
            continue;
        }
        let push = pusher.encoded(&job);
        for peer in targets {
            let Ok(permit) = pusher.permits.clone().try_acquire_owned() else {
                pusher.transport.metrics().sync_pushes.get_or_create(&reason("skipped_busy")).inc();
                continue;
            };
            let push = push.clone();
            let pusher = pusher.clone();
            tokio::spawn(async move {
                pusher.send(peer, &push).await;
                drop(permit);
            });
        }
    }
}

/// Pushes this node's own job to `first` (its [`FANOUT`] targets), then, round after round, to
/// every live peer still not known to hold it (by its advertised vector and its acknowledgements),
/// each peer at most once, for at most [`SWEEP_LIMIT`]. Push on first receipt reaches all but
/// about e^-FANOUT of the nodes; this reaches the rest in a few round trips instead of a gossip
/// exchange or an anti-entropy interval later. It waits for permits rather than skipping.
async fn sweep(pusher: Pusher, job: PushJob, first: Vec<SocketAddr>, shutdown: CancellationToken) {
    let rounds = async {
        let push = pusher.encoded(&job);
        let mut tried: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut targets = first;
        while !targets.is_empty() {
            tried.extend(targets.iter().copied());
            let mut round = tokio::task::JoinSet::new();
            for peer in targets {
                let Ok(permit) = pusher.permits.clone().acquire_owned().await else { return };
                let (pusher, push) = (pusher.clone(), push.clone());
                round.spawn(async move {
                    pusher.send(peer, &push).await;
                    drop(permit);
                });
            }
            round.join_all().await;
            targets = pusher.targets(&job, &tried).await;
            targets.truncate(MAX_CONCURRENT_PUSHES);
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::timeout(SWEEP_LIMIT, rounds) => {}
    }
}

impl Pusher {
    /// The live peers lacking the job, other than its sender and `skip`: the first [`FANOUT`]
    /// by rank when `skip` is empty (a job's first round), every one otherwise (a sweep's next).
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

    /// The job as a push in each wire format a peer may read, encoded once per format.
    fn encoded(&self, job: &PushJob) -> Encoded {
        let inline_bytes: usize = job.generations.iter().map(|g| encode(g).len()).sum();
        let generations = if inline_bytes <= PUSH_INLINE_BYTES { job.generations.clone() } else { Vec::new() };
        let sender_has = self.engine.view().version_vector.clone();
        let push = Push { reverts: job.reverts.clone(), generations, sender_has };
        Encoded { push: Arc::new(push), formats: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// Pushes to `peer` in its wire format and records what it acknowledged holding.
    async fn send(&self, peer: SocketAddr, push: &Encoded) {
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
