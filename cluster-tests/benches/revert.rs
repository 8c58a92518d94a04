//! How fast the cluster undoes a bad change, with 10 in-process nodes on loopback at the
//! default gossip interval (1 s) and the default rollout policy.
//!
//! Each node runs a simulated application that pushes 50 requests every 100 ms to its node
//! (`POST /v1/health`), all failing while the node serves the bad value, 1 in 100 otherwise.
//! Per run:
//! 1. an ordinary change (`--emergency`): time from the first node holding it (its origin) to
//!    the last node applying it; then an operator's rollback of it from another node, in the
//!    same quiet cluster: time from the first node holding the revert to the last;
//! 2. a bad change under the default policy (canary first): time from the first node holding
//!    the revert (the one that saw the quorum and wrote it) to the last node applying it, and
//!    from the first failed request on the canary to the last node applying the revert.
//!
//! The ratio of the medians of (2) and (1) is the figure: a revert should be no slower than a
//! change. What applications see is measured too, on each node's applied-state watch (`GET
//! /v1/watch`): from the first node holding the rollback until the value is gone from every
//! node's watch, and from the first failed request until the bad value is gone from the watch
//! of every node that served it. Run: `cargo bench -p grapevine-cluster-tests --bench revert`
//! (`GRAPEVINE_BENCH_RUNS=5`; `GRAPEVINE_BENCH_DETAIL` prints every arrival). It prints the
//! medians and the ratios of rollback and revert spread to change spread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_cluster_tests::watch::WatchRecorder;
use grapevine_node::engine::View;
use grapevine_node::health::HealthConfig;
use grapevine_proto::{GenId, Key};
use serde_json::json;

const NODES: usize = 10;

