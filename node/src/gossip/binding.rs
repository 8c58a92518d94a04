//! A member's name is its certificate's: the checks gossip can make on it.
//!
//! chitchat takes any member state a peer sends, under any name, and its messages are opaque
//! outside the crate (their digests and deltas are crate-private), so the name a peer claims
//! cannot be checked message by message. Two things can be checked:
//!
//! - **claims against connections**: a member whose gossip address is the address of an open
//!   connection must be named as that connection's certificate; a member that is not (a node
//!   with a certificate for `n7` gossiping as `n3`) is left out of every view this node reads
//!   (members, live peers, version vectors, reports), and counted once ([`claim_holds`]);
//! - **namesakes**: another incarnation of this node's own name whose heartbeat keeps growing is
//!   another process running under the name, such as a second certificate issued for it
//!   ([`NamesakeWatch`]). A node refuses to start when it sees one, and a running node
//!   raises an alert and shows it in `status`.
//!
//! A restart makes a new incarnation and leaves the old one's state in gossip until it is
//! collected; the old heartbeat stops, though it may still rise once or twice while this node
//! catches up with the latest value its peers hold. So a namesake counts as live only after
//! its heartbeat rose in [`LIVE_AFTER_RISES`] separate observations.
//!
//! The parts: `claim_holds` (a member whose address has a connection whose certificate does not
//! name it is left out of every read of `Gossip`), `NamesakeWatch`, `live_namesake_at_start` (the
//! start-up refusal) and `run_watch` (the task that counts false claims and alerts namesakes every
//! gossip round).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::ChitchatId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::Gossip;
use crate::alerts::{Alert, AlertKind, Alerts};

/// Observations in which a namesake's heartbeat must have risen before it counts as live. A
/// dead incarnation's heartbeat rises at most while peers' stale views catch up (one or two
/// gossip rounds); a live one's rises every round it gossips.
pub const LIVE_AFTER_RISES: u32 = 3;

/// Gossip rounds a starting node watches for a live namesake before it takes changes: enough
/// for [`LIVE_AFTER_RISES`] rises with a round to spare for the first contact.
pub const START_WATCH_ROUNDS: u32 = LIVE_AFTER_RISES + 3;

/// Namesakes shown in `status` and remembered as raised; past it the oldest is dropped.
pub const MAX_NAMESAKES_SHOWN: usize = 16;

/// Whether member `id` may be what it claims, given the names in the certificates of the open
/// connections by address: true unless the certificate of a connection at its gossip address
/// is not issued for its name.
pub fn claim_holds(peer_names: &HashMap<SocketAddr, Vec<String>>, id: &ChitchatId) -> bool {
    let names = peer_names.get(&id.gossip_advertise_addr);
    names.is_none_or(|names| names.iter().any(|name| name.as_str() == &*id.node_id))
}

/// Another incarnation of this node's name, as one look at gossip shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Namesake {
    /// Where it gossips from.
    pub address: SocketAddr,
    /// Its chitchat generation: the start time it claims, in ms since the Unix epoch.
    pub incarnation: u64,
}

/// The heartbeats of this node's namesakes, look after look.
#[derive(Debug, Default)]
pub struct NamesakeWatch {
    /// Each namesake's last heartbeat and the looks in which it rose.
    seen: BTreeMap<Namesake, (u64, u32)>,
}

impl NamesakeWatch {
    /// Takes one look (each namesake and its heartbeat) and returns the namesakes that count
    /// as live from this look on (each once). Namesakes absent from the look are forgotten.
    pub fn observe(&mut self, look: &BTreeMap<Namesake, u64>) -> Vec<Namesake> {
        self.seen.retain(|namesake, _| look.contains_key(namesake));
        let mut live = Vec::new();
        for (namesake, heartbeat) in look {
            let (last, rises) = self.seen.entry(*namesake).or_insert((*heartbeat, 0));
            if *heartbeat > *last {
                *rises += 1;
                if *rises == LIVE_AFTER_RISES {
                    live.push(*namesake);
                }
            }
            *last = (*last).max(*heartbeat);
        }
        live
    }

    /// Whether any namesake is in sight at all.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Watches gossip a few rounds at start for another live process under this node's name:
/// `Err` with the first found. Watches [`START_WATCH_ROUNDS`] rounds, or two when no namesake
/// is in sight at all by then (the common start: no earlier incarnation known).
pub async fn live_namesake_at_start(gossip: &Gossip, interval: Duration) -> Result<(), Namesake> {
    for round in 0..START_WATCH_ROUNDS {
        tokio::time::sleep(interval).await;
        if let Some(namesake) = gossip.look_for_namesakes().await.first() {
            return Err(*namesake);
        }
        if round >= 1 && !gossip.namesakes_in_sight() {
            break;
        }
    }
    Ok(())
}

/// Every gossip round until `shutdown`: counts members refused for a false name, and raises
/// each live namesake of this node (error log, `grapevine_live_namesakes_total`, an alert).
pub async fn run_watch(
    gossip: std::sync::Arc<Gossip>,
    alerts: Alerts,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        gossip.count_false_claims().await;
        for namesake in gossip.look_for_namesakes().await {
            raise(&gossip, &alerts, namesake);
        }
    }
}

fn raise(gossip: &Gossip, alerts: &Alerts, namesake: Namesake) {
    gossip.transport.metrics().live_namesakes.inc();
    let name = gossip.name.to_string();
    let (address, incarnation) = (namesake.address, namesake.incarnation);
    error!(%address, incarnation, "another process is live under this node's name ({name}): two certificates were issued for it; stop one, or writes of one may be lost on some nodes");
    alerts.raise(Alert {
        kind: AlertKind::Namesake,
        node: name,
        generation: String::new(),
        trigger: None,
        reason: format!("another process is live under this node's name at {address} (incarnation {incarnation})"),
        reporting_nodes: Vec::new(),
        kpis: BTreeMap::new(),
        at_ms: crate::clock::unix_ms(),
    });
}

#[cfg(test)]
mod tests;
