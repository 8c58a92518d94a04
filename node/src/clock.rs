//! The node's clocks, and how far its wall clock runs from its peers'.
//!
//! Every change is stamped with a hybrid logical clock whose physical part is this wall clock,
//! and a later stamp wins a key. A node whose clock runs ahead of the fleet would stamp its
//! changes into the future: peers hold them back until their own clocks reach the stamp, then
//! they win over every write made meanwhile. So each node measures its offset to its peers
//! (NTP-style, over QUIC: `sync::clock`), and a node ahead of the median of its peers by more
//! than `max_clock_offset_ms` fences itself: it takes no changes until its clock is fixed.
//!
//! This module is the one place the node reads time: `clippy.toml` disallows `Instant::now`,
//! `SystemTime::now` and their kin everywhere else, so a test under tokio's paused time sees
//! paused time wherever the node looks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now on the monotonic clock, read through tokio's: under a runtime with paused time (tokio's
/// `test-util`) it is the paused time, so deadlines and ages follow the test's clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How long ago `earlier` was on the monotonic clock of [`now`]; zero for a later instant.
pub fn elapsed(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

/// Now on this node's wall clock, for what is stamped or shown (hybrid clocks, certificates,
/// file names), never for measuring an interval.
#[allow(clippy::disallowed_methods)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Milliseconds since the Unix epoch on this node's wall clock (zero before the epoch).
pub fn unix_ms() -> u64 {
    wall().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Now on this node's wall clock as rustls and webpki check certificates at (whole seconds).
pub fn unix_time() -> rustls::pki_types::UnixTime {
    rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_millis(unix_ms()))
}

/// Milliseconds since the Unix epoch on this node's wall clock, plus `skew_ms` (zero, except in
/// tests of skewed clocks).
pub fn wall_ms(skew_ms: i64) -> u64 {
    unix_ms().saturating_add_signed(skew_ms)
}

/// A peer's offset counts this long after it was measured; an older one is forgotten (the peer
/// left, or stopped answering probes).
const OFFSET_TTL: Duration = Duration::from_secs(60);

/// One measurement of a peer's clock against ours.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// The peer's clock minus ours, in milliseconds.
    peer_minus_ours_ms: i64,
    at: Instant,
}

/// The latest offset measured to each peer; shared by the prober, the engine and the API.
#[derive(Clone, Default)]
pub struct Offsets {
    peers: Arc<Mutex<HashMap<SocketAddr, Measured>>>,
}

/// Where this node's clock stands against its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Standing {
    /// How far this node's clock runs ahead of the median of its peers' (negative: behind).
    pub ahead_ms: i64,
    /// How many peers were measured.
    pub peers: usize,
}

impl Offsets {
    /// Records that `peer`'s clock reads `peer_minus_ours_ms` ahead of ours.
    pub fn record(&self, peer: SocketAddr, peer_minus_ours_ms: i64) {
        let measured = Measured { peer_minus_ours_ms, at: now() };
        self.peers.lock().expect("offsets lock").insert(peer, measured);
    }

    /// This node's standing against the peers measured lately; `None` before any.
    pub fn standing(&self) -> Option<Standing> {
        let mut peers = self.peers.lock().expect("offsets lock");
        peers.retain(|_, m| elapsed(m.at) < OFFSET_TTL);
        let offsets: Vec<i64> = peers.values().map(|m| m.peer_minus_ours_ms).collect();
        ahead_of_median(&offsets).map(|ahead_ms| Standing { ahead_ms, peers: offsets.len() })
    }
}

/// How far our clock runs ahead of the median of peers whose clocks read `peer_minus_ours` ahead
/// of ours. The median, so one peer with a broken clock moves nothing; with two peers, their
/// mean.
pub fn ahead_of_median(peer_minus_ours: &[i64]) -> Option<i64> {
    let mut sorted = peer_minus_ours.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len() / 2;
    let median = match sorted.len() {
        0 => return None,
        n if n % 2 == 1 => sorted[middle],
        _ => sorted[middle - 1] / 2 + sorted[middle] / 2,
    };
    Some(median.saturating_neg())
}

/// Whether a node so placed must take no changes: it runs ahead of its peers by more than the
/// offset a peer accepts. Behind is harmless: its stamps lose to newer writes, as they should.
pub fn fenced(standing: Option<Standing>, max_clock_offset_ms: u64) -> bool {
    standing.is_some_and(|s| s.ahead_ms > max_clock_offset_ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fences_itself_only_when_ahead_of_most_of_its_peers() {
        assert_eq!(ahead_of_median(&[]), None);
        // Peers read 25 s behind ours: we run 25 s ahead.
        assert_eq!(ahead_of_median(&[-25_000, -25_010, -24_990]), Some(25_000));
        // One peer with a broken clock moves nothing.
        assert_eq!(ahead_of_median(&[3, -1, 600_000]), Some(-3));
        assert_eq!(ahead_of_median(&[-100, -300]), Some(200));
        let standing = |ahead_ms| Some(Standing { ahead_ms, peers: 3 });
        assert!(fenced(standing(25_000), 100));
        assert!(!fenced(standing(100), 100), "at the bound is within it");
        assert!(!fenced(standing(-25_000), 100), "behind is harmless");
        assert!(!fenced(None, 100), "no peer measured yet");
    }

    #[test]
    fn offsets_keep_the_latest_per_peer() {
        let offsets = Offsets::default();
        let (a, b, c) =
            ("10.0.0.1:7400".parse().unwrap(), "10.0.0.2:7400".parse().unwrap(), "10.0.0.3:7400".parse().unwrap());
        offsets.record(a, -500);
        offsets.record(a, -20_000);
        offsets.record(b, -20_010);
        offsets.record(c, -19_990);
        assert_eq!(offsets.standing(), Some(Standing { ahead_ms: 20_000, peers: 3 }));
    }
}
