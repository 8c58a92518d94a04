//! The approval rules, one test per way a change can fall short of them.

use super::*;
use crate::error::ValidationError;
use crate::model::{GenerationBody, JsonText, Op};
use crate::snapshot::WriteProof;
use crate::trust::{ISSUE_WINDOW_MS, Trust};
use crate::validate::validate_terms;

const CLUSTER: &str = "prod";
const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 3600 * 1000;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn root() -> SecretKey {
    key(1)
}

/// Operator `name` with key `n`, delegated by the root for `prefixes`.
fn operator(n: u8, name: &str, prefixes: &[&str]) -> (SecretKey, Delegation) {
    let prefixes = prefixes.iter().map(ToString::to_string).collect();
    let delegation = root().delegate(CLUSTER, name.parse().unwrap(), key(n).public(), prefixes, NOW + 30 * 24 * HOUR);
    (key(n), delegation)
}

fn alice() -> (SecretKey, Delegation) {
    operator(2, "alice", &[])
}

fn bob() -> (SecretKey, Delegation) {
    operator(3, "bob", &[])
}

fn carol() -> (SecretKey, Delegation) {
    operator(4, "carol", &[])
}

fn put(key: &str) -> Change {
    Change::with_ops(vec![Op::PutConfig {
        key: key.parse().unwrap(),
        value: JsonText::try_from("1".to_owned()).unwrap(),
        schema: None,
    }])
}

fn rule(prefix: &str, signatures: usize, operators: &[&str]) -> ApprovalRule {
    ApprovalRule {
        prefix: prefix.to_owned(),
        signatures,
        operators: operators.iter().map(ToString::to_string).collect(),
    }
}

fn trust(rules: Vec<ApprovalRule>) -> Trust {
    Trust { cluster: CLUSTER.to_owned(), roots: vec![root().public()], approvals: rules, ..Trust::default() }
}

fn id(text: &str) -> GenId {
    text.parse().unwrap()
}

fn body(seq: u64, wall_ms: u64, change: Change, signed: &Signed, terms: Option<Terms>) -> GenerationBody {
    GenerationBody {
        id: GenId { origin: "n1".parse().unwrap(), seq },
        hlc: Stamp { wall_ms, logical: 0 },
        members: vec![].into(),
        groups: vec![],
        change,
        author: Some(signed.delegation.operator.clone()),
        signed: Some(Box::new(signed.clone())),
        terms: terms.map(Box::new),
    }
}

/// Alice's signature on `change`, issued at `issued_ms`.
fn proposed(change: &Change, issued_ms: u64) -> Signed {
    let (secret, delegation) = alice();
    secret.sign_change(CLUSTER, delegation, issued_ms, change, None)
}

fn approval(who: (SecretKey, Delegation), proposal: &str, change: &Change, issued_ms: u64, expires_ms: u64) -> Signed {
    let digest = proposal_digest(change, None);
    who.0.sign_approval(CLUSTER, who.1, issued_ms, &id(proposal), &digest, expires_ms)
}

/// The enactment of proposal `n1.1` of `change` (signed by Alice at NOW), stamped `wall_ms`.
fn enact(change: &Change, approvals: Vec<Signed>, wall_ms: u64, expires_ms: u64) -> GenerationBody {
    let governance = Some(Governance::Enact { proposal: id("n1.1"), expires_ms });
    let terms = Terms { start_at_ms: None, approvals, governance };
    body(2, wall_ms, change.clone(), &proposed(change, NOW), Some(terms))
}

