//! Membership, failure detection and small per-node facts: chitchat over the QUIC transport.
//!
//! chitchat `=0.11.2` is pinned: it is the last version whose message codec is public
//! (`Serializable`/`Deserializable`), which a transport outside the crate needs.
//!
//! Each node publishes a few small keys (see `docs/protocol.md`): its API address, labels,
//! log size, latest applied generation, state digest, and its version vector as one key per
//! origin (`vv.<origin>` = highest contiguous seq), so a new generation changes one tiny key,
//! and beside it a tally of what it holds of that origin (`vh.<origin>`, `Tally`; D84).
//! Generation bodies never travel in chitchat.
//!
//! Reports (`rep.<generation>`) and KPIs (`kpi`) are signed by the node's TLS key, and the node
//! publishes its certificate (`cert`); readers keep only values that verify (see [`signed`]).
//! Every read leaves out members whose name a connection's certificate contradicts, and the
//! node watches for another live process under its own name (see [`binding`]).
//!
//! The types: `Gossip`, `GossipConfig`, `PeerHealth`; members are `replies::MemberStatus`, as
//! `status` shows them. Submodules: `keys` (the key schema: `KEY_API`, `KEY_LABELS`, `KEY_GENERATIONS`, `KEY_APPLIED`, `KEY_DIGEST`, `KEY_KPI`,
//! `KEY_REVERTS`, `KEY_WIRE`, `KEY_SIGNING`, `PREFIX_VERSION_VECTOR`, `PREFIX_TALLY`,
//! `PREFIX_REPORT`, `PREFIX_REVERTED_BY`, and the vector and tally keys), `socket` (chitchat's
//! `Transport`/`Socket` over QUIC: `QuicGossip`, `GossipSocket`, `run_peer_sender`), `signed`
//! (signed reports, D67), `binding` (names against certificates, D70), `heard` (`HeardFrom`).
//!
//! - `Gossip::start` publishes `cert` (the certificate of `Transport::identity`) with the first
//!   keys. `publish_reports` and `publish_kpis` sign each value with the node's current key; when
//!   the transport's identity has changed since (a certificate reload), `publish_reports` first
//!   publishes the new `cert`, then signs every report it published (`Signing`, aged since written)
//!   and the KPIs again. The health task calls it every sample interval.
//! - Every reader of `rep.` and `kpi` values (`reports_for`, `all_reports_for`,
//!   `anomalous_generations`, `peer_health`) reads the raw values and the member's `cert` inside
//!   chitchat's lock and checks them outside it (`keep_signed`), against `Transport::trust`, the CA
//!   bundle of the latest reload. A refused value is left out, counted once per check in
//!   `grapevine_forged_reports_total{reason}` and logged at warn at most once per member and reason
//!   per minute (`FORGED_WARN_INTERVAL`). `kpis_of` only strips the signature (alert text).
//! - `version_vectors_changed` is a `Notify` fed by chitchat key subscriptions on `vv.` (only
//!   for a value above this node's published one, `advertises_more`) and on `reverts` (it
//!   wakes the puller); `heard_again` is one fed by `HeardFrom` when a peer not heard from
//!   lately sends again (the puller looks at `heard_dead` then: only a dead member heard again
//!   is a new pull source); `reports_changed` is one fed by a subscription on `rep.` (it wakes
//!   the engine's `decide`). The same subscription keeps `anomalous`: each member and generation whose report
//!   was anomalous when set (seeded by a scan in the same lock as the subscribing, so none is
//!   missed), so finding the anomalous reports reads those few keys, not every report of every
//!   member (the revert pass runs on each report change; a scan each time grew with the history).
//! - `publish_reports` sets this node's `rep.<generation>` keys; `delete_reports` deletes them, and
//!   the `rv.<generation>` keys of the same generations.
//! - `reports_for(generation)` returns the reports of the **live** members (this node included) on
//!   one generation, each aged on this node's monotonic clock: `elapsed_ms` plus the time since
//!   this node first saw that exact value (`reports_seen`, at most `MAX_SEEN_REPORTS` entries, then
//!   cleared, so every report ages again from its published value). An unparsable value is skipped.
//! - `all_reports_for(generation)` returns the reports of every member this node knows of, live or
//!   dead, this node included, unaged; a name with several incarnations keeps its worst verdict.
//!   `anomalous_generations` lists the generations some member reports anomalous (of the
//!   candidates in `anomalous`, those whose report still is; the rest are forgotten). The revert pass
//!   and the `anomaly_quorum` of the rollout view read them.
//! - `peer_health(generations)` returns each live peer's `kpi` window and which of the given
//!   generations (those the health task judges) it reports on and judges healthy;
//!   `kpis_of(names)` the `kpi` values of the named members, live or dead (for revert alerts).
//! - `publish_revert_cause` sets `rv.<generation>`; `revert_causes` reads every member's;
//!   `live_revert_writers` names the live peers that have one (the revert pass waits for them).
//!   `peer_reverts_digests` returns each live peer's gossip address and `reverts` value (empty when
//!   it has none); the pusher and compaction read it.
//! - `live_label(label)` returns each live member's value of one label (from the `labels` key).
//!   `live_names` returns the live members' names, sorted, this node included.
//! - `wire_version_of(peer)` is the newest wire format the member at that address publishes
//!   (`KEY_WIRE`; `OLDEST_READABLE` when not known), which sync writes to it in; `members` shows
//!   each member's `wire` and `signing` (`KEY_SIGNING`, the fingerprint of its roots).
//! - `peer_version_vectors` returns each live peer's gossip address and advertised vector; the
//!   pusher, compaction and `wait_replicas` read it. Each member's vector is parsed once per
//!   version of its state (`keys::Vectors`). `reachable_addrs`, `reachable_ahead_of(vector)` (those
//!   advertising more than `vector`, compared in place: `keys::advertises_beyond`) and
//!   `reachable_reverts_digests` are for the peers the puller may pull from: the live ones, and
//!   the dead ones heard from within the window (`HeardFrom::recent`; `heard_dead` names those).
//!   `live_members_watcher` is chitchat's live-set watch; the puller wakes on it too.
//! - `nudge_live_peers` calls `ChitchatHandle::gossip(addr)` for every live peer.
//! - Limits: `MAX_SEEN_REPORTS`, `FORGED_WARN_INTERVAL`; in `socket.rs` `PEER_QUEUE_CAPACITY`,
//!   `PEER_SENDER_IDLE` and `MAX_PEER_SENDERS`; in `heard.rs` `MAX_HEARD_PEERS` and `HEARD_WINDOW_ROUNDS`; in
//!   `signed.rs` `MAX_CERT_BYTES`, `CERT_RECHECK`, `MAX_CHECKED_VALUES` and
//!   `MAX_CHECKED_CERTIFICATES`.
//!
//! **Architecture Invariant:** no decision compares clocks across hosts. A report carries the
//! reporter's own elapsed time, and the observer adds only time measured on its own monotonic clock
//! (`Instant`).

