//! The data model: changes and the generations that record them, made of the names in
//! `name.rs`.
//!
//! Every type here that crosses the wire or reaches the disk checks its invariants when it is
//! deserialized (`serde(try_from)`), so a malformed value from a peer fails to decode instead
//! of entering the log.
//!
//! - `Op::SetFlag { key, definition }` and `Op::PutConfig { key, value, schema }` each carry the
//!   whole new value of their key; `schema` is the JSON Schema the value follows, if the key has
//!   one (the API carries the key's current schema forward when a put names none).
//! - `Change { ops, policy, controls }`: operations, the `policy::Policy` they roll out under, and
//!   `policy::Control`s of other generations' rollouts. `Change::with_ops` uses
//!   `Policy::default()` and no controls. A control generation has controls and no ops.
//! - `GenerationBody { id, hlc, members, groups, change, author, signed, terms }`. `members` are the live
//!   members in the accepting node's view, sorted; waves are cut from them. They are a
//!   `MemberList`: a list every copy of the generation shares (it encodes as a plain list). `groups` is empty, or,
//!   with a `waves_by` policy, each member's value of that label, aligned with `members`. `author`
//!   is who submitted it (format 4 on); `signed` the operator's `signing::Signed` on the change
//!   (format 5 on, boxed so that an unsigned body stays small); `terms` (format 7 on) a
//!   scheduled start, approvals and a governance record (`Terms`, `Governance`).
//! - `Generation { body, hash, origin }`: `origin` is the accepting node's `OriginProof` (its
//!   certificate and its signature over the cluster id, id and hash; format 6 on), outside the
//!   hash; `node/src/origin.rs` makes and checks it (D73).
//! - `JsonText` checks its invariants in `TryFrom<String>`, and keeps JSON as text, because
//!   postcard cannot carry `serde_json::Value`. `JsonText::from_value` produces compact text with
//!   sorted object keys. The workspace enables serde_json's `arbitrary_precision`, so numbers keep
//!   their digits: a 30-digit integer stays that integer instead of becoming a rounded float.
//! - `GenerationBody::hash` is the SHA-256 of the postcard encoding of the body, as the oldest
//!   format that holds it encoded it: without `signed` and `author` as format 3, with `author` only
//!   as format 4, without `terms` as format 5, whole from format 7. So a generation keeps its
//!   hash whichever format carries it.
//!   `Generation::verify` recomputes it.
//! - `Revert { target }` undoes its target generation on every node, for good. `Revert::of(id)`
//!   derives it from the target's id alone, and it prints as `origin.seq/revert`: nodes that decide
//!   to revert the same generation on their own, even on both sides of a partition, write the same
//!   revert. Who wrote it and why is not part of it; that travels in gossip (`rv.` keys) and in
//!   alerts.
//! - `VersionVector` wraps `crdts::VClock<NodeName>`: `origin -> highest contiguous seq`, the
//!   summary of a set of generations that peers compare (the log's, a snapshot's cover, what a
//!   puller has). `covers(id)`, `merge` (the join) and `is_behind` compare vectors.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crdts::{CmRDT, Dot, VClock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ValidationError;
use crate::hlc::Stamp;
use crate::limits::MAX_VALUE_BYTES;
use crate::name::{Author, GenId, Key, NodeName};
use crate::policy::{Control, Policy};
use crate::signing::Signed;

/// The members a generation records (`GenerationBody::members`): a list of names, shared by
/// every copy of the generation. A fleet's list is long and every node holds the same one, so
/// copying it per node (log, store, pushes) made a simulated fleet of 10,000 hold 10,000 copies
/// of 10,000 names per change. The waves ranked from it (`rollout::Plan::shared`) are kept with
/// it, for the same reason.
///
/// It reads as a slice (`Deref`), and encodes as a sequence, as the `Vec` it replaced did.
#[derive(Clone, Default)]
pub struct MemberList(Arc<MemberListInner>);