#[test]
fn a_change_under_a_two_signature_rule_needs_a_second_operator() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let plain = body(1, NOW, change.clone(), &proposed(&change, NOW), None);
    let refused = trust.check(&plain).unwrap_err();
    assert_eq!(refused.reason(), "approvals");
    assert_eq!(
        refused.to_string(),
        "changes under \"payments/\" need the signatures of 2 distinct operators, got 1 (alice): \
         propose it (`grapevine change propose`) and have it approved"
    );
    // Other keys, and nodes without the rule, take it as before.
    trust.check(&body(1, NOW, put("search/limit"), &proposed(&put("search/limit"), NOW), None)).unwrap();
    Trust { approvals: vec![], ..trust.clone() }.check(&plain).unwrap();

    // Bob approves three hours later; the enactment is stamped a minute after that.
    let expires = NOW + 24 * HOUR;
    let bobs = approval(bob(), "n1.1", &change, NOW + 3 * HOUR, expires);
    trust.check(&enact(&change, vec![bobs.clone()], NOW + 3 * HOUR + 60_000, expires)).unwrap();
    let missing = trust.check(&enact(&change, vec![], NOW + 60_000, expires)).unwrap_err();
    assert_eq!(missing.reason(), "approvals");
    // A change of two prefixes needs what its strictest rule asks.
    let strict = Trust { approvals: vec![rule("payments/", 2, &[]), rule("payments/limit", 3, &[])], ..trust.clone() };
    let two = strict.check(&enact(&change, vec![bobs.clone()], NOW + 3 * HOUR, expires)).unwrap_err();
    assert!(two.to_string().contains("need the signatures of 3 distinct operators, got 2 (alice, bob)"), "{two}");
    let carols = approval(carol(), "n1.1", &change, NOW + 3 * HOUR, expires);
    strict.check(&enact(&change, vec![bobs, carols], NOW + 3 * HOUR, expires)).unwrap();
    assert_eq!(strict.approvals_needed(&change), 2);
    assert_eq!(strict.approvals_needed(&put("search/x")), 0);
}

#[test]
fn the_proposers_own_approval_and_a_repeated_one_count_once() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let own = approval(alice(), "n1.1", &change, NOW + 1000, expires);
    let refused = trust.check(&enact(&change, vec![own.clone(), own], NOW + 2000, expires)).unwrap_err();
    assert!(refused.to_string().contains("got 1 (alice)"), "{refused}");
    let three = Trust { approvals: vec![rule("payments/", 3, &[])], ..trust };
    let bobs = approval(bob(), "n1.1", &change, NOW + 1000, expires);
    let again = approval(bob(), "n1.1", &change, NOW + 1500, expires);
    let refused = three.check(&enact(&change, vec![bobs, again], NOW + 2000, expires)).unwrap_err();
    assert!(refused.to_string().contains("got 2 (alice, bob)"), "{refused}");
}

#[test]
fn an_expired_proposal_is_neither_approved_nor_enacted() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let late = approval(bob(), "n1.1", &change, expires + 1, expires);
    let refused = trust.check(&enact(&change, vec![late], expires, expires)).unwrap_err();
    assert_eq!(refused.reason(), "proposal_expired");
    let bobs = approval(bob(), "n1.1", &change, expires - 1000, expires);
    let refused = trust.check(&enact(&change, vec![bobs.clone()], expires + 1, expires)).unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!("proposal n1.1 expired at {expires} ms, and the enactment is stamped {} ms", expires + 1)
    );
    // An expiry further than the lifetime bound from the proposer's signing is refused.
    let far = NOW + MAX_PROPOSAL_LIFETIME_MS + 1;
    let bobs = approval(bob(), "n1.1", &change, NOW + 1000, far);
    assert_eq!(trust.check(&enact(&change, vec![bobs], NOW + 2000, far)).unwrap_err().reason(), "governance");
    // An approval record after the expiry is refused by every node too.
    let record =
        approve_record(3, approval(bob(), "n1.1", &change, expires + 5, expires), &change, expires, expires + 5);
    assert_eq!(trust.check(&record).unwrap_err().reason(), "proposal_expired");
}

fn approve_record(seq: u64, signed: Signed, change: &Change, expires_ms: u64, wall_ms: u64) -> GenerationBody {
    let governance = Governance::Approve { proposal: id("n1.1"), digest: proposal_digest(change, None), expires_ms };
    let terms = Terms { governance: Some(governance), ..Terms::default() };
    body(seq, wall_ms, Change { ops: vec![], ..Change::with_ops(vec![]) }, &signed, Some(terms))
}

