//! Clock probes: each node asks a few live peers for their wall clock over a QUIC stream
//! (`STREAM_CLOCK`) and estimates its offset to each, as NTP does: the peer's reading minus
//! the midpoint of our send and receive times, within half the round trip; it keeps the offset
//! nearest zero within that error (`nearest_zero`). `clock::Offsets` keeps them; the replica
//! fences the node when it runs ahead of its peers (`hlc::Standing::fenced`).
//!
//! A peer of an older build does not know the stream kind: it counts it as malformed and drops
//! it, and the probe of that peer yields nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::clock::{Offsets, wall_ms};
use crate::gossip::Gossip;
use crate::metrics::Metrics;
use crate::transport::{IncomingStream, STREAM_CLOCK, Transport};

/// How often the peers are probed: often enough that a clock that jumps is fenced within
/// seconds, rarely enough to cost nothing (one round trip per peer).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Peers probed per round, in turn among the live ones: the median of a few is as good as the
/// median of all, and a 400-node cluster must not make 400 streams every round.
const PEERS_PER_ROUND: usize = 8;

/// A probe that takes longer is dropped: half its round trip is the estimate's error bound.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(500);

/// How often a fenced node says so in its log.
const FENCED_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// What the prober needs.
pub struct Prober {
    pub transport: Transport,
    pub gossip: std::sync::Arc<Gossip>,
    pub offsets: Offsets,
    pub metrics: std::sync::Arc<Metrics>,
    pub clock_skew_ms: i64,
    pub max_clock_offset_ms: u64,
}

/// Answers a peer's probe with this node's wall clock, 8 bytes big-endian.
pub async fn serve(mut stream: IncomingStream, clock_skew_ms: i64) -> Result<(), String> {
    let now = wall_ms(clock_skew_ms);
    stream.send.write_all(&now.to_be_bytes()).await.map_err(|e| e.to_string())?;
    stream.send.finish().map_err(|e| e.to_string())
}

/// Probes peers every [`PROBE_INTERVAL`] until shutdown.
pub async fn run_prober(prober: Prober, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let mut turn = 0usize;
    let mut last_logged: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut peers: Vec<_> =
            prober.gossip.members().await.into_iter().filter(|m| m.alive && !m.is_self).map(|m| m.gossip).collect();
        peers.sort();
        let count = peers.len().min(PEERS_PER_ROUND);
        for index in 0..count {
            let peer = peers[(turn + index) % peers.len()];
            match probe(&prober, peer).await {
                Ok(offset) => prober.offsets.record(peer, offset),
                Err(error) => debug!(%peer, %error, "clock probe failed"),
            }
        }
        turn = turn.wrapping_add(count);
        report(&prober, &mut last_logged);
    }
}

/// The peer's clock minus ours, in milliseconds.
async fn probe(prober: &Prober, peer: std::net::SocketAddr) -> Result<i64, String> {
    let asked = async {
        let sent = wall_ms(prober.clock_skew_ms);
        let (mut send, mut recv) = prober.transport.open_stream(peer, STREAM_CLOCK).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let mut reading = [0u8; 8];
        recv.read_exact(&mut reading).await.map_err(|e| e.to_string())?;
        let received = wall_ms(prober.clock_skew_ms);
        Ok::<_, String>((sent, u64::from_be_bytes(reading), received))
    };
    // The timeout bounds the round trip, and so the estimate's error.
    let (sent, theirs, received) =
        tokio::time::timeout(MAX_ROUND_TRIP, asked).await.map_err(|_| "no answer in time".to_owned())??;
    let midpoint = sent / 2 + received / 2;
    let error = received.saturating_sub(sent).div_ceil(2) as i64 + 1;
    Ok(nearest_zero(theirs as i64 - midpoint as i64, error))
}

/// The offset nearest zero within `error` of `estimate`: what the fence reads, so that only a
/// clock ahead beyond the measurement's error is fenced. The estimate is within half the round
/// trip (plus a millisecond of rounding) of the truth, and a slow answer is not a fast clock:
/// on a saturated machine, answers delayed by scheduling fenced a node of a single process,
/// whose nodes share one clock, for "113 ms ahead" (the spread bench at 50 nodes).
fn nearest_zero(estimate: i64, error: i64) -> i64 {
    estimate.signum() * (estimate.abs() - error).max(0)
}

/// Publishes the standing as a metric, and says so loudly (rate-limited) while fenced.
fn report(prober: &Prober, last_logged: &mut Option<std::time::Instant>) {
    let Some(standing) = prober.offsets.standing() else { return };
    prober.metrics.clock_ahead.set(standing.ahead_ms);
    if !standing.fenced(prober.max_clock_offset_ms) {
        return;
    }
    if last_logged.is_none_or(|at| crate::clock::elapsed(at) >= FENCED_LOG_INTERVAL) {
        *last_logged = Some(crate::clock::now());
        error!(
            ahead_ms = standing.ahead_ms,
            peers = standing.peers,
            max_clock_offset_ms = prober.max_clock_offset_ms,
            "this node's clock runs ahead of its peers': it takes no changes until the clock is fixed (NTP)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_zero;

    #[test]
    fn only_an_offset_beyond_the_error_counts() {
        assert_eq!(nearest_zero(113, 120), 0, "a slow answer is no evidence of a fast clock");
        assert_eq!(nearest_zero(-113, 120), 0);
        assert_eq!(nearest_zero(1_000, 3), 997);
        assert_eq!(nearest_zero(-1_000, 3), -997);
        assert_eq!(nearest_zero(0, 1), 0);
    }
}