#[derive(Default)]
struct MemberListInner {
    names: Box<[NodeName]>,
    /// What a layer above derives from the list once and keeps with it: the waves ranked from
    /// it (`rollout::Plan::shared`). Typed there, not here, since data sits below decisions.
    derived: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl MemberList {
    /// Where `Plan::shared` keeps the waves ranked from this list.
    pub(crate) fn derived(&self) -> &OnceLock<Box<dyn Any + Send + Sync>> {
        &self.0.derived
    }
}

impl std::ops::Deref for MemberList {
    type Target = [NodeName];

    fn deref(&self) -> &[NodeName] {
        &self.0.names
    }
}

impl From<Vec<NodeName>> for MemberList {
    fn from(names: Vec<NodeName>) -> MemberList {
        MemberList(Arc::new(MemberListInner { names: names.into_boxed_slice(), derived: OnceLock::new() }))
    }
}

impl<'a> IntoIterator for &'a MemberList {
    type Item = &'a NodeName;
    type IntoIter = std::slice::Iter<'a, NodeName>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<NodeName> for MemberList {
    fn from_iter<I: IntoIterator<Item = NodeName>>(names: I) -> MemberList {
        names.into_iter().collect::<Vec<_>>().into()
    }
}

impl PartialEq for MemberList {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || **self == **other
    }
}

impl Eq for MemberList {}

impl fmt::Debug for MemberList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for MemberList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for MemberList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<NodeName>::deserialize(deserializer).map(MemberList::from)
    }
}

/// A JSON document kept as its text, at most [`MAX_VALUE_BYTES`].
///
/// postcard cannot carry `serde_json::Value` (it needs a self-describing format), and keeping
/// the text makes the content hash independent of how a reader would re-serialize it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonText(String);

impl JsonText {
    /// Canonical text of `value`: compact, object keys sorted (serde_json's default map).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ValidationError> {
        let text = serde_json::to_string(value).expect("a Value always serializes");
        Self::try_from(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed document. Construction checked that it parses.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).expect("JsonText holds valid JSON by construction")
    }
}

impl TryFrom<String> for JsonText {
    type Error = ValidationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.len() > MAX_VALUE_BYTES {
            return Err(ValidationError::TooLarge { what: "JSON value", limit: MAX_VALUE_BYTES, found: text.len() });
        }
        if text.trim().is_empty() {
            return Err(ValidationError::EmptyValue);
        }
        // Parsed as `to_value` parses it: serde_json's `IgnoredAny` reads what a `Value`
        // refuses (a lone surrogate escape, nesting 128 levels deep), and `to_value` panicked.
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|error| ValidationError::Json { error: error.to_string() })?;
        Ok(JsonText(text))
    }
}

impl From<JsonText> for String {
    fn from(text: JsonText) -> String {
        text.0
    }
}

/// One operation of a change. Every operation carries the whole new value of its key, so a
/// generation is self-contained and the fold of the log is a last-writer-wins register per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create or replace a flag with a flagd flag definition.
    SetFlag { key: Key, definition: JsonText },
    /// Create or replace a config value, with the JSON Schema it must follow, if any. The
    /// schema stays with the key: a change that names none carries the key's current one.
    PutConfig { key: Key, value: JsonText, schema: Option<JsonText> },
}

impl Op {
    pub fn key(&self) -> &Key {
        match self {
            Op::SetFlag { key, .. } | Op::PutConfig { key, .. } => key,
        }
    }

    /// `flag` or `config`: the namespace the key lives in.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::SetFlag { .. } => "flag",
            Op::PutConfig { .. } => "config",
        }
    }
}

/// What a user submits: operations applied together, and how they roll out; or controls of
/// other generations' rollouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub ops: Vec<Op>,
    pub policy: Policy,
    pub controls: Vec<Control>,
}

