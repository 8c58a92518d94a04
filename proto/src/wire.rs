//! The versioned binary encoding of everything that crosses the wire or reaches the disk.
//!
//! Each encoded item is one version byte followed by its postcard encoding. A build reads its
//! own version and the one before ([`OLDEST_READABLE`]), and writes either: so a node of
//! version N and a node of version N-1 work together during a rolling upgrade, and a node of
//! version N reads a store written by N-1. A version outside that range is refused with a
//! clear error instead of misread.
//!
//! Version history (the types of the version before live in [`v4`]):
//! - 3: reverts, the anomaly quorum and the thresholds in each change's policy.
//! - 4: a generation records its author ([`GenerationBody::author`]).
//! - 5: a generation carries its operator's signature ([`GenerationBody::signed`]), and a
//!   snapshot's write the signed change it came from ([`Write::proof`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::log::VersionVector;
use crate::model::{GenId, Generation, GenerationBody, Revert};
use crate::snapshot::{Snapshot, Write};

/// The format version this build writes.
pub const WIRE_VERSION: u8 = 5;

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
    /// A value that the older format asked for cannot hold (a signed generation, for a peer
    /// that reads format 4 only).
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

unchanged_since_previous!(PullRequest, PushAck, Revert, VersionVector);

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

/// Decodes a record of a node's own store: like [`decode_versioned`], and also format 3, which
/// builds of format 4 read from their store and left there as it was. A node rewrites such
/// records in the newest format when it opens its store, so that the next build reads them
/// (peers of format 3 stay refused: only the disk is read this far back).
pub fn decode_stored<T: Stored>(bytes: &[u8], what: &'static str) -> Result<(T, u8), WireError> {
    match bytes.split_first() {
        Some((3, rest)) if newest() == WIRE_VERSION => Ok((T::from_v3(take_all(rest, what)?), 3)),
        _ => decode_versioned(bytes, what),
    }
}

/// An item a node keeps in its store, and how format 3 encoded it.
pub trait Stored: Versioned {
    type V3: DeserializeOwned;
    fn from_v3(old: Self::V3) -> Self;
}

impl Stored for Generation {
    type V3 = v3::Generation;

    fn from_v3(old: v3::Generation) -> Generation {
        let v3::GenerationBody { id, hlc, members, groups, change } = old.body;
        let body = GenerationBody { id, hlc, members, groups, change, author: None, signed: None };
        Generation { body, hash: old.hash }
    }
}

impl Stored for Snapshot {
    /// Snapshots did not change from format 3 to 4.
    type V3 = v4::Snapshot;

    fn from_v3(old: v4::Snapshot) -> Snapshot {
        Snapshot::from_previous(old)
    }
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

const NO_SIGNATURES: &str = "format 4 has no operator signatures";

impl Versioned for Generation {
    type Previous = v4::Generation;

    fn from_previous(old: v4::Generation) -> Generation {
        let v4::GenerationBody { id, hlc, members, groups, change, author } = old.body;
        let body = GenerationBody { id, hlc, members, groups, change, author, signed: None };
        Generation { body, hash: old.hash }
    }

    fn to_previous(&self) -> Result<v4::Generation, &'static str> {
        let GenerationBody { id, hlc, members, groups, change, author, signed } = self.body.clone();
        if signed.is_some() {
            return Err(NO_SIGNATURES);
        }
        Ok(v4::Generation { body: v4::GenerationBody { id, hlc, members, groups, change, author }, hash: self.hash })
    }
}

impl Versioned for Write {
    type Previous = v4::Write;

    fn from_previous(old: v4::Write) -> Write {
        let v4::Write { op, generation, hlc } = old;
        Write { op, generation, hlc, proof: None }
    }

    fn to_previous(&self) -> Result<v4::Write, &'static str> {
        let Write { op, generation, hlc, proof } = self.clone();
        if proof.is_some() {
            return Err(NO_SIGNATURES);
        }
        Ok(v4::Write { op, generation, hlc })
    }
}

impl Versioned for Snapshot {
    type Previous = v4::Snapshot;

    fn from_previous(old: v4::Snapshot) -> Snapshot {
        Snapshot::from_parts(old.covers, old.writes.into_iter().map(Write::from_previous))
    }

    fn to_previous(&self) -> Result<v4::Snapshot, &'static str> {
        let writes = self.writes().map(Write::to_previous).collect::<Result<_, _>>()?;
        Ok(v4::Snapshot { covers: self.covers().clone(), writes })
    }
}

impl Versioned for PullFrame {
    type Previous = v4::PullFrame;

    fn from_previous(old: v4::PullFrame) -> PullFrame {
        match old {
            v4::PullFrame::Revert(revert) => PullFrame::Revert(revert),
            v4::PullFrame::SnapshotWrite(write) => PullFrame::SnapshotWrite(Write::from_previous(write)),
            v4::PullFrame::SnapshotEnd { covers } => PullFrame::SnapshotEnd { covers },
            v4::PullFrame::Generation(generation) => PullFrame::Generation(Generation::from_previous(generation)),
            v4::PullFrame::End { more } => PullFrame::End { more },
        }
    }

