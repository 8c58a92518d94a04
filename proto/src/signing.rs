//! Signed changes: who may change the fleet, decided by every node from the generation alone.
//!
//! A cluster trusts a few **root keys** (ed25519), named in every node's configuration like the
//! CA. A root signs a [`Delegation`]: an operator's name, public key, the key prefixes it may
//! change and an expiry. The operator signs each change with its key ([`Signed`]), over the
//! cluster id, the time it was issued, its name and the whole [`Change`] (operations, policy,
//! controls). A generation carries both, so any node checks it without asking anyone: the
//! delegation must be signed by a trusted root, the change by the delegated key, the node's
//! stamp must lie within [`ISSUE_WINDOW_MS`] of the issue time and before the expiry, the
//! author must be the operator, and every key must lie in its prefixes.
//!
//! The check depends on the generation and the node's configuration only, never on what the
//! node has received so far: a generation one node stores and another refuses would leave a
//! hole in its origin's sequence on the second for good. Revocation, which does depend on
//! history, is therefore not a refusal at storage: it is a change (a write of
//! [`revocation_key`]) and every node reverts what a revoked key signed after it (see the
//! engine).
//!
//! A node holding a cluster certificate but no operator key cannot make a generation that
//! passes: it can only replay an operator's signed change, which then carries the same content
//! and, by the window, a stamp at most [`ISSUE_WINDOW_MS`] after its signing: for that long a
//! replay can bring the change's values back over a later write of its keys; after it, never.
//!
//! The types: `PublicKey` (`ed25519:` + hex), `Signature`, `SecretKey` (from a seed the caller
//! draws: `delegate`, `sign_change`), `Delegation` (operator, key, prefixes, expiry, root,
//! signature; `covers(key)`), `Signed` (delegation, `issued_ms`, signature), `WriteProof` (a
//! snapshot write's change and signature), `SigningError` (`reason()` labels the metric) and
//! `Trust` (cluster id, roots, `unsigned_through`, the approval rules): `check(body)`, `check_write`
//! and `check_signed` are the whole acceptance rule (governance records and the approval rules
//! are checked in `approvals.rs`, through `check_signer`, `check_author`, `check_window` and
//! `check_scope`). `revoked_after` counts an approver's key as it counts the operator's. The revocation rule: `revocation_key`/`revoked_by`
//! (`grapevine.revoked.<hex>`), `revocations(log)` (the earliest revocation per key, in fold order,
//! by a key not revoked before it) and `revoked_after(log)` (the generations to revert). Limits:
//! `ISSUE_WINDOW_MS` (10 min), `MAX_PREFIXES` (32), `RESERVED_PREFIX` (`grapevine.`). ed25519 is
//! ring's, the TLS crypto provider.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::approvals::ApprovalRule;
use crate::hlc::Stamp;
use crate::log::{Log, VersionVector};
use crate::model::{Change, GenerationBody, Governance, Op, Terms};
use crate::name::{Author, GenId, Key};

/// How far a node's stamp on a signed change may lie from the time the operator signed it
/// (either way: the clocks of the operator's machine and the node differ). It bounds how late
/// a captured signed change can be replayed.
pub const ISSUE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Most key prefixes one delegation may name.
pub const MAX_PREFIXES: usize = 32;

/// Keys under this prefix belong to the cluster itself (revocations): only a delegation
/// without prefixes may write them.
pub const RESERVED_PREFIX: &str = "grapevine.";

/// The config key whose write revokes `key`: `grapevine.revoked.<hex of the key>`.
pub fn revocation_key(key: &PublicKey) -> Key {
    format!("{RESERVED_PREFIX}revoked.{}", hex::encode(key.0)).parse().expect("a revocation key is a valid key")
}

/// The public key a revocation key names, if `key` is one.
pub fn revoked_by(key: &Key) -> Option<PublicKey> {
    let hex = key.as_str().strip_prefix(RESERVED_PREFIX)?.strip_prefix("revoked.")?;
    let bytes: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
    Some(PublicKey(bytes))
}

