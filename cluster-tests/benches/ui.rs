//! The fleet page's figures (issue 22, `docs/ui.md`): its first load on a node of a 400-member
//! fleet (the member ceiling) with 1,000 generations in its log, and how soon it shows a change
//! the node applied. Real processes and real HTTP on loopback: one `grapevine node`, the gossip
//! stand-in of `grapevine_cluster_tests::fleet` for the other 399 members, and headless
//! Chromium driven by `cluster-tests/ui/bench.mjs` (Playwright, as the browser test).
//!
//! The fleet: what the page shows of the members is what `GET /v1/status` and `GET
//! /v1/rollouts` answer, which is what the node's chitchat holds and its log records. The
//! stand-in makes 399 members arrive by gossip over QUIC with mutual TLS, live, labelled, each
//! holding what the node holds (their keys copied from the node's `/v1/status` after each of
//! its events); the node's log is filled before it starts with 1,000 released generations
//! whose rollouts name all 400 members (as `benches/growth.rs` fills one). See
//! `docs/benchmarks.md`, "The fleet page", for what that leaves out.
//!
//! Figures, each printed, none asserted:
//! - **First load**: a fresh browser context (empty cache) opens `/ui/#fleet`, reading
//!   anonymously (`[auth] anonymous = "read"`). The clock starts at the navigation (the page's
//!   `performance.timeOrigin`) and stops at the start of the frame after the one that first
//!   held all 400 rows (two `requestAnimationFrame`s after a `MutationObserver` saw them): the
//!   rows were laid out and painted. Bytes: Resource Timing's `transferSize` (headers and body)
//!   of each response complete by then, and by 2 s later (a second read belongs to the load).
//! - **Change to page**: the page open on `#rollouts`; the driver POSTs a config key (one wave:
//!   the node applies it at once), the node's `GET /v1/watch` tells the driver when it applied
//!   it (the clock starts), and a `MutationObserver` in the page notes when the rollout entered
//!   the DOM (it stops). Both read the machine's wall clock.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench ui` (quick mode,
//! `GRAPEVINE_BENCH_QUICK=1`: one load, three changes). It needs `/usr/bin/chromium` and `npm ci
//! --prefix cluster-tests/ui`; without them it prints a notice and a skipped row, unless
//! `GRAPEVINE_REQUIRE_BROWSER` is set (as `.ci/run` does), when it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use grapevine_cluster_tests::fleet::{self, Counts, Fleet, Mirror};
use grapevine_cluster_tests::{
    CHROMIUM, Cluster, TEST_LIMITS_TOML, TEST_TOKEN, bench_quick, browser_required, browser_scripts_dir,
    missing_browser_tools, suite_row, test_token_toml, wait_within,
};
use grapevine_node::store::Store;
use grapevine_node::tls::NodeTls;
use grapevine_node::transport::Transport;
use grapevine_proto::hlc::Stamp;
use grapevine_proto::{Change, GenId, Generation, GenerationBody, JsonText, NodeName, Op};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::{oneshot, watch};

/// Members of the fleet: the member ceiling (`MAX_MEMBERS`), the real node one of them.
const MEMBERS: usize = 400;
/// Generations in the node's log when it starts.
const GENERATIONS: usize = 1_000;
/// First loads and changes timed: (full run, quick mode).
const LOADS: (usize, usize) = (7, 1);
const CHANGES: (usize, usize) = (30, 3);
/// The filled generations are stamped a minute apart, the newest an hour ago: a log of weeks
/// of changes, past every watch window (the node judges none of them again).
const STAMP_SPACING_MS: u64 = 60_000;
const NEWEST_STAMP_AGO_MS: u64 = 3_600_000;
/// How long the 400 members may take to be live and in step with the node.
const FORMATION: Duration = Duration::from_secs(60);
/// The longest the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

fn member_names() -> Vec<String> {
    (1..MEMBERS).map(|index| format!("host-{index:03}")).collect()
}

