//! Validation of everything that enters the log, with errors that say what was expected and
//! what was found (`ValidationError`, in `error.rs`, below the types that return it).
//!
//! The same checks run on a change from the admin API and on a generation from a peer, so a
//! node never stores what it would have refused from a user.
//!
//! - `validate_change`: 1 to `MAX_OPS_PER_CHANGE` operations, each `(kind, key)` set at most once;
//!   not neither ops nor controls (`EmptyChange`); at most `MAX_OPS_PER_CHANGE` controls; a policy
//!   that passes `Policy::validate` (`ValidationError::Policy`, `rollout policy: ...`); no `null`
//!   config value, and each value follows the schema its op carries (`validate_config_value`, the
//!   `jsonschema` crate; the error names the JSON path: `config "ratelimit": /burst: 50000 is
//!   greater than the maximum of 10000`). So every node checks schemas again on every generation
//!   and snapshot it takes in.
//! - `check_envelope` checks what a generation adds around its change: at most `MAX_MEMBERS`
//!   members (`TooManyMembers`, "the member ceiling"), `groups` empty or one per member (`rollout
//!   policy: expected a group per member (N), got M`), and an encoded size (`wire::encode`) of at
//!   most `MAX_GENERATION_BYTES` (`TooLarge`).
//! - `validate_terms`: terms are not empty; approvals (at most `MAX_APPROVALS`) come with an
//!   `Enact` record only; a `Propose`, `Approve` or `Reject` record carries no ops nor controls (a
//!   proposal's own change has ops and no controls); otherwise `validate_change`
//!   (`ValidationError::Governance`). `validate_submitted_terms` adds `validate_submitted` on the
//!   change that will apply.
//! - `validate_generation` = `Generation::verify` (the hash) + `check_envelope` +
//!   `validate_terms`: it runs on every pulled, pushed and loaded generation. The engine runs
//!   `validate_submitted` (`validate_change`, and no targeting rule over the cost limit) and
//!   `check_envelope` on every submitted change.
//! - `validate_snapshot` checks that each write belongs to a generation the snapshot covers and is
//!   a valid operation (`ValidationError::Snapshot`). It runs on every snapshot pulled or loaded.

use std::collections::BTreeSet;

use crate::approvals::MAX_APPROVALS;
use crate::error::ValidationError;
use crate::eval::FlagDefinition;
use crate::limits::{MAX_GENERATION_BYTES, MAX_MEMBERS, MAX_OPS_PER_CHANGE, MAX_SEQ};
use crate::model::{Change, Generation, Governance, JsonText, Op, Terms};
use crate::name::Key;
use crate::snapshot::Snapshot;

/// Checks a change as a whole and each of its operations.
pub fn validate_change(change: &Change) -> Result<(), ValidationError> {
    if change.ops.is_empty() && change.controls.is_empty() {
        return Err(ValidationError::EmptyChange);
    }
    if change.controls.len() > MAX_OPS_PER_CHANGE {
        return Err(ValidationError::TooManyOps { limit: MAX_OPS_PER_CHANGE, found: change.controls.len() });
    }
    change.policy.validate().map_err(|error| ValidationError::Policy { detail: error.0 })?;
    if change.ops.len() > MAX_OPS_PER_CHANGE {
        return Err(ValidationError::TooManyOps { limit: MAX_OPS_PER_CHANGE, found: change.ops.len() });
    }
    let mut seen = BTreeSet::new();
    for op in &change.ops {
        if !seen.insert((op.kind(), op.key())) {
            return Err(ValidationError::DuplicateKey { kind: op.kind(), key: op.key().to_string() });
        }
        validate_op(op)?;
    }
    Ok(())
}

/// Checks a change a user submits: [`validate_change`], and what is refused from users only,
/// not from peers or the disk (a targeting rule too costly to evaluate: see
/// [`FlagDefinition::check_cost`]).
pub fn validate_submitted(change: &Change) -> Result<(), ValidationError> {
    validate_change(change)?;
    for op in &change.ops {
        if let Op::SetFlag { key, definition } = op {
            let flag = FlagDefinition::parse(key, definition)?;
            flag.check_cost().map_err(|detail| ValidationError::Flag { key: key.to_string(), detail })?;
        }
    }
    Ok(())
}

/// Checks a generation from a peer or from disk: its hash, its envelope, its terms and its
/// change.
pub fn validate_generation(generation: &Generation) -> Result<(), ValidationError> {
    generation.verify()?;
    check_envelope(generation)?;
    validate_terms(&generation.body.change, generation.body.terms.as_deref())
}