/// The earliest revocation of each revoked operator key in `log` (its snapshot and its
/// generations): the first write of its [`revocation_key`] in fold order, by a change whose own
/// key was not revoked before it (a stolen key cannot revoke its owner's colleagues after its
/// own revocation). A revocation is final: reverting the change that wrote it does not restore
/// the key, since reverts are not signed (delegate a new key instead).
pub fn revocations(log: &Log) -> BTreeMap<PublicKey, (Stamp, GenId)> {
    let snapshot = log.base().writes().map(|w| ((w.hlc, &w.generation), w.proof.as_ref().map(|p| &p.signed), &w.op));
    let generations = log.iter().flat_map(|g| {
        let at = g.order_key();
        g.body.change.ops.iter().map(move |op| (at, g.body.signed.as_deref(), op))
    });
    let mut writes: Vec<_> = snapshot.chain(generations).filter(|(_, _, op)| revoked_by(op.key()).is_some()).collect();
    let mut revoked: BTreeMap<PublicKey, (Stamp, GenId)> = BTreeMap::new();
    if writes.is_empty() {
        return revoked;
    }
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    for ((stamp, id), signed, op) in writes {
        let by_revoked =
            signed.and_then(|s| revoked.get(&s.delegation.key)).is_some_and(|at| (at.0, &at.1) < (stamp, id));
        if let (false, Some(public)) = (by_revoked, revoked_by(op.key())) {
            revoked.entry(public).or_insert_with(|| (stamp, id.clone()));
        }
    }
    revoked
}

/// The generations of `log`, not reverted yet, that a revoked key signed and that come after
/// its revocation in fold order: each is to be reverted. The rule reads only the log, so every
/// node holding the revocation and the generation reverts the same ones (and a node that
/// lacks the revocation learns the revert as any other).
pub fn revoked_after(log: &Log) -> Vec<(GenId, PublicKey)> {
    let revoked = revocations(log);
    if revoked.is_empty() {
        return Vec::new();
    }
    log.iter()
        .filter(|g| !log.is_reverted(g.id()))
        .filter_map(|g| {
            // The operator's key, and each approver's: an approval by a revoked key is void too.
            let approvals = g.body.terms.iter().flat_map(|terms| &terms.approvals);
            let keys = g.body.signed.iter().map(|signed| &**signed).chain(approvals).map(|s| s.delegation.key);
            keys.filter_map(|key| Some((revoked.get(&key)?, key)))
                .find(|((stamp, by), _)| g.order_key() > (*stamp, by))
                .map(|(_, key)| (g.id().clone(), key))
        })
        .collect()
}

/// Separates each kind of signed message from every other use of the same key.
const DELEGATION_CONTEXT: &str = "grapevine delegation v1";
const CHANGE_CONTEXT: &str = "grapevine change v1";
const SCHEDULED_CHANGE_CONTEXT: &str = "grapevine scheduled change v1";

/// An ed25519 public key; printed `ed25519:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SigningError::PublicKey { found: s.to_owned() };
        let hex = s.strip_prefix("ed25519:").ok_or_else(invalid)?;
        let bytes: [u8; 32] = hex::decode(hex).map_err(|_| invalid())?.try_into().map_err(|_| invalid())?;
        Ok(PublicKey(bytes))
    }
}

/// An ed25519 signature (64 bytes, kept as two halves so that serde derives its encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    r: [u8; 32],
    s: [u8; 32],
}

impl Signature {
    fn from_bytes(bytes: &[u8]) -> Signature {
        let (r, s) = bytes.split_at(32);
        Signature { r: r.try_into().expect("32 bytes"), s: s.try_into().expect("32 bytes") }
    }

    fn to_bytes(self) -> [u8; 64] {
        let mut bytes = [0; 64];
        bytes[..32].copy_from_slice(&self.r);
        bytes[32..].copy_from_slice(&self.s);
        bytes
    }

    pub(crate) fn verifies(&self, key: &PublicKey, message: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, key.0).verify(message, &self.to_bytes()).is_ok()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.to_bytes()))
    }
}

