//! OFREP over HTTP with `wrk`, against one node process (the release binary): one flag with a
//! targeting rule, and a bulk evaluation of 100 flags. `wrk` shares the machine's cores with
//! the node. A real process, not a node in the bench's own: the bench's allocator counts every
//! allocation in two shared atomics, which the node's threads would contend on under load (it
//! cut the single-flag figure to about a third).
//!
//! Beside them, the floor: the same HTTP stack (axum on a runtime of one worker per core, as
//! the node's API runtime) in a process of its own (this bench, run as `eval floor ADDR`, its
//! allocator not counting), answering the same request with a fixed OFREP answer after
//! parsing its body, with no authorization, rate limit, flag or metric. What the node does
//! above that floor is what Grapevine can still win; the floor itself is the stack's and the
//! machine's (`wrk` shares its two cores).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, TEST_TOKEN, bench_quick, suite_row};
use serde_json::{Map, Value, json};

/// Flags of the bulk request.
const BULK_FLAGS: usize = 100;

pub fn ofrep_load() -> Result<()> {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("OFREP load: skipped, `wrk` is not installed (apt-get install wrk)");
        return Ok(());
    }
    let context = super::cases::context();
    let floor = floor_load(&context)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut cluster = Cluster::new(1)?;
    cluster.start_all()?;
    let api = cluster.nodes[0].url();
    runtime.block_on(apply_flags(&api))?;
    let single = wrk("single flag", &format!("{api}/ofrep/v1/evaluate/flags/checkout"), &context)?;
    println!("  {:.0}% of the HTTP floor's requests per second", 100.0 * single / floor);
    let goal = "goal 100000 req/s, p99 < 1 ms";
    suite_row(
        "OFREP single flag over HTTP, loopback: share of the HTTP floor",
        &format!("{:.0}%", 100.0 * single / floor),
        goal,
        "-",
    );
    wrk(&format!("bulk of {BULK_FLAGS} flags"), &format!("{api}/ofrep/v1/evaluate/flags"), &context)?;
    Ok(())
}

/// Requests per second of the floor (see the module's doc), on a free port.
fn floor_load(context: &Value) -> Result<f64> {
    let address: SocketAddr = ([127, 0, 0, 1], grapevine_cluster_tests::free_port(false)).into();
    let mut floor = std::process::Command::new(std::env::current_exe()?)
        .args(["floor", &address.to_string()])
        .spawn()
        .context("starting the HTTP floor")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(address).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let measured = wrk(
        "HTTP floor (axum, a body parsed, a fixed answer)",
        &format!("http://{address}/ofrep/v1/evaluate/flags/checkout"),
        context,
    );
    let _ = floor.kill();
    let _ = floor.wait();
    measured
}

/// Serves the floor on `address` until killed: `eval floor ADDR`.
pub fn serve_floor(address: &str) -> Result<()> {
    use axum::routing::post;
    let answer =
        json!({"key": "checkout", "metadata": {}, "reason": "TARGETING_MATCH", "value": true, "variant": "on"});
    let answer = serde_json::to_vec(&answer)?;
    let app = axum::Router::new().route(
        "/ofrep/v1/evaluate/flags/{*key}",
        post(move |body: axum::body::Bytes| {
            let answer = answer.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                std::hint::black_box(request);
                ([(axum::http::header::CONTENT_TYPE, "application/json")], answer)
            }
        }),
    );
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
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

/// Loads `url` with `wrk` and returns its requests per second; prints its figures and their
/// suite row.
fn wrk(name: &str, url: &str, context: &Value) -> Result<f64> {
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
    let per_second: f64 = number("Requests/sec").parse().with_context(|| format!("wrk's output:\n{text}"))?;
    suite_row(
        &format!("OFREP {name} over HTTP, loopback (wrk -t2 -c32)"),
        &format!("{per_second:.0} req/s, p99 {}", number("99%")),
        "goal 100000 req/s, p99 < 1 ms (single flag)",
        "-",
    );
    Ok(per_second)
}
