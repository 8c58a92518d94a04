//! Every reply reads back what it writes, and what `docs/api.md` shows reads as its type:
//! the client and the tests read the node's answers through these types, so a shape they
//! cannot read is a broken client.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

/// Reads `shown` as `T`, and checks that `T` writes it back as it was.
fn reads_back<T: Serialize + DeserializeOwned>(shown: Value) -> T {
    let reply: T = serde_json::from_value(shown.clone()).unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(serde_json::to_value(&reply).unwrap(), shown, "written back otherwise");
    reply
}

fn policy() -> Value {
    json!({"waves": [{"Count": 1}, {"Percent": 100}], "bake_ms": 5000, "health_quorum_permille": 900,
           "watch_window_ms": 600000, "waves_by": null, "emergency": false, "anomaly_quorum_min": 1,
           "anomaly_quorum_permille": 340,
           "thresholds": {"min_samples": 20, "max_error_rate_permille": 50, "max_latency_p99_ms": null,
                          "max_error_ratio_percent": 200, "max_latency_ratio_percent": 150}})
}

#[test]
fn a_change_answer_reads_as_what_it_is() {
    let accepted = json!({"generation": "n1.2", "hash": "7c27", "hlc": "1795297136461.0", "members": ["n1", "n2"],
                          "author": "alice@laptop", "replicas": 0});
    let reply: ChangeReply = reads_back(accepted);
    assert_eq!(reply.generation(), Some("n1.2"));
    let ChangeReply::Accepted(accepted) = reply else { panic!("not accepted: {reply:?}") };
    assert_eq!((accepted.replicas, accepted.start_at_ms, accepted.changed), (Some(0), None, None));

    // Numbers kept as sent (`arbitrary_precision`), floats included, in a diff's values.
    let dry_run = json!({"dry_run": true, "generation": "n1.8", "policy": policy(), "waves": [["n2"], ["n1", "n3"]],
                         "diff": [{"kind": "config", "key": "ratelimit", "before": null, "after": {"share": 0.25}}],
                         "start_at_ms": 1798099200000_u64, "start_at": "2026-12-24T08:00:00Z", "changed": 2,
                         "sign": {"cluster": "prod", "format": 7, "issued_ms": 1763800000000_u64, "change": "0101",
                                  "start_at_ms": null}});
    let reply: ChangeReply = reads_back(dry_run);
    let ChangeReply::DryRun(dry_run) = &reply else { panic!("not a dry run: {reply:?}") };
    assert_eq!(dry_run.diff[0].before, None);
    assert_eq!(dry_run.sign.as_ref().map(|sign| sign.issued_ms), Some(1763800000000));
    assert_eq!(reply.changed(), Some(2));

    let unchanged = json!({"changed": 0, "message": "every flag in the file is already the log's latest"});
    assert!(matches!(reads_back::<ChangeReply>(unchanged), ChangeReply::Unchanged(Unchanged { changed: 0, .. })));
}

#[test]
fn a_field_present_only_sometimes_is_left_out_when_absent() {
    let accepted = Accepted {
        generation: "n1.1".into(),
        hlc: "1.0".into(),
        hash: "ab".into(),
        members: vec!["n1".parse().unwrap()],
        author: None,
        start_at_ms: None,
        start_at: None,
        replicas: None,
        changed: None,
    };
    let written = serde_json::to_value(&accepted).unwrap();
    assert_eq!(written, json!({"generation": "n1.1", "hlc": "1.0", "hash": "ab", "members": ["n1"], "author": null}));
}

#[test]
fn a_proposal_and_a_vote_read_back_with_the_record_they_became() {
    let record = json!({"generation": "n1.12", "hlc": "1763800000000.0", "hash": "ab", "members": ["n1"],
                        "author": "alice", "start_at_ms": 1798099200000_u64, "start_at": "2026-12-24T08:00:00Z"});
    let mut proposed = record.clone();
    proposed["proposal"] = json!("n1.12");
    proposed["expires_ms"] = json!(1763886400000_u64);
    proposed["approvals_needed"] = json!(1);
    let proposed: Proposed = reads_back(proposed);
    assert_eq!(proposed.record.start_at_ms, Some(1798099200000));
    let mut voted = record;
    voted["proposal"] = json!("n1.12");
    voted["enacted"] = json!(true);
    assert!(reads_back::<Voted>(voted).enacted);
}