#[test]
fn a_forged_or_misdirected_approval_is_refused() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    // Bob's delegation, signed by Mallory's key.
    let (_, bobs_delegation) = bob();
    let forged =
        key(9).sign_approval(CLUSTER, bobs_delegation, NOW, &id("n1.1"), &proposal_digest(&change, None), expires);
    let refused = trust.check(&enact(&change, vec![forged.clone()], NOW, expires)).unwrap_err();
    assert_eq!(refused.reason(), "bad_approval");
    assert_eq!(refused.to_string(), "the approval of bob does not verify over proposal n1.1 for cluster \"prod\"");
    assert_eq!(trust.check(&approve_record(3, forged, &change, expires, NOW)).unwrap_err().reason(), "bad_approval");
    // A key that delegated itself.
    let mallory = key(9).delegate(CLUSTER, "bob".parse().unwrap(), key(9).public(), vec![], u64::MAX);
    let selfmade = key(9).sign_approval(CLUSTER, mallory, NOW, &id("n1.1"), &proposal_digest(&change, None), expires);
    assert_eq!(trust.check(&enact(&change, vec![selfmade], NOW, expires)).unwrap_err().reason(), "unknown_root");
    // Bob's approval of another proposal, or of other content, or with another expiry.
    for reused in [
        approval(bob(), "n1.7", &change, NOW, expires),
        approval(bob(), "n1.1", &put("payments/other"), NOW, expires),
        approval(bob(), "n1.1", &change, NOW, expires + 1),
    ] {
        assert_eq!(trust.check(&enact(&change, vec![reused], NOW, expires)).unwrap_err().reason(), "bad_approval");
    }
    // An approval is not a change signature: it cannot be replayed as one.
    let bobs = approval(bob(), "n1.1", &change, NOW, expires);
    assert_eq!(trust.check(&body(3, NOW, change, &bobs, None)).unwrap_err().reason(), "bad_signature");
}

#[test]
fn an_approver_out_of_scope_or_not_among_the_rules_operators_does_not_count() {
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let scoped = approval(operator(5, "dave", &["search/"]), "n1.1", &change, NOW, expires);
    let refused = trust.check(&enact(&change, vec![scoped], NOW, expires)).unwrap_err();
    assert_eq!(refused.to_string(), "dave may change keys under [\"search/\"] only, got config payments/limit");
    let only_carol = Trust { approvals: vec![rule("payments/", 1, &["carol"])], ..trust.clone() };
    let bobs = approval(bob(), "n1.1", &change, NOW, expires);
    let refused = only_carol.check(&enact(&change, vec![bobs], NOW, expires)).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "changes under \"payments/\" need the signatures of 1 distinct operators among [\"carol\"], got 0: \
         propose it (`grapevine change propose`) and have it approved"
    );
    let carols = approval(carol(), "n1.1", &change, NOW, expires);
    only_carol.check(&enact(&change, vec![carols], NOW, expires)).unwrap();
    let by_key = Trust { approvals: vec![rule("payments/", 2, &[&key(3).public().to_string(), "alice"])], ..trust };
    by_key.check(&enact(&change, vec![approval(bob(), "n1.1", &change, NOW, expires)], NOW, expires)).unwrap();
}

#[test]
fn an_enactment_is_stamped_within_the_window_of_its_newest_signature() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + 24 * HOUR;
    let bobs = approval(bob(), "n1.1", &change, NOW + 2 * HOUR, expires);
    let refused = trust.check(&enact(&change, vec![bobs.clone()], NOW + 2 * HOUR + ISSUE_WINDOW_MS + 1, expires));
    assert_eq!(refused.unwrap_err().reason(), "outside_window");
    let future = approval(bob(), "n1.1", &change, NOW + 2 * HOUR, expires);
    assert_eq!(trust.check(&enact(&change, vec![future], NOW, expires)).unwrap_err().reason(), "outside_window");
}

