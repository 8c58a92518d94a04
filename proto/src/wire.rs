//! The versioned binary encoding of everything that crosses the wire or reaches the disk.
//!
//! Each encoded item is one version byte followed by its postcard encoding. A build reads its
//! own version and the one before ([`OLDEST_READABLE`]), and writes either: so a node of
//! version N and a node of version N-1 work together during a rolling upgrade, and a node of
//! version N reads a store written by N-1. A version outside that range is refused with a
//! clear error instead of misread.
//!
//! Version history (the types of the version before live in [`v5`]):
//! - 3: reverts, the anomaly quorum and the thresholds in each change's policy.
//! - 4: a generation records its author ([`crate::model::GenerationBody::author`]).
//! - 5: a generation carries its operator's signature ([`crate::model::GenerationBody::signed`]), and a
//!   snapshot's write the signed change it came from ([`Write::proof`]).
//! - 6: a generation carries its origin's proof ([`Generation::origin`]).
//! - 7: a generation carries terms ([`crate::model::GenerationBody::terms`]: a scheduled start,
//!   approvals, a governance record).
//!
//! A node rewrites the records of its store that the build before wrote in the newest format
//! when it opens the store, so that the build after it reads them.
//!
//! `WIRE_VERSION` is 7 and `OLDEST_READABLE` 6. The `Versioned` trait gives each item's previous
//! form (in `wire::v6`) and the conversions; `encode` writes the newest format, `encode_at` a
//! peer's older one (or `WireError::Unrepresentable`); `decode` and `decode_versioned` read either
//! (the latter says which), and refuse empty input, a version byte outside 6 to 7, and trailing
//! bytes. With the test suite's `act_as_version(6)` a process writes and reads format 6 only, as
//! the build of format 6 did (mixed-version tests). `docs/protocol.md`, "Wire formats and rolling
//! upgrades", has the history of formats.
//!
//! The log-sync messages: `PullRequest { have, max_bytes, reverts }` (`reverts`: the targets of the
//! reverts the puller holds) and `PullFrame::{Revert(Revert), SnapshotWrite(Write), SnapshotEnd {
//! covers }, Generation, End { more }}` (the server sends the reverts the puller lacks first);
//! `Push { reverts, generations, sender_has }` and `PushAck { have }`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Generation, GenerationBody, Revert, VersionVector};
use crate::name::GenId;
use crate::snapshot::{Snapshot, Write, WriteProof};

/// The format version this build writes.
pub const WIRE_VERSION: u8 = 7;

/// The oldest format version this build reads and can write for a peer that reads no newer.
pub const OLDEST_READABLE: u8 = WIRE_VERSION - 1;

/// Why bytes could not be decoded, or a value not encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No bytes at all.
    #[error("expected an encoded item, got 0 bytes")]
    Empty,
    /// A version byte this build does not read.
    #[error("expected format version {oldest} to {newest}, got version {found}", oldest = OLDEST_READABLE, newest = newest())]
    UnknownVersion { found: u8 },
    /// Bytes that do not decode as the expected type (or whose content fails its checks).
    #[error("malformed {what}: {error}")]
    Malformed { what: &'static str, error: String },
    /// A value that the older format asked for cannot hold.
    #[error("{what} cannot be written in format version {version}: {why}")]
    Unrepresentable { what: &'static str, version: u8, why: &'static str },
}

/// The newest format this process writes and reads: [`WIRE_VERSION`], unless the test suite
/// made the process act as a build of the previous version.
pub fn newest() -> u8 {
    #[cfg(feature = "testsuite")]
    {
        let cap = ACT_AS_VERSION.load(std::sync::atomic::Ordering::Relaxed);
        if cap != 0 {
            return cap;
        }
    }
    WIRE_VERSION
}

#[cfg(feature = "testsuite")]
static ACT_AS_VERSION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Makes this process write and read format `version` only, as a build of that version does
/// (for mixed-version tests of real processes). Test suite only.
#[cfg(feature = "testsuite")]
pub fn act_as_version(version: u8) {
    assert!(
        (OLDEST_READABLE..=WIRE_VERSION).contains(&version),
        "format version {version} is not one this build speaks"
    );
    ACT_AS_VERSION.store(version, std::sync::atomic::Ordering::Relaxed);
}