    fn to_previous(&self) -> Result<v4::PullFrame, &'static str> {
        Ok(match self.clone() {
            PullFrame::Revert(revert) => v4::PullFrame::Revert(revert),
            PullFrame::SnapshotWrite(write) => v4::PullFrame::SnapshotWrite(write.to_previous()?),
            PullFrame::SnapshotEnd { covers } => v4::PullFrame::SnapshotEnd { covers },
            PullFrame::Generation(generation) => v4::PullFrame::Generation(generation.to_previous()?),
            PullFrame::End { more } => v4::PullFrame::End { more },
        })
    }
}

impl Versioned for Push {
    type Previous = v4::Push;

    fn from_previous(old: v4::Push) -> Push {
        let generations = old.generations.into_iter().map(Generation::from_previous).collect();
        Push { reverts: old.reverts, generations, sender_has: old.sender_has }
    }

    fn to_previous(&self) -> Result<v4::Push, &'static str> {
        let generations = self.generations.iter().map(Generation::to_previous).collect::<Result<_, _>>()?;
        Ok(v4::Push { reverts: self.reverts.clone(), generations, sender_has: self.sender_has.clone() })
    }
}

/// A generation as format 3 encoded it (before its author), read from a store only.
pub mod v3 {
    use serde::Deserialize;

    use crate::hlc::Stamp;
    use crate::model::{Change, ContentHash, GenId, NodeName};

    #[derive(Deserialize)]
    pub struct GenerationBody {
        pub id: GenId,
        pub hlc: Stamp,
        pub members: Vec<NodeName>,
        pub groups: Vec<String>,
        pub change: Change,
    }

    #[derive(Deserialize)]
    pub struct Generation {
        pub body: GenerationBody,
        pub hash: ContentHash,
    }
}

/// The items whose encoding changed in format 5, as format 4 encoded them. Field and variant
/// order is the encoding: never reorder, only add a new module for a new version.
pub mod v4 {
    use serde::{Deserialize, Serialize};

    use crate::hlc::Stamp;
    use crate::log::VersionVector;
    use crate::model::{Author, Change, ContentHash, GenId, NodeName, Op, Revert};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GenerationBody {
        pub id: GenId,
        pub hlc: Stamp,
        pub members: Vec<NodeName>,
        pub groups: Vec<String>,
        pub change: Change,
        pub author: Option<Author>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Generation {
        pub body: GenerationBody,
        pub hash: ContentHash,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Write {
        pub op: Op,
        pub generation: GenId,
        pub hlc: Stamp,
    }

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
    use crate::model::{Change, GenId, GenerationBody, JsonText, Op};
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
        )
            .prop_map(|(origin, seq, wall_ms, logical, members, ops, author, signed)| {
                let change = Change::with_ops(ops);
                let author: Option<crate::Author> = author.map(|a| a.parse().unwrap());
                let signed = match (&author, signed) {
                    (Some(author), true) => Some(signed_by(author, wall_ms, &change)),
                    _ => None,
                };
                GenerationBody {
                    id: GenId { origin: origin.parse().unwrap(), seq },
                    hlc: Stamp { wall_ms, logical },
                    members: members.into_iter().map(|m| m.parse().unwrap()).collect(),
                    groups: vec![],
                    change,
                    author,
                    signed: signed.map(Box::new),
                }
                .seal()
            })
    }

    fn signed_by(author: &crate::Author, issued_ms: u64, change: &Change) -> crate::signing::Signed {
        let (root, operator) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let delegation = root.delegate("c", author.clone(), operator.public(), vec![], u64::MAX);
        operator.sign_change("c", delegation, issued_ms, change)
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
        for version in [2, 3, 6, 9] {
            bytes[0] = version;
            let refused = decode::<PullFrame>(&bytes, "pull frame").unwrap_err();
            assert_eq!(refused, WireError::UnknownVersion { found: version });
            assert_eq!(refused.to_string(), format!("expected format version 4 to 5, got version {version}"));
        }
        assert_eq!(decode::<PullFrame>(&[], "pull frame"), Err(WireError::Empty));
    }

