//! A stand-in for the other members of a large fleet: one endpoint that speaks the node's gossip
//! protocol for many members at once, so a benchmark can show one real node a fleet of 400
//! (the member ceiling) on a 2-core machine (`benches/ui.rs`, `docs/benchmarks.md`).
//!
//! What a node knows of its members is what chitchat holds: each member's id (name,
//! incarnation, gossip address), its heartbeat and its keys. The stand-in makes those arrive
//! the way a fleet's would: it binds the node crate's own `Transport` (QUIC, mutual TLS, with a
//! certificate of the cluster's CA that names every member it speaks for, so the node's
//! name-to-certificate check holds) and exchanges chitchat's Scuttlebutt messages with the node:
//! a `Syn` with the digest of all its members every [`SYN_INTERVAL`] (their heartbeats rising,
//! so the node's failure detector keeps them live), and to each digest the node sends, the keys
//! of each member the node lacks (a `SynAck` to a `Syn`, an `Ack` to a `SynAck`). Every member
//! advertises the stand-in's address, so the node's gossip rounds and clock probes to any of
//! them reach it; it answers clock probes (`STREAM_CLOCK`) and refuses other streams (counted).
//!
//! chitchat's message types have private fields, so the three messages are encoded here by
//! hand in its wire format (version 0): the digest and the delta's operations, the delta as
//! uncompressed blocks of its stream. The unit tests decode them with chitchat's own decoder.
//!
//! Each member publishes its labels and the keys of [`Mirror`]: the caller copies them from the
//! node (version vector, applied generation, digest, log size, reverts summary, wire format,
//! signing roots), so the members hold what the node holds and it has nothing to push to them
//! or pull from them. Members publish no health reports (`rep.`) and no certificate (`cert`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chitchat::{ChitchatId, Deserializable, Serializable};
use grapevine_node::transport::{Inboxes, STREAM_CLOCK, STREAM_PUSH, Transport};
use tokio::sync::watch;

/// How often the stand-in sends its digest: twice per default gossip round (1 s), so the
/// node's failure detector sees every member's heartbeat rise as often as a fleet's would.
pub const SYN_INTERVAL: Duration = Duration::from_millis(500);

/// Largest message the stand-in sends: under chitchat's own limit (a UDP payload, 65,507
/// bytes) and the transport's (`MAX_GOSSIP_MESSAGE_BYTES`); a delta that would pass it is cut,
/// and the rest goes in the next exchange, as chitchat does.
const MAX_MESSAGE_BYTES: usize = 60_000;

/// Largest block of a delta's stream: chitchat's own block size.
const DELTA_BLOCK_BYTES: usize = 16_384;

/// chitchat's message header: magic number, protocol version 0, then the message type.
const MAGIC: u16 = 45_139;
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
/// A delta's stream: an uncompressed block, and the end of the stream.
const BLOCK_UNCOMPRESSED: u8 = 2;
const BLOCK_END: u8 = 0;
/// A delta's operations: a node, then its key-values in increasing versions.
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
/// A key-value's status: set (not deleted).
const STATUS_SET: u8 = 0;

/// The keys every member publishes, copied from the real node by the caller.
pub type Mirror = BTreeMap<String, String>;

/// What a digest says of one member: its heartbeat and the newest version of its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    heartbeat: u64,
    last_gc_version: u64,
    max_version: u64,
}

/// One member the stand-in speaks for.
struct Member {
    id: ChitchatId,
    /// Each key's value and version; versions rise by one per change, from 1.
    keys: BTreeMap<String, (String, u64)>,
    max_version: u64,
}

impl Member {
    fn set(&mut self, key: &str, value: &str) {
        if self.keys.get(key).is_some_and(|(old, _)| old == value) {
            return;
        }
        self.max_version += 1;
        self.keys.insert(key.to_owned(), (value.to_owned(), self.max_version));
    }
}

/// The members and what the stand-in last heard of the node.
pub struct Fleet {
    cluster: String,
    members: Vec<Member>,
    heartbeat: u64,
    /// The node's own digest entries, echoed back: the stand-in claims to hold the node's
    /// state, so the node does not resend it in every answer.
    node: BTreeMap<ChitchatId, Seen>,
}

