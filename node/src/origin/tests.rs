//! Proving and checking generations' origins: each refusal, the upgrade allowance, and the cost.

use grapevine_proto::testing::put;

use super::*;
use crate::clock;
use crate::gossip::signed::tests::Cluster;

const CLUSTER: &str = "test";

/// A config write by `origin`, stamped now (certificates are valid from their issue on).
fn generation(origin: &str, seq: u64) -> Generation {
    let now_ms = clock::unix_ms();
    put(origin, seq, now_ms, "k", &seq.to_string())
}

fn proven_by(identity: &NodeIdentity, generation: Generation) -> Generation {
    let proof = prove(identity, CLUSTER, generation.id(), &generation.hash).unwrap();
    generation.proven(Some(proof))
}

#[test]
fn a_generation_proven_by_its_origin_passes_and_every_forgery_is_refused() {
    let cluster = Cluster::new();
    let trust = cluster.trust();
    let n3 = cluster.node("ca", "n3").identity().unwrap();
    let n7 = cluster.node("ca", "n7").identity().unwrap();
    let stranger = cluster.node("other-ca", "n3").identity().unwrap();
    let check = |generation: &Generation| check(&trust, CLUSTER, &Unproven::None, generation);

    let genuine = proven_by(&n3, generation("n3", 6));
    assert_eq!(check(&genuine), Ok(()));
    // n7's certificate is the cluster's, but not n3's: the impostor of issue 17.
    assert_eq!(check(&proven_by(&n7, generation("n3", 6))), Err(Refusal::WrongName));
    assert_eq!(check(&proven_by(&stranger, generation("n3", 6))), Err(Refusal::UntrustedCertificate));
    assert_eq!(check(&generation("n3", 6)), Err(Refusal::Unsigned));

    // The proof binds the id and the content: moved to another id, or over other content.
    let mut moved = genuine.clone();
    moved.body.id.seq = 7;
    let moved = moved.body.seal().proven(genuine.origin.as_deref().cloned());
    assert_eq!(check(&moved), Err(Refusal::BadSignature));
    // Another value (stamped in the same millisecond or not).
    let other_content = put("n3", 6, clock::unix_ms(), "k", "99").proven(genuine.origin.as_deref().cloned());
    assert_ne!(other_content.hash, genuine.hash);
    assert_eq!(check(&other_content), Err(Refusal::BadSignature));
    let other_cluster = prove(&n3, "elsewhere", genuine.id(), &genuine.hash).unwrap();
    assert_eq!(check(&genuine.clone().proven(Some(other_cluster))), Err(Refusal::BadSignature));
    let mut garbled = genuine.origin.as_deref().cloned().unwrap();
    garbled.certificate.truncate(100);
    assert_eq!(check(&genuine.clone().proven(Some(garbled))), Err(Refusal::UntrustedCertificate));

    // Checked at the stamp: a certificate not valid yet when the generation was stamped
    // proves nothing (one issued today cannot sign for 1970).
    let backdated = put("n3", 6, 1_000, "k", "1");
    assert_eq!(check(&proven_by(&n3, backdated)), Err(Refusal::UntrustedCertificate));
}

#[test]
fn unproven_generations_pass_only_where_the_upgrade_allowance_names_them() {
    let cluster = Cluster::new();
    let trust = cluster.trust();
    let mut through = VersionVector::default();
    through.raise("n3".parse().unwrap(), 5);
    let old = generation("n3", 5);
    let new = generation("n3", 6);
    let check = |unproven: &Unproven, generation: &Generation| check(&trust, CLUSTER, unproven, generation);
    assert_eq!(check(&Unproven::None, &old), Err(Refusal::Unsigned));
    assert_eq!(check(&Unproven::Through(through.clone()), &old), Ok(()));
    assert_eq!(check(&Unproven::Through(through), &new), Err(Refusal::Unsigned));
    assert_eq!(check(&Unproven::All, &new), Ok(()));
    // A proof, where there is one, is checked whatever the allowance.
    let n7 = cluster.node("ca", "n7").identity().unwrap();
    assert_eq!(check(&Unproven::All, &proven_by(&n7, new)), Err(Refusal::WrongName));
}

/// Prints what proving and checking one generation cost (no timing is asserted):
/// `cargo test --release -p grapevine-node origin::tests::cost -- --nocapture`.
#[test]
fn cost_of_proving_and_checking_a_generation() {
    let cluster = Cluster::new();
    let trust = cluster.trust();
    let n3 = cluster.node("ca", "n3").identity().unwrap();
    let generations: Vec<Generation> = (1..=200).map(|seq| generation("n3", seq)).collect();
    let median_us = |run: &dyn Fn(&Generation)| {
        let mut runs: Vec<f64> = (0..9)
            .map(|_| {
                let started = clock::now();
                generations.iter().for_each(run);
                clock::elapsed(started).as_secs_f64() * 1e6 / generations.len() as f64
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[4]
    };
    let prove_us = median_us(&|g| drop(prove(&n3, CLUSTER, g.id(), &g.hash).unwrap()));
    let proven: Vec<Generation> = generations.iter().map(|g| proven_by(&n3, g.clone())).collect();
    let check_us = median_us(&|g| {
        let proven = &proven[(g.id().seq - 1) as usize];
        check(&trust, CLUSTER, &Unproven::None, proven).unwrap();
    });
    let bytes = grapevine_proto::wire::encode(&proven[0]).len() - grapevine_proto::wire::encode(&generations[0]).len();
    eprintln!(
        "origin proofs (median of 9 x 200, debug={}): prove {prove_us:.1} us, check {check_us:.1} us, {bytes} bytes per generation",
        cfg!(debug_assertions)
    );
}
