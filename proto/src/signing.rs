//! Operators' keys and signatures (D68), as plain data: ed25519 `PublicKey`s and `Signature`s,
//! `SecretKey` (from a seed the caller draws: this crate draws no random number), a root's
//! `Delegation` of a key to an operator, and `Signed`, an operator's signature with the
//! delegation that makes its key trusted, as a generation carries it. They sit below the model,
//! which carries them: what a signature covers and whether a node takes it is `trust.rs`, the
//! approvals' records `approvals.rs`.
//!
//! - `PublicKey` prints and parses as `ed25519:` and 64 hex digits. `SecretKey::delegate` signs a
//!   `Delegation` (operator, key, prefixes, expiry, root) as a root of a cluster;
//!   `Delegation::covers(key)` says whether it lets its operator write a key: every key when it
//!   names no prefix, and only then the keys under `RESERVED_PREFIX` (`grapevine.`).
//! - `revocation_key(key)` is the config key whose write revokes an operator key
//!   (`grapevine.revoked.<hex>`), and `revoked_by` the key it names.
//! - `SigningError` says why a generation or a snapshot's write is not trusted; `reason()` labels
//!   the metric.
//! - Limits: `MAX_PREFIXES` (32). ed25519 is ring's, the TLS crypto provider.

use std::fmt;
use std::str::FromStr;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::name::{Author, GenId, Key};

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

/// Separates delegations from every other use of a root's key.
const DELEGATION_CONTEXT: &str = "grapevine delegation v1";

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
    /// The bytes a root signs: a context, the cluster id and every field but the signature.
    pub(crate) fn message(&self, cluster: &str) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_print_and_parse() {
        let public = SecretKey::from_seed([4; 32]).public();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        let refused = "ed25519:zz".parse::<PublicKey>().unwrap_err();
        assert_eq!(refused.to_string(), "public key must be ed25519: and 64 hex digits, got \"ed25519:zz\"");
    }
}