impl Change {
    /// Operations under the built-in default policy.
    pub fn with_ops(ops: Vec<Op>) -> Change {
        Change { ops, policy: Policy::default(), controls: Vec::new() }
    }
}

/// SHA-256 of a generation's encoded body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The content of a generation: everything its hash covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationBody {
    pub id: GenId,
    /// Hybrid-logical-clock stamp; `(hlc, origin)` orders generations for the fold.
    pub hlc: Stamp,
    /// The members alive in the accepting node's view, sorted: waves are cut from this set.
    pub members: MemberList,
    /// With a `waves_by` policy, each member's value of that label (aligned with `members`).
    pub groups: Vec<String>,
    pub change: Change,
    /// Who submitted it (format 4 on). A node leaves it out while any member reads only
    /// format 3, so that every member can hold every generation during a rolling upgrade.
    pub author: Option<Author>,
    /// The operator's signature on the change (format 5 on), checked against the cluster's
    /// root keys by every node ([`crate::signing`]).
    pub signed: Option<Box<Signed>>,
    /// What the generation carries beside its change (format 7 on): a scheduled start,
    /// approvals, a governance record. Boxed, so that a plain body stays small.
    pub terms: Option<Box<Terms>>,
}

/// What a generation carries beside its change (format 7 on), each part optional. The operator's
/// signature covers `start_at_ms` with the change ([`crate::signing`]); each approval is another
/// operator's signature over the same content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// The first wave opens no earlier than this (Unix milliseconds, judged against each node's
    /// hybrid clock): a scheduled start.
    pub start_at_ms: Option<u64>,
    /// Signatures of further operators over the same change: approvals (four eyes).
    pub approvals: Vec<Signed>,
    /// A governance record. A generation that carries one other than [`Governance::Enact`] has
    /// no operations and no controls: it is stored and spread, and applies nowhere.
    pub governance: Option<Governance>,
}

impl Terms {
    /// Whether the terms say nothing (a body carries `None` instead).
    pub fn is_empty(&self) -> bool {
        self.start_at_ms.is_none() && self.approvals.is_empty() && self.governance.is_none()
    }
}

/// A record of the approval process, carried in a generation's [`Terms`]; a proposal is named
/// by the id of the generation that carries it. Every record but `Enact` has no operations and
/// no controls, and each is signed in the body's `signed` by the operator who made it
/// ([`crate::approvals`] says what each signature covers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Governance {
    /// Proposes `change`, signed by the proposer in the body's `signed` (with `start_at_ms` of
    /// the terms, if any); it cannot be approved after `expires_ms` (Unix milliseconds).
    Propose { change: Change, expires_ms: u64 },
    /// Approves `proposal`, whose change and start hash to `digest`
    /// ([`crate::approvals::proposal_digest`]) and which expires at `expires_ms`: the body's
    /// `signed` is the approver's signature over these, in the approval context.
    Approve { proposal: GenId, digest: ContentHash, expires_ms: u64 },
    /// Rejects `proposal` (of `digest`), signed by the rejecting operator in the body's `signed`,
    /// in the rejection context.
    Reject { proposal: GenId, digest: ContentHash },
    /// Carries out `proposal`: the body's change and `signed` are the proposal's, and the terms'
    /// approvals are the approvers' signatures, each over this proposal and `expires_ms`.
    Enact { proposal: GenId, expires_ms: u64 },
}

impl GenerationBody {
    /// SHA-256 of the body's encoding. A body is hashed as the oldest format that holds it
    /// encoded it: without terms as format 6 (without the terms' slot), without a signature as
    /// format 4 (without the signature's slot either), without an author as format 3 (without
    /// the author's either). So a generation keeps its hash whichever format carried it.
    pub fn hash(&self) -> ContentHash {
        let GenerationBody { id, hlc, members, groups, change, author, signed, terms } = self;
        let bytes = match (author, signed, terms) {
            (None, None, None) => postcard::to_stdvec(&(id, hlc, members, groups, change)),
            (Some(_), None, None) => postcard::to_stdvec(&(id, hlc, members, groups, change, author)),
            (_, Some(_), None) => postcard::to_stdvec(&(id, hlc, members, groups, change, author, signed)),
            (_, _, Some(_)) => postcard::to_stdvec(self),
        }
        .expect("a generation body always encodes");
        ContentHash(Sha256::digest(&bytes).into())
    }