/// An item with a versioned encoding: how the version before encoded it, and the conversions.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The item as format [`OLDEST_READABLE`] encoded it.
    type Previous: Serialize + DeserializeOwned;
    /// Reads an item of the previous format.
    fn from_previous(old: Self::Previous) -> Self;
    /// The item in the previous format, or why that format cannot hold it.
    fn to_previous(&self) -> Result<Self::Previous, &'static str>;
}

/// Items whose encoding did not change in the newest version.
macro_rules! unchanged_since_previous {
    ($($item:ty),*) => {$(
        impl Versioned for $item {
            type Previous = $item;
            fn from_previous(old: $item) -> $item {
                old
            }
            fn to_previous(&self) -> Result<$item, &'static str> {
                Ok(self.clone())
            }
        }
    )*};
}

unchanged_since_previous!(PullRequest, PushAck, Revert, VersionVector, crate::audit::Cursor);

/// Encodes `value` in the newest format, with the version byte in front.
pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    encode_at(value, newest(), "item").expect("the newest format holds every value")
}

/// Encodes `value` in format `version`, for a peer that reads no newer; `what` names the item
/// in the error when that format cannot hold it.
pub fn encode_at<T: Versioned>(value: &T, version: u8, what: &'static str) -> Result<Vec<u8>, WireError> {
    let version = version.min(newest());
    let mut bytes = vec![version];
    let written = match version {
        WIRE_VERSION => postcard::to_io(value, &mut bytes).map(drop),
        OLDEST_READABLE => {
            let old = value.to_previous().map_err(|why| WireError::Unrepresentable { what, version, why })?;
            postcard::to_io(&old, &mut bytes).map(drop)
        }
        other => return Err(WireError::UnknownVersion { found: other }),
    };
    written.expect("writing to a Vec cannot fail");
    Ok(bytes)
}

/// Decodes bytes written by [`encode`] or [`encode_at`]; `what` names the item in the error.
pub fn decode<T: Versioned>(bytes: &[u8], what: &'static str) -> Result<T, WireError> {
    decode_versioned(bytes, what).map(|(value, _)| value)
}

/// Decodes like [`decode`], and says which format the bytes were in (a reply to a request
/// goes back in the request's format).
pub fn decode_versioned<T: Versioned>(bytes: &[u8], what: &'static str) -> Result<(T, u8), WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if !(OLDEST_READABLE..=newest()).contains(&version) {
        return Err(WireError::UnknownVersion { found: version });
    }
    let value = if version == WIRE_VERSION { take_all(rest, what)? } else { T::from_previous(take_all(rest, what)?) };
    Ok((value, version))
}

fn take_all<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, WireError> {
    let (value, trailing) =
        postcard::take_from_bytes(bytes).map_err(|error| WireError::Malformed { what, error: error.to_string() })?;
    if !trailing.is_empty() {
        let error = format!("{} trailing bytes", trailing.len());
        return Err(WireError::Malformed { what, error });
    }
    Ok(value)
}

/// The first message of a log-sync stream: what the puller already has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub have: VersionVector,
    /// The most generation bytes the puller accepts in this pull; the server stops before it.
    pub max_bytes: u64,
    /// The targets of the reverts the puller holds: the server sends the others.
    pub reverts: Vec<GenId>,
}

/// One frame of the answer to a [`PullRequest`]. Reverts the puller lacks come first, so it
/// never applies a generation it is about to learn is reverted; then, for a puller behind the
/// server's snapshot, the snapshot: its writes, then `SnapshotEnd`, which commits them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullFrame {
    Revert(Revert),
    SnapshotWrite(Write),
    SnapshotEnd {
        covers: VersionVector,
    },
    Generation(Generation),
    /// The last frame. `more` is true when the byte budget cut the answer short.
    End {
        more: bool,
    },
}

/// An eager push: generations the sender just stored, and what the sender holds, so the
/// receiver can pull whatever was too large to travel inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// Reverts the sender just stored; taken before the generations.
    pub reverts: Vec<Revert>,
    pub generations: Vec<Generation>,
    pub sender_has: VersionVector,
}

