//! What `/v1/proposals` answers: the proposals of the log, one shown with what an approver
//! signs, and the records a proposal and a vote become.

use grapevine_proto::Author;
use grapevine_proto::approvals::ProposalState;
use grapevine_proto::policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Accepted;

/// `GET /v1/proposals`: every proposal the caller may see, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposals {
    pub node: String,
    pub proposals: Vec<ProposalSummary>,
}

/// A proposal: a change that waits for other operators' signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalSummary {
    pub id: String,
    pub state: ProposalState,
    pub proposer: Author,
    pub proposer_key: String,
    /// The proposal's stamp.
    pub hlc: String,
    pub expires_ms: u64,
    pub start_at_ms: Option<u64>,
    pub keys: Vec<String>,
    pub approvals: Vec<ProposalApproval>,
    /// Distinct keys that signed it, the proposer's included.
    pub signatures: usize,
    /// The signatures its strictest rule needs on this node (1 when no rule governs its keys).
    pub needed: usize,
    pub rejected: Option<ProposalRejection>,
    /// The generations it was enacted as.
    pub enacted: Vec<String>,
    /// Changes of its keys made after it: enacting it overwrites them.
    pub conflicts: Vec<ProposalConflict>,
}

/// An approval a proposal gathered, and the record that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalApproval {
    pub operator: Author,
    pub key: String,
    pub record: String,
}

/// The rejection that closed a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRejection {
    pub record: String,
    pub by: Author,
}

/// A newer change of a proposal's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalConflict {
    pub generation: String,
    pub keys: Vec<String>,
}

/// `GET /v1/proposals/{id}`: one proposal, its diff against this node's applied values, its
/// policy, and what an approver signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposalShown {
    pub node: String,
    /// Integers and strings only: see the module's note on `flatten`.
    #[serde(flatten)]
    pub proposal: ProposalSummary,
    pub diff: Vec<ProposalDiff>,
    pub policy: Policy,
    pub sign: SignApproval,
}

/// What a proposal does to one key: this node's applied value (`null` if none) and the proposed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposalDiff {
    /// `flag` or `config`.
    pub kind: String,
    pub key: String,
    pub applied: Option<Value>,
    pub proposed: Value,
}

/// What an approver signs (`SecretKey::sign_approval`), or a rejecter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignApproval {
    pub cluster: String,
    /// The node's wire format.
    pub format: u64,
    /// The node's clock, the issue time signed.
    pub issued_ms: u64,
    pub proposal: String,
    /// What the change hashes to: a client checks it against `change`.
    pub digest: String,
    pub expires_ms: u64,
    pub start_at_ms: Option<u64>,
    /// The proposed change, postcard in hex.
    pub change: String,
}

/// `POST /v1/proposals`: the proposal record stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The record, as any accepted change (no `replicas`: it applies nowhere).
    #[serde(flatten)]
    pub record: Accepted,
    /// The proposal's id (its record's generation).
    pub proposal: String,
    pub expires_ms: u64,
    /// The approvals it needs besides the proposer's.
    pub approvals_needed: usize,
}

/// `POST /v1/proposals/{id}/{approve|reject}`: the record the vote became, or the enactment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voted {
    #[serde(flatten)]
    pub record: Accepted,
    pub proposal: String,
    /// Whether this approval met every rule: `record` is then the enactment.
    pub enacted: bool,
}
