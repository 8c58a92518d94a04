//! Membership, failure detection and small per-node facts: chitchat over the QUIC transport.
//!
//! chitchat `=0.11.2` is pinned: it is the last version whose message codec is public
//! (`Serializable`/`Deserializable`), which a transport outside the crate needs.
//!
//! Each node publishes a few small keys (see `docs/protocol.md`): its API address, labels,
//! log size, latest applied generation, state digest, and its version vector as one key per
//! origin (`vv.<origin>` = highest contiguous seq), so a new generation changes one tiny key.
//! Generation bodies never travel in chitchat.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chitchat::transport::{Socket, Transport as ChitchatTransport};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, Deserializable, FailureDetectorConfig, ListenerHandle,
    NodeState, Serializable, spawn_chitchat,
};
use grapevine_proto::health::Window;
use grapevine_proto::rollout::{Report, Verdict};
use grapevine_proto::wire::OLDEST_READABLE;
use grapevine_proto::{GenId, NodeName, VersionVector};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use crate::health::PeerHealth;
use crate::metrics::{Metrics, reason};
use crate::transport::Transport;

pub const KEY_API: &str = "api";
pub const KEY_LABELS: &str = "labels";
pub const KEY_GENERATIONS: &str = "generations";
pub const KEY_APPLIED: &str = "applied";
pub const KEY_DIGEST: &str = "digest";
pub const PREFIX_VERSION_VECTOR: &str = "vv.";
/// `rep.<generation>` = this node's report on a generation it applied (`h:12000`).
pub const PREFIX_REPORT: &str = "rep.";
/// This node's KPIs over the last minute (`requests:errors:latency_ms:intervals`), for peers
/// that compare theirs with it.
pub const KEY_KPI: &str = "kpi";
/// The summary of the reverts this node holds (`count.hash`); a peer with another pulls.
pub const KEY_REVERTS: &str = "reverts";
/// The newest wire format this node reads and writes (`wire::newest`). Builds of format 3
/// publish none: a member without it reads format 3 only.
pub const KEY_WIRE: &str = "wire";
/// `rv.<generation>` = why this node wrote the revert of a generation (`quorum`, `rollback`).
pub const PREFIX_REVERTED_BY: &str = "rv.";

/// Gossip messages waiting to be sent to one peer. chitchat sends a few per round; a full
/// queue means the peer is unreachable or slow, and the message is dropped as UDP would.
const PEER_QUEUE_CAPACITY: usize = 16;

/// A peer's sender task ends after this long without messages, so unused peers cost nothing.
const PEER_SENDER_IDLE: Duration = Duration::from_secs(60);

/// Report values remembered with the time they were first seen; past it they are forgotten
/// (and age again from zero, which only delays a gate).
const MAX_SEEN_REPORTS: usize = 64 * 1024;

/// Most peers with a live sender task; past it, messages to new peers are dropped.
const MAX_PEER_SENDERS: usize = 1024;

/// How chitchat runs on this node.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub name: NodeName,
    pub cluster_id: String,
    pub advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub dead_node_grace_period: Duration,
    /// Distinguishes restarts of the same node; must grow with each start.
    pub incarnation: u64,
}

impl GossipConfig {
    /// The failure detector tuned to the gossip interval: with the default 5 s prior, the
    /// first detection after start takes tens of seconds at a 100 ms interval.
    fn failure_detector(&self) -> FailureDetectorConfig {
        FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1_000,
            max_interval: self.interval * 10,
            initial_interval: self.interval,
            dead_node_grace_period: self.dead_node_grace_period,
        }
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub gossip: SocketAddr,
    pub alive: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
    pub api: Option<String>,
    pub labels: Option<String>,
    pub generations: Option<u64>,
    pub version_vector: BTreeMap<String, u64>,
    pub applied: Option<String>,
    pub state_digest: Option<String>,
    /// The newest wire format the member reads (3 for a build that publishes none).
    pub wire: u8,
}

