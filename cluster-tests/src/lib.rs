//! A harness for multi-node tests: real `grapevine` processes on loopback, each with its own
//! data directory and certificate, driven only through the CLI and HTTP API a user has.
//!
//! The harness runs the `grapevine` binary next to the test binary, built by cargo with the
//! `testsuite` feature (the link-filter endpoint), asking cargo to bring it up to date first.
//! `scenario` drives in-process nodes instead, for partition and loss scenarios as data.
//!
//! - The parts: `Cluster`, `Node`, `Links`, `free_port`, `wait_until`, `check`, `http_request` (and
//!   `http_request_within`, with timeouts: a frozen node accepts connections but never answers),
//!   `can_use_netns`, and `WebhookSink` (a webhook receiver on loopback that records every JSON
//!   body posted to it).
//! - `binary()` runs `cargo build --bin grapevine -p grapevine-node --features testsuite` (cargo
//!   does nothing when the binary is fresh), or takes `GRAPEVINE_BIN`. `TEST_GOSSIP_INTERVAL_MS` is
//!   100.
//! - Each node starts with `--config` pointing at a file written from `Node::config_toml`, by
//!   default `[rollout]` `waves = "100%"`: one wave, so a change applies everywhere at once (most
//!   tests are about spreading). A test sets `config_toml` before `start` to change it.
//! - `Node::kill9` and `Node::terminate` stop a node with SIGKILL or SIGTERM; `Node::freeze` sends
//!   SIGSTOP or SIGCONT.
//! - Faults: `Cluster::partition(groups)`, `Cluster::cut(from, to, cut)` (one direction),
//!   `Cluster::loss(share)` and `Cluster::heal()`; `Cluster::links()` gives a `Links` that cuts
//!   links from another thread, and `Cluster::enter_netns()` moves the calling thread into the
//!   namespace (setns, `nix`) so its sockets reach the nodes. `Cluster::new_in_netns(count)` puts
//!   every node in a fresh network namespace (`gv-<pid>-<n>`, loopback up, each command run with
//!   `ip netns exec`), where faults are iptables rules on the nodes' UDP ports: DROP per (source
//!   port, destination port) pair for a partition, `-m statistic --mode random --probability P -j
//!   DROP` for loss, `-F INPUT` to heal. Without a namespace, the same calls go through each node's
//!   `/v1/testsuite/links` endpoint (`Node::set_link`, `Node::clear_links`). Dropping a `Cluster`
//!   kills its nodes and deletes its namespace.
//! - Benchmarks: `bench_quick()` is the suite's quick mode (`GRAPEVINE_BENCH_QUICK=1`), and
//!   `suite_row` prints one `SUITE|measure|grapevine|comparison|ratio` line per row of the suite's
//!   table. `fleet` stands in for the members of a large fleet (one endpoint speaking gossip for
//!   many), for the fleet page's benchmark.
//! - The browser: `CHROMIUM`, `browser_scripts_dir()` (`cluster-tests/ui`), `missing_browser_tools()`
//!   and `browser_required()` (`GRAPEVINE_REQUIRE_BROWSER`), for the fleet page's test and benchmark.

pub mod chaos;
pub mod fleet;
pub mod gherkin;
pub mod inproc;
pub mod providers;
pub mod scenario;
pub mod watch;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grapevine_node::replies;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Gossip interval of test clusters: short, so tests spend little time waiting for rounds.
pub const TEST_GOSSIP_INTERVAL_MS: u64 = 100;

/// The API token every test node accepts (role write, every key): CLI commands send it
/// (`GRAPEVINE_TOKEN`), and so do [`http_request`] and [`http_client`].
pub const TEST_TOKEN: &str = "gv_cluster-tests";

/// The `[auth]` of a test node's process: the test token, and the admin socket in its data
/// directory (the default); and `[limits]` far above what tests and benchmarks send from one
/// client (the limits have their own test).
pub fn test_auth_toml() -> String {
    format!("{}\n{TEST_LIMITS_TOML}", test_token_toml())
}

/// The `[[auth.token]]` of the test token alone.
pub fn test_token_toml() -> String {
    let digest = hex_sha256(TEST_TOKEN);
    format!("[[auth.token]]\nname = \"tests\"\nsha256 = \"{digest}\"\nrole = \"write\"\n")
}