/// A private ed25519 key (root or operator), from its 32-byte seed. The seed comes from the
/// caller: this crate draws no random number.
pub struct SecretKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl SecretKey {
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are an ed25519 seed");
        SecretKey { pair, seed }
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().try_into().expect("an ed25519 public key is 32 bytes"))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        Signature::from_bytes(self.pair.sign(message).as_ref())
    }

    /// Delegates `key` to `operator` as a root of `cluster`, for keys under `prefixes` (all when
    /// empty), until `not_after_ms`.
    pub fn delegate(
        &self,
        cluster: &str,
        operator: Author,
        key: PublicKey,
        prefixes: Vec<String>,
        not_after_ms: u64,
    ) -> Delegation {
        let mut delegation = Delegation {
            operator,
            key,
            prefixes,
            not_after_ms,
            root: self.public(),
            signature: Signature::from_bytes(&[0; 64]),
        };
        delegation.signature = self.sign(&delegation.message(cluster));
        delegation
    }

    /// Signs `change` for `cluster` under `delegation` (which must delegate this key), as
    /// issued at `issued_ms`, to start no earlier than `start_at_ms` where given.
    pub fn sign_change(
        &self,
        cluster: &str,
        delegation: Delegation,
        issued_ms: u64,
        change: &Change,
        start_at_ms: Option<u64>,
    ) -> Signed {
        let signature = self.sign(&change_message(cluster, &delegation.operator, issued_ms, change, start_at_ms));
        Signed { delegation, issued_ms, signature }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, secret withheld)", self.public())
    }
}

/// A root's statement that `key` belongs to `operator`, who may change keys under `prefixes`
/// (every key when empty; only then also rollout controls and the reserved keys) until
/// `not_after_ms` (Unix milliseconds, compared with the generation's stamp).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub operator: Author,
    pub key: PublicKey,
    pub prefixes: Vec<String>,
    pub not_after_ms: u64,
    pub root: PublicKey,
    pub signature: Signature,
}

impl Delegation {
    fn message(&self, cluster: &str) -> Vec<u8> {
        let Delegation { operator, key, prefixes, not_after_ms, root, signature: _ } = self;
        postcard::to_stdvec(&(DELEGATION_CONTEXT, cluster, operator, key, prefixes, not_after_ms, root))
            .expect("a delegation always encodes")
    }

    /// Whether the delegation lets its operator write `key`.
    pub fn covers(&self, key: &Key) -> bool {
        let reserved = key.as_str().starts_with(RESERVED_PREFIX);
        self.prefixes.is_empty() || (!reserved && self.prefixes.iter().any(|p| key.as_str().starts_with(p.as_str())))
    }
}

/// An operator's signature on a change, with the delegation that makes its key trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub delegation: Delegation,
    /// When the operator signed it (Unix milliseconds, as the node that prepared it said).
    pub issued_ms: u64,
    pub signature: Signature,
}

/// What an operator signs: the change, and its scheduled start where it has one (a change
/// without one signs as before format 7, so signatures made then still verify).
pub(crate) fn change_message(
    cluster: &str,
    operator: &Author,
    issued_ms: u64,
    change: &Change,
    start_at_ms: Option<u64>,
) -> Vec<u8> {
    match start_at_ms {
        None => postcard::to_stdvec(&(CHANGE_CONTEXT, cluster, operator, issued_ms, change)),
        Some(at) => postcard::to_stdvec(&(SCHEDULED_CHANGE_CONTEXT, cluster, operator, issued_ms, change, at)),
    }
    .expect("a change always encodes")
}

/// A write in a snapshot with what makes it trusted: the whole change its generation carried
/// and the operator's signature on it (a signature covers the change, not one operation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteProof {
    pub change: Change,
    pub signed: Signed,
    /// The generation's terms, where it had any (format 7 on): its scheduled start, which the
    /// signature covers, and its approvals.
    pub terms: Option<Box<Terms>>,
}