/// The running gossip of a node.
pub struct Gossip {
    handle: ChitchatHandle,
    version_vectors_changed: Arc<Notify>,
    reports_changed: Arc<Notify>,
    /// When this node first saw each report value: a report ages on our own monotonic clock
    /// from then, a lower bound of its true age that compares no clocks across hosts.
    reports_seen: Mutex<HashMap<(String, String), (String, Instant)>>,
    /// Keep the subscriptions that feed the notifications alive.
    _listeners: [ListenerHandle; 3],
}

impl Gossip {
    /// Starts chitchat on the node's transport with its first keys.
    pub async fn start(
        config: &GossipConfig,
        transport: Transport,
        inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
        initial_keys: Vec<(String, String)>,
    ) -> anyhow::Result<Gossip> {
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.name.as_str(), config.incarnation, config.advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.interval,
            listen_addr: transport.local_addr(),
            seed_nodes: config.seeds.clone(),
            failure_detector_config: config.failure_detector(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let adapter = QuicGossip { transport, inbox: Mutex::new(Some(inbox)) };
        let handle = spawn_chitchat(chitchat_config, initial_keys, &adapter).await?;
        // chitchat refreshes its live-node watcher once per round only; a key event fires as
        // soon as a delta is applied, so a peer's new generation is pulled without waiting.
        let version_vectors_changed = Arc::new(Notify::new());
        let reports_changed = Arc::new(Notify::new());
        let subscribe = |prefix: &'static str, notify: Arc<Notify>| {
            handle.with_chitchat(move |chitchat| {
                let notify = notify.clone();
                chitchat.subscribe_event(prefix, move |_| notify.notify_one())
            })
        };
        let listeners = [
            subscribe(PREFIX_VERSION_VECTOR, version_vectors_changed.clone()).await,
            subscribe(KEY_REVERTS, version_vectors_changed.clone()).await,
            subscribe(PREFIX_REPORT, reports_changed.clone()).await,
        ];
        let reports_seen = Mutex::new(HashMap::new());
        Ok(Gossip { handle, version_vectors_changed, reports_changed, reports_seen, _listeners: listeners })
    }

    /// Sets keys of this node's state.
    pub async fn set_keys(&self, keys: Vec<(String, String)>) {
        self.handle
            .with_chitchat(move |chitchat| {
                let state = chitchat.self_node_state();
                for (key, value) in &keys {
                    state.set(key, value);
                }
            })
            .await;
    }

    /// Notified whenever a peer's version vector or reverts summary changes.
    pub fn version_vectors_changed(&self) -> Arc<Notify> {
        self.version_vectors_changed.clone()
    }

    /// Notified whenever a peer's report changes.
    pub fn reports_changed(&self) -> Arc<Notify> {
        self.reports_changed.clone()
    }

    /// Publishes this node's reports.
    pub async fn publish_reports(&self, reports: &BTreeMap<GenId, Report>) {
        let keys = reports.iter().map(|(id, report)| (format!("{PREFIX_REPORT}{id}"), report.to_string())).collect();
        self.set_keys(keys).await;
    }

    /// Withdraws this node's reports on generations it no longer judges, and why it reverted
    /// them if it did.
    pub async fn delete_reports(&self, generations: &[GenId]) {
        if generations.is_empty() {
            return;
        }
        let keys: Vec<String> = generations
            .iter()
            .flat_map(|id| [format!("{PREFIX_REPORT}{id}"), format!("{PREFIX_REVERTED_BY}{id}")])
            .collect();
        self.handle
            .with_chitchat(move |chitchat| {
                let state = chitchat.self_node_state();
                for key in &keys {
                    if state.contains_key(key) {
                        state.delete(key);
                    }
                }
            })
            .await;
    }

