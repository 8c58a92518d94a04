//! Serving peers: answering their pulls from the store, and taking their pushes.
//!
//! `run_server` and `Server` answer `STREAM_PULL` from the store (the reverts the puller lacks
//! first, then the snapshot for a puller behind it, then the generations) and take `STREAM_PUSH`:
//! ingest the reverts, then the generations, answer `PushAck`, and prompt a pull from the sender
//! when it holds more than we do. What a puller's older format cannot hold (from format 6 to 7: a
//! generation with terms) is left out of the answer and counted in `sync_format_withheld`.
//! Limits: `MAX_CONCURRENT_SERVES`, `MAX_PUSH_FRAME_BYTES`.

use std::sync::Arc;

use std::collections::BTreeSet;

use grapevine_proto::limits::PUSH_INLINE_BYTES;
use grapevine_proto::wire::{PullFrame, PullRequest, Push, PushAck, WireError, decode_versioned, encode_at};
use grapevine_proto::{GenId, Revert};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::pull::MAX_PULL_BYTES;
use super::{MAX_FRAME_BYTES, MAX_REQUEST_BYTES, PullRequests, SyncError, keep_valid, read_frame, write_frame};
use crate::engine::EngineHandle;
use crate::metrics::{Metrics, reason};
use crate::store::Store;
use crate::transport::{IncomingStream, STREAM_CLOCK, STREAM_PULL, STREAM_PUSH, Transport};

/// Streams this node serves at once; more wait for a permit.
const MAX_CONCURRENT_SERVES: usize = 8;

/// Largest push frame: the inline budget plus the sender's vector and framing.
const MAX_PUSH_FRAME_BYTES: usize = PUSH_INLINE_BYTES + MAX_REQUEST_BYTES;

/// What the server needs to answer peers.
#[derive(Clone)]
pub struct Server {
    pub store: Arc<Store>,
    pub engine: EngineHandle,
    pub transport: Transport,
    pub pulls: PullRequests,
    /// Added to the wall clock this node reads to peers' clock probes (tests of skewed clocks).
    pub clock_skew_ms: i64,
}

/// Serves the streams peers open, until shutdown.
pub async fn run_server(server: Server, mut streams: mpsc::Receiver<IncomingStream>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
    let metrics = server.transport.metrics().clone();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = streams.recv() => match stream { Some(stream) => stream, None => return },
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (server, metrics) = (server.clone(), metrics.clone());
        tokio::spawn(async move {
            let (peer, kind) = (stream.peer, stream.kind);
            let (what, result) = match kind {
                STREAM_PULL => ("pull", serve_pull(stream, server.store, &metrics).await),
                STREAM_PUSH => ("push", take_push(stream, &server).await),
                STREAM_CLOCK => {
                    if let Err(error) = super::clock::serve(stream, server.clock_skew_ms).await {
                        debug!(%peer, %error, "answering a clock probe failed");
                    }
                    return;
                }
                _ => {
                    metrics.peer_malformed.get_or_create(&reason("unknown_stream_kind")).inc();
                    return;
                }
            };
            count(&metrics, what, peer, result);
            drop(permit);
        });
    }
}

fn count(metrics: &Metrics, what: &'static str, peer: std::net::SocketAddr, result: Result<(), SyncError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(error) if error.is_malformed() => {
            let kind = if what == "pull" { "pull_request" } else { "push" };
            metrics.peer_malformed.get_or_create(&reason(kind)).inc();
            debug!(%peer, %error, what, "malformed stream from a peer");
            "malformed"
        }
        Err(error) => {
            debug!(%peer, %error, what, "serving a peer failed");
            "failed"
        }
    };
    let family = if what == "pull" { &metrics.sync_served } else { &metrics.sync_pushes_received };
    family.get_or_create(&reason(outcome)).inc();
}

