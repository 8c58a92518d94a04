//! Pulling: ask a peer for every generation our version vector lacks, within a byte budget,
//! and every revert we lack.
//!
//! The puller wakes when a peer's version-vector key advertises more than we hold or its
//! reverts key changes in gossip, when a push told us its sender holds more than it could
//! inline (`PullRequests`), when a peer becomes reachable (a dead member heard from again, or
//! the live members change), and every gossip interval (anti-entropy:
//! whatever pushes missed is repaired here; when gossip shows no peer ahead, the interval still
//! pulls from one peer in turn, a `probe`, which does not trust gossip's view). At each interval
//! it also compares the peers' tallies (`vh.` keys) with ours: a peer holding other content
//! under ids both vectors cover is asked for that origin's range again, so the engine surfaces
//! the conflict (`Contradictions`, D84).
//!
//! It pulls from live peers and from dead ones that sent us gossip lately (`gossip::heard`):
//! after a partition heals, the other side's vectors arrive with its first messages, one to two
//! gossip intervals before chitchat's failure detector holds it alive again.
//!
//! `run_puller` and `PullRequests` (a handle to ask for a pull from one peer now). It pulls from
//! reachable peers whose vector is ahead of `View::settled` (refused generations counted as held)
//! or whose `reverts` summary differs from ours. `pull` asks with `View::settled` as what it has
//! (so a peer does not send refused generations again) and the targets of the reverts it holds,
//! hands the `Revert` frames to `EngineHandle::ingest_reverts` before anything else, takes a
//! snapshot first when the server sends one (`SnapshotWrite`...`SnapshotEnd`, checked by
//! `validate_snapshot`, then `EngineHandle::absorb_snapshot`), then the generations. When a pull
//! fails part-way, what arrived intact before the failure is still handed to the engine. Limits:
//! `MAX_PULL_BYTES`, `MAX_REVERTS_PER_PULL`, `INGEST_BATCH`, `MAX_PULLS_PER_WAKE`,
//! `PULL_REQUEST_CAPACITY`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatId, NodeState};
use grapevine_proto::limits::MAX_SNAPSHOT_BYTES;
use grapevine_proto::validate::validate_snapshot;
use grapevine_proto::wire::{PullFrame, PullRequest, decode, encode_at};
use grapevine_proto::{NodeName, Snapshot, VersionVector};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{MAX_FRAME_BYTES, SyncError, keep_valid, read_frame, write_frame};
use crate::engine::EngineHandle;
use crate::gossip::Gossip;
use crate::metrics::reason;
use crate::transport::{STREAM_PULL, Transport};

/// Generation bytes one pull may bring. Bounds the memory a pull holds; a peer that has more
/// says so (`End { more: true }`) and we pull again at once.
pub const MAX_PULL_BYTES: usize = 16 * 1024 * 1024;

/// Most reverts one pull may bring: far more than a cluster writes, so a peer past it is broken.
const MAX_REVERTS_PER_PULL: usize = 1_000_000;

/// Generations handed to the engine at once while a pull is still streaming.
const INGEST_BATCH: usize = 64;

/// Pulls one wake-up may make in a row while peers stay ahead; the next wake-up goes on.
const MAX_PULLS_PER_WAKE: usize = 16;

/// Peers waiting for a prompted pull. A push prompts one pull; when the queue is full the
/// next anti-entropy round does it instead.
const PULL_REQUEST_CAPACITY: usize = 64;

/// A handle to ask the puller to pull from a peer now.
#[derive(Clone)]
pub struct PullRequests(mpsc::Sender<SocketAddr>);

impl PullRequests {
    pub fn channel() -> (PullRequests, mpsc::Receiver<SocketAddr>) {
        let (sender, receiver) = mpsc::channel(PULL_REQUEST_CAPACITY);
        (PullRequests(sender), receiver)
    }

    pub fn request(&self, peer: SocketAddr) {
        let _ = self.0.try_send(peer);
    }
}