/// Why a generation (or a snapshot's write) is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("public key must be ed25519: and 64 hex digits, got {found:?}")]
    PublicKey { found: String },
    #[error("this cluster accepts signed changes only, and {what} carries no operator signature")]
    Unsigned { what: String },
    #[error("the delegation is signed by {root}, which is not one of this cluster's root keys")]
    UnknownRoot { root: PublicKey },
    #[error("the delegation of {operator} does not verify with root key {root} for cluster {cluster:?}")]
    BadDelegation { operator: Author, root: PublicKey, cluster: String },
    #[error("the signature of {operator} does not verify over this change for cluster {cluster:?}")]
    BadSignature { operator: Author, cluster: String },
    #[error("the change is recorded as by {found}, but signed by {operator}")]
    WrongAuthor { operator: Author, found: String },
    #[error("the delegation of {operator} expired at {not_after_ms} ms, and the change is stamped {stamp_ms} ms")]
    Expired { operator: Author, not_after_ms: u64, stamp_ms: u64 },
    #[error("the change was signed at {issued_ms} ms but stamped {stamp_ms} ms: more than {window_ms} ms apart")]
    OutsideWindow { issued_ms: u64, stamp_ms: u64, window_ms: u64 },
    #[error("{operator} may change keys under {prefixes:?} only, got {what}")]
    OutOfScope { operator: Author, prefixes: Vec<String>, what: String },
    #[error("a delegation may name at most {MAX_PREFIXES} prefixes, got {found}")]
    TooManyPrefixes { found: usize },
    #[error("the snapshot's write of {key} is not one of the operations its signed change carries")]
    ForeignWrite { key: Key },
    /// Refused at submission only: a revocation is history, and storage never depends on it.
    #[error("the key {key} of {operator} is revoked (generation {by}); ask a root holder for a new delegation")]
    Revoked { operator: Author, key: PublicKey, by: GenId },
    /// Fewer distinct operators signed a change than an approval rule of its keys requires.
    #[error(
        "changes under {prefix:?} need the signatures of {needed} distinct operators{among}, got {found}{counted}: \
         propose it (`grapevine change propose`) and have it approved"
    )]
    MissingApprovals { prefix: String, needed: usize, found: usize, among: String, counted: String },
    /// An approval (or rejection) whose signature does not verify over its proposal.
    #[error("the {what} of {operator} does not verify over proposal {proposal} for cluster {cluster:?}")]
    BadApproval { what: &'static str, operator: Author, proposal: GenId, cluster: String },
    /// A proposal approved or enacted after its expiry.
    #[error("proposal {proposal} expired at {expires_ms} ms, and the {what} is stamped {stamp_ms} ms")]
    ProposalExpired { proposal: String, what: &'static str, expires_ms: u64, stamp_ms: u64 },
    /// A governance record that breaks its shape's rule (an expiry too far, a record in a snapshot).
    #[error("governance record: {detail}")]
    Governance { detail: String },
}

impl SigningError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SigningError::PublicKey { .. } => "bad_key",
            SigningError::Unsigned { .. } => "unsigned",
            SigningError::UnknownRoot { .. } => "unknown_root",
            SigningError::BadDelegation { .. } => "bad_delegation",
            SigningError::BadSignature { .. } => "bad_signature",
            SigningError::WrongAuthor { .. } => "wrong_author",
            SigningError::Expired { .. } => "expired",
            SigningError::OutsideWindow { .. } => "outside_window",
            SigningError::OutOfScope { .. } | SigningError::TooManyPrefixes { .. } => "out_of_scope",
            SigningError::ForeignWrite { .. } => "foreign_write",
            SigningError::Revoked { .. } => "revoked",
            SigningError::MissingApprovals { .. } => "approvals",
            SigningError::BadApproval { .. } => "bad_approval",
            SigningError::ProposalExpired { .. } => "proposal_expired",
            SigningError::Governance { .. } => "governance",
        }
    }
}

/// What a node trusts: its cluster's id and root keys, and which unsigned generations it still
/// takes (those made before the cluster required signatures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub cluster: String,
    /// No roots: signatures are not required (nor checked).
    pub roots: Vec<PublicKey>,
    /// Unsigned generations with `seq` up to this origin's entry are taken: the log as it was
    /// when the cluster turned signatures on.
    pub unsigned_through: VersionVector,
    /// How many operators must sign a change, by key prefix (four eyes; [`crate::approvals`]).
    pub approvals: Vec<ApprovalRule>,
}

