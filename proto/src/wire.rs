//! The versioned binary encoding of everything that crosses the wire or reaches the disk.
//!
//! Each encoded item is one version byte followed by its postcard encoding, so a later format
//! can be recognised (and refused with a clear error) instead of misread.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::log::VersionVector;
use crate::model::{GenId, Generation, Revert};
use crate::snapshot::Write;

/// The format version written in front of every encoded item.
pub const WIRE_VERSION: u8 = 3;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No bytes at all.
    #[error("expected an encoded item, got 0 bytes")]
    Empty,
    /// A version byte this build does not know.
    #[error("expected format version {WIRE_VERSION}, got version {found}")]
    UnknownVersion { found: u8 },
    /// Bytes that do not decode as the expected type (or whose content fails its checks).
    #[error("malformed {what}: {error}")]
    Malformed { what: &'static str, error: String },
}

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![WIRE_VERSION];
    postcard::to_io(value, &mut bytes).expect("writing to a Vec cannot fail");
    bytes
}

/// Decodes bytes written by [`encode`]; `what` names the item in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion { found: version });
    }
    let (value, trailing) =
        postcard::take_from_bytes(rest).map_err(|error| WireError::Malformed { what, error: error.to_string() })?;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hlc::Stamp;
    use crate::model::{Change, GenId, GenerationBody, JsonText, Op};

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
        )
            .prop_map(|(origin, seq, wall_ms, logical, members, ops)| {
                GenerationBody {
                    id: GenId { origin: origin.parse().unwrap(), seq },
                    hlc: Stamp { wall_ms, logical },
                    members: members.into_iter().map(|m| m.parse().unwrap()).collect(),
                    groups: vec![],
                    change: Change::with_ops(ops),
                }
                .seal()
            })
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
            let write = crate::snapshot::Write { op, generation: generation.id().clone(), hlc: generation.body.hlc };
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
        bytes[0] = 9;
        assert_eq!(decode::<PullFrame>(&bytes, "pull frame"), Err(WireError::UnknownVersion { found: 9 }));
        assert_eq!(decode::<PullFrame>(&[], "pull frame"), Err(WireError::Empty));
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
