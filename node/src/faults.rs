//! Fault injection for tests (feature `testsuite`): a link filter in the transport.
//!
//! Each node's filter decides, per message or stream to or from a peer, whether it passes,
//! after what delay, or is dropped. Dropping both directions between two groups is a
//! partition; dropping one direction an asymmetric one; a `loss` fraction drops that share of
//! messages (gossip messages, pulls and pushes: whole messages, not QUIC packets, which QUIC
//! would retransmit). Decisions draw from a seeded generator, so a seeded run repeats.
//!
//! `LinkFilter` holds per-peer `LinkRule { drop, loss, delay_ms }`s (keyed by the peer's gossip
//! address) plus a default rule for every other peer. `admit(peer)` returns `None` to drop one
//! message or stream, or `Some(delay)`. Loss draws from a `proto::sim::SplitMix64`, seeded with the
//! port the endpoint is bound to and reseedable (`reseed`). A rule may hold only for gossip
//! (`gossip_only`): sync streams pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use grapevine_proto::sim::SplitMix64;
use serde::{Deserialize, Serialize};

/// What happens to traffic on one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRule {
    /// Drop everything.
    #[serde(default)]
    pub drop: bool,
    /// Drop this fraction of messages, from 0.0 to 1.0.
    #[serde(default)]
    pub loss: f64,
    /// Hold each message this long before it goes.
    #[serde(default)]
    pub delay_ms: u64,
    /// Apply the rule only to what this node sends to the peer, not to what it receives from
    /// it: a one-way (asymmetric) link.
    #[serde(default)]
    pub outbound_only: bool,
    /// Apply the rule only to gossip messages, not to log-sync streams (pushes and pulls): a
    /// node whose view of its peers stops while it can still sync.
    #[serde(default)]
    pub gossip_only: bool,
}

/// The rules of one node: per peer, with a rule for every other peer.
pub struct LinkFilter {
    state: Mutex<FilterState>,
}

struct FilterState {
    rules: HashMap<SocketAddr, LinkRule>,
    default: LinkRule,
    random: SplitMix64,
}

impl LinkFilter {
    pub fn new(seed: u64) -> Self {
        LinkFilter {
            state: Mutex::new(FilterState {
                rules: HashMap::new(),
                default: LinkRule::default(),
                random: SplitMix64::new(seed),
            }),
        }
    }

    /// Sets the rule for `peer`, or for every peer without a rule of its own when `None`.
    pub fn set(&self, peer: Option<SocketAddr>, rule: LinkRule) {
        let mut state = self.state.lock().expect("link filter lock poisoned");
        match peer {
            Some(peer) => {
                state.rules.insert(peer, rule);
            }
            None => state.default = rule,
        }
    }

    /// Removes every rule: all links pass.
    pub fn clear(&self) {
        let mut state = self.state.lock().expect("link filter lock poisoned");
        state.rules.clear();
        state.default = LinkRule::default();
    }

    /// Reseeds the loss generator.
    pub fn reseed(&self, seed: u64) {
        self.state.lock().expect("link filter lock poisoned").random = SplitMix64::new(seed);
    }

    /// `None` to drop one gossip message (`gossip`) or sync stream to (`outbound`) or from
    /// `peer`; `Some(delay)` to let it pass.
    pub fn admit(&self, peer: SocketAddr, outbound: bool, gossip: bool) -> Option<Duration> {
        let mut state = self.state.lock().expect("link filter lock poisoned");
        let rule = state.rules.get(&peer).copied().unwrap_or(state.default);
        if (rule.outbound_only && !outbound) || (rule.gossip_only && !gossip) {
            return Some(Duration::ZERO);
        }
        if rule.drop || (rule.loss > 0.0 && state.random.next_unit() < rule.loss) {
            return None;
        }
        Some(Duration::from_millis(rule.delay_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_drop_delay_and_lose_a_seeded_share() {
        let filter = LinkFilter::new(7);
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert_eq!(filter.admit(a, true, true), Some(Duration::ZERO));
        filter.set(Some(a), LinkRule { drop: true, ..LinkRule::default() });
        filter.set(None, LinkRule { delay_ms: 5, ..LinkRule::default() });
        assert_eq!(filter.admit(a, true, true), None);
        assert_eq!(filter.admit(a, false, true), None);
        assert_eq!(filter.admit(b, true, true), Some(Duration::from_millis(5)));
        filter.set(Some(a), LinkRule { drop: true, outbound_only: true, ..LinkRule::default() });
        assert_eq!(filter.admit(a, true, true), None, "what this node sends is dropped");
        assert_eq!(filter.admit(a, false, true), Some(Duration::ZERO), "what it receives passes");
        filter.set(Some(a), LinkRule { drop: true, gossip_only: true, ..LinkRule::default() });
        assert_eq!(filter.admit(a, true, true), None, "gossip is dropped");
        assert_eq!(filter.admit(a, false, false), Some(Duration::ZERO), "pushes and pulls pass");
        filter.clear();
        filter.set(None, LinkRule { loss: 0.2, ..LinkRule::default() });
        let dropped = (0..10_000).filter(|_| filter.admit(b, true, true).is_none()).count();
        assert!((1_800..2_200).contains(&dropped), "{dropped} of 10000 dropped at 20% loss");
    }
}