/// Pulls from peers whose vectors are ahead of ours until none is, or shutdown.
pub async fn run_puller(
    transport: Transport,
    engine: EngineHandle,
    gossip: Arc<Gossip>,
    mut requests: mpsc::Receiver<SocketAddr>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    let changed = gossip.version_vectors_changed();
    let heard_again = gossip.heard_again();
    let mut heard_dead = gossip.heard_dead().await;
    // A member revived by heartbeats that others relayed may not have sent us anything yet:
    // its vector arrived while it was dead, and nothing else would prompt a look before the
    // next tick.
    let mut live = gossip.live_members_watcher().await;
    let mut members = live_ids(&mut live);
    let mut turn = 0usize;
    let mut contradictions = Contradictions::default();
    loop {
        let (mut prompted, mut tick) = (None, false);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            // A peer heard after a silence: news only if the failure detector holds it dead (a
            // live one was a pull source already). In a large cluster most peers are heard less
            // often than the window, so most hearings are of live ones.
            _ = heard_again.notified() => {
                let now = gossip.heard_dead().await;
                let news = now.iter().any(|addr| heard_dead.binary_search(addr).is_err());
                heard_dead = now;
                if !news {
                    continue;
                }
            }
            // chitchat sends the live members with their states, again whenever any state
            // changes (each change moves every member's vector): only a change of who is live
            // is news here.
            Ok(()) = live.changed() => {
                let now = live_ids(&mut live);
                if now == members {
                    continue;
                }
                members = now;
            }
            _ = ticker.tick() => tick = true,
            peer = requests.recv() => prompted = peer,
        }
        if let Some(peer) = prompted {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = pull_counted(&transport, &engine, &gossip, peer, None) => {}
            }
        } else if tick && let Some(contradiction) = contradictions.next(&engine, &gossip).await {
            let (peer, from) = (contradiction.peer, Some((contradiction.origin.clone(), contradiction.from)));
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return,
                pulled = pull_counted(&transport, &engine, &gossip, peer, from) => pulled,
            };
            // A failed pull is tried again at the next interval.
            if pulled.is_some() {
                contradictions.looked_at(contradiction);
            }
        }
        for _ in 0..MAX_PULLS_PER_WAKE {
            let view = engine.view();
            let mut ahead = gossip.reachable_ahead_of(view.settled.clone()).await;
            // A peer whose reverts differ may hold one we lack (or lack one of ours: then it
            // pulls from us, and the pull from it brings nothing and ends this round).
            for (addr, digest) in gossip.reachable_reverts_digests().await {
                if digest != view.reverts_digest && !ahead.contains(&addr) {
                    ahead.push(addr);
                }
            }
            if ahead.is_empty() {
                // Once per interval, when gossip shows no peer ahead: ask one anyway.
                if tick {
                    probe(&transport, &engine, &gossip, &mut turn, &shutdown).await;
                }
                break;
            }
            // Take turns among the peers that are ahead, so one slow peer cannot starve us.
            turn = turn.wrapping_add(1);
            let peer = ahead[turn % ahead.len()];
            let stored = tokio::select! {
                _ = shutdown.cancelled() => return,
                stored = pull_counted(&transport, &engine, &gossip, peer, None) => stored,
            };
            if stored.unwrap_or(0) == 0 {
                break;
            }
        }
    }
}

/// The live members the watch holds now, marking them seen.
fn live_ids(live: &mut tokio::sync::watch::Receiver<BTreeMap<ChitchatId, NodeState>>) -> Vec<ChitchatId> {
    live.borrow_and_update().keys().cloned().collect()
}

