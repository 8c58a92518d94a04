//! Scenarios as data: a list of [`Op`]s run against in-process nodes (real QUIC, real redb,
//! real HTTP) whose links are cut, lossy or slow through each node's link filter.
//!
//! Every scenario has a seed; the random choices of a run (which node writes, which messages a
//! lossy link drops) follow from it, and a failure prints the seed and the ops so the run can
//! be replayed.
//!
//! `Scenario { name, nodes, seed, gossip_interval_ms, clock_skews_ms, retain_generations, ops }`;
//! `Op` (with `Display`): `Change`, `RandomChanges`, `Partition`, `Loss`, `Heal`, `Stop`,
//! `Restart`, `AssertConverged { within }`, `AssertAbsent`, `AssertValue`, `AssertCompacted`. Nodes
//! run through `daemon::start`, faults through `RunningNode::link_filter`. The seed drives
//! `RandomChanges` and reseeds each node's link filter (`seed ^ index`). A failure names the op,
//! the scenario, its seed and every op. `AssertConverged` compares each running node's version
//! vector and state digest from `/v1/status`, and checks that the vector covers every acknowledged
//! generation. `Scenario::run` returns a `Report` (time to each convergence, generations
//! acknowledged). Scenario nodes are configured with one wave (`PolicyOptions { waves: "100%" }`),
//! as are the spread bench's.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grapevine_node::config::{Config, RawConfig};
use grapevine_node::daemon::{self, RunningNode};
use grapevine_node::faults::LinkRule;
use grapevine_node::replies::{ChangeReply, ConfigValue, ErrorReply, Status};
use grapevine_node::tls;
use grapevine_proto::policy::PolicyOptions;
use grapevine_proto::sim::SplitMix64;
use grapevine_proto::{GenId, VersionVector};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// One step of a scenario.
#[derive(Clone, Debug)]
pub enum Op {
    /// `config put KEY --value VALUE` on a node; the acknowledged generation is recorded.
    Change { node: usize, key: String, value: i64 },
    /// Within the bound, the node refuses `config put KEY` with an error that contains
    /// `because` (it may take changes until the condition arises); nothing is acknowledged.
    ChangeRefused { node: usize, key: String, because: &'static str, within: Duration },
    /// `count` changes of keys `k0..k{keys}` on nodes drawn from the seed.
    RandomChanges { count: usize, keys: usize },
    /// Cut every link between nodes of different groups, both ways.
    Partition(Vec<Vec<usize>>),
    /// Drop a share of the messages on every link.
    Loss(f64),
    /// Every link passes again.
    Heal,
    /// Stop a node (its store keeps what it acknowledged).
    Stop(usize),
    /// Start a stopped node again on the same ports and data.
    Restart(usize),
    /// Within the bound, every running node holds the same log, the same state digest, and
    /// every acknowledged generation.
    AssertConverged { within: Duration },
    /// After waiting `after` (many gossip rounds), none of `nodes` serves config `key`: the
    /// faults really keep it away.
    AssertAbsent { nodes: Vec<usize>, key: String, after: Duration },
    /// Every running node serves config `key` = `value`.
    AssertValue { key: String, value: i64 },
    /// Every running node's link filter has dropped gossip: the fault was really in force.
    AssertFaultsDropped,
    /// Within 20 s, a node has folded at least `at_least` generations into its snapshot.
    AssertCompacted { node: usize, at_least: u64 },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Change { node, key, value } => write!(f, "Change(n{} {key}={value})", node + 1),
            Op::ChangeRefused { node, key, because, within } => {
                write!(f, "ChangeRefused(n{} {key}, {because:?}, within {within:?})", node + 1)
            }
            Op::RandomChanges { count, keys } => write!(f, "RandomChanges({count} over {keys} keys)"),
            Op::Partition(groups) => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|g| g.iter().map(|n| format!("n{}", n + 1)).collect::<Vec<_>>().join(","))
                    .collect();
                write!(f, "Partition({})", groups.join(" | "))
            }
            Op::Loss(share) => write!(f, "Loss({:.0}%)", share * 100.0),
            Op::Heal => write!(f, "Heal"),
            Op::Stop(node) => write!(f, "Stop(n{})", node + 1),
            Op::Restart(node) => write!(f, "Restart(n{})", node + 1),
            Op::AssertConverged { within } => write!(f, "AssertConverged(within {within:?})"),
            Op::AssertValue { key, value } => write!(f, "AssertValue({key}={value})"),
            Op::AssertFaultsDropped => write!(f, "AssertFaultsDropped"),
            Op::AssertCompacted { node, at_least } => write!(f, "AssertCompacted(n{} >= {at_least})", node + 1),
            Op::AssertAbsent { nodes, key, after } => {
                let nodes: Vec<String> = nodes.iter().map(|n| format!("n{}", n + 1)).collect();
                write!(f, "AssertAbsent({key} on {} after {after:?})", nodes.join(","))
            }
        }
    }
}

