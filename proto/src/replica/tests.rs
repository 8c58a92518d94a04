//! Unit and property tests of the replica: every decision reachable without a node.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::policy::Policy;
use crate::report::{Report, Verdict};
use crate::testing::put;

fn name(text: &str) -> NodeName {
    text.parse().expect("a valid node name")
}

fn config(own: &str) -> Config {
    Config {
        name: name(own),
        max_clock_offset_ms: 500,
        retention: Retention { generations: 2, age_ms: 0 },
        trust: Arc::new(Trust::default()),
        freezes: Arc::new(Freezes::default()),
        max_members: crate::limits::MAX_MEMBERS,
    }
}

fn replica(own: &str) -> Replica {
    Replica::start(config(own), Stored::default(), None, at(1_000)).0
}

fn at(wall_ms: u64) -> Now {
    Now { wall_ms, mono_ms: wall_ms }
}

/// `put` with the given members and policy, resealed.
fn change(origin: &str, seq: u64, wall_ms: u64, members: &[&str], policy: Policy) -> Generation {
    let mut body = put(origin, seq, wall_ms, &format!("k{seq}"), &format!("{seq}")).body;
    body.members = members.iter().map(|m| name(m)).collect();
    body.change.policy = policy;
    body.seal()
}

fn report(verdict: Verdict, elapsed_ms: u64) -> Report {
    Report { verdict, elapsed_ms }
}

fn config_value(replica: &Replica, key: &str) -> Option<String> {
    replica.state().config.get(&key.parse::<crate::Key>().unwrap()).map(|e| e.value.to_value().to_string())
}

/// Takes `generations` in through triage and commits what it found new (the store is assumed
/// to have written them).
fn ingest(replica: &mut Replica, generations: Vec<Generation>, now: Now) -> usize {
    let triage = replica.triage(generations, now, |_| true);
    let count = triage.new.len();
    for generation in triage.new {
        replica.add(generation);
    }
    count
}

/// Releases whatever the gates open now, with `reports` for every waiting generation.
fn release_open(replica: &mut Replica, reports: &BTreeMap<NodeName, Report>, now: Now) -> Gates {
    let waiting: Vec<GenId> = replica.waiting().map(|g| g.id().clone()).collect();
    let all = waiting.into_iter().map(|id| (id, reports.clone())).collect();
    let mut gates = replica.gates(&all, now);
    let open = std::mem::take(&mut gates.open);
    replica.release(open, now);
    gates
}

#[test]
fn a_submitted_change_is_sealed_from_the_live_members_and_applied_in_the_first_wave() {
    let mut replica = replica("a");
    let members = Members { live: vec![name("a")], ..Members::default() };
    let submission =
        Submission { change: put("x", 1, 0, "k", "1").body.change, author: None, signed: None, terms: None };
    let mut clock = replica.clock().clone();
    let generation = replica.seal(submission, members, at(5_000), &mut clock, |_| None).expect("sealed");
    assert_eq!(generation.id().to_string(), "a.1");
    assert_eq!(generation.body.members.to_vec(), vec![name("a")]);
    assert_eq!(generation.body.hlc.wall_ms, 5_000);
    replica.check_own(&generation).expect("the checks peers make pass");
    replica.accept_own(generation, clock);
    assert_eq!(replica.clock().last().wall_ms, 5_000);
    assert_eq!(config_value(&replica, "k"), None, "stored, not applied before its gate");
    let gates = release_open(&mut replica, &BTreeMap::new(), at(5_000));
    assert_eq!(gates.waiting, 0);
    assert_eq!(config_value(&replica, "k").as_deref(), Some("1"));
    assert!(replica.is_released(&"a.1".parse().unwrap()));
}