/// The anti-entropy probe: a pull from one reachable peer, taken in turn, although gossip shows
/// none ahead of this node. Gossip is a rumor: a node whose view of the peers' keys has fallen
/// behind (a node starved of gossip exchanges on a saturated machine saw no holder of a change
/// for a minute while it spread everywhere else) would otherwise wait for its view to recover,
/// and the writer's sweep tries each peer once. A probe costs a request and an empty answer;
/// one that brings something is counted (`sync_probes{reason="found"}`): gossip had missed it.
async fn probe(
    transport: &Transport,
    engine: &EngineHandle,
    gossip: &Gossip,
    turn: &mut usize,
    shutdown: &CancellationToken,
) {
    let mut peers: Vec<SocketAddr> = gossip.reachable_addrs().await;
    // Read from a set: sorted, so that the turn walks them all.
    peers.sort_unstable();
    if peers.is_empty() {
        return;
    }
    *turn = turn.wrapping_add(1);
    let peer = peers[*turn % peers.len()];
    let stored = tokio::select! {
        _ = shutdown.cancelled() => return,
        stored = pull_counted(transport, engine, gossip, peer, None) => stored,
    };
    let outcome = match stored {
        Some(0) => "none",
        Some(_) => "found",
        None => "failed",
    };
    transport.metrics().sync_probes.get_or_create(&reason(outcome)).inc();
}

/// Most (peer, origin) pairs whose contradicting tallies are remembered as looked at; past it
/// the memory is cleared (each is looked at once more).
const MAX_CONTRADICTIONS_REMEMBERED: usize = 4096;

/// Peers whose tally of an origin contradicts ours (the same range, other content: `Tally`):
/// some id of it is held with other content there. No vector shows it, so no ordinary pull
/// would ever bring the other content; a pull from that peer asking again for the origin's
/// range brings it, and the engine surfaces the conflict (`engine/conflict.rs`). Each pair is
/// looked at again only for what its range grew by since (a conflict stays, and so does the
/// contradiction).
#[derive(Default)]
struct Contradictions {
    /// `(peer, origin)` -> the `through` of the tally last looked at.
    looked: HashMap<(SocketAddr, NodeName), u64>,
}

/// A peer to pull one origin's range from again, from `from`, up to its tally's `through`.
struct Contradiction {
    peer: SocketAddr,
    origin: NodeName,
    from: u64,
    through: u64,
}

impl Contradictions {
    /// The next contradiction not looked at yet (or only for a shorter range).
    async fn next(&self, engine: &EngineHandle, gossip: &Gossip) -> Option<Contradiction> {
        let ours = engine.view().tallies.clone();
        for (peer, tallies) in gossip.reachable_tallies_unlike(&ours).await {
            for (origin, theirs) in tallies {
                if !ours.get(&origin).is_some_and(|ours| ours.contradicts(&theirs)) {
                    continue;
                }
                let looked = self.looked.get(&(peer, origin.clone())).copied();
                if looked.is_some_and(|through| through >= theirs.through) {
                    continue;
                }
                let from = looked.unwrap_or(theirs.after).max(theirs.after);
                return Some(Contradiction { peer, origin, from, through: theirs.through });
            }
        }
        None
    }

    /// Remembers a contradiction pulled for.
    fn looked_at(&mut self, contradiction: Contradiction) {
        if self.looked.len() >= MAX_CONTRADICTIONS_REMEMBERED {
            self.looked.clear();
        }
        self.looked.insert((contradiction.peer, contradiction.origin), contradiction.through);
    }
}

/// One pull, counted in the metrics; returns how many new generations and reverts were stored,
/// `None` when it failed. `from` asks again for one origin's generations past a seq (see
/// [`Contradictions`]).
async fn pull_counted(
    transport: &Transport,
    engine: &EngineHandle,
    gossip: &Gossip,
    peer: SocketAddr,
    from: Option<(NodeName, u64)>,
) -> Option<usize> {
    let metrics = transport.metrics();
    match pull(transport, engine, gossip, peer, from).await {
        Ok(stored) => {
            metrics.sync_pulls.get_or_create(&reason("ok")).inc();
            Some(stored)
        }
        Err(error) => {
            let outcome = if error.is_malformed() {
                metrics.peer_malformed.get_or_create(&reason("pull_frame")).inc();
                "malformed"
            } else {
                "failed"
            };
            metrics.sync_pulls.get_or_create(&reason(outcome)).inc();
            debug!(%peer, %error, "pull failed");
            None
        }
    }
}