/// A scenario: nodes, a seed, and the ops to run.
pub struct Scenario {
    pub name: &'static str,
    pub nodes: usize,
    pub seed: u64,
    pub gossip_interval_ms: u64,
    /// Wall-clock skew per node, in milliseconds (missing entries: none).
    pub clock_skews_ms: Vec<i64>,
    /// `retain_generations` of every node (the node's default when `None`); retention age 0
    /// when set, so compaction runs as soon as the count allows.
    pub retain_generations: Option<u64>,
    pub ops: Vec<Op>,
}

/// What a finished run measured.
#[derive(Debug)]
pub struct Report {
    /// How long each `AssertConverged` took to hold.
    pub convergence: Vec<Duration>,
    /// Generations acknowledged to clients.
    pub acknowledged: usize,
}

struct Slot {
    config: Config,
    node: Option<RunningNode>,
    gossip: SocketAddr,
    api: SocketAddr,
}

struct Run {
    dir: tempfile::TempDir,
    slots: Vec<Slot>,
    acknowledged: BTreeSet<GenId>,
    random: SplitMix64,
    http: reqwest::Client,
}

impl Scenario {
    /// Runs the scenario; on failure the error names the seed, the op and the whole script.
    pub async fn run(&self) -> Result<Report> {
        let mut run = Run::start(self).await.with_context(|| self.describe())?;
        let mut convergence = Vec::new();
        for (index, op) in self.ops.iter().enumerate() {
            let step = run.apply(op).await.with_context(|| format!("op {index}: {op}\n{}", self.describe()))?;
            convergence.extend(step);
        }
        let acknowledged = run.acknowledged.len();
        run.stop_all().await;
        drop(run.dir);
        Ok(Report { convergence, acknowledged })
    }

    fn describe(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(ToString::to_string).collect();
        format!("scenario {} (seed {}, {} nodes): {}", self.name, self.seed, self.nodes, ops.join(", "))
    }
}