pub mod binding;
pub mod heard;
mod keys;
pub mod signed;
mod socket;

pub use keys::*;
use socket::QuicGossip;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle, NodeState, spawn_chitchat,
};
use grapevine_proto::health::Window;
use grapevine_proto::report::{Report, Verdict, worst_per_member};
use grapevine_proto::wire::OLDEST_READABLE;
use grapevine_proto::{GenId, NodeName, Tally, VersionVector};
use tokio::sync::{Notify, mpsc, watch};
use tracing::warn;

use self::binding::{Namesake, NamesakeWatch, claim_holds};
use self::heard::HeardFrom;
use self::signed::{Published, Signer, Verifier};
use crate::clock;
use crate::metrics::{WarnLimiter, reason};
use crate::replies::MemberStatus;
use crate::tls::NodeIdentity;
use crate::transport::Transport;

/// Report values remembered with the time they were first seen; past it they are forgotten
/// (and age again from zero, which only delays a gate).
const MAX_SEEN_REPORTS: usize = 64 * 1024;

/// A refused report is logged at most once per member and reason in this interval; every
/// refusal is counted.
const FORGED_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Members counted as refused for a false name; past it the memory is cleared (and a member
/// still refused is counted again).
const MAX_FALSE_CLAIMS_REMEMBERED: usize = 4 * 1024;

/// Fields of an unsigned `rep.` value (`h:12000`) and `kpi` value (`120:3:41.5:60`).
const REPORT_FIELDS: usize = 2;
const KPI_FIELDS: usize = 4;

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

/// What a live peer publishes that the health task's judging needs: its KPIs, and the generations it reports
/// on (those it applied).
#[derive(Clone, Debug, Default)]
pub struct PeerHealth {
    pub kpis: Option<Window>,
    pub reported: BTreeSet<GenId>,
    /// The generations it judges healthy.
    pub healthy: BTreeSet<GenId>,
}

/// The running gossip of a node.
pub struct Gossip {
    handle: ChitchatHandle,
    version_vectors_changed: Arc<Notify>,
    heard_again: Arc<Notify>,
    /// This node's own vector as last published, by origin: a peer's `vv.` key wakes the
    /// puller only when it advertises more than this (every peer's vector changes with every
    /// change, and a wake reads them all: waking on each cost a node O(members^2) per change).
    held: Arc<Mutex<HashMap<String, u64>>>,
    /// Each member's vector, parsed once per version of its state.
    vectors: Arc<Vectors>,
    /// Peers that sent us gossip lately: log sync pulls from them before they are alive again.
    heard: Arc<HeardFrom>,
    reports_changed: Arc<Notify>,
    /// Each member and generation (`rep.` key without the prefix) whose report was anomalous
    /// when set: the only reports `anomalous_generations` reads.
    anomalous: Arc<Mutex<HashSet<(ChitchatId, String)>>>,
    /// When this node first saw each report value: a report ages on our own monotonic clock
    /// from then, a lower bound of its true age that compares no clocks across hosts.
    reports_seen: Mutex<HashMap<(String, String), (String, Instant)>>,
    /// Keep the subscriptions that feed the notifications alive.
    _listeners: [ListenerHandle; 3],
    /// The current certificate and key (a reload swaps them) and the CA bundle.
    transport: Transport,
    cluster_id: String,
    name: NodeName,
    incarnation: u64,
    /// The gossip interval: how long one round takes.
    interval: Duration,
    /// What this node signed and published, to sign again after a certificate reload.
    signing: Mutex<Signing>,
    verifier: Mutex<Verifier>,
    forged_warnings: WarnLimiter,
    /// Namesakes of this node, look after look, and those raised as live (newest last).
    namesakes: Mutex<(NamesakeWatch, Vec<Namesake>)>,
    /// Members left out for a name their connection's certificate contradicts, counted once.
    false_claims: Mutex<HashSet<ChitchatId>>,
    #[cfg(feature = "testsuite")]
    forge: Option<signed::Forge>,
}

/// This node's signed values, kept to sign them again with a reloaded key.
#[derive(Default)]
struct Signing {
    /// The identity the published values are signed with.
    identity: Option<Arc<NodeIdentity>>,
    /// Each published report and when it was written (its age grows from then).
    reports: BTreeMap<GenId, (Report, Instant)>,
    kpis: Option<Window>,
}

/// A value of a member's state that must be signed, as read inside chitchat's lock (checked
/// outside it).
struct Raw {
    id: ChitchatId,
    certificate: Option<String>,
    key: String,
    value: String,
}

impl Raw {
    fn of(id: &ChitchatId, state: &NodeState, key: &str, value: &str) -> Raw {
        let certificate = state.get(signed::KEY_CERT).map(str::to_owned);
        Raw { id: id.clone(), certificate, key: key.to_owned(), value: value.to_owned() }
    }
}

impl Gossip {
    /// Starts chitchat on the node's transport with its first keys.
    pub async fn start(
        config: &GossipConfig,
        transport: Transport,
        inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
        mut initial_keys: Vec<(String, String)>,
    ) -> anyhow::Result<Gossip> {
        #[cfg(feature = "testsuite")]
        let forge = signed::Forge::from_env();
        let identity = transport.identity();
        #[cfg(feature = "testsuite")]
        let identity_shown = match &forge {
            Some(forge) if forge.publish_certificate => &forge.identity,
            _ => &*identity,
        };
        #[cfg(not(feature = "testsuite"))]
        let identity_shown = &*identity;
        initial_keys.push((signed::KEY_CERT.to_owned(), signed::certificate_value(identity_shown)));
        let signing = Mutex::new(Signing { identity: Some(identity), ..Signing::default() });
        let own_transport = transport.clone();
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
        // chitchat refreshes its live-node watcher once per round only; a key event fires as
        // soon as a delta is applied, so a peer's new generation is pulled without waiting.
        let version_vectors_changed = Arc::new(Notify::new());
        let heard_again = Arc::new(Notify::new());
        let heard = Arc::new(HeardFrom::new(config.interval, heard_again.clone()));
        let adapter = QuicGossip { transport, inbox: Mutex::new(Some(inbox)), heard: heard.clone() };
        let handle = spawn_chitchat(chitchat_config, initial_keys, &adapter).await?;
        let reports_changed = Arc::new(Notify::new());
        let subscribe = |prefix: &'static str, notify: Arc<Notify>| {
            handle.with_chitchat(move |chitchat| {
                let notify = notify.clone();
                chitchat.subscribe_event(prefix, move |_| notify.notify_one())
            })
        };
        let held = Arc::new(Mutex::new(HashMap::new()));
        let vectors_ahead = {
            let (held, notify) = (held.clone(), version_vectors_changed.clone());
            handle
                .with_chitchat(move |chitchat| {
                    let (held, notify) = (held.clone(), notify.clone());
                    chitchat.subscribe_event(PREFIX_VERSION_VECTOR, move |event| {
                        if advertises_more(&held, event.key, event.value) {
                            notify.notify_one();
                        }
                    })
                })
                .await
        };
        let anomalous = Arc::new(Mutex::new(HashSet::new()));
        let reports = {
            let (anomalous, notify) = (anomalous.clone(), reports_changed.clone());
            let flag = Verdict::Anomalous.as_char();
            handle
                .with_chitchat(move |chitchat| {
                    let mut seen = anomalous.lock().expect("anomalous lock poisoned");
                    for (id, state) in chitchat.node_states() {
                        let reports = with_prefix(state, PREFIX_REPORT).filter(|(_, value)| value.starts_with(flag));
                        seen.extend(reports.map(|(key, _)| (id.clone(), key[PREFIX_REPORT.len()..].to_owned())));
                    }
                    drop(seen);
                    let (anomalous, notify) = (anomalous.clone(), notify.clone());
                    chitchat.subscribe_event(PREFIX_REPORT, move |event| {
                        if event.value.starts_with(flag) {
                            let candidate = (event.node.clone(), event.key.to_owned());
                            anomalous.lock().expect("anomalous lock poisoned").insert(candidate);
                        }
                        notify.notify_one();
                    })
                })
                .await
        };
        let listeners = [vectors_ahead, subscribe(KEY_REVERTS, version_vectors_changed.clone()).await, reports];
        let reports_seen = Mutex::new(HashMap::new());
        Ok(Gossip {
            handle,
            version_vectors_changed,
            heard_again,
            held,
            vectors: Arc::new(Vectors::default()),
            heard,
            reports_changed,
            anomalous,
            reports_seen,
            _listeners: listeners,
            transport: own_transport,
            cluster_id: config.cluster_id.clone(),
            name: config.name.clone(),
            incarnation: config.incarnation,
            interval: config.interval,
            signing,
            verifier: Mutex::new(Verifier::default()),
            forged_warnings: WarnLimiter::new(FORGED_WARN_INTERVAL),
            namesakes: Mutex::new((NamesakeWatch::default(), Vec::new())),
            false_claims: Mutex::new(HashSet::new()),
            #[cfg(feature = "testsuite")]
            forge,
        })
    }

    /// Sets keys of this node's state.
    pub async fn set_keys(&self, keys: Vec<(String, String)>) {
        {
            let mut held = self.held.lock().expect("held vector lock poisoned");
            for (key, value) in &keys {
                if let (Some(origin), Ok(seq)) = (key.strip_prefix(PREFIX_VERSION_VECTOR), value.parse::<u64>()) {
                    held.insert(origin.to_owned(), seq);
                }
            }
        }
        self.handle
            .with_chitchat(move |chitchat| {
                let state = chitchat.self_node_state();
                for (key, value) in &keys {
                    state.set(key, value);
                }
            })
            .await;
    }

    /// Notified whenever a peer advertises a generation this node has not published holding,
    /// or its reverts summary changes.
    pub fn version_vectors_changed(&self) -> Arc<Notify> {
        self.version_vectors_changed.clone()
    }

    /// Notified when a peer not heard from lately sends gossip again: if the failure detector
    /// still holds it dead, it just became reachable ([`Gossip::heard_dead`]) and may be ahead.
    pub fn heard_again(&self) -> Arc<Notify> {
        self.heard_again.clone()
    }

    /// Notified whenever a peer's report changes.
    pub fn reports_changed(&self) -> Arc<Notify> {
        self.reports_changed.clone()
    }

    /// Publishes this node's reports, signed. After a certificate reload, it first publishes
    /// the new certificate and signs every report and the KPIs again (aged since written).
    pub async fn publish_reports(&self, reports: &BTreeMap<GenId, Report>) {
        let now = clock::now();
        let current = self.transport.identity();
        let keys = {
            let mut signing = self.signing.lock().expect("signing lock poisoned");
            for (id, report) in reports {
                signing.reports.insert(id.clone(), (*report, now));
            }
            let reloaded = !signing.identity.as_ref().is_some_and(|used| Arc::ptr_eq(used, &current));
            let mut keys = Vec::new();
            let mut to_sign: Vec<(GenId, Report)> = reports.iter().map(|(id, r)| (id.clone(), *r)).collect();
            if reloaded {
                signing.identity = Some(current.clone());
                keys.push((signed::KEY_CERT.to_owned(), signed::certificate_value(self.shown_identity(&current))));
                to_sign = signing
                    .reports
                    .iter()
                    .map(|(id, (report, at))| {
                        let elapsed_ms = report.elapsed_ms + now.duration_since(*at).as_millis() as u64;
                        (id.clone(), Report { elapsed_ms, ..*report })
                    })
                    .collect();
                if let Some(kpis) = signing.kpis {
                    keys.push((KEY_KPI.to_owned(), self.sign(&current, KEY_KPI, &kpis.to_string())));
                }
            }
            for (id, report) in to_sign {
                let key = format!("{PREFIX_REPORT}{id}");
                let value = self.sign(&current, &key, &self.forged(report).to_string());
                keys.push((key, value));
            }
            keys
        };
        if !keys.is_empty() {
            self.set_keys(keys).await;
        }
    }

    /// Publishes this node's KPIs, signed.
    pub async fn publish_kpis(&self, kpis: Window) {
        let identity = {
            let mut signing = self.signing.lock().expect("signing lock poisoned");
            signing.kpis = Some(kpis);
            signing.identity.clone().unwrap_or_else(|| self.transport.identity())
        };
        let value = self.sign(&identity, KEY_KPI, &kpis.to_string());
        self.set_keys(vec![(KEY_KPI.to_owned(), value)]).await;
    }

    /// `value` of `key` signed by this node (unsigned if the key cannot sign: peers refuse it).
    fn sign(&self, identity: &NodeIdentity, key: &str, value: &str) -> String {
        #[cfg(feature = "testsuite")]
        let identity = self.forge.as_ref().map_or(identity, |forge| &forge.identity);
        let signer = Signer { cluster: &self.cluster_id, name: self.name.as_str(), incarnation: self.incarnation };
        signed::sign(identity, signer, key, value).unwrap_or_else(|| value.to_owned())
    }

    /// The identity whose certificate this node publishes.
    fn shown_identity<'a>(&'a self, identity: &'a NodeIdentity) -> &'a NodeIdentity {
        #[cfg(feature = "testsuite")]
        if let Some(forge) = self.forge.as_ref().filter(|forge| forge.publish_certificate) {
            return &forge.identity;
        }
        identity
    }

    /// The report as published: a forger (tests) says what it was told to.
    fn forged(&self, report: Report) -> Report {
        #[cfg(feature = "testsuite")]
        if let Some(forge) = &self.forge {
            return Report { verdict: forge.verdict, ..report };
        }
        report
    }

    /// The values of `raw` whose signature by their member verifies, unsigned; refusals are
    /// counted and logged (at most once per member and reason per [`FORGED_WARN_INTERVAL`]).
    fn keep_signed(&self, raw: Vec<Raw>, fields: usize) -> Vec<(ChitchatId, String, String)> {
        let trust = self.transport.trust();
        let now = clock::now();
        let mut verifier = self.verifier.lock().expect("verifier lock poisoned");
        let mut kept = Vec::with_capacity(raw.len());
        for Raw { id, certificate, key, value } in raw {
            let signer = Signer { cluster: &self.cluster_id, name: &id.node_id, incarnation: id.generation_id };
            let published = Published { signer, certificate: certificate.as_deref(), key: &key, value: &value };
            match verifier.check(&trust, &published, fields, now) {
                Ok(unsigned) => {
                    let unsigned = unsigned.to_owned();
                    kept.push((id, key, unsigned));
                }
                Err(refused) => self.refused(&id, &key, refused),
            }
        }
        kept
    }

    fn refused(&self, id: &ChitchatId, key: &str, refused: signed::Refused) {
        if !refused.first {
            return;
        }
        let reason_label = refused.refusal.reason();
        self.transport.metrics().forged_reports.get_or_create(&reason(reason_label)).inc();
        if self.forged_warnings.allow(&format!("{}/{reason_label}", id.node_id)) {
            let (member, refusal) = (&id.node_id, refused.refusal);
            warn!(%member, key, reason = reason_label, %refusal, "refused a peer's report; it counts as no report");
        }
    }

    /// Withdraws this node's reports on generations it no longer judges, and why it reverted
    /// them if it did.
    pub async fn delete_reports(&self, generations: &[GenId]) {
        if generations.is_empty() {
            return;
        }
        {
            let mut signing = self.signing.lock().expect("signing lock poisoned");
            for id in generations {
                signing.reports.remove(id);
            }
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
        let names = self.transport.peer_names();
        let raw: Vec<Raw> = self
            .handle
            .with_chitchat(|chitchat| {
                chitchat
                    .live_nodes()
                    .filter(|id| claim_holds(&names, id))
                    .filter_map(|id| {
                        let state = chitchat.node_state(id)?;
                        Some(Raw::of(id, state, &key, state.get(&key)?))
                    })
                    .collect()
            })
            .await;
        let signed = self.keep_signed(raw, REPORT_FIELDS);
        let now = clock::now();
        let mut seen = self.reports_seen.lock().expect("reports lock poisoned");
        if seen.len() > MAX_SEEN_REPORTS {
            seen.clear();
        }
        signed
            .into_iter()
            .filter_map(|(id, _, value)| {
                let node = id.node_id.parse::<NodeName>().ok()?;
                let report = value.parse::<Report>().ok()?;
                let slot = seen.entry((node.to_string(), key.clone())).or_insert_with(|| (value.clone(), now));
                if slot.0 != value {
                    *slot = (value, now);
                }
                Some((node, report.aged(now.duration_since(slot.1).as_millis() as u64)))
            })
            .collect()
    }

    /// Every report on `generation` of any member this node knows of, live or dead: a node
    /// that reported an anomaly and then died still counts toward the anomaly quorum. A name
    /// with several incarnations keeps its worst verdict.
    pub async fn all_reports_for(&self, generation: &GenId) -> BTreeMap<NodeName, Report> {
        let key = format!("{PREFIX_REPORT}{generation}");
        let names = self.transport.peer_names();
        let raw: Vec<Raw> = self
            .handle
            .with_chitchat(|chitchat| {
                let states = chitchat.node_states().iter().filter(|(id, _)| claim_holds(&names, id));
                states.filter_map(|(id, state)| Some(Raw::of(id, state, &key, state.get(&key)?))).collect()
            })
            .await;
        let reports = self
            .keep_signed(raw, REPORT_FIELDS)
            .into_iter()
            .filter_map(|(id, _, value)| Some((id.node_id.parse::<NodeName>().ok()?, value.parse::<Report>().ok()?)));
        worst_per_member(reports)
    }

    /// Generations some member (live or dead) reports anomalous.
    pub async fn anomalous_generations(&self) -> Vec<GenId> {
        let flag = Verdict::Anomalous.as_char();
        let names = self.transport.peer_names();
        let candidates = self.anomalous.clone();
        let raw: Vec<Raw> = self
            .handle
            .with_chitchat(move |chitchat| {
                let mut raw = Vec::new();
                candidates.lock().expect("anomalous lock poisoned").retain(|(id, generation)| {
                    let key = format!("{PREFIX_REPORT}{generation}");
                    let Some(state) = chitchat.node_state(id) else { return false };
                    let Some(value) = state.get(&key).filter(|value| value.starts_with(flag)) else { return false };
                    if claim_holds(&names, id) {
                        raw.push(Raw::of(id, state, &key, value));
                    }
                    true
                });
                raw
            })
            .await;
        let mut generations: Vec<GenId> = self
            .keep_signed(raw, REPORT_FIELDS)
            .into_iter()
            .filter_map(|(_, key, value)| {
                let report = value.parse::<Report>().ok()?;
                let id = key.strip_prefix(PREFIX_REPORT)?.parse::<GenId>().ok()?;
                (report.verdict == Verdict::Anomalous).then_some(id)
            })
            .collect();
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
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                chitchat
                    .live_nodes()
                    .filter(|id| **id != own && claim_holds(&names, id))
                    .filter_map(|id| read(id, chitchat.node_state(id)?))
                    .collect()
            })
            .await
    }

    /// Like [`Gossip::live_peers`], with the members the failure detector still holds dead but
    /// that sent us gossip lately ([`heard`]): the peers log sync may pull from.
    async fn reachable_peers<T: Send + 'static>(
        &self,
        read: impl Fn(&ChitchatId, &NodeState) -> Option<T> + Send + 'static,
    ) -> Vec<T> {
        let own = self.handle.chitchat_id().clone();
        let heard: HashSet<SocketAddr> = self.heard.recent(clock::now());
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
                let heard_dead = chitchat.dead_nodes().filter(|id| heard.contains(&id.gossip_advertise_addr));
                let reachable: HashSet<&ChitchatId> = live.iter().copied().chain(heard_dead).collect();
                reachable
                    .into_iter()
                    .filter(|id| **id != own && claim_holds(&names, id))
                    .filter_map(|id| read(id, chitchat.node_state(id)?))
                    .collect()
            })
            .await
    }

    /// Every member's (live or dead) value of `key`, by name.
    async fn members_value_of(&self, key: String) -> BTreeMap<String, String> {
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                chitchat
                    .node_states()
                    .iter()
                    .filter(|(id, _)| claim_holds(&names, id))
                    .filter_map(|(id, state)| Some((id.node_id.to_string(), state.get(&key)?.to_owned())))
                    .collect()
            })
            .await
    }

    /// Live peers (this node excluded): their KPIs, and which of `generations` they report on
    /// and judge healthy.
    pub async fn peer_health(&self, generations: BTreeSet<GenId>) -> BTreeMap<NodeName, PeerHealth> {
        let keys: Vec<String> = generations.iter().map(|id| format!("{PREFIX_REPORT}{id}")).collect();
        let peers: Vec<(Vec<Raw>, Vec<Raw>)> = self
            .live_peers(move |id, state| {
                let kpis = state.get(KEY_KPI).map(|value| Raw::of(id, state, KEY_KPI, value)).into_iter().collect();
                let reports = keys.iter().filter_map(|key| Some((key, state.get(key)?)));
                Some((kpis, reports.map(|(key, value)| Raw::of(id, state, key, value)).collect()))
            })
            .await;
        let mut health: BTreeMap<NodeName, PeerHealth> = BTreeMap::new();
        for (kpis, reports) in peers {
            for (id, _, value) in self.keep_signed(kpis, KPI_FIELDS) {
                let Ok(name) = id.node_id.parse::<NodeName>() else { continue };
                health.entry(name).or_default().kpis = value.parse::<Window>().ok();
            }
            for (id, key, value) in self.keep_signed(reports, REPORT_FIELDS) {
                let generation = key.strip_prefix(PREFIX_REPORT).and_then(|g| g.parse::<GenId>().ok());
                let (Some(generation), Ok(name)) = (generation, id.node_id.parse::<NodeName>()) else { continue };
                let peer = health.entry(name).or_default();
                if value.parse::<Report>().is_ok_and(|report| report.verdict == Verdict::Healthy) {
                    peer.healthy.insert(generation.clone());
                }
                peer.reported.insert(generation);
            }
        }
        health
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
    /// (Shown as published, without the signature: they only describe an alert.)
    pub async fn kpis_of(&self, names: &[NodeName]) -> BTreeMap<String, String> {
        let mut kpis = self.members_value_of(KEY_KPI.to_owned()).await;
        kpis.retain(|name, _| names.iter().any(|wanted| wanted.as_str() == name));
        for value in kpis.values_mut() {
            if let Ok((unsigned, _)) = signed::split(value, KPI_FIELDS) {
                *value = unsigned.to_owned();
            }
        }
        kpis
    }

    /// The newest wire format `peer` reads, from its gossip (its latest incarnation's: a node
    /// upgraded in place keeps its address): [`OLDEST_READABLE`] for a peer that is not known
    /// yet.
    pub async fn wire_version_of(&self, peer: SocketAddr) -> u8 {
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                let at_peer = chitchat.node_states().iter().filter(|(id, _)| id.gossip_advertise_addr == peer);
                let latest = at_peer.filter(|(id, _)| claim_holds(&names, id)).max_by_key(|(id, _)| id.generation_id);
                latest.map_or(OLDEST_READABLE, |(_, state)| wire_version_in(state))
            })
            .await
    }

    /// Each member's name, address and newest wire format (the latest incarnation of each),
    /// without building the rest of its `MemberStatus`.
    async fn wire_versions(&self) -> Vec<(String, SocketAddr, u8)> {
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                latest_incarnations(chitchat, &names)
                    .into_iter()
                    .map(|(name, (id, state))| (name, id.gossip_advertise_addr, wire_version_in(state)))
                    .collect()
            })
            .await
    }

    /// The peers log sync may pull from: live ones, and dead ones that sent us gossip lately
    /// (a healed partition is pulled across before chitchat revives them).
    pub async fn reachable_addrs(&self) -> Vec<SocketAddr> {
        self.reachable_peers(|id, _| Some(id.gossip_advertise_addr)).await
    }

    /// Those of [`Gossip::reachable_addrs`] that advertise a generation `ours` does not cover
    /// (`keys::advertises_beyond`): the puller asks on every wake which peers are ahead of it.
    pub async fn reachable_ahead_of(&self, ours: VersionVector) -> Vec<SocketAddr> {
        self.reachable_peers(move |id, state| advertises_beyond(state, &ours).then_some(id.gossip_advertise_addr)).await
    }

    /// The members the failure detector holds dead that sent us gossip lately ([`heard`]),
    /// sorted: the reachable peers only [`heard`] makes so.
    pub async fn heard_dead(&self) -> Vec<SocketAddr> {
        let heard: HashSet<SocketAddr> = self.heard.recent(clock::now());
        if heard.is_empty() {
            return Vec::new();
        }
        let mut dead: Vec<SocketAddr> = self
            .handle
            .with_chitchat(move |chitchat| {
                let addrs = chitchat.dead_nodes().map(|id| id.gossip_advertise_addr);
                addrs.filter(|addr| heard.contains(addr)).collect()
            })
            .await;
        dead.sort_unstable();
        dead
    }

    /// The most of `origin`'s generations any other member advertises holding (`vv.<origin>`),
    /// and its name: every member this node knows of, live or dead (one not yet judged live, a
    /// former incarnation of this node), since a node that holds fewer of its own than any of
    /// them lost some, and a write now would reuse an id that member holds.
    pub async fn most_held_by_peers(&self, origin: &NodeName) -> Option<(String, u64)> {
        let key = format!("{PREFIX_VERSION_VECTOR}{origin}");
        let own = self.handle.chitchat_id().clone();
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                let states = chitchat.node_states().iter().filter(|(id, _)| **id != own && claim_holds(&names, id));
                let held =
                    states.filter_map(|(id, state)| Some((id.node_id.to_string(), state.get(&key)?.parse().ok()?)));
                held.max_by_key(|(_, seq)| *seq)
            })
            .await
    }

    /// Tallies of the same peers as [`Gossip::reachable_addrs`], each peer's by
    /// origin; malformed values are skipped. Only those whose text differs from this node's
    /// own (`ours`) are parsed and returned: the only ones that can contradict it. The read
    /// runs inside chitchat's lock, so it compares text and allocates for no tally that agrees.
    pub async fn reachable_tallies_unlike(
        &self,
        ours: &BTreeMap<NodeName, Tally>,
    ) -> Vec<(SocketAddr, Vec<(NodeName, Tally)>)> {
        let ours: HashMap<String, String> = tally_keys(ours).collect();
        self.reachable_peers(move |id, state| {
            let unlike =
                with_prefix(state, PREFIX_TALLY).filter(|(key, value)| ours.get(*key).is_none_or(|own| own != value));
            let tallies: Vec<(NodeName, Tally)> = unlike
                .filter_map(|(key, value)| Some((key.strip_prefix(PREFIX_TALLY)?.parse().ok()?, value.parse().ok()?)))
                .collect();
            (!tallies.is_empty()).then_some((id.gossip_advertise_addr, tallies))
        })
        .await
    }

    /// Reverts summaries of the same peers as [`Gossip::reachable_addrs`].
    pub async fn reachable_reverts_digests(&self) -> Vec<(SocketAddr, String)> {
        self.reachable_peers(|id, state| {
            Some((id.gossip_advertise_addr, state.get(KEY_REVERTS).unwrap_or_default().to_owned()))
        })
        .await
    }

    /// Changes whenever chitchat's set of live members does (at the end of a gossip round).
    pub async fn live_members_watcher(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.handle.with_chitchat(|chitchat| chitchat.live_nodes_watcher()).await
    }

    /// How long ago each peer, by gossip address, last sent this node gossip itself.
    pub fn last_heard(&self) -> std::collections::HashMap<SocketAddr, Duration> {
        self.heard.ages(clock::now())
    }

    /// Notifies `notify` whenever a key under one of `prefixes` changes in any member's state,
    /// for as long as the returned handles are kept: a stream that tells its client when to read
    /// again (`GET /v1/events`) holds them, and drops them when the client goes.
    pub async fn subscribe_keys(&self, prefixes: &[&'static str], notify: &Arc<Notify>) -> Vec<ListenerHandle> {
        let mut handles = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let notify = notify.clone();
            let handle = self
                .handle
                .with_chitchat(move |chitchat| {
                    let notify = notify.clone();
                    chitchat.subscribe_event(prefix, move |_| notify.notify_one())
                })
                .await;
            handles.push(handle);
        }
        handles
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
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(|chitchat| {
                chitchat
                    .live_nodes()
                    .filter(|id| claim_holds(&names, id))
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
        let vectors = self.vectors.clone();
        self.live_peers(move |id, state| Some((id.gossip_advertise_addr, vectors.of(id, state)))).await
    }

    /// Live peers (this node excluded) by name and address: the push tree is drawn over names
    /// (`grapevine_proto::push`), and pushes go to addresses.
    pub async fn named_live_peers(&self) -> Vec<(NodeName, SocketAddr)> {
        self.live_peers(|id, _| Some((id.node_id.parse().ok()?, id.gossip_advertise_addr))).await
    }

    /// Like [`Gossip::peer_version_vectors`], for the live peers in `only`: a relay reads the
    /// vectors of its few children in a push tree, not of every peer.
    pub async fn peer_version_vectors_of(&self, only: BTreeSet<SocketAddr>) -> Vec<(SocketAddr, VersionVector)> {
        let vectors = self.vectors.clone();
        self.live_peers(move |id, state| {
            let addr = id.gossip_advertise_addr;
            only.contains(&addr).then(|| (addr, vectors.of(id, state)))
        })
        .await
    }

    /// The gossip interval this node runs at.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Like [`Gossip::peer_version_vectors`], only for peers whose log summary has arrived
    /// (they publish `generations` with their vector): an empty vector from them is known.
    pub async fn peer_version_vectors_known(&self) -> Vec<(SocketAddr, VersionVector)> {
        let vectors = self.vectors.clone();
        self.live_peers(move |id, state| {
            state.get(KEY_GENERATIONS)?;
            Some((id.gossip_advertise_addr, vectors.of(id, state)))
        })
        .await
    }

    /// Names of live members, sorted, this node included.
    pub async fn live_names(&self) -> Vec<NodeName> {
        let claims = self.transport.peer_names();
        let mut names: Vec<NodeName> = self
            .handle
            .with_chitchat(move |chitchat| {
                let live = chitchat.live_nodes().filter(|id| claim_holds(&claims, id));
                live.filter_map(|id| id.node_id.parse().ok()).collect()
            })
            .await;
        names.sort();
        names.dedup();
        names
    }

    /// The live member that reads the oldest wire format (its name and that format), this node
    /// included; `None` before the first gossip round.
    pub async fn oldest_live_wire_version(&self) -> Option<(String, u8)> {
        let live = self.live_names().await;
        let versions = self.wire_versions().await;
        let live = versions.into_iter().filter(|(name, _, _)| live.iter().any(|n| n.as_str() == name));
        live.map(|(name, _, version)| (name, version)).min_by_key(|(_, version)| *version)
    }

    /// Starts a gossip exchange with every live peer now, instead of at the next round, so
    /// a new key reaches them in one round trip.
    pub async fn nudge_live_peers(&self) {
        self.nudge_live_peers_up_to(usize::MAX).await;
    }

    /// Like [`Gossip::nudge_live_peers`], for at most `limit` of them: the first in an order
    /// of their addresses hashed with this node's, so that nodes nudging at the same moment
    /// reach different peers, who pass on what they learned in their next rounds.
    pub async fn nudge_live_peers_up_to(&self, limit: usize) {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let own = self.handle.chitchat_id().gossip_advertise_addr;
        let names = self.transport.peer_names();
        let mut peers: Vec<SocketAddr> = self
            .handle
            .with_chitchat(move |chitchat| {
                let live = chitchat.live_nodes().filter(|id| claim_holds(&names, id));
                live.map(|id| id.gossip_advertise_addr).collect()
            })
            .await;
        peers.retain(|addr| *addr != own);
        let order = BuildHasherDefault::<DefaultHasher>::default();
        peers.sort_by_key(|peer| order.hash_one((own, peer)));
        for peer in peers.into_iter().take(limit) {
            let _ = self.handle.gossip(peer);
        }
    }

    /// Every member this node knows of, alive or dead; the latest incarnation of each name.
    pub async fn members(&self) -> Vec<MemberStatus> {
        let own = self.handle.chitchat_id().clone();
        let names = self.transport.peer_names();
        self.handle
            .with_chitchat(move |chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                latest_incarnations(chitchat, &names)
                    .into_values()
                    .map(|(id, state)| member_of(id, state, live.contains(id), *id == own))
                    .collect()
            })
            .await
    }

    /// Looks at this node's namesakes once, and returns those that count as live from this look
    /// on (see [`binding`]); each is remembered for `status`.
    pub async fn look_for_namesakes(&self) -> Vec<Namesake> {
        let own = self.handle.chitchat_id().clone();
        let look: BTreeMap<Namesake, u64> = self
            .handle
            .with_chitchat(move |chitchat| {
                let states = chitchat.node_states().iter();
                let namesakes = states.filter(|(id, _)| id.node_id == own.node_id && **id != own);
                namesakes
                    .map(|(id, state)| {
                        let namesake = Namesake { address: id.gossip_advertise_addr, incarnation: id.generation_id };
                        (namesake, u64::from(state.heartbeat()))
                    })
                    .collect()
            })
            .await;
        let mut namesakes = self.namesakes.lock().expect("namesakes lock poisoned");
        let live = namesakes.0.observe(&look);
        for namesake in &live {
            if namesakes.1.len() >= binding::MAX_NAMESAKES_SHOWN {
                namesakes.1.remove(0);
            }
            namesakes.1.push(*namesake);
        }
        live
    }

    /// Whether the last look saw any namesake at all, live or not.
    pub fn namesakes_in_sight(&self) -> bool {
        !self.namesakes.lock().expect("namesakes lock poisoned").0.is_empty()
    }

    /// The namesakes raised as live since start, oldest first.
    pub fn live_namesakes(&self) -> Vec<Namesake> {
        self.namesakes.lock().expect("namesakes lock poisoned").1.clone()
    }

    /// Counts and logs (rate-limited) each member whose name the certificate of the connection
    /// at its address contradicts, once: every read already leaves them out.
    pub async fn count_false_claims(&self) {
        let names = self.transport.peer_names();
        let false_claims: Vec<(ChitchatId, String)> = self
            .handle
            .with_chitchat(move |chitchat| {
                let ids = chitchat.node_states().keys().filter(|id| !claim_holds(&names, id));
                ids.map(|id| (id.clone(), names[&id.gossip_advertise_addr].join(","))).collect()
            })
            .await;
        let mut counted = self.false_claims.lock().expect("false claims lock poisoned");
        if counted.len() >= MAX_FALSE_CLAIMS_REMEMBERED {
            counted.clear();
        }
        for (id, certificate) in false_claims {
            if !counted.insert(id.clone()) {
                continue;
            }
            self.transport.metrics().members_refused.get_or_create(&reason("wrong_name")).inc();
            if self.forged_warnings.allow(&format!("{}/claim", id.node_id)) {
                let (member, address) = (&id.node_id, id.gossip_advertise_addr);
                warn!(%member, %address, %certificate, "refused a member whose connection's certificate names another node; it is left out of membership");
            }
        }
    }

    /// Stops chitchat's loop and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
        let _ = self.handle.termination_watcher().await;
    }
}