async fn pull(
    transport: &Transport,
    engine: &EngineHandle,
    gossip: &Gossip,
    peer: SocketAddr,
    from: Option<(NodeName, u64)>,
) -> Result<usize, SyncError> {
    let view = engine.view();
    let request = PullRequest {
        // What this node holds or refused for good: the peer sends neither again (but for the
        // origin asked `from` again).
        have: match from {
            None => view.settled.clone(),
            Some((origin, seq)) => lowered(&view.settled, &origin, seq),
        },
        max_bytes: MAX_PULL_BYTES as u64,
        reverts: view.reverted.iter().cloned().collect(),
    };
    drop(view);
    // In the peer's format, if older than ours: it answers in the format it was asked in.
    let request = encode_at(&request, gossip.wire_version_of(peer).await, "pull request")
        .expect("a pull request has the same form in every format");
    let (mut send, mut recv) = transport.open_stream(peer, STREAM_PULL).await?;
    write_frame(&mut send, &request).await?;
    let _ = send.finish();
    let mut batch = Vec::new();
    let mut reverts = Vec::new();
    let mut stored = 0;
    let (mut received_bytes, mut snapshot_bytes) = (0, 0);
    let mut snapshot_writes = Vec::new();
    let received: Result<(), SyncError> = async {
        loop {
            let frame = read_frame(&mut recv, MAX_FRAME_BYTES).await?;
            let frame_bytes = frame.len();
            let frame = decode::<PullFrame>(&frame, "pull frame").map_err(|e| SyncError::Malformed(e.to_string()))?;
            if !matches!(frame, PullFrame::Revert(_)) && !reverts.is_empty() {
                // Every revert comes first: take them in before anything they may undo.
                stored += engine.ingest_reverts(std::mem::take(&mut reverts), Some(peer)).await;
            }
            match frame {
                PullFrame::Revert(revert) => {
                    if reverts.len() >= MAX_REVERTS_PER_PULL {
                        return Err(SyncError::Malformed(format!("more than {MAX_REVERTS_PER_PULL} reverts")));
                    }
                    reverts.push(revert);
                }
                PullFrame::SnapshotWrite(write) => {
                    snapshot_bytes += frame_bytes;
                    if snapshot_bytes > MAX_SNAPSHOT_BYTES {
                        let error = format!("peer sent a snapshot over the {MAX_SNAPSHOT_BYTES}-byte limit");
                        return Err(SyncError::Malformed(error));
                    }
                    snapshot_writes.push(write);
                }
                PullFrame::SnapshotEnd { covers } => {
                    let snapshot = Snapshot::from_parts(covers, std::mem::take(&mut snapshot_writes));
                    validate_snapshot(&snapshot).map_err(|e| SyncError::Malformed(e.to_string()))?;
                    engine.absorb_snapshot(snapshot).await;
                }
                PullFrame::Generation(generation) => {
                    received_bytes += frame_bytes;
                    if received_bytes > MAX_PULL_BYTES + MAX_FRAME_BYTES {
                        let error = format!("peer sent more than the {MAX_PULL_BYTES}-byte budget");
                        return Err(SyncError::Malformed(error));
                    }
                    batch.extend(keep_valid(vec![generation], transport, peer));
                }
                PullFrame::End { .. } => return Ok(()),
            }
            if batch.len() >= INGEST_BATCH {
                stored += engine.ingest(std::mem::take(&mut batch), Some(peer)).await;
            }
        }
    }
    .await;
    // What arrived intact before a failure is kept.
    stored += engine.ingest_reverts(reverts, Some(peer)).await;
    stored += engine.ingest(batch, Some(peer)).await;
    received.map(|()| stored)
}

/// `vector` with `origin` lowered to `seq` (if it was above).
fn lowered(vector: &VersionVector, origin: &NodeName, seq: u64) -> VersionVector {
    let mut out = VersionVector::default();
    for (name, held) in vector.iter() {
        out.raise(name.clone(), if name == origin { held.min(seq) } else { held });
    }
    out
}
