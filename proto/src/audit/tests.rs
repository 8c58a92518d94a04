//! Tests of the audit records: the fold before and after each entry, reverts, controls, the
//! redaction of secrets and the cursor.

use serde_json::json;

use super::*;
use crate::model::{Change, GenerationBody};
use crate::testing::put;

fn key(name: &str) -> Key {
    name.parse().unwrap()
}

fn ids(names: &[&str]) -> BTreeSet<GenId> {
    names.iter().map(|name| name.parse().unwrap()).collect()
}

/// `origin.seq` putting `key` = `value` under `schema`.
fn put_with_schema(origin: &str, seq: u64, wall_ms: u64, key: &str, value: Value, schema: Value) -> Generation {
    let mut generation = put(origin, seq, wall_ms, key, "0");
    generation.body.change.ops = vec![Op::PutConfig {
        key: key.parse().unwrap(),
        value: JsonText::from_value(&value).unwrap(),
        schema: Some(JsonText::from_value(&schema).unwrap()),
    }];
    generation.body.seal()
}

fn log_of(generations: Vec<Generation>) -> Log {
    let mut log = Log::new();
    for generation in generations {
        log.insert(generation);
    }
    log
}

#[test]
fn times_print_as_rfc3339_in_utc() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(1_795_306_291_299), "2026-11-22T00:11:31.299Z");
    assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

#[test]
fn a_record_shows_each_key_before_and_after_skipping_reverted_writes() {
    let mut log = log_of(vec![
        put("n1", 1, 100, "k", "1"),
        put("n2", 1, 200, "k", "2"),
        put("n1", 2, 300, "k", "3"),
        put("n1", 3, 400, "other", "\"x\""),
    ]);
    log.revert(&Revert::of(&"n2.1".parse().unwrap()));
    let records = records(&log, "n9", &ids(&["n1.2", "n1.3", "n2.1"]), &[]);
    let shown: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(shown, ["n2.1", "n1.2", "n1.3"], "fold order");
    let change = |record: &Record| (record.changes[0].before.clone(), record.changes[0].after.clone());
    assert_eq!(change(&records[0]), (Some(json!(1)), Some(json!(2))));
    assert_eq!(records[0].reverted, Some(true));
    // n2.1 is reverted: n1.2 replaced n1.1's value.
    assert_eq!(change(&records[1]), (Some(json!(1)), Some(json!(3))));
    assert_eq!(change(&records[2]), (None, Some(json!("x"))));
    let line = serde_json::to_value(&records[1]).unwrap();
    assert_eq!(line["kind"], "generation");
    assert_eq!(line["node"], "n9");
    assert_eq!(line["origin"], "n1");
    assert_eq!(line["at"], "1970-01-01T00:00:00.300Z");
    assert_eq!(line["at_ms"], 300);
    assert_eq!(line["changes"][0]["kind"], "config");
    assert!(line["policy"]["waves"].is_array());
    assert!(line.get("secret").is_none() && line["changes"][0].get("secret").is_none());
}

#[test]
fn the_value_before_can_come_from_the_snapshot() {
    let mut log = log_of(vec![put("n1", 1, 100, "k", "1"), put("n1", 2, 200, "k", "2")]);
    log.compact(|g| g.id().seq == 1);
    assert!(log.get(&"n1.1".parse().unwrap()).is_none());
    let records = records(&log, "n1", &ids(&["n1.1", "n1.2"]), &[]);
    assert_eq!(records.len(), 1, "a compacted generation has no record");
    assert_eq!(records[0].changes[0].before, Some(json!(1)));
}

#[test]
fn a_revert_shows_the_value_with_and_without_its_target() {
    let mut log = log_of(vec![
        put("n1", 1, 100, "k", "1"),
        put("n1", 2, 200, "k", "2"),
        put("n1", 3, 300, "j", "7"),
        put("n1", 4, 400, "j", "8"),
    ]);
    for target in ["n1.2", "n1.3"] {
        log.revert(&Revert::of(&target.parse().unwrap()));
    }
    let targets: Vec<GenId> = vec!["n1.2".parse().unwrap(), "n1.3".parse().unwrap(), "n1.9".parse().unwrap()];
    let records = records(&log, "n1", &BTreeSet::new(), &targets);
    assert_eq!(records[0].id, "n1.2/revert");
    assert_eq!(records[0].kind, RecordKind::Revert);
    assert_eq!(records[0].target.as_deref(), Some("n1.2"));
    assert_eq!(
        (records[0].changes[0].before.clone(), records[0].changes[0].after.clone()),
        (Some(json!(2)), Some(json!(1)))
    );
    // n1.4 wrote j after n1.3: undoing n1.3 leaves j as it was.
    assert_eq!(
        (records[1].changes[0].before.clone(), records[1].changes[0].after.clone()),
        (Some(json!(8)), Some(json!(8)))
    );
    assert!(records[2].changes.is_empty(), "a target not held whole");
}

