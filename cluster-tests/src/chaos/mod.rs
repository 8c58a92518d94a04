//! The chaos suite: seeded fault schedules against real `grapevine node` processes, a recorded
//! history, and an invariant checker over it (Jepsen-style histories, FoundationDB-style seeds).
//!
//! A run starts a cluster, follows the schedule of its seed (changes on random nodes, bad
//! changes whose canary's application fails, faults, heals) while an observer records what
//! every node serves, heals everything, waits for quiet, and checks the invariants of
//! [`check`] over the history and each node's final log. Everything goes through the CLI and
//! the HTTP API a user has; faults are iptables rules in a network namespace as root, the
//! link filter of the `testsuite` build otherwise, and signals.
//!
//! ```sh
//! cargo run -p grapevine-cluster-tests -- chaos --quick                 # CI: fixed seeds
//! cargo run -p grapevine-cluster-tests --release -- chaos --seeds 200   # soak
//! cargo run -p grapevine-cluster-tests --release -- chaos --seed 17     # replay one seed
//! ```
//!
//! `schedule.rs` derives the schedule (changes, faults, heals) from a seed; `run_seed` runs it and
//! records the history (client operations and outcomes, faults, and an observer thread's record of
//! what every node serves and of its rollouts), written to `$TMPDIR/grapevine-chaos/seed-N/`;
//! `check.rs` checks the invariants over it. `docs/chaos.md` describes the suite.

pub mod check;
pub mod schedule;
pub mod simulated;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_node::replies::Status;
use serde_json::{Value, json};

use crate::{Cluster, Node, can_use_netns, http_request_within};
use schedule::{APP_KEY, ChangeKind, Damage, Fault, GOVERNED_KEY, GOVERNED_PREFIX, Interrupt, OTHER_KEYS, Shape, Step};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    /// Changes and faults per schedule.
    pub events: usize,
    /// How long the cluster may take to converge after the final heal.
    pub quiet_timeout: Duration,
    /// iptables in a network namespace (needs root), else the link filter.
    pub netns: bool,
}

impl Options {
    pub fn new(nodes: usize, events: usize) -> Options {
        Options { nodes, events, quiet_timeout: Duration::from_secs(60), netns: can_use_netns() }
    }
}

/// What happened in a run, as the checker reads it.
#[derive(Default)]
pub struct History {
    /// Steps, faults and client operations, in order, with their time since the start.
    pub events: Vec<(u64, String)>,
    pub ops: Vec<Op>,
    /// What nodes served: only changes of a node's answer for a key are kept.
    pub observations: Vec<Observation>,
    /// Generations whose anomaly quorum some node's view showed reached, and which view.
    pub quorum_seen: BTreeMap<String, String>,
    /// Releases as nodes reported them: (node, generation) -> the rollout view then.
    pub releases: BTreeMap<(String, String), check::Rollout>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Store damages, by node name.
    pub corruptions: BTreeMap<String, Damages>,
}

/// How often one node's store was damaged, by kind.
#[derive(Clone, Debug, Default)]
pub struct Damages {
    pub truncated: usize,
    pub garbled: usize,
}

/// A client operation and its outcome.
#[derive(Clone, Debug)]
pub struct Op {
    pub t_ms: u64,
    pub node: String,
    /// `config KEY`, `flag KEY` or `rollback`.
    pub what: String,
    /// The values it wrote (a flag writes its variants' values).
    pub values: Vec<Value>,
    /// The generation a rollback targets.
    pub target: Option<String>,
    /// The generation acknowledged, or the error.
    pub outcome: Result<String, String>,
}

/// One answer of one node for one key.
#[derive(Clone, Debug)]
pub struct Observation {
    pub t_ms: u64,
    pub node: String,
    /// `config`, `ofrep` or `file`.
    pub source: &'static str,
    pub key: String,
    pub value: Value,
    pub generation: Option<String>,
}

/// One run's figures and verdict.
pub struct Report {
    pub seed: u64,
    pub netns: bool,
    pub steps: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub changes_sent: usize,
    pub changes_acked: usize,
    pub reverts: usize,
    pub checked: usize,
    pub violations: Vec<check::Violation>,
    /// Rollouts left stalled in a closed wave at the end.
    pub stalled: usize,
    pub wall: Duration,
}

struct Recorder {
    started: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn event(&self, text: String) {
        let t = self.now_ms();
        self.history.lock().expect("history lock").events.push((t, text));
    }
}

