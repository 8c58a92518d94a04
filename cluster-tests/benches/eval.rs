//! Flag evaluation speed, in process and over HTTP.
//!
//! 1. ns per evaluation of eight rules (`cases.rs`: static, `ends_with`, `fractional` 50/50
//!    and 4-way, a `sem_ver` range, `in` over 100 items, an `and` of five conditions over
//!    nested attributes, a shared `$evaluators` segment) for Grapevine's compiled evaluator
//!    (the flag's whole resolution, and its compiled rule alone: what datalogic's figure
//!    measures), side by side in the same run with Unleash's `unleash-yggdrasil` on the comparable
//!    strategy, datalogic-rs 5.4 compiling the raw JsonLogic rule over a context parsed once,
//!    flagd's own `flagd-evaluation-engine`, and Grapevine's interpreter (datalogic-rs 4, the
//!    reference the compiled rules are tested against). The bench first asserts that all
//!    agree on each answer. A counting global allocator gives allocations per evaluation.
//! 2. Bulk: 1,000 flags (the rules above, in turn) against one context in one pass.
//! 3. Preparing 10,000 flags: parsing and compiling a flagd file of 10,000 flags (what
//!    `apply` does), and the memory each prepared flag holds.
//! 4. OFREP over HTTP on loopback with `wrk` (Debian's; skipped with a note when it is not
//!    installed): one flag with a targeting rule, and a bulk evaluation of 100 flags, beside
//!    the HTTP floor (the same stack answering without the node: `http.rs`).
//!
//! Each timing is the median of `ROUNDS` rounds. Run:
//! `cargo bench -p grapevine-cluster-tests --bench eval`; `-- ofrep` runs part 4 alone (to
//! profile the node under load, say).

#[path = "eval/cases.rs"]
mod cases;
#[path = "eval/http.rs"]
mod http;
#[path = "eval/others.rs"]
mod others;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, ensure};
use grapevine_cluster_tests::{bench_quick, suite_row};
use grapevine_proto::eval::{EvaluationContext, FlagDefinition, FlagSet};
use grapevine_proto::flagd::Fractional;
use serde_json::{Map, Value, json};

const ITERATIONS: u32 = 200_000;
const ROUNDS: usize = 7;
/// In the suite's quick mode: enough to run every case.
const QUICK_ITERATIONS: u32 = 2_000;
/// flagd's Rust engine re-parses the rule on every call (microseconds): fewer iterations.
const SLOW_DIVISOR: u32 = 100;
/// `$flagd.timestamp`: a node reads its clock once per request, not per evaluation.
const NOW_S: u64 = 1_800_000_000;
const BULK_FLAGS: usize = 1_000;
const PREPARED_FLAGS: usize = 10_000;

/// Counts allocations and live bytes, so the bench can say what an evaluation allocates and
/// what a prepared flag holds.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// Off in the HTTP floor's process (`http.rs`), whose threads would contend on the counters,
/// and while preparation is timed.
static COUNTING: AtomicBool = AtomicBool::new(true);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn iterations() -> u32 {
    if bench_quick() { QUICK_ITERATIONS } else { ITERATIONS }
}