/// The answer to a [`Push`]: what the receiver holds once it has stored the push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAck {
    pub have: VersionVector,
}

impl Versioned for Generation {
    type Previous = v6::Generation;

    fn from_previous(old: v6::Generation) -> Generation {
        let v6::GenerationBody { id, hlc, members, groups, change, author, signed } = old.body;
        let body = GenerationBody { id, hlc, members: members.into(), groups, change, author, signed, terms: None };
        Generation { body, hash: old.hash, origin: old.origin }
    }

    /// Format 6 has no terms: a generation with a scheduled start, approvals or a governance
    /// record cannot be written in it (its hash covers the terms).
    fn to_previous(&self) -> Result<v6::Generation, &'static str> {
        let GenerationBody { id, hlc, members, groups, change, author, signed, terms } = self.body.clone();
        if terms.is_some() {
            return Err(TERMS_NEED_FORMAT_7);
        }
        let body = v6::GenerationBody { id, hlc, members: members.to_vec(), groups, change, author, signed };
        Ok(v6::Generation { body, hash: self.hash, origin: self.origin.clone() })
    }
}

const TERMS_NEED_FORMAT_7: &str =
    "a scheduled start, approvals and governance records need format 7; upgrade every node first";

impl Versioned for Write {
    type Previous = v6::Write;

    fn from_previous(old: v6::Write) -> Write {
        let proof =
            old.proof.map(|proof| Box::new(WriteProof { change: proof.change, signed: proof.signed, terms: None }));
        Write { op: old.op, generation: old.generation, hlc: old.hlc, proof }
    }

    fn to_previous(&self) -> Result<v6::Write, &'static str> {
        let proof = match self.proof.as_deref() {
            Some(WriteProof { terms: Some(_), .. }) => return Err(TERMS_NEED_FORMAT_7),
            Some(WriteProof { change, signed, terms: None }) => {
                Some(Box::new(v6::WriteProof { change: change.clone(), signed: signed.clone() }))
            }
            None => None,
        };
        Ok(v6::Write { op: self.op.clone(), generation: self.generation.clone(), hlc: self.hlc, proof })
    }
}

impl Versioned for Snapshot {
    type Previous = v6::Snapshot;

    fn from_previous(old: v6::Snapshot) -> Snapshot {
        Snapshot::from_parts(old.covers, old.writes.into_iter().map(Write::from_previous))
    }

    fn to_previous(&self) -> Result<v6::Snapshot, &'static str> {
        let writes = self.writes().map(Write::to_previous).collect::<Result<_, _>>()?;
        Ok(v6::Snapshot { covers: self.covers().clone(), writes })
    }
}

impl Versioned for PullFrame {
    type Previous = v6::PullFrame;

    fn from_previous(old: v6::PullFrame) -> PullFrame {
        match old {
            v6::PullFrame::Revert(revert) => PullFrame::Revert(revert),
            v6::PullFrame::SnapshotWrite(write) => PullFrame::SnapshotWrite(Write::from_previous(write)),
            v6::PullFrame::SnapshotEnd { covers } => PullFrame::SnapshotEnd { covers },
            v6::PullFrame::Generation(generation) => PullFrame::Generation(Generation::from_previous(generation)),
            v6::PullFrame::End { more } => PullFrame::End { more },
        }
    }

    fn to_previous(&self) -> Result<v6::PullFrame, &'static str> {
        Ok(match self {
            PullFrame::Revert(revert) => v6::PullFrame::Revert(revert.clone()),
            PullFrame::SnapshotWrite(write) => v6::PullFrame::SnapshotWrite(write.to_previous()?),
            PullFrame::SnapshotEnd { covers } => v6::PullFrame::SnapshotEnd { covers: covers.clone() },
            PullFrame::Generation(generation) => v6::PullFrame::Generation(generation.to_previous()?),
            PullFrame::End { more } => v6::PullFrame::End { more: *more },
        })
    }
}

impl Versioned for Push {
    type Previous = v6::Push;

