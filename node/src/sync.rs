//! Log sync: pulling the generations a peer has and we lack, and serving such pulls.
//!
//! Peers advertise their version vectors in gossip. Whenever a live peer's vector is ahead of
//! ours (on a gossip change, after a local write, and at every gossip interval as
//! anti-entropy), the puller opens a `STREAM_PULL` stream to it, sends a [`PullRequest`] with
//! our vector and a byte budget, and receives [`PullFrame`]s: generations, each checked against
//! its hash and validated before the engine stores it, then `End`.
//!
//! Frames are a 4-byte big-endian length and a versioned postcard item.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grapevine_proto::VersionVector;
use grapevine_proto::limits::MAX_GENERATION_BYTES;
use grapevine_proto::validate::validate_generation;
use grapevine_proto::wire::{PullFrame, PullRequest, decode, encode};
use quinn::{RecvStream, SendStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::EngineHandle;
use crate::gossip::Gossip;
use crate::metrics::{Metrics, reason};
use crate::store::Store;
use crate::transport::{IncomingStream, STREAM_PULL, Transport, TransportError};

/// Generation bytes one pull may bring. Bounds the memory a pull holds; a peer that has more
/// says so (`End { more: true }`) and we pull again at once.
pub const MAX_PULL_BYTES: usize = 16 * 1024 * 1024;

/// Largest frame: one generation at its size limit, plus framing.
const MAX_FRAME_BYTES: usize = MAX_GENERATION_BYTES + 1024;

/// Largest pull request. A version vector of the member ceiling with long names fits easily.
const MAX_PULL_REQUEST_BYTES: usize = 64 * 1024;

/// Generations handed to the engine at once while a pull is still streaming.
const INGEST_BATCH: usize = 64;

/// How long one frame may take to arrive before the pull is abandoned.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Pulls one wake-up may make in a row while peers stay ahead; the next wake-up goes on.
const MAX_PULLS_PER_WAKE: usize = 16;

/// Pulls this node serves at once; more wait for a permit.
const MAX_CONCURRENT_SERVES: usize = 4;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("frame of {found} bytes is larger than the limit of {limit} bytes")]
    FrameTooLarge { limit: usize, found: usize },
    #[error("peer sent malformed data: {0}")]
    Malformed(String),
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

/// Pulls from peers whose advertised vectors are ahead of ours until none is, or shutdown.
pub async fn run_puller(
    transport: Transport,
    engine: EngineHandle,
    gossip: Arc<Gossip>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    let changed = gossip.version_vectors_changed();
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            _ = ticker.tick() => {}
        }
        for _ in 0..MAX_PULLS_PER_WAKE {
            let ours = engine.view().version_vector.clone();
            let ahead: Vec<SocketAddr> = gossip
                .peer_version_vectors()
                .await
                .into_iter()
                .filter(|(_, theirs)| ours.is_behind(theirs))
                .map(|(addr, _)| addr)
                .collect();
            if ahead.is_empty() {
                break;
            }
            // Take turns among the peers that are ahead, so one slow peer cannot starve us.
            turn = turn.wrapping_add(1);
            let peer = ahead[turn % ahead.len()];
            let metrics = transport.metrics().clone();
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return,
                pulled = pull(&transport, &engine, peer, ours) => pulled,
            };
            match pulled {
                Ok(stored) => {
                    metrics.sync_pulls.get_or_create(&reason("ok")).inc();
                    if stored == 0 {
                        break;
                    }
                }
                Err(error) => {
                    let kind = if error.is_malformed() {
                        metrics.peer_malformed.get_or_create(&reason("pull_frame")).inc();
                        "malformed"
                    } else {
                        "failed"
                    };
                    metrics.sync_pulls.get_or_create(&reason(kind)).inc();
                    debug!(%peer, %error, "pull failed");
                    break;
                }
            }
        }
    }
}

/// One pull from `peer`; returns how many new generations were stored.
async fn pull(
    transport: &Transport,
    engine: &EngineHandle,
    peer: SocketAddr,
    have: VersionVector,
) -> Result<usize, SyncError> {
    let (mut send, mut recv) = transport.open_stream(peer, STREAM_PULL).await?;
    write_frame(&mut send, &encode(&PullRequest { have, max_bytes: MAX_PULL_BYTES as u64 })).await?;
    let _ = send.finish();
    let mut batch = Vec::new();
    let mut stored = 0;
    let mut received_bytes = 0;
    let received: Result<(), SyncError> = async {
        loop {
            let frame = read_frame(&mut recv, MAX_FRAME_BYTES).await?;
            received_bytes += frame.len();
            if received_bytes > MAX_PULL_BYTES + MAX_FRAME_BYTES {
                return Err(SyncError::Malformed(format!("peer sent more than the {MAX_PULL_BYTES}-byte budget")));
            }
            match decode::<PullFrame>(&frame, "pull frame").map_err(|e| SyncError::Malformed(e.to_string()))? {
                PullFrame::Generation(generation) => match validate_generation(&generation) {
                    Ok(()) => batch.push(generation),
                    // One generation this node cannot accept (say, from a newer version) must
                    // not hold back the others: skip it, count it, go on.
                    Err(error) => {
                        transport.metrics().peer_malformed.get_or_create(&reason("invalid_generation")).inc();
                        debug!(%peer, generation = %generation.id(), %error, "skipped an invalid generation");
                    }
                },
                PullFrame::End { .. } => return Ok(()),
            }
            if batch.len() >= INGEST_BATCH {
                stored += engine.ingest(std::mem::take(&mut batch)).await;
            }
        }
    }
    .await;
    // What arrived intact before a failure is kept.
    stored += engine.ingest(batch).await;
    received.map(|()| stored)
}

/// Serves the streams peers open, until shutdown.
pub async fn run_server(
    mut streams: mpsc::Receiver<IncomingStream>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = streams.recv() => match stream { Some(stream) => stream, None => return },
        };
        if stream.kind != STREAM_PULL {
            metrics.peer_malformed.get_or_create(&reason("unknown_stream_kind")).inc();
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let peer = stream.peer;
            let outcome = match serve_pull(stream, store).await {
                Ok(()) => "ok",
                Err(error) if error.is_malformed() => {
                    metrics.peer_malformed.get_or_create(&reason("pull_request")).inc();
                    debug!(%peer, %error, "malformed pull request");
                    "malformed"
                }
                Err(error) => {
                    debug!(%peer, %error, "serving a pull failed");
                    "failed"
                }
            };
            metrics.sync_served.get_or_create(&reason(outcome)).inc();
            drop(permit);
        });
    }
}

async fn serve_pull(mut stream: IncomingStream, store: Arc<Store>) -> Result<(), SyncError> {
    let request = read_frame(&mut stream.recv, MAX_PULL_REQUEST_BYTES).await?;
    let request: PullRequest = decode(&request, "pull request").map_err(|e| SyncError::Malformed(e.to_string()))?;
    let budget = usize::try_from(request.max_bytes).unwrap_or(usize::MAX).min(MAX_PULL_BYTES);
    let (generations, more) = tokio::task::spawn_blocking(move || store.missing_from(&request.have, budget))
        .await
        .expect("store task panicked")
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    for generation in generations {
        write_frame(&mut stream.send, &encode(&PullFrame::Generation(generation))).await?;
    }
    write_frame(&mut stream.send, &encode(&PullFrame::End { more })).await?;
    stream.send.finish().map_err(|e| SyncError::Stream(e.to_string()))?;
    Ok(())
}