impl Trust {
    pub fn required(&self) -> bool {
        !self.roots.is_empty()
    }

    /// A short name of the roots trusted (the first 16 hex digits of the SHA-256 of the sorted
    /// keys), `none` without roots: nodes that print the same one take the same changes.
    pub fn fingerprint(&self) -> String {
        if self.roots.is_empty() {
            return "none".to_owned();
        }
        let mut roots = self.roots.clone();
        roots.sort();
        roots.dedup();
        let mut digest = Sha256::new();
        for root in &roots {
            digest.update(root.0);
        }
        // Without rules the fingerprint is what builds before approvals printed.
        if !self.approvals.is_empty() {
            digest.update(postcard::to_stdvec(&crate::approvals::sorted(&self.approvals)).expect("rules encode"));
        }
        hex::encode(digest.finalize())[..16].to_owned()
    }

    /// Checks a generation from an operator, a peer or a backup: its operator's signature, and
    /// the signatures its key prefixes' approval rules require ([`crate::approvals`]).
    pub fn check(&self, body: &GenerationBody) -> Result<(), SigningError> {
        if !self.required() {
            return Ok(());
        }
        let terms = body.terms.as_deref();
        if let Some(governance) = terms.and_then(|terms| terms.governance.as_ref()) {
            let signed = body
                .signed
                .as_deref()
                .ok_or_else(|| SigningError::Unsigned { what: format!("generation {}", body.id) })?;
            return self.check_governance(governance, signed, body, terms.expect("governance is in terms"));
        }
        match &body.signed {
            Some(signed) => {
                let start_at_ms = terms.and_then(|terms| terms.start_at_ms);
                self.check_signed(signed, &body.change, start_at_ms, body.hlc, body.author.as_ref())?;
                self.check_rules(&body.change, [&signed.delegation])
            }
            None if self.unsigned_through.covers(&body.id) => Ok(()),
            None => Err(SigningError::Unsigned { what: format!("generation {}", body.id) }),
        }
    }

    /// Checks a snapshot's write of generation `id`, stamped `hlc`.
    pub fn check_write(&self, op: &Op, id: &GenId, hlc: Stamp, proof: Option<&WriteProof>) -> Result<(), SigningError> {
        if !self.required() {
            return Ok(());
        }
        match proof {
            Some(WriteProof { change, signed, terms }) => {
                if !change.ops.contains(op) {
                    return Err(SigningError::ForeignWrite { key: op.key().clone() });
                }
                let start_at_ms = terms.as_ref().and_then(|terms| terms.start_at_ms);
                let operator = Some(&signed.delegation.operator);
                match terms.as_deref().and_then(|terms| terms.governance.as_ref()) {
                    Some(Governance::Enact { proposal, expires_ms }) => {
                        let approvals = terms.as_deref().map_or(&[][..], |terms| &terms.approvals[..]);
                        let enact = crate::approvals::Enactment { proposal, expires_ms: *expires_ms, approvals };
                        self.check_enact(signed, change, start_at_ms, &enact, hlc, operator)
                    }
                    Some(_) => Err(SigningError::ForeignWrite { key: op.key().clone() }),
                    None => {
                        self.check_signed(signed, change, start_at_ms, hlc, operator)?;
                        self.check_rules(change, [&signed.delegation])
                    }
                }
            }
            None if self.unsigned_through.covers(id) => Ok(()),
            None => Err(SigningError::Unsigned { what: format!("the snapshot's write of {} by {id}", op.key()) }),
        }
    }

    /// Checks `signed` on `change` (to start at `start_at_ms`), as stamped `hlc` and recorded as
    /// by `author`.
    pub fn check_signed(
        &self,
        signed: &Signed,
        change: &Change,
        start_at_ms: Option<u64>,
        hlc: Stamp,
        author: Option<&Author>,
    ) -> Result<(), SigningError> {
        let message = change_message(&self.cluster, &signed.delegation.operator, signed.issued_ms, change, start_at_ms);
        self.check_signer(signed, &message, hlc)?;
        check_author(signed, author)?;
        check_window(signed.issued_ms, hlc)?;
        check_scope(&signed.delegation, change)
    }