/// `[limits]` of test nodes: high enough never to bite.
pub const TEST_LIMITS_TOML: &str = "[limits]\nadmin_per_s = 1000000\nadmin_burst = 1000000\napplications_per_s = 1000000\napplications_burst = 1000000\n";

/// [`TEST_LIMITS_TOML`] for in-process nodes.
pub fn in_process_limits() -> grapevine_node::api::limits::LimitsSection {
    grapevine_node::api::limits::LimitsSection {
        admin_per_s: Some(1_000_000),
        admin_burst: Some(1_000_000),
        applications_per_s: Some(1_000_000),
        applications_burst: Some(1_000_000),
        api_connections: None,
    }
}

/// The `[auth]` of an in-process node: the test token, anonymous requests allowed to write
/// (in-process clusters are on loopback, inside one test), and no admin socket.
pub fn in_process_auth() -> grapevine_node::auth::AuthSection {
    grapevine_node::auth::AuthSection {
        socket: Some(PathBuf::new()),
        anonymous: Some("write".into()),
        token: Some(vec![grapevine_node::auth::TokenSection {
            name: "tests".into(),
            sha256: hex_sha256(TEST_TOKEN),
            role: grapevine_node::auth::Role::Write,
            prefixes: None,
        }]),
        ..Default::default()
    }
}

fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP client that sends the test token with every request.
pub fn http_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {TEST_TOKEN}");
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().expect("a valid header"));
    reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client")
}

/// The `grapevine` binary under test.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(path) = std::env::var("GRAPEVINE_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test binary has a path");
        // target/<profile>/deps/<test>, or target/<profile>/<this runner> -> target/<profile>/grapevine
        let dir = exe.parent().expect("a binary lives in a directory");
        let profile_dir = if dir.ends_with("deps") { dir.parent().expect("deps has a parent") } else { dir };
        let binary = profile_dir.join("grapevine");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--bin", "grapevine", "-p", "grapevine-node", "--features", "testsuite"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        // Always ask cargo: it rebuilds a stale binary and does nothing for a fresh one.
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the grapevine binary failed");
        assert!(binary.exists(), "no grapevine binary at {}", binary.display());
        binary
    })
}

/// A free port on loopback for UDP (gossip) or TCP (API), reserved for this process's lifetime.
///
/// Port 0 would be racy twice over: the kernel hands the same ephemeral ports to every
/// outgoing connection (a CLI command, an HTTP client) and to the next `bind(0)`, so between
/// this call and the node's bind another test could take the port. Instead the port comes from
/// below the kernel's ephemeral range (`ip_local_port_range`), where nothing is handed out
/// automatically, and is reserved among concurrent test processes by an advisory lock on a file
/// named after it (`$TMPDIR/grapevine-test-ports/<port>`), held until this process exits (the
/// kernel drops it even on SIGKILL). Within the process a counter never gives a port twice. The
/// port is also bound once, UDP or TCP as asked, to skip ports another program listens on. When
/// the range below the ephemeral one is too small, it falls back to the kernel's choice.
pub fn free_port(udp: bool) -> u16 {
    let bound = |port: u16| {
        if udp {
            UdpSocket::bind(("127.0.0.1", port)).and_then(|s| s.local_addr())
        } else {
            TcpListener::bind(("127.0.0.1", port)).and_then(|s| s.local_addr())
        }
        .map(|address| address.port())
    };
    reserved_port(&bound).unwrap_or_else(|| bound(0).expect("a free port on loopback"))
}

/// The lowest port [`free_port`] reserves; it reserves up to the kernel's ephemeral range.
const RESERVED_PORTS_FROM: u16 = 20_000;

fn reserved_port(bound: &dyn Fn(u16) -> std::io::Result<u16>) -> Option<u16> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    // Locks held for the life of the process: dropping one would free its port for others.
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())?;
    let span = u32::from(ephemeral_from.checked_sub(RESERVED_PORTS_FROM).filter(|span| *span >= 1024)?);
    let dir = std::env::temp_dir().join("grapevine-test-ports");
    std::fs::create_dir_all(&dir).ok()?;
    // Processes start at spread-out places, so they seldom contend for the same locks.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = RESERVED_PORTS_FROM + offset as u16;
        let Ok(file) =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_ok() && bound(port).is_ok() {
            HELD.lock().expect("the port locks are never poisoned").push(file);
            return Some(port);
        }
    }
    None
}