    /// The reports of live members (this node included) on `generation`, each aged by the
    /// time since this node first saw it. Dead members' reports are left out: a silent node
    /// never counts as healthy.
    pub async fn reports_for(&self, generation: &GenId) -> BTreeMap<NodeName, Report> {
        let key = format!("{PREFIX_REPORT}{generation}");
        let raw: Vec<(NodeName, String)> = self
            .handle
            .with_chitchat(|chitchat| {
                chitchat
                    .live_nodes()
                    .filter_map(|id| {
                        let value = chitchat.node_state(id)?.get(&key)?.to_owned();
                        Some((id.node_id.parse::<NodeName>().ok()?, value))
                    })
                    .collect()
            })
            .await;
        let now = Instant::now();
        let mut seen = self.reports_seen.lock().expect("reports lock poisoned");
        if seen.len() > MAX_SEEN_REPORTS {
            seen.clear();
        }
        raw.into_iter()
            .filter_map(|(node, value)| {
                let mut report = value.parse::<Report>().ok()?;
                let slot = seen.entry((node.to_string(), key.clone())).or_insert_with(|| (value.clone(), now));
                if slot.0 != value {
                    *slot = (value, now);
                }
                report.elapsed_ms += now.duration_since(slot.1).as_millis() as u64;
                Some((node, report))
            })
            .collect()
    }

    /// Every report on `generation` of any member this node knows of, live or dead: a node
    /// that reported an anomaly and then died still counts toward the anomaly quorum. A name
    /// with several incarnations keeps its worst verdict.
    pub async fn all_reports_for(&self, generation: &GenId) -> BTreeMap<NodeName, Report> {
        let key = format!("{PREFIX_REPORT}{generation}");
        self.handle
            .with_chitchat(|chitchat| {
                let mut reports: BTreeMap<NodeName, Report> = BTreeMap::new();
                for (id, state) in chitchat.node_states() {
                    let parsed = state.get(&key).and_then(|v| v.parse::<Report>().ok());
                    let (Some(report), Ok(name)) = (parsed, id.node_id.parse::<NodeName>()) else { continue };
                    let slot = reports.entry(name).or_insert(report);
                    if report.verdict > slot.verdict {
                        *slot = report;
                    }
                }
                reports
            })
            .await
    }

    /// Generations some member (live or dead) reports anomalous.
    pub async fn anomalous_generations(&self) -> Vec<GenId> {
        let mut generations: Vec<GenId> = self
            .handle
            .with_chitchat(|chitchat| {
                chitchat
                    .node_states()
                    .values()
                    .flat_map(|state| state.key_values())
                    .filter_map(|(key, value)| {
                        let id = key.strip_prefix(PREFIX_REPORT)?;
                        let report = value.parse::<Report>().ok()?;
                        (report.verdict == Verdict::Anomalous).then(|| id.parse::<GenId>().ok()).flatten()
                    })
                    .collect()
            })
            .await;
        generations.sort();
        generations.dedup();
        generations
    }