/// A member's labels: three zones and three roles, as `[labels]` would give them.
fn labels(index: usize) -> String {
    let role = ["web", "api", "worker"][index % 3];
    format!("role={role},zone=eu-{}", index % 3 + 1)
}

/// A config value of about 300 bytes, a flag now and then: a service's settings.
fn ops(index: usize) -> Result<Vec<Op>> {
    let hosts: Vec<String> = (0..6).map(|h| format!("backend-{h}.zone-{}.example.internal", index % 3)).collect();
    let value = json!({"index": index, "timeout_ms": 250 + index % 100, "retries": 3, "hosts": hosts});
    let mut ops = vec![Op::PutConfig {
        key: format!("svc-{}", index % 100).parse()?,
        value: JsonText::from_value(&value)?,
        schema: None,
    }];
    if index.is_multiple_of(10) {
        let definition = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
        ops.push(Op::SetFlag {
            key: format!("flag-{}", index % 20).parse()?,
            definition: JsonText::from_value(&definition)?,
        });
    }
    Ok(ops)
}

/// Fills the store of node `name` in `data` with released generations whose rollouts name
/// every member, as the node would hold them after those changes.
fn fill_store(data: &Path, name: &str, others: &[String]) -> Result<()> {
    let origin: NodeName = name.parse()?;
    let mut members = vec![origin.clone()];
    members.extend(others.iter().map(|n| n.parse()).collect::<Result<Vec<NodeName>, _>>()?);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let first = now - NEWEST_STAMP_AGO_MS - GENERATIONS as u64 * STAMP_SPACING_MS;
    let mut generations = Vec::with_capacity(GENERATIONS);
    for seq in 1..=GENERATIONS as u64 {
        let body = GenerationBody {
            id: GenId { origin: origin.clone(), seq },
            hlc: Stamp { wall_ms: first + seq * STAMP_SPACING_MS, logical: 0 },
            members: members.clone().into(),
            groups: vec![],
            change: Change::with_ops(ops(seq as usize)?),
            author: Some("token:deploy".parse()?),
            signed: None,
            terms: None,
        };
        generations.push(body.seal());
    }
    let store = Store::open(data, &origin)?;
    store.put(&generations)?;
    store.release(&generations.iter().map(|g: &Generation| g.id().clone()).collect::<Vec<_>>())?;
    Ok(())
}

/// The keys the members copy from the node's status, so they hold what it holds.
fn mirror_of(status: &Value) -> Result<Mirror> {
    ensure!(status["reverted"] == 0, "the stand-in copies a reverts summary of no reverts only");
    let own = status["members"].as_array().and_then(|m| m.iter().find(|m| m["self"] == true)).context("self")?;
    let text = |value: &Value| value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    let mut keys = Mirror::new();
    for (origin, seq) in status["version_vector"].as_object().context("version_vector")? {
        keys.insert(format!("vv.{origin}"), seq.to_string());
    }
    keys.insert("applied".into(), text(&status["applied"]));
    keys.insert("generations".into(), status["generations"].to_string());
    keys.insert("digest".into(), text(&status["state_digest"]));
    keys.insert("wire".into(), own["wire"].to_string());
    keys.insert("signing".into(), text(&own["signing"]));
    // `proto::log::Log::reverts_digest` of no reverts: the count, and the first 8 bytes of
    // the SHA-256 of nothing.
    keys.insert("reverts".into(), format!("0.{}", &hex_of(&sha2::Sha256::digest(b""))[..16]));
    Ok(keys)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies the node's keys to the members after each event of its `GET /v1/events`.
async fn follow_node(api: String, mirror: watch::Sender<Mirror>) {
    let http = grapevine_cluster_tests::http_client();
    loop {
        let Ok(mut events) = http.get(format!("{api}/v1/events")).send().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(_)) = events.chunk().await {
            let status = async { http.get(format!("{api}/v1/status")).send().await?.json::<Value>().await };
            if let Ok(keys) = status.await.map_err(anyhow::Error::from).and_then(|s| mirror_of(&s)) {
                mirror.send_if_modified(|old| std::mem::replace(old, keys.clone()) != keys);
            }
        }
    }
}