    /// Seals the body with its content hash, without an origin proof (the node that accepts
    /// it adds one: [`Generation::origin`]).
    pub fn seal(self) -> Generation {
        let hash = self.hash();
        Generation { body: self, hash, origin: None }
    }
}

/// An accepted change: immutable and content-addressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub body: GenerationBody,
    pub hash: ContentHash,
    /// The accepting node's proof that it made this generation (format 6 on): outside the
    /// content hash, since it says who made the content, not what it is.
    pub origin: Option<Box<OriginProof>>,
}

/// A node's signature, by the key of its TLS certificate, binding a generation's id to its
/// content hash ([`OriginProof::message`]), with that certificate: any node checks from the
/// generation alone that its origin (`id.origin`) made it, since the certificate must chain to
/// the cluster CA and be issued for that name. Without it, any holder of a cluster certificate
/// could write generations under another node's name, and the nodes that heard those first
/// would keep them instead of the real node's acknowledged writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginProof {
    /// The origin's certificate, DER.
    pub certificate: Vec<u8>,
    /// The signature over [`OriginProof::message`] (ECDSA P-256 ASN.1 for `ca issue` keys).
    pub signature: Vec<u8>,
}

impl OriginProof {
    /// Separates these signatures from every other use of a node's key.
    const CONTEXT: &'static [u8] = b"grapevine generation origin v1";

    /// The bytes an origin proof signs: a context, the cluster id, the generation's id and its
    /// content hash, each length-prefixed so that no two tuples give the same bytes.
    pub fn message(cluster: &str, id: &GenId, hash: &ContentHash) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::CONTEXT.len() + cluster.len() + id.origin.as_str().len() + 60);
        out.extend_from_slice(Self::CONTEXT);
        for field in [cluster.as_bytes(), id.origin.as_str().as_bytes()] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&id.seq.to_be_bytes());
        out.extend_from_slice(&hash.0);
        out
    }
}

impl Generation {
    pub fn id(&self) -> &GenId {
        &self.body.id
    }

    /// The fold order: greater wins per key. `GenId` orders by origin, then seq.
    pub fn order_key(&self) -> (Stamp, &GenId) {
        (self.body.hlc, &self.body.id)
    }

    /// The generation with `proof` as its origin proof.
    pub fn proven(self, proof: Option<OriginProof>) -> Generation {
        Generation { origin: proof.map(Box::new), ..self }
    }

    /// Checks that the hash matches the body, as received from a peer or read from disk.
    pub fn verify(&self) -> Result<(), ValidationError> {
        let computed = self.body.hash();
        if computed != self.hash {
            return Err(ValidationError::HashMismatch {
                id: self.body.id.to_string(),
                expected: self.hash.to_string(),
                found: computed.to_string(),
            });
        }
        Ok(())
    }
}

/// The revert generation of a generation: it undoes its target on every node, for good.
///
/// Its identity and its content are derived from the target's id alone (printed
/// `origin.seq/revert`), so nodes that decide to revert the same generation independently,
/// even on both sides of a partition, write the same revert, and every log holds it once.
/// Who wrote it and why is not part of it: that is gossiped and alerted beside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revert {
    pub target: GenId,
}

impl Revert {
    pub fn of(target: &GenId) -> Revert {
        Revert { target: target.clone() }
    }
}

impl fmt::Display for Revert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/revert", self.target)
    }
}