    /// `read` of each live peer (this node excluded) and its state, where it gives a value.
    async fn live_peers<T: Send + 'static>(
        &self,
        read: impl Fn(&ChitchatId, &NodeState) -> Option<T> + Send + 'static,
    ) -> Vec<T> {
        let own = self.handle.chitchat_id().clone();
        self.handle
            .with_chitchat(move |chitchat| {
                chitchat
                    .live_nodes()
                    .filter(|id| **id != own)
                    .filter_map(|id| read(id, chitchat.node_state(id)?))
                    .collect()
            })
            .await
    }

    /// Every member's (live or dead) value of `key`, by name.
    async fn members_value_of(&self, key: String) -> BTreeMap<String, String> {
        self.handle
            .with_chitchat(move |chitchat| {
                chitchat
                    .node_states()
                    .iter()
                    .filter_map(|(id, state)| Some((id.node_id.to_string(), state.get(&key)?.to_owned())))
                    .collect()
            })
            .await
    }

    /// Live peers (this node excluded): their KPIs, the generations they report on, and
    /// those they judge healthy.
    pub async fn peer_health(&self) -> BTreeMap<NodeName, PeerHealth> {
        self.live_peers(|id, state| {
            let kpis = state.get(KEY_KPI).and_then(|v| v.parse::<Window>().ok());
            let (mut reported, mut healthy) = (BTreeSet::new(), BTreeSet::new());
            for (key, value) in state.key_values() {
                let Some(generation) = key.strip_prefix(PREFIX_REPORT).and_then(|g| g.parse::<GenId>().ok()) else {
                    continue;
                };
                if value.parse::<Report>().is_ok_and(|report| report.verdict == Verdict::Healthy) {
                    healthy.insert(generation.clone());
                }
                reported.insert(generation);
            }
            Some((id.node_id.parse::<NodeName>().ok()?, PeerHealth { kpis, reported, healthy }))
        })
        .await
        .into_iter()
        .collect()
    }

    /// Says why this node wrote the revert of `generation`.
    pub async fn publish_revert_cause(&self, generation: &GenId, cause: &str) {
        self.set_keys(vec![(format!("{PREFIX_REVERTED_BY}{generation}"), cause.to_owned())]).await;
    }

    /// Live members (this node excluded) that wrote the revert of `generation`.
    pub async fn live_revert_writers(&self, generation: &GenId) -> Vec<String> {
        let key = format!("{PREFIX_REVERTED_BY}{generation}");
        self.live_peers(move |id, state| state.get(&key).map(|_| id.node_id.to_string())).await
    }

    /// The members (live or dead) that wrote the revert of `generation`, and why.
    pub async fn revert_causes(&self, generation: &GenId) -> BTreeMap<String, String> {
        self.members_value_of(format!("{PREFIX_REVERTED_BY}{generation}")).await
    }

    /// The KPIs that members `names` (live or dead) last published, by name.
    pub async fn kpis_of(&self, names: &[NodeName]) -> BTreeMap<String, String> {
        let mut kpis = self.members_value_of(KEY_KPI.to_owned()).await;
        kpis.retain(|name, _| names.iter().any(|wanted| wanted.as_str() == name));
        kpis
    }

    /// The newest wire format `peer` reads, from its gossip (its latest incarnation's: a node
    /// upgraded in place keeps its address): [`OLDEST_READABLE`] for a peer that publishes
    /// none (a build of format 3) or is not known yet.
    pub async fn wire_version_of(&self, peer: SocketAddr) -> u8 {
        let members = self.members().await;
        members.iter().find(|m| m.gossip == peer).map_or(OLDEST_READABLE, |m| m.wire)
    }

    /// Members (live, or dead and not yet forgotten; the latest incarnation of each) that read
    /// no format as new as `version`, by name: while there are any, nothing that only that
    /// format can hold may be written.
    pub async fn members_reading_below(&self, version: u8) -> Vec<String> {
        self.members().await.into_iter().filter(|m| m.wire < version).map(|m| m.name).collect()
    }

    /// Live peers' summaries of the reverts they hold (empty for a peer without the key).
    pub async fn peer_reverts_digests(&self) -> Vec<(SocketAddr, String)> {
        self.live_peers(|id, state| {
            Some((id.gossip_advertise_addr, state.get(KEY_REVERTS).unwrap_or_default().to_owned()))
        })
        .await
    }

    /// Each live member's value of label `label` (members without it are left out).
    pub async fn live_label(&self, label: &str) -> BTreeMap<NodeName, String> {
        self.handle
            .with_chitchat(|chitchat| {
                chitchat
                    .live_nodes()
                    .filter_map(|id| {
                        let labels = chitchat.node_state(id)?.get(KEY_LABELS)?.to_owned();
                        let value =
                            labels.split(',').find_map(|pair| pair.strip_prefix(&format!("{label}=")))?.to_owned();
                        Some((id.node_id.parse::<NodeName>().ok()?, value))
                    })
                    .collect()
            })
            .await
    }

    /// Live peers (this node excluded) with their advertised version vectors.
    pub async fn peer_version_vectors(&self) -> Vec<(SocketAddr, VersionVector)> {
        self.live_peers(|id, state| Some((id.gossip_advertise_addr, version_vector_of(state)))).await
    }

    /// Like [`Gossip::peer_version_vectors`], only for peers whose log summary has arrived
    /// (they publish `generations` with their vector): an empty vector from them is known.
    pub async fn peer_version_vectors_known(&self) -> Vec<(SocketAddr, VersionVector)> {
        self.live_peers(|id, state| {
            state.get(KEY_GENERATIONS)?;
            Some((id.gossip_advertise_addr, version_vector_of(state)))
        })
        .await
    }

    /// Names of live members, sorted, this node included.
    pub async fn live_names(&self) -> Vec<NodeName> {
        let mut names: Vec<NodeName> = self
            .handle
            .with_chitchat(|chitchat| chitchat.live_nodes().filter_map(|id| id.node_id.parse().ok()).collect())
            .await;
        names.sort();
        names.dedup();
        names
    }

    /// Starts a gossip exchange with every live peer now, instead of at the next round, so
    /// a new key reaches them in one round trip.
    pub async fn nudge_live_peers(&self) {
        let own = self.handle.chitchat_id().gossip_advertise_addr;
        let peers: Vec<SocketAddr> = self
            .handle
            .with_chitchat(|chitchat| chitchat.live_nodes().map(|id| id.gossip_advertise_addr).collect())
            .await;
        for peer in peers.into_iter().filter(|addr| *addr != own) {
            let _ = self.handle.gossip(peer);
        }
    }

    /// Every member this node knows of, alive or dead; the latest incarnation of each name.
    pub async fn members(&self) -> Vec<Member> {
        let own = self.handle.chitchat_id().clone();
        self.handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                let mut latest: BTreeMap<String, Member> = BTreeMap::new();
                let mut incarnations: HashMap<String, u64> = HashMap::new();
                for (id, state) in chitchat.node_states() {
                    let name = id.node_id.to_string();
                    if incarnations.get(&name).is_some_and(|seen| *seen > id.generation_id) {
                        continue;
                    }
                    incarnations.insert(name.clone(), id.generation_id);
                    latest.insert(name, member_of(id, state, live.contains(id), *id == own));
                }
                latest.into_values().collect()
            })
            .await
    }

    /// Stops chitchat's loop and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
        let _ = self.handle.termination_watcher().await;
    }
}

