//! The acceptance rule of signed changes, one test per way a generation can fail it.

use super::*;
use crate::model::JsonText;
use crate::signing::revocation_key;

const CLUSTER: &str = "prod";
const NOW: u64 = 1_800_000_000_000;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn put(key: &str) -> Change {
    Change::with_ops(vec![Op::PutConfig {
        key: key.parse().unwrap(),
        value: JsonText::try_from("1".to_owned()).unwrap(),
        schema: None,
    }])
}

fn trust(root: &SecretKey) -> Trust {
    Trust { cluster: CLUSTER.to_owned(), roots: vec![root.public()], ..Trust::default() }
}

fn body(change: Change, signed: Option<Signed>) -> GenerationBody {
    let author = signed.as_ref().map(|s| s.delegation.operator.clone());
    GenerationBody {
        id: GenId { origin: "n1".parse().unwrap(), seq: 1 },
        hlc: Stamp { wall_ms: NOW, logical: 0 },
        members: vec![].into(),
        groups: vec![],
        change,
        author,
        signed: signed.map(Box::new),
        terms: None,
    }
}

fn alice(root: &SecretKey, prefixes: &[&str]) -> Delegation {
    let prefixes = prefixes.iter().map(ToString::to_string).collect();
    root.delegate(CLUSTER, "alice".parse().unwrap(), key(2).public(), prefixes, NOW + 1000)
}

#[test]
fn a_delegated_operator_signs_and_every_node_checks_from_the_generation_alone() {
    let root = key(1);
    let change = put("payments.limit");
    let signed = key(2).sign_change(CLUSTER, alice(&root, &[]), NOW - 5000, &change, None);
    trust(&root).check(&body(change.clone(), Some(signed.clone()))).unwrap();
    // Without roots, nothing is required.
    Trust::default().check(&body(change.clone(), None)).unwrap();

    assert_eq!(Trust::default().fingerprint(), "none");
    let (one, two) = (key(1).public(), key(2).public());
    let both = |roots: Vec<PublicKey>| Trust { roots, ..trust(&root) }.fingerprint();
    assert_eq!(both(vec![one, two]), both(vec![two, one, two]), "order and repeats do not count");
    assert_ne!(both(vec![one]), both(vec![one, two]));
    let unsigned = trust(&root).check(&body(change.clone(), None)).unwrap_err();
    assert_eq!(
        unsigned.to_string(),
        "this cluster accepts signed changes only, and generation n1.1 carries no operator signature"
    );
    let mut before_cutover = trust(&root);
    before_cutover.unsigned_through.raise("n1".parse().unwrap(), 1);
    before_cutover.check(&body(change.clone(), None)).unwrap();

    // Another cluster, another root, another change, another author, a late stamp.
    let other_cluster = Trust { cluster: "staging".to_owned(), ..trust(&root) };
    assert!(matches!(
        other_cluster.check(&body(change.clone(), Some(signed.clone()))),
        Err(SigningError::BadDelegation { .. })
    ));
    assert!(matches!(
        trust(&key(9)).check(&body(change.clone(), Some(signed.clone()))),
        Err(SigningError::UnknownRoot { .. })
    ));
    assert!(matches!(
        trust(&root).check(&body(put("payments.other"), Some(signed.clone()))),
        Err(SigningError::BadSignature { .. })
    ));
    let mut renamed = body(change.clone(), Some(signed.clone()));
    renamed.author = Some("mallory".parse().unwrap());
    assert!(matches!(trust(&root).check(&renamed), Err(SigningError::WrongAuthor { .. })));
    let mut late = body(change.clone(), Some(signed.clone()));
    late.hlc.wall_ms = NOW + 2000;
    assert!(matches!(trust(&root).check(&late), Err(SigningError::Expired { .. })));
    let old = key(2).sign_change(CLUSTER, alice(&root, &[]), NOW - ISSUE_WINDOW_MS - 1, &change, None);
    assert!(matches!(trust(&root).check(&body(change, Some(old))), Err(SigningError::OutsideWindow { .. })));
}

#[test]
fn a_key_without_a_delegation_from_a_root_signs_nothing_that_passes() {
    let root = key(1);
    let change = put("payments.limit");
    // A node's own key, delegating itself: the root it names is not trusted.
    let forger = key(7);
    let self_made = forger.delegate(CLUSTER, "alice".parse().unwrap(), forger.public(), vec![], u64::MAX);
    let forged = forger.sign_change(CLUSTER, self_made, NOW, &change, None);
    assert!(matches!(trust(&root).check(&body(change.clone(), Some(forged))), Err(SigningError::UnknownRoot { .. })));
    // Alice's real delegation, signed by a key that is not Alice's.
    let stolen = forger.sign_change(CLUSTER, alice(&root, &[]), NOW, &change, None);
    assert!(matches!(trust(&root).check(&body(change, Some(stolen))), Err(SigningError::BadSignature { .. })));
}

#[test]
fn prefixes_bound_keys_controls_and_the_reserved_keys() {
    let root = key(1);
    let scoped = alice(&root, &["payments."]);
    let check = |change: Change| {
        let signed = key(2).sign_change(CLUSTER, scoped.clone(), NOW, &change, None);
        trust(&root).check(&body(change, Some(signed)))
    };
    check(put("payments.limit")).unwrap();
    let refused = check(put("search.limit")).unwrap_err();
    assert_eq!(refused.to_string(), "alice may change keys under [\"payments.\"] only, got config search.limit");
    let revocation = revocation_key(&key(3).public());
    assert_eq!(revoked_by(&revocation), Some(key(3).public()));
    assert!(check(put(revocation.as_str())).is_err());
    let mut control = put("payments.limit");
    control.controls.push(crate::policy::Control::Pause { target: GenId { origin: "n1".parse().unwrap(), seq: 1 } });
    assert!(matches!(check(control), Err(SigningError::OutOfScope { .. })));
}

