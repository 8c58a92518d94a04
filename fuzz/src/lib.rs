//! The checks the fuzz targets share: what a node does with the bytes a decoder accepted,
//! and the properties every accepted value must have.
//!
//! Each target feeds arbitrary bytes to one decoder. Refusing them with an `Err` is always
//! fine; a panic, an abort, a timeout or a failed assertion below is a bug.

use std::fmt::Debug;

use grapevine_proto::eval::{Expected, FlagDefinition, Reason};
use grapevine_proto::flagd::Fractional;
use grapevine_proto::rollout::Plan;
use grapevine_proto::trust::Trust;
use grapevine_proto::validate::validate_generation;
use grapevine_proto::wire::{self, OLDEST_READABLE, Versioned, WIRE_VERSION, WireError};
use grapevine_proto::{AppliedState, Generation, Log, Snapshot, VersionVector};
use serde_json::{Map, Value};

/// Decodes `bytes` as a node decodes a sync message or a store record, and checks that the
/// error names the right cause, and that an accepted value survives being written back in
/// the format it came in (a reply goes in the request's format) and in the newest one.
pub fn wire_item<T: Versioned + PartialEq + Debug>(bytes: &[u8], what: &'static str) -> Option<T> {
    let decoded = wire::decode_versioned::<T>(bytes, what);
    match (bytes.first(), &decoded) {
        (None, Err(WireError::Empty)) => {}
        (None, _) => panic!("0 bytes must be refused as empty, got {decoded:?}"),
        (Some(version), Err(WireError::UnknownVersion { found })) => assert_eq!(found, version),
        (Some(version), _) if !(OLDEST_READABLE..=WIRE_VERSION).contains(version) => {
            panic!("version {version} must be refused as unknown, got {decoded:?}")
        }
        _ => {}
    }
    let (value, version) = decoded.ok()?;
    let again = wire::encode_at(&value, version, what).expect("a value read in a format can be written in it");
    assert_eq!(again[0], version);
    assert_eq!(wire::decode::<T>(&again, what).as_ref(), Ok(&value), "{what} changed when written back");
    let newest = wire::encode(&value);
    assert_eq!(wire::decode::<T>(&newest, what).as_ref(), Ok(&value), "{what} changed in the newest format");
    Some(value)
}

/// What a node does with a generation from a peer or its store: validate it and, when
/// valid, apply it and plan its waves. A peer computes the hash itself, so the content is
/// also checked under a correct hash (random bytes would rarely get past the hash check).
pub fn check_generation(generation: &Generation) {
    let verdict = validate_generation(generation);
    let resealed = generation.body.clone().seal();
    // Every node checks the operator's signature, whatever else is wrong with the generation.
    let _ = trust().check(&generation.body);
    if verdict.is_ok() {
        // The origin proof is outside the content: a node checks it apart (node/src/origin.rs).
        assert_eq!(
            (&resealed.body, resealed.hash),
            (&generation.body, generation.hash),
            "a valid generation's hash is its content's"
        );
    }
    if validate_generation(&resealed).is_ok() {
        apply(&resealed);
    }
}

/// A cluster that requires signatures under the root the seed corpus signs with.
fn trust() -> Trust {
    let root = grapevine_proto::signing::SecretKey::from_seed([1; 32]).public();
    Trust { cluster: "grapevine".into(), roots: vec![root], unsigned_through: VersionVector::default(), ..Trust::default() }
}

/// What the node's engine does with a generation that passed validation: store it in its
/// log, compact it, fold it into the applied state and plan its waves.
fn apply(generation: &Generation) {
    let mut log = Log::new();
    log.insert(generation.clone());
    let origin = &generation.id().origin;
    assert!(log.next_seq(origin) > generation.id().seq || generation.id().seq == 0);
    let _ = log.state(|_| true);
    log.compact(|_| true);
    check_log(&log);
    let state = AppliedState::fold([generation]);
    assert_eq!(state.digest(), AppliedState::fold([generation, generation]).digest(), "applying is idempotent");
    for entry in state.flags.values() {
        check_flag_round_trip(&entry.value);
    }
    let plan = Plan::of(&generation.body);
    for member in &generation.body.members {
        assert!(plan.wave_of(member) < plan.waves.len().max(1));
    }
}