/// Checks a body's change with its terms: terms say something; approvals come with an
/// enactment only, at most [`MAX_APPROVALS`]; a proposal, approval or rejection carries no
/// operations and no controls (a proposal's own change has operations and no controls); an
/// enactment or a plain change is a valid change ([`validate_change`]).
pub fn validate_terms(change: &Change, terms: Option<&Terms>) -> Result<(), ValidationError> {
    let Some(terms) = terms else { return validate_change(change) };
    let refuse = |detail: String| Err(ValidationError::Governance { detail });
    if terms.is_empty() {
        return refuse("expected a start, approvals or a record in the terms, got none".to_owned());
    }
    if terms.approvals.len() > MAX_APPROVALS {
        return refuse(format!("at most {MAX_APPROVALS} approvals, got {}", terms.approvals.len()));
    }
    let enact = matches!(terms.governance, Some(Governance::Enact { .. }));
    if !terms.approvals.is_empty() && !enact {
        return refuse("approvals travel in an enactment only".to_owned());
    }
    match &terms.governance {
        None => validate_change(change),
        Some(Governance::Enact { .. }) if change.ops.is_empty() => {
            refuse("an enactment carries its proposal's operations, got none".to_owned())
        }
        Some(Governance::Enact { .. }) => validate_change(change),
        Some(_) if !change.ops.is_empty() || !change.controls.is_empty() => {
            refuse("a proposal, approval or rejection carries no operations nor controls of its own".to_owned())
        }
        Some(Governance::Propose { change: proposed, .. })
            if !proposed.controls.is_empty() || proposed.ops.is_empty() =>
        {
            refuse("a proposal proposes operations, not rollout controls".to_owned())
        }
        Some(Governance::Propose { change: proposed, .. }) => validate_change(proposed),
        Some(_) => Ok(()),
    }
}

/// [`validate_terms`], and [`validate_submitted`] on the change that will apply (a proposal's).
pub fn validate_submitted_terms(change: &Change, terms: Option<&Terms>) -> Result<(), ValidationError> {
    validate_terms(change, terms)?;
    match terms.and_then(|terms| terms.governance.as_ref()) {
        None | Some(Governance::Enact { .. }) => validate_submitted(change),
        Some(Governance::Propose { change: proposed, .. }) => validate_submitted(proposed),
        Some(_) => Ok(()),
    }
}

/// Checks what a generation adds around its change: its seq, the member set and the encoded
/// size.
pub fn check_envelope(generation: &Generation) -> Result<(), ValidationError> {
    check_envelope_with(generation, MAX_MEMBERS)
}

/// [`check_envelope`] with another member ceiling (the simulator's, which has no datagram).
pub fn check_envelope_with(generation: &Generation, max_members: usize) -> Result<(), ValidationError> {
    check_seq(generation.id().seq, || format!("a generation of {}", generation.id().origin))?;
    let members = generation.body.members.len();
    if members > max_members {
        return Err(ValidationError::TooManyMembers { limit: max_members, found: members });
    }
    let groups = generation.body.groups.len();
    if groups != 0 && groups != members {
        let detail = format!("expected a group per member ({members}), got {groups}");
        return Err(ValidationError::Policy { detail });
    }
    let size = crate::wire::encode(generation).len();
    if size > MAX_GENERATION_BYTES {
        return Err(ValidationError::TooLarge { what: "encoded generation", limit: MAX_GENERATION_BYTES, found: size });
    }
    Ok(())
}

/// Checks a snapshot from a peer or from disk: each write is a valid operation of a
/// generation the snapshot says it covers.
pub fn validate_snapshot(snapshot: &Snapshot) -> Result<(), ValidationError> {
    for (origin, seq) in snapshot.covers().iter() {
        check_seq(seq, || format!("a snapshot's entry for {origin}"))?;
    }
    for write in snapshot.writes() {
        if !snapshot.covers().covers(&write.generation) {
            return Err(ValidationError::Snapshot {
                detail: format!("a write of generation {} that the snapshot does not cover", write.generation),
            });
        }
        validate_op(&write.op)?;
    }
    Ok(())
}

/// A seq from a peer or the disk is at most [`MAX_SEQ`], so the log can count past it.
fn check_seq(seq: u64, what: impl FnOnce() -> String) -> Result<(), ValidationError> {
    if seq > MAX_SEQ {
        return Err(ValidationError::SeqTooLarge { what: what(), limit: MAX_SEQ, found: seq });
    }
    Ok(())
}