async fn serve_pull(mut stream: IncomingStream, store: Arc<Store>, metrics: &Metrics) -> Result<(), SyncError> {
    let request = read_frame(&mut stream.recv, MAX_REQUEST_BYTES).await?;
    // The answer goes in the request's format: a puller of the previous version reads no newer.
    let (request, version) =
        decode_versioned::<PullRequest>(&request, "pull request").map_err(|e| SyncError::Malformed(e.to_string()))?;
    let frame = |frame: &PullFrame| encode_at(frame, version, "pull frame");
    let budget = usize::try_from(request.max_bytes).unwrap_or(usize::MAX).min(MAX_PULL_BYTES);
    let (reverts, snapshot, generations, more) = tokio::task::spawn_blocking(move || {
        let held: BTreeSet<GenId> = request.reverts.into_iter().collect();
        let reverts: Vec<Revert> = store.reverts()?.into_iter().filter(|r| !held.contains(&r.target)).collect();
        let snapshot = store.snapshot()?;
        let (generations, more) = store.missing_from(&request.have, budget)?;
        // A puller behind our snapshot lacks generations only the snapshot still holds.
        let snapshot = request.have.is_behind(snapshot.covers()).then_some(snapshot);
        Ok::<_, crate::store::StoreError>((reverts, snapshot, generations, more))
    })
    .await
    .expect("store task panicked")
    .map_err(|e| SyncError::Stream(e.to_string()))?;
    // Reverts first: the puller must never apply a generation it is about to learn is reverted.
    let unwritable = |e: WireError| SyncError::Stream(e.to_string());
    for revert in reverts {
        write_frame(&mut stream.send, &frame(&PullFrame::Revert(revert)).map_err(unwritable)?).await?;
    }
    if let Some(snapshot) = snapshot {
        // Whole or not at all: a snapshot with a write the puller's format cannot hold (a
        // signed one, for a puller of format 4) is withheld, like such a generation.
        let writes = snapshot.writes().map(|write| frame(&PullFrame::SnapshotWrite(write.clone())));
        match writes.collect::<Result<Vec<_>, _>>() {
            Ok(writes) => {
                for bytes in writes {
                    write_frame(&mut stream.send, &bytes).await?;
                }
                let end = PullFrame::SnapshotEnd { covers: snapshot.covers().clone() };
                write_frame(&mut stream.send, &frame(&end).map_err(unwritable)?).await?;
            }
            Err(error) => {
                metrics.sync_format_withheld.inc();
                debug!(peer = %stream.peer, %error, "snapshot withheld from a peer of an older format");
            }
        }
    }
    for generation in generations {
        let id = generation.id().clone();
        match frame(&PullFrame::Generation(generation)) {
            Ok(bytes) => {
                debug_assert!(bytes.len() <= MAX_FRAME_BYTES);
                write_frame(&mut stream.send, &bytes).await?;
            }
            Err(error) => {
                metrics.sync_format_withheld.inc();
                debug!(peer = %stream.peer, generation = %id, %error, "withheld from a peer of an older format");
            }
        }
    }
    write_frame(&mut stream.send, &frame(&PullFrame::End { more }).map_err(unwritable)?).await?;
    stream.send.finish().map_err(|e| SyncError::Stream(e.to_string()))?;
    Ok(())
}

/// Stores a push, answers with what we now hold, and pulls from the sender if it holds more
/// than it sent.
async fn take_push(mut stream: IncomingStream, server: &Server) -> Result<(), SyncError> {
    let frame = read_frame(&mut stream.recv, MAX_PUSH_FRAME_BYTES).await?;
    let (push, version) = decode_versioned::<Push>(&frame, "push").map_err(|e| SyncError::Malformed(e.to_string()))?;
    server.engine.ingest_reverts(push.reverts, Some(stream.peer)).await;
    let generations = keep_valid(push.generations, &server.transport, stream.peer);
    server.engine.ingest(generations, Some(stream.peer)).await;
    let view = server.engine.view();
    let ack = encode_at(&PushAck { have: view.version_vector.clone() }, version, "push ack")
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    write_frame(&mut stream.send, &ack).await?;
    stream.send.finish().map_err(|e| SyncError::Stream(e.to_string()))?;
    if view.settled.is_behind(&push.sender_has) {
        server.pulls.request(stream.peer);
    }
    Ok(())
}