/// What the node's engine does with a snapshot that passed validation (from a peer's pull
/// answer, or its store): absorb it into its log, and publish what it covers.
pub fn check_snapshot(snapshot: &Snapshot) {
    let trust = trust();
    for write in snapshot.writes() {
        let _ = trust.check_write(&write.op, &write.generation, write.hlc, write.proof.as_deref());
    }
    let mut log = Log::new();
    log.absorb_snapshot(snapshot);
    check_log(&log);
    for entry in log.state(|_| true).flags.values() {
        check_flag_round_trip(&entry.value);
    }
    let mut merged = snapshot.clone();
    merged.merge(snapshot);
    assert_eq!(&merged, snapshot, "merging a snapshot with itself changes nothing");
}

/// What the engine publishes about its log (`View`) and computes for its next change.
fn check_log(log: &Log) {
    let _ = log.base().covers().total();
    let _ = grapevine_proto::trust::revoked_after(log);
    for (origin, _) in log.version_vector().iter() {
        let _ = log.next_seq(origin);
    }
    let _ = log.reverts_digest();
}

/// What a node does with a peer's version vector (a pull request's, a push ack's, a push's
/// sender's): compare it with its own and find the generations the peer lacks.
pub fn check_peer_vector(theirs: &VersionVector) {
    let generation = grapevine_proto::GenerationBody {
        id: grapevine_proto::GenId { origin: "n1".parse().expect("a valid name"), seq: 2 },
        hlc: grapevine_proto::Stamp::default(),
        members: vec![].into(),
        groups: vec![],
        change: grapevine_proto::Change::with_ops(vec![]),
        author: None,
        signed: None,
        terms: None,
    }
    .seal();
    let mut log = Log::new();
    log.insert(generation);
    let _ = log.missing_from(theirs).count();
    let _ =
        (theirs.is_behind(log.version_vector()), log.version_vector().is_behind(theirs), log.needs_snapshot(theirs));
}

/// A definition that parsed is stored as its canonical text and parsed again by every node
/// that applies it: that text must give the same flag.
pub fn check_flag_round_trip(flag: &FlagDefinition) {
    let Ok(text) = flag.to_json_text() else {
        return; // Larger than a value may be once `$ref`s are resolved: refused as too large.
    };
    let key = "fuzz".parse().expect("a valid key");
    let again = FlagDefinition::parse(&key, &text).expect("a parsed flag's canonical text parses");
    assert_eq!(&again, flag, "a flag changed through its canonical text");
}

/// Contexts of the shapes applications send, for targets that fuzz the rule rather than the
/// context: every JSON type under the names rules commonly read.
pub fn sample_contexts() -> Vec<Map<String, Value>> {
    let contexts = [
        serde_json::json!({}),
        serde_json::json!({"targetingKey": "user-1", "email": "a@example.com", "version": "1.2.3", "age": 42,
            "beta": true, "groups": ["staff", "beta"], "plan": {"tier": "gold", "seats": 10}, "score": 0.5}),
        serde_json::json!({"targetingKey": 7, "email": null, "version": "v2.0.0-rc.1+build", "age": -1e300,
            "groups": [], "plan": "free", "score": "0.5"}),
    ];
    contexts.into_iter().map(|context| context.as_object().cloned().expect("an object")).collect()
}

/// Evaluates `flag` for `context` under both bucketing schemes, at a few times, as every
/// typed resolver, and checks the answer is one OpenFeature can carry.
pub fn check_evaluation(flag: &FlagDefinition, key: &str, context: &Map<String, Value>) {
    for scheme in [Fractional::V2, Fractional::Cbor] {
        for now_s in [0, 1_700_000_000, u64::MAX] {
            let evaluation = flag.evaluate(key, context, scheme, now_s);
            if let Some(value) = &evaluation.value {
                let variant = evaluation.variant.as_ref().expect("a value comes with its variant");
                assert_eq!(flag.variants.get(variant), Some(value), "the value is the variant's");
            }
            match evaluation.reason {
                Reason::Error => assert!(evaluation.error_code.is_some() && evaluation.value.is_none()),
                Reason::Disabled => assert!(evaluation.value.is_none()),
                _ => assert!(evaluation.error_code.is_none()),
            }
            serde_json::to_vec(&evaluation).expect("an evaluation serializes");
            for expected in [Expected::Boolean, Expected::String, Expected::Integer, Expected::Float, Expected::Object]
            {
                let typed = evaluation.clone().expecting(expected);
                assert!(typed.value.is_none() || typed.value == evaluation.value);
            }
        }
    }
}

/// Splits fuzz input in two at its first NUL byte: text, and an optional second text (JSON
/// never holds a raw NUL, so a corpus entry stays readable JSON, then `\0`, then JSON).
pub fn split_at_nul(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&byte| byte == 0) {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    }
}