/// Runs the schedule of `seed` and checks it.
pub fn run_seed(seed: u64, options: &Options) -> Result<Report> {
    let started = Instant::now();
    let steps = schedule::generate(seed, Shape { nodes: options.nodes, events: options.events });
    let mut cluster = if options.netns { Cluster::new_in_netns(options.nodes)? } else { Cluster::new(options.nodes)? };
    cluster.seed_each_other();
    let operators = Operators::make(cluster.dir.path())?;
    for index in 0..options.nodes {
        cluster.nodes[index].config_toml = node_config(&cluster.nodes[index], 0, &operators.root);
    }
    cluster.start_all().context("starting the cluster")?;
    cluster.enter_netns()?;
    let recorder = Arc::new(Recorder { started: Instant::now(), history: Mutex::new(History::default()) });
    let down = Arc::new(Mutex::new(BTreeSet::new()));
    let observer = observe(&cluster, recorder.clone(), down.clone());
    let mut world = World {
        cluster,
        recorder: recorder.clone(),
        down,
        seed,
        network: None,
        flapper: None,
        frozen: BTreeSet::new(),
        killed: BTreeSet::new(),
        skews: BTreeMap::new(),
        acked: Vec::new(),
        operators,
        proposals: Vec::new(),
    };
    let outcome = world.follow(&steps);
    world.heal()?;
    recorder.event("final heal".into());
    outcome?;
    let converged = world.wait_converged(options.quiet_timeout);
    // A last look at every node's rollouts, then the observer stops.
    std::thread::sleep(Duration::from_millis(600));
    drop(observer);
    let finals: Vec<Final> = world.cluster.nodes.iter().map(Final::collect).collect::<Result<_>>()?;
    let history = std::mem::take(&mut *recorder.history.lock().expect("history lock"));
    let logs: BTreeMap<String, String> = world.cluster.nodes.iter().map(|n| (n.name.clone(), n.log_text())).collect();
    let verdict = check::check(&history, &finals, &logs, converged.err().map(|e| e.to_string()));
    let recorded = history_file(seed);
    if let Err(error) = write_history(&recorded, &history, &finals, &logs) {
        eprintln!("seed {seed}: cannot write the history to {}: {error}", recorded.display());
    }
    let ops = history.ops.iter().filter(|op| op.target.is_none());
    Ok(Report {
        seed,
        netns: options.netns,
        steps: steps.len(),
        faults: history.faults.clone(),
        changes_sent: ops.clone().count(),
        changes_acked: ops.filter(|op| op.outcome.is_ok()).count(),
        reverts: finals.first().map_or(0, |f| f.status["reverted"].as_u64().unwrap_or(0) as usize),
        checked: verdict.checked,
        violations: verdict.violations,
        stalled: verdict.stalled.len(),
        wall: started.elapsed(),
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Where the history of a seed's last run is written: `$TMPDIR/grapevine-chaos/seed-N/`.
pub fn history_file(seed: u64) -> PathBuf {
    std::env::temp_dir().join("grapevine-chaos").join(format!("seed-{seed}"))
}

/// Writes the run's history (events, operations, observations), each node's final status
/// and history, and each node's log, for a post-mortem of a violation.
fn write_history(dir: &Path, history: &History, finals: &[Final], logs: &BTreeMap<String, String>) -> Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir)?;
    let mut text = String::new();
    for (t, event) in &history.events {
        writeln!(text, "{t:>7} ms  {event}")?;
    }
    writeln!(text, "\nobservations (changes of what a node serves):")?;
    for o in &history.observations {
        let generation = o.generation.as_deref().unwrap_or("-");
        writeln!(text, "{:>7} ms  {} {} {} = {} ({generation})", o.t_ms, o.node, o.source, o.key, o.value)?;
    }
    writeln!(text, "\nanomaly quorums seen: {:?}", history.quorum_seen)?;
    std::fs::write(dir.join("history.txt"), text)?;
    for last in finals {
        let both = json!({ "status": last.status, "history": last.history });
        std::fs::write(dir.join(format!("{}.final.json", last.name)), serde_json::to_string_pretty(&both)?)?;
    }
    for (name, log) in logs {
        std::fs::write(dir.join(format!("{name}.log")), log)?;
    }
    Ok(())
}

/// The config of every chaos node: changes in three waves with a short bake, judged by an
/// application that fails while the rendered file of `app` holds a `BAD` value; signed changes
/// under `root`, and two signatures for [`GOVERNED_PREFIX`].
fn node_config(node: &Node, skew_ms: i64, root: &str) -> String {
    let file = app_file(node);
    let check = format!("! grep -q BAD {}", file.display());
    format!(
        "test_clock_skew_ms = {skew_ms}\n\n\
         [rollout]\nwaves = \"1,50%,100%\"\nbake = \"1s\"\nmin_samples = 3\n\n\
         [health]\nsample_interval_ms = 200\n[[health.exec]]\ncommand = [\"sh\", \"-c\", {check:?}]\n\n\
         [[files]]\npath = {file:?}\nkey = \"{APP_KEY}\"\nformat = \"json\"\n\n\
         [signing]\nroots = [\"{root}\"]\n\
         [[signing.approvals]]\nprefix = \"{GOVERNED_PREFIX}\"\nsignatures = 2\n"
    )
}

/// The run's keys: a root, and two operators it delegated, Alice (who signs every change and
/// proposes) and Bob (who approves).
struct Operators {
    root: String,
    alice: PathBuf,
    bob: PathBuf,
}

impl Operators {
    fn make(dir: &Path) -> Result<Operators> {
        let (root_file, root) = crate::new_key(dir, "root")?;
        let (alice, _) = crate::new_key(dir, "alice")?;
        let (bob, _) = crate::new_key(dir, "bob")?;
        for operator in [&alice, &bob] {
            crate::delegate(&root_file, operator, &[])?;
        }
        Ok(Operators { root, alice, bob })
    }
}

fn app_file(node: &Node) -> PathBuf {
    node.data.parent().expect("a node's data dir has a parent").join("app.json")
}

/// A node's state after the final heal.
pub struct Final {
    pub name: String,
    pub status: Value,
    pub history: Value,
    /// Each generation's rollout view, by id, as the checks read it (a simulated fleet's
    /// `history` leaves them out: they share their waves here).
    pub rollouts: BTreeMap<String, check::Rollout>,
}

impl Final {
    /// A node's final state from its status and history as its API serves them.
    pub fn new(name: String, status: Value, history: Value) -> Final {
        let generations = history["generations"].as_array().into_iter().flatten();
        let rollouts = generations
            .filter_map(|g| Some((g["id"].as_str()?.to_owned(), check::Rollout::from_json(&g["rollout"])?)))
            .collect();
        Final { name, status, history, rollouts }
    }

    fn collect(node: &Node) -> Result<Final> {
        let get = |path: &str| -> Result<Value> {
            let (code, body) =
                http_request_within("GET", &format!("{}{path}", node.url()), None, Duration::from_secs(10))?;
            anyhow::ensure!(code == 200, "{} {path}: {code} {body}", node.name);
            Ok(serde_json::from_str(&body)?)
        };
        Ok(Final::new(node.name.clone(), get("/v1/status")?, get("/v1/history?limit=1000")?))
    }
}

/// A thread that runs until told to stop; dropping it stops it and waits for it, on every
/// path out of a run, errors included (an observer left running would keep polling, and keep
/// a deleted network namespace alive).
struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

struct World {
    cluster: Cluster,
    recorder: Arc<Recorder>,
    /// Nodes the observer leaves alone: frozen or killed.
    down: Arc<Mutex<BTreeSet<usize>>>,
    seed: u64,
    /// The network fault in force, re-applied to a node that restarts (its link filter
    /// starts empty; iptables rules stay).
    network: Option<Fault>,
    flapper: Option<Background>,
    frozen: BTreeSet<usize>,
    killed: BTreeSet<usize>,
    skews: BTreeMap<usize, i64>,
    /// Generations acknowledged to clients, for rollbacks.
    acked: Vec<String>,
    operators: Operators,
    /// Proposals acknowledged to clients, for approvals.
    proposals: Vec<String>,
}

impl World {
    fn follow(&mut self, steps: &[Step]) -> Result<()> {
        for (index, step) in steps.iter().enumerate() {
            self.recorder.event(format!("step {index}: {step}"));
            match step {
                Step::Change(change) => {
                    let node = self.up(change.node);
                    self.change(node, &change.kind, change.serial)?;
                }
                Step::Fault(fault) => {
                    if self.inject(fault, index)? {
                        *self.recorder.history.lock().expect("history lock").faults.entry(fault.name()).or_default() +=
                            1;
                    }
                }
                Step::Heal => self.heal()?,
                Step::Pause { ms } => std::thread::sleep(Duration::from_millis(*ms)),
            }
        }
        Ok(())
    }

    /// `node`, or the next node that is up (a change goes to a node that answers).
    fn up(&self, node: usize) -> usize {
        let n = self.cluster.nodes.len();
        (0..n).map(|i| (node + i) % n).find(|i| !self.frozen.contains(i) && !self.killed.contains(i)).unwrap_or(node)
    }

    fn change(&mut self, node: usize, kind: &ChangeKind, serial: u64) -> Result<Option<String>> {
        let (what, values, args): (String, Vec<Value>, Vec<String>) = match kind {
            ChangeKind::GoodApp | ChangeKind::BadApp | ChangeKind::AppAtOnce => {
                let value = json!(format!("{}-{serial}", if *kind == ChangeKind::BadApp { "BAD" } else { "good" }));
                let mut args = vec!["config".into(), "put".into(), APP_KEY.into(), "--value".into(), value.to_string()];
                if *kind == ChangeKind::AppAtOnce {
                    args.push("--emergency".into());
                }
                (format!("config {APP_KEY}"), vec![value], args)
            }
            ChangeKind::Config { key } => {
                let value = json!({ "serial": serial });
                let args =
                    ["config", "put", key, "--value", &value.to_string(), "--emergency"].map(String::from).to_vec();
                (format!("config {key}"), vec![value], args)
            }
            ChangeKind::Flag { key } => {
                let values = vec![json!(format!("a-{serial}")), json!(format!("b-{serial}"))];
                let default = if serial.is_multiple_of(2) { "a" } else { "b" };
                let definition = json!({
                    "state": "ENABLED",
                    "variants": { "a": values[0], "b": values[1] },
                    "defaultVariant": default,
                });
                let file = self.cluster.dir.path().join(format!("flag-{serial}.json"));
                std::fs::write(&file, definition.to_string())?;
                let args =
                    vec!["flag".into(), "set".into(), key.to_string(), "--file".into(), file.display().to_string()];
                (format!("flag {key}"), values, args)
            }
            ChangeKind::Rollback { nth } => {
                let Some(generation) = (!self.acked.is_empty()).then(|| self.acked[nth % self.acked.len()].clone())
                else {
                    return Ok(None);
                };
                let args = vec!["rollback".into(), generation.clone()];
                return Ok(self.client(node, "rollback".into(), Vec::new(), Some(generation), &args));
            }
            ChangeKind::Propose => {
                let value = json!({ "serial": serial });
                let args = ["change", "propose", "config", GOVERNED_KEY, "--value", &value.to_string(), "--emergency"];
                let proposed = self.client(node, format!("config {GOVERNED_KEY}"), vec![value], None, &strings(&args));
                self.proposals.extend(proposed.clone());
                return Ok(proposed);
            }
            ChangeKind::Approve { nth } => {
                let Some(proposal) =
                    (!self.proposals.is_empty()).then(|| self.proposals[nth % self.proposals.len()].clone())
                else {
                    return Ok(None);
                };
                let mut args = strings(&["change", "approve", &proposal]);
                args.extend(["--signing-key".to_owned(), self.operators.bob.display().to_string()]);
                // No values: an enactment serves the value its proposal wrote.
                return Ok(self.client(node, format!("approve {GOVERNED_KEY}"), Vec::new(), None, &args));
            }
        };
        Ok(self.client(node, what, values, None, &args))
    }

    /// Runs a client command on `node` and records it; the generation it acknowledged.
    fn client(
        &mut self,
        node: usize,
        what: String,
        values: Vec<Value>,
        target: Option<String>,
        args: &[String],
    ) -> Option<String> {
        let node = &self.cluster.nodes[node];
        let t_ms = self.recorder.now_ms();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Every change is signed, by Alice unless the command names another key (an approval).
        let alice = self.operators.alice.display().to_string();
        if !args.contains(&"--signing-key") {
            args.extend(["--signing-key", &alice]);
        }
        /// What a change, a proposal, a vote and a rollback all answer (`Accepted`, `Proposed`,
        /// `Voted`, `Rollback`): the generation they wrote or target.
        #[derive(serde::Deserialize)]
        struct Named {
            generation: String,
        }
        let outcome = node.cli_as::<Named>(&args).map(|answer| answer.generation).map_err(|e| format!("{e:#}"));
        let text = match &outcome {
            Ok(generation) => format!("{} {what} {values:?} -> ok {generation}", node.name),
            Err(error) => format!("{} {what} {values:?} -> error: {}", node.name, error.trim()),
        };
        self.recorder.event(text);
        if let (Ok(generation), None) = (&outcome, &target) {
            self.acked.push(generation.clone());
        }
        let op = Op { t_ms, node: node.name.clone(), what, values, target, outcome: outcome.clone() };
        self.recorder.history.lock().expect("history lock").ops.push(op);
        outcome.ok()
    }

    /// Injects a fault; false when it could not be (its victim was already down, or the
    /// cluster never converged before a store damage).
    fn inject(&mut self, fault: &Fault, index: usize) -> Result<bool> {
        match fault {
            Fault::Partition { .. } | Fault::OneWay { .. } | Fault::Loss { .. } => {
                self.apply_network(fault, None)?;
                self.network = Some(fault.clone());
            }
            Fault::Flap { groups, period_ms } => self.flap(groups.clone(), *period_ms),
            Fault::Freeze { node } => {
                self.down.lock().expect("down lock").insert(*node);
                self.cluster.nodes[*node].freeze(true)?;
                self.frozen.insert(*node);
            }
            Fault::Kill { node, during } => return self.kill(*node, *during, index),
            Fault::Skew { node, ms } => {
                self.skews.insert(*node, *ms);
                self.restart(*node)?;
            }
            Fault::Corrupt { node, damage } => {
                // Only a store whose every acknowledged change is held elsewhere too: the
                // suite checks that a damaged store is recovered, not that data only one disk
                // held survives losing that disk (D54).
                if let Err(error) = self.wait_converged(Duration::from_secs(30)) {
                    self.recorder.event(format!("corruption skipped, the cluster did not converge: {error}"));
                    return Ok(false);
                }
                self.down.lock().expect("down lock").insert(*node);
                self.cluster.nodes[*node].kill9();
                let file = self.cluster.nodes[*node].data.join("grapevine.redb");
                damage_file(&file, *damage, self.seed ^ index as u64, 0.5)?;
                let name = self.cluster.nodes[*node].name.clone();
                let mut history = self.recorder.history.lock().expect("history lock");
                let damages = history.corruptions.entry(name).or_default();
                match damage {
                    Damage::Truncate => damages.truncated += 1,
                    Damage::Garble => damages.garbled += 1,
                }
                drop(history);
                self.start(*node)?;
            }
        }
        Ok(true)
    }

    /// `kill -9` of `node`, timed to interrupt what `during` says; restarted at the heal.
    fn kill(&mut self, node: usize, during: Interrupt, index: usize) -> Result<bool> {
        let serial = 1_000_000 + index as u64;
        let other = self.up((node + 1) % self.cluster.nodes.len());
        let victim = match during {
            Interrupt::Anything => node,
            Interrupt::Wave => {
                self.change(other, &ChangeKind::GoodApp, serial)?;
                std::thread::sleep(Duration::from_millis(300));
                node
            }
            Interrupt::Render => {
                self.change(other, &ChangeKind::AppAtOnce, serial)?;
                std::thread::sleep(Duration::from_millis(serial % 40));
                node
            }
            Interrupt::Revert => {
                // The canary of a bad change, as soon as it reports the change anomalous.
                let Some(generation) = self.change(other, &ChangeKind::BadApp, serial)? else { return Ok(false) };
                let asked = &self.cluster.nodes[other];
                let deadline = Instant::now() + Duration::from_secs(8);
                let mut canary = None;
                while Instant::now() < deadline {
                    if let Ok(view) = asked.rollout(&generation) {
                        let name = view.waves.first().and_then(|wave| wave.members.first());
                        if !view.anomaly_quorum.anomalous.is_empty() {
                            canary = name.map(|member| member.name.to_string());
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let named = canary.and_then(|name| self.cluster.nodes.iter().position(|n| n.name == name));
                match named {
                    Some(canary) if !self.frozen.contains(&canary) && !self.killed.contains(&canary) => canary,
                    _ => node,
                }
            }
        };
        if self.frozen.contains(&victim) || self.killed.contains(&victim) {
            return Ok(false);
        }
        self.down.lock().expect("down lock").insert(victim);
        self.cluster.nodes[victim].kill9();
        self.recorder.event(format!("killed {}", self.cluster.nodes[victim].name));
        self.killed.insert(victim);
        Ok(true)
    }

    /// Applies a network fault: iptables rules in the namespace (they hold for nodes down or
    /// restarted), or the link filters of the nodes that are up (a frozen node would take a
    /// rule only once resumed, perhaps after the heal; a killed one has no filter). With
    /// `only`, just the rules `only` holds: it restarted with an empty filter.
    fn apply_network(&self, fault: &Fault, only: Option<usize>) -> Result<()> {
        let links = self.cluster.links();
        let down = self.down.lock().expect("down lock").clone();
        let holds = |node: usize| (links.in_netns() || !down.contains(&node)) && only.is_none_or(|o| o == node);
        let n = self.cluster.nodes.len();
        match fault {
            Fault::Partition { groups } => {
                let group_of = |node: usize| groups.iter().position(|g| g.contains(&node));
                for (a, b) in (0..n).flat_map(|a| (0..n).map(move |b| (a, b))) {
                    if a != b && group_of(a) != group_of(b) && holds(a) {
                        links.cut(a, b, true)?;
                    }
                }
            }
            Fault::OneWay { from, to } if holds(*from) => to.iter().try_for_each(|r| links.cut(*from, *r, true))?,
            Fault::Loss { share } if links.in_netns() => self.cluster.loss(*share)?,
            Fault::Loss { share } => {
                (0..n).filter(|node| holds(*node)).try_for_each(|node| links.loss(node, *share))?
            }
            _ => {}
        }
        Ok(())
    }

    /// Links between the two groups go down and up every `period_ms` until the heal.
    fn flap(&mut self, groups: Vec<Vec<usize>>, period_ms: u64) {
        self.stop_flapping();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        // The flapper needs its own handles on the links: the netns name and gossip ports,
        // or the nodes' API addresses for their filters (skipping nodes that are down).
        let links = self.cluster.links();
        let down = self.down.clone();
        let handle = std::thread::spawn(move || {
            let mut cut = true;
            while !stopping.load(Ordering::Relaxed) {
                let down = down.lock().expect("down lock").clone();
                let holds = |node: &usize| links.in_netns() || !down.contains(node);
                for a in &groups[0] {
                    for b in &groups[1] {
                        if holds(a) {
                            let _ = links.cut(*a, *b, cut);
                        }
                        if holds(b) {
                            let _ = links.cut(*b, *a, cut);
                        }
                    }
                }
                cut = !cut;
                std::thread::sleep(Duration::from_millis(period_ms));
            }
        });
        self.flapper = Some(Background { stop, handle: Some(handle) });
    }

    fn stop_flapping(&mut self) {
        self.flapper = None;
    }

    /// Ends every fault: links pass, frozen nodes resume, killed nodes restart.
    fn heal(&mut self) -> Result<()> {
        self.stop_flapping();
        self.network = None;
        for node in std::mem::take(&mut self.frozen) {
            self.cluster.nodes[node].freeze(false)?;
            self.down.lock().expect("down lock").remove(&node);
        }
        self.cluster.heal()?;
        for node in std::mem::take(&mut self.killed) {
            self.start(node)?;
        }
        Ok(())
    }

    fn restart(&mut self, node: usize) -> Result<()> {
        self.down.lock().expect("down lock").insert(node);
        self.cluster.nodes[node].kill9();
        self.start(node)
    }

    /// Starts `node` with its config (and skew), and re-applies the network fault in force.
    fn start(&mut self, node: usize) -> Result<()> {
        let skew = self.skews.get(&node).copied().unwrap_or(0);
        let config = node_config(&self.cluster.nodes[node], skew, &self.operators.root);
        self.cluster.nodes[node].config_toml = config;
        self.cluster.nodes[node].start()?;
        self.down.lock().expect("down lock").remove(&node);
        match self.network.clone() {
            Some(fault) if !self.cluster.in_netns() => self.apply_network(&fault, Some(node)),
            _ => Ok(()),
        }
    }

    /// Waits until every node is up and serving, holds the same log and reverts, and has
    /// applied every generation whose wave is open for it (`/readyz`), and nothing changes on
    /// any node for `QUIET` (a rollout still baking opens its next wave within about a bake
    /// and a verdict, 1.6 s here; one stalled between waves stays as it is).
    fn wait_converged(&self, timeout: Duration) -> Result<()> {
        const POLL: Duration = Duration::from_millis(500);
        const QUIET: Duration = Duration::from_secs(4);
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut stable: Option<(Value, Instant)> = None;
        while Instant::now() < deadline {
            match self.agreement() {
                Ok(states) => match &stable {
                    Some((before, since)) if *before == states => {
                        if since.elapsed() >= QUIET {
                            return Ok(());
                        }
                    }
                    _ => stable = Some((states, Instant::now())),
                },
                Err(why) => {
                    stable = None;
                    last = why.to_string();
                }
            }
            std::thread::sleep(POLL);
        }
        anyhow::bail!("not converged {timeout:?} after the heal: {last}")
    }

    /// Every node's applied state, once every node is ready and holds the same log and
    /// reverts; why not, otherwise.
    fn agreement(&self) -> Result<Value> {
        let mut seen: Option<(String, Value)> = None;
        let mut states = Vec::new();
        for node in &self.cluster.nodes {
            let timeout = Duration::from_secs(5);
            let (code, body) = http_request_within("GET", &format!("{}/v1/status", node.url()), None, timeout)?;
            anyhow::ensure!(code == 200, "{}: status {code}", node.name);
            let status: Status = serde_json::from_str(&body)?;
            anyhow::ensure!(status.recovering.is_none(), "{} is recovering", node.name);
            let (ready, body) = http_request_within("GET", &format!("{}/readyz", node.url()), None, timeout)?;
            anyhow::ensure!(ready == 200, "{} is not ready: {body}", node.name);
            // Membership too: a node that sees a member as dead ignores its reports.
            let alive = status.alive().count();
            anyhow::ensure!(alive == self.cluster.nodes.len(), "{} sees {alive} members alive", node.name);
            // Not the state digest: a rollout stalled in a closed wave legally leaves nodes apart.
            let summary = json!([status.version_vector, status.reverted]);
            match &seen {
                None => seen = Some((node.name.clone(), summary)),
                Some((first, theirs)) => {
                    anyhow::ensure!(*theirs == summary, "{first} holds {theirs}, {} holds {summary}", node.name)
                }
            }
            states.push(Value::from(status.state_digest));
        }
        Ok(Value::Array(states))
    }
}

/// Damages a store file as `damage` says; a garble hits each page in use after the header's
/// with probability `share` (64 random bytes at a random place in it).
pub fn damage_file(path: &Path, damage: Damage, seed: u64, share: f64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let length = std::fs::metadata(path)?.len();
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    match damage {
        Damage::Truncate => file.set_len(length / 2)?,
        Damage::Garble => {
            let mut random = grapevine_proto::sim::SplitMix64::new(seed);
            let bytes = std::fs::read(path)?;
            let in_use: Vec<usize> = bytes
                .chunks(4096)
                .enumerate()
                .skip(1)
                .filter(|(_, page)| page.iter().any(|b| *b != 0))
                .map(|(i, _)| i)
                .collect();
            for page in in_use {
                if random.next_unit() < share {
                    let garbage: Vec<u8> = (0..64).map(|_| random.next_u64() as u8).collect();
                    file.seek(SeekFrom::Start(page as u64 * 4096 + random.below(4096 - 64) as u64))?;
                    file.write_all(&garbage)?;
                }
            }
        }
    }
    file.sync_all()?;
    Ok(())
}

/// Polls every node that is up, every 250 ms: what it serves for each key (config, OFREP, the
/// rendered file), and every second its recent rollouts (anomaly quorums, release evidence).
fn observe(cluster: &Cluster, recorder: Arc<Recorder>, down: Arc<Mutex<BTreeSet<usize>>>) -> Background {
    let nodes: Vec<(String, String, PathBuf)> =
        cluster.nodes.iter().map(|n| (n.name.clone(), n.url(), app_file(n))).collect();
    let links = cluster.links();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let handle = std::thread::spawn(move || {
        if let Err(error) = links.enter_netns() {
            recorder.event(format!("the observer cannot enter the network namespace: {error}"));
            return;
        }
        let mut last: BTreeMap<(String, &'static str, String), Value> = BTreeMap::new();
        let timeout = Duration::from_secs(2);
        let mut round = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            for (index, (name, url, file)) in nodes.iter().enumerate() {
                if down.lock().expect("down lock").contains(&index) {
                    continue;
                }
                let mut seen: Vec<(&'static str, String, Value, Option<String>)> = Vec::new();
                for key in [APP_KEY, GOVERNED_KEY].into_iter().chain(OTHER_KEYS.iter().copied()) {
                    if let Ok((200, body)) = http_request_within(
                        "GET",
                        &format!("{url}/v1/config/{}", key.replace('/', "%2F")),
                        None,
                        timeout,
                    ) && let Ok(answer) = serde_json::from_str::<Value>(&body)
                    {
                        let generation = answer["generation"].as_str().map(str::to_owned);
                        seen.push(("config", key.to_owned(), answer["value"].clone(), generation));
                    }
                }
                let context = r#"{"context": {"targetingKey": "user-1"}}"#;
                let url_flags = format!("{url}/ofrep/v1/evaluate/flags");
                if let Ok((200, body)) = http_request_within("POST", &url_flags, Some(context), timeout)
                    && let Ok(answer) = serde_json::from_str::<Value>(&body)
                {
                    for flag in answer["flags"].as_array().into_iter().flatten() {
                        if let Some(key) = flag["key"].as_str() {
                            seen.push(("ofrep", key.to_owned(), flag["value"].clone(), None));
                        }
                    }
                }
                if let Ok(text) = std::fs::read_to_string(file) {
                    // A torn or invented file shows as text that is no JSON value written.
                    let value =
                        serde_json::from_str::<Value>(&text).unwrap_or(Value::String(format!("UNPARSED:{text}")));
                    seen.push(("file", APP_KEY.to_owned(), value, None));
                }
                let t_ms = recorder.now_ms();
                let mut history = recorder.history.lock().expect("history lock");
                for (source, key, value, generation) in seen {
                    let slot = (name.clone(), source, key.clone());
                    if last.get(&slot) != Some(&value) {
                        last.insert(slot, value.clone());
                        history.observations.push(Observation {
                            t_ms,
                            node: name.clone(),
                            source,
                            key,
                            value,
                            generation,
                        });
                    }
                }
                drop(history);
                if round.is_multiple_of(4) {
                    observe_rollouts(name, url, &recorder);
                }
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    Background { stop, handle: Some(handle) }
}

/// Records, from one node's recent history, the anomaly quorums it shows reached and the
/// evidence of its releases.
fn observe_rollouts(name: &str, url: &str, recorder: &Recorder) {
    let Ok((200, body)) =
        http_request_within("GET", &format!("{url}/v1/history?limit=40"), None, Duration::from_secs(2))
    else {
        return;
    };
    let Ok(history) = serde_json::from_str::<Value>(&body) else { return };
    let mut recorded = recorder.history.lock().expect("history lock");
    for generation in history["generations"].as_array().into_iter().flatten() {
        let (Some(id), Some(rollout)) = (generation["id"].as_str(), check::Rollout::from_json(&generation["rollout"]))
        else {
            continue;
        };
        if check::quorum_reached(&rollout) && !recorded.quorum_seen.contains_key(id) {
            recorded.quorum_seen.insert(id.to_owned(), format!("{name}'s view: {}", rollout.anomaly_quorum));
        }
        if rollout.release.is_some() {
            recorded.releases.entry((name.to_owned(), id.to_owned())).or_insert(rollout);
        }
    }
}

/// The summary table of a set of runs, and the violations with the history that shows each.
pub fn summary(reports: &[Report]) -> String {
    let mut out = String::new();
    let line = |out: &mut String, text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    const WIDTHS: [usize; 10] = [8, 7, 6, 7, 14, 8, 8, 9, 10, 8];
    let row = |cells: [String; 10]| -> String {
        cells.iter().zip(WIDTHS).map(|(cell, width)| format!("{cell:>width$}")).collect::<Vec<_>>().join(" ")
    };
    let header =
        ["seed", "faults", "steps", "network", "changes acked", "reverts", "stalled", "checked", "violations", "wall"];
    line(&mut out, row(header.map(String::from)));
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    for report in reports {
        for (kind, count) in &report.faults {
            *faults.entry(kind).or_default() += count;
        }
        line(
            &mut out,
            row([
                report.seed.to_string(),
                report.faults.values().sum::<usize>().to_string(),
                report.steps.to_string(),
                (if report.netns { "netns" } else { "filter" }).to_owned(),
                format!("{} of {}", report.changes_acked, report.changes_sent),
                report.reverts.to_string(),
                report.stalled.to_string(),
                report.checked.to_string(),
                report.violations.len().to_string(),
                format!("{:.1}s", report.wall.as_secs_f64()),
            ]),
        );
    }
    let total = |f: fn(&Report) -> usize| reports.iter().map(f).sum::<usize>();
    line(
        &mut out,
        row([
            format!("{} runs", reports.len()),
            total(|r| r.faults.values().sum()).to_string(),
            total(|r| r.steps).to_string(),
            String::new(),
            format!("{} of {}", total(|r| r.changes_acked), total(|r| r.changes_sent)),
            total(|r| r.reverts).to_string(),
            total(|r| r.stalled).to_string(),
            total(|r| r.checked).to_string(),
            total(|r| r.violations.len()).to_string(),
            format!("{:.1}s", reports.iter().map(|r| r.wall.as_secs_f64()).sum::<f64>()),
        ]),
    );
    line(&mut out, String::new());
    line(&mut out, "faults injected:".into());
    for (kind, count) in &faults {
        line(&mut out, format!("  {kind:<22} {count}"));
    }
    for report in reports {
        for violation in &report.violations {
            line(&mut out, String::new());
            line(
                &mut out,
                format!(
                    "VIOLATION (seed {}, replay: chaos --seed {}): {}",
                    report.seed, report.seed, violation.invariant
                ),
            );
            line(&mut out, format!("  {}", violation.detail));
            line(&mut out, format!("  whole history and node logs: {}", history_file(report.seed).display()));
            for evidence in &violation.history {
                line(&mut out, format!("    {evidence}"));
            }
        }
    }
    out
}