impl Run {
    async fn start(scenario: &Scenario) -> Result<Run> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        tls::ca_init(&ca)?;
        let mut run = Run {
            dir,
            slots: Vec::new(),
            acknowledged: BTreeSet::new(),
            random: SplitMix64::new(scenario.seed),
            http: reqwest::Client::new(),
        };
        for index in 0..scenario.nodes {
            let name = format!("n{}", index + 1);
            let root: PathBuf = run.dir.path().join(&name);
            tls::ca_issue(&ca, &name, &["127.0.0.1".parse()?], &[], &root.join("tls"))?;
            let seeds = run.slots.first().map(|first| vec![first.gossip.to_string()]);
            let raw = RawConfig {
                name: Some(name),
                listen: Some("127.0.0.1:0".into()),
                api: Some("127.0.0.1:0".into()),
                seeds,
                data: Some(root.join("data")),
                tls: Some(root.join("tls")),
                gossip_interval_ms: Some(scenario.gossip_interval_ms),
                test_clock_skew_ms: scenario.clock_skews_ms.get(index).copied(),
                retain_generations: scenario.retain_generations,
                retain_age_s: scenario.retain_generations.map(|_| 0),
                // One wave: scenarios are about spreading, not rolling out.
                rollout: Some(PolicyOptions { waves: Some("100%".into()), ..PolicyOptions::default() }.into()),
                auth: Some(crate::in_process_auth()),
                limits: Some(crate::in_process_limits()),
                ..RawConfig::default()
            };
            let mut config = Config::try_from(raw)?;
            let node = daemon::start(config.clone()).await?;
            node.link_filter().reseed(scenario.seed ^ index as u64);
            // Restarts reuse the ports the first start got.
            config.listen = node.gossip_addr;
            config.api = node.api_addr;
            run.slots.push(Slot { config, gossip: node.gossip_addr, api: node.api_addr, node: Some(node) });
        }
        run.wait_formed(Duration::from_secs(20)).await?;
        Ok(run)
    }

    async fn apply(&mut self, op: &Op) -> Result<Option<Duration>> {
        match op {
            Op::Change { node, key, value } => self.change(*node, key, *value).await?,
            Op::ChangeRefused { node, key, because, within } => {
                self.change_refused(*node, key, because, *within).await?
            }
            Op::RandomChanges { count, keys } => {
                for _ in 0..*count {
                    let running: Vec<usize> = (0..self.slots.len()).filter(|i| self.slots[*i].node.is_some()).collect();
                    let node = running[self.random.below(running.len())];
                    let key = format!("k{}", self.random.below(*keys));
                    let value = self.random.below(1_000_000) as i64;
                    self.change(node, &key, value).await?;
                }
            }
            Op::Partition(groups) => self.partition(groups),
            Op::Loss(share) => {
                for node in self.running() {
                    node.link_filter().set(None, LinkRule { loss: *share, ..LinkRule::default() });
                }
            }
            Op::Heal => {
                for node in self.running() {
                    node.link_filter().clear();
                }
            }
            Op::Stop(index) => {
                let node = self.slots[*index].node.take().context("node is not running")?;
                node.stop().await;
            }
            Op::Restart(index) => {
                let slot = &mut self.slots[*index];
                anyhow::ensure!(slot.node.is_none(), "node is already running");
                let mut config = slot.config.clone();
                config.seeds = self.slots.iter().map(|s| s.gossip.to_string()).collect();
                let node = daemon::start(config).await?;
                self.slots[*index].node = Some(node);
            }
            Op::AssertConverged { within } => return Ok(Some(self.assert_converged(*within).await?)),
            Op::AssertFaultsDropped => {
                for node in self.running() {
                    let text = node.metrics().render();
                    let dropped = text
                        .lines()
                        .find(|l| l.starts_with("grapevine_gossip_messages_dropped_total{reason=\"link_filter\"}"))
                        .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    anyhow::ensure!(dropped > 0, "{}'s link filter dropped no gossip", node.name);
                }
            }
            Op::AssertCompacted { node, at_least } => {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let status: Status = self.get(self.slots[*node].api, "/v1/status").await?;
                    let compacted = status.compacted;
                    if compacted >= *at_least {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "n{} compacted only {compacted} generations", node + 1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Op::AssertValue { key, value } => {
                for slot in self.slots.iter().filter(|s| s.node.is_some()) {
                    let answer: ConfigValue = self.get(slot.api, &format!("/v1/config/{key}")).await?;
                    anyhow::ensure!(answer.value == *value, "{} serves {key}: {answer:?}", slot.config.name);
                }
            }
            Op::AssertAbsent { nodes, key, after } => {
                tokio::time::sleep(*after).await;
                for node in nodes {
                    let url = format!("http://{}/v1/config/{key}", self.slots[*node].api);
                    let status = self.http.get(&url).send().await?.status();
                    anyhow::ensure!(status == 404, "n{} serves {key} (HTTP {status}) through the fault", node + 1);
                }
            }
        }
        Ok(None)
    }

    fn running(&self) -> impl Iterator<Item = &RunningNode> {
        self.slots.iter().filter_map(|slot| slot.node.as_ref())
    }

    async fn change(&mut self, node: usize, key: &str, value: i64) -> Result<()> {
        let url = format!("http://{}/v1/config/{key}", self.slots[node].api);
        let response = self.http.post(&url).json(&json!({ "value": value })).send().await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if !status.is_success() {
            bail!("change on n{} refused: {answer}", node + 1);
        }
        let answer = ChangeReply::deserialize(&answer)?;
        let generation = answer.generation().context("a generation id")?;
        self.acknowledged.insert(generation.parse()?);
        Ok(())
    }

    /// Tries a change every 200 ms until the node refuses it for `because`; a change it takes
    /// meanwhile is not acknowledged to the scenario (the condition had not arisen yet).
    async fn change_refused(&mut self, node: usize, key: &str, because: &str, within: Duration) -> Result<()> {
        let url = format!("http://{}/v1/config/{key}", self.slots[node].api);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let response = self.http.post(&url).json(&json!({ "value": 0 })).send().await?;
            let (status, answer) = (response.status(), response.json::<Value>().await?);
            let refusal = ErrorReply::deserialize(&answer).map(|refusal| refusal.error).unwrap_or_default();
            if !status.is_success() && refusal.contains(because) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "n{} did not refuse a change for {because:?} within {within:?}; last answer {status}: {answer}",
                    node + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn partition(&self, groups: &[Vec<usize>]) {
        let group_of = |node: usize| groups.iter().position(|g| g.contains(&node));
        for (a, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            for (b, other) in self.slots.iter().enumerate() {
                if a != b && group_of(a) != group_of(b) {
                    node.link_filter().set(Some(other.gossip), LinkRule { drop: true, ..LinkRule::default() });
                }
            }
        }
    }

    /// `GET path` of the node at `api`, read as the reply `T`.
    async fn get<T: DeserializeOwned>(&self, api: SocketAddr, path: &str) -> Result<T> {
        Ok(self.http.get(format!("http://{api}{path}")).send().await?.json().await?)
    }

    async fn wait_formed(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut formed = true;
            for slot in &self.slots {
                let status: Status = self.get(slot.api, "/v1/status").await?;
                formed &= status.alive().count() == self.slots.len();
            }
            if formed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not form within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One running node's log, as its version vector (compaction folds generations away, so
    /// the vector, not the list, is the log's identity), and its state digest.
    async fn snapshot(&self, api: SocketAddr) -> Result<(VersionVector, String)> {
        let status: Status = self.get(api, "/v1/status").await?;
        let mut vector = VersionVector::default();
        for (origin, seq) in status.version_vector {
            vector.raise(origin.parse()?, seq);
        }
        Ok((vector, status.state_digest))
    }

    async fn assert_converged(&self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let mut snapshots = Vec::new();
            for slot in self.slots.iter().filter(|s| s.node.is_some()) {
                snapshots.push((slot.config.name.to_string(), self.snapshot(slot.api).await?));
            }
            let (_, first) = &snapshots[0];
            let same = snapshots.iter().all(|(_, snapshot)| snapshot == first);
            let complete = self.acknowledged.iter().all(|id| first.0.covers(id));
            if same && complete {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                let lines: Vec<String> = snapshots
                    .iter()
                    .map(|(name, (vector, digest))| {
                        let missing: Vec<String> =
                            self.acknowledged.iter().filter(|id| !vector.covers(id)).map(ToString::to_string).collect();
                        format!(
                            "{name}: {} generations, digest {digest}, missing acknowledged {missing:?}",
                            vector.total()
                        )
                    })
                    .collect();
                bail!("not converged within {within:?}:\n  {}", lines.join("\n  "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(node) = slot.node.take() {
                node.stop().await;
            }
        }
    }
}