#[test]
fn seal_refuses_on_a_fenced_clock_while_recovering_or_behind_its_own_name_and_a_label_no_member_has() {
    let (recovering, _) = Replica::start(config("a"), Stored::default(), Some("torn".into()), at(0));
    let submission =
        || Submission { change: put("x", 1, 0, "k", "1").body.change, author: None, signed: None, terms: None };
    let live = Members { live: vec![name("a")], ..Members::default() };
    let mut clock = recovering.clock().clone();
    let refused = recovering.seal(submission(), live.clone(), at(1), &mut clock, |_| None);
    assert!(matches!(refused, Err(SubmitError::Recovering(reason)) if reason == "torn"));

    let fresh = replica("a");
    let limit_ms = fresh.config().max_clock_offset_ms;
    let standing = |ahead_ms| Some(crate::hlc::Standing { ahead_ms, peers: 3 });
    let ahead = Members { clock: standing(limit_ms as i64 + 1), ..live.clone() };
    let refused = fresh.seal(submission(), ahead, at(1), &mut clock, |_| None);
    assert!(matches!(refused, Err(SubmitError::ClockAhead { peers: 3, .. })), "{refused:?}");
    let within = Members { clock: standing(limit_ms as i64), ..live.clone() };
    assert!(fresh.seal(submission(), within, at(1), &mut clock, |_| None).is_ok(), "at the bound is within it");

    let behind = Members { most_held_own: Some(("b".into(), 3)), ..live.clone() };
    let refused = fresh.seal(submission(), behind, at(1), &mut clock, |_| None);
    assert!(matches!(refused, Err(SubmitError::BehindOwnName { own: 0, held: 3, .. })), "{refused:?}");

    let mut by_zone = submission();
    by_zone.change.policy.waves_by = Some("zone".into());
    let refused = fresh.seal(by_zone, live, at(1), &mut clock, |_| None);
    let message = refused.expect_err("no member has the label").to_string();
    assert!(message.contains("no live member has that label"), "{message}");
}

#[test]
fn a_later_wave_opens_on_its_earlier_waves_baked_healthy_reports_and_says_when() {
    let members = ["a", "b", "c", "d"];
    let policy = Policy { bake_ms: 1_000, ..Policy::default() };
    let generation = change("a", 1, 1_000, &members, policy);
    let plan = crate::rollout::Plan::of(&generation.body);
    let canary = plan.waves[0][0].clone();
    let second = plan.waves[1][0].clone();
    let mut replica = replica(second.as_str());
    assert_eq!(ingest(&mut replica, vec![generation.clone()], at(2_000)), 1);

    let mut reports = BTreeMap::new();
    let gates = release_open(&mut replica, &reports, at(2_000));
    assert_eq!((gates.waiting, gates.next_in_ms), (1, None), "no report: waits for a new fact");

    reports.insert(canary.clone(), report(Verdict::Healthy, 400));
    let gates = release_open(&mut replica, &reports, at(2_000));
    assert_eq!((gates.waiting, gates.next_in_ms), (1, Some(600)), "opens once the report is baked");
    assert!(!replica.is_released(generation.id()));

    reports.insert(canary, report(Verdict::Healthy, 1_000));
    let gates = release_open(&mut replica, &reports, at(2_600));
    assert_eq!(gates.waiting, 0);
    assert!(replica.is_released(generation.id()));
    let release = replica.release_of(generation.id()).expect("the evidence is kept");
    assert_eq!((release.wave, release.at_unix_ms, release.reports.len()), (1, 2_600, 1));
    let judging = replica.judging(&generation);
    assert_eq!(judging.gate_bake_ms, Some(1_000), "wave 1 gates wave 2");
}

#[test]
fn the_quorum_reverts_at_once_or_after_waiting_for_a_live_writers_copy() {
    let generation = change("a", 1, 1_000, &["a", "b", "c"], Policy::default());
    let id = generation.id().clone();
    let mut replica = replica("c");
    ingest(&mut replica, vec![generation], at(1_000));
    assert!(replica.judges_revert_of(&id));

    let mut anomaly = Anomaly::default();
    anomaly.reports.insert(name("a"), report(Verdict::Healthy, 0));
    anomaly.reports.insert(name("c"), report(Verdict::Anomalous, 0));
    anomaly.reports.insert(name("b"), report(Verdict::Healthy, 0));
    let anomalies = BTreeMap::from([(id.clone(), anomaly.clone())]);
    assert!(replica.reverts_due(&anomalies, at(1_000)).is_empty(), "1 of 3 is short of 34%");
    anomaly.reports.insert(name("b"), report(Verdict::Anomalous, 0));
    let anomalies = BTreeMap::from([(id.clone(), anomaly.clone())]);
    let due = replica.reverts_due(&anomalies, at(1_000));
    assert_eq!(due.len(), 1, "2 of 3 reach it: due at once with no writer");
    assert_eq!(due[0].1.anomalous, vec![name("b"), name("c")]);

    anomaly.live_writers = 1;
    let anomalies = BTreeMap::from([(id.clone(), anomaly)]);
    assert!(replica.reverts_due(&anomalies, at(2_000)).is_empty(), "a live member wrote it: wait");
    assert_eq!(replica.next_revert_deadline(), Some(2_000 + REVERT_DEFER_MS));
    assert!(replica.reverts_due(&anomalies, at(2_999)).is_empty());
    assert_eq!(replica.reverts_due(&anomalies, at(3_000)).len(), 1, "waited long enough: write it");
    assert!(!replica.defers_reverts());
}

