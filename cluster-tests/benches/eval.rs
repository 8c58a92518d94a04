//! Flag evaluation speed, in process and over HTTP.
//!
//! 1. ns per evaluation of a static flag, a targeting rule and a fractional split, for
//!    Grapevine's evaluator (flagd semantics: datalogic-rs JsonLogic and flagd's operators)
//!    and, side by side in the same run, Unleash's Rust engine `unleash-yggdrasil` evaluating
//!    the comparable rule (a feature without strategies; a constraint `email STR_ENDS_WITH`; a
//!    50% flexible rollout sticky on the user id). Each is timed over `ROUNDS` rounds of
//!    `ITERATIONS` evaluations; the median round is reported.
//! 2. OFREP single-flag requests per second and latency percentiles over HTTP on loopback,
//!    against a real node in this process, with `wrk` (Debian's; skipped with a note when it
//!    is not installed): 2 threads, 32 connections, 10 s, a targeting rule with a context.
//!
//! Run: `cargo bench -p grapevine-cluster-tests --bench eval`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use grapevine_cluster_tests::inproc::InProcessCluster;
use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::targeting::Fractional;
use serde_json::{Map, Value, json};
use unleash_yggdrasil::{Context, EngineState};

const ITERATIONS: u32 = 200_000;
const ROUNDS: usize = 7;
/// In the suite's quick mode: enough to run every case.
const QUICK_ITERATIONS: u32 = 2_000;
/// `$flagd.timestamp`: a node reads its clock once per request, not per evaluation.
const NOW_S: u64 = 1_800_000_000;

/// Median ns per call of `f` over the rounds.
fn time(mut f: impl FnMut()) -> f64 {
    let iterations = if grapevine_cluster_tests::bench_quick() { QUICK_ITERATIONS } else { ITERATIONS };
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_nanos() as f64 / f64::from(iterations)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn flag(definition: Value) -> FlagDefinition {
    FlagDefinition::from_value(definition, &Map::new()).expect("a valid flag")
}

fn unleash(feature: Value) -> EngineState {
    let mut engine = EngineState::default();
    let features = serde_json::from_value(json!({"version": 2, "features": [feature]})).expect("valid features");
    engine.apply_client_features(features);
    engine
}

fn main() -> Result<()> {
    let static_flag = flag(json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}));
    let targeting = flag(json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}
    }));
    let split = flag(json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"fractional": [["on", 50], ["off", 50]]}
    }));
    let context: Map<String, Value> =
        json!({"targetingKey": "user-42", "email": "ada@example.com"}).as_object().cloned().unwrap_or_default();

    let unleash_static = unleash(json!({"name": "f", "enabled": true, "strategies": []}));
    let unleash_targeting = unleash(json!({"name": "f", "enabled": true, "strategies": [{"name": "default",
        "constraints": [{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}]}]}));
    let unleash_split = unleash(json!({"name": "f", "enabled": true, "strategies": [{"name": "flexibleRollout",
        "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "f"}}]}));
    let unleash_context: Context =
        serde_json::from_value(json!({"userId": "user-42", "properties": {"email": "ada@example.com"}}))?;
    // Both agree on the targeting rule's answer, so they do comparable work.
    assert_eq!(targeting.evaluate("f", &context, Fractional::V2, NOW_S).value, Some(json!(true)));
    assert!(unleash_targeting.is_enabled("f", &unleash_context, &None));

    println!("in-process evaluation, median of {ROUNDS} rounds of {ITERATIONS}: ns/op (evaluations/s)");
    println!("{:<28} {:>18} {:>22} {:>8}", "rule", "grapevine (flagd)", "unleash-yggdrasil", "ratio");
    let cases: [(&str, &FlagDefinition, &EngineState); 3] = [
        ("static", &static_flag, &unleash_static),
        ("targeting (ends_with)", &targeting, &unleash_targeting),
        ("fractional 50/50", &split, &unleash_split),
    ];
    for (name, ours, theirs) in cases {
        let grapevine = time(|| {
            black_box(ours.evaluate(black_box("f"), black_box(&context), Fractional::V2, NOW_S));
        });
        let yggdrasil = time(|| {
            black_box(theirs.is_enabled(black_box("f"), black_box(&unleash_context), &None));
        });
        grapevine_cluster_tests::suite_row(
            &format!("evaluation, {name}"),
            &format!("{grapevine:.0} ns/op"),
            &format!("unleash-yggdrasil {yggdrasil:.0} ns/op"),
            &format!("{:.2}x the time", grapevine / yggdrasil),
        );
        println!(
            "{name:<28} {:>9.0} ns ({:>5.1} M/s) {:>9.0} ns ({:>5.1} M/s) {:>7.2}x",
            grapevine,
            1e3 / grapevine,
            yggdrasil,
            1e3 / yggdrasil,
            grapevine / yggdrasil
        );
    }
    ofrep_load()
}

/// OFREP over HTTP with `wrk`, against one in-process node.
fn ofrep_load() -> Result<()> {
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("OFREP load: skipped, `wrk` is not installed (apt-get install wrk)");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let cluster = runtime.block_on(InProcessCluster::start(1, |_, _, _| {}))?;
    let api = format!("http://{}", cluster.nodes[0].api_addr);
    let definition = json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}
    });
    runtime.block_on(async {
        let url = format!("{api}/v1/flags/checkout?waves=100%25");
        grapevine_cluster_tests::http_client()
            .post(url)
            .json(&json!({"definition": definition}))
            .send()
            .await?
            .error_for_status()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        anyhow::Ok(())
    })?;
    let script = std::env::temp_dir().join(format!("grapevine-ofrep-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{\"context\": {\"targetingKey\": \"user-42\", \"email\": \"ada@example.com\"}}'\n",
    )?;
    let output = std::process::Command::new("wrk")
        .args(["-t2", "-c32", if grapevine_cluster_tests::bench_quick() { "-d2s" } else { "-d10s" }, "--latency", "-s"])
        .arg(&script)
        .arg(format!("{api}/ofrep/v1/evaluate/flags/checkout"))
        .output()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or("").trim().to_owned();
    println!("OFREP single flag over HTTP on loopback (wrk -t2 -c32 -d10s, a targeting rule):");
    println!("  {}", line("Requests/sec"));
    println!("  latency p50: {}  p90: {}  p99: {}", line("50%"), line("90%"), line("99%"));
    let number = |prefix: &str| line(prefix).split_whitespace().last().unwrap_or("?").to_owned();
    grapevine_cluster_tests::suite_row(
        "OFREP single flag over HTTP, loopback (wrk -t2 -c32)",
        &format!("{} req/s, p99 {}", number("Requests/sec"), number("99%")),
        "-",
        "-",
    );
    let errors = line("Non-2xx");
    if !errors.is_empty() {
        println!("  {errors}");
    }
    runtime.block_on(cluster.stop());
    Ok(())
}
