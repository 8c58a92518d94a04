//! Helpers for tests here and in other crates (feature `testsuite`): never in the product.
//!
//! `testing::put(origin, seq, wall_ms, key, value)` seals a one-operation generation: the helper
//! shared by the unit tests of `proto` and `node` (`node` enables the feature as a dev-dependency).
//! It is compiled only under `#[cfg(any(test, feature = "testsuite"))]`.

use crate::hlc::Stamp;
use crate::model::{Change, Generation, GenerationBody, JsonText, Op};
use crate::name::GenId;

/// A sealed generation `origin.seq`, stamped at `wall_ms`, that puts config `key` = `value`
/// (JSON text).
pub fn put(origin: &str, seq: u64, wall_ms: u64, key: &str, value: &str) -> Generation {
    GenerationBody {
        id: GenId { origin: origin.parse().expect("a valid node name"), seq },
        hlc: Stamp { wall_ms, logical: 0 },
        members: vec![].into(),
        groups: vec![],
        change: Change::with_ops(vec![Op::PutConfig {
            key: key.parse().expect("a valid key"),
            value: JsonText::try_from(value.to_owned()).expect("valid JSON"),
            schema: None,
        }]),
        author: None,
        signed: None,
        terms: None,
    }
    .seal()
}

/// A JSON array of `n` strings `prefix0`, `prefix1`, ...
pub fn strings(prefix: &str, n: usize) -> serde_json::Value {
    serde_json::Value::Array((0..n).map(|i| serde_json::Value::String(format!("{prefix}{i}"))).collect())
}

/// The rule of issue 17, "a valid rule can freeze a node": `some` over `some` over `in`, each
/// over an array of `n` items (3,000 in the issue: 71 s an evaluation).
pub fn nested_some_rule(n: usize) -> serde_json::Value {
    let inner = serde_json::json!({"some": [strings("b", n), {"in": [{"var": ""}, strings("c", n)]}]});
    serde_json::json!({"if": [{"some": [strings("a", n), inner]}, "a", "b"]})
}

/// The costliest rule of the shape `some` over a literal array, `in` over another of 1,000
/// items, that [`crate::cost::check_rule`] accepts: no item matches, so each evaluation walks
/// it all and answers `b`.
pub fn rule_just_under_the_bound() -> serde_json::Value {
    let rule = |n: usize| {
        let body = serde_json::json!({"in": [{"var": ""}, strings("c", 1000)]});
        serde_json::json!({"if": [{"some": [strings("a", n), body]}, "a", "b"]})
    };
    let limit = crate::limits::MAX_RULE_COST;
    let n = (1..).find(|&n| crate::cost::rule_cost(&rule(n + 1)) > limit).expect("a rule past the bound");
    rule(n)
}

/// A flagd flag definition serving `a` or `b` by `rule`.
pub fn flag_with_rule(rule: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a", "targeting": rule})
}