fn member_of(id: &ChitchatId, state: &NodeState, alive: bool, is_self: bool) -> Member {
    let version_vector = version_vector_of(state).iter().map(|(o, s)| (o.to_string(), s)).collect();
    Member {
        name: id.node_id.to_string(),
        gossip: id.gossip_advertise_addr,
        alive,
        is_self,
        api: state.get(KEY_API).map(str::to_owned),
        labels: state.get(KEY_LABELS).map(str::to_owned),
        generations: state.get(KEY_GENERATIONS).and_then(|v| v.parse().ok()),
        version_vector,
        applied: state.get(KEY_APPLIED).filter(|v| !v.is_empty()).map(str::to_owned),
        state_digest: state.get(KEY_DIGEST).map(str::to_owned),
        wire: wire_version_in(state),
    }
}

/// The newest wire format a member reads, from its `wire` key ([`OLDEST_READABLE`] without).
fn wire_version_in(state: &NodeState) -> u8 {
    state.get(KEY_WIRE).and_then(|v| v.parse().ok()).unwrap_or(OLDEST_READABLE)
}

/// A peer's version vector from its `vv.<origin>` keys; malformed entries are skipped.
pub fn version_vector_of(state: &NodeState) -> VersionVector {
    let mut vector = VersionVector::default();
    for (key, value) in state.key_values() {
        let Some(origin) = key.strip_prefix(PREFIX_VERSION_VECTOR) else {
            continue;
        };
        if let (Ok(origin), Ok(seq)) = (origin.parse::<NodeName>(), value.parse::<u64>()) {
            vector.raise(origin, seq);
        }
    }
    vector
}