/// Runs `grapevine` with `args` and waits for it.
pub fn grapevine(args: &[&str]) -> Output {
    Command::new(binary()).args(args).env_remove("GRAPEVINE_NODE").output().expect("grapevine runs")
}

/// One node of a test cluster.
pub struct Node {
    pub name: String,
    pub gossip: SocketAddr,
    pub api: SocketAddr,
    pub data: PathBuf,
    pub tls: PathBuf,
    /// Gossip addresses the node joins through (`--seed`): the first node's, unless a test sets
    /// others.
    pub seeds: Vec<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
    /// `--gossip-interval-ms`; the node's default (1000) when `None`.
    pub gossip_interval_ms: Option<u64>,
    /// The network namespace the node and its CLI commands run in, if any.
    netns: Option<String>,
    /// The node's config file. By default changes apply everywhere at once (one wave):
    /// most tests are about spreading, not rolling out.
    pub config_toml: String,
    /// Appended to the config file: `[auth]` ([`test_auth_toml`] unless a test sets another).
    pub auth_toml: String,
    /// Environment variables of the node's process (test hooks of the `testsuite` feature).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `grapevine`, inside the node's network namespace when it has one.
    fn command(&self) -> Command {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns".as_ref(), "exec".as_ref(), netns.as_ref(), binary().as_os_str()]);
                command
            }
            None => Command::new(binary()),
        };
        command.env_remove("GRAPEVINE_NODE").env("GRAPEVINE_TOKEN", TEST_TOKEN);
        command
    }

    /// Starts the node's process and waits until its API answers.
    pub fn start(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let config = self.data.with_extension("toml");
        std::fs::write(&config, format!("{}\n{}", self.config_toml, self.auth_toml))?;
        let mut command = self.command();
        command
            .args(["node".as_ref(), "--config".as_ref(), config.as_os_str()])
            .args(["--name", &self.name])
            .args(["--listen", &self.gossip.to_string(), "--api", &self.api.to_string()])
            .args(["--data".as_ref(), self.data.as_os_str(), "--tls".as_ref(), self.tls.as_os_str()])
            .env("GRAPEVINE_LOG", "info,chitchat=warn")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(interval) = self.gossip_interval_ms {
            command.args(["--gossip-interval-ms", &interval.to_string()]);
        }
        for seed in &self.seeds {
            command.args(["--seed", &seed.to_string()]);
        }
        self.child = Some(command.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("just spawned").try_wait()? {
                self.child = None;
                bail!("{} exited with {status} at start:\n{}", self.name, self.log_text());
            }
            if self.cli(&["status"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not answer within 20 s:\n{}", self.name, self.log_text())
    }

    /// `kill -9`: no shutdown, no flush beyond what was already durable.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit and returns its status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        if let Some(status) = wait_within(&mut child, Duration::from_secs(10))? {
            return Ok(status);
        }
        let _ = child.kill();
        bail!("{} did not stop within 10 s of SIGTERM", self.name)
    }

    /// Runs a client command against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        let url = self.url();
        self.command().args(args).args(["--node", &url]).output().expect("grapevine runs")
    }

    /// Runs a client command with `--json` and parses what it printed.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.cli(&all);
        if !output.status.success() {
            bail!("grapevine {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Runs a client command with `--json` and reads what it printed as the node's reply `T`
    /// (`grapevine_node::replies`): the type the node answered with.
    pub fn cli_as<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let printed = self.cli_json(args)?;
        serde_json::from_value(printed.clone())
            .with_context(|| format!("grapevine {} printed another shape: {printed}", args.join(" ")))
    }

    /// `grapevine status`.
    pub fn status(&self) -> Result<replies::Status> {
        self.cli_as(&["status"])
    }

    /// `grapevine history` (the newest 100 generations).
    pub fn history(&self) -> Result<replies::History> {
        self.cli_as(&["history"])
    }

    /// `grapevine rollout status GEN`.
    pub fn rollout(&self, generation: &str) -> Result<replies::Rollout> {
        self.cli_as(&["rollout", "status", generation])
    }

    /// `grapevine config get KEY`: the applied value and the generation that set it.
    pub fn config(&self, key: &str) -> Result<replies::ConfigValue> {
        self.cli_as(&["config", "get", key])
    }

    /// A change command (`flag set`, `config put`, `apply`, ...) and what the node answered.
    pub fn change(&self, args: &[&str]) -> Result<replies::ChangeReply> {
        self.cli_as(args)
    }

    /// Sets a rule of the node's link filter (`POST /v1/testsuite/links`).
    pub fn set_link(&self, rule: &str) -> Result<()> {
        post_link_rule(&self.url(), rule).with_context(|| format!("on {}", self.name))
    }

    /// Clears the node's link filter (`DELETE /v1/testsuite/links`).
    pub fn clear_links(&self) -> Result<()> {
        let (status, body) = http_request("DELETE", &format!("{}/v1/testsuite/links", self.url()), None)?;
        anyhow::ensure!(status == 200, "clearing link rules on {} failed: {status} {body}", self.name);
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes or resumes, sockets open.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let pid = self.pid().context("not running")?.to_string();
        run_checked("kill", &[if frozen { "-STOP" } else { "-CONT" }, &pid])
    }

    /// The process id while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        if let Some(netns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
}