#[test]
fn proposals_and_votes_are_checked_as_records() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let governance = Governance::Propose { change: change.clone(), expires_ms: expires };
    let terms = Terms { governance: Some(governance), ..Terms::default() };
    let empty = Change { ops: vec![], ..change.clone() };
    let proposal = body(1, NOW, empty.clone(), &proposed(&change, NOW), Some(terms.clone()));
    trust.check(&proposal).unwrap();
    validate_terms(&proposal.change, proposal.terms.as_deref()).unwrap();
    let too_long = Terms {
        governance: Some(Governance::Propose {
            change: change.clone(),
            expires_ms: NOW + MAX_PROPOSAL_LIFETIME_MS + 1,
        }),
        ..Terms::default()
    };
    let refused = trust.check(&body(1, NOW, empty.clone(), &proposed(&change, NOW), Some(too_long))).unwrap_err();
    assert_eq!(refused.reason(), "governance");
    // The proposer must be allowed to write the keys.
    let (dave, scoped) = operator(5, "dave", &["search/"]);
    let by_dave = dave.sign_change(CLUSTER, scoped, NOW, &change, None);
    assert_eq!(trust.check(&body(1, NOW, empty.clone(), &by_dave, Some(terms))).unwrap_err().reason(), "out_of_scope");
    trust.check(&approve_record(2, approval(bob(), "n1.1", &change, NOW, expires), &change, expires, NOW)).unwrap();
    let (secret, delegation) = carol();
    let rejection = secret.sign_rejection(CLUSTER, delegation, NOW, &id("n1.1"), &proposal_digest(&change, None));
    let governance = Governance::Reject { proposal: id("n1.1"), digest: proposal_digest(&change, None) };
    let reject =
        body(3, NOW, empty.clone(), &rejection, Some(Terms { governance: Some(governance), ..Terms::default() }));
    trust.check(&reject).unwrap();
    // A rejection signature is not an approval.
    let as_approval = approve_record(4, rejection, &change, expires, NOW);
    assert_eq!(trust.check(&as_approval).unwrap_err().reason(), "bad_approval");
}

#[test]
fn terms_have_a_shape() {
    let change = put("payments/limit");
    let empty = Change { ops: vec![], ..change.clone() };
    let shape = |change: &Change, terms: Terms| match validate_terms(change, Some(&terms)) {
        Err(ValidationError::Governance { detail }) => detail,
        other => panic!("{other:?}"),
    };
    assert!(shape(&change, Terms::default()).contains("got none"));
    let bobs = approval(bob(), "n1.1", &change, NOW, NOW);
    let loose = Terms { approvals: vec![bobs.clone()], ..Terms::default() };
    assert_eq!(shape(&change, loose), "approvals travel in an enactment only");
    let many = Terms {
        approvals: vec![bobs; MAX_APPROVALS + 1],
        governance: Some(Governance::Enact { proposal: id("n1.1"), expires_ms: NOW }),
        ..Terms::default()
    };
    assert_eq!(shape(&change, many), "at most 16 approvals, got 17");
    let approve =
        || Some(Governance::Approve { proposal: id("n1.1"), digest: proposal_digest(&change, None), expires_ms: 1 });
    let with_ops = Terms { governance: approve(), ..Terms::default() };
    assert!(shape(&change, with_ops).contains("no operations nor controls"));
    validate_terms(&empty, Some(&Terms { governance: approve(), ..Terms::default() })).unwrap();
    let enact_nothing =
        Terms { governance: Some(Governance::Enact { proposal: id("n1.1"), expires_ms: 1 }), ..Terms::default() };
    assert!(shape(&empty, enact_nothing).contains("carries its proposal's operations"));
    let mut control = empty.clone();
    control.controls.push(crate::policy::Control::Pause { target: id("n1.1") });
    let propose_control =
        Terms { governance: Some(Governance::Propose { change: control, expires_ms: 1 }), ..Terms::default() };
    assert!(shape(&empty, propose_control).contains("not rollout controls"));
}

#[test]
fn a_snapshot_write_keeps_its_approvals() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let mut enacted = enact(&change, vec![approval(bob(), "n1.1", &change, NOW, expires)], NOW, expires);
    enacted.id.seq = 1;
    let enacted = enacted.seal();
    let mut log = Log::new();
    log.insert(enacted.clone());
    log.compact(|_| true);
    let write = log.base().writes().next().unwrap();
    trust.check_write(&write.op, &write.generation, write.hlc, write.proof.as_deref()).unwrap();
    let mut stripped: WriteProof = (**write.proof.as_ref().unwrap()).clone();
    stripped.terms = None;
    let refused = trust.check_write(&write.op, &write.generation, write.hlc, Some(&stripped)).unwrap_err();
    assert_eq!(refused.reason(), "approvals");
}