    fn from_previous(old: v6::Push) -> Push {
        let generations = old.generations.into_iter().map(Generation::from_previous).collect();
        Push { reverts: old.reverts, generations, sender_has: old.sender_has }
    }

    fn to_previous(&self) -> Result<v6::Push, &'static str> {
        let generations = self.generations.iter().map(Generation::to_previous).collect::<Result<_, _>>()?;
        Ok(v6::Push { reverts: self.reverts.clone(), generations, sender_has: self.sender_has.clone() })
    }
}

/// The items whose encoding changed in format 7, as format 6 encoded them. Field and variant
/// order is the encoding: never reorder, only add a new module for a new version.
pub mod v6 {
    use serde::{Deserialize, Serialize};

    use crate::hlc::Stamp;
    use crate::model::{Change, ContentHash, Op, OriginProof, Revert, VersionVector};
    use crate::name::{Author, GenId, NodeName};
    use crate::signing::Signed;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GenerationBody {
        pub id: GenId,
        pub hlc: Stamp,
        pub members: Vec<NodeName>,
        pub groups: Vec<String>,
        pub change: Change,
        pub author: Option<Author>,
        pub signed: Option<Box<Signed>>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Generation {
        pub body: GenerationBody,
        pub hash: ContentHash,
        pub origin: Option<Box<OriginProof>>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WriteProof {
        pub change: Change,
        pub signed: Signed,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Write {
        pub op: Op,
        pub generation: GenId,
        pub hlc: Stamp,
        pub proof: Option<Box<WriteProof>>,
    }

    /// A snapshot as its parts: what it covers and its writes.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Snapshot {
        pub covers: VersionVector,
        pub writes: Vec<Write>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum PullFrame {
        Revert(Revert),
        SnapshotWrite(Write),
        SnapshotEnd { covers: VersionVector },
        Generation(Generation),
        End { more: bool },
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Push {
        pub reverts: Vec<Revert>,
        pub generations: Vec<Generation>,
        pub sender_has: VersionVector,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hlc::Stamp;
    use crate::model::{Change, GenerationBody, JsonText, Op, OriginProof, Terms};
    use crate::name::GenId;
    use crate::signing::SecretKey;

    fn arb_generation() -> impl Strategy<Value = Generation> {
        let name = "[a-z][a-z0-9_-]{0,31}";
        let key = "[a-zA-Z0-9._/-]{1,128}";
        let op = prop_oneof![
            (key, any::<i64>()).prop_map(|(k, v)| Op::PutConfig {
                key: k.parse().unwrap(),
                value: JsonText::try_from(v.to_string()).unwrap(),
                schema: None,
            }),
            (key, any::<bool>()).prop_map(|(k, on)| Op::SetFlag {
                key: k.parse().unwrap(),
                definition: crate::eval::FlagDefinition::boolean(on).to_json_text().unwrap(),
            }),
        ];
        (
            name,
            1..u64::MAX,
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(name, 0..5),
            proptest::collection::vec(op, 1..5),
            proptest::option::of("[a-z0-9@./+:_-]{1,64}"),
            any::<bool>(),
            proptest::option::of((
                proptest::collection::vec(any::<u8>(), 0..600),
                proptest::collection::vec(any::<u8>(), 0..80),
            )),
            proptest::option::of(proptest::option::of(any::<u64>())),
        )
            .prop_map(|(origin, seq, wall_ms, logical, members, ops, author, signed, proof, terms)| {
                let change = Change::with_ops(ops);
                let author: Option<crate::Author> = author.map(|a| a.parse().unwrap());
                let start_at_ms = terms.flatten();
                let signed = match (&author, signed) {
                    (Some(author), true) => Some(signed_by(author, wall_ms, &change, start_at_ms)),
                    _ => None,
                };
                let terms = terms.map(|start_at_ms| Box::new(Terms { start_at_ms, ..Terms::default() }));
                GenerationBody {
                    id: GenId { origin: origin.parse().unwrap(), seq },
                    hlc: Stamp { wall_ms, logical },
                    members: members.into_iter().map(|m| m.parse().unwrap()).collect(),
                    groups: vec![],
                    change,
                    author,
                    signed: signed.map(Box::new),
                    terms,
                }
                .seal()
                .proven(proof.map(|(certificate, signature)| OriginProof { certificate, signature }))
            })
    }

    fn signed_by(
        author: &crate::Author,
        issued_ms: u64,
        change: &Change,
        start_at_ms: Option<u64>,
    ) -> crate::signing::Signed {
        let (root, operator) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let delegation = root.delegate("c", author.clone(), operator.public(), vec![], u64::MAX);
        operator.sign_change("c", delegation, issued_ms, change, start_at_ms)
    }

    proptest! {
        #[test]
        fn generations_round_trip(generation in arb_generation()) {
            let bytes = encode(&PullFrame::Generation(generation.clone()));
            let decoded: PullFrame = decode(&bytes, "pull frame").unwrap();
            prop_assert_eq!(decoded, PullFrame::Generation(generation));
        }

        #[test]
        fn pushes_and_snapshot_frames_round_trip(generation in arb_generation()) {
            let push = Push {
                reverts: vec![Revert::of(generation.id())],
                generations: vec![generation.clone()],
                sender_has: VersionVector::default(),
            };
            prop_assert_eq!(decode::<Push>(&encode(&push), "push").unwrap(), push);
            let mut have = VersionVector::default();
            have.raise(generation.id().origin.clone(), generation.id().seq);
            let ack = PushAck { have: have.clone() };
            prop_assert_eq!(decode::<PushAck>(&encode(&ack), "push ack").unwrap(), ack);
            let op = generation.body.change.ops[0].clone();
            let write = crate::snapshot::Write { op, generation: generation.id().clone(), hlc: generation.body.hlc, proof: None };
            let revert = PullFrame::Revert(Revert::of(generation.id()));
            for frame in [revert, PullFrame::SnapshotWrite(write), PullFrame::SnapshotEnd { covers: have }] {
                prop_assert_eq!(decode::<PullFrame>(&encode(&frame), "pull frame").unwrap(), frame);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<PullFrame>(&bytes, "pull frame");
            let _ = decode::<PullRequest>(&bytes, "pull request");
        }
    }

    #[test]
    fn wrong_version_and_trailing_bytes_are_refused() {
        let mut bytes = encode(&PullFrame::End { more: false });
        bytes.push(0);
        assert!(matches!(decode::<PullFrame>(&bytes, "pull frame"), Err(WireError::Malformed { .. })));
        for version in [2, 3, 4, 5, 8, 9] {
            bytes[0] = version;
            let refused = decode::<PullFrame>(&bytes, "pull frame").unwrap_err();
            assert_eq!(refused, WireError::UnknownVersion { found: version });
            assert_eq!(refused.to_string(), format!("expected format version 6 to 7, got version {version}"));
        }
        assert_eq!(decode::<PullFrame>(&[], "pull frame"), Err(WireError::Empty));
    }

    /// Items as a build encoded them, by name: `wire-v4.txt` by the build of format 4 (commit
    /// 15805e4), `wire-v5.txt` by the build of format 5 (commit f729e57), `wire-v6.txt` by the
    /// build of format 6 (commit b213200).
    fn fixtures(text: &str) -> std::collections::BTreeMap<&str, Vec<u8>> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (name, hex) = line.split_once(' ').expect("name, then hex");
                (name, hex::decode(hex).expect("hex"))
            })
            .collect()
    }

    #[test]
    fn items_written_by_format_6_are_read_and_written_back_byte_for_byte() {
        let fixtures = fixtures(include_str!("../tests/fixtures/wire-v6.txt"));
        let generation: Generation = decode(&fixtures["generation"], "generation").unwrap();
        assert_eq!(generation.id().to_string(), "old1.7");
        assert_eq!((&generation.body.author, &generation.body.signed, &generation.origin), (&None, &None, &None));
        generation.verify().expect("a generation keeps its hash from format 3 on");
        crate::validate::validate_generation(&generation).unwrap();
        let authored: Generation = decode(&fixtures["generation-authored"], "generation").unwrap();
        assert_eq!(authored.body.author.as_ref().map(crate::Author::as_str), Some("alice@laptop"));
        let signed: Generation = decode(&fixtures["generation-signed"], "generation").unwrap();
        assert_eq!(signed.body.author.as_ref().map(crate::Author::as_str), Some("alice"));
        let root = SecretKey::from_seed([1; 32]).public();
        let trust = crate::trust::Trust { cluster: "grapevine".into(), roots: vec![root], ..Default::default() };
        trust.check(&signed.body).expect("the operator's signature written in format 5 verifies");
        let proven: Generation = decode(&fixtures["generation-proven"], "generation").unwrap();
        assert_eq!(proven.origin.as_ref().map(|proof| proof.certificate.len()), Some(40));
        assert_eq!(proven.hash, signed.hash, "the origin proof is outside the hash");
        for (name, generation) in [
            ("generation", &generation),
            ("generation-authored", &authored),
            ("generation-signed", &signed),
            ("generation-proven", &proven),
        ] {
            generation.verify().unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(encode_at(generation, 6, "generation").unwrap(), fixtures[name], "{name}");
            // Format 7 adds the terms' slot only, and the hash stays.
            let newer = encode(generation);
            assert_eq!((newer[0], newer.len()), (7, fixtures[name].len() + 1), "{name}");
            assert_eq!(&decode::<Generation>(&newer, "generation").unwrap(), generation);
        }

        for name in ["push", "push-signed", "push-proven"] {
            let (push, version) = decode_versioned::<Push>(&fixtures[name], "push").unwrap();
            assert_eq!(version, 6);
            assert_eq!(encode_at(&push, version, "push").unwrap(), fixtures[name], "{name}");
        }
        for name in ["pull-frame-generation", "pull-frame-generation-signed", "pull-frame-snapshot-write"] {
            let frame: PullFrame = decode(&fixtures[name], "pull frame").unwrap();
            assert_eq!(encode_at(&frame, 6, "pull frame").unwrap(), fixtures[name], "{name}");
        }
        let snapshot: Snapshot = decode(&fixtures["snapshot-signed"], "snapshot").unwrap();
        assert!(snapshot.writes().all(|write| write.proof.is_some()));
        root_checks_every_write(&trust, &snapshot);
        for name in ["snapshot", "snapshot-signed"] {
            let snapshot: Snapshot = decode(&fixtures[name], "snapshot").unwrap();
            assert_eq!(encode_at(&snapshot, 6, "snapshot").unwrap(), fixtures[name], "{name}");
            assert_eq!(decode::<Snapshot>(&encode(&snapshot), "snapshot").unwrap(), snapshot, "{name}");
        }
        let request: PullRequest = decode(&fixtures["pull-request"], "pull request").unwrap();
        assert_eq!(request.max_bytes, 1 << 20);
        assert_eq!(encode_at(&request, 6, "pull request").unwrap(), fixtures["pull-request"]);
        let ack: PushAck = decode(&fixtures["push-ack"], "push ack").unwrap();
        assert_eq!(encode_at(&ack, 6, "push ack").unwrap(), fixtures["push-ack"]);
    }

    fn root_checks_every_write(trust: &crate::trust::Trust, snapshot: &Snapshot) {
        for write in snapshot.writes() {
            trust.check_write(&write.op, &write.generation, write.hlc, write.proof.as_deref()).unwrap();
        }
    }

    #[test]
    fn formats_4_and_5_are_refused_naming_the_formats_read() {
        for (format, text) in
            [(4, include_str!("../tests/fixtures/wire-v4.txt")), (5, include_str!("../tests/fixtures/wire-v5.txt"))]
        {
            for (name, bytes) in &fixtures(text) {
                let refused = decode::<PullFrame>(bytes, "pull frame").unwrap_err();
                assert_eq!(
                    refused.to_string(),
                    format!("expected format version 6 to 7, got version {format}"),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn terms_are_covered_by_the_hash_and_format_6_cannot_hold_them() {
        let generation = crate::testing::put("n1", 1, 5, "k", "1");
        let mut scheduled = generation.body.clone();
        scheduled.terms = Some(Box::new(Terms { start_at_ms: Some(9), ..Terms::default() }));
        let scheduled = scheduled.seal();
        assert_ne!(scheduled.hash, generation.hash, "the terms are content");
        let mut forged = scheduled.clone();
        forged.body.terms.as_mut().unwrap().start_at_ms = Some(10);
        assert!(forged.verify().is_err());
        assert_eq!(decode::<Generation>(&encode(&scheduled), "generation").unwrap(), scheduled);
        let refused = encode_at(&scheduled, 6, "generation").unwrap_err();
        assert!(matches!(refused, WireError::Unrepresentable { version: 6, .. }), "{refused}");
        let push = Push { reverts: vec![], generations: vec![scheduled.clone()], sender_has: VersionVector::default() };
        assert!(encode_at(&push, 6, "push").is_err());
        let mut snapshot = Snapshot::default();
        snapshot.absorb(&generation);
        assert!(encode_at(&snapshot, 6, "snapshot").is_ok(), "an unsigned write has no terms to lose");
        // Without terms, format 6 carries a generation whole and its hash stays.
        let older: Generation = decode(&encode_at(&generation, 6, "generation").unwrap(), "generation").unwrap();
        assert_eq!(older, generation);
    }

    #[test]
    fn a_scheduled_start_is_signed_with_the_change() {
        let author: crate::Author = "alice".parse().unwrap();
        let (root, operator) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let delegation = root.delegate("c", author.clone(), operator.public(), vec![], u64::MAX);
        let trust = crate::trust::Trust { cluster: "c".into(), roots: vec![root.public()], ..Default::default() };
        let mut body = crate::testing::put("n1", 1, 5, "k", "1").body;
        body.author = Some(author);
        body.terms = Some(Box::new(Terms { start_at_ms: Some(60_000), ..Terms::default() }));
        let signed = operator.sign_change("c", delegation.clone(), 5, &body.change, Some(60_000));
        body.signed = Some(Box::new(signed));
        trust.check(&body).expect("signed with its start");
        body.terms.as_mut().unwrap().start_at_ms = Some(1);
        assert!(trust.check(&body).is_err(), "a start moved by a node is refused");
        body.terms = None;
        assert!(trust.check(&body).is_err(), "a start dropped by a node is refused");
        body.signed = Some(Box::new(operator.sign_change("c", delegation, 5, &body.change, None)));
        trust.check(&body).expect("a change without a start signs as before");
        let mut snapshot = Snapshot::default();
        body.terms = Some(Box::new(Terms { start_at_ms: None, ..Terms::default() }));
        let generation = body.seal();
        snapshot.absorb(&generation);
        root_checks_every_write(&trust, &snapshot);
    }

    #[test]
    fn a_signature_is_covered_by_the_hash() {
        let mut generation = crate::testing::put("n1", 1, 5, "k", "1");
        let author: crate::Author = "alice".parse().unwrap();
        generation.body.author = Some(author.clone());
        let authored = generation.body.clone().seal();
        generation.body.signed = Some(Box::new(signed_by(&author, 5, &generation.body.change, None)));
        assert!(authored.clone().body.seal().verify().is_ok());
        let mut forged = authored.clone();
        forged.body.signed = generation.body.signed.clone();
        assert!(forged.verify().is_err(), "the signature is part of the content");
        let signed = generation.body.seal();
        assert_ne!(signed.hash, authored.hash);
        let mut snapshot = Snapshot::default();
        snapshot.absorb(&signed);
        assert!(snapshot.writes().all(|write| write.proof.is_some()));
        assert_eq!(decode::<Snapshot>(&encode(&snapshot), "snapshot").unwrap(), snapshot);
        assert_eq!(decode::<Generation>(&encode(&signed), "generation").unwrap(), signed);
    }

    #[test]
    fn invalid_names_from_a_peer_fail_to_decode() {
        let mut request = PullRequest { have: VersionVector::default(), max_bytes: 1, reverts: vec![] };
        request.have.raise("ok".parse().unwrap(), 3);
        let bytes = encode(&request);
        let text = String::from_utf8_lossy(&bytes).replace("ok", "o!");
        assert!(decode::<PullRequest>(text.as_bytes(), "pull request").is_err());
    }
}
