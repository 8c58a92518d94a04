//! A hybrid logical clock (Kulkarni et al., as in CockroachDB).
//!
//! Stamps follow physical time when clocks agree and never go backwards when they do not.
//! A remote stamp further ahead of our physical clock than `max_offset_ms` is refused, so a
//! node with a wrong clock cannot stamp every later change of the cluster into its future.
//!
//! `tick` always returns a stamp greater than any stamp issued or observed before. `observe`
//! refuses a remote stamp that is more than `max_offset_ms` ahead of physical time
//! (`ClockError::TooFarAhead`), and leaves the clock unchanged when it does.
//!
//! [`Standing`] is where a node's clock stands against its peers' (the median of the offsets it
//! measured) and whether that fences it: a node ahead of the median by more than the offset a
//! peer accepts takes no changes, since its stamps would win over every newer write.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in hybrid logical time: wall-clock milliseconds, then a logical counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub wall_ms: u64,
    pub logical: u32,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

/// Why a remote stamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote stamp is further ahead of our physical clock than the configured maximum.
    #[error(
        "remote clock stamp {remote} is {ahead_ms} ms ahead of local physical time {physical_ms}, more than the maximum offset of {max_offset_ms} ms"
    )]
    TooFarAhead { remote: Stamp, physical_ms: u64, ahead_ms: u64, max_offset_ms: u64 },
}

/// The clock of one node. The caller passes physical time in on every call.
#[derive(Clone, Debug)]
pub struct Clock {
    last: Stamp,
    max_offset_ms: u64,
}

impl Clock {
    pub fn new(max_offset_ms: u64) -> Self {
        Clock { last: Stamp::default(), max_offset_ms }
    }

    /// The greatest stamp this clock has issued or observed.
    pub fn last(&self) -> Stamp {
        self.last
    }

    /// A new stamp for a local event, greater than every stamp issued or observed before.
    pub fn tick(&mut self, physical_ms: u64) -> Stamp {
        self.last = if physical_ms > self.last.wall_ms {
            Stamp { wall_ms: physical_ms, logical: 0 }
        } else {
            self.successor_of_last()
        };
        self.last
    }

    /// Takes in a stamp from elsewhere (a peer's generation, or our own log at start-up).
    pub fn observe(&mut self, remote: Stamp, physical_ms: u64) -> Result<(), ClockError> {
        let ahead_ms = remote.wall_ms.saturating_sub(physical_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(ClockError::TooFarAhead { remote, physical_ms, ahead_ms, max_offset_ms: self.max_offset_ms });
        }
        self.last = self.last.max(remote);
        Ok(())
    }

    fn successor_of_last(&self) -> Stamp {
        match self.last.logical.checked_add(1) {
            Some(logical) => Stamp { wall_ms: self.last.wall_ms, logical },
            // 4 billion events in one millisecond: borrow the next millisecond.
            None => Stamp { wall_ms: self.last.wall_ms + 1, logical: 0 },
        }
    }
}

/// Where this node's clock stands against its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// How far this node's clock runs ahead of the median of its peers' (negative: behind).
    pub ahead_ms: i64,
    /// How many peers were measured.
    pub peers: usize,
}

impl Standing {
    /// The standing of a node whose peers' clocks read `peer_minus_ours` ms ahead of its own;
    /// `None` before any peer is measured. The median, so one peer with a broken clock moves
    /// nothing; with two peers, their mean.
    pub fn of(peer_minus_ours: &[i64]) -> Option<Standing> {
        let mut sorted = peer_minus_ours.to_vec();
        sorted.sort_unstable();
        let middle = sorted.len() / 2;
        let median = match sorted.len() {
            0 => return None,
            n if n % 2 == 1 => sorted[middle],
            _ => sorted[middle - 1] / 2 + sorted[middle] / 2,
        };
        Some(Standing { ahead_ms: median.saturating_neg(), peers: sorted.len() })
    }

    /// Whether a node so placed must take no changes: it runs ahead of its peers by more than
    /// the offset a peer accepts. Behind is harmless: its stamps lose to newer writes, as they
    /// should.
    pub fn fenced(&self, max_clock_offset_ms: u64) -> bool {
        self.ahead_ms > max_clock_offset_ms as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_physical_time_goes_back() {
        let mut clock = Clock::new(500);
        let a = clock.tick(1_000);
        let b = clock.tick(900);
        let c = clock.tick(1_000);
        let d = clock.tick(1_001);
        assert!(a < b && b < c && c < d);
        assert_eq!(d, Stamp { wall_ms: 1_001, logical: 0 });
    }

    #[test]
    fn observed_stamps_push_the_clock_forward() {
        let mut clock = Clock::new(500);
        clock.observe(Stamp { wall_ms: 1_400, logical: 7 }, 1_000).unwrap();
        assert_eq!(clock.tick(1_000), Stamp { wall_ms: 1_400, logical: 8 });
    }

    #[test]
    fn a_stamp_too_far_ahead_is_refused_and_ignored() {
        let mut clock = Clock::new(500);
        let error = clock.observe(Stamp { wall_ms: 1_501, logical: 0 }, 1_000).unwrap_err();
        assert!(matches!(error, ClockError::TooFarAhead { ahead_ms: 501, .. }));
        assert_eq!(clock.tick(1_000), Stamp { wall_ms: 1_000, logical: 0 });
    }

    #[test]
    fn a_node_fences_itself_only_when_ahead_of_most_of_its_peers() {
        assert_eq!(Standing::of(&[]), None);
        let ahead = |offsets: &[i64]| Standing::of(offsets).map(|s| s.ahead_ms);
        // Peers read 25 s behind ours: we run 25 s ahead.
        assert_eq!(Standing::of(&[-25_000, -25_010, -24_990]), Some(Standing { ahead_ms: 25_000, peers: 3 }));
        // One peer with a broken clock moves nothing.
        assert_eq!(ahead(&[3, -1, 600_000]), Some(-3));
        assert_eq!(ahead(&[-100, -300]), Some(200));
        let standing = |ahead_ms| Standing { ahead_ms, peers: 3 };
        assert!(standing(25_000).fenced(100));
        assert!(!standing(100).fenced(100), "at the bound is within it");
        assert!(!standing(-25_000).fenced(100), "behind is harmless");
    }
}