/// The keys that publish `vector`, one per origin.
pub fn version_vector_keys(vector: &VersionVector) -> impl Iterator<Item = (String, String)> + '_ {
    vector.iter().map(|(origin, seq)| (format!("{PREFIX_VERSION_VECTOR}{origin}"), seq.to_string()))
}

/// chitchat's `Transport` on our endpoint. chitchat calls `open` once, with the address the
/// endpoint is already bound to.
struct QuicGossip {
    transport: Transport,
    inbox: Mutex<Option<mpsc::Receiver<(SocketAddr, Bytes)>>>,
}

#[async_trait]
impl ChitchatTransport for QuicGossip {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let bound = self.transport.local_addr();
        anyhow::ensure!(
            listen_addr == bound,
            "gossip must listen on the endpoint's address {bound}, got {listen_addr}"
        );
        let inbox = self.inbox.lock().expect("inbox lock poisoned").take();
        let inbox = inbox.ok_or_else(|| anyhow::anyhow!("the gossip socket of {bound} is already open"))?;
        Ok(Box::new(GossipSocket { transport: self.transport.clone(), inbox, peers: HashMap::new() }))
    }
}

/// chitchat's `Socket`: `send` queues and returns at once (it runs inside chitchat's single
/// gossip loop, which must never wait on a handshake); `recv` is cancel-safe (an mpsc recv).
struct GossipSocket {
    transport: Transport,
    inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
    peers: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
}

impl GossipSocket {
    fn metrics(&self) -> &Metrics {
        self.transport.metrics()
    }

    fn sender_for(&mut self, to: SocketAddr) -> Option<&mpsc::Sender<Bytes>> {
        if self.peers.get(&to).is_none_or(|sender| sender.is_closed()) {
            if self.peers.len() >= MAX_PEER_SENDERS {
                self.peers.retain(|_, sender| !sender.is_closed());
                if self.peers.len() >= MAX_PEER_SENDERS {
                    return None;
                }
            }
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            tokio::spawn(run_peer_sender(self.transport.clone(), to, receiver));
            self.peers.insert(to, sender);
        }
        self.peers.get(&to)
    }
}

#[async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let bytes = Bytes::from(message.serialize_to_vec());
        let queued = self.sender_for(to).is_some_and(|sender| sender.try_send(bytes).is_ok());
        if !queued {
            self.metrics().gossip_dropped.get_or_create(&reason("queue_full")).inc();
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (from, bytes) = self.inbox.recv().await.ok_or_else(|| anyhow::anyhow!("the transport has stopped"))?;
            match ChitchatMessage::deserialize(&mut &bytes[..]) {
                Ok(message) => {
                    self.metrics().gossip_received.inc();
                    return Ok((from, message));
                }
                Err(error) => {
                    self.metrics().gossip_dropped.get_or_create(&reason("malformed")).inc();
                    debug!(peer = %from, %error, "dropped malformed gossip message");
                }
            }
        }
    }
}

/// Sends one peer's queued gossip in order; ends when idle or when the socket is dropped.
async fn run_peer_sender(transport: Transport, to: SocketAddr, mut queue: mpsc::Receiver<Bytes>) {
    while let Ok(Some(message)) = tokio::time::timeout(PEER_SENDER_IDLE, queue.recv()).await {
        if let Err(error) = transport.send_gossip(to, message).await {
            debug!(peer = %to, %error, "gossip send failed");
            let mut dropped = 1;
            while queue.try_recv().is_ok() {
                dropped += 1;
            }
            transport.metrics().gossip_dropped.get_or_create(&reason("send_failed")).inc_by(dropped);
        }
    }
}
