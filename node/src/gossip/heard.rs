//! Which peers this node heard gossip from directly, and when: proof that a peer answers now,
//! sooner than the failure detector says it is alive again.
//!
//! chitchat marks a member dead a few rounds into a partition and forgets its heartbeat
//! samples; after the heal it needs two fresh heartbeats and then the end of a gossip round to
//! mark it alive again, one to two gossip intervals after the first message crosses. Log sync
//! used to pull only from live members, so a healed partition waited that long with the other
//! side's version vectors already in hand. A message that arrived over QUIC from a peer's
//! gossip address proves the address answers, so the puller may pull from it at once.
//!
//! `HeardFrom` holds the peers `GossipSocket::recv` got a message from, and when (at most
//! `MAX_HEARD_PEERS`); `recent` names those heard within `HEARD_WINDOW_ROUNDS` gossip intervals.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Peers remembered at once. The member ceiling is 400; past this, peers not heard within the
/// window are forgotten first, and a peer that still finds no room waits for the failure
/// detector as before.
const MAX_HEARD_PEERS: usize = 1024;

/// How many gossip intervals a message keeps its sender a pull source. The failure detector
/// revives a reachable member within about two rounds of its first fresh heartbeat; four
/// cover that with room, and a member still dead after them is flapping: pulls should not
/// chase it.
const HEARD_WINDOW_ROUNDS: u32 = 4;

/// The peers heard from recently; shared by the gossip socket (which records) and the puller.
pub struct HeardFrom {
    peers: Mutex<HashMap<SocketAddr, Instant>>,
    window: Duration,
    /// Woken when a peer not heard within the window is heard again: the puller looks at once.
    became_reachable: Arc<Notify>,
}

impl HeardFrom {
    pub fn new(gossip_interval: Duration, became_reachable: Arc<Notify>) -> HeardFrom {
        HeardFrom { peers: Mutex::new(HashMap::new()), window: gossip_interval * HEARD_WINDOW_ROUNDS, became_reachable }
    }

    /// Records a gossip message from `peer` at `now`.
    pub fn record(&self, peer: SocketAddr, now: Instant) {
        let mut peers = self.peers.lock().expect("heard-from lock poisoned");
        let fresh = peers.get(&peer).is_some_and(|at| now.saturating_duration_since(*at) <= self.window);
        if !peers.contains_key(&peer) && peers.len() >= MAX_HEARD_PEERS {
            peers.retain(|_, at| now.saturating_duration_since(*at) <= self.window);
            if peers.len() >= MAX_HEARD_PEERS {
                return;
            }
        }
        peers.insert(peer, now);
        drop(peers);
        if !fresh {
            self.became_reachable.notify_one();
        }
    }

    /// How long before `now` each peer last sent gossip (the fleet page's "last seen").
    pub fn ages(&self, now: Instant) -> HashMap<SocketAddr, Duration> {
        let peers = self.peers.lock().expect("heard-from lock poisoned");
        peers.iter().map(|(addr, at)| (*addr, now.saturating_duration_since(*at))).collect()
    }

    /// The peers heard from within the window before `now`.
    pub fn recent(&self, now: Instant) -> HashSet<SocketAddr> {
        let peers = self.peers.lock().expect("heard-from lock poisoned");
        peers
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) <= self.window)
            .map(|(addr, _)| *addr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    /// A peer is a source for the window after its last message, and only then.
    #[test]
    fn a_peer_is_recent_for_the_window_after_its_last_message() {
        let heard = HeardFrom::new(INTERVAL, Arc::new(Notify::new()));
        let start = clock::now();
        heard.record(addr(1), start);
        let window = INTERVAL * HEARD_WINDOW_ROUNDS;
        assert_eq!(heard.recent(start + window), HashSet::from([addr(1)]));
        assert!(heard.recent(start + window + Duration::from_millis(1)).is_empty());
        heard.record(addr(1), start + window * 2);
        assert_eq!(heard.recent(start + window * 3), HashSet::from([addr(1)]));
    }

    /// The puller is woken when a peer becomes reachable, not by every message of a peer that
    /// already is (chitchat sends several a round).
    #[tokio::test]
    async fn only_a_peer_heard_again_after_the_window_wakes_the_puller() {
        let notify = Arc::new(Notify::new());
        let heard = HeardFrom::new(INTERVAL, notify.clone());
        let start = clock::now();
        heard.record(addr(1), start);
        assert!(woken(&notify).await);
        heard.record(addr(1), start + INTERVAL);
        assert!(!woken(&notify).await);
        heard.record(addr(1), start + INTERVAL * (2 + HEARD_WINDOW_ROUNDS));
        assert!(woken(&notify).await);
    }

    /// Past the bound, peers outside the window make room; a new peer finds none while every
    /// remembered one is recent.
    #[test]
    fn the_map_is_bounded() {
        let heard = HeardFrom::new(INTERVAL, Arc::new(Notify::new()));
        let start = clock::now();
        for port in 0..MAX_HEARD_PEERS as u16 {
            heard.record(addr(port), start);
        }
        heard.record(addr(60_000), start);
        assert_eq!(heard.recent(start).len(), MAX_HEARD_PEERS);
        assert!(!heard.recent(start).contains(&addr(60_000)));
        let later = start + INTERVAL * (1 + HEARD_WINDOW_ROUNDS);
        heard.record(addr(60_000), later);
        assert_eq!(heard.recent(later), HashSet::from([addr(60_000)]));
    }

    async fn woken(notify: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(20), notify.notified()).await.is_ok()
    }
}
