//! The compiled evaluator against the interpreter: the same answer for every flag, rule and
//! context (random ones, with the operators and values flagd rules use), and the bucketing
//! hash against the `murmur3` crate.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::hash::Murmur3;
use crate::eval::FlagDefinition;
use crate::flagd::Fractional;

proptest! {
    #[test]
    fn the_incremental_hash_is_murmur3(pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..90), 0..5)) {
        let joined: Vec<u8> = pieces.concat();
        let mut hasher = Murmur3::new();
        for piece in &pieces {
            hasher.write(piece);
        }
        let expected = murmur3::murmur3_32(&mut std::io::Cursor::new(&joined), 0).unwrap();
        prop_assert_eq!(hasher.finish(), expected);
    }
}

/// Context values a rule compares: strings (some that look like dates or versions), numbers,
/// booleans, null, and a few arrays and objects.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..300).prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(0.0)),
        prop::sample::select(vec![
            "",
            "a",
            "b",
            "ada@example.com",
            "bob@other.org",
            "1",
            "1.0",
            "10",
            "true",
            "false",
            "2024-01-01",
            "3d",
            "v1.2.3",
            "1.2.3",
            "2.0.0-rc.1",
            "1.10",
            "user-42",
            "EU",
            "us",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn context_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..4).prop_map(Value::Array),
        1 => (scalar(), scalar()).prop_map(|(a, b)| json!({"tier": a, "age": b})),
    ]
}

fn context() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop::sample::select(vec!["user-1", "user-42", "u", ""])),
        prop::collection::btree_map(
            prop::sample::select(vec!["email", "age", "tier", "user", "v", "x"]),
            context_value(),
            0..5,
        ),
    )
        .prop_map(|(key, values)| {
            let mut map: Map<String, Value> = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(key) = key {
                map.insert("targetingKey".into(), json!(key));
            }
            map
        })
}

fn var() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "email",
            "age",
            "tier",
            "user.tier",
            "user.age",
            "v",
            "x",
            "x.0",
            "missing",
            "targetingKey",
            "$flagd.flagKey",
            "$flagd.timestamp",
            "$flagd.other"
        ])
        .prop_map(|path| json!({"var": path})),
        (prop::sample::select(vec!["email", "age", "missing"]), scalar())
            .prop_map(|(path, default)| json!({"var": [path, default]})),
    ]
}

/// An expression: a literal, a variable, or an operation over expressions.
fn expression() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![2 => scalar(), 3 => var(), 1 => Just(json!(["a", "b", "EU", "1"]))];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let operator = prop::sample::select(vec![
            "==", "===", "!=", "!==", "<", "<=", ">", ">=", "and", "or", "if", "?:", "!", "!!", "in", "cat",
            "starts_with", "ends_with", "sem_ver", "merge",
        ]);
        prop_oneof![
            8 => (operator, prop::collection::vec(inner.clone(), 1..4)).prop_map(|(op, args)| json!({op: args})),
            1 => (inner.clone(), prop::sample::select(vec!["=", "<", ">=", "^", "~", "!="]), prop::sample::select(vec!["1.2.3", "v2", "1.10.0", "2.0.0-rc.1"]))
                .prop_map(|(left, op, right)| json!({"sem_ver": [left, op, right]})),
            1 => (inner.clone(), prop::collection::vec(inner, 0..3)).prop_map(|(needle, items)| json!({"in": [needle, items]})),
        ]
    })
}

/// A whole rule: an `if` naming variants, or a split.
fn rule() -> impl Strategy<Value = Value> {
    let variant = prop_oneof![
        4 => prop::sample::select(vec!["on", "off", "zzz"]).prop_map(|s| json!(s)),
        1 => Just(json!(null)),
        1 => Just(json!(true)),
        1 => Just(json!(7)),
    ];
    prop_oneof![
        4 => (expression(), variant.clone(), variant.clone()).prop_map(|(condition, then, otherwise)| json!({"if": [condition, then, otherwise]})),
        1 => expression(),
        1 => (prop::collection::vec((variant.clone(), 0u32..60), 1..5)).prop_map(|buckets| {
            json!({"fractional": buckets.into_iter().map(|(v, w)| json!([v, w])).collect::<Vec<_>>()})
        }),
        1 => (expression(), prop::collection::vec((variant, prop_oneof![(0u32..60).prop_map(Value::from), var()]), 1..4)).prop_map(|(by, buckets)| {
            let mut args = vec![by];
            args.extend(buckets.into_iter().map(|(v, w)| json!([v, w])));
            json!({"fractional": args})
        }),
    ]
}