impl Fleet {
    /// Members named `names`, each with its labels, all advertising `address`.
    pub fn new(cluster: &str, names: &[String], labels: impl Fn(usize) -> String, address: SocketAddr) -> Fleet {
        let incarnation = grapevine_node::clock::wall_ms(0);
        let members = names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut member = Member {
                    id: ChitchatId::new(name.as_str(), incarnation, address),
                    keys: BTreeMap::new(),
                    max_version: 0,
                };
                member.set("labels", &labels(index));
                member
            })
            .collect();
        Fleet { cluster: cluster.to_owned(), members, heartbeat: 1, node: BTreeMap::new() }
    }

    /// Sets the mirrored keys on every member (each changed key gets a new version).
    pub fn mirror(&mut self, keys: &Mirror) {
        for member in &mut self.members {
            for (key, value) in keys {
                member.set(key, value);
            }
        }
    }

    fn digest(&self, buf: &mut Vec<u8>) {
        let entries = self.members.len() + self.node.len();
        u16::try_from(entries).expect("a digest names at most 65,535 members").serialize(buf);
        for member in &self.members {
            member.id.serialize(buf);
            [self.heartbeat, 0, member.max_version].iter().for_each(|n| n.serialize(buf));
        }
        for (id, seen) in &self.node {
            id.serialize(buf);
            [seen.heartbeat, seen.last_gc_version, seen.max_version].iter().for_each(|n| n.serialize(buf));
        }
    }

    /// The `Syn` of a round: the cluster's name and the digest.
    pub fn syn(&self) -> Vec<u8> {
        let mut buf = header(SYN);
        self.digest(&mut buf);
        self.cluster.serialize(&mut buf);
        buf
    }

    /// The answer to a message from the node, if it calls for one: a `SynAck` to a `Syn`, an
    /// `Ack` to a `SynAck`, each with the keys the node's digest shows it lacks.
    pub fn answer(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>> {
        let (kind, theirs) = parse(message)?;
        self.node =
            theirs.iter().filter(|(id, _)| !self.speaks_for(id)).map(|(id, seen)| (id.clone(), *seen)).collect();
        let mut buf = header(if kind == SYN { SYN_ACK } else { ACK });
        match kind {
            SYN => self.digest(&mut buf),
            SYN_ACK => {}
            _ => return Ok(None),
        }
        let budget = MAX_MESSAGE_BYTES.saturating_sub(buf.len());
        buf.extend(self.delta(&theirs, budget));
        Ok(Some(buf))
    }

    fn speaks_for(&self, id: &ChitchatId) -> bool {
        self.members.iter().any(|m| m.id == *id)
    }

    /// The keys the node lacks by its digest, members in turn, at most `budget` bytes.
    fn delta(&self, theirs: &BTreeMap<ChitchatId, Seen>, budget: usize) -> Vec<u8> {
        let mut ops = Vec::new();
        let room = budget.saturating_sub(budget / DELTA_BLOCK_BYTES * 3 + 8);
        'members: for member in &self.members {
            let held = theirs.get(&member.id).map_or(0, |seen| seen.max_version);
            if held >= member.max_version {
                continue;
            }
            let mut node_op = vec![OP_NODE];
            member.id.serialize(&mut node_op);
            [0u64, held].iter().for_each(|n| n.serialize(&mut node_op));
            let mut missing: Vec<(&String, &(String, u64))> =
                member.keys.iter().filter(|(_, (_, v))| *v > held).collect();
            missing.sort_by_key(|(_, (_, version))| *version);
            for (index, (key, (value, version))) in missing.into_iter().enumerate() {
                let mut op = if index == 0 { node_op.clone() } else { Vec::new() };
                op.push(OP_KEY_VALUE);
                key.serialize(&mut op);
                value.serialize(&mut op);
                version.serialize(&mut op);
                op.push(STATUS_SET);
                if ops.len() + op.len() > room {
                    break 'members;
                }
                ops.extend(op);
            }
        }
        stream(&ops)
    }
}

