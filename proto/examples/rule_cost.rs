//! Measures how long a step of the cost model (`cost.rs`) takes to evaluate, for the rule
//! shapes that cost the most per step: `cargo run --release -p grapevine-proto --example rule_cost`.
//! Its figures set `MAX_RULE_COST` (docs/decisions.md).

use std::time::{Duration, Instant};

use grapevine_proto::cost::rule_cost;
use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::flagd::Fractional;
use serde_json::{Map, Value, json};

fn items(prefix: &str, n: usize) -> Value {
    Value::Array((0..n).map(|i| json!(format!("{prefix}{i}"))).collect())
}

/// The rule shapes: iterations nested over literals and the context, scans, custom operators.
fn shapes() -> Vec<(&'static str, Value)> {
    let never = |body: Value| json!({"some": [items("a", 300), {"some": [items("b", 300), body]}]});
    vec![
        ("some over in", json!({"some": [items("a", 300), {"in": [{"var": ""}, items("c", 1500)]}]})),
        ("some over some ==", never(json!({"==": [{"var": ""}, "x"]}))),
        ("some over some !", never(json!({"!": {"!=": [{"var": ""}, "x"]}}))),
        ("some over some and", never(json!({"and": [{"==": [{"var": ""}, "x"]}, {"==": [{"var": ""}, "y"]}]}))),
        ("some over context", json!({"some": [{"var": "groups"}, {"in": [{"var": ""}, items("c", 400)]}]})),
        (
            "map over context",
            json!({"in": ["x", {"map": [{"var": "groups"}, {"cat": [{"var": ""}, "-", {"var": ""}]}]}]}),
        ),
        ("starts_with", never(json!({"starts_with": [{"var": ""}, "zz"]}))),
        ("ends_with", never(json!({"ends_with": [{"var": ""}, "zz"]}))),
        ("sem_ver", never(json!({"sem_ver": [{"var": ""}, ">", "9.0.0"]}))),
        ("cat", never(json!({"==": [{"cat": [{"var": ""}, "-"]}, "zz"]}))),
        ("fractional", never(json!({"==": [{"fractional": [{"var": ""}, ["x", 50], ["y", 50]]}, "zz"]}))),
        ("reduce sum", json!({"<": [{"reduce": [{"var": "groups"}, {"+": [{"var": "accumulator"}, 1]}, 0]}, 0]})),
        ("merge", never(json!({"in": ["x", {"merge": [items("b", 3), items("c", 3)]}]}))),
    ]
}

/// How long one of `runs` runs of `run` takes, on average. A stopwatch for the figures (proto's
/// clippy.toml disallows it): the code it times reads no clock.
#[allow(clippy::disallowed_methods)]
fn time_each(runs: u32, mut run: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..runs {
        run();
    }
    started.elapsed() / runs
}

fn main() {
    let groups = items("g", 1000);
    let context: Map<String, Value> =
        Map::from_iter([("groups".to_owned(), groups), ("targetingKey".into(), json!("u"))]);
    for (name, rule) in shapes() {
        let text = json!({"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [rule, "a", "b"]}});
        let flag: FlagDefinition = FlagDefinition::from_value(text.clone(), &Map::new()).expect("a valid flag");
        let cost = rule_cost(&text["targeting"]);
        let runs = 10;
        let outcome = flag.evaluate("f", &context, Fractional::V2, 0);
        if outcome.error_code.is_some() {
            println!("{name:24} cost {cost:>9} steps: {}", outcome.error_message.unwrap_or_default());
            continue;
        }
        let each = time_each(runs, || {
            std::hint::black_box(flag.evaluate("f", &context, Fractional::V2, 0));
        });
        let per_step = each.as_nanos() as f64 / cost as f64;
        println!("{name:24} cost {cost:>9} steps, {each:>10.2?} per evaluation, {per_step:6.2} ns per step");
    }
}