    /// Checks that `signed` signs `message` under a delegation of a trusted root, unexpired at
    /// `hlc`.
    pub(crate) fn check_signer(&self, signed: &Signed, message: &[u8], hlc: Stamp) -> Result<(), SigningError> {
        let Signed { delegation, issued_ms: _, signature } = signed;
        let operator = &delegation.operator;
        if !self.roots.contains(&delegation.root) {
            return Err(SigningError::UnknownRoot { root: delegation.root });
        }
        if delegation.prefixes.len() > MAX_PREFIXES {
            return Err(SigningError::TooManyPrefixes { found: delegation.prefixes.len() });
        }
        if !delegation.signature.verifies(&delegation.root, &delegation.message(&self.cluster)) {
            let cluster = self.cluster.clone();
            return Err(SigningError::BadDelegation { operator: operator.clone(), root: delegation.root, cluster });
        }
        if !signature.verifies(&delegation.key, message) {
            return Err(SigningError::BadSignature { operator: operator.clone(), cluster: self.cluster.clone() });
        }
        if hlc.wall_ms > delegation.not_after_ms {
            let not_after_ms = delegation.not_after_ms;
            return Err(SigningError::Expired { operator: operator.clone(), not_after_ms, stamp_ms: hlc.wall_ms });
        }
        Ok(())
    }
}

/// The change is recorded as by the operator who signed it.
pub(crate) fn check_author(signed: &Signed, author: Option<&Author>) -> Result<(), SigningError> {
    let operator = &signed.delegation.operator;
    if author != Some(operator) {
        let found = author.map_or_else(|| "nobody".to_owned(), ToString::to_string);
        return Err(SigningError::WrongAuthor { operator: operator.clone(), found });
    }
    Ok(())
}

/// The stamp lies within [`ISSUE_WINDOW_MS`] of the time of signing.
pub(crate) fn check_window(issued_ms: u64, hlc: Stamp) -> Result<(), SigningError> {
    if hlc.wall_ms.abs_diff(issued_ms) > ISSUE_WINDOW_MS {
        let (stamp_ms, window_ms) = (hlc.wall_ms, ISSUE_WINDOW_MS);
        return Err(SigningError::OutsideWindow { issued_ms, stamp_ms, window_ms });
    }
    Ok(())
}

/// Every key of `change` lies under the delegation's prefixes, and only an unscoped
/// delegation signs controls.
pub fn check_scope(delegation: &Delegation, change: &Change) -> Result<(), SigningError> {
    let out_of_scope = |what: String| SigningError::OutOfScope {
        operator: delegation.operator.clone(),
        prefixes: delegation.prefixes.clone(),
        what,
    };
    if let Some(op) = change.ops.iter().find(|op| !delegation.covers(op.key())) {
        return Err(out_of_scope(format!("{} {}", op.kind(), op.key())));
    }
    if !delegation.prefixes.is_empty() && !change.controls.is_empty() {
        return Err(out_of_scope("a rollout control".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JsonText;

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
            members: vec![],
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
        assert!(matches!(
            trust(&root).check(&body(change.clone(), Some(forged))),
            Err(SigningError::UnknownRoot { .. })
        ));
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
        control
            .controls
            .push(crate::policy::Control::Pause { target: GenId { origin: "n1".parse().unwrap(), seq: 1 } });
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
        let generation =
            body(change.clone(), Some(key(2).sign_change(CLUSTER, delegation.clone(), NOW, &change, None)));
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

    #[test]
    fn public_keys_print_and_parse() {
        let public = key(4).public();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        let refused = "ed25519:zz".parse::<PublicKey>().unwrap_err();
        assert_eq!(refused.to_string(), "public key must be ed25519: and 64 hex digits, got \"ed25519:zz\"");
    }
}