fn flag(targeting: &Value) -> Option<FlagDefinition> {
    let definition = json!({"state": "ENABLED", "variants": {"on": true, "off": false, "true": true}, "defaultVariant": "off", "targeting": targeting});
    FlagDefinition::from_value(definition, &Map::new()).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rules_answer_as_the_interpreter(rule in rule(), context in context(), cbor in any::<bool>()) {
        let Some(flag) = flag(&rule) else { return Ok(()) };
        let scheme = if cbor { Fractional::Cbor } else { Fractional::V2 };
        let compiled = flag.evaluate("f", &context, scheme, 1_800_000_000);
        let interpreted = flag.evaluate_interpreted("f", &context, scheme, 1_800_000_000);
        prop_assert_eq!(compiled, interpreted, "rule {} context {}", rule, Value::Object(context.clone()));
    }
}

#[test]
fn common_rules_are_compiled_and_answer_without_the_interpreter() {
    let rules = [
        json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}),
        json!({"fractional": [["on", 50], ["off", 50]]}),
        json!({"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}, ["on", 50], ["off", 50]]}),
        json!({"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "on", "off"]}),
        json!({"if": [{"in": [{"var": "tier"}, ["gold", "silver"]]}, "on", null]}),
        json!({"if": [{"and": [{">=": [{"var": "user.age"}, 18]}, {"==": [{"var": "user.tier"}, "gold"]}]}, "on", "off"]}),
    ];
    for rule in rules {
        assert!(super::Program::compile(&rule).is_some(), "{rule}");
    }
    assert!(super::Program::compile(&json!({"map": [[1], {"var": ""}]})).is_none());
}

/// The flagd testbed's rules are answered by the compiled tree, save the ones named here.
#[test]
fn the_testbed_rules_are_compiled() {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/flagd-testbed/evaluator/flags/testkit-flags.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let evaluators = file.get("$evaluators").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut interpreted = Vec::new();
    let mut compiled = 0;
    for (key, flag) in file["flags"].as_object().unwrap() {
        let Some(targeting) = flag.get("targeting").filter(|t| t.as_object().is_some_and(|o| !o.is_empty())) else {
            continue;
        };
        let Ok((_, resolved)) = crate::targeting::Rule::prepare(targeting.clone(), &evaluators) else { continue };
        match super::Program::compile(&resolved) {
            Some(_) => compiled += 1,
            None => interpreted.push(key.as_str()),
        }
    }
    println!("testbed rules: {compiled} compiled, interpreted: {interpreted:?}");
    assert!(compiled >= 20, "{compiled}");
    assert_eq!(interpreted, Vec::<&str>::new());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The interpreter compiles a rule only when it first needs it, if the tree covers the
    /// rule: so every rule the tree compiles must be one the interpreter compiles, or a rule
    /// it would have refused would now be accepted.
    #[test]
    fn what_the_tree_compiles_the_interpreter_compiles(rule in rule()) {
        prop_assume!(super::Program::compile(&rule).is_some());
        let renamed = crate::targeting::tests_support::interpretable(&rule);
        prop_assert!(renamed.is_ok(), "rule {} the interpreter refuses: {:?}", rule, renamed.err());
    }
}

proptest! {
    #[test]
    fn numbers_read_as_serde_json_reads_them(n in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| f.to_string()), (0u64..1_000_000_000_000_000_000).prop_map(|n| n.to_string())]) {
        let Ok(Value::Number(number)) = serde_json::from_str::<Value>(&n) else { return Ok(()) };
        let expected = number.as_f64().unwrap_or(f64::NAN);
        let read = super::run::float(&number);
        prop_assert!(read == expected || (read.is_nan() && expected.is_nan()), "{} read {} expected {}", n, read, expected);
    }
}