fn validate_op(op: &Op) -> Result<(), ValidationError> {
    match op {
        Op::SetFlag { key, definition } => FlagDefinition::parse(key, definition).map(drop),
        Op::PutConfig { key, value, schema } => validate_config_value(key, value, schema.as_ref()),
    }
}

/// A config value may be any JSON value but `null` (an absent value is not a value, and an
/// application reading it would most likely crash on it) that follows the key's JSON Schema,
/// if it has one; the error names the JSON path, what was expected and what was found.
pub fn validate_config_value(key: &Key, value: &JsonText, schema: Option<&JsonText>) -> Result<(), ValidationError> {
    let refuse = |detail: String| ValidationError::Config { key: key.to_string(), detail };
    if value.as_str().trim() == "null" {
        return Err(refuse("expected a JSON value other than null, got null".to_owned()));
    }
    let Some(schema) = schema else { return Ok(()) };
    let schema = schema.to_value();
    // The same holds for the schema's own numbers: the validator panicked compiling
    // `"maximum": 8e535` (found by the same fuzz target).
    if let Some((path, number)) = number_beyond_floats(&schema, String::new()) {
        let path = if path.is_empty() { "/".to_owned() } else { path };
        return Err(refuse(format!(
            "the schema is not a valid JSON Schema here: {path}: expected a number within a 64-bit float's range, got {number}"
        )));
    }
    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| refuse(format!("the schema is not a valid JSON Schema: {error}")))?;
    let instance = value.to_value();
    // The schema validator reads every number as a float, and panicked on one that has none
    // (found by the `json_schema` fuzz target: `5E55555555555555555555555580`); such a number is
    // kept as written without a schema, but cannot be checked against one.
    if let Some((path, number)) = number_beyond_floats(&instance, String::new()) {
        let path = if path.is_empty() { "/".to_owned() } else { path };
        return Err(refuse(format!(
            "{path}: expected a number a schema can check (within a 64-bit float's range), got {number}"
        )));
    }
    if let Some(error) = validator.iter_errors(&instance).next() {
        let path = error.instance_path.to_string();
        let path = if path.is_empty() { "/".to_owned() } else { path };
        return Err(refuse(format!("{path}: {error}")));
    }
    Ok(())
}