/// The first JSON block under `heading` in `docs/api.md`.
fn documented(heading: &str) -> Value {
    let page = include_str!("../../../docs/api.md");
    let section = &page[page.find(heading).unwrap_or_else(|| panic!("no {heading} in docs/api.md"))..];
    let start = section.find("```json\n").expect("a JSON block") + "```json\n".len();
    let block = &section[start..];
    serde_json::from_str(&block[..block.find("```").expect("the block ends")]).expect("the example is JSON")
}

/// Reads what the docs show as `T`.
fn reads_documented<T: DeserializeOwned>(heading: &str) -> T {
    let shown = documented(heading);
    serde_json::from_value(shown.clone()).unwrap_or_else(|e| panic!("{heading}: {e}: {shown}"))
}

#[test]
fn what_the_docs_show_reads_as_its_reply() {
    let rollout: Rollout = reads_documented("## `GET /v1/rollouts/{generation}`");
    assert_eq!((rollout.open_waves, rollout.waves[2].members[0].report), (2, None));
    assert!(!rollout.finished());
    assert!(Rollout { reverted: true, ..rollout.clone() }.finished(), "a reverted rollout moves no more");
    let rollback: Rollback = reads_documented("## `POST /v1/rollouts/{generation}/rollback`");
    assert_eq!(rollback.revert, "n1.3/revert");
}

#[test]
fn a_rollout_reads_back_with_its_release_and_hold() {
    let rollout = json!({
        "generation": "n1.3", "keys": ["config ratelimit"], "policy": policy(),
        "controls": {"paused": false, "promoted_through": 1},
        "waves": [{"index": 0, "open": true,
                   "members": [{"name": "n4", "report": {"verdict": "inconclusive", "elapsed_ms": 3100}}]}],
        "open_waves": 1, "all_waves_open": false, "applied_here": true, "reverted": false,
        "anomaly_quorum": {"applied": 1, "anomalous": [], "needed": 1}, "reverted_by": {"n2": "rollback"},
        "judgement": null,
        "release": {"wave": 0, "at_unix_ms": 1795297136461_u64, "controls": {"paused": false, "promoted_through": null},
                    "reports": {"n2": {"verdict": "healthy", "elapsed_ms": 5000}}},
        "start_at_ms": null,
        "hold": {"kind": "frozen", "window": "weekend", "until_ms": 1798099200000_u64,
                 "until": "2026-12-24T08:00:00Z", "in_ms": 65000, "reason": "frozen by weekend until 2026-12-24T08:00:00Z"},
    });
    let rollout: Rollout = reads_back(rollout);
    assert_eq!(rollout.release.as_ref().map(|release| release.reports.len()), Some(1));
    let mut listed: Rollouts = reads_back(json!({"node": "n1", "rollouts": []}));
    listed.rollouts.push(Rollout { hold: None, ..rollout });
    assert_eq!(serde_json::from_value::<Rollouts>(serde_json::to_value(&listed).unwrap()).unwrap(), listed);
}