/// Each member name's latest live incarnation and its state, by name, or its latest dead one
/// when none is live: a namesake that started after the node and stopped (a second certificate
/// for its name) must not make the live node look dead. Members whose name a connection's
/// certificate contradicts are left out.
fn latest_incarnations<'a>(
    chitchat: &'a chitchat::Chitchat,
    names: &HashMap<SocketAddr, Vec<String>>,
) -> BTreeMap<String, (&'a ChitchatId, &'a NodeState)> {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let rank = |id: &ChitchatId| (live.contains(id), id.generation_id);
    let mut latest: BTreeMap<String, (&ChitchatId, &NodeState)> = BTreeMap::new();
    for (id, state) in chitchat.node_states().iter().filter(|(id, _)| claim_holds(names, id)) {
        let name = id.node_id.to_string();
        if latest.get(&name).is_none_or(|(seen, _)| rank(seen) <= rank(id)) {
            latest.insert(name, (id, state));
        }
    }
    latest
}

fn member_of(id: &ChitchatId, state: &NodeState, alive: bool, is_self: bool) -> MemberStatus {
    let version_vector = version_vector_of(state).iter().map(|(o, s)| (o.to_string(), s)).collect();
    MemberStatus {
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
        signing: state.get(KEY_SIGNING).map(str::to_owned),
        // Filled by the API, which knows when it last heard from each (`Gossip::last_heard`).
        last_heard_ms: None,
    }
}

/// Whether a peer's `vv.<origin>` = `value` advertises more of `origin` than `held` (this node's
/// published vector); a malformed value advertises nothing.
fn advertises_more(held: &Mutex<HashMap<String, u64>>, origin: &str, value: &str) -> bool {
    let Ok(seq) = value.parse::<u64>() else { return false };
    seq > held.lock().expect("held vector lock poisoned").get(origin).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vector_entry_above_ours_wakes_the_puller() {
        let held = Mutex::new(HashMap::from([("n1".to_owned(), 5)]));
        assert!(!advertises_more(&held, "n1", "5"), "what we hold");
        assert!(!advertises_more(&held, "n1", "4"), "less than we hold");
        assert!(advertises_more(&held, "n1", "6"), "more than we hold");
        assert!(advertises_more(&held, "n2", "1"), "an origin we hold nothing of");
        assert!(!advertises_more(&held, "n2", "0"));
        assert!(!advertises_more(&held, "n1", "not a number"), "malformed advertises nothing");
    }
}