#[test]
fn the_log_tells_each_proposals_state_and_compaction_keeps_the_pending() {
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let empty = Change { ops: vec![], ..change.clone() };
    let terms = Terms {
        governance: Some(Governance::Propose { change: change.clone(), expires_ms: expires }),
        ..Terms::default()
    };
    let mut log = Log::new();
    log.insert(body(1, NOW, empty.clone(), &proposed(&change, NOW), Some(terms)).seal());
    log.insert(
        approve_record(2, approval(alice(), "n1.1", &change, NOW + 10, expires), &change, expires, NOW + 10).seal(),
    );
    log.insert(
        approve_record(3, approval(bob(), "n1.1", &change, NOW + 20, expires), &change, expires, NOW + 20).seal(),
    );
    log.insert(
        approve_record(4, approval(bob(), "n1.1", &change, NOW + 30, expires), &change, expires, NOW + 30).seal(),
    );
    let other = crate::testing::put("n2", 1, NOW + 40, "payments/limit", "7");
    log.insert(other);
    let proposal = proposals(&log).remove(&id("n1.1")).unwrap();
    let approvers: Vec<&str> = proposal.approvals.iter().map(|(_, s)| s.delegation.operator.as_str()).collect();
    assert_eq!(approvers, ["bob"], "the proposer's own approval and bob's second add nothing");
    assert_eq!(proposal.state(NOW), ProposalState::Pending);
    assert_eq!(proposal.state(expires + 1), ProposalState::Expired);
    assert_eq!(conflicts(&log, &proposal), vec![(id("n2.1"), vec!["payments/limit".parse().unwrap()])]);
    assert_eq!(pinned(&log, NOW), [id("n1.1"), id("n1.3")].into());
    assert!(pinned(&log, expires + 1).is_empty());

    let mut enacted = enact(&change, proposal.approval_signatures(), NOW + 50, expires);
    enacted.id.seq = 5;
    log.insert(enacted.seal());
    let proposal = proposals(&log).remove(&id("n1.1")).unwrap();
    assert_eq!((proposal.state(NOW), proposal.enacted.clone()), (ProposalState::Enacted, vec![id("n1.5")]));
    assert!(pinned(&log, NOW).is_empty());
    // The enactment wins over the change that came between.
    assert_eq!(log.state(|_| true).config[&"payments/limit".parse::<Key>().unwrap()].generation, id("n1.5"));
}

#[test]
fn the_fingerprint_tells_nodes_of_other_rules() {
    let none = trust(vec![]);
    let two = trust(vec![rule("payments/", 2, &["bob", "alice"])]);
    let same = trust(vec![rule("payments/", 2, &["alice", "bob"])]);
    assert_ne!(none.fingerprint(), two.fingerprint());
    assert_eq!(two.fingerprint(), same.fingerprint());
    let roots_only = Trust { cluster: CLUSTER.to_owned(), roots: vec![root().public()], ..Trust::default() };
    assert_eq!(none.fingerprint(), roots_only.fingerprint(), "no rules: the fingerprint of earlier builds");
}

#[test]
fn an_approval_by_a_key_revoked_before_is_reverted_with_its_enactment() {
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let mut log = Log::new();
    let revocation = put(crate::signing::revocation_key(&key(3).public()).as_str());
    let (secret, delegation) = alice();
    let revoke =
        body(1, NOW, revocation.clone(), &secret.sign_change(CLUSTER, delegation, NOW, &revocation, None), None);
    log.insert(GenerationBody { id: id("n2.1"), ..revoke }.seal());
    let mut enacted = enact(&change, vec![approval(bob(), "n1.1", &change, NOW + 10, expires)], NOW + 10, expires);
    enacted.id.seq = 2;
    log.insert(enacted.seal());
    assert_eq!(crate::trust::revoked_after(&log), vec![(id("n1.2"), key(3).public())]);
}

#[test]
fn a_scheduled_proposal_keeps_its_start_through_the_enactment() {
    let trust = trust(vec![rule("payments/", 2, &[])]);
    let change = put("payments/limit");
    let (expires, start) = (NOW + HOUR, Some(NOW + 2 * HOUR));
    let (secret, delegation) = alice();
    let proposer = secret.sign_change(CLUSTER, delegation, NOW, &change, start);
    let digest = proposal_digest(&change, start);
    let (bob_key, bob_delegation) = bob();
    let bobs = bob_key.sign_approval(CLUSTER, bob_delegation, NOW, &id("n1.1"), &digest, expires);
    let enact = |start_at_ms| {
        let governance = Some(Governance::Enact { proposal: id("n1.1"), expires_ms: expires });
        let terms = Terms { start_at_ms, approvals: vec![bobs.clone()], governance };
        body(2, NOW, change.clone(), &proposer, Some(terms))
    };
    trust.check(&enact(start)).unwrap();
    // A node that moves the start breaks the proposer's signature; one that drops it too.
    assert_eq!(trust.check(&enact(Some(NOW))).unwrap_err().reason(), "bad_signature");
    assert_eq!(trust.check(&enact(None)).unwrap_err().reason(), "bad_signature");
}