    /// Items as a build encoded them, by name: `wire-v3.txt` by the build of format 3
    /// (commit 6f2157a), `wire-v4.txt` by the build of format 4 (commit 15805e4).
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
    fn items_written_by_format_4_are_read_and_written_back_byte_for_byte() {
        let fixtures = fixtures_v4();
        let generation: Generation = decode(&fixtures["generation"], "generation").unwrap();
        assert_eq!(generation.id().to_string(), "old1.7");
        assert_eq!((&generation.body.author, &generation.body.signed), (&None, &None));
        generation.verify().expect("a format 3 generation keeps its hash in format 4 and 5");
        crate::validate::validate_generation(&generation).unwrap();
        assert_eq!(encode_at(&generation, 4, "generation").unwrap(), fixtures["generation"]);
        let authored: Generation = decode(&fixtures["generation-authored"], "generation").unwrap();
        assert_eq!(authored.body.author.as_ref().map(crate::Author::as_str), Some("alice@laptop"));
        authored.verify().expect("an authored format 4 generation keeps its hash in format 5");
        assert_eq!(encode_at(&authored, 4, "generation").unwrap(), fixtures["generation-authored"]);

        let (push, version) = decode_versioned::<Push>(&fixtures["push"], "push").unwrap();
        assert_eq!((version, &push.generations[..]), (4, std::slice::from_ref(&generation)));
        assert_eq!(encode_at(&push, version, "push").unwrap(), fixtures["push"]);
        for (name, what) in [("pull-frame-generation", "pull frame"), ("pull-frame-snapshot-write", "pull frame")] {
            let frame: PullFrame = decode(&fixtures[name], what).unwrap();
            assert_eq!(encode_at(&frame, 4, what).unwrap(), fixtures[name], "{name}");
        }
        let snapshot: Snapshot = decode(&fixtures["snapshot"], "snapshot").unwrap();
        assert!(snapshot.writes().all(|write| write.proof.is_none()));
        assert_eq!(encode_at(&snapshot, 4, "snapshot").unwrap(), fixtures["snapshot"]);
        let request: PullRequest = decode(&fixtures["pull-request"], "pull request").unwrap();
        assert_eq!(request.max_bytes, 1 << 20);
        assert_eq!(encode_at(&request, 4, "pull request").unwrap(), fixtures["pull-request"]);
        let ack: PushAck = decode(&fixtures["push-ack"], "push ack").unwrap();
        assert_eq!(encode_at(&ack, 4, "push ack").unwrap(), fixtures["push-ack"]);

        // The same generations in format 5 differ by the signature's slot only, and hash alike.
        for generation in [generation, authored] {
            let newer = encode(&generation);
            let older = encode_at(&generation, 4, "generation").unwrap();
            assert_eq!((newer[0], newer.len()), (5, older.len() + 1));
            assert_eq!(decode::<Generation>(&newer, "generation").unwrap(), generation);
        }
    }

    #[test]
    fn format_3_is_refused_from_peers_and_read_from_the_store() {
        let fixtures = fixtures(include_str!("../tests/fixtures/wire-v3.txt"));
        let refused = decode::<Generation>(&fixtures["generation"], "generation").unwrap_err();
        assert_eq!(refused.to_string(), "expected format version 4 to 5, got version 3");
        let (stored, version) = decode_stored::<Generation>(&fixtures["generation"], "generation").unwrap();
        assert_eq!((stored.id().to_string(), version), ("old1.7".to_owned(), 3));
        stored.verify().expect("a format 3 generation keeps its hash");
        let v4 = fixtures_v4();
        assert_eq!(encode_at(&stored, 4, "generation").unwrap(), v4["generation"], "as the format-4 build wrote it");
        let snapshot = encode_at(&Snapshot::default(), 4, "snapshot").unwrap();
        let mut old = snapshot.clone();
        old[0] = 3;
        assert_eq!(decode_stored::<Snapshot>(&old, "snapshot").unwrap(), (Snapshot::default(), 3));
        assert!(decode_stored::<Generation>(&[2, 0], "generation").is_err());
    }

    fn fixtures_v4() -> std::collections::BTreeMap<&'static str, Vec<u8>> {
        fixtures(include_str!("../tests/fixtures/wire-v4.txt"))
    }

    #[test]
    fn a_signature_is_covered_by_the_hash_and_has_no_format_4_form() {
        let mut generation = crate::testing::put("n1", 1, 5, "k", "1");
        let author: crate::Author = "alice".parse().unwrap();
        generation.body.author = Some(author.clone());
        let authored = generation.body.clone().seal();
        generation.body.signed = Some(Box::new(signed_by(&author, 5, &generation.body.change)));
        assert!(authored.clone().body.seal().verify().is_ok());
        let mut forged = authored.clone();
        forged.body.signed = generation.body.signed.clone();
        assert!(forged.verify().is_err(), "the signature is part of the content");
        let signed = generation.body.seal();
        assert_ne!(signed.hash, authored.hash);
        let refused = encode_at(&signed, 4, "generation").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "generation cannot be written in format version 4: format 4 has no operator signatures"
        );
        let push = Push { reverts: vec![], generations: vec![signed.clone()], sender_has: VersionVector::default() };
        assert!(encode_at(&push, 4, "push").is_err());
        let mut snapshot = Snapshot::default();
        snapshot.absorb(&signed);
        assert!(snapshot.writes().all(|write| write.proof.is_some()));
        assert!(encode_at(&snapshot, 4, "snapshot").is_err());
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