#[test]
fn a_revoked_key_loses_what_it_signed_after_the_revocation_only() {
    let root = key(1);
    let (alice, bob) = (key(2), key(3));
    let bob_delegation = root.delegate(CLUSTER, "bob".parse().unwrap(), bob.public(), vec![], u64::MAX);
    let signed_put = |seq: u64, wall_ms: u64, signer: &SecretKey, delegation: &Delegation, key: &str| {
        let change = put(key);
        let signed = signer.sign_change(CLUSTER, delegation.clone(), wall_ms, &change, None);
        let mut body = body(change, Some(signed));
        body.id.seq = seq;
        body.hlc.wall_ms = wall_ms;
        body.seal()
    };
    let alice_delegation = alice_full(&root);
    let mut log = Log::new();
    log.insert(signed_put(1, NOW, &bob, &bob_delegation, "a"));
    log.insert(signed_put(2, NOW + 20, &bob, &bob_delegation, "b"));
    assert!(revoked_after(&log).is_empty(), "no revocation yet");
    log.insert(signed_put(3, NOW + 10, &alice, &alice_delegation, revocation_key(&bob.public()).as_str()));
    let one = GenId { origin: "n1".parse().unwrap(), seq: 2 };
    assert_eq!(revoked_after(&log), vec![(one.clone(), bob.public())], "n1.1 came before it and stays");
    assert_eq!(revocations(&log)[&bob.public()].1.seq, 3);
    // A later second revocation does not move the first; reverted ones are done.
    log.insert(signed_put(4, NOW + 30, &alice, &alice_delegation, revocation_key(&bob.public()).as_str()));
    assert_eq!(revocations(&log)[&bob.public()].1.seq, 3);
    log.revert(&crate::Revert::of(&one));
    assert!(revoked_after(&log).is_empty());
    // Bob's key, revoked, cannot revoke Alice's after that; before it, it could have.
    log.insert(signed_put(5, NOW + 40, &bob, &bob_delegation, revocation_key(&alice.public()).as_str()));
    assert!(!revocations(&log).contains_key(&alice.public()));
    assert_eq!(revoked_after(&log), vec![(GenId { origin: "n1".parse().unwrap(), seq: 5 }, bob.public())]);
    log.insert(signed_put(6, NOW + 5, &bob, &bob_delegation, revocation_key(&alice.public()).as_str()));
    assert_eq!(revocations(&log)[&alice.public()].1.seq, 6);
}

fn alice_full(root: &SecretKey) -> Delegation {
    root.delegate(CLUSTER, "alice".parse().unwrap(), key(2).public(), vec![], u64::MAX)
}

/// What signing and checking one generation costs, and the revocation rule over a log of
/// 10,000 signed generations (run with `--release -- --nocapture` to see the figures): the
/// median of 9 runs.
#[test]
fn cost_of_signing_and_checking_a_change() {
    let root = key(1);
    let change = put("payments.limit");
    let delegation = alice(&root, &[]);
    // A stopwatch for the figures (proto's clippy.toml disallows it): the code it times reads
    // no clock.
    #[allow(clippy::disallowed_methods)]
    let median_us = |runs: usize, mut run: Box<dyn FnMut(usize) + '_>| {
        let mut rounds: Vec<f64> = (0..9)
            .map(|round| {
                let started = std::time::Instant::now();
                for i in 0..runs {
                    run(round * runs + i);
                }
                started.elapsed().as_secs_f64() * 1e6 / runs as f64
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[4]
    };
    let sign_us = median_us(
        200,
        Box::new(|i| {
            key(2).sign_change(CLUSTER, delegation.clone(), NOW + i as u64, &change, None);
        }),
    );
    let generation = body(change.clone(), Some(key(2).sign_change(CLUSTER, delegation.clone(), NOW, &change, None)));
    let trust = trust(&root);
    let check_us = median_us(200, Box::new(|_| trust.check(&generation).unwrap()));
    let mut unsigned = generation.clone();
    unsigned.signed = None;
    let grown = crate::wire::encode(&generation.clone().seal()).len() - crate::wire::encode(&unsigned.seal()).len();
    let mut log = Log::new();
    for seq in 1..=10_000u64 {
        let mut body = generation.clone();
        body.id.seq = seq;
        log.insert(body.seal());
    }
    let scan_us = median_us(1, Box::new(|_| assert!(revoked_after(&log).is_empty())));
    let mut revoked = body(put(revocation_key(&key(3).public()).as_str()), None);
    revoked.id.origin = "n2".parse().unwrap();
    log.insert(revoked.seal());
    let revoked_scan_us = median_us(1, Box::new(|_| assert!(revoked_after(&log).is_empty())));
    eprintln!(
        "signed changes (median of 9, debug={}): sign {sign_us:.1} us, check {check_us:.1} us, \
         {grown} bytes more per generation; revocation rule over 10,000 generations: {:.2} ms \
         without a revocation, {:.2} ms with one",
        cfg!(debug_assertions),
        scan_us / 1000.0,
        revoked_scan_us / 1000.0
    );
}