/// Whether the node sees all 400 members live, each holding what it holds.
fn formed(status: &Value) -> bool {
    let Some(members) = status["members"].as_array() else { return false };
    let vector = &status["version_vector"];
    members.len() == MEMBERS && members.iter().all(|m| m["alive"] == true && m["version_vector"] == *vector)
}

struct StandIn {
    counts: Arc<Counts>,
    stop: oneshot::Sender<()>,
}

/// Binds the stand-in on loopback with a certificate of the cluster's CA and starts it and the
/// task that keeps its members in step with the node.
async fn start_stand_in(cluster: &Cluster, names: &[String]) -> Result<StandIn> {
    let node = &cluster.nodes[0];
    let tls_dir = cluster.dir.path().join("stand-in-tls");
    fleet::issue_certificate(&cluster.ca, names, &tls_dir)?;
    let tls = NodeTls::load(&tls_dir)?;
    let metrics = Arc::new(grapevine_node::metrics::Metrics::new());
    let (transport, inboxes) = Transport::bind("127.0.0.1:0".parse()?, &tls, metrics)?;
    let status: Value =
        grapevine_cluster_tests::http_client().get(format!("{}/v1/status", node.url())).send().await?.json().await?;
    let cluster_id = status["cluster"].as_str().context("cluster")?;
    let mut members = Fleet::new(cluster_id, names, labels, transport.local_addr());
    let keys = mirror_of(&status)?;
    members.mirror(&keys);
    let (mirror, mirrored) = watch::channel(keys);
    tokio::spawn(follow_node(node.url(), mirror));
    let counts = Arc::new(Counts::default());
    let (stop, stopped) = oneshot::channel();
    let shutdown = async {
        let _ = stopped.await;
    };
    tokio::spawn(fleet::run(members, transport, inboxes, node.gossip, mirrored, counts.clone(), shutdown));
    Ok(StandIn { counts, stop })
}