#[test]
fn a_control_names_what_it_controls() {
    let target: GenId = "n1.1".parse().unwrap();
    let body = GenerationBody {
        id: "n2.1".parse().unwrap(),
        hlc: Stamp { wall_ms: 500, logical: 0 },
        members: vec![].into(),
        groups: vec![],
        change: Change {
            ops: vec![],
            policy: Policy::default(),
            controls: vec![Control::Promote { target: target.clone(), through_wave: 2 }],
        },
        author: Some("alice".parse().unwrap()),
        signed: None,
        terms: None,
    };
    let log = log_of(vec![put("n1", 1, 100, "k", "1"), body.seal()]);
    let records = records(&log, "n1", &ids(&["n2.1"]), &[]);
    let line = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(line["kind"], "control");
    assert_eq!(line["author"], "alice");
    assert_eq!(line["controls"], json!([{"action": "promote", "target": "n1.1", "through_wave": 2}]));
    assert!(line.get("policy").is_none());
}

#[test]
fn a_write_only_value_is_redacted_on_both_sides_with_a_digest_that_shows_change() {
    let schema = json!({"type": "string", "writeOnly": true});
    let log = log_of(vec![
        put_with_schema("n1", 1, 100, "db.password", json!("hunter2"), schema.clone()),
        put_with_schema("n1", 2, 200, "db.password", json!("correct horse"), schema),
    ]);
    let records = records(&log, "n1", &ids(&["n1.1", "n1.2"]), &[]);
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("correct horse"), "{text}");
    let change = &records[1].changes[0];
    assert!(change.secret);
    let (before, after) = (change.before.clone().unwrap(), change.after.clone().unwrap());
    assert!(before.as_str().unwrap().starts_with("<redacted sha256:"), "{before}");
    assert_ne!(before, after, "a reader sees that it changed");
    assert_eq!(records[0].changes[0].after, change.before.clone(), "the same value, the same digest");
}

#[test]
fn only_the_secret_properties_of_a_value_are_redacted() {
    let schema = json!({
        "type": "object",
        "properties": {
            "host": {"type": "string"},
            "password": {"type": "string", "x-grapevine-secret": true},
            "replicas": {"type": "array", "items": {"$ref": "#/$defs/replica"}}
        },
        "$defs": {"replica": {"type": "object", "properties": {"token": {"writeOnly": true}}}}
    });
    let value = json!({"host": "db1", "password": "s3cret", "replicas": [{"name": "r1", "token": "t0ken"}]});
    let (shown, redacted) = redact(&key("db"), &value, &[schema]);
    assert!(redacted);
    assert_eq!(shown["host"], "db1");
    assert_eq!(shown["replicas"][0]["name"], "r1");
    let text = shown.to_string();
    assert!(!text.contains("s3cret") && !text.contains("t0ken"), "{text}");
    assert!(shown["password"].as_str().unwrap().starts_with("<redacted sha256:"));
}

#[test]
fn a_secret_the_walk_cannot_place_redacts_the_whole_value() {
    let schema = json!({"type": "object", "patternProperties": {"^key_": {"writeOnly": true}}});
    let value = json!({"key_a": "s3cret", "name": "x"});
    let (shown, redacted) = redact(&key("k"), &value, &[schema]);
    assert!(redacted && shown.is_string(), "{shown}");
    let cycle = json!({"$ref": "#", "properties": {"a": {"$ref": "#"}, "p": {"writeOnly": true}}});
    let (shown, _) = redact(&key("k"), &json!({"a": {"a": {"p": "s3cret"}}}), &[cycle]);
    assert!(!shown.to_string().contains("s3cret"), "{shown}");
}

#[test]
fn a_value_without_a_secret_mark_is_shown_as_is() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "readOnly": true}}});
    let value = json!({"n": 3});
    assert_eq!(redact(&key("k"), &value, &[schema]), (value.clone(), false));
    assert_eq!(redact(&key("k"), &value, &[]), (value, false));
}

#[test]
fn a_new_schema_that_marks_a_secret_hides_the_old_value_too() {
    let log = log_of(vec![
        put("n1", 1, 100, "api.key", "\"old-key-in-clear\""),
        put_with_schema("n1", 2, 200, "api.key", json!("new"), json!({"writeOnly": true})),
    ]);
    let records = records(&log, "n1", &ids(&["n1.2"]), &[]);
    assert!(!serde_json::to_string(&records).unwrap().contains("old-key-in-clear"));
}