/// Nodes on loopback sharing one CA, in one temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub nodes: Vec<Node>,
    /// A private network namespace holding every node, where faults are iptables rules.
    netns: Option<String>,
}

/// True when this process may create network namespaces and set iptables rules (root, with
/// `ip` and `iptables` installed; `.ci/run` installs iptables).
pub fn can_use_netns() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let tools = ["ip", "iptables"].iter().all(|tool| Command::new(tool).arg("-V").output().is_ok());
    root && tools
}

fn run_checked(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

impl Cluster {
    /// Makes the CA and `count` node definitions (n1, n2, ...), all seeded with n1; starts none.
    pub fn new(count: usize) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        check(grapevine(&["ca", "init", "--out", path_str(&ca)]))?;
        let mut cluster = Cluster { dir, ca, nodes: Vec::new(), netns: None };
        for _ in 0..count {
            cluster.add_node()?;
        }
        Ok(cluster)
    }

    /// Like [`Cluster::new`], with every node in a fresh network namespace of its own, where
    /// partitions and loss are iptables rules on loopback. Needs [`can_use_netns`].
    pub fn new_in_netns(count: usize) -> Result<Cluster> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let netns = format!("gv-{}-{index}", std::process::id());
        run_checked("ip", &["netns", "add", &netns])?;
        let mut cluster = match Cluster::new(0) {
            Ok(cluster) => cluster,
            Err(error) => {
                let _ = Command::new("ip").args(["netns", "del", &netns]).status();
                return Err(error);
            }
        };
        cluster.netns = Some(netns.clone());
        run_checked("ip", &["netns", "exec", &netns, "ip", "link", "set", "lo", "up"])?;
        for _ in 0..count {
            cluster.add_node()?;
        }
        Ok(cluster)
    }

    /// Starts every defined node and waits until each sees all alive.
    pub fn start_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.start()?;
        }
        self.wait_formed(Self::FORMATION)
    }

    /// Cuts every link between nodes of different groups, both ways: iptables DROP rules per
    /// UDP port pair in the namespace, or each node's link filter without one.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<()> {
        let group_of = |node: usize| groups.iter().position(|g| g.contains(&node));
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b && group_of(a) != group_of(b) {
                    self.cut(a, b, true)?;
                }
            }
        }
        Ok(())
    }

    /// Drops (`cut`) or lets pass again what node `from` sends to node `to`, one way only: an
    /// iptables rule on their UDP ports in the namespace, or `from`'s link filter (a rule for
    /// what it sends to `to`) without one. Cutting both ways takes two calls.
    pub fn cut(&self, from: usize, to: usize, cut: bool) -> Result<()> {
        self.links().cut(from, to, cut)
    }

    /// What it takes to cut links, apart from the cluster: for a thread that flaps them.
    pub fn links(&self) -> Links {
        Links {
            netns: self.netns.clone(),
            gossip: self.nodes.iter().map(|n| n.gossip).collect(),
            api: self.nodes.iter().map(Node::url).collect(),
        }
    }

    /// Moves the calling thread into the cluster's network namespace, if it has one, so that
    /// its sockets reach the nodes' loopback addresses (CLI commands enter it on their own).
    pub fn enter_netns(&self) -> Result<()> {
        self.links().enter_netns()
    }

    /// Whether faults are iptables rules in a network namespace (else link-filter rules).
    pub fn in_netns(&self) -> bool {
        self.netns.is_some()
    }

    /// Drops `share` of the packets (with iptables) or messages (link filter) on every link.
    pub fn loss(&self, share: f64) -> Result<()> {
        match &self.netns {
            Some(netns) => {
                let probability = share.to_string();
                run_checked(
                    "ip",
                    &["netns", "exec", netns, "iptables", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode"]
                        .into_iter()
                        .chain(["random", "--probability", &probability, "-j", "DROP"])
                        .collect::<Vec<_>>(),
                )
            }
            None => (0..self.nodes.len()).try_for_each(|node| self.links().loss(node, share)),
        }
    }

    /// Every link passes again.
    pub fn heal(&self) -> Result<()> {
        match &self.netns {
            Some(netns) => run_checked("ip", &["netns", "exec", netns, "iptables", "-F", "INPUT"]),
            None => self.nodes.iter().filter(|n| n.child.is_some()).try_for_each(Node::clear_links),
        }
    }

    /// Starts `count` nodes and waits until each sees all alive.
    pub fn start(count: usize) -> Result<Cluster> {
        let mut cluster = Cluster::new(count)?;
        for node in &mut cluster.nodes {
            node.start()?;
        }
        cluster.wait_formed(Self::FORMATION)?;
        Ok(cluster)
    }

    /// Defines one more node with a certificate from the cluster CA.
    pub fn add_node(&mut self) -> Result<&mut Node> {
        let name = format!("n{}", self.nodes.len() + 1);
        let ca = self.ca.clone();
        self.add_node_with_ca(&name, &ca)
    }

    /// Defines a node whose certificate comes from the CA in `ca` (which may be foreign).
    pub fn add_node_with_ca(&mut self, name: &str, ca: &Path) -> Result<&mut Node> {
        let root = self.dir.path().join(name);
        let tls = root.join("tls");
        check(grapevine(&[
            "ca",
            "issue",
            "--ca",
            path_str(ca),
            "--name",
            name,
            "--ip",
            "127.0.0.1",
            "--out",
            path_str(&tls),
        ]))?;
        let gossip: SocketAddr = ([127, 0, 0, 1], free_port(true)).into();
        let seeds = self.nodes.first().map(|first| vec![first.gossip]).unwrap_or_default();
        self.nodes.push(Node {
            name: name.to_owned(),
            gossip,
            api: ([127, 0, 0, 1], free_port(false)).into(),
            data: root.join("data"),
            tls,
            seeds,
            log: root.join("node.log"),
            child: None,
            gossip_interval_ms: Some(TEST_GOSSIP_INTERVAL_MS),
            netns: self.netns.clone(),
            config_toml: "[rollout]\nwaves = \"100%\"\n".to_owned(),
            auth_toml: test_auth_toml(),
            env: Vec::new(),
        });
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Seeds every node with the next two (by index, wrapping), instead of only with n1 (which
    /// has none): a node that restarts then finds live members whichever others restarted,
    /// as in a fleet whose every host lists a few seeds.
    pub fn seed_each_other(&mut self) {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(|n| n.gossip).collect();
        let count = addrs.len();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            node.seeds = (1..=2.min(count - 1)).map(|step| addrs[(index + step) % count]).collect();
        }
    }

    /// How long a started cluster may take until every node sees every other alive. Formation
    /// takes one to three gossip rounds; the bound is for a test binary whose tests start some
    /// thirty debug nodes at once on two shared cores (a run of `.ci/run` once took over 20 s).
    pub const FORMATION: Duration = Duration::from_secs(45);

    /// Waits until every running node sees every running node alive. On timeout the error says,
    /// per node, whom it saw alive (or why it did not answer) and ends with its log's tail.
    pub fn wait_formed(&self, timeout: Duration) -> Result<()> {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let formed = wait_until(timeout, "the cluster to form", || {
            running
                .iter()
                .all(|node| alive_members(node).is_ok_and(|alive| running.iter().all(|n| alive.contains(&n.name))))
        });
        formed.map_err(|timeout| {
            let seen = running.iter().map(|node| {
                let alive = match alive_members(node) {
                    Ok(alive) => format!("sees alive {alive:?}"),
                    Err(error) => format!("does not answer: {error:#}"),
                };
                let log = node.log_text();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("{} ({}) {alive}; its log ends:\n{}", node.name, node.gossip, tail.join("\n"))
            });
            timeout.context(seen.collect::<Vec<_>>().join("\n"))
        })
    }
}

/// Sets a rule of the link filter of the node whose API is `api`, giving up after 2 s (a
/// frozen node accepts the connection but never answers).
fn post_link_rule(api: &str, rule: &str) -> Result<()> {
    let url = format!("{api}/v1/testsuite/links");
    let (status, body) = http_request_within("POST", &url, Some(rule), Duration::from_secs(2))?;
    anyhow::ensure!(status == 200, "setting link rule {rule} failed: {status} {body}");
    Ok(())
}

/// The links of a cluster, by node index.
pub struct Links {
    netns: Option<String>,
    gossip: Vec<SocketAddr>,
    api: Vec<String>,
}

impl Links {
    /// Whether faults are iptables rules in a network namespace (else link-filter rules).
    pub fn in_netns(&self) -> bool {
        self.netns.is_some()
    }

    /// Drops `share` of the messages node `node` sends and receives (its link filter).
    pub fn loss(&self, node: usize, share: f64) -> Result<()> {
        self.filter_rule(node, &format!(r#"{{"peer": null, "loss": {share}}}"#))
    }

    fn filter_rule(&self, node: usize, rule: &str) -> Result<()> {
        post_link_rule(&self.api[node], rule)
    }
    /// See [`Cluster::enter_netns`].
    pub fn enter_netns(&self) -> Result<()> {
        let Some(netns) = &self.netns else { return Ok(()) };
        let file = std::fs::File::open(format!("/var/run/netns/{netns}")).context("opening the namespace")?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
        Ok(())
    }

    /// See [`Cluster::cut`].
    pub fn cut(&self, from: usize, to: usize, cut: bool) -> Result<()> {
        match &self.netns {
            Some(netns) => {
                let (sport, dport) = (self.gossip[from].port().to_string(), self.gossip[to].port().to_string());
                let action = if cut { "-A" } else { "-D" };
                let rule = [action, "INPUT", "-p", "udp", "--sport", &sport, "--dport", &dport, "-j", "DROP"];
                let mut args = vec!["netns", "exec", netns, "iptables"];
                args.extend(rule);
                run_checked("ip", &args)
            }
            None => {
                let rule = format!(r#"{{"peer": "{}", "drop": {cut}, "outbound_only": true}}"#, self.gossip[to]);
                self.filter_rule(from, &rule)
            }
        }
    }
}

/// Names of the members `node` sees alive.
pub fn alive_members(node: &Node) -> Result<Vec<String>> {
    Ok(node.status()?.alive().map(str::to_owned).collect())
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Fails with the command's stderr unless it succeeded.
pub fn check(output: Output) -> Result<Output> {
    if !output.status.success() {
        bail!("command failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(output)
}

/// Makes operator key `name` in `dir` (`grapevine key new`); returns its file and public key.
pub fn new_key(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let file = dir.join(format!("{name}.key"));
    let output = check(grapevine(&["key", "new", "--name", name, "--out", path_str(&file)]))?;
    Ok((file, String::from_utf8(output.stdout)?.trim().to_owned()))
}

/// Delegates the key in file `key` by the root key in file `root`, for the test clusters' id
/// (`grapevine`), for keys under `prefixes` (every key when empty).
pub fn delegate(root: &Path, key: &Path, prefixes: &[&str]) -> Result<()> {
    let mut args = vec!["key", "delegate", "--root", path_str(root), "--key", path_str(key), "--cluster", "grapevine"];
    for prefix in prefixes {
        args.extend(["--prefix", prefix]);
    }
    check(grapevine(&args))?;
    Ok(())
}

/// A plain HTTP/1.1 GET over std networking: status code and body.
/// A counter on `node`'s `/metrics`, 0 before its first increment: the series `query` names
/// (`name{label="value"}`), or, for a bare name, the sum of all its series.
/// Waits for `child` to exit, for at most `timeout`: its status, or `None` once the time is up
/// (the child is left running: the caller kills it as it must).
pub fn wait_within(child: &mut std::process::Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn counter(node: &Node, query: &str) -> u64 {
    let Ok((200, text)) = http_get(&format!("{}/metrics", node.url())) else { return 0 };
    let labelled = format!("{query}{{");
    let series = text.lines().filter_map(|line| line.rsplit_once(' '));
    let matching = series.filter(|(series, _)| *series == query || series.starts_with(&labelled));
    matching.filter_map(|(_, value)| value.parse::<f64>().ok()).sum::<f64>() as u64
}

pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_request("GET", url, None)
}

/// A plain HTTP/1.1 request with an optional JSON body: status code and body.
pub fn http_request(method: &str, url: &str, body: Option<&str>) -> Result<(u16, String)> {
    http_request_within(method, url, body, Duration::from_secs(30))
}

/// [`http_request`], giving up after `timeout` to connect, and `timeout` for each read or
/// write: a frozen (SIGSTOP) node still completes TCP handshakes but never answers.
pub fn http_request_within(method: &str, url: &str, body: Option<&str>, timeout: Duration) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("an http:// URL")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr: SocketAddr = host.parse().context("an IP:PORT host")?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("an HTTP status line")?;
    Ok((status, body.to_owned()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A webhook receiver on loopback: records every JSON body POSTed to it and answers 200.
pub struct WebhookSink {
    addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl WebhookSink {
    pub fn start() -> Result<WebhookSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(body) = read_post(stream) {
                    recorded.lock().expect("sink lock").push(body);
                }
            }
        });
        Ok(WebhookSink { addr, bodies })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The bodies received so far.
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("sink lock").clone()
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body, answers 200, returns the JSON body.
fn read_post(mut stream: std::net::TcpStream) -> Option<Value> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&body).ok()
}

/// The next SSE event (keep-alive comments skipped), within 10 s.
pub async fn next_sse_event(stream: &mut reqwest::Response) -> Result<String> {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = stream.chunk().await?.context("the event stream ended")?;
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(end) = text.find("\n\n") {
                let event: String = text[..end].to_owned();
                if event.lines().any(|line| line.starts_with("data:")) {
                    return Ok(event);
                }
                text.drain(..end + 2);
            }
        }
    })
    .await
    .context("no event within 10 s")?
}

/// Debian's Chromium, which the fleet page's browser test and benchmark drive.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The directory of the fleet page's browser scripts (`test.mjs`, `bench.mjs`) and their
/// `node_modules`.
pub fn browser_scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// What is missing to drive the browser (Chromium, Node.js, `playwright-core`), if anything.
pub fn missing_browser_tools() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node (apt-get install nodejs)".to_owned());
    }
    if !browser_scripts_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core (npm ci --prefix cluster-tests/ui)".to_owned());
    }
    None
}

/// Whether a missing browser fails the run instead of skipping it (`.ci/run` sets
/// `GRAPEVINE_REQUIRE_BROWSER`).
pub fn browser_required() -> bool {
    std::env::var_os("GRAPEVINE_REQUIRE_BROWSER").is_some()
}

/// Whether benchmarks run in the suite's quick mode (`GRAPEVINE_BENCH_QUICK=1`): the fewest
/// sizes and runs that still exercise every measurement, for CI.
pub fn bench_quick() -> bool {
    std::env::var("GRAPEVINE_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Prints one row of the benchmark suite's table (`cargo run -p grapevine-cluster-tests
/// --release -- bench` collects the `SUITE|` lines of every benchmark).
pub fn suite_row(name: &str, grapevine: &str, comparison: &str, ratio: &str) {
    println!("SUITE|{name}|{grapevine}|{comparison}|{ratio}");
}

/// CPU seconds this process has used, user and system (`/proc/self/stat`'s utime and stime).
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).into_iter().flatten().filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// This process's resident memory, in KiB.
pub fn process_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}