#[test]
fn a_revert_takes_its_target_out_of_both_states_whether_it_arrives_before_or_after() {
    let policy = Policy::emergency();
    let first = change("a", 1, 1_000, &["a"], policy.clone());
    let second = change("a", 2, 2_000, &["a"], policy);
    let mut replica = replica("a");
    ingest(&mut replica, vec![first.clone()], at(3_000));
    release_open(&mut replica, &BTreeMap::new(), at(3_000));
    assert_eq!(config_value(&replica, "k1").as_deref(), Some("1"));

    let reverts = replica.fresh_reverts(vec![Revert::of(first.id()), Revert::of(second.id()), Revert::of(first.id())]);
    assert_eq!(reverts.len(), 2, "one per target");
    replica.add_reverts(&reverts);
    assert_eq!(config_value(&replica, "k1"), None);
    assert!(replica.fresh_reverts(vec![Revert::of(first.id())]).is_empty());

    ingest(&mut replica, vec![second.clone()], at(3_000));
    let gates = release_open(&mut replica, &BTreeMap::new(), at(3_000));
    assert!(gates.open.is_empty() && !replica.is_released(second.id()), "a reverted generation never applies");
    assert!(replica.desired().config.get(&"k2".parse::<crate::Key>().unwrap()).is_none());
    assert!(matches!(replica.rollback(first.id()), Ok(None)), "already reverted");
}

#[test]
fn triage_drops_duplicates_and_sorts_conflicts_unproven_and_future_stamps() {
    let mut replica = replica("a");
    let held = put("b", 1, 1_000, "k", "1");
    assert_eq!(ingest(&mut replica, vec![held.clone(), held.clone()], at(1_000)), 1, "a batch's repeat is dropped");
    assert_eq!(ingest(&mut replica, vec![held], at(1_000)), 0);

    let other = put("b", 1, 1_000, "k", "2");
    let triage = replica.triage(vec![other.clone()], at(1_000), |_| true);
    assert_eq!(triage.conflicts.len(), 1);
    assert!(triage.conflicts[0].1, "the first time: surfaced");
    assert!(!replica.triage(vec![other.clone()], at(1_000), |_| true).conflicts[0].1);
    assert!(replica.view().conflicts.contains(other.id()));

    let mut asked = 0;
    let forged = put("c", 1, 1_000, "k", "3");
    for _ in 0..3 {
        let triage = replica.triage(vec![forged.clone()], at(1_000), |_| {
            asked += 1;
            false
        });
        assert!(triage.new.is_empty());
    }
    assert_eq!(asked, 1, "an unproven generation is checked once");

    let ahead = put("d", 1, 1_000 + 501, "k", "4");
    let triage = replica.triage(vec![ahead], at(1_000), |_| true);
    assert_eq!(triage.ahead.len(), 1, "stamped past the 500 ms bound");
    assert_eq!(
        ingest(&mut replica, vec![put("d", 1, 1_000 + 501, "k", "4")], at(1_001)),
        1,
        "taken once the clock is near"
    );
}

#[test]
fn compaction_folds_only_applied_generations_every_live_peer_holds() {
    let mut replica = replica("a");
    let generations: Vec<Generation> =
        (1..=4).map(|seq| change("a", seq, seq * 1_000, &["a"], Policy::emergency())).collect();
    ingest(&mut replica, generations, at(10_000));
    assert!(replica.compaction(&[], true, at(10_000)).is_none(), "nothing released yet");
    release_open(&mut replica, &BTreeMap::new(), at(10_000));
    let state = replica.state().digest();

    let behind = VersionVector::default();
    assert!(replica.compaction(&[behind], true, at(10_000)).is_none(), "a live peer lacks them");
    let (log, covered) =
        replica.compaction(&[replica.log().version_vector().clone()], true, at(10_000)).expect("two fold");
    assert_eq!(covered.len(), 2, "retention keeps the newest 2");
    replica.commit_compaction(log, &covered);
    assert_eq!(replica.log().len(), 2);
    assert_eq!(replica.state().digest(), state, "compaction never changes the state");
}