/// The first number of `value` (in document order) that has no finite 64-bit float, with its
/// JSON pointer below `path`.
fn number_beyond_floats(value: &serde_json::Value, path: String) -> Option<(String, String)> {
    use serde_json::Value;
    let pointer = |token: &str| format!("{path}/{}", token.replace('~', "~0").replace('/', "~1"));
    match value {
        Value::Number(number) if !number.as_f64().is_some_and(f64::is_finite) => Some((path, number.to_string())),
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(index, item)| number_beyond_floats(item, pointer(&index.to_string())))
        }
        Value::Object(fields) => fields.iter().find_map(|(name, field)| number_beyond_floats(field, pointer(name))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_VALUE_BYTES;

    fn config(key: &str, text: &str) -> Op {
        Op::PutConfig { key: key.parse().unwrap(), value: JsonText::try_from(text.to_owned()).unwrap(), schema: None }
    }

    #[test]
    fn a_value_that_breaks_its_schema_is_refused_with_the_path() {
        let schema = JsonText::try_from(
            r#"{"type": "object", "properties": {"burst": {"type": "integer", "maximum": 10000}, "name": {"type": "string", "maxLength": 8}}, "required": ["burst"]}"#.to_owned(),
        )
        .unwrap();
        let put = |text: &str| Op::PutConfig {
            key: "ratelimit".parse().unwrap(),
            value: JsonText::try_from(text.to_owned()).unwrap(),
            schema: Some(schema.clone()),
        };
        let refused = |text: &str| validate_change(&Change::with_ops(vec![put(text)])).unwrap_err().to_string();
        assert_eq!(
            refused(r#"{"burst": 50000}"#),
            "config \"ratelimit\": /burst: 50000 is greater than the maximum of 10000"
        );
        assert!(refused(r#"{"burst": 1, "name": "far-too-long"}"#).starts_with("config \"ratelimit\": /name: "));
        assert!(refused(r#"{"name": "x"}"#).contains("\"burst\" is a required property"));
        assert!(validate_change(&Change::with_ops(vec![put(r#"{"burst": 500}"#)])).is_ok());
        let bad_schema = Op::PutConfig {
            key: "k".parse().unwrap(),
            value: JsonText::try_from("1".to_owned()).unwrap(),
            schema: Some(JsonText::try_from(r#"{"type": 12}"#.to_owned()).unwrap()),
        };
        let error = validate_change(&Change::with_ops(vec![bad_schema])).unwrap_err().to_string();
        assert!(error.contains("not a valid JSON Schema"), "{error}");
    }

    #[test]
    fn a_change_needs_ops_and_distinct_keys() {
        assert_eq!(validate_change(&Change::with_ops(vec![])), Err(ValidationError::EmptyChange));
        let twice = Change::with_ops(vec![config("a", "1"), config("a", "2")]);
        assert!(matches!(validate_change(&twice), Err(ValidationError::DuplicateKey { .. })));
        let many = Change::with_ops((0..=MAX_OPS_PER_CHANGE).map(|i| config(&format!("k{i}"), "1")).collect());
        assert!(matches!(validate_change(&many), Err(ValidationError::TooManyOps { .. })));
        assert_eq!(validate_change(&Change::with_ops(vec![config("a", "1"), config("b", "{}")])), Ok(()));
    }

    #[test]
    fn null_and_empty_config_values_are_refused() {
        let error = validate_change(&Change::with_ops(vec![config("a", "null")])).unwrap_err();
        assert_eq!(error.to_string(), "config \"a\": expected a JSON value other than null, got null");
        assert_eq!(JsonText::try_from("  ".to_owned()), Err(ValidationError::EmptyValue));
    }

    #[test]
    fn a_generation_past_the_member_ceiling_is_refused() {
        use crate::hlc::Stamp;
        use crate::model::GenerationBody;
        use crate::name::GenId;
        let members = (0..=MAX_MEMBERS).map(|i| format!("n{i}").parse().unwrap()).collect();
        let generation = GenerationBody {
            id: GenId { origin: "n0".parse().unwrap(), seq: 1 },
            hlc: Stamp::default(),
            members,
            groups: vec![],
            change: Change::with_ops(vec![config("a", "1")]),
            author: None,
            signed: None,
            terms: None,
        }
        .seal();
        let error = validate_generation(&generation).unwrap_err();
        assert_eq!(error.to_string(), "a cluster may have at most 400 members (the member ceiling), got 401");
    }

    /// Found by `fuzz/` (`wire_pull_frame`, minimized): a pull's `SnapshotEnd` covering
    /// `{"7": u64::MAX}`. Absorbing it overflowed `seq + 1` in `Log::advance` (a panic in a
    /// debug build); in a release build, every later generation of origin 7 counted as
    /// covered by the snapshot and was dropped. Seqs past `MAX_SEQ` are now refused.
    #[test]
    fn seqs_past_the_limit_are_refused() {
        use crate::limits::MAX_SEQ;
        use crate::wire::{PullFrame, decode};
        let bytes = hex::decode("0602010137ffffffffffffffffff01").unwrap();
        let Ok(PullFrame::SnapshotEnd { covers }) = decode(&bytes, "pull frame") else { panic!("a snapshot's end") };
        let error = validate_snapshot(&Snapshot::from_parts(covers, [])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a snapshot's entry for 7 must have a sequence number of at most 9007199254740992, got 18446744073709551615"
        );
        let refused = crate::testing::put("n1", MAX_SEQ + 1, 5, "k", "1");
        assert!(matches!(validate_generation(&refused), Err(ValidationError::SeqTooLarge { .. })));
        let last = crate::testing::put("n1", MAX_SEQ, 5, "k", "1");
        validate_generation(&last).unwrap();
        let mut log = crate::Log::new();
        log.insert(last);
        assert_eq!(log.next_seq(&"n1".parse().unwrap()), MAX_SEQ + 1);
    }

    /// Issue 17: a 50 KB rule of `some` over `some` over `in`, over arrays of 3,000 items,
    /// took 71 s an evaluation. It is refused when submitted, with the limit named; from a
    /// peer or the disk (an older build accepted it) it is stored but never evaluated.
    #[test]
    fn a_rule_too_costly_to_evaluate_is_refused_when_submitted() {
        use crate::testing::{flag_with_rule, nested_some_rule};
        let definition = JsonText::from_value(&flag_with_rule(nested_some_rule(3000))).unwrap();
        let change = Change::with_ops(vec![Op::SetFlag { key: "x".parse().unwrap(), definition: definition.clone() }]);
        let error = validate_submitted(&change).unwrap_err().to_string();
        assert_eq!(
            error,
            "flag \"x\": /targeting: rule costs up to 54045009005 operations, above the limit of 250000 \
             (MAX_RULE_COST); nested iterations multiply"
        );
        assert_eq!(validate_change(&change), Ok(()), "a peer's generation is stored, so the log converges");
        let flag = FlagDefinition::parse(&"x".parse().unwrap(), &definition).unwrap();
        let evaluation = flag.evaluate("x", &serde_json::Map::new(), crate::flagd::Fractional::V2, 0);
        assert_eq!(evaluation.error_code, Some(crate::eval::ErrorCode::General));
        assert!(evaluation.error_message.unwrap().contains("MAX_RULE_COST"));
    }

    #[test]
    fn a_rule_just_under_the_bound_is_accepted_and_evaluates() {
        use crate::testing::{flag_with_rule, rule_just_under_the_bound};
        let rule = rule_just_under_the_bound();
        let cost = crate::cost::rule_cost(&rule);
        assert!(cost <= crate::limits::MAX_RULE_COST && cost > crate::limits::MAX_RULE_COST * 99 / 100, "{cost}");
        let definition = JsonText::from_value(&flag_with_rule(rule)).unwrap();
        let key: Key = "x".parse().unwrap();
        validate_submitted(&Change::with_ops(vec![Op::SetFlag { key: key.clone(), definition: definition.clone() }]))
            .unwrap();
        let flag = FlagDefinition::parse(&key, &definition).unwrap();
        let evaluation = flag.evaluate("x", &serde_json::Map::new(), crate::flagd::Fractional::V2, 0);
        assert_eq!((evaluation.variant.as_deref(), evaluation.error_code), (Some("b"), None));
    }

    #[test]
    fn oversized_values_name_the_limit() {
        let text = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        let error = JsonText::try_from(text).unwrap_err();
        assert!(error.to_string().starts_with("JSON value must be at most 4194304 bytes, got 4194306"));
    }

    /// Found by the `json_schema` fuzz target in a CI run: a number with no 64-bit float (an
    /// exponent past its range) under a schema panicked inside the schema validator, from a
    /// `config put` or a peer's generation. It is refused, naming where; without a schema it
    /// stays a value, and large numbers a float holds still pass.
    #[test]
    fn a_number_beyond_floats_under_a_schema_is_refused_not_a_panic() {
        let key: Key = "fuzz".parse().unwrap();
        let text = |t: &str| JsonText::try_from(t.to_owned()).unwrap();
        let schema = text(
            r##"{"$defs": {"port": {"type": "integer", "maximum": 65535}}, "type": "object",
                "patternProperties": {"^svc-": {"$ref": "#/$defs/port"}}, "minProperties": 1}"##,
        );
        let huge = text(r#"{"svc-a": 55555555555555555555555E55555555555555555555555580, "svc-b": 0}"#);
        let refused = validate_config_value(&key, &huge, Some(&schema)).unwrap_err().to_string();
        assert!(refused.contains("/svc-a: expected a number a schema can check"), "{refused}");
        assert!(validate_config_value(&key, &huge, None).is_ok(), "no schema, no float needed");
        let nested = text(r#"{"a": [1, {"b/c": 1e400}]}"#);
        let refused = validate_config_value(&key, &nested, Some(&text("{}"))).unwrap_err().to_string();
        assert!(refused.contains("/a/1/b~1c:"), "{refused}");
        let large = text(r#"{"svc-a": 123456789012345678901234567890}"#);
        assert!(validate_config_value(&key, &large, Some(&text(r#"{"type": "object"}"#))).is_ok());
    }

    /// Found by the same fuzz target in a later CI run: such a number in the schema itself
    /// (`"maximum": 8e0535`) panicked while the validator compiled it.
    #[test]
    fn a_schema_with_a_number_beyond_floats_is_refused_not_a_panic() {
        let key: Key = "fuzz".parse().unwrap();
        let text = |t: &str| JsonText::try_from(t.to_owned()).unwrap();
        let schema = text(
            r##"{"$defs": {"port": {"Type": "integer", "exclusiveMinimum": 0, "maximum": 8e0535}}, "txpe": "object",
                "patternProperties": {"^svc-": {"$ref": "#/$defs/port"}}, "minProperties": 1}"##,
        );
        let value = text(r#"{"svc-a": 80, "Avc-b": 0}"#);
        let refused = validate_config_value(&key, &value, Some(&schema)).unwrap_err().to_string();
        assert!(refused.contains("/$defs/port/maximum: expected a number within a 64-bit float's range"), "{refused}");
    }
}
