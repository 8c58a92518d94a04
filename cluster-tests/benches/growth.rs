//! Whether a write slows down as the log grows: the same write on a fresh node and on a node
//! holding (nearly) the default retention of generations, side by side in one process.
//!
//! Two single-node in-process clusters (real QUIC, redb and HTTP): `fresh`, empty, and
//! `grown`, whose store is filled before it starts with [`GROWN`] generations (the default
//! retention, 10,000, minus the writes the bench makes, so compaction never starts), each
//! putting one config key (about 600 bytes of JSON) and setting one flag with a targeting rule:
//! 10,000 keys and 10,000 flags. The store is written in one transaction, released, as a node
//! restarted after taking those changes would find it: an honest node of that size in seconds
//! instead of the hours 10,000 writes took while each cost hundreds of ms.
//!
//! Figures, each measured alternately on the two nodes:
//! - a write: `POST /v1/config/KEY`, the clock started before the request is sent and stopped
//!   when the whole `200` answer is read (what `config put` waits for: stored durably, applied
//!   on this node, whose single wave is open); p50 and p90 of [`WRITES`] writes per node;
//! - `GET /v1/history?limit=1000`: same clock, median of [`HISTORY_RUNS`];
//! - the process's resident memory after the grown node started and took its writes (the
//!   fresh node, the bench's client and the runtime are in it too, so the figure is an upper
//!   bound; the growth over the process before the grown node started is printed with it).
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench growth` (quick mode,
//! `GRAPEVINE_BENCH_QUICK=1`: 1,000 generations and 20 writes; `GRAPEVINE_BENCH_GENERATIONS=N`
//! fills the store with N, past the retention to measure writes that each compact). Prints the figures and the
//! ratio write@grown / write@fresh; no assertion on speed.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_cluster_tests::{bench_quick, process_rss_kib, suite_row};
use grapevine_node::store::Store;
use grapevine_proto::hlc::Stamp;
use grapevine_proto::{Change, GenId, Generation, GenerationBody, JsonText, NodeName, Op};
use serde_json::json;

/// The default retention (`retain_generations`): the largest log a node keeps whole.
const RETENTION: usize = 10_000;
/// Writes timed per node (and per node again as warm-up, untimed).
const WRITES: usize = 50;
const WARMUP: usize = 5;
/// Generations in the grown node's store: with the bench's writes, exactly the retention.
const GROWN: usize = RETENTION - WRITES - WARMUP;
/// History requests timed per node.
const HISTORY_RUNS: usize = 5;
/// The generations' stamps start this far in the past, 1 ms apart: older than the default
/// watch window, so the grown node does not start judging them all again (a node restarted
/// after days of changes does not either).
const STAMPED_AGO_MS: u64 = 24 * 3600 * 1000;

/// A config value of about 600 bytes: a realistic service setting, not a one-byte toy.
fn config_value(index: usize) -> serde_json::Value {
    let hosts: Vec<String> = (0..12).map(|h| format!("backend-{h}.zone-{}.example.internal", index % 7)).collect();
    json!({"index": index, "timeout_ms": 250 + index % 100, "retries": 3, "hosts": hosts, "tls": true})
}

/// A boolean flag on for one domain: each flag carries a prepared targeting rule.
fn flag_definition(index: usize) -> String {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, format!("@tenant-{index}.example.com")]}, "on", "off"]},
    })
    .to_string()
}

/// Generation `n0.seq`, as `n0` would have sealed it: one config key and one flag.
fn generation(name: &NodeName, seq: u64, wall_ms: u64) -> Result<Generation> {
    let index = seq as usize;
    let ops = vec![
        Op::PutConfig {
            key: format!("svc-{index}").parse()?,
            value: JsonText::from_value(&config_value(index))?,
            schema: None,
        },
        Op::SetFlag { key: format!("flag-{index}").parse()?, definition: JsonText::try_from(flag_definition(index))? },
    ];
    let body = GenerationBody {
        id: GenId { origin: name.clone(), seq },
        hlc: Stamp { wall_ms, logical: 0 },
        members: vec![name.clone()].into(),
        groups: vec![],
        change: Change::with_ops(ops),
        author: None,
        signed: None,
        terms: None,
    };
    Ok(body.seal())
}

/// Fills the store of node `n0` in `data` with `count` released generations.
fn fill_store(data: &Path, count: usize) -> Result<()> {
    let name: NodeName = "n0".parse()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let first = now - STAMPED_AGO_MS;
    let generations = (1..=count as u64).map(|seq| generation(&name, seq, first + seq)).collect::<Result<Vec<_>>>()?;
    let store = Store::open(data, &name)?;
    store.put(&generations)?;
    let ids: Vec<GenId> = generations.iter().map(|g| g.id().clone()).collect();
    store.release(&ids)?;
    Ok(())
}

/// One timed write of `key` on the node at `api`: from sending the request to reading the 200.
async fn timed_write(http: &reqwest::Client, api: &str, key: &str, value: usize) -> Result<Duration> {
    let url = format!("{api}/v1/config/{key}");
    let started = Instant::now();
    let answer = http.post(url).json(&json!({"value": config_value(value)})).send().await?;
    let status = answer.status();
    let body = answer.bytes().await?;
    let took = started.elapsed();
    ensure!(status.is_success(), "write refused: {status} {}", String::from_utf8_lossy(&body));
    Ok(took)
}

/// One timed `GET /v1/history?limit=1000`; returns the time and how many generations it listed.
async fn timed_history(http: &reqwest::Client, api: &str) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let answer = http.get(format!("{api}/v1/history?limit=1000")).send().await?;
    let status = answer.status();
    let body = answer.bytes().await?;
    let took = started.elapsed();
    ensure!(status.is_success(), "history refused: {status}");
    let listed: serde_json::Value = serde_json::from_slice(&body)?;
    Ok((took, listed["generations"].as_array().map_or(0, Vec::len)))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    ms(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn api(cluster: &InProcessCluster) -> String {
    format!("http://{}", cluster.nodes[0].api_addr)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = bench_quick();
    let (generations, writes) = if quick { (1_000, 20) } else { (GROWN, WRITES) };
    // A node past its retention (each write then compacts) is measured by asking for more.
    let generations =
        std::env::var("GRAPEVINE_BENCH_GENERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(generations);
    let fresh = InProcessCluster::start(1, |_, _, _| {}).await?;
    let rss_before_kib = process_rss_kib();
    let filled = Instant::now();
    let grown = InProcessCluster::start(1, |_, _, raw| {
        let data = raw.data.clone().expect("the harness names a data directory");
        fill_store(&data, generations).expect("filling the grown node's store");
    })
    .await?;
    let held = grown.nodes[0].engine().view().generations;
    ensure!(held == generations, "the grown node holds {held} generations, not {generations}");
    eprintln!("grown node: {held} generations, started in {:.1} s", filled.elapsed().as_secs_f64());
    let (fresh_api, grown_api) = (api(&fresh), api(&grown));
    let http = grapevine_cluster_tests::http_client();
    let (mut at_fresh, mut at_grown) = (Vec::new(), Vec::new());
    for round in 0..WARMUP + writes {
        // Alternate which node goes first, so neither always follows the other's fsync.
        let key = format!("svc-{}", round % 100);
        let mut pair = [(&fresh_api, &mut at_fresh), (&grown_api, &mut at_grown)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (api, times) in pair {
            let took = timed_write(&http, api, &key, round).await?;
            if round >= WARMUP {
                times.push(took);
            }
        }
    }
    let (mut history_fresh, mut history_grown) = (Vec::new(), Vec::new());
    let mut listed = 0;
    for _ in 0..HISTORY_RUNS {
        history_fresh.push(timed_history(&http, &fresh_api).await?.0);
        let (took, count) = timed_history(&http, &grown_api).await?;
        history_grown.push(took);
        listed = count;
    }
    let rss_kib = process_rss_kib();
    // What the grown node holds whole now: its writes on top, less what they compacted.
    let held = grown.nodes[0].engine().view().generations;
    report(&Figures {
        generations,
        held,
        at_fresh,
        at_grown,
        history_fresh,
        history_grown,
        listed,
        rss_kib,
        rss_before_kib,
        quick,
    })
    .context("report")?;
    fresh.stop().await;
    grown.stop().await;
    Ok(())
}

struct Figures {
    generations: usize,
    held: usize,
    at_fresh: Vec<Duration>,
    at_grown: Vec<Duration>,
    history_fresh: Vec<Duration>,
    history_grown: Vec<Duration>,
    listed: usize,
    rss_kib: u64,
    rss_before_kib: u64,
    quick: bool,
}

fn report(figures: &Figures) -> Result<()> {
    let sorted = |values: &[Duration]| {
        let mut values = values.to_vec();
        values.sort();
        values
    };
    let (fresh, grown) = (sorted(&figures.at_fresh), sorted(&figures.at_grown));
    let (history_fresh, history_grown) = (sorted(&figures.history_fresh), sorted(&figures.history_grown));
    let (fresh_p50, grown_p50) = (percentile(&fresh, 0.5), percentile(&grown, 0.5));
    let ratio = grown_p50 / fresh_p50;
    let held = figures.held;
    let rss_mib = figures.rss_kib as f64 / 1024.0;
    let grew_mib = figures.rss_kib.saturating_sub(figures.rss_before_kib) as f64 / 1024.0;
    println!(
        "write, fresh node:        p50 {fresh_p50:.1} ms  p90 {:.1} ms  ({} writes)",
        percentile(&fresh, 0.9),
        fresh.len()
    );
    println!(
        "write, {} generations: p50 {grown_p50:.1} ms  p90 {:.1} ms  ({} writes)",
        figures.generations,
        percentile(&grown, 0.9),
        grown.len()
    );
    println!("ratio write@grown / write@fresh (p50): {ratio:.2}");
    println!(
        "history?limit=1000: fresh {:.1} ms, grown {:.1} ms ({} listed), medians of {HISTORY_RUNS}",
        percentile(&history_fresh, 0.5),
        percentile(&history_grown, 0.5),
        figures.listed
    );
    println!("process RSS: {rss_mib:.0} MiB ({grew_mib:.0} MiB more than before the grown node started)");
    let mode = if figures.quick { ", quick mode" } else { "" };
    let at = format!("{held} generations{mode}");
    suite_row(
        &format!("write at {at} vs on a fresh node (p50)"),
        &format!("{grown_p50:.1} ms"),
        &format!("{fresh_p50:.1} ms"),
        &format!("{ratio:.2}x"),
    );
    let history_p50 = percentile(&history_grown, 0.5);
    suite_row(
        &format!("history?limit=1000 at {at} (median)"),
        &format!("{history_p50:.0} ms"),
        &format!("{:.1} ms fresh", percentile(&history_fresh, 0.5)),
        &format!("{:.0}x", history_p50 / percentile(&history_fresh, 0.5)),
    );
    suite_row(
        &format!("process RSS at {at} (both nodes)"),
        &format!("{rss_mib:.0} MiB"),
        "150 MiB goal",
        &format!("{:.2}x", rss_mib / 150.0),
    );
    Ok(())
}
