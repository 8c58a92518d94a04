//! Log sync: moving generation bodies between nodes over QUIC streams.
//!
//! Three mechanisms, each covering the others' gaps:
//! - **push** (`push.rs`): a node that stores a new generation sends it at once to a few live
//!   peers that lack it, and each of them does the same on first receipt, so a change spreads
//!   in about log(N) network hops;
//! - **pull** (`pull.rs`): whenever a peer's advertised version vector is ahead of ours (a
//!   gossip key event, a push too large to inline, and every gossip interval as anti-entropy),
//!   we pull what we lack, within a byte budget;
//! - **serve** (`server.rs`): answering peers' pulls and pushes.
//!
//! Frames on every stream are a 4-byte big-endian length and a versioned postcard item.
//!
//! This file holds the framing (`write_frame`, `read_frame`), `SyncError`, `keep_valid` (drops and
//! counts each generation that fails `validate_generation`, so one bad generation does not hold
//! back the rest), and `PeerHoldings`: each peer's advertised vector joined with what it
//! acknowledged to our pushes (`record_ack`, `merged`, `count_holding`). Limits: `FRAME_TIMEOUT`,
//! `MAX_FRAME_BYTES`, `MAX_REQUEST_BYTES`, `MAX_ACKED_PEERS`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use grapevine_proto::limits::MAX_GENERATION_BYTES;
use grapevine_proto::validate::validate_generation;
use grapevine_proto::{GenId, Generation, VersionVector};
use quinn::{RecvStream, SendStream};
use tracing::debug;

use crate::metrics::reason;
use crate::transport::{Transport, TransportError};

pub mod clock;
mod pull;
mod push;
mod server;

pub use pull::{MAX_PULL_BYTES, PullRequests, run_puller};
pub use push::{FANOUT, PUSH_QUEUE_CAPACITY, run_pusher};
pub use server::{Server, run_server};

/// How long one frame may take to arrive before the exchange is abandoned.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame: one generation at its size limit, plus framing.
const MAX_FRAME_BYTES: usize = MAX_GENERATION_BYTES + 1024;

/// Largest frame that carries a version vector (a pull request, a push ack): the vector of a
/// cluster at the member ceiling with long names fits easily, and so do the targets of the
/// reverts a pull request lists (about 30,000 with the longest names).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The generations that pass validation; each one that fails is counted and skipped, so one
/// generation this node cannot accept (say, from a newer version) does not hold back the rest.
fn keep_valid(generations: Vec<Generation>, transport: &Transport, peer: SocketAddr) -> Vec<Generation> {
    generations
        .into_iter()
        .filter(|generation| match validate_generation(generation) {
            Ok(()) => true,
            Err(error) => {
                transport.metrics().peer_malformed.get_or_create(&reason("invalid_generation")).inc();
                debug!(%peer, generation = %generation.id(), %error, "skipped an invalid generation");
                false
            }
        })
        .collect()
}

/// Why a pull or a push failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream broke or was reset.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The peer announced a frame over the limit.
    #[error("frame of {found} bytes is larger than the limit of {limit} bytes")]
    FrameTooLarge { limit: usize, found: usize },
    /// The peer sent bytes that do not decode as what the protocol expects there.
    #[error("peer sent malformed data: {0}")]
    Malformed(String),
    /// The peer went silent.
    #[error("no frame within {FRAME_TIMEOUT:?}")]
    Timeout,
}

impl SyncError {
    /// True when the peer sent something no correct peer sends: counted as malformed.
    fn is_malformed(&self) -> bool {
        matches!(self, SyncError::Malformed(_) | SyncError::FrameTooLarge { .. })
    }
}

async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), SyncError> {
    let length = u32::try_from(payload.len()).expect("frames are far below 4 GiB");
    send.write_all(&length.to_be_bytes()).await.map_err(|e| SyncError::Stream(e.to_string()))?;
    send.write_all(payload).await.map_err(|e| SyncError::Stream(e.to_string()))
}

async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>, SyncError> {
    let read = async {
        let mut length = [0u8; 4];
        recv.read_exact(&mut length).await.map_err(|e| SyncError::Stream(e.to_string()))?;
        let length = u32::from_be_bytes(length) as usize;
        if length > limit {
            return Err(SyncError::FrameTooLarge { limit, found: length });
        }
        let mut payload = vec![0u8; length];
        recv.read_exact(&mut payload).await.map_err(|e| SyncError::Stream(e.to_string()))?;
        Ok(payload)
    };
    tokio::time::timeout(FRAME_TIMEOUT, read).await.map_err(|_| SyncError::Timeout)?
}

/// Most peers whose acknowledgements are remembered; past it the memory is cleared (gossip
/// still says what each peer holds, only a little later).
const MAX_ACKED_PEERS: usize = 1024;

/// What each peer is known to hold, beyond what it advertises in gossip: the vectors it sent
/// back when it acknowledged our pushes. Gossip lags by up to a round; acknowledgements do not.
#[derive(Default)]
pub struct PeerHoldings {
    acked: Mutex<HashMap<SocketAddr, VersionVector>>,
}

impl PeerHoldings {
    pub fn record_ack(&self, peer: SocketAddr, have: &VersionVector) {
        let mut acked = self.acked.lock().expect("peer holdings lock poisoned");
        if acked.len() >= MAX_ACKED_PEERS && !acked.contains_key(&peer) {
            acked.clear();
        }
        acked.entry(peer).or_default().merge(have);
    }

    /// Each peer's advertised vector joined with what it acknowledged.
    pub fn merged(&self, advertised: Vec<(SocketAddr, VersionVector)>) -> Vec<(SocketAddr, VersionVector)> {
        let acked = self.acked.lock().expect("peer holdings lock poisoned");
        advertised
            .into_iter()
            .map(|(peer, mut vector)| {
                if let Some(extra) = acked.get(&peer) {
                    vector.merge(extra);
                }
                (peer, vector)
            })
            .collect()
    }

    /// How many of the `peers` (joined with acknowledgements) hold `id`.
    pub fn count_holding(&self, advertised: Vec<(SocketAddr, VersionVector)>, id: &GenId) -> usize {
        self.merged(advertised).iter().filter(|(_, vector)| vector.covers(id)).count()
    }
}
