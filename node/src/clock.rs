//! The node's clocks, and how far its wall clock runs from its peers'.
//!
//! Every change is stamped with a hybrid logical clock whose physical part is this wall clock,
//! and a later stamp wins a key. A node whose clock runs ahead of the fleet would stamp its
//! changes into the future: peers hold them back until their own clocks reach the stamp, then
//! they win over every write made meanwhile. So each node measures its offset to its peers
//! (NTP-style, over QUIC: `sync::clock`), and a node ahead of the median of its peers by more
//! than `max_clock_offset_ms` fences itself: it takes no changes until its clock is fixed
//! (`proto::hlc::Standing`, which `Replica::seal` checks; this module keeps the measurements).
//!
//! This module is the one place the node reads time: `clippy.toml` disallows `Instant::now`,
//! `SystemTime::now` and their kin everywhere else, so a test under tokio's paused time sees
//! paused time wherever the node looks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grapevine_proto::hlc::Standing;

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
        Standing::of(&offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