#[test]
fn a_history_reads_back_with_its_ops_governance_and_numbers_as_sent() {
    let history = json!({"node": "n1", "total": 2, "compacted": 0, "generations": [
        {"id": "n1.2", "origin": "n1", "seq": 2, "hlc": "1795297136452.0", "hash": "ab", "author": "alice",
         "signed_by": {"key": "ed25519:aa", "root": "ed25519:bb"}, "members": ["n1", "n2"],
         "ops": [{"op": "set_flag", "key": "share",
                  "definition": {"state": "ENABLED", "variants": {"low": 0.1, "high": 2.5}, "defaultVariant": "low"}},
                 {"op": "put_config", "key": "limits", "bytes": 12, "schema": true, "value": {"burst": 1.50}}],
         "policy": policy(), "controls": [], "rollout": null,
         "governance": {"record": "enact", "proposal": "n1.1", "approvals": [{"operator": "bob", "key": "ed25519:cc"}]}},
        {"id": "n1.1", "origin": "n1", "seq": 1, "hlc": "1795297136451.0", "hash": "cd", "author": null,
         "signed_by": null, "members": ["n1"], "ops": [], "policy": policy(),
         "controls": [{"Promote": {"target": {"origin": "n1", "seq": 0}, "through_wave": 2}}], "rollout": null,
         "governance": {"record": "propose", "keys": ["limits"], "expires_ms": 1763886400000_u64, "approvals": []}}]});
    let history: History = reads_back(history);
    assert_eq!(history.generations[0].ops[1].key(), "limits");
    let records = json!({"node": "n1", "records": [{"generation": "n1.1", "share": 0.5}]});
    reads_back::<AuditRecords>(records);
}

#[test]
fn the_documented_status_and_reads_read_as_their_replies() {
    let status: Status = reads_documented("## `GET /v1/status`");
    assert_eq!(status.alive().collect::<Vec<_>>(), ["n1"]);
    assert_eq!((status.members[0].last_heard_ms, status.clock.map(|c| c.fenced)), (Some(140), Some(false)));
    let keys: Keys = reads_documented("## `GET /v1/keys?prefix=P&limit=N`");
    assert_eq!(keys.flags[0].applied.as_ref().map(|side| side.generation.as_str()), Some("n1.2"));
    let whoami: Whoami = reads_documented("## `GET /v1/whoami`");
    assert_eq!(whoami.prefixes, [""]);
    let flag: FlagEvaluation = reads_documented("## `GET /v1/flags/{key}`");
    assert_eq!((flag.reason, flag.error_code), (grapevine_proto::eval::Reason::Static, None));
    let config: ConfigValue = reads_documented("## `GET /v1/config/{key}`");
    assert_eq!(config.value["burst"], 50);
    let proposals: Proposals = reads_documented("## `/v1/proposals`");
    assert_eq!(proposals.proposals[0].conflicts[0].generation, "n3.40");
}

#[test]
fn a_status_reads_back_with_its_freeze_and_conflicts() {
    let mut status = documented("## `GET /v1/status`");
    status["freeze"] = json!({"windows": ["weekend"], "fingerprint": "ab12",
                              "active": {"window": "weekend", "until_ms": 1798099200000_u64, "until": "2026-12-24T08:00:00Z"}});
    status["conflicts"] =
        json!({"generations": ["n2.4"], "namesakes": [{"address": "127.0.0.1:17400", "incarnation": 17}]});
    status["signing"]["approvals"] = json!([{"prefix": "payments/", "signatures": 2, "operators": ["alice"]}]);
    status["clock"] = Value::Null;
    let status: Status = reads_back(status);
    assert_eq!(status.freeze.active.map(|active| active.window), Some("weekend".into()));
    reads_back::<Readiness>(json!({"ready": false, "behind": ["n2"], "open_not_applied": [], "recovering": null}));
}

#[test]
fn a_shown_proposal_reads_back_with_its_diff_and_what_to_sign() {
    let mut shown = documented("## `/v1/proposals`")["proposals"][0].clone();
    shown["approvals"] = json!([{"operator": "bob", "key": "ed25519:cc", "record": "n2.3"}]);
    shown["rejected"] = json!({"record": "n3.1", "by": "carol"});
    shown["node"] = json!("n2");
    shown["diff"] = json!([{"kind": "config", "key": "payments/limit", "applied": null, "proposed": {"max": 2.5}}]);
    shown["policy"] = policy();
    shown["sign"] = json!({"cluster": "prod", "format": 7, "issued_ms": 1763800000000_u64, "proposal": "n1.12",
                           "digest": "ab", "expires_ms": 1763886400000_u64, "start_at_ms": null, "change": "0101"});
    let shown: ProposalShown = reads_back(shown);
    assert_eq!(shown.proposal.rejected.map(|r| r.record), Some("n3.1".into()));
}