#[test]
fn the_cursor_settles_out_of_order_ids_and_passes_compacted_ones() {
    let id = |text: &str| text.parse::<GenId>().unwrap();
    let mut cursor = Cursor::default();
    cursor.mark(&id("n1.2"));
    assert!(cursor.covers(&id("n1.2")) && !cursor.covers(&id("n1.1")));
    cursor.mark(&id("n1.1"));
    assert_eq!(cursor.through.get(&"n1".parse().unwrap()), 2);
    assert!(cursor.beyond.is_empty());
    cursor.mark(&id("n2.5"));
    let mut compacted = VersionVector::default();
    compacted.raise("n2".parse().unwrap(), 4);
    cursor.pass(&compacted);
    assert_eq!(cursor.through.get(&"n2".parse().unwrap()), 5);
    assert!(cursor.beyond.is_empty());
}

/// A proposal's record shows what it would change; its approval and its enactment name it, and
/// the enactment names its approvers beside the proposer; a scheduled start is shown.
#[test]
fn proposals_votes_and_enactments_are_their_own_kinds() {
    use crate::model::{Governance, Terms};
    use crate::signing::SecretKey;
    let root = SecretKey::from_seed([1; 32]);
    let signer = |seed: u8, name: &str| {
        let key = SecretKey::from_seed([seed; 32]);
        let delegation = root.delegate("c", name.parse().unwrap(), key.public(), vec![], u64::MAX);
        (key, delegation)
    };
    let (alice, bob) = (signer(2, "alice"), signer(3, "bob"));
    let base = put("n1", 1, 100, "payments/limit", "1");
    let proposed = put("n1", 9, 200, "payments/limit", "2").body.change;
    let with_terms =
        |seq: u64, wall_ms: u64, change: Change, by: &(SecretKey, crate::signing::Delegation), terms: Terms| {
            let signed = by.0.sign_change("c", by.1.clone(), wall_ms, &change, terms.start_at_ms);
            let mut body = put("n1", seq, wall_ms, "unused", "0").body;
            body.change = change;
            body.author = Some(by.1.operator.clone());
            body.signed = Some(Box::new(signed));
            body.terms = Some(Box::new(terms));
            body.seal()
        };
    let empty = Change { ops: vec![], ..proposed.clone() };
    let proposal_id: GenId = "n1.2".parse().unwrap();
    let digest = crate::model::ContentHash([0; 32]);
    let proposal = with_terms(
        2,
        300,
        empty.clone(),
        &alice,
        Terms {
            start_at_ms: Some(1_000),
            governance: Some(Governance::Propose { change: proposed.clone(), expires_ms: 9_000 }),
            ..Terms::default()
        },
    );
    let approval = with_terms(
        3,
        400,
        empty,
        &bob,
        Terms {
            governance: Some(Governance::Approve { proposal: proposal_id.clone(), digest, expires_ms: 9_000 }),
            ..Terms::default()
        },
    );
    let approved = bob.0.sign_change("c", bob.1.clone(), 400, &proposed, None);
    let enactment = with_terms(
        4,
        500,
        proposed,
        &alice,
        Terms {
            start_at_ms: Some(1_000),
            approvals: vec![approved],
            governance: Some(Governance::Enact { proposal: proposal_id, expires_ms: 9_000 }),
        },
    );
    let log = log_of(vec![base, proposal.clone(), approval.clone(), enactment.clone()]);
    let records = records(&log, "n1", &ids(&["n1.1", "n1.2", "n1.3", "n1.4"]), &[]);
    let by_id = |id: &str| records.iter().find(|r| r.id == id).unwrap();
    let (proposal, approval, enactment) = (by_id("n1.2"), by_id("n1.3"), by_id("n1.4"));
    assert_eq!(proposal.kind, RecordKind::Proposal);
    assert_eq!(
        (proposal.changes[0].before.clone(), proposal.changes[0].after.clone()),
        (Some(json!(1)), Some(json!(2)))
    );
    assert_eq!(proposal.start_at.as_deref(), Some("1970-01-01T00:00:01.000Z"));
    assert_eq!((approval.kind, approval.proposal.as_deref()), (RecordKind::Approval, Some("n1.2")));
    assert_eq!(approval.signer.as_ref().map(|s| s.operator.as_str()), Some("bob"));
    assert!(approval.changes.is_empty() && approval.policy.is_none());
    assert_eq!((enactment.kind, enactment.proposal.as_deref()), (RecordKind::Generation, Some("n1.2")));
    assert_eq!(enactment.signer.as_ref().map(|s| s.operator.as_str()), Some("alice"));
    assert_eq!(enactment.approvers.iter().map(|s| s.operator.as_str()).collect::<Vec<_>>(), ["bob"]);
    assert_eq!(enactment.changes[0].after, Some(json!(2)));
}
