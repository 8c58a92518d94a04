//! Figures for a 3-node cluster of real processes at the default gossip interval (1 s):
//! the time from `grapevine flag set` returning to the flag being stored by all 3 nodes (in
//! each node's log: `GET /v1/flags/KEY?desired=true` answers) and served by all 3 (`GET
//! /v1/flags/KEY`, what applications read, answers), and
//! the CPU and RSS of an idle node.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench propagation` (GRAPEVINE_BENCH_RUNS=N
//! sets the number of changes, default 30; GRAPEVINE_BENCH_IDLE_SECONDS the idle window,
//! default 30). Prints medians; no assertion on speed.

use std::time::{Duration, Instant};

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, check, http_get};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Polls `url` every 0.5 ms until it answers 200; the time since `since`, or `None` after 30 s.
fn poll_until_found(url: &str, since: Instant) -> Option<Duration> {
    while !http_get(url).is_ok_and(|(status, _)| status == 200) {
        if since.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Some(since.elapsed())
}

fn main() -> Result<()> {
    let quick = grapevine_cluster_tests::bench_quick();
    let runs: usize =
        std::env::var("GRAPEVINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 5 } else { 30 });
    let mut cluster = Cluster::new(3)?;
    for node in &mut cluster.nodes {
        node.gossip_interval_ms = None; // the default interval
        node.start()?;
    }
    cluster.wait_formed(Duration::from_secs(30))?;

    let (mut stored_ms, mut served_ms) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let key = format!("bench-{run}");
        let writer = &cluster.nodes[run % 3];
        check(writer.cli(&["flag", "set", &key, "--on"]))?;
        let returned = Instant::now();
        let handles: Vec<_> = cluster
            .nodes
            .iter()
            .map(|node| {
                let url = format!("{}/v1/flags/{key}", node.url());
                std::thread::spawn(move || -> Option<(Duration, Duration)> {
                    // In the log (the desired state), then applied: what `flag get` serves.
                    let stored = poll_until_found(&format!("{url}?desired=true"), returned)?;
                    let served = poll_until_found(&url, returned)?;
                    Some((stored, served))
                })
            })
            .collect();
        let (mut stored, mut served) = (Duration::ZERO, Duration::ZERO);
        for handle in handles {
            let times = handle.join().expect("poller").ok_or_else(|| anyhow::anyhow!("{key} never arrived"))?;
            stored = stored.max(times.0);
            served = served.max(times.1);
        }
        stored_ms.push(stored.as_secs_f64() * 1000.0);
        served_ms.push(served.as_secs_f64() * 1000.0);
    }
    stored_ms.sort_by(f64::total_cmp);
    served_ms.sort_by(f64::total_cmp);
    println!("propagation, 3 nodes, gossip interval 1000 ms, {runs} changes (writer rotates):");
    for (what, times) in [("stored by", &stored_ms), ("served by", &served_ms)] {
        println!(
            "  flag set returned -> {what} all 3 nodes: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
            percentile(times, 0.5),
            percentile(times, 0.9),
            times[0],
            times[times.len() - 1],
        );
    }
    grapevine_cluster_tests::suite_row(
        "change served by 3 real processes, median / p90 (flag set returned to served)",
        &format!("{:.1} / {:.1} ms", percentile(&served_ms, 0.5), percentile(&served_ms, 0.9)),
        &format!("stored {:.1} / {:.1} ms", percentile(&stored_ms, 0.5), percentile(&stored_ms, 0.9)),
        &format!("+{:.1} ms to serve", percentile(&served_ms, 0.5) - percentile(&stored_ms, 0.5)),
    );

    std::thread::sleep(Duration::from_secs(3));
    // A clock tick is 10 ms: a 30 s window resolves 0.03% of a core.
    let window = Duration::from_secs(
        std::env::var("GRAPEVINE_BENCH_IDLE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick {
            3
        } else {
            15
        }),
    );
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    std::thread::sleep(window);
    let mut cpu_percent: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(pid, start)| {
            let ticks = cpu_ticks(*pid).unwrap_or(*start) - start;
            ticks as f64 / clock_ticks_per_second() / window.as_secs_f64() * 100.0
        })
        .collect();
    cpu_percent.sort_by(f64::total_cmp);
    let mut rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    rss.sort();
    println!("idle node in a 3-node cluster ({}-second window, median of 3 nodes):", window.as_secs());
    println!("  CPU {:.2}% of one core, RSS {:.1} MiB", cpu_percent[1], rss[1] as f64 / 1024.0);
    grapevine_cluster_tests::suite_row(
        "idle node process, 3 real processes (median)",
        &format!("{:.2}% core, {:.1} MiB RSS", cpu_percent[1], rss[1] as f64 / 1024.0),
        "-",
        "-",
    );
    Ok(())
}