/// A replica named `own` over `log`'s generations, under `trust`.
fn replica(own: &str, log: &Log, trust: Trust) -> crate::replica::Replica {
    use crate::replica::{Config, Now, Replica, Stored};
    let config = Config {
        name: own.parse().unwrap(),
        max_clock_offset_ms: 500,
        retention: crate::log::Retention { generations: 100, age_ms: 0 },
        trust: std::sync::Arc::new(trust),
        freezes: Default::default(),
        max_members: crate::limits::MAX_MEMBERS,
    };
    let stored = Stored { generations: log.iter().cloned().collect(), ..Stored::default() };
    Replica::start(config, stored, None, Now { wall_ms: NOW, mono_ms: 0 }).0
}

#[test]
fn a_vote_becomes_a_record_until_it_completes_the_rule_then_the_enactment() {
    use crate::replica::{Ballot, ProposalError, Vote};
    let change = put("payments/limit");
    let expires = NOW + HOUR;
    let empty = Change { ops: vec![], ..change.clone() };
    let terms = Terms {
        governance: Some(Governance::Propose { change: change.clone(), expires_ms: expires }),
        ..Terms::default()
    };
    let rules = || trust(vec![rule("payments/", 3, &[])]);
    let mut log = Log::new();
    log.insert(body(1, NOW, empty, &proposed(&change, NOW), Some(terms)).seal());
    let bob_approves = approval(bob(), "n1.1", &change, NOW + 10, expires);
    let carol_approves = approval(carol(), "n1.1", &change, NOW + 20, expires);

    let node = replica("n1", &log, rules());
    let ballot = node.vote(id("n1.1"), &bob_approves, Vote::Approve, NOW + 10).unwrap();
    assert!(matches!(ballot, Ballot::Record(Governance::Approve { .. })), "2 of 3 signatures: a record");
    let ballot = node.vote(id("n1.1"), &bob_approves, Vote::Reject, NOW + 10).unwrap();
    assert!(matches!(ballot, Ballot::Record(Governance::Reject { .. })));
    let again = node.vote(id("n1.1"), &proposed(&change, NOW + 5), Vote::Approve, NOW + 10);
    assert!(matches!(again, Err(ProposalError::AlreadySigned { .. })), "the proposer's key signed it");
    assert!(matches!(node.vote(id("n1.9"), &bob_approves, Vote::Approve, NOW), Err(ProposalError::NotFound { .. })));
    let late = node.vote(id("n1.1"), &bob_approves, Vote::Approve, expires + 1).unwrap_err();
    assert!(late.to_string().contains("is expired, not pending"), "{late}");

    log.insert(approve_record(2, bob_approves, &change, expires, NOW + 10).seal());
    let node = replica("n1", &log, rules());
    match node.vote(id("n1.1"), &carol_approves, Vote::Approve, NOW + 20).unwrap() {
        Ballot::Enact(proposal, approvals) => {
            assert_eq!(proposal.id, id("n1.1"));
            let approvers: Vec<&str> = approvals.iter().map(|a| a.delegation.operator.as_str()).collect();
            assert_eq!(approvers, ["bob", "carol"]);
        }
        other => panic!("the third signature enacts it: {other:?}"),
    }
    assert!(node.ready_to_enact(NOW + 20).is_empty(), "bob's record alone does not complete it");

    log.insert(approve_record(3, carol_approves, &change, expires, NOW + 20).seal());
    assert_eq!(replica("n1", &log, rules()).ready_to_enact(NOW + 30).len(), 1, "n1 wrote the newest record");
    assert!(replica("n2", &log, rules()).ready_to_enact(NOW + 30).is_empty(), "only the newest record's writer enacts");
}