/// Median ns per call of `f` over the rounds, `iterations` calls a round.
fn time_n(iterations: u32, mut f: impl FnMut()) -> f64 {
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

fn time(f: impl FnMut()) -> f64 {
    time_n(iterations(), f)
}

/// Allocations per call of `f`.
fn allocations(mut f: impl FnMut()) -> f64 {
    let calls = 1_000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / f64::from(calls)
}

fn prepare(case: &cases::Case) -> FlagDefinition {
    let evaluators = cases::evaluators().as_object().cloned().unwrap_or_default();
    FlagDefinition::from_value(case.flag.clone(), &evaluators).expect("a valid flag")
}

/// The figures of one rule.
struct Row {
    grapevine: f64,
    /// The compiled rule alone, as datalogic-rs 5 is timed (no flag state, no variant).
    rule: Option<f64>,
    allocations: f64,
    yggdrasil: f64,
    datalogic5: Option<f64>,
    flagd: Option<f64>,
    interpreted: Option<f64>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [floor, address] = &args[..]
        && floor == "floor"
    {
        COUNTING.store(false, Ordering::Relaxed);
        return http::serve_floor(address);
    }
    if args.iter().any(|arg| arg == "ofrep") {
        return http::ofrep_load();
    }
    let context = cases::context();
    let values: Map<String, Value> = context.as_object().cloned().unwrap_or_default();
    let mut data = values.clone();
    data.insert("$flagd".into(), json!({"flagKey": "f", "timestamp": NOW_S}));
    let unleash_context = cases::unleash_context();
    println!(
        "in-process evaluation, median of {ROUNDS} rounds of {} (flagd's engine: / {SLOW_DIVISOR}): ns/op",
        iterations()
    );
    println!(
        "{:<20} {:>9} {:>7} {:>10} {:>7} {:>6} {:>11} {:>10} {:>10} {:>11}",
        "rule",
        "grapevine",
        "allocs",
        "yggdrasil",
        "ratio",
        "alone",
        "datalogic5",
        "dl5/alone",
        "flagd-rs",
        "interpreted"
    );
    for case in cases::cases() {
        let flag = prepare(&case);
        let row = measure(&case, &flag, &values, &data, &unleash_context)?;
        print_row(case.name, &row);
    }
    let request = time(|| {
        let context = EvaluationContext::new(black_box(&values));
        black_box(context.check().is_ok());
    });
    println!(
        "preparing a request's context for flags with rules (its bound checked): {request:.1} ns, once per request"
    );
    bulk(&values)?;
    preparation()?;
    http::ofrep_load()
}

/// Checks that every engine gives the case's answer, then times each.
fn measure(
    case: &cases::Case,
    flag: &FlagDefinition,
    values: &Map<String, Value>,
    data: &Map<String, Value>,
    unleash_context: &Value,
) -> Result<Row> {
    let ours = flag.resolve("f", &EvaluationContext::new(values), Fractional::V2, NOW_S);
    ensure!(ours.variant == Some(case.variant), "{}: grapevine answered {:?}", case.name, ours.variant);
    let interpreted = flag.evaluate_interpreted("f", values, Fractional::V2, NOW_S);
    ensure!(interpreted.variant.as_deref() == Some(case.variant), "{}: the interpreter disagrees", case.name);
    let yggdrasil = others::Yggdrasil::new(case, unleash_context);
    let answer = yggdrasil.answer();
    let variants: Vec<&String> = flag.variants.keys().collect();
    ensure!(
        if case.unleash_agrees { answer == case.variant } else { variants.contains(&&answer) },
        "{}: yggdrasil answered {answer:?}",
        case.name
    );
    let rule = flag.targeting.clone();
    let datalogic5 = rule.as_ref().map(|rule| others::Datalogic5::new(rule, &Value::Object(data.clone())));
    if let Some(engine) = &datalogic5 {
        ensure!(
            engine.answer().as_deref() == Some(case.variant),
            "{}: datalogic-rs 5 answered {:?}",
            case.name,
            engine.answer()
        );
    }
    let flagd = rule.as_ref().map(|rule| others::FlagdEngine::new(rule, &Value::Object(values.clone())));
    if let Some(engine) = &flagd {
        // flagd's Rust engine buckets by the CBOR scheme with its own `fractional`, but it
        // shares datalogic-rs 5.4 with the comparison above, whose `flagd` feature Cargo
        // unifies: datalogic's built-in `fractional` (the `v2` scheme) then takes its place.
        ensure!(
            engine.answer().as_deref() == Some(case.variant),
            "{}: flagd-evaluation-engine answered {:?}",
            case.name,
            engine.answer()
        );
    }
    // The context is prepared once, as the other engines' are (Unleash's `Context`,
    // datalogic's `ParsedData`): a request prepares it once for all its flags.
    let prepared = EvaluationContext::new(values);
    let evaluate = || {
        black_box(flag.resolve(black_box("f"), black_box(&prepared), Fractional::V2, NOW_S));
    };
    if flag.targeting.is_some() {
        let answered = flag.run_rule_alone("f", &prepared, Fractional::V2, NOW_S);
        ensure!(answered == Some(true), "{}: the compiled rule alone answered {answered:?}", case.name);
    }
    let mut arena = datalogic5::bumpalo::Bump::new();
    Ok(Row {
        grapevine: time(evaluate),
        rule: flag.targeting.as_ref().map(|_| {
            time(|| {
                black_box(flag.run_rule_alone(black_box("f"), black_box(&prepared), Fractional::V2, NOW_S));
            })
        }),
        allocations: allocations(evaluate),
        yggdrasil: time(|| {
            black_box(yggdrasil.evaluate());
        }),
        datalogic5: datalogic5.as_ref().map(|engine| {
            time(|| {
                black_box(engine.evaluate(&arena));
                arena.reset();
            })
        }),
        flagd: flagd.as_ref().map(|engine| {
            time_n((iterations() / SLOW_DIVISOR).max(10), || {
                black_box(engine.answer());
            })
        }),
        interpreted: rule.as_ref().map(|_| {
            time(|| {
                black_box(flag.evaluate_interpreted("f", black_box(values), Fractional::V2, NOW_S));
            })
        }),
    })
}

fn print_row(name: &str, row: &Row) {
    let ns = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let ratio = row.yggdrasil / row.grapevine;
    let to_datalogic = match (row.rule, row.datalogic5) {
        (Some(rule), Some(datalogic)) => format!("{:.2}x", datalogic / rule),
        _ => "-".to_owned(),
    };
    println!(
        "{name:<20} {:>9.1} {:>7.2} {:>10.0} {:>6.1}x {:>6} {:>11} {:>10} {:>10} {:>11}",
        row.grapevine,
        row.allocations,
        row.yggdrasil,
        ratio,
        ns(row.rule),
        ns(row.datalogic5),
        to_datalogic,
        ns(row.flagd),
        ns(row.interpreted)
    );
    let others = format!(
        "yggdrasil {:.0} ns/op; rule alone {} ns against datalogic-rs 5 {} ns ({to_datalogic}); flagd-evaluation-engine {} ns; allocations {:.2}/op",
        row.yggdrasil,
        ns(row.rule),
        ns(row.datalogic5),
        ns(row.flagd),
        row.allocations
    );
    suite_row(
        &format!("evaluation, {name}"),
        &format!("{:.1} ns/op", row.grapevine),
        &others,
        &format!("{ratio:.1}x faster than yggdrasil"),
    );
}

/// 1,000 flags against one context in one pass, as an OFREP bulk request evaluates them.
fn bulk(values: &Map<String, Value>) -> Result<()> {
    let cases = cases::cases();
    let flags: Vec<(String, FlagDefinition)> =
        (0..BULK_FLAGS).map(|i| (format!("flag-{i}"), prepare(&cases[i % cases.len()]))).collect();
    let pass = || {
        let context = EvaluationContext::new(values);
        for (key, flag) in &flags {
            black_box(flag.resolve(key, &context, Fractional::V2, NOW_S));
        }
    };
    let iterations = if bench_quick() { 20 } else { 2_000 };
    let micros = time_n(iterations, pass) / 1e3;
    let allocations = allocations(pass);
    println!(
        "bulk: {BULK_FLAGS} flags against one context: {micros:.1} us a pass, {allocations:.0} allocations a pass"
    );
    suite_row(
        &format!("evaluation, bulk of {BULK_FLAGS} flags against one context"),
        &format!("{micros:.1} us"),
        "goal 50 us",
        &format!("{:.2}x the goal", micros / 50.0),
    );
    Ok(())
}

/// Parsing and compiling a flagd file of many flags, and what each prepared flag holds.
fn preparation() -> Result<()> {
    let count = if bench_quick() { PREPARED_FLAGS / 10 } else { PREPARED_FLAGS };
    let cases = cases::cases();
    let flags: Map<String, Value> =
        (0..count).map(|i| (format!("flag-{i}"), cases[i % cases.len()].flag.clone())).collect();
    let text = json!({"flags": flags, "$evaluators": cases::evaluators()}).to_string();
    // Timed with the allocator not counting (its atomics would be timed with every allocation
    // of the parse), then once more counting, for the bytes each prepared flag holds.
    COUNTING.store(false, Ordering::Relaxed);
    let mut times = Vec::new();
    for _ in 0..if bench_quick() { 1 } else { 5 } {
        let started = Instant::now();
        let set = FlagSet::parse(&text).map_err(anyhow::Error::msg)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(set.flags.values().all(Result::is_ok), "every flag is valid");
        drop(black_box(set));
    }
    COUNTING.store(true, Ordering::Relaxed);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let set = FlagSet::parse(&text).map_err(anyhow::Error::msg)?;
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    drop(black_box(set));
    times.sort_by(f64::total_cmp);
    let millis = times[times.len() / 2];
    let per_flag = bytes as f64 / count as f64;
    println!(
        "preparing {count} flags (a flagd file of {} KiB): {millis:.1} ms, {per_flag:.0} bytes held per flag",
        text.len() / 1024
    );
    suite_row(
        &format!("evaluation, preparing {count} flags (apply of a flagd file)"),
        &format!("{millis:.1} ms, {per_flag:.0} B/flag"),
        "goal 100 ms for 10000",
        &format!("{:.2}x the goal", millis / 100.0 * (PREPARED_FLAGS as f64 / count as f64)),
    );
    Ok(())
}
