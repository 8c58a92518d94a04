//! The rules the evaluation bench measures, each written for every engine: a flagd flag
//! (Grapevine, flagd's Rust engine, datalogic-rs 5 on the raw rule) and the comparable
//! Unleash feature (yggdrasil), with the answer all must give for the bench's context.

use serde_json::{Value, json};

/// One rule, as each engine writes it.
pub struct Case {
    pub name: &'static str,
    /// The flagd flag definition (`$ref`s to [`evaluators`] allowed).
    pub flag: Value,
    /// The Unleash feature with the comparable strategy.
    pub unleash: Value,
    /// The variant flagd engines answer for [`context`] (with the `v2` scheme for splits).
    pub variant: &'static str,
    /// Whether Unleash's answer is the same rule's (a split hashes differently, so only the
    /// deterministic rules can agree on the variant).
    pub unleash_agrees: bool,
}

/// The bench's evaluation context.
pub fn context() -> Value {
    json!({
        "targetingKey": "user-42", "email": "ada@example.com", "version": "1.5.3", "tenant": "tenant-77",
        "user": {"tier": "gold", "age": 34, "country": "NL", "plan": "pro-annual", "banned": false}
    })
}

/// The same context as Unleash reads it: flat string properties.
pub fn unleash_context() -> Value {
    json!({"userId": "user-42", "properties": {
        "email": "ada@example.com", "version": "1.5.3", "tenant": "tenant-77",
        "tier": "gold", "age": "34", "country": "NL", "plan": "pro-annual", "banned": "false"
    }})
}

/// The shared segment of the flag file, and Unleash's segment 1.
pub fn evaluators() -> Value {
    json!({"isEmployee": {"ends_with": [{"var": "email"}, "@example.com"]}})
}

pub fn unleash_segments() -> Value {
    json!([{"id": 1, "constraints": [{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}]}])
}

fn boolean(targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": targeting})
}

fn feature(strategy: Value) -> Value {
    json!({"name": "f", "enabled": true, "strategies": [strategy]})
}

fn constrained(constraints: Value) -> Value {
    feature(json!({"name": "default", "constraints": constraints}))
}

/// Four variants of a quarter each, as Unleash writes them.
fn quarters() -> Vec<Value> {
    ["a", "b", "c", "d"]
        .map(|name| json!({"name": name, "weight": 250, "weightType": "fix", "stickiness": "userId"}))
        .to_vec()
}

/// The 100 tenants of the `in` rule; the context's is the 78th.
fn tenants() -> Vec<String> {
    (0..100).map(|i| format!("tenant-{i}")).collect()
}

pub fn cases() -> Vec<Case> {
    let variants4 = json!({"a": "a", "b": "b", "c": "c", "d": "d"});
    vec![
        Case {
            name: "static",
            flag: json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
            unleash: json!({"name": "f", "enabled": true, "strategies": []}),
            variant: "on",
            unleash_agrees: true,
        },
        Case {
            name: "ends_with",
            flag: boolean(json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]})),
            unleash: constrained(
                json!([{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}]),
            ),
            variant: "on",
            unleash_agrees: true,
        },
        Case {
            name: "fractional 50/50",
            flag: boolean(json!({"fractional": [["on", 50], ["off", 50]]})),
            unleash: feature(json!({"name": "flexibleRollout",
                "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "f"}})),
            variant: "off",
            unleash_agrees: false,
        },
        Case {
            name: "fractional 4-way",
            flag: json!({"state": "ENABLED", "variants": variants4, "defaultVariant": "a",
                "targeting": {"fractional": [["a", 25], ["b", 25], ["c", 25], ["d", 25]]}}),
            unleash: json!({"name": "f", "enabled": true, "strategies": [{"name": "flexibleRollout",
                "parameters": {"rollout": "100", "stickiness": "userId", "groupId": "f"},
                "variants": quarters()}]}),
            variant: "d",
            unleash_agrees: false,
        },
        Case {
            name: "sem_ver range",
            flag: boolean(json!({"if": [{"and": [{"sem_ver": [{"var": "version"}, ">", "1.2.0"]},
                {"sem_ver": [{"var": "version"}, "<", "2.0.0"]}]}, "on", "off"]})),
            unleash: constrained(json!([
                {"contextName": "version", "operator": "SEMVER_GT", "value": "1.2.0"},
                {"contextName": "version", "operator": "SEMVER_LT", "value": "2.0.0"}])),
            variant: "on",
            unleash_agrees: true,
        },
        Case {
            name: "in (100 items)",
            flag: boolean(json!({"if": [{"in": [{"var": "tenant"}, tenants()]}, "on", "off"]})),
            unleash: constrained(json!([{"contextName": "tenant", "operator": "IN", "values": tenants()}])),
            variant: "on",
            unleash_agrees: true,
        },
        Case {
            name: "and of 5 (nested)",
            flag: boolean(json!({"if": [{"and": [
                {"==": [{"var": "user.tier"}, "gold"]},
                {">=": [{"var": "user.age"}, 18]},
                {"in": [{"var": "user.country"}, ["DE", "FR", "NL"]]},
                {"starts_with": [{"var": "user.plan"}, "pro"]},
                {"!": [{"var": "user.banned"}]}]}, "on", "off"]})),
            unleash: constrained(json!([
                {"contextName": "tier", "operator": "IN", "values": ["gold"]},
                {"contextName": "age", "operator": "NUM_GTE", "value": "18"},
                {"contextName": "country", "operator": "IN", "values": ["DE", "FR", "NL"]},
                {"contextName": "plan", "operator": "STR_STARTS_WITH", "values": ["pro"]},
                {"contextName": "banned", "operator": "IN", "values": ["false"]}])),
            variant: "on",
            unleash_agrees: true,
        },
        Case {
            name: "$evaluators segment",
            flag: boolean(json!({"if": [{"$ref": "isEmployee"}, "on", "off"]})),
            unleash: feature(json!({"name": "default", "segments": [1]})),
            variant: "on",
            unleash_agrees: true,
        },
    ]
}