fn header(kind: u8) -> Vec<u8> {
    let mut buf = MAGIC.to_le_bytes().to_vec();
    buf.extend([0, kind]);
    buf
}

/// A delta's stream of operations as uncompressed blocks.
fn stream(ops: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.len() + ops.len() / DELTA_BLOCK_BYTES * 3 + 4);
    for block in ops.chunks(DELTA_BLOCK_BYTES) {
        out.push(BLOCK_UNCOMPRESSED);
        (block.len() as u16).serialize(&mut out);
        out.extend(block);
    }
    out.push(BLOCK_END);
    out
}

/// A message's type and, for a `Syn` or a `SynAck`, its digest (the rest is not read).
fn parse(message: &[u8]) -> Result<(u8, BTreeMap<ChitchatId, Seen>)> {
    let mut buf = message;
    let magic = u16::deserialize(&mut buf)?;
    let version = u8::deserialize(&mut buf)?;
    let kind = u8::deserialize(&mut buf)?;
    ensure!(
        magic == MAGIC && version == 0,
        "expected a chitchat message of version 0, got magic {magic} version {version}"
    );
    let mut digest = BTreeMap::new();
    if kind == SYN || kind == SYN_ACK {
        for _ in 0..u16::deserialize(&mut buf)? {
            let id = ChitchatId::deserialize(&mut buf)?;
            let heartbeat = u64::deserialize(&mut buf)?;
            let last_gc_version = u64::deserialize(&mut buf)?;
            let max_version = u64::deserialize(&mut buf)?;
            digest.insert(id, Seen { heartbeat, last_gc_version, max_version });
        }
    }
    Ok((kind, digest))
}

/// What the stand-in counted while it ran.
#[derive(Default)]
pub struct Counts {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub clock_probes: AtomicU64,
    /// Pushes of new generations (`STREAM_PUSH`) and streams of any other kind (a pull),
    /// reset unread: to the node, a member that did not take the stream.
    pub pushes_refused: AtomicU64,
    pub others_refused: AtomicU64,
}

/// Runs the stand-in until `shutdown`: a digest to `node` every [`SYN_INTERVAL`], an answer to
/// each message, the mirrored keys applied as they change.
pub async fn run(
    mut fleet: Fleet,
    transport: Transport,
    mut inboxes: Inboxes,
    node: SocketAddr,
    mut mirror: watch::Receiver<Mirror>,
    counts: Arc<Counts>,
    shutdown: impl Future<Output = ()>,
) {
    let send = |to: SocketAddr, message: Vec<u8>| {
        counts.messages_sent.fetch_add(1, Ordering::Relaxed);
        let transport = transport.clone();
        // Not awaited here: a dial must not hold up the answers to other messages.
        tokio::spawn(async move { transport.send_gossip(to, message.into()).await });
    };
    let mut tick = tokio::time::interval(SYN_INTERVAL);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                fleet.heartbeat += 1;
                send(node, fleet.syn());
            }
            Some((from, message)) = inboxes.gossip.recv() => {
                counts.messages_received.fetch_add(1, Ordering::Relaxed);
                fleet.heartbeat += 1;
                if let Ok(Some(answer)) = fleet.answer(&message) {
                    send(from, answer);
                }
            }
            Some(mut stream) = inboxes.streams.recv() => {
                if stream.kind != STREAM_CLOCK {
                    let refused = if stream.kind == STREAM_PUSH { &counts.pushes_refused } else { &counts.others_refused };
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counts.clock_probes.fetch_add(1, Ordering::Relaxed);
                let now = grapevine_node::clock::wall_ms(0).to_be_bytes();
                tokio::spawn(async move {
                    let _ = stream.send.write_all(&now).await;
                    let _ = stream.send.finish();
                });
            }
            Ok(()) = mirror.changed() => {
                let keys = mirror.borrow_and_update().clone();
                fleet.mirror(&keys);
            }
        }
    }
    transport.close().await;
}