/// When each node's view first satisfied `condition`: (first, last).
async fn spread(
    cluster: &InProcessCluster,
    condition: impl Fn(&View) -> bool + Clone + Send + Sync + 'static,
) -> Result<(Instant, Instant)> {
    let mut waits = tokio::task::JoinSet::new();
    for node in &cluster.nodes {
        let (mut watch, condition) = (node.engine().watch(), condition.clone());
        waits.spawn(async move {
            tokio::time::timeout(Duration::from_secs(120), watch.wait_for(|view| condition(view))).await??;
            Ok::<Instant, anyhow::Error>(Instant::now())
        });
    }
    let mut times = Vec::new();
    for time in waits.join_all().await {
        times.push(time?);
    }
    if std::env::var("GRAPEVINE_BENCH_DETAIL").is_ok() {
        let first = *times.iter().min().context("nodes")?;
        let mut offsets: Vec<f64> = times.iter().map(|t| ms(*t - first)).collect();
        offsets.sort_by(f64::total_cmp);
        eprintln!("  arrivals (ms after the first): {offsets:.1?}");
    }
    Ok((*times.iter().min().context("nodes")?, *times.iter().max().context("nodes")?))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = grapevine_cluster_tests::bench_quick();
    let runs: usize =
        std::env::var("GRAPEVINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 1 } else { 5 });
    let cluster = InProcessCluster::start(NODES, |_, _, raw| {
        raw.health = Some(HealthConfig { push: true, ..HealthConfig::default() });
    })
    .await?;
    let apis: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}", n.api_addr)).collect();
    let views: Vec<_> = cluster.nodes.iter().map(|n| n.engine().clone()).collect();
    // The simulated applications: they fail while their node serves `"bad"` for the key.
    let bad_key: Arc<Mutex<Option<Key>>> = Arc::new(Mutex::new(None));
    let first_failure: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let applications = {
        let (bad_key, first_failure, apis) = (bad_key.clone(), first_failure.clone(), apis.clone());
        tokio::spawn(async move {
            let http = grapevine_cluster_tests::http_client();
            let mut tick = 0u64;
            loop {
                let key = bad_key.lock().unwrap().clone();
                for (api, engine) in apis.iter().zip(&views) {
                    tick += 1;
                    let broken = key.as_ref().is_some_and(|key| {
                        engine.view().state.config.get(key).is_some_and(|entry| entry.value.as_str() == "\"bad\"")
                    });
                    if broken {
                        first_failure.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    let errors = if broken { 50 } else { u64::from(tick.is_multiple_of(100)) };
                    let sample = json!({"requests": 50, "errors": errors, "latency_p99_ms": 20});
                    let _ = http.post(format!("{api}/v1/health")).json(&sample).send().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A baseline before the first change.
    tokio::time::sleep(Duration::from_secs(if quick { 2 } else { 5 })).await;
    let http = grapevine_cluster_tests::http_client();
    // What the applications see: each node's applied-state watch.
    let watch = WatchRecorder::start(&apis, "").await?;
    let (mut changes, mut rollbacks, mut reverts, mut loops) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut unserved_rollbacks, mut unserved_loops) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // 1. An ordinary change, everywhere at once.
        let key: Key = format!("plain-{run}").parse()?;
        let url = format!("{}/v1/config/{key}?emergency=true", apis[run % NODES]);
        let answer: serde_json::Value = http.post(url).json(&json!({"value": run})).send().await?.json().await?;
        answer["generation"].as_str().context("a generation")?;
        let wanted = key.clone();
        let (first, last) = spread(&cluster, move |view| view.state.config.contains_key(&wanted)).await?;
        changes.push(last - first);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 1b. An operator's rollback of it, in a quiet cluster: the same revert, no reports.
        let generation: GenId = answer["generation"].as_str().context("a generation")?.parse()?;
        let url = format!("{}/v1/rollouts/{generation}/rollback", apis[(run + 5) % NODES]);
        http.post(url).send().await?.error_for_status()?;
        let (first, last) = spread(&cluster, move |view| view.reverted.contains(&generation)).await?;
        rollbacks.push(last - first);
        // Every node served the value: each stops when its watch says the key is gone.
        let gone = watch.arrivals(key.as_str(), |e| e.value.is_null(), Duration::from_secs(60)).await?;
        unserved_rollbacks.push(*gone.iter().max().context("nodes")? - first);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 2. A bad change under the default policy: the canary applies it, fails, reports.
        let key: Key = format!("bad-{run}").parse()?;
        *bad_key.lock().unwrap() = Some(key.clone());
        *first_failure.lock().unwrap() = None;
        let url = format!("{}/v1/config/{key}", apis[(run + 3) % NODES]);
        let answer: serde_json::Value = http.post(url).json(&json!({"value": "bad"})).send().await?.json().await?;
        let generation: GenId = answer["generation"].as_str().context("a generation")?.parse()?;
        let (first, last) = spread(&cluster, move |view| view.reverted.contains(&generation)).await?;
        let failed = first_failure.lock().unwrap().context("the canary's application never failed")?;
        reverts.push(last - first);
        loops.push(last - failed);
        // The nodes whose applications saw "bad" (the canary, at least) stop serving it.
        let served_bad = watch.nodes_with(key.as_str(), |e| e.value == json!("bad"));
        let gone = watch.arrivals_on(&served_bad, key.as_str(), |e| e.value.is_null(), Duration::from_secs(60)).await?;
        unserved_loops.push(*gone.iter().max().context("the canary served it")? - failed);
        eprintln!(
            "run {run}: change spread {:.1} ms, rollback spread {:.1} ms (value gone from every watch {:.1} ms), revert spread {:.1} ms, first failed request to reverted everywhere {:.0} ms (bad value gone from the watch of the {} that served it {:.0} ms)",
            ms(*changes.last().unwrap()),
            ms(*rollbacks.last().unwrap()),
            ms(*unserved_rollbacks.last().unwrap()),
            ms(last - first),
            ms(last - failed),
            served_bad.len(),
            ms(*unserved_loops.last().unwrap()),
        );
        *bad_key.lock().unwrap() = None;
        // Let the baseline settle before the next run.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    applications.abort();
    watch.stop();
    let (change, rollback, revert, detect) = (median(changes), median(rollbacks), median(reverts), median(loops));
    let (rollback_unserved, detect_unserved) = (median(unserved_rollbacks), median(unserved_loops));
    println!(
        "{NODES} nodes, 1 s gossip, {runs} runs: first holder to all applied, median: change {:.1} ms; rollback {:.1} ms (ratio {:.2}); automatic revert, from the node that saw the quorum, {:.1} ms (ratio {:.2})",
        ms(change),
        ms(rollback),
        rollback.as_secs_f64() / change.as_secs_f64(),
        ms(revert),
        revert.as_secs_f64() / change.as_secs_f64()
    );
    println!(
        "default policy (20 requests, 1 s samples): first failed request on the canary to the revert applied on all {NODES}: median {:.0} ms",
        ms(detect)
    );
    grapevine_cluster_tests::suite_row(
        &format!("revert vs change, {NODES} nodes: first holder to all applied (median)"),
        &format!("revert {:.1} ms (rollback {:.1} ms)", ms(revert), ms(rollback)),
        &format!("change {:.1} ms", ms(change)),
        &format!(
            "{:.2}x ({:.2}x)",
            revert.as_secs_f64() / change.as_secs_f64(),
            rollback.as_secs_f64() / change.as_secs_f64()
        ),
    );
    println!(
        "what applications see, median: a rolled-back value gone from every node's watch {:.1} ms after the first node held the revert; the bad value gone from the watch of every node that served it {:.0} ms after the first failed request",
        ms(rollback_unserved),
        ms(detect_unserved)
    );
    grapevine_cluster_tests::suite_row(
        &format!("first failed request to revert applied on all {NODES} (default policy)"),
        &format!("{:.0} ms", ms(detect)),
        "-",
        "-",
    );
    grapevine_cluster_tests::suite_row(
        &format!("first failed request to the bad value no longer served (watch), {NODES} nodes"),
        &format!("{:.0} ms", ms(detect_unserved)),
        &format!(
            "rollback: value gone from all {NODES} watches {:.1} ms after the revert's first holder",
            ms(rollback_unserved)
        ),
        "-",
    );
    cluster.stop().await;
    Ok(())
}