/// Runs `bench.mjs` against the node and returns its `RESULT` lines.
fn run_browser(api: &str, loads: usize, changes: usize) -> Result<Vec<Value>> {
    let mut script = Command::new("node")
        .arg(browser_scripts_dir().join("bench.mjs"))
        .env("GV_NODE", api)
        .env("GV_TOKEN", TEST_TOKEN)
        .env("GV_CHROMIUM", CHROMIUM)
        .env("GV_MEMBERS", MEMBERS.to_string())
        .env("GV_LOADS", loads.to_string())
        .env("GV_CHANGES", changes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running node cluster-tests/ui/bench.mjs")?;
    let Some(status) = wait_within(&mut script, SCRIPT_TIMEOUT)? else {
        let _ = script.kill();
        bail!("the browser script ran over {SCRIPT_TIMEOUT:?}");
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut script.stdout.take().context("stdout")?, &mut out)?;
    ensure!(status.success(), "the browser script failed: {status}");
    out.lines().filter_map(|l| l.strip_prefix("RESULT ")).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn main() -> Result<()> {
    let quick = bench_quick();
    if let Some(missing) = missing_browser_tools() {
        if browser_required() {
            bail!("the fleet page's benchmark needs {missing}, and GRAPEVINE_REQUIRE_BROWSER is set");
        }
        eprintln!("*** SKIPPED the fleet page's benchmark: missing {missing} ***");
        suite_row("fleet page (skipped: no browser)", &format!("missing {missing}"), "-", "-");
        return Ok(());
    }
    let (loads, changes) = if quick { (LOADS.1, CHANGES.1) } else { (LOADS.0, CHANGES.0) };
    let names = member_names();
    let mut cluster = Cluster::new(1)?;
    let node = &mut cluster.nodes[0];
    node.auth_toml = format!("[auth]\nanonymous = \"read\"\n{}{TEST_LIMITS_TOML}", test_token_toml());
    let filling = Instant::now();
    fill_store(&node.data, &node.name, &names)?;
    node.start()?;
    eprintln!("node up with {GENERATIONS} generations in {:.1} s", filling.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Runtime::new()?;
    let stand_in = runtime.block_on(start_stand_in(&cluster, &names))?;
    let api = cluster.nodes[0].url();
    let forming = Instant::now();
    runtime.block_on(async {
        let http = grapevine_cluster_tests::http_client();
        while !formed(&http.get(format!("{api}/v1/status")).send().await?.json().await?) {
            ensure!(
                forming.elapsed() < FORMATION,
                "the node did not see {MEMBERS} live members in step within {FORMATION:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })?;
    eprintln!("{MEMBERS} members live and in step after {:.1} s", forming.elapsed().as_secs_f64());
    let results = run_browser(&api, loads, changes)?;
    let counts = &stand_in.counts;
    eprintln!(
        "stand-in: {} gossip messages received, {} sent, {} clock probes answered, {} pushes and {} other streams refused",
        counts.messages_received.load(Ordering::Relaxed),
        counts.messages_sent.load(Ordering::Relaxed),
        counts.clock_probes.load(Ordering::Relaxed),
        counts.pushes_refused.load(Ordering::Relaxed),
        counts.others_refused.load(Ordering::Relaxed)
    );
    let _ = stand_in.stop.send(());
    report(&results, quick)
}

fn sorted(results: &[Value], kind: &str, field: &str) -> Vec<f64> {
    let mut values: Vec<f64> = results.iter().filter(|r| r["kind"] == kind).filter_map(|r| r[field].as_f64()).collect();
    values.sort_by(f64::total_cmp);
    values
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN)
}

fn report(results: &[Value], quick: bool) -> Result<()> {
    let rendered = sorted(results, "load", "rendered_ms");
    let bytes = sorted(results, "load", "bytes_rendered");
    let settled = sorted(results, "load", "bytes_settled");
    let shown = sorted(results, "change", "applied_to_shown_ms");
    let applied = sorted(results, "change", "post_to_applied_ms");
    ensure!(!rendered.is_empty() && !shown.is_empty(), "the browser script measured nothing");
    let kib = |b: f64| b / 1024.0;
    if let Some(first) = results.iter().find(|r| r["kind"] == "load") {
        for resource in first["resources"].as_array().into_iter().flatten() {
            println!("  first load: {:>9} bytes  {}", resource[1], resource[0].as_str().unwrap_or("?"));
        }
    }
    println!(
        "first load, {MEMBERS} members, {GENERATIONS} generations: rendered median {:.0} ms (min {:.0}, max {:.0}, {} loads); {:.0} KiB by then, {:.0} KiB within 2 s",
        percentile(&rendered, 0.5),
        rendered[0],
        rendered[rendered.len() - 1],
        rendered.len(),
        kib(percentile(&bytes, 0.5)),
        kib(percentile(&settled, 0.5)),
    );
    println!(
        "change applied on the node -> shown on the page: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} changes; POST -> applied p50 {:.1} ms)",
        percentile(&shown, 0.5),
        percentile(&shown, 0.9),
        shown[shown.len() - 1],
        shown.len(),
        percentile(&applied, 0.5),
    );
    let mode = if quick { ", quick mode" } else { "" };
    suite_row(
        &format!(
            "first load of the fleet view, {MEMBERS} members, {GENERATIONS} generations: rendered (median) / bytes{mode}"
        ),
        &format!("{:.0} ms / {:.0} KiB", percentile(&rendered, 0.5), kib(percentile(&bytes, 0.5))),
        "-",
        "-",
    );
    suite_row(
        &format!("change applied on the node to shown on the page (rollouts view), p50 / p90{mode}"),
        &format!("{:.0} / {:.0} ms", percentile(&shown, 0.5), percentile(&shown, 0.9)),
        "1 s (issue 22)",
        &format!("{:.2}x (p90)", percentile(&shown, 0.9) / 1000.0),
    );
    Ok(())
}