#[test]
fn a_recovering_node_serves_again_after_its_peers_settle_and_none_is_ahead() {
    let (mut replica, _) = Replica::start(config("a"), Stored::default(), Some("torn".into()), at(0));
    let mut ahead = VersionVector::default();
    ahead.raise(name("b"), 1);
    assert!(!replica.caught_up(&[], at(0)), "no peer known yet");
    assert!(!replica.caught_up(std::slice::from_ref(&ahead), at(0)));
    ingest(&mut replica, vec![put("b", 1, 1, "k", "1")], at(10));
    assert!(!replica.caught_up(std::slice::from_ref(&ahead), at(100)));
    assert!(!replica.caught_up(std::slice::from_ref(&ahead), at(100 + RECOVERY_SETTLE_MS - 1)));
    assert!(replica.caught_up(std::slice::from_ref(&ahead), at(100 + RECOVERY_SETTLE_MS)));
    replica.end_recovery();
    assert_eq!(replica.view().recovering, None);
}

#[test]
fn a_restart_judges_again_only_applied_changes_within_their_watch_window() {
    let policy = Policy { watch_window_ms: 10_000, ..Policy::emergency() };
    let old = change("a", 1, 1_000, &["a"], policy.clone());
    let recent = change("a", 2, 9_000, &["a"], policy.clone());
    let unreleased = change("a", 3, 9_500, &["a"], policy);
    let stored = Stored {
        generations: vec![old.clone(), recent.clone(), unreleased.clone()],
        released: [old.id().clone(), recent.id().clone()].into(),
        ..Stored::default()
    };
    let (replica, judging) = Replica::start(config("a"), stored, None, at(12_000));
    let judged: Vec<&GenId> = judging.iter().map(|j| &j.id).collect();
    assert_eq!(judged, vec![recent.id()]);
    assert_eq!(replica.waiting().map(|g| g.id()).collect::<Vec<_>>(), vec![unreleased.id()]);
    assert_eq!(replica.clock().last().wall_ms, 9_500, "its own stamps are followed");
}

/// One delivery of a history: generations and reverts in some order and batching.
#[derive(Clone, Debug)]
enum Delivery {
    Generations(Vec<usize>),
    Revert(usize),
}

fn history() -> Vec<Generation> {
    let origins = ["a", "b", "c"];
    (0..9u64)
        .map(|i| {
            let origin = origins[i as usize % 3];
            let mut body = put(origin, i / 3 + 1, 1_000 + i * 7 % 5, &format!("k{}", i % 4), &format!("{i}")).body;
            body.members = vec![name("n")].into();
            body.change.policy = Policy::emergency();
            body.seal()
        })
        .collect()
}

fn deliveries() -> impl Strategy<Value = Vec<Delivery>> {
    let generations = proptest::collection::vec(0..9usize, 1..4).prop_map(Delivery::Generations);
    let revert = (0..9usize).prop_map(Delivery::Revert);
    proptest::collection::vec(prop_oneof![4 => generations, 1 => revert], 1..30)
}

/// The replica after every generation of `history` and `reverted`'s reverts, delivered in
/// `order` and then once more all together (anti-entropy fills what the order left out).
fn replay(order: &[Delivery], reverted: &[usize]) -> Replica {
    let history = history();
    let mut replica = replica("n");
    let now = at(2_000);
    for delivery in order {
        match delivery {
            Delivery::Generations(indices) => {
                ingest(&mut replica, indices.iter().map(|i| history[*i].clone()).collect(), now);
            }
            Delivery::Revert(index) if reverted.contains(index) => {
                let fresh = replica.fresh_reverts(vec![Revert::of(history[*index].id())]);
                replica.add_reverts(&fresh);
            }
            Delivery::Revert(_) => {}
        }
        release_open(&mut replica, &BTreeMap::new(), now);
    }
    ingest(&mut replica, history.clone(), now);
    let fresh = replica.fresh_reverts(reverted.iter().map(|i| Revert::of(history[*i].id())).collect());
    replica.add_reverts(&fresh);
    release_open(&mut replica, &BTreeMap::new(), now);
    replica
}

proptest! {
    /// The same generations and reverts, in any delivery order and batching, leave every
    /// replica with the same log, applied state and desired state.
    #[test]
    fn any_delivery_order_converges(order in deliveries(), other in deliveries()) {
        let reverted: Vec<usize> = order.iter().chain(&other).filter_map(|d| match d {
            Delivery::Revert(index) => Some(*index),
            Delivery::Generations(_) => None,
        }).collect();
        let (one, two) = (replay(&order, &reverted), replay(&other, &reverted));
        prop_assert_eq!(one.log().version_vector(), two.log().version_vector());
        prop_assert_eq!(one.state().digest(), two.state().digest());
        prop_assert_eq!(one.desired().digest(), two.desired().digest());
        prop_assert_eq!(one.view().reverts_digest, two.view().reverts_digest);
        // Every generation of one wave is released, so what applies is what is desired.
        prop_assert_eq!(one.state().digest(), one.desired().digest());
    }
}