/// Issues the stand-in's certificate from the CA in `ca` into `out`: its first name and every
/// other one as a DNS name, so a connection from it may carry any of their states.
pub fn issue_certificate(ca: &std::path::Path, names: &[String], out: &std::path::Path) -> Result<()> {
    let (first, others) = names.split_first().context("the stand-in speaks for at least one member")?;
    let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];
    grapevine_node::tls::ca_issue(ca, first, &loopback, others, out).context("issuing the stand-in's certificate")
}

#[cfg(test)]
mod tests {
    use chitchat::ChitchatMessage;

    use super::*;

    fn fleet(count: usize) -> Fleet {
        let names: Vec<String> = (1..=count).map(|i| format!("host-{i:03}")).collect();
        Fleet::new("grapevine", &names, |i| format!("zone=z{}", i % 3), "127.0.0.1:9".parse().unwrap())
    }

    fn keys_of(message: &ChitchatMessage) -> String {
        format!("{message:?}")
    }

    #[test]
    fn chitchat_reads_the_syn_and_both_answers() {
        let mut fleet = fleet(3);
        fleet.mirror(&Mirror::from([
            ("vv.n1".to_owned(), "1000".to_owned()),
            ("applied".to_owned(), "n1.1000".to_owned()),
        ]));
        let syn = ChitchatMessage::deserialize(&mut &fleet.syn()[..]).unwrap();
        let ChitchatMessage::Syn { cluster_id, .. } = &syn else { panic!("expected a Syn, got {syn:?}") };
        assert_eq!(cluster_id, "grapevine");
        // The node's own Syn: its digest names only itself, so every member's keys are due.
        let node_id = ChitchatId::new("n1", 7, "127.0.0.1:7400".parse().unwrap());
        let mut from_node = header(SYN);
        1u16.serialize(&mut from_node);
        node_id.serialize(&mut from_node);
        [5u64, 0, 12].iter().for_each(|n| n.serialize(&mut from_node));
        "grapevine".serialize(&mut from_node);
        let answer = fleet.answer(&from_node).unwrap().expect("a Syn is answered");
        let answer = ChitchatMessage::deserialize(&mut &answer[..]).unwrap();
        let text = keys_of(&answer);
        assert!(matches!(answer, ChitchatMessage::SynAck { .. }), "{text}");
        assert!(text.contains("host-003") && text.contains("n1.1000") && text.contains("zone=z2"), "{text}");
        assert!(fleet.node.contains_key(&node_id), "the node's entry is echoed in later digests");
        let ack = fleet.answer(&fleet_syn_ack_from(&node_id)).unwrap().expect("a SynAck is answered");
        assert!(matches!(ChitchatMessage::deserialize(&mut &ack[..]).unwrap(), ChitchatMessage::Ack { .. }));
    }

    /// A `SynAck` from the node whose digest shows it holds every key of `host-001` already.
    fn fleet_syn_ack_from(node: &ChitchatId) -> Vec<u8> {
        let mut buf = header(SYN_ACK);
        1u16.serialize(&mut buf);
        node.serialize(&mut buf);
        [6u64, 0, 12].iter().for_each(|n| n.serialize(&mut buf));
        buf.extend(stream(&[]));
        buf
    }

    #[test]
    fn a_delta_past_the_budget_is_cut_and_what_the_node_holds_is_not_resent() {
        let mut fleet = fleet(400);
        let long = "x".repeat(300);
        fleet.mirror(&Mirror::from([("digest".to_owned(), long)]));
        let whole = fleet.delta(&BTreeMap::new(), usize::MAX);
        assert!(whole.len() > MAX_MESSAGE_BYTES, "400 members' keys need several messages");
        let cut = fleet.delta(&BTreeMap::new(), 20_000);
        assert!(cut.len() <= 20_000, "{}", cut.len());
        let mut message = header(ACK);
        message.extend(&cut);
        ChitchatMessage::deserialize(&mut &message[..]).expect("a cut delta is still a valid one");
        let held: BTreeMap<ChitchatId, Seen> = fleet
            .members
            .iter()
            .map(|m| (m.id.clone(), Seen { heartbeat: 1, last_gc_version: 0, max_version: m.max_version }))
            .collect();
        assert_eq!(fleet.delta(&held, usize::MAX), stream(&[]), "nothing is due to a node that holds it all");
    }
}
