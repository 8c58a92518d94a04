//! OFREP over HTTP with `wrk`, against one node process (the release binary): one flag with a
//! targeting rule, and a bulk evaluation of 100 flags. `wrk` shares the machine's cores with
//! the node. A real process, not a node in the bench's own: the bench's allocator counts every
//! allocation in two shared atomics, which the node's threads would contend on under load (it
//! cut the single-flag figure to about a third).

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, TEST_TOKEN, bench_quick, suite_row};
use serde_json::{Map, Value, json};

/// Flags of the bulk request.
const BULK_FLAGS: usize = 100;

pub fn ofrep_load() -> Result<()> {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("OFREP load: skipped, `wrk` is not installed (apt-get install wrk)");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let mut cluster = Cluster::new(1)?;
    cluster.start_all()?;
    let api = cluster.nodes[0].url();
    runtime.block_on(apply_flags(&api))?;
    let context = super::cases::context();
    wrk("single flag", &format!("{api}/ofrep/v1/evaluate/flags/checkout"), &context)?;
    wrk(&format!("bulk of {BULK_FLAGS} flags"), &format!("{api}/ofrep/v1/evaluate/flags"), &context)?;
    Ok(())
}

/// `checkout` (an `ends_with` rule) and 100 flags of the bench's rules, in one flagd file.
async fn apply_flags(api: &str) -> Result<()> {
    let cases = super::cases::cases();
    let mut flags: Map<String, Value> =
        (0..BULK_FLAGS - 1).map(|i| (format!("bulk-{i}"), cases[i % cases.len()].flag.clone())).collect();
    flags.insert("checkout".into(), cases[1].flag.clone());
    let file = json!({"flags": flags, "$evaluators": super::cases::evaluators()});
    grapevine_cluster_tests::http_client()
        .post(format!("{api}/v1/apply?waves=100%25"))
        .body(file.to_string())
        .send()
        .await?
        .error_for_status()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn wrk(name: &str, url: &str, context: &Value) -> Result<()> {
    let script = std::env::temp_dir().join(format!("grapevine-ofrep-{}.lua", std::process::id()));
    let body = json!({"context": context}).to_string();
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {TEST_TOKEN}\"\nwrk.body = '{body}'\n"
        ),
    )?;
    let duration = if bench_quick() { "-d2s" } else { "-d10s" };
    let output = std::process::Command::new("wrk")
        .args(["-t2", "-c32", duration, "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or("").trim().to_owned();
    println!("OFREP {name} over HTTP on loopback (wrk -t2 -c32 {duration}):");
    println!("  {}", line("Requests/sec"));
    println!("  latency p50: {}  p90: {}  p99: {}", line("50%"), line("90%"), line("99%"));
    // A figure of refused requests is no figure: stop.
    let errors = line("Non-2xx");
    anyhow::ensure!(errors.is_empty(), "OFREP {name}: {errors} (wrk's requests were not answered 200)");
    let number = |prefix: &str| line(prefix).split_whitespace().last().unwrap_or("?").to_owned();
    suite_row(
        &format!("OFREP {name} over HTTP, loopback (wrk -t2 -c32)"),
        &format!("{} req/s, p99 {}", number("Requests/sec"), number("99%")),
        "goal 100000 req/s, p99 < 1 ms (single flag)",
        "-",
    );
    Ok(())
}