/// `origin -> highest seq such that every seq from 1 up to it is in the log`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(VClock<NodeName>);

impl VersionVector {
    pub fn get(&self, origin: &NodeName) -> u64 {
        self.0.get(origin)
    }

    /// [`VersionVector::get`] by the origin's name as text (0 for a name it does not hold).
    pub fn get_by_name(&self, origin: &str) -> u64 {
        self.0.dots.get(origin).copied().unwrap_or(0)
    }

    /// Raises `origin` to `seq` if that is higher.
    pub fn raise(&mut self, origin: NodeName, seq: u64) {
        self.0.apply(Dot::new(origin, seq));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeName, u64)> {
        self.0.dots.iter().map(|(origin, seq)| (origin, *seq))
    }

    /// True when `other` holds a generation this vector does not cover.
    pub fn is_behind(&self, other: &VersionVector) -> bool {
        other.iter().any(|(origin, seq)| seq > self.get(origin))
    }

    /// True when the vector covers generation `id` (its seq is at most the origin's entry).
    pub fn covers(&self, id: &GenId) -> bool {
        id.seq <= self.get(&id.origin)
    }

    /// Raises every origin to the higher of the two vectors (the vectors' join).
    pub fn merge(&mut self, other: &VersionVector) {
        for (origin, seq) in other.iter() {
            self.raise(origin.clone(), seq);
        }
    }

    /// Number of generations the vector covers, at most `u64::MAX`: a peer's snapshot may
    /// claim any seqs, and their sum must not overflow.
    pub fn total(&self) -> u64 {
        self.iter().fold(0, |total, (_, seq)| total.saturating_add(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_of_a_peers_vector_saturates() {
        let bytes = hex::decode("06020161ffffffffffffffffff01016201").unwrap();
        let ack: crate::wire::PushAck = crate::wire::decode(&bytes, "push ack").unwrap();
        assert_eq!(ack.have.total(), u64::MAX);
    }

    #[test]
    fn a_member_list_reads_and_encodes_as_the_list_it_holds() {
        let names: Vec<NodeName> = ["n2", "n10", "n1"].iter().map(|n| n.parse().unwrap()).collect();
        let list = MemberList::from(names.clone());
        assert_eq!(postcard::to_stdvec(&list).unwrap(), postcard::to_stdvec(&names).unwrap());
        assert_eq!(serde_json::to_string(&list).unwrap(), serde_json::to_string(&names).unwrap());
        let decoded: MemberList = postcard::from_bytes(&postcard::to_stdvec(&names).unwrap()).unwrap();
        assert_eq!(decoded, list);
        assert_eq!(format!("{list:?}"), format!("{names:?}"));
        assert_eq!((list.len(), &list[1]), (3, &names[1]));
        assert_ne!(list, MemberList::from(names[..2].to_vec()));
    }

    #[test]
    fn json_text_refuses_invalid_and_oversized_json() {
        assert!(JsonText::try_from("{\"a\":1}".to_owned()).is_ok());
        assert!(JsonText::try_from("{".to_owned()).is_err());
        assert!(JsonText::try_from(String::new()).is_err());
        let big = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(JsonText::try_from(big), Err(ValidationError::TooLarge { .. })));
    }

    /// Found while writing `fuzz/`'s `json_schema` target, and replayed by it: JSON that
    /// serde_json skips over but does not parse into a `Value`. A config value or schema of
    /// that kind from a peer or the disk passed as `JsonText`, and `to_value` panicked.
    #[test]
    fn json_text_holds_only_what_parses_into_a_value() {
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        for text in [r#""\ud800""#.to_owned(), deep] {
            let refused = JsonText::try_from(text.clone()).unwrap_err();
            assert!(matches!(refused, ValidationError::Json { .. }), "{text}: {refused}");
        }
        let deepest = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert_eq!(JsonText::try_from(deepest).unwrap().to_value().to_string().len(), 254);
    }
}
